//! Forwarding stage: direct server return by MAC rewrite (L2) or by IPv4-in-IPv4 encapsulation.
//! Either way the frame leaves through the interface it came in on (XDP_TX), and the backend
//! answers the client directly.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use xlb_common::{
    Backend, DropReason, FlowKey, Globals, VipMeta, family, forward_mode, hash::ipip_source, proto,
};
use xlb_ebpf::{
    csum,
    headers::{ETH_HLEN, EthHdr, IPV4_DF, IPV4_HLEN, Ipv4Hdr, VlanHdr},
    packet::ptr_at,
};

/// What the encapsulation needs from the original IPv4 header, read before the frame moves.
pub struct Inner {
    /// Offset of the IPv4 header (14, or 18 with an 802.1Q tag).
    pub l3_off: usize,
    /// DSCP/ECN, copied to the outer header.
    pub tos: u8,
    /// Total length of the inner packet (without any Ethernet padding).
    pub total_len: usize,
    /// Whether the inner packet forbids fragmentation (copied to the outer header).
    pub dont_fragment: bool,
}

impl Inner {
    /// What the encapsulation needs of the IPv4 packet at `l3_off` (`hdr` its header,
    /// `total_len` its validated length).
    #[inline(always)]
    pub fn of(l3_off: usize, hdr: &Ipv4Hdr, total_len: usize) -> Inner {
        Inner {
            l3_off,
            tos: hdr.tos,
            total_len,
            dont_fragment: u16::from_be(hdr.frag_off) & IPV4_DF != 0,
        }
    }
}

/// Sends the frame to `backend` in the VIP's mode. `flow` is the client->VIP flow the packet
/// belongs to (or is about): its hash picks the IPIP outer source, as for every packet of it.
#[inline(always)]
pub fn to_backend(
    ctx: &XdpContext,
    vip: &VipMeta,
    inner: &Inner,
    backend: &Backend,
    globals: &Globals,
    flow: &FlowKey,
    hash: &mut Option<u32>,
) -> Result<u32, DropReason> {
    match vip.mode {
        forward_mode::L2 => l2(ctx, backend, globals),
        // An IPv4 VIP with an IPv6 backend: IPv4-in-IPv6.
        forward_mode::IPIP if backend.family == family::V6 => {
            let flow_hash = crate::balance::cached_hash(flow, hash);
            let outer = crate::forward6::Inner {
                l3_off: inner.l3_off,
                traffic_class: inner.tos,
                len: inner.total_len,
                next_header: proto::IPIP,
            };
            crate::forward6::encap(ctx, &outer, backend, globals, flow_hash)
        }
        forward_mode::IPIP => {
            let flow_hash = crate::balance::cached_hash(flow, hash);
            ipip(ctx, inner, backend, globals, flow_hash)
        }
        _ => Err(DropReason::TableMiss),
    }
}

/// Sends the frame to the backend's MAC, unchanged otherwise.
#[inline(always)]
pub fn l2(ctx: &XdpContext, backend: &Backend, globals: &Globals) -> Result<u32, DropReason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(DropReason::EthTruncated)?;
    // SAFETY: ptr_at checked that the Ethernet header lies inside the frame.
    unsafe {
        (*eth).dst = backend.mac;
        (*eth).src = globals.if_mac;
    }
    Ok(xdp_action::XDP_TX)
}

/// Prepends an outer IPv4 header addressed to the backend, keeping the Ethernet header (and
/// its 802.1Q tag) in front.
#[inline(always)]
pub fn ipip(
    ctx: &XdpContext,
    inner: &Inner,
    backend: &Backend,
    globals: &Globals,
    flow_hash: u32,
) -> Result<u32, DropReason> {
    // The outer total length must fit in 16 bits.
    if inner.total_len + IPV4_HLEN > u16::MAX as usize {
        return Err(DropReason::EncapFailed);
    }
    grow_front(ctx, IPV4_HLEN, inner.l3_off, backend.mac, globals.if_mac)?;
    let mut outer = Ipv4Hdr {
        version_ihl: 0x45,
        tos: inner.tos,
        tot_len: ((inner.total_len + IPV4_HLEN) as u16).to_be(),
        id: 0,
        frag_off: if inner.dont_fragment {
            IPV4_DF.to_be()
        } else {
            0
        },
        ttl: 64,
        protocol: proto::IPIP,
        check: 0,
        saddr: ipip_source(
            globals.ipip_src_prefix,
            globals.ipip_src_host_mask,
            flow_hash,
        ),
        daddr: backend.addr[0],
    };
    outer.check = csum::ipv4_header(&outer);
    let outer_ptr: *mut Ipv4Hdr = ptr_at(ctx, inner.l3_off).ok_or(DropReason::EncapFailed)?;
    // SAFETY: ptr_at checked that the 20 bytes lie inside the (grown) frame.
    unsafe { *outer_ptr = outer };
    Ok(xdp_action::XDP_TX)
}

/// Makes room for `by` bytes of new headers in front of the network header at `l3_off`: the
/// frame grows at the front, and its Ethernet header (with any 802.1Q tag) moves to the new
/// front, addressed from `src` to `dst`. The new headers are then written at `l3_off`.
/// `by` must be at least the Ethernet header's 14 bytes, so the old and new headers do not
/// overlap while one is copied to the other.
#[inline(always)]
pub fn grow_front(
    ctx: &XdpContext,
    by: usize,
    l3_off: usize,
    dst: [u8; 6],
    src: [u8; 6],
) -> Result<(), DropReason> {
    // SAFETY: the helper only moves ctx->data; every packet pointer is re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(by as i32)) } != 0 {
        return Err(DropReason::EncapFailed);
    }
    let old_eth: *const EthHdr = ptr_at(ctx, by).ok_or(DropReason::EncapFailed)?;
    let new_eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(DropReason::EncapFailed)?;
    // SAFETY: both headers were bounds-checked by ptr_at; they do not overlap (by >= 14).
    unsafe {
        (*new_eth).dst = dst;
        (*new_eth).src = src;
        (*new_eth).ether_type = (*old_eth).ether_type;
    }
    if l3_off != ETH_HLEN {
        let old_tag: *const VlanHdr = ptr_at(ctx, by + ETH_HLEN).ok_or(DropReason::EncapFailed)?;
        let new_tag: *mut VlanHdr = ptr_at(ctx, ETH_HLEN).ok_or(DropReason::EncapFailed)?;
        // SAFETY: both tags were bounds-checked by ptr_at and do not overlap.
        unsafe { *new_tag = *old_tag };
    }
    Ok(())
}
