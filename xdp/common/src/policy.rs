//! Policy shared by both sides: the settings word the datapath reads before balancing, the
//! verdicts stored in the CIDR tries, the token-bucket and window state, and the policy
//! counters.
//!
//! Precedence of the global lists (documented in docs/policy.md): within one address family
//! the most specific matching prefix decides (allow or deny); a prefix may not be in both lists;
//! when the allow list of a family is not empty, a source that matches no prefix is dropped
//! (`not_allowed`), otherwise it goes on. Per-VIP source ranges apply after the global lists.

/// Bits of [`PolicyConfig::flags`]. Each list flag is set only while the list has entries, so
/// an empty list costs no lookup.
pub mod policy_flags {
    /// The IPv4 global trie has entries: look every IPv4 source up.
    pub const LISTS_V4: u32 = 1 << 0;
    /// The IPv4 allow list has entries: an IPv4 source that matches nothing is dropped.
    pub const ALLOW_V4: u32 = 1 << 1;
    /// The IPv6 global trie has entries.
    pub const LISTS_V6: u32 = 1 << 2;
    /// The IPv6 allow list has entries.
    pub const ALLOW_V6: u32 = 1 << 3;
    /// At least one VIP has source ranges: look (VIP, source) up in the per-VIP trie.
    pub const VIP_RANGES: u32 = 1 << 4;
    /// Drop TCP/UDP to a VIP address on a port no VIP serves (and protocols other than TCP, UDP
    /// and ICMP) instead of passing them to the kernel.
    pub const DROP_UNSERVED: u32 = 1 << 5;
    /// Drop IPv4 packets with options addressed to a VIP.
    pub const DROP_OPTIONS: u32 = 1 << 6;
    /// Pass IPv4 fragments addressed to a VIP to the kernel instead of dropping them.
    pub const PASS_FRAGMENTS: u32 = 1 << 7;
    /// Pass ICMP echo requests to a VIP address to the kernel instead of answering them.
    pub const ICMP_ECHO_PASS: u32 = 1 << 8;
    /// Drop ICMP echo requests to a VIP address (wins over [`ICMP_ECHO_PASS`]).
    pub const ICMP_ECHO_DROP: u32 = 1 << 9;
    /// Drop ICMP to a VIP address that is neither an echo request nor an error about a VIP
    /// flow, instead of passing it to the kernel.
    pub const ICMP_OTHER_DROP: u32 = 1 << 10;
}

/// The policy settings, one entry in `XLB_POLICY`. Rates are per second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// [`policy_flags`].
    pub flags: u32,
    /// New TCP connections (SYNs) per second one source may open to the VIPs; 0 = no limit.
    pub source_rate: u32,
    /// Bucket depth of the per-source limit (SYNs a source may send at once).
    pub source_burst: u32,
    /// New flows per second each CPU may add to the flow table; above it new flows are still
    /// balanced but not remembered, so a flood cannot evict established flows. 0 = no ceiling.
    pub flow_insert_rate: u32,
    /// Drop events per second each CPU may send to the ring buffer; 0 = none.
    pub drop_events_rate: u32,
    /// One forwarded packet in this many is sent as an event; 0 = none.
    pub forward_sample: u32,
    /// Generation of the global lists: the daemon changes it with every change of the lists
    /// or their flags. A flow entry stores the generation its source was checked under
    /// ([`crate::FlowValue::lists_gen`]); while the two agree, the flow's packets skip the
    /// lists (the verdict cannot have changed), so an established flow costs no list lookup.
    pub lists_gen: u32,
    /// ICMP messages per second each CPU may send (echo replies, "fragmentation needed",
    /// "packet too big"); past it the packet that would be answered is dropped
    /// (`icmp_rate_limited`). 0 = no limit.
    pub icmp_rate: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyConfig>() == 32);

/// Words of the IPv4 /24 entry array (`XLB_POL_V4_24`): a 16-bit [`v4_entry`] per /24, four
/// per word (2^24 entries, 32 MiB). Array values are 8-byte slots, hence the packing.
pub const POLICY_V4_24_WORDS: u32 = 1 << 22;
/// Words of the IPv4 /16 bitmap (`XLB_POL_V4_B16`): 2^16 bits (8 KiB, stays in cache).
pub const POLICY_V4_B16_WORDS: u32 = 1 << 10;
/// Words of a mixed /24's table (an element of `XLB_POL_V4_MIX`): a 2-bit [`v4_code`] per
/// address.
pub const POLICY_V4_MIX_WORDS: usize = 8;
/// Most tables `XLB_POL_V4_MIX` can hold: a [`v4_entry`] is 16 bits and its first three
/// values are verdicts.
pub const POLICY_V4_MIX_MAX: u32 = (1 << 16) - v4_entry::FIRST_TABLE;

/// A mixed /24's per-address verdicts, an element of the array `XLB_POL_V4_MIX` (64 bytes,
/// one cache line), at the index its /24's [`v4_entry`] names.
pub type MixedSlash24 = [u64; POLICY_V4_MIX_WORDS];

/// The 2-bit codes of a mixed /24's table: what the global lists decide for one address.
/// `ALLOW` and `DENY` equal [`verdict::ALLOW`] and [`verdict::DENY`].
pub mod v4_code {
    /// No prefix matches (the allow-list flag decides).
    pub const NONE: u64 = 0;
    /// The most specific matching prefix is an allow prefix.
    pub const ALLOW: u64 = 1;
    /// The most specific matching prefix is a deny prefix.
    pub const DENY: u64 = 2;
    /// (A /24 only, in the daemon's resolved lists) its addresses differ: a prefix longer
    /// than /24 lies inside it; its table decides.
    pub const MIXED: u64 = 3;
    /// Mask of one code.
    pub const MASK: u64 = 3;
}

/// The 16-bit entries of `XLB_POL_V4_24`, one per /24: a verdict for the whole /24
/// ([`v4_code::NONE`], [`v4_code::ALLOW`], [`v4_code::DENY`]), or, from `FIRST_TABLE` on,
/// `FIRST_TABLE` + the index of the /24's table in `XLB_POL_V4_MIX` (a mixed /24).
pub mod v4_entry {
    /// The first value that names a table (index 0).
    pub const FIRST_TABLE: u32 = 3;
    /// Mask of one entry.
    pub const MASK: u64 = 0xffff;
}

/// Where the `/len` network of an IPv4 address lives in a bitmap of `/len` networks:
/// (word index, bit mask). `host_order` is the address as a number (`u32::from_be` of the
/// packet's field); `len` is 16 (the /16 bitmap).
#[inline(always)]
pub const fn v4_bit(host_order: u32, len: u32) -> (u32, u64) {
    let index = host_order >> (32 - len);
    (index >> 6, 1u64 << (index & 63))
}

/// Where the 16-bit [`v4_entry`] of /24 number `net` lives in `XLB_POL_V4_24`: (word index,
/// shift).
#[inline(always)]
pub const fn entry_slot(net: u32) -> (u32, u32) {
    (net >> 2, (net & 3) * 16)
}

/// Where the 2-bit code of entry `index` lives in an array of 2-bit codes: (word index, shift).
#[inline(always)]
pub const fn code_slot(index: u32) -> (u32, u32) {
    (index >> 5, (index & 31) * 2)
}

/// Values stored in the CIDR tries.
pub mod verdict {
    /// The prefix is in an allow list (or a VIP's source ranges).
    pub const ALLOW: u32 = 1;
    /// The prefix is in the deny list.
    pub const DENY: u32 = 2;
}

/// Data part of a per-VIP source range key: the VIP id, then the IPv4 source. The trie matches
/// `32 + prefix length` bits, so the VIP id always matches whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipSourceKey {
    /// VIP id, network byte order (any order works: all 32 bits always match).
    pub vip_id: u32,
    /// IPv4 source prefix, network byte order.
    pub addr: u32,
}
const _: () = assert!(core::mem::size_of::<VipSourceKey>() == 8);

/// Data part of a per-VIP source range key of an IPv6 VIP (`XLB_POL_VIP6`): the VIP id, then
/// the IPv6 source. As in [`VipSourceKey`], the trie matches `32 + prefix length` bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipSourceKey6 {
    /// VIP id, network byte order (any order works: all 32 bits always match).
    pub vip_id: u32,
    /// IPv6 source prefix, as the packet carries it.
    pub addr: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<VipSourceKey6>() == 20);

/// The key of an IPv6 source's token bucket in `XLB_RATE6`: its /64, the first two words of
/// the address as the packet carries it. A host is normally given a whole /64 (SLAAC, RFC
/// 7421) and may pick any address in it, so a bucket per /128 would let one host open 2^64
/// buckets, each with a full burst, and push every other source out of the LRU map.
pub type Source6 = [u32; 2];

/// The [`Source6`] of an IPv6 source address (as the packet carries it).
#[inline(always)]
pub const fn source6(addr: [u32; 4]) -> Source6 {
    [addr[0], addr[1]]
}

/// A token bucket for one source, in the LRU map `XLB_RATE` (an IPv4 address) or `XLB_RATE6`
/// (an IPv6 /64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// When the bucket was last refilled (bpf_ktime_get_ns).
    pub last_ns: u64,
    /// Tokens left, each one new connection.
    pub tokens: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TokenBucket>() == 16);

/// A one-second counting window, one per CPU (flow-insert ceiling, drop-event budget).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    /// Start of the current window (bpf_ktime_get_ns).
    pub start_ns: u64,
    /// Events counted in it.
    pub count: u64,
}
const _: () = assert!(core::mem::size_of::<RateWindow>() == 16);

/// Index of the per-CPU windows in `XLB_WINDOWS`.
pub mod window {
    /// New flows remembered in the flow table.
    pub const FLOW_INSERT: u32 = 0;
    /// Drop events sent.
    pub const DROP_EVENTS: u32 = 1;
    /// ICMP messages sent (echo replies and errors).
    pub const ICMP_SENT: u32 = 2;
    /// Number of windows.
    pub const COUNT: u32 = 3;
}

/// What the policy stage and the event sender did besides dropping, counted per CPU in
/// `XLB_ST_POLICY`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyCounter {
    /// A new flow was balanced but not remembered: the flow-insert ceiling was reached.
    FlowNotRemembered = 0,
    /// An event was written to the ring buffer.
    EventSent = 1,
    /// An event was lost: the ring buffer was full (the datapath never waits for it).
    EventLost = 2,
    /// A drop event was not sent: the per-CPU drop-event rate was reached.
    EventSuppressed = 3,
}

impl PolicyCounter {
    /// Every counter, in index order.
    pub const ALL: [PolicyCounter; 4] = [
        PolicyCounter::FlowNotRemembered,
        PolicyCounter::EventSent,
        PolicyCounter::EventLost,
        PolicyCounter::EventSuppressed,
    ];
    /// Number of counters: the size of the per-CPU array.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Name used in logs, the stats file and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            PolicyCounter::FlowNotRemembered => "flow_not_remembered",
            PolicyCounter::EventSent => "event_sent",
            PolicyCounter::EventLost => "event_lost",
            PolicyCounter::EventSuppressed => "event_suppressed",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: #[repr(C)], Copy, no implicit padding (sizes asserted above), any bit pattern valid.
    unsafe impl aya::Pod for PolicyConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipSourceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipSourceKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TokenBucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RateWindow {}
}
