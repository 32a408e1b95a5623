//! Keys and values of the datapath's maps. Addresses are in network byte order exactly as they
//! appear in the packet, so the kernel side copies them without conversion; ports are in network
//! byte order too. Where a map can hold both families, an address is four 32-bit words (IPv4 in
//! word 0, the rest zero).
//!
//! The per-packet maps (`XLB_VIPS`, `XLB_FLOW_SETS`) have IPv4-sized keys: every lookup hashes and
//! compares the whole key, and a key with room for IPv6 addresses costs an IPv4 packet more
//! than twice the hashing and a larger flow entry. IPv6 gets maps of its own (as Katran does):
//! `XLB_VIPS6` ([`VipKey6`]) and `XLB_FLOWS6` ([`FlowKey6`]); the backends, the Maglev slots
//! and the counters are shared by both families.

/// Key of the VIP map: one IPv4 service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// VIP address (network byte order).
    pub addr: u32,
    /// Destination port in network byte order; 0 means every port of this protocol.
    pub port: u16,
    /// IP protocol ([`crate::proto`]).
    pub proto: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 8);

/// Key of the IPv6 VIP map (`XLB_VIPS6`): one IPv6 service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey6 {
    /// VIP address (network byte order words).
    pub addr: [u32; 4],
    /// Destination port in network byte order; 0 means every port of this protocol.
    pub port: u16,
    /// IP protocol ([`crate::proto`]).
    pub proto: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey6>() == 20);

/// What the datapath needs to balance one VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into the per-VIP counters.
    pub vip_id: u32,
    /// Forwarding mode ([`crate::forward_mode`]).
    pub mode: u32,
    /// Number of Maglev slots (a prime).
    pub table_size: u32,
    /// First slot of this VIP's active table in the flat Maglev array. The daemon writes a new
    /// table into a free region and then replaces this value: one atomic switch.
    pub table_offset: u32,
    /// Backends in the table; 0 means drop with [`crate::DropReason::NoBackend`].
    pub backend_count: u32,
}
const _: () = assert!(core::mem::size_of::<VipMeta>() == 20);

/// A VIP by its id (`XLB_VIP_BY_ID` for IPv4, `XLB_VIP_BY_ID6` for IPv6): its entry and its
/// key, so that a packet of an established flow finds its VIP with an array read (the id is in
/// the flow's entry) instead of a hash lookup, after checking that the key still matches the
/// packet. `K` is the family's VIP key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipByIdOf<K> {
    /// The VIP's entry, as in the family's VIP map.
    pub meta: VipMeta,
    /// The VIP's key, as in the family's VIP map; all zero for an id no VIP of the family
    /// holds (protocol 0 matches no packet).
    pub key: K,
}

/// An IPv4 VIP by its id (`XLB_VIP_BY_ID`).
pub type VipById = VipByIdOf<VipKey>;
const _: () = assert!(core::mem::size_of::<VipById>() == 28);

/// An IPv6 VIP by its id (`XLB_VIP_BY_ID6`).
pub type VipById6 = VipByIdOf<VipKey6>;
const _: () = assert!(core::mem::size_of::<VipById6>() == 40);

/// Key of the VIP address set: an address that carries at least one VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipAddrKey {
    /// The address (network byte order words).
    pub addr: [u32; 4],
    /// Address family ([`crate::family`]).
    pub family: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<VipAddrKey>() == 20);

/// Value of the VIP address set: how many VIPs use the address (user space bookkeeping; the
/// datapath only tests presence).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipAddrValue {
    /// Number of VIPs on this address.
    pub vip_count: u32,
}
const _: () = assert!(core::mem::size_of::<VipAddrValue>() == 4);

/// Backend entry flags.
pub mod backend_flags {
    /// The backend exists: flows pinned to it keep going to it. Cleared when it is removed, so
    /// flows pinned to it are rehashed.
    pub const ACTIVE: u32 = 1;
}

/// One backend of one VIP. Entries are written once; a changed backend gets a new id, and the
/// only later write clears [`backend_flags::ACTIVE`], so the datapath never reads a half-written
/// address or MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Backend address (network byte order words): the IPIP outer destination.
    pub addr: [u32; 4],
    /// Destination MAC of frames for this backend: the backend's own (L2 mode) or the next
    /// hop's (IPIP mode).
    pub mac: [u8; 6],
    /// Address family of `addr` ([`crate::family`]).
    pub family: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
    /// The VIP this backend belongs to; a flow entry is only honoured for the same VIP.
    pub vip_id: u32,
    /// [`backend_flags`].
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 32);

/// Flow table key: the IPv4 5-tuple as the packet carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address (network byte order).
    pub src: u32,
    /// Destination address (network byte order).
    pub dst: u32,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Explicit padding, always zero. (One byte and a half-word rather than an array: the
    /// compiler zeroes an array with a call to `memset`, a subprogram in BPF.)
    pub _pad: u8,
    /// Explicit padding, always zero.
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);

/// IPv6 flow table key (`XLB_FLOWS6`): the IPv6 5-tuple as the packet carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    /// Source address (network byte order words).
    pub src: [u32; 4],
    /// Destination address (network byte order words).
    pub dst: [u32; 4],
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol (the upper-layer header after any extension headers).
    pub proto: u8,
    /// Explicit padding, always zero (a byte and a half-word, as in [`FlowKey`]).
    pub _pad: u8,
    /// Explicit padding, always zero.
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKey6>() == 40);

/// Flow table value: the backend the flow started on, the generation of the global lists its
/// source was last checked under, and when the flow last sent a packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Backend id.
    pub backend_id: u32,
    /// [`crate::PolicyConfig::lists_gen`] when the flow's source last passed the global lists:
    /// while it is the current one, the flow's packets skip the lists.
    pub lists_gen: u32,
    /// The datapath clock (`XLB_CLOCK`, seconds) at the flow's last packet: `xlbd` removes
    /// entries idle for longer than `limits.flow_idle_timeout`, and the oldest first when the
    /// IPv6 table fills up; a new IPv4 flow meeting a full set takes the slot with the oldest.
    /// Written by the datapath only when it differs, so at most once a second.
    pub seen_s: u32,
    /// The id of the VIP the flow was balanced for ([`VipById`]).
    pub vip_id: u32,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 16);

/// Ways of a [`FlowSet`]: slots a flow may occupy.
pub const FLOW_WAYS: usize = 4;

/// One IPv4 flow's slot in the flow table (`XLB_FLOW_SETS`). Empty while `key.proto` is 0
/// (no balanced flow has protocol 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    /// The flow's 5-tuple.
    pub key: FlowKey,
    /// Its backend, VIP and last-seen second.
    pub value: FlowValue,
}
const _: () = assert!(core::mem::size_of::<FlowSlot>() == 32);

/// A set of the IPv4 flow table: the [`FLOW_WAYS`] slots a flow hashing to it may take, two
/// cache lines (the kernel stores array values at their size, 128-byte aligned here), so
/// that a lookup or an insert reads one set instead of a hash bucket and a chain of
/// elements.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSet {
    /// The slots, the first free one taken first.
    pub slots: [FlowSlot; FLOW_WAYS],
}
const _: () = assert!(core::mem::size_of::<FlowSet>() == 128);

/// Sets per flow of `limits.flow_table_size`: the table has twice as many slots as flows it
/// is sized for, so that at that size few sets are full (a full set gives a new flow the
/// slot of the flow seen least recently).
pub const FLOW_SLOTS_PER_FLOW: u32 = 2;

/// Sets of an IPv4 flow table sized for `flows` flows.
pub const fn flow_sets(flows: u32) -> u32 {
    let slots = flows.saturating_mul(FLOW_SLOTS_PER_FLOW);
    let sets = slots / FLOW_WAYS as u32;
    if sets == 0 { 1 } else { sets }
}

/// The set of a flow of hash `hash` in a table of `sets` sets: the high half of the 64-bit
/// product (multiply-shift), uniform over any set count without a division, and independent
/// of the Maglev slot, which takes the hash modulo a prime.
#[inline(always)]
pub const fn flow_set_index(hash: u32, sets: u32) -> u32 {
    ((hash as u64 * sets as u64) >> 32) as u32
}

/// Settings of the whole datapath, one entry in `XLB_GLOBALS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    /// MAC address of the interface the program is attached to: source MAC of forwarded frames.
    pub if_mac: [u8; 6],
    /// Largest IPv4 packet encapsulation may produce (`encap.mtu`, host byte order); a packet
    /// that would grow past it is answered or dropped per [`Globals::encap_flags`]. 0 = no check.
    pub encap_mtu: u16,
    /// IPIP outer source prefix (network byte order).
    pub ipip_src_prefix: u32,
    /// Host bits of the outer source filled from the flow hash (network byte order mask), so a
    /// backend NIC's RSS spreads flows over its queues.
    pub ipip_src_host_mask: u32,
    /// [`crate::LAYOUT_VERSION`] of the daemon that wrote the maps.
    pub layout_version: u32,
    /// Outer IPv6 source prefix of IPv6 encapsulation (IPv6-in-IPv6, IPv4-in-IPv6), network
    /// byte order words; all zero when no `encap.source_prefix_v6` is configured.
    pub ip6_src_prefix: [u32; 4],
    /// Host bits of the outer IPv6 source filled from the flow hash (network byte order words).
    pub ip6_src_host_mask: [u32; 4],
    /// [`encap_flags`].
    pub encap_flags: u32,
}
const _: () = assert!(core::mem::size_of::<Globals>() == 56);

/// Bits of [`Globals::encap_flags`].
pub mod encap_flags {
    /// `encap.on_too_big = "drop"`: a packet too big to encapsulate is dropped even with DF set,
    /// instead of answered with ICMP "fragmentation needed".
    pub const TOO_BIG_DROP: u32 = 1 << 0;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    use crate::Counter;

    // SAFETY: every type below is #[repr(C)], Copy, has no implicit padding (sizes asserted
    // above) and is valid for any bit pattern.
    unsafe impl aya::Pod for VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipMeta {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipAddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipAddrValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowValue {}
    // SAFETY: as above: repr(C), integers only, no padding (size asserted).
    unsafe impl aya::Pod for VipById {}
    // SAFETY: as above: repr(C), integers only, no padding (size asserted).
    unsafe impl aya::Pod for VipById6 {}
    // SAFETY: as above: two Pod structs, no padding (size asserted).
    unsafe impl aya::Pod for FlowSlot {}
    // SAFETY: as above: an array of FlowSlot, no padding (size asserted).
    unsafe impl aya::Pod for FlowSet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Globals {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counter {}
}
