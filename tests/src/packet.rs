//! Building test frames byte by byte. Checksums are computed here with a plain RFC 1071 sum,
//! not with the datapath's code, so a wrong checksum in the datapath cannot hide.

use std::net::{Ipv4Addr, Ipv6Addr};

/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// Ethernet addressing of a test frame.
#[derive(Clone, Copy, Debug)]
pub struct L2 {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
}

/// A flow's addressing.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// One's complement sum of 16-bit big-endian words.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet header (plus tag) for `ether_type`.
pub fn ethernet(l2: &L2, ether_type: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    out.extend_from_slice(&l2.dst);
    out.extend_from_slice(&l2.src);
    if let Some(vlan) = l2.vlan {
        out.extend_from_slice(&0x8100u16.to_be_bytes());
        out.extend_from_slice(&vlan.to_be_bytes());
    }
    out.extend_from_slice(&ether_type.to_be_bytes());
    out
}

/// IPv4 header with a correct checksum; `options` must be a multiple of 4 bytes.
pub fn ipv4_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    payload_len: usize,
    options: &[u8],
    frag: u16,
) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4) && options.len() <= 40);
    let header_len = 20 + options.len();
    let mut h = vec![0u8; header_len];
    h[0] = 0x40 | (header_len / 4) as u8;
    h[1] = 0;
    h[2..4].copy_from_slice(&((header_len + payload_len) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = protocol;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    h[20..].copy_from_slice(options);
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let mut buf = Vec::with_capacity(12 + segment.len());
    buf.extend_from_slice(&src.octets());
    buf.extend_from_slice(&dst.octets());
    buf.push(0);
    buf.push(protocol);
    buf.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    buf.extend_from_slice(segment);
    checksum(&buf)
}

/// A TCP segment from `sport` to `dport`, its checksum from `sum` (over the segment with a
/// zero checksum field: the family's pseudo-header sum).
fn tcp_with(
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
    sum: impl Fn(&[u8]) -> u16,
) -> Vec<u8> {
    let mut s = vec![0u8; 20];
    s[0..2].copy_from_slice(&sport.to_be_bytes());
    s[2..4].copy_from_slice(&dport.to_be_bytes());
    s[4..8].copy_from_slice(&1000u32.to_be_bytes());
    s[12] = 5 << 4;
    s[13] = flags;
    s[14..16].copy_from_slice(&65535u16.to_be_bytes());
    s.extend_from_slice(payload);
    let sum = sum(&s);
    s[16..18].copy_from_slice(&sum.to_be_bytes());
    s
}

/// A UDP datagram from `sport` to `dport`, its checksum from `sum` (as in [`tcp_with`]).
fn udp_with(sport: u16, dport: u16, payload: &[u8], sum: impl Fn(&[u8]) -> u16) -> Vec<u8> {
    let mut s = vec![0u8; 8];
    s[0..2].copy_from_slice(&sport.to_be_bytes());
    s[2..4].copy_from_slice(&dport.to_be_bytes());
    s[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(payload);
    let sum = sum(&s);
    s[6..8].copy_from_slice(&sum.to_be_bytes());
    s
}

/// TCP segment with a correct checksum.
pub fn tcp_segment(flow: &Flow, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_with(flow.sport, flow.dport, flags, payload, |s| {
        pseudo_header_sum(flow.src, flow.dst, 6, s)
    })
}

/// UDP datagram with a correct checksum.
pub fn udp_datagram(flow: &Flow, payload: &[u8]) -> Vec<u8> {
    udp_with(flow.sport, flow.dport, payload, |s| {
        pseudo_header_sum(flow.src, flow.dst, 17, s)
    })
}

/// A whole Ethernet + IPv4 + TCP frame.
pub fn tcp4(l2: &L2, flow: &Flow, flags: u8, payload: &[u8]) -> Vec<u8> {
    let segment = tcp_segment(flow, flags, payload);
    let mut frame = ethernet(l2, 0x0800);
    frame.extend(ipv4_header(flow.src, flow.dst, 6, segment.len(), &[], 0));
    frame.extend(segment);
    frame
}

/// A whole Ethernet + IPv4 + UDP frame.
pub fn udp4(l2: &L2, flow: &Flow, payload: &[u8]) -> Vec<u8> {
    let datagram = udp_datagram(flow, payload);
    let mut frame = ethernet(l2, 0x0800);
    frame.extend(ipv4_header(flow.src, flow.dst, 17, datagram.len(), &[], 0));
    frame.extend(datagram);
    frame
}

/// An ARP request for `target` from `sender`.
pub fn arp_request(src_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = ethernet(
        &L2 {
            dst: [0xff; 6],
            src: src_mac,
            vlan: None,
        },
        0x0806,
    );
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&sender.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame
}

/// The frame IPIP mode should emit for `inner_frame` (an Ethernet frame, possibly tagged):
/// same tag, new MACs, a 20-byte outer header from `outer_src` to `outer_dst` in front of the
/// inner IPv4 packet. Written from RFC 2003, independently of the datapath.
pub fn ipip_encapsulated(
    inner_frame: &[u8],
    new_l2: &L2,
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
) -> Vec<u8> {
    let l3_off = if new_l2.vlan.is_some() { 18 } else { 14 };
    let inner = &inner_frame[l3_off..];
    let inner_total = usize::from(u16::from_be_bytes([inner[2], inner[3]]));
    let dont_fragment = inner[6] & 0x40 != 0;
    let mut outer = ipv4_header(outer_src, outer_dst, 4, inner_total, &[], 0);
    // Outer id 0, DF copied from the inner header, TOS copied: recompute the checksum.
    outer[1] = inner[1];
    outer[4..6].copy_from_slice(&[0, 0]);
    outer[6] = if dont_fragment { 0x40 } else { 0 };
    outer[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&outer);
    outer[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = ethernet(new_l2, 0x0800);
    frame.extend(outer);
    frame.extend_from_slice(inner);
    frame
}

/// Whether the IPv4 header at `l3_off` has a valid checksum.
pub fn ipv4_checksum_ok(frame: &[u8], l3_off: usize) -> bool {
    let header_len = usize::from(frame[l3_off] & 0x0f) * 4;
    checksum(&frame[l3_off..l3_off + header_len]) == 0
}

/// An IPv6 flow's addressing.
#[derive(Clone, Copy, Debug)]
pub struct Flow6 {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// The fixed IPv6 header (traffic class and flow label zero, hop limit 64).
pub fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    h[6] = next_header;
    h[7] = 64;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h
}

/// One IPv6 extension header of `8 * (len + 1)` bytes: next header, length, then `first`
/// (the routing header's type and segments left, or option bytes), the rest zero (PadN-free
/// padding is fine for the balancer, which never reads options).
pub fn ipv6_ext_header(next_header: u8, len: u8, first: [u8; 2]) -> Vec<u8> {
    let mut h = vec![0u8; 8 * (usize::from(len) + 1)];
    h[0] = next_header;
    h[1] = len;
    h[2..4].copy_from_slice(&first);
    h
}

fn pseudo_header_sum6(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8, segment: &[u8]) -> u16 {
    let mut buf = Vec::with_capacity(40 + segment.len());
    buf.extend_from_slice(&src.octets());
    buf.extend_from_slice(&dst.octets());
    buf.extend_from_slice(&(segment.len() as u32).to_be_bytes());
    buf.extend_from_slice(&[0, 0, 0, protocol]);
    buf.extend_from_slice(segment);
    checksum(&buf)
}

/// TCP segment over IPv6 with a correct checksum.
pub fn tcp6_segment(flow: &Flow6, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_with(flow.sport, flow.dport, flags, payload, |s| {
        pseudo_header_sum6(flow.src, flow.dst, 6, s)
    })
}

/// UDP datagram over IPv6 with a correct checksum.
pub fn udp6_datagram(flow: &Flow6, payload: &[u8]) -> Vec<u8> {
    udp_with(flow.sport, flow.dport, payload, |s| {
        pseudo_header_sum6(flow.src, flow.dst, 17, s)
    })
}

/// A whole Ethernet + IPv6 frame: the fixed header with `first_next_header`, then `rest`
/// (extension headers and the upper-layer header, as built by the caller).
pub fn ipv6_frame(l2: &L2, flow: &Flow6, first_next_header: u8, rest: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(l2, 0x86dd);
    frame.extend(ipv6_header(
        flow.src,
        flow.dst,
        first_next_header,
        rest.len(),
    ));
    frame.extend_from_slice(rest);
    frame
}

/// A whole Ethernet + IPv6 + TCP frame.
pub fn tcp6(l2: &L2, flow: &Flow6, flags: u8, payload: &[u8]) -> Vec<u8> {
    ipv6_frame(l2, flow, 6, &tcp6_segment(flow, flags, payload))
}

/// A whole Ethernet + IPv6 + UDP frame.
pub fn udp6(l2: &L2, flow: &Flow6, payload: &[u8]) -> Vec<u8> {
    ipv6_frame(l2, flow, 17, &udp6_datagram(flow, payload))
}

/// The frame an IPv6 encapsulation should emit for `inner_frame` (an Ethernet frame carrying
/// IPv4 or IPv6, possibly tagged): same tag, new MACs, ethertype IPv6, a 40-byte outer header
/// (RFC 2473) from `outer_src` to `outer_dst` with next header 4 (IPv4 inside) or 41 (IPv6),
/// the inner traffic class, `flow_label`, hop limit 64, in front of the inner packet (without
/// Ethernet padding). Written from the RFC, independently of the datapath.
pub fn ip6_encapsulated(
    inner_frame: &[u8],
    new_l2: &L2,
    outer_src: Ipv6Addr,
    outer_dst: Ipv6Addr,
    flow_label: u32,
) -> Vec<u8> {
    let l3_off = if new_l2.vlan.is_some() { 18 } else { 14 };
    let inner = &inner_frame[l3_off..];
    let (next_header, traffic_class, inner_len) = if inner[0] >> 4 == 4 {
        (
            4u8,
            inner[1],
            usize::from(u16::from_be_bytes([inner[2], inner[3]])),
        )
    } else {
        let tc = (inner[0] << 4) | (inner[1] >> 4);
        (
            41,
            tc,
            40 + usize::from(u16::from_be_bytes([inner[4], inner[5]])),
        )
    };
    let mut outer = ipv6_header(outer_src, outer_dst, next_header, inner_len);
    let vtc_flow = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0xf_ffff);
    outer[0..4].copy_from_slice(&vtc_flow.to_be_bytes());
    let mut frame = ethernet(new_l2, 0x86dd);
    frame.extend(outer);
    frame.extend_from_slice(&inner[..inner_len]);
    frame
}

/// An ICMP message (RFC 792) with a correct checksum: type, code, the type-specific word and
/// the body (an echo's data, or an error's quoted packet).
pub fn icmp_message(kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let sum = checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// A whole Ethernet + IPv4 + ICMP frame carrying `message` (see [`icmp_message`]).
pub fn icmp4(l2: &L2, src: Ipv4Addr, dst: Ipv4Addr, message: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(l2, 0x0800);
    frame.extend(ipv4_header(src, dst, 1, message.len(), &[], 0));
    frame.extend_from_slice(message);
    frame
}

/// Bytes of the offending packet quoted by an ICMP error that keeps within 576 bytes
/// (RFC 1812 4.3.2.3): 576 less a 20-byte IPv4 header and the 8-byte ICMP header.
pub const ICMP_QUOTE_LEN: usize = 548;

/// The ICMP "fragmentation needed" (type 3, code 4) a router at `from` sends about the IPv4
/// packet `offending` (its IPv4 header onwards) with the next-hop MTU `mtu`: IPv4 header with
/// precedence "internetwork control" (TOS 0xc0), id 0, TTL 64, no flags; ICMP header; the first
/// [`ICMP_QUOTE_LEN`] bytes of the packet. Written from RFC 792/1191/1812, independently of the
/// datapath.
pub fn frag_needed(l2: &L2, from: Ipv4Addr, offending: &[u8], mtu: u16) -> Vec<u8> {
    let to = Ipv4Addr::new(offending[12], offending[13], offending[14], offending[15]);
    let quote = &offending[..ICMP_QUOTE_LEN.min(offending.len())];
    let mut rest = [0u8; 4];
    rest[2..4].copy_from_slice(&mtu.to_be_bytes());
    let message = icmp_message(3, 4, rest, quote);
    let mut header = ipv4_header(from, to, 1, message.len(), &[], 0);
    header[1] = 0xc0;
    header[4..6].copy_from_slice(&[0, 0]);
    header[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&header);
    header[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = ethernet(l2, 0x0800);
    frame.extend(header);
    frame.extend(message);
    frame
}

/// An ICMPv6 message (RFC 4443) from `src` to `dst` with a correct checksum, which covers the
/// IPv6 pseudo-header: type, code, the type-specific word and the body.
pub fn icmp6_message(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let sum = pseudo_header_sum6(src, dst, 58, &m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// A whole Ethernet + IPv6 + ICMPv6 frame carrying `message` (see [`icmp6_message`]).
pub fn icmp6(l2: &L2, src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(l2, 0x86dd);
    frame.extend(ipv6_header(src, dst, 58, message.len()));
    frame.extend_from_slice(message);
    frame
}

/// Bytes of the offending packet quoted by an ICMPv6 error that keeps within the minimum IPv6
/// MTU (RFC 4443 2.4 (c)): 1280 less the 40-byte IPv6 header and the 8-byte ICMPv6 header.
pub const ICMP6_QUOTE_LEN: usize = 1232;

/// The ICMPv6 "packet too big" (type 2, code 0, RFC 4443 3.2) the address the IPv6 packet
/// `offending` (its IPv6 header onwards) was sent to returns to its sender with `mtu`:
/// traffic class and flow label zero, hop limit 64, the first [`ICMP6_QUOTE_LEN`] bytes of
/// the packet. Written from the RFCs, independently of the datapath.
pub fn packet_too_big(l2: &L2, offending: &[u8], mtu: u32) -> Vec<u8> {
    let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&offending[at..at + 16]).unwrap());
    let (to, from) = (addr(8), addr(24));
    let quote = &offending[..ICMP6_QUOTE_LEN.min(offending.len())];
    let message = icmp6_message(from, to, 2, 0, mtu.to_be_bytes(), quote);
    icmp6(l2, from, to, &message)
}
