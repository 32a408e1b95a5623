//! Backend-side decapsulation: strips the outer header of the packets the load balancer
//! encapsulates (IPv4-in-IPv4, IPv6-in-IPv6, IPv4-in-IPv6) whose inner destination is a VIP
//! served on this host, and passes the inner packet to the stack. Needed because many hosts
//! (and this project's test kernel) have no `ipip`/`ip6_tunnel` module, and a tunnel device
//! would need one per outer source.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, xdp_action},
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use xlb_common::{DecapCounter, VipAddrKey, VipAddrValue, family, proto};
use xlb_ebpf::{
    headers::{
        ETH_HLEN, ETH_P_IP_BE, ETH_P_IPV6_BE, EthHdr, IPV4_HLEN, IPV6_HLEN, Ipv4Hdr, Ipv6Hdr,
        VlanHdr,
    },
    packet::ptr_at,
    parse,
};

/// VIP addresses served on this host: only their encapsulated packets are stripped.
#[map(name = "XLBD_VIPS")]
static DECAP_VIPS: HashMap<VipAddrKey, VipAddrValue> =
    HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Packets per [`DecapCounter`].
#[map(name = "XLBD_STATS")]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DecapCounter::COUNT, 0);

/// Entry point: decapsulate, or pass untouched.
#[xdp]
pub fn xlb_decap(ctx: XdpContext) -> u32 {
    let (counter, action) = match decap(&ctx) {
        Some(outcome) => outcome,
        None => (DecapCounter::Passed, xdp_action::XDP_PASS),
    };
    if let Some(count) = DECAP_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's own slot of a per-CPU array.
        unsafe { *count += 1 };
    }
    action
}

/// `None` when the packet is not ours to strip.
#[inline(always)]
fn decap(ctx: &XdpContext) -> Option<(DecapCounter, u32)> {
    let l2 = parse::l2(ctx).ok()?;
    let malformed = Some((DecapCounter::Malformed, xdp_action::XDP_DROP));
    // The outer header's length, the inner packet's protocol and where it starts.
    let (outer_len, inner_proto) = if l2.ether_type == ETH_P_IP_BE {
        let outer = parse::ipv4(ctx, l2.l3_off).ok()?;
        // SAFETY: parse::ipv4 returned a header inside the frame.
        let protocol = unsafe { (*outer.hdr).protocol };
        // The load balancer never sends outer options; anything else is not from us.
        if protocol != proto::IPIP || outer.header_len != IPV4_HLEN {
            return None;
        }
        (IPV4_HLEN, proto::IPIP)
    } else if l2.ether_type == ETH_P_IPV6_BE {
        let outer = parse::ipv6(ctx, l2.l3_off).ok()?;
        // SAFETY: parse::ipv6 returned a header inside the frame.
        let next_header = unsafe { (*outer.hdr).next_header };
        // The load balancer sends no outer extension headers.
        if next_header != proto::IPIP && next_header != proto::IPV6 {
            return None;
        }
        (IPV6_HLEN, next_header)
    } else {
        return None;
    };
    let inner_off = l2.l3_off + outer_len;
    let (key, inner_ether_type) = if inner_proto == proto::IPIP {
        let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, inner_off) else {
            return malformed;
        };
        // SAFETY: ptr_at checked that the inner header lies inside the frame.
        let daddr = unsafe { (*inner).daddr };
        let key = VipAddrKey {
            addr: [daddr, 0, 0, 0],
            family: family::V4,
            _pad: [0; 3],
        };
        (key, ETH_P_IP_BE)
    } else {
        let Some(inner) = ptr_at::<Ipv6Hdr>(ctx, inner_off) else {
            return malformed;
        };
        // SAFETY: ptr_at checked that the inner header lies inside the frame.
        let daddr = unsafe { (*inner).daddr };
        let key = VipAddrKey {
            addr: daddr,
            family: family::V6,
            _pad: [0; 3],
        };
        (key, ETH_P_IPV6_BE)
    };
    // SAFETY: only presence is tested.
    unsafe { DECAP_VIPS.get(key) }?;

    // Move the Ethernet header (and tag) forward over the outer header, with the inner
    // packet's ethertype, then drop the bytes in front of it.
    let Some(old_eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return malformed;
    };
    let Some(new_eth) = ptr_at::<EthHdr>(ctx, outer_len) else {
        return malformed;
    };
    if l2.l3_off != ETH_HLEN {
        let (Some(old_tag), Some(new_tag)) = (
            ptr_at::<VlanHdr>(ctx, ETH_HLEN),
            ptr_at::<VlanHdr>(ctx, outer_len + ETH_HLEN),
        ) else {
            return malformed;
        };
        // SAFETY: both tags were bounds-checked; they do not overlap (20 or 40 > 4).
        unsafe {
            (*new_tag).tci = (*old_tag).tci;
            (*new_tag).ether_type = inner_ether_type;
        }
        // SAFETY: both headers were bounds-checked; they do not overlap (20 or 40 > 14).
        unsafe { *new_eth = *old_eth };
    } else {
        // SAFETY: both headers were bounds-checked; they do not overlap (20 or 40 > 14).
        unsafe {
            (*new_eth).dst = (*old_eth).dst;
            (*new_eth).src = (*old_eth).src;
            (*new_eth).ether_type = inner_ether_type;
        }
    }
    // SAFETY: the helper only moves ctx->data; no packet pointer is used afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return malformed;
    }
    Some((DecapCounter::Decapsulated, xdp_action::XDP_PASS))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
