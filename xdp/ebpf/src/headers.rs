//! On-the-wire header layouts. Multi-byte fields are kept in network byte order as raw
//! integers; conversions happen where a value is interpreted, not where it is copied.

/// Ethernet header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// Ethertype, network byte order.
    pub ether_type: u16,
}
const _: () = assert!(core::mem::size_of::<EthHdr>() == 14);

/// 802.1Q tag that follows the MAC addresses when the ethertype is [`ETH_P_8021Q`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VlanHdr {
    /// Priority, DEI and VLAN id, network byte order.
    pub tci: u16,
    /// Encapsulated ethertype, network byte order.
    pub ether_type: u16,
}
const _: () = assert!(core::mem::size_of::<VlanHdr>() == 4);

/// IPv4 header without options.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub version_ihl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    /// Total length, network byte order.
    pub tot_len: u16,
    /// Identification.
    pub id: u16,
    /// Flags and fragment offset, network byte order.
    pub frag_off: u16,
    /// Time to live.
    pub ttl: u8,
    /// Protocol of the payload.
    pub protocol: u8,
    /// Header checksum.
    pub check: u16,
    /// Source address, network byte order.
    pub saddr: u32,
    /// Destination address, network byte order.
    pub daddr: u32,
}
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == 20);

/// The part of TCP and UDP headers the balancer reads: the ports.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PortsHdr {
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
}

/// The start of a TCP header, up to the flags: ports, then what the balancer needs to tell a
/// connection's first packet.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpStartHdr {
    /// The ports.
    pub ports: PortsHdr,
    /// Sequence and acknowledgement numbers (not read).
    pub seq_ack: [u8; 8],
    /// Data offset and reserved bits.
    pub data_offset: u8,
    /// Flags ([`tcp_flags`]).
    pub flags: u8,
}
const _: () = assert!(core::mem::size_of::<TcpStartHdr>() == 14);

/// ICMP header (RFC 792): the 4 bytes every message has, then the 4 that depend on the type
/// (echo identifier and sequence, the next-hop MTU of "fragmentation needed", unused).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpHdr {
    /// Message type ([`icmp_type`]).
    pub kind: u8,
    /// Code within the type.
    pub code: u8,
    /// Checksum over the whole ICMP message.
    pub check: u16,
    /// Type-specific word, network byte order.
    pub rest: [u16; 2],
}
const _: () = assert!(core::mem::size_of::<IcmpHdr>() == 8);
/// ICMP header length.
pub const ICMP_HLEN: usize = 8;

/// ICMP (IPv4) message types the balancer handles.
pub mod icmp_type {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable (code 4: fragmentation needed and DF set).
    pub const DEST_UNREACH: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem.
    pub const PARAMETER_PROBLEM: u8 = 12;
    /// Destination unreachable code: fragmentation needed and DF set (RFC 1191).
    pub const FRAG_NEEDED: u8 = 4;
}

/// ICMPv6 message types the balancer handles (RFC 4443, RFC 4861). The ICMPv6 header has
/// the layout of [`IcmpHdr`]; its checksum also covers the IPv6 pseudo-header.
pub mod icmp6_type {
    /// Destination unreachable.
    pub const DEST_UNREACH: u8 = 1;
    /// Packet too big (the type-specific word is the MTU, 32 bits).
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Parameter problem.
    pub const PARAMETER_PROBLEM: u8 = 4;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// First neighbour discovery type (router solicitation).
    pub const ND_FIRST: u8 = 133;
    /// Last neighbour discovery type (redirect).
    pub const ND_LAST: u8 = 137;
}

/// The smallest MTU every IPv6 link has (RFC 8200 5): no packet too big may report less, and
/// an ICMPv6 error the balancer sends stays within it.
pub const IPV6_MIN_MTU: usize = 1280;

/// Ethertype of IPv4, network byte order.
pub const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// Ethertype of an 802.1Q tag, network byte order.
pub const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();
/// Length of an Ethernet header.
pub const ETH_HLEN: usize = 14;
/// Length of an Ethernet header with one 802.1Q tag.
pub const ETH_VLAN_HLEN: usize = 18;
/// Length of an IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// Minimal TCP header length.
pub const TCP_MIN_HLEN: usize = 20;
/// UDP header length.
pub const UDP_HLEN: usize = 8;
/// IPv4 "more fragments" flag and fragment offset bits, host byte order.
pub const IPV4_FRAG_MASK: u16 = 0x3fff;
/// IPv4 fragment offset bits, host byte order: non-zero on every fragment but the first.
pub const IPV4_FRAG_OFFSET: u16 = 0x1fff;
/// IPv4 "don't fragment" flag, host byte order.
pub const IPV4_DF: u16 = 0x4000;

/// The part of the fixed IPv6 header before the addresses, and the source address: what the
/// policy stage reads (IPv6 is not balanced yet).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Src {
    /// Version, traffic class, flow label, payload length, next header, hop limit.
    pub head: [u8; 8],
    /// Source address, network byte order words.
    pub saddr: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<Ipv6Src>() == 24);

/// The fixed IPv6 header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20), network byte order.
    pub vtc_flow: u32,
    /// Payload length (everything after this header), network byte order.
    pub payload_len: u16,
    /// Next header: an extension header or the upper-layer protocol.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source address, network byte order words.
    pub saddr: [u32; 4],
    /// Destination address, network byte order words.
    pub daddr: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == 40);

/// The first two bytes of every skippable IPv6 extension header (hop-by-hop, routing,
/// destination options), and for a routing header its type and segments left.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6ExtHdr {
    /// Next header.
    pub next_header: u8,
    /// Length in 8-byte units, not counting the first 8 bytes.
    pub len: u8,
    /// Routing header: routing type (other headers: option bytes, not read).
    pub routing_type: u8,
    /// Routing header: segments left (other headers: option bytes, not read).
    pub segments_left: u8,
}
const _: () = assert!(core::mem::size_of::<Ipv6ExtHdr>() == 4);

/// IPv6 next-header numbers of the extension headers the balancer knows.
pub mod ipv6_ext {
    /// Hop-by-hop options (only directly after the fixed header).
    pub const HOP_BY_HOP: u8 = 0;
    /// Routing header.
    pub const ROUTING: u8 = 43;
    /// Fragment header.
    pub const FRAGMENT: u8 = 44;
    /// Destination options.
    pub const DEST_OPTS: u8 = 60;
    /// Encapsulating security payload.
    pub const ESP: u8 = 50;
    /// Authentication header.
    pub const AUTH: u8 = 51;
    /// Mobility header.
    pub const MOBILITY: u8 = 135;
    /// Host identity protocol.
    pub const HIP: u8 = 139;
    /// Shim6.
    pub const SHIM6: u8 = 140;
    /// Reserved for experimentation and testing (RFC 3692).
    pub const EXPERIMENT1: u8 = 253;
    /// Reserved for experimentation and testing (RFC 3692).
    pub const EXPERIMENT2: u8 = 254;
}

/// Ethertype of IPv6, network byte order.
pub const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
/// Length of the fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// TCP flag bits.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}
