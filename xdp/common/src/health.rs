//! Health-probe encapsulation (`xlb_hc_encap`, a tc egress program on the balancer): a probe
//! socket with `SO_MARK` = m sends to VIP:port; the program looks m up in `XLBH_TARGETS` and
//! wraps the packet in IPv4-in-IPv4 towards that backend, exactly as the load balancer would. The
//! backend decapsulates and answers from the VIP, so the probe connects only if the backend
//! really serves the VIP.
//!
//! A map of its own object, not of the load balancer's: [`crate::LAYOUT_VERSION`] is unaffected.

/// Name of the tc classifier program in the `xlb-hc-encap` object.
pub const PROGRAM: &str = "xlb_hc_encap";
/// Socket mark -> [`HcTarget`]. Kernel map names are limited to 15 bytes.
pub const TARGETS_MAP: &str = "XLBH_TARGETS";
/// Per-CPU packet count per [`HcCounter`].
pub const STATS_MAP: &str = "XLBH_STATS";
/// Capacity of [`TARGETS_MAP`]: probe targets (backends x VIPs probed) at the same time.
pub const MAX_TARGETS: u32 = 4096;

/// Where packets of one probe mark go. Key: the socket mark (a `u32`, never 0: mark 0 is "no
/// mark" and is never looked up).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HcTarget {
    /// Backend address, network byte order: the outer destination.
    pub backend: u32,
    /// Outer source address, network byte order: the balancer interface's own address, so the
    /// backend's path back to it is an ordinary one.
    pub outer_src: u32,
    /// Destination MAC of the encapsulated frame: the backend's, or the next hop's towards it.
    pub mac: [u8; 6],
    /// Explicit padding, always zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<HcTarget>() == 16);

/// What the probe encapsulator did with a packet, counted per CPU in [`STATS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HcCounter {
    /// A probe packet was encapsulated towards its target.
    Encapsulated = 0,
    /// Not a probe (no mark, or a mark without a target): passed untouched.
    Passed = 1,
    /// A probe packet that could not be encapsulated (not Ethernet + IPv4, malformed, or the
    /// kernel refused the room): dropped, so the probe fails rather than reach the VIP unwrapped.
    Errors = 2,
}

impl HcCounter {
    /// Every counter, in index order.
    pub const ALL: [HcCounter; 3] = [
        HcCounter::Encapsulated,
        HcCounter::Passed,
        HcCounter::Errors,
    ];
    /// Number of counters: the size of the per-CPU array.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Name used in logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            HcCounter::Encapsulated => "encapsulated",
            HcCounter::Passed => "passed",
            HcCounter::Errors => "errors",
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], Copy, no implicit padding (size asserted above), valid for any bit pattern.
unsafe impl aya::Pod for HcTarget {}
