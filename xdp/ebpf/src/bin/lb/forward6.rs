//! Forwarding into IPv6: prepends an outer IPv6 header addressed to the backend, for an IPv6
//! VIP (IPv6-in-IPv6, next header 41) or an IPv4 VIP whose backend is IPv6 (IPv4-in-IPv6,
//! next header 4). The frame leaves through the interface it came in on (XDP_TX).

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use xlb_common::{
    Backend, DropReason, Globals,
    hash::{flow_label, ip6_source},
};
use xlb_ebpf::{
    headers::{ETH_HLEN, ETH_P_IPV6_BE, EthHdr, IPV6_HLEN, Ipv6Hdr, VlanHdr},
    packet::ptr_at,
};

/// What the encapsulation needs from the inner packet, read before the frame moves.
pub struct Inner {
    /// Offset of the inner IP header (14, or 18 with an 802.1Q tag).
    pub l3_off: usize,
    /// Traffic class (IPv6) or DSCP/ECN (IPv4), copied to the outer header.
    pub traffic_class: u8,
    /// Length of the inner packet (IPv6: 40 + payload length; IPv4: total length), without
    /// any Ethernet padding: the outer payload length.
    pub len: usize,
    /// Protocol number of the inner packet: [`xlb_common::proto::IPV6`] or
    /// [`xlb_common::proto::IPIP`].
    pub next_header: u8,
}

/// Prepends the outer IPv6 header, keeping the Ethernet header (and its 802.1Q tag) in front
/// and setting the (innermost) ethertype to IPv6.
#[inline(always)]
pub fn encap(
    ctx: &XdpContext,
    inner: &Inner,
    backend: &Backend,
    globals: &Globals,
    flow_hash: u32,
) -> Result<u32, DropReason> {
    // The outer payload length must fit in 16 bits.
    if inner.len > u16::MAX as usize {
        return Err(DropReason::EncapFailed);
    }
    // SAFETY: the helper only moves ctx->data; every packet pointer is re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV6_HLEN as i32)) } != 0 {
        return Err(DropReason::EncapFailed);
    }

    let old_eth: *const EthHdr = ptr_at(ctx, IPV6_HLEN).ok_or(DropReason::EncapFailed)?;
    let new_eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(DropReason::EncapFailed)?;
    // SAFETY: both headers were bounds-checked by ptr_at; they do not overlap (40 > 14).
    unsafe {
        (*new_eth).dst = backend.mac;
        (*new_eth).src = globals.if_mac;
        (*new_eth).ether_type = (*old_eth).ether_type;
    }
    if inner.l3_off != ETH_HLEN {
        let old_tag: *const VlanHdr =
            ptr_at(ctx, IPV6_HLEN + ETH_HLEN).ok_or(DropReason::EncapFailed)?;
        let new_tag: *mut VlanHdr = ptr_at(ctx, ETH_HLEN).ok_or(DropReason::EncapFailed)?;
        // SAFETY: both tags were bounds-checked by ptr_at and do not overlap.
        unsafe {
            (*new_tag).tci = (*old_tag).tci;
            (*new_tag).ether_type = ETH_P_IPV6_BE;
        }
    } else {
        // SAFETY: bounds-checked above.
        unsafe { (*new_eth).ether_type = ETH_P_IPV6_BE };
    }

    let vtc_flow = (6u32 << 28) | (u32::from(inner.traffic_class) << 20) | flow_label(flow_hash);
    let outer = Ipv6Hdr {
        vtc_flow: vtc_flow.to_be(),
        payload_len: (inner.len as u16).to_be(),
        next_header: inner.next_header,
        hop_limit: 64,
        saddr: ip6_source(globals.ip6_src_prefix, globals.ip6_src_host_mask, flow_hash),
        daddr: backend.addr,
    };
    let outer_ptr: *mut Ipv6Hdr = ptr_at(ctx, inner.l3_off).ok_or(DropReason::EncapFailed)?;
    // SAFETY: ptr_at checked that the 40 bytes lie inside the (grown) frame.
    unsafe { *outer_ptr = outer };
    Ok(xdp_action::XDP_TX)
}
