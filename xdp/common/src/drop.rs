//! Why the datapath dropped a packet. One enum for both sides: the kernel counts by index, the
//! daemon and CLI print the names.

/// A numbered drop reason. The number is the index into the per-CPU `XLB_ST_DROPS` array and
/// never changes meaning; new reasons are appended.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Frame shorter than its Ethernet (or 802.1Q) header.
    EthTruncated = 0,
    /// IPv4 ethertype but fewer bytes than a minimal IPv4 header.
    Ipv4Truncated = 1,
    /// IPv4 header with a version other than 4 or a header length below 20 bytes (IHL < 5).
    Ipv4BadHeader = 2,
    /// IPv4 total length shorter than its header, or longer than the frame.
    Ipv4BadLength = 3,
    /// An IPv4 fragment addressed to a VIP address: it has no reliable ports to balance on.
    Fragment = 4,
    /// TCP or UDP header to a VIP address cut short.
    L4Truncated = 5,
    /// The VIP exists but has no backend to send to.
    NoBackend = 6,
    /// The Maglev slot or the backend it names could not be read (tables being rebuilt wrongly).
    TableMiss = 7,
    /// Growing the packet for encapsulation failed, or the result would exceed 64 KiB.
    EncapFailed = 8,
    /// The source is in the global deny list (its most specific match is a deny prefix).
    Denied = 9,
    /// The global allow list of the source's family is not empty and the source matches none.
    NotAllowed = 10,
    /// The source is outside the `source_ranges` of the VIP it is addressed to.
    VipSourceDenied = 11,
    /// TCP/UDP to a VIP address on a port no VIP serves, or another protocol (not ICMP, which
    /// has rules of its own) to a VIP address, with `policy.unserved = "drop"`.
    Unserved = 12,
    /// IPv4 with options addressed to a VIP, with `policy.ipv4_options = "drop"`.
    Ipv4Options = 13,
    /// TCP to a VIP with an impossible flag combination (none, SYN with FIN or RST, FIN
    /// without ACK) or a data offset below 5.
    TcpBadFlags = 14,
    /// A new TCP connection over the source's rate limit (`policy.rate_limit`).
    RateLimited = 15,
    /// IPv6 ethertype but fewer bytes than the fixed IPv6 header.
    Ipv6Truncated = 16,
    /// IPv6 ethertype with a version other than 6 in the header.
    Ipv6BadHeader = 17,
    /// IPv6 payload length longer than the frame, or an extension header running past it.
    Ipv6BadLength = 18,
    /// IPv6 to a VIP address with an extension header the balancer does not skip (a routing
    /// header with segments left, hop-by-hop not first, ESP/AH/mobility...) or more than
    /// four of them.
    Ipv6ExtHeader = 19,
    /// An IPv6 fragment (fragment header) addressed to a VIP address.
    Ipv6Fragment = 20,
    /// ICMP echo request to a VIP address, with `policy.icmp_echo = "drop"`.
    IcmpEcho = 21,
    /// ICMP to a VIP address that no rule answers or routes (not an echo request, not an error
    /// about a VIP flow), with `policy.icmp_other = "drop"`.
    IcmpUnhandled = 22,
    /// ICMP error to a VIP address whose embedded (quoted) header is cut short, not IPv4, a
    /// fragment without ports, or not sent from the address the error is addressed to.
    IcmpBadQuote = 23,
    /// Encapsulation would make the packet larger than `encap.mtu`, and it could not be
    /// answered with "fragmentation needed" (DF clear, an ICMP error itself, or
    /// `encap.on_too_big = "drop"`).
    EncapTooBig = 24,
    /// An echo request, or a packet that would have been answered with "fragmentation
    /// needed" / "packet too big", past `policy.icmp_rate_limit`: this CPU already sent that
    /// many ICMP messages in the current second.
    IcmpRateLimited = 25,
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [DropReason; 26] = [
        DropReason::EthTruncated,
        DropReason::Ipv4Truncated,
        DropReason::Ipv4BadHeader,
        DropReason::Ipv4BadLength,
        DropReason::Fragment,
        DropReason::L4Truncated,
        DropReason::NoBackend,
        DropReason::TableMiss,
        DropReason::EncapFailed,
        DropReason::Denied,
        DropReason::NotAllowed,
        DropReason::VipSourceDenied,
        DropReason::Unserved,
        DropReason::Ipv4Options,
        DropReason::TcpBadFlags,
        DropReason::RateLimited,
        DropReason::Ipv6Truncated,
        DropReason::Ipv6BadHeader,
        DropReason::Ipv6BadLength,
        DropReason::Ipv6ExtHeader,
        DropReason::Ipv6Fragment,
        DropReason::IcmpEcho,
        DropReason::IcmpUnhandled,
        DropReason::IcmpBadQuote,
        DropReason::EncapTooBig,
        DropReason::IcmpRateLimited,
    ];
    /// Number of reasons: the size of the per-CPU drop counter array.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Short name for logs, metrics labels and `--reason` filters.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::EthTruncated => "eth_truncated",
            DropReason::Ipv4Truncated => "ipv4_truncated",
            DropReason::Ipv4BadHeader => "ipv4_bad_header",
            DropReason::Ipv4BadLength => "ipv4_bad_length",
            DropReason::Fragment => "fragment",
            DropReason::L4Truncated => "l4_truncated",
            DropReason::NoBackend => "no_backend",
            DropReason::TableMiss => "table_miss",
            DropReason::EncapFailed => "encap_failed",
            DropReason::Denied => "denied",
            DropReason::NotAllowed => "not_allowed",
            DropReason::VipSourceDenied => "vip_source_denied",
            DropReason::Unserved => "unserved",
            DropReason::Ipv4Options => "ipv4_options",
            DropReason::TcpBadFlags => "tcp_bad_flags",
            DropReason::RateLimited => "rate_limited",
            DropReason::Ipv6Truncated => "ipv6_truncated",
            DropReason::Ipv6BadHeader => "ipv6_bad_header",
            DropReason::Ipv6BadLength => "ipv6_bad_length",
            DropReason::Ipv6ExtHeader => "ipv6_ext_header",
            DropReason::Ipv6Fragment => "ipv6_fragment",
            DropReason::IcmpEcho => "icmp_echo",
            DropReason::IcmpUnhandled => "icmp_unhandled",
            DropReason::IcmpBadQuote => "icmp_bad_quote",
            DropReason::EncapTooBig => "encap_too_big",
            DropReason::IcmpRateLimited => "icmp_rate_limited",
        }
    }

    /// One sentence an operator can read.
    pub const fn description(self) -> &'static str {
        match self {
            DropReason::EthTruncated => "frame shorter than its Ethernet/802.1Q header",
            DropReason::Ipv4Truncated => "IPv4 packet shorter than a minimal IPv4 header",
            DropReason::Ipv4BadHeader => "IPv4 version is not 4 or header length is below 20 bytes",
            DropReason::Ipv4BadLength => "IPv4 total length disagrees with header or frame",
            DropReason::Fragment => "IPv4 fragment addressed to a VIP address",
            DropReason::L4Truncated => "TCP/UDP header to a VIP address is cut short",
            DropReason::NoBackend => "VIP has no backend",
            DropReason::TableMiss => "Maglev slot or backend entry missing",
            DropReason::EncapFailed => {
                "could not grow the packet for encapsulation (or it would exceed 64 KiB)"
            }
            DropReason::Denied => "source is in the global deny list",
            DropReason::NotAllowed => "source matches no prefix of the non-empty global allow list",
            DropReason::VipSourceDenied => "source is outside the VIP's source_ranges",
            DropReason::Unserved => "VIP address, but no VIP serves this port or protocol",
            DropReason::Ipv4Options => "IPv4 options on a packet to a VIP (policy drops them)",
            DropReason::TcpBadFlags => {
                "TCP flag combination no real stack sends, or bad data offset"
            }
            DropReason::RateLimited => "new TCP connection over the per-source rate limit",
            DropReason::Ipv6Truncated => "IPv6 packet shorter than the fixed IPv6 header",
            DropReason::Ipv6BadHeader => "IPv6 ethertype but the header's version is not 6",
            DropReason::Ipv6BadLength => {
                "IPv6 payload length or an extension header runs past the frame"
            }
            DropReason::Ipv6ExtHeader => {
                "IPv6 extension header to a VIP address that is not skipped, or too many"
            }
            DropReason::Ipv6Fragment => "IPv6 fragment addressed to a VIP address",
            DropReason::IcmpEcho => "ICMP echo request to a VIP address (policy drops them)",
            DropReason::IcmpUnhandled => {
                "ICMP to a VIP address that is neither an echo request nor an error about a VIP flow"
            }
            DropReason::IcmpBadQuote => {
                "ICMP error to a VIP address whose quoted header is cut short or inconsistent"
            }
            DropReason::EncapTooBig => {
                "encapsulated packet would exceed encap.mtu and cannot be answered with an ICMP error"
            }
            DropReason::IcmpRateLimited => {
                "ICMP reply or error not sent: this CPU reached policy.icmp_rate_limit this second"
            }
        }
    }

    /// The reason with this index, if any.
    pub const fn from_index(index: u32) -> Option<DropReason> {
        if index < Self::COUNT {
            Some(Self::ALL[index as usize])
        } else {
            None
        }
    }

    /// The reason with this name, if any (for `--reason` filters).
    pub fn from_name(name: &str) -> Option<DropReason> {
        Self::ALL.into_iter().find(|reason| reason.name() == name)
    }
}
