//! Counter values and the indices of the load balancer's own counters.

/// Packets and bytes, one per CPU in per-CPU arrays; user space sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct Counter {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (frame length as the program saw it).
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

/// What happened in the load-balancing stage, counted per CPU in `XLB_ST_LB`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbCounter {
    /// A packet's flow was found in the flow table and its backend is still valid.
    FlowHit = 0,
    /// A packet started a new flow: its backend came from the Maglev table.
    FlowNew = 1,
    /// A flow entry pointed at a backend that was removed: the flow was rehashed.
    FlowBackendGone = 2,
    /// The IPv6 flow table refused a new entry, in practice because it was full (the packet
    /// was still forwarded, by the Maglev table; the flow is just not remembered).
    FlowInsertFailed = 3,
    /// A new flow's key was already in the flow table (a SYN reusing the addresses and ports
    /// of a flow still remembered, or a flow whose backend was removed): its entry was
    /// overwritten, so the table did not grow.
    FlowReplaced = 4,
    /// An ICMP echo request to a VIP address was answered in place (`policy.icmp_echo`).
    IcmpEchoReplied = 5,
    /// An ICMP error about a VIP flow (destination unreachable, fragmentation needed, time
    /// exceeded, parameter problem) was forwarded to the flow's backend.
    IcmpErrorForwarded = 6,
    /// ICMP to a VIP address was passed to the kernel (`policy.icmp_echo` or
    /// `policy.icmp_other` = "pass").
    IcmpPassed = 7,
    /// Encapsulation would have exceeded `encap.mtu`: an ICMP "fragmentation needed" was sent
    /// back to the client instead.
    IcmpTooBigSent = 8,
    /// A new IPv4 flow found its set of the flow table full and took the slot of the flow
    /// seen least recently there. That flow's next packet, if any, is balanced again by the
    /// Maglev table (the same backend unless the backends changed) and remembered again.
    FlowDisplaced = 9,
}

impl LbCounter {
    /// Every counter, in index order.
    pub const ALL: [LbCounter; 10] = [
        LbCounter::FlowHit,
        LbCounter::FlowNew,
        LbCounter::FlowBackendGone,
        LbCounter::FlowInsertFailed,
        LbCounter::FlowReplaced,
        LbCounter::IcmpEchoReplied,
        LbCounter::IcmpErrorForwarded,
        LbCounter::IcmpPassed,
        LbCounter::IcmpTooBigSent,
        LbCounter::FlowDisplaced,
    ];
    /// Number of counters: the size of the per-CPU array.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Name used in logs, the stats file and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            LbCounter::FlowHit => "flow_hit",
            LbCounter::FlowNew => "flow_new",
            LbCounter::FlowBackendGone => "flow_backend_gone",
            LbCounter::FlowInsertFailed => "flow_insert_failed",
            LbCounter::FlowReplaced => "flow_replaced",
            LbCounter::IcmpEchoReplied => "icmp_echo_replied",
            LbCounter::IcmpErrorForwarded => "icmp_error_forwarded",
            LbCounter::IcmpPassed => "icmp_passed",
            LbCounter::IcmpTooBigSent => "icmp_too_big_sent",
            LbCounter::FlowDisplaced => "flow_displaced",
        }
    }
}

/// What the decap program did, counted per CPU in `XLBD_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapCounter {
    /// An IPIP packet for a local VIP was stripped and passed to the stack.
    Decapsulated = 0,
    /// Not an encapsulated packet for a local VIP: passed untouched.
    Passed = 1,
    /// An encapsulated packet too short or malformed to strip: dropped.
    Malformed = 2,
}

impl DecapCounter {
    /// Every counter, in index order.
    pub const ALL: [DecapCounter; 3] = [
        DecapCounter::Decapsulated,
        DecapCounter::Passed,
        DecapCounter::Malformed,
    ];
    /// Number of counters: the size of the per-CPU array.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Name used in logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            DecapCounter::Decapsulated => "decapsulated",
            DecapCounter::Passed => "passed",
            DecapCounter::Malformed => "malformed",
        }
    }
}
