//! Types shared by the xlb XDP programs (kernel side) and the `xlbd` daemon (user side).
//!
//! Every map key and value is `#[repr(C)]`, has its size asserted at compile time and carries
//! explicit `_pad` fields instead of implicit padding: a padded key is a lookup that misses.
//! The user side gets `aya::Pod` implementations behind the `user` feature.
#![no_std]

pub mod counters;
pub mod drop;
pub mod event;
pub mod hash;
pub mod health;
pub mod maps;
pub mod pktgen;
pub mod policy;

pub use counters::{Counter, DecapCounter, LbCounter};
pub use drop::DropReason;
pub use event::{EVENT_NO_ID, Event, event_verdict};
pub use maps::*;
pub use policy::{
    PolicyConfig, PolicyCounter, RateWindow, TokenBucket, VipSourceKey, VipSourceKey6,
    policy_flags, verdict,
};

/// Version of the map layout. Bump it whenever a key, a value or a map's meaning changes, so a
/// daemon that finds maps pinned by another build can refuse them instead of misreading them.
/// 3: the IPv4 /24 bitmap became a 2-bit verdict per /24 (`XLB_POL_V4_24`) with per-address
/// tables for mixed /24s (`XLB_POL_V4_MIX`), and `XLB_ST_LB` gained `flow_replaced` (5 entries).
/// 4: flow entries and the policy settings carry the global lists' generation (`lists_gen`);
/// IPv6 VIPs: `XLB_VIPS6` and `XLB_FLOWS6` were added, `Globals` gained the IPv6 outer
/// source; ICMP and MTU: `XLB_ST_LB` gained four ICMP counters (9 entries), `Globals` the
/// encapsulation MTU and flags (56 bytes in all), and the drop counters the IPv6 and ICMP
/// reasons (25 entries).
/// 5: `XLB_POL_V4_24` holds a 16-bit entry per /24 (verdict, or the index of the /24's table;
/// 32 MiB, mmapable) and `XLB_POL_V4_MIX` became an mmapable array of tables (was a hash map
/// keyed by the /24); per-VIP source ranges and the SYN rate limit for IPv6
/// sources: `XLB_POL_VIP6` and `XLB_RATE6` were added.
/// 6: the flow tables became preallocated hash maps expired by `xlbd` (were LRU maps):
/// `FlowValue` gained `seen_s` and `vip_id` (16 bytes); `XLB_CLOCK` and `XLB_VIP_BY_ID` were
/// added.
/// 7: the IPv4 flow table became an array of 4-way sets (`XLB_FLOW_SETS`, was the hash map
/// `XLB_FLOWS`); `XLB_ST_LB` gained `flow_displaced` (10 entries); the ICMP rate limit:
/// `PolicyConfig::icmp_rate` (was padding), a third `XLB_WINDOWS` window and the drop reason
/// `icmp_rate_limited` (26 entries); `XLB_VIP_BY_ID6` was added.
pub const LAYOUT_VERSION: u32 = 7;

/// Address families as stored in keys (not the kernel's AF_* numbers, which differ by OS).
pub mod family {
    /// IPv4: the address is in word 0, words 1..3 are zero.
    pub const V4: u8 = 4;
    /// IPv6: all four words are used.
    pub const V6: u8 = 6;
}

/// Forwarding modes of a VIP, as stored in [`maps::VipMeta::mode`].
pub mod forward_mode {
    /// Direct server return on the same L2 segment: rewrite the destination MAC to the backend's.
    pub const L2: u32 = 1;
    /// Direct server return through IP-in-IP encapsulation towards the backend's address:
    /// IPv4-in-IPv4, IPv6-in-IPv6, or IPv4-in-IPv6 when an IPv4 VIP's backend is IPv6.
    pub const IPIP: u32 = 2;
}

/// IP protocol numbers the datapath cares about.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// IPv4-in-IPv4 encapsulation.
    pub const IPIP: u8 = 4;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6-in-IPv6 encapsulation (the outer header's next header).
    pub const IPV6: u8 = 41;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// Names of the maps in the load balancer object, so both sides agree on them. Kernel map names
/// are limited to 15 bytes.
pub mod map_names {
    /// VIP (address, port, protocol) -> [`crate::VipMeta`].
    pub const VIPS: &str = "XLB_VIPS";
    /// Addresses that carry at least one VIP -> how many; the exact answer to "is this a VIP
    /// address", asked only where [`VIP_FILTER`] cannot decide.
    pub const VIP_ADDRS: &str = "XLB_VIP_ADDRS";
    /// Filter of VIP addresses, a bit per [`crate::hash::vip_filter_slot`] in u64 words: a clear
    /// bit means "not a VIP", so other traffic passes after one array read.
    pub const VIP_FILTER: &str = "XLB_VIP_FILTER";
    /// Backend id -> [`crate::Backend`].
    pub const BACKENDS: &str = "XLB_BACKENDS";
    /// Flat array of Maglev slots (backend ids); each VIP owns a region of it.
    pub const MAGLEV: &str = "XLB_MAGLEV";
    /// IPv4 flow table: an array of [`crate::FlowSet`]s, each [`crate::FLOW_WAYS`] slots of
    /// ([`crate::FlowKey`], [`crate::FlowValue`]) in two cache lines. A new flow takes a free
    /// slot of its set, else the one seen least recently; `xlbd` empties idle slots.
    pub const FLOWS: &str = "XLB_FLOW_SETS";
    /// The program's read-only global holding the number of sets in [`FLOWS`] (not a map: set
    /// by the loader, a constant to the verifier).
    pub const FLOW_SET_COUNT: &str = "XLB_FLOW_SET_COUNT";
    /// IPv4 VIP id -> [`crate::VipById`]: the VIP of an established flow without a hash lookup.
    pub const VIP_BY_ID: &str = "XLB_VIP_BY_ID";
    /// IPv6 VIP id -> [`crate::VipById6`], as [`VIP_BY_ID`] for IPv4.
    pub const VIP_BY_ID6: &str = "XLB_VIP_BY_ID6";
    /// One `u32`: the datapath clock in seconds (`CLOCK_MONOTONIC`), written by `xlbd` every
    /// second; flow entries record it at each packet ([`crate::FlowValue::seen_s`]).
    pub const CLOCK: &str = "XLB_CLOCK";
    /// IPv6 VIP (address, port, protocol) -> [`crate::VipMeta`].
    pub const VIPS6: &str = "XLB_VIPS6";
    /// IPv6 flow table: [`crate::FlowKey6`] -> [`crate::FlowValue`], a preallocated hash map
    /// whose idle and oldest entries `xlbd` removes (nothing is evicted on the packet path).
    pub const FLOWS6: &str = "XLB_FLOWS6";
    /// One [`crate::Globals`] entry: interface MAC, encapsulation source, layout version.
    pub const GLOBALS: &str = "XLB_GLOBALS";
    /// Per-CPU [`crate::Counter`] per XDP action.
    pub const STATS_ACTIONS: &str = "XLB_ST_ACTIONS";
    /// Per-CPU packet count per [`crate::DropReason`].
    pub const STATS_DROPS: &str = "XLB_ST_DROPS";
    /// Per-CPU count per [`crate::LbCounter`].
    pub const STATS_LB: &str = "XLB_ST_LB";
    /// Per-CPU [`crate::Counter`] per VIP id.
    pub const STATS_VIPS: &str = "XLB_ST_VIPS";
    /// Per-CPU [`crate::Counter`] per backend id.
    pub const STATS_BACKENDS: &str = "XLB_ST_BACKENDS";
    /// Decap program: local VIP addresses whose encapsulated packets it strips.
    pub const DECAP_VIPS: &str = "XLBD_VIPS";
    /// One [`crate::PolicyConfig`]: which lists are in use, rates, unserved/options/fragments.
    pub const POLICY: &str = "XLB_POLICY";
    /// Global IPv4 CIDR trie: prefix -> [`crate::verdict`].
    pub const POLICY_V4: &str = "XLB_POL_V4";
    /// Global IPv6 CIDR trie: prefix -> [`crate::verdict`].
    pub const POLICY_V6: &str = "XLB_POL_V6";
    /// A 16-bit [`crate::policy::v4_entry`] per IPv4 /24: none, allow, deny, or its table.
    pub const POLICY_V4_24: &str = "XLB_POL_V4_24";
    /// Mixed IPv4 /24s' tables: an array of [`crate::policy::MixedSlash24`] (a code per address).
    pub const POLICY_V4_MIX: &str = "XLB_POL_V4_MIX";
    /// One bit per IPv4 /16 that some global prefix touches: the first, cache-sized filter.
    pub const POLICY_V4_B16: &str = "XLB_POL_V4_B16";
    /// Per-VIP source ranges: ([`crate::VipSourceKey`]) prefix -> [`crate::verdict::ALLOW`].
    pub const POLICY_VIP: &str = "XLB_POL_VIP";
    /// Per-source token buckets (LRU, fixed size): IPv4 source -> [`crate::TokenBucket`].
    pub const RATE: &str = "XLB_RATE";
    /// Per-VIP source ranges of IPv6 VIPs: ([`crate::VipSourceKey6`]) prefix ->
    /// [`crate::verdict::ALLOW`].
    pub const POLICY_VIP6: &str = "XLB_POL_VIP6";
    /// Per-source token buckets of IPv6 sources (LRU, fixed size): the source's /64
    /// ([`crate::policy::Source6`]) -> [`crate::TokenBucket`].
    pub const RATE6: &str = "XLB_RATE6";
    /// Per-CPU [`crate::RateWindow`]s, indexed by [`crate::policy::window`].
    pub const WINDOWS: &str = "XLB_WINDOWS";
    /// Ring buffer of [`crate::Event`]s.
    pub const EVENTS: &str = "XLB_EVENTS";
    /// Per-CPU count per [`crate::PolicyCounter`].
    pub const STATS_POLICY: &str = "XLB_ST_POLICY";
    /// Decap program: per-CPU packet count per [`crate::DecapCounter`].
    pub const DECAP_STATS: &str = "XLBD_STATS";
}

/// Names of the XDP programs in the objects.
pub mod program_names {
    /// The load balancer.
    pub const LB: &str = "xlb_lb";
    /// The backend-side decapsulation program.
    pub const DECAP: &str = "xlb_decap";
    /// Passes every packet: attached to a veth peer so it accepts XDP_TX frames.
    pub const PASS: &str = "xlb_pass";
    /// Swaps MACs and returns XDP_TX: the floor the benchmarks compare against.
    pub const FLOOR: &str = "xlb_floor";
}

/// Number of XDP action codes (ABORTED, DROP, PASS, TX, REDIRECT).
pub const XDP_ACTION_COUNT: u32 = 5;
