//! Datapath events: what the load balancer writes to the `XLB_EVENTS` ring buffer for a
//! sampled drop or forward, and what `xlb observe` prints.

/// [`Event::verdict`] values.
pub mod event_verdict {
    /// The packet was dropped; [`super::Event::reason`] says why.
    pub const DROP: u8 = 1;
    /// The packet was forwarded to [`super::Event::backend_id`].
    pub const FORWARD: u8 = 2;
}

/// "No VIP" or "no backend" in [`Event::vip_id`] and [`Event::backend_id`].
pub const EVENT_NO_ID: u32 = u32::MAX;

/// One event, 64 bytes. Addresses and ports are as the packet carries them (network byte
/// order); a field the packet did not have (ports of a fragment, say) is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// bpf_ktime_get_ns() when the packet was seen (monotonic clock, not wall time).
    pub ts_ns: u64,
    /// Source address words.
    pub src: [u32; 4],
    /// Destination address words.
    pub dst: [u32; 4],
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Address family ([`crate::family`]); 0 when the packet had no readable IP header.
    pub family: u8,
    /// [`event_verdict`].
    pub verdict: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
    /// [`crate::DropReason`] index of a drop; zero for a forward.
    pub reason: u32,
    /// VIP id of a forward, [`EVENT_NO_ID`] otherwise.
    pub vip_id: u32,
    /// Backend id of a forward, [`EVENT_NO_ID`] otherwise.
    pub backend_id: u32,
    /// Explicit padding, always zero.
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<Event>() == 64);

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], Copy, no implicit padding (size asserted above), any bit pattern valid.
unsafe impl aya::Pod for Event {}
