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
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [DropReason; 9] = [
        DropReason::EthTruncated,
        DropReason::Ipv4Truncated,
        DropReason::Ipv4BadHeader,
        DropReason::Ipv4BadLength,
        DropReason::Fragment,
        DropReason::L4Truncated,
        DropReason::NoBackend,
        DropReason::TableMiss,
        DropReason::EncapFailed,
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
}
