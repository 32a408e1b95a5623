//! Forwarding into IPv6: prepends an outer IPv6 header addressed to the backend, for an IPv6
//! VIP (IPv6-in-IPv6, next header 41) or an IPv4 VIP whose backend is IPv6 (IPv4-in-IPv6,
//! next header 4). The frame leaves through the interface it came in on (XDP_TX).

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use xlb_common::{
    Backend, DropReason, FlowKey6, Globals, VipMeta, family, forward_mode,
    hash::{flow_label, ip6_source},
    proto,
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

impl Inner {
    /// What IPv6-in-IPv6 needs of the IPv6 packet at `l3_off` (`hdr` its fixed header,
    /// `payload_len` its validated payload length).
    #[inline(always)]
    pub fn of(l3_off: usize, hdr: &Ipv6Hdr, payload_len: usize) -> Inner {
        Inner {
            l3_off,
            traffic_class: (u32::from_be(hdr.vtc_flow) >> 20) as u8,
            len: IPV6_HLEN + payload_len,
            next_header: proto::IPV6,
        }
    }
}

/// Whether the IPv6 packet `inner` to `vip` would exceed `encap.mtu` once encapsulated: only
/// the ipip mode adds a header (40 bytes).
#[inline(always)]
pub fn too_big(vip: &VipMeta, inner: &Inner, globals: &Globals) -> bool {
    vip.mode == forward_mode::IPIP && crate::mtu::exceeds(globals, inner.len, IPV6_HLEN)
}

/// Sends the IPv6 packet `inner` to `backend` in the IPv6 VIP's mode: L2 (MAC rewrite) or
/// IPv6-in-IPv6. `flow` is the client->VIP flow the packet belongs to (or is about): its hash
/// picks the outer source and flow label, as for every packet of it.
#[inline(always)]
pub fn to_backend(
    ctx: &XdpContext,
    vip: &VipMeta,
    inner: &Inner,
    backend: &Backend,
    globals: &Globals,
    flow: &FlowKey6,
    hash: &mut Option<u32>,
) -> Result<u32, DropReason> {
    match vip.mode {
        forward_mode::L2 => crate::forward::l2(ctx, backend, globals),
        forward_mode::IPIP if backend.family == family::V6 => {
            let flow_hash = crate::balance::cached_hash(flow, hash);
            encap(ctx, inner, backend, globals, flow_hash)
        }
        _ => Err(DropReason::TableMiss),
    }
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
