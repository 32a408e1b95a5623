//! The load balancer's maps. Sizes here are defaults; the daemon sets the real ones from the
//! config before loading (`EbpfLoader::set_max_entries`).

use aya_ebpf::{
    Global,
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use xlb_common::{
    Backend, Counter, DropReason, FlowKey6, FlowSet, FlowValue, Globals, LbCounter, PolicyConfig,
    PolicyCounter, RateWindow, TokenBucket, VipAddrKey, VipAddrValue, VipById, VipById6, VipKey,
    VipKey6, VipMeta, VipSourceKey, VipSourceKey6, XDP_ACTION_COUNT,
    hash::VIP_FILTER_WORDS,
    policy::{MixedSlash24, POLICY_V4_24_WORDS, POLICY_V4_B16_WORDS, Source6, window},
};

/// VIP (address, port, protocol) -> how to balance it. An update replaces the whole value in one
/// step (a new element is linked in place of the old), which makes it the daemon's atomic switch.
#[map(name = "XLB_VIPS")]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// Addresses carrying at least one VIP, with how many. Asked only where the filter below cannot
/// decide: a fragment or a truncated packet to an address the filter lets through.
#[map(name = "XLB_VIP_ADDRS")]
pub static VIP_ADDRS: HashMap<VipAddrKey, VipAddrValue> =
    HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// Filter of VIP addresses, a bit per [`vip_filter_slot`]: set when some VIP address hashes
/// there. A clear bit means the destination is not a VIP, decided with one inlined array read
/// instead of a hash map lookup; a false positive costs only the lookups that then miss. The
/// daemon keeps the count of addresses per bit, sets a bit before its first address's VIP
/// appears and clears it after its last one is gone.
///
/// [`vip_filter_slot`]: xlb_common::hash::vip_filter_slot
#[map(name = "XLB_VIP_FILTER")]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// Backend id -> backend. Entries are written once; the only later write clears ACTIVE.
#[map(name = "XLB_BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(65536, 0);

/// Every VIP's Maglev table, one region per table, each slot a backend id. Memory-mapped by the
/// daemon, which writes a whole new table with one copy instead of a syscall per slot. The
/// kernel stores array values at 8-byte strides, so each element holds two slots: the mapping
/// is then a dense array of u32 slots, and no memory is wasted on padding.
#[map(name = "XLB_MAGLEV")]
pub static MAGLEV: Array<[u32; 2]> = Array::with_max_entries(2_097_152, BPF_F_MMAPABLE);

/// Established IPv4 flows -> backend: sets of [`xlb_common::FLOW_WAYS`] slots, the set chosen
/// by the flow hash (`balance::FlowKey`'s lookup). A lookup or an insert reads one set, two
/// cache lines, with no lock and no allocation: the hash map it replaced cost a bucket, a chain
/// of elements and a free-list pop per new flow. A full set gives a new flow the slot seen
/// least recently (`flow_displaced`). Memory-mapped: page-aligned, so every set is exactly two
/// cache lines, and `xlbd` reads it for counts and empties idle slots without a syscall each.
#[map(name = "XLB_FLOW_SETS")]
pub static FLOW_SETS: Array<FlowSet> = Array::with_max_entries(131_072, BPF_F_MMAPABLE);

/// Sets in [`FLOW_SETS`]: a read-only global the loader sets with the map's size
/// (`xlb_common::flow_sets` of `limits.flow_table_size`), a constant to the verifier and the
/// JIT.
#[unsafe(no_mangle)]
pub static XLB_FLOW_SET_COUNT: Global<u32> = Global::new(131_072);

/// IPv4 VIP id -> its entry and key: the VIP of an established flow by an array read (sized
/// by `limits.max_vips`, like the per-VIP counters).
#[map(name = "XLB_VIP_BY_ID")]
pub static VIP_BY_ID: Array<VipById> = Array::with_max_entries(1024, 0);

/// IPv6 VIP id -> its entry and key, as [`VIP_BY_ID`].
#[map(name = "XLB_VIP_BY_ID6")]
pub static VIP_BY_ID6: Array<VipById6> = Array::with_max_entries(1024, 0);

/// The datapath clock: seconds, written by `xlbd` every second; flow entries record it.
#[map(name = "XLB_CLOCK")]
pub static CLOCK: Array<u32> = Array::with_max_entries(1, 0);

/// IPv6 VIP (address, port, protocol) -> how to balance it; switched like [`VIPS`].
#[map(name = "XLB_VIPS6")]
pub static VIPS6: HashMap<VipKey6, VipMeta> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// Established IPv6 flows -> backend, sized by `limits.flow_table_size`. A preallocated hash
/// map: an insert pops a per-CPU free list, with no eviction on the packet path. `xlbd`
/// removes idle entries, and the least recently seen ones when the table fills up
/// (`dataplane::flows`); while it is full a new flow is balanced but not remembered
/// (`flow_insert_failed`).
#[map(name = "XLB_FLOWS6")]
pub static FLOWS6: HashMap<FlowKey6, FlowValue> = HashMap::with_max_entries(262_144, 0);

/// Datapath-wide settings, one entry.
#[map(name = "XLB_GLOBALS")]
pub static GLOBALS: Array<Globals> = Array::with_max_entries(1, 0);

/// Packets and bytes per XDP action.
#[map(name = "XLB_ST_ACTIONS")]
pub static STATS_ACTIONS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(XDP_ACTION_COUNT, 0);

/// Packets per drop reason.
#[map(name = "XLB_ST_DROPS")]
pub static STATS_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

/// Load-balancing events ([`LbCounter`]).
#[map(name = "XLB_ST_LB")]
pub static STATS_LB: PerCpuArray<u64> = PerCpuArray::with_max_entries(LbCounter::COUNT, 0);

/// Packets and bytes per VIP id.
#[map(name = "XLB_ST_VIPS")]
pub static STATS_VIPS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1024, 0);

/// Packets and bytes per backend id.
#[map(name = "XLB_ST_BACKENDS")]
pub static STATS_BACKENDS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(65536, 0);

// ----- Policy and events (docs/policy.md). Sizes are defaults; the daemon sets the real ones.

/// The policy settings, one entry ([`PolicyConfig`]).
#[map(name = "XLB_POLICY")]
pub static POLICY: Array<PolicyConfig> = Array::with_max_entries(1, 0);

/// Global IPv4 allow and deny prefixes -> [`xlb_common::verdict`]; most specific wins. The
/// record of the lists; the datapath decides by the arrays below and walks this trie only if a
/// mixed /24's table were missing.
#[map(name = "XLB_POL_V4")]
pub static POLICY_V4: LpmTrie<u32, u32> = LpmTrie::with_max_entries(65_536, BPF_F_NO_PREALLOC);

/// One bit per IPv4 /16 that some global prefix touches (8 KiB: stays in cache). A source
/// whose /16 bit is clear matches no prefix: nothing more is read.
#[map(name = "XLB_POL_V4_B16")]
pub static POLICY_V4_B16: Array<u64> = Array::with_max_entries(POLICY_V4_B16_WORDS, 0);

/// The global lists per IPv4 /24, a 16-bit [`xlb_common::policy::v4_entry`] (four per word,
/// 32 MiB), read when the /16 bit is set: none, allow, deny (the whole /24), or the index of
/// the /24's table in `XLB_POL_V4_MIX`. Memory-mapped by the daemon, which writes and adopts
/// it without a syscall per word.
#[map(name = "XLB_POL_V4_24")]
pub static POLICY_V4_24: Array<u64> = Array::with_max_entries(POLICY_V4_24_WORDS, BPF_F_MMAPABLE);

/// Mixed /24s' tables (a prefix longer than /24 lies inside): a 2-bit code per address, at the
/// index the /24's entry names. Memory-mapped by the daemon; a table is never rewritten in
/// place (a change writes a new one at a free index), and a freed index is reused only in a
/// later change.
#[map(name = "XLB_POL_V4_MIX")]
pub static POLICY_V4_MIX: Array<MixedSlash24> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Global IPv6 allow and deny prefixes -> [`xlb_common::verdict`].
#[map(name = "XLB_POL_V6")]
pub static POLICY_V6: LpmTrie<[u32; 4], u32> = LpmTrie::with_max_entries(65_536, BPF_F_NO_PREALLOC);

/// Per-VIP source ranges; every VIP has at least one entry (its ranges, or 0.0.0.0/0).
#[map(name = "XLB_POL_VIP")]
pub static POLICY_VIP: LpmTrie<VipSourceKey, u32> =
    LpmTrie::with_max_entries(66_560, BPF_F_NO_PREALLOC);

/// Per-source token buckets for new TCP connections. LRU of fixed size: a flood of sources
/// recycles buckets instead of growing memory.
#[map(name = "XLB_RATE")]
pub static RATE: LruHashMap<u32, TokenBucket> = LruHashMap::with_max_entries(65_536, 0);

/// Per-VIP source ranges of IPv6 VIPs; every IPv6 VIP has at least one entry (its ranges, or
/// ::/0).
#[map(name = "XLB_POL_VIP6")]
pub static POLICY_VIP6: LpmTrie<VipSourceKey6, u32> =
    LpmTrie::with_max_entries(66_560, BPF_F_NO_PREALLOC);

/// Token buckets of IPv6 sources, one per source /64 ([`Source6`]: a host owns a whole /64, so
/// a bucket per address would let one host mint buckets). LRU of fixed size, as `XLB_RATE`.
#[map(name = "XLB_RATE6")]
pub static RATE6: LruHashMap<Source6, TokenBucket> = LruHashMap::with_max_entries(65_536, 0);

/// Per-CPU one-second windows ([`xlb_common::policy::window`]).
#[map(name = "XLB_WINDOWS")]
pub static WINDOWS: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(window::COUNT, 0);

/// Sampled drop and forward events for the daemon. Writers never wait: a full buffer loses
/// the event and counts it.
#[map(name = "XLB_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Policy and event counters ([`PolicyCounter`]).
#[map(name = "XLB_ST_POLICY")]
pub static STATS_POLICY: PerCpuArray<u64> = PerCpuArray::with_max_entries(PolicyCounter::COUNT, 0);
