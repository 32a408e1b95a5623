//! Ethernet (with one optional 802.1Q tag), IPv4 and IPv6 parsing. Each function checks exactly the
//! bounds the verifier and the protocol need, and says why a packet is malformed with a
//! [`DropReason`].

use aya_ebpf::programs::XdpContext;
use xlb_common::DropReason;

use crate::{
    headers::{
        ETH_HLEN, ETH_P_8021Q_BE, ETH_VLAN_HLEN, EthHdr, IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, VlanHdr,
    },
    packet::{frame_len, ptr_at},
};

/// Where the network header starts and what it is.
pub struct L2 {
    /// Offset of the network header: 14, or 18 with an 802.1Q tag.
    pub l3_off: usize,
    /// Ethertype of the network header, network byte order.
    pub ether_type: u16,
}

/// Reads the Ethernet header and at most one 802.1Q tag.
#[inline(always)]
pub fn l2(ctx: &XdpContext) -> Result<L2, DropReason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(DropReason::EthTruncated)?;
    // SAFETY: ptr_at checked that the whole header lies inside the frame.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type != ETH_P_8021Q_BE {
        return Ok(L2 {
            l3_off: ETH_HLEN,
            ether_type,
        });
    }
    let vlan: *const VlanHdr = ptr_at(ctx, ETH_HLEN).ok_or(DropReason::EthTruncated)?;
    Ok(L2 {
        l3_off: ETH_VLAN_HLEN,
        // SAFETY: ptr_at checked that the tag lies inside the frame.
        ether_type: unsafe { (*vlan).ether_type },
    })
}

/// A validated IPv4 header.
pub struct Ipv4 {
    /// The header, inside the frame.
    pub hdr: *mut Ipv4Hdr,
    /// Header length in bytes (IHL x 4, 20..=60).
    pub header_len: usize,
    /// Total length from the header, in bytes; never more than the frame holds.
    pub total_len: usize,
}

/// Validates the IPv4 header at `l3_off` the way the kernel's `ip_rcv` would, so whatever this
/// drops the stack would have dropped too.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, l3_off: usize) -> Result<Ipv4, DropReason> {
    let hdr: *mut Ipv4Hdr = ptr_at(ctx, l3_off).ok_or(DropReason::Ipv4Truncated)?;
    // SAFETY: ptr_at checked that the 20-byte header lies inside the frame.
    let (version_ihl, tot_len) = unsafe { ((*hdr).version_ihl, (*hdr).tot_len) };
    let ihl = (version_ihl & 0x0f) as usize;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return Err(DropReason::Ipv4BadHeader);
    }
    let header_len = ihl * 4;
    let total_len = u16::from_be(tot_len) as usize;
    if total_len < header_len || l3_off + total_len > frame_len(ctx) {
        return Err(DropReason::Ipv4BadLength);
    }
    Ok(Ipv4 {
        hdr,
        header_len,
        total_len,
    })
}

/// A validated fixed IPv6 header.
pub struct Ipv6 {
    /// The header, inside the frame.
    pub hdr: *mut Ipv6Hdr,
    /// Payload length from the header, in bytes; the frame holds all of it.
    pub payload_len: usize,
}

/// Validates the fixed IPv6 header at `l3_off` as the kernel's `ipv6_rcv` would: version 6 and
/// a payload that the frame holds (jumbograms, payload length 0 with a hop-by-hop jumbo
/// option, are not balanced: their payload reads as empty).
#[inline(always)]
pub fn ipv6(ctx: &XdpContext, l3_off: usize) -> Result<Ipv6, DropReason> {
    let hdr: *mut Ipv6Hdr = ptr_at(ctx, l3_off).ok_or(DropReason::Ipv6Truncated)?;
    // SAFETY: ptr_at checked that the 40-byte header lies inside the frame.
    let (vtc_flow, payload_len) = unsafe { ((*hdr).vtc_flow, (*hdr).payload_len) };
    if u32::from_be(vtc_flow) >> 28 != 6 {
        return Err(DropReason::Ipv6BadHeader);
    }
    let payload_len = u16::from_be(payload_len) as usize;
    if l3_off + IPV6_HLEN + payload_len > frame_len(ctx) {
        return Err(DropReason::Ipv6BadLength);
    }
    Ok(Ipv6 { hdr, payload_len })
}
