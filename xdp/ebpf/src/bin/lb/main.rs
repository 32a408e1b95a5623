//! The xlb load balancer: parse -> balance -> forward, every exit a counted action.
//!
//! Traffic that is not for a VIP passes to the kernel untouched; malformed IPv4 (which the
//! kernel would discard too) and unbalanceable packets to a VIP are dropped with a reason.
#![no_std]
#![no_main]

mod balance;
mod forward;
mod maps;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use xlb_common::{DropReason, FlowKey, VipAddrKey, family, forward_mode, hash::flow_hash, proto};
use xlb_ebpf::{
    headers::{ETH_P_IP_BE, IPV4_DF, IPV4_FRAG_MASK, PortsHdr, TCP_MIN_HLEN, UDP_HLEN},
    packet::{frame_len, ptr_at},
    parse,
};

use crate::maps::{GLOBALS, VIP_ADDRS};

/// The build variant, `XLB_EBPF_VARIANT` at build time (0 when unset). Tests build a second
/// xlbd with another variant, whose program differs only here, to check that an upgrade
/// replacing the program (bpf_link update) keeps established flows.
const VARIANT: u32 = {
    let digits = match option_env!("XLB_EBPF_VARIANT") {
        Some(text) => text.as_bytes(),
        None => b"0",
    };
    let mut value = 0u32;
    let mut i = 0;
    while i < digits.len() {
        value = value * 10 + (digits[i] - b'0') as u32;
        i += 1;
    }
    value
};

/// A frame length above any frame's (XDP frames fit a page), so it never matches: the variant
/// changes the program's instructions (and its tag) without changing its behaviour.
const VARIANT_SENTINEL_LEN: u32 = 0xffff_0000 + VARIANT;

/// Entry point: the action of [`process`], with drops counted by reason.
#[xdp]
pub fn xlb_lb(ctx: XdpContext) -> u32 {
    let bytes = frame_len(&ctx);
    if bytes as u32 == VARIANT_SENTINEL_LEN {
        return xdp_action::XDP_PASS;
    }
    let action = match process(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            stats::drop(reason);
            xdp_action::XDP_DROP
        }
    };
    stats::action(action, bytes);
    action
}

#[inline(always)]
fn process(ctx: &XdpContext) -> Result<u32, DropReason> {
    let bytes = frame_len(ctx);
    let l2 = parse::l2(ctx)?;
    if l2.ether_type != ETH_P_IP_BE {
        return Ok(xdp_action::XDP_PASS);
    }
    let ip = parse::ipv4(ctx, l2.l3_off)?;
    // SAFETY: parse::ipv4 returned a header that lies inside the frame.
    let hdr = unsafe { *ip.hdr };

    let addr_key = VipAddrKey {
        addr: [hdr.daddr, 0, 0, 0],
        family: family::V4,
        _pad: [0; 3],
    };
    // SAFETY: only presence is tested; the value is not read.
    if unsafe { VIP_ADDRS.get(addr_key) }.is_none() {
        return Ok(xdp_action::XDP_PASS);
    }
    let frag_off = u16::from_be(hdr.frag_off);
    if frag_off & IPV4_FRAG_MASK != 0 {
        return Err(DropReason::Fragment);
    }
    let l4_min = match hdr.protocol {
        proto::TCP => TCP_MIN_HLEN,
        proto::UDP => UDP_HLEN,
        _ => return Ok(xdp_action::XDP_PASS),
    };
    if ip.header_len + l4_min > ip.total_len {
        return Err(DropReason::L4Truncated);
    }
    let ports: *const PortsHdr =
        ptr_at(ctx, l2.l3_off + ip.header_len).ok_or(DropReason::L4Truncated)?;
    // SAFETY: ptr_at checked that the ports lie inside the frame.
    let ports = unsafe { *ports };

    let flow = FlowKey {
        src: [hdr.saddr, 0, 0, 0],
        dst: [hdr.daddr, 0, 0, 0],
        sport: ports.sport,
        dport: ports.dport,
        proto: hdr.protocol,
        family: family::V4,
        _pad: [0; 2],
    };
    let Some(vip) = balance::find_vip(&flow) else {
        return Ok(xdp_action::XDP_PASS);
    };
    let mut hash = None;
    let choice = balance::choose(&flow, &vip, &mut hash)?;
    let globals = *GLOBALS.get(0).ok_or(DropReason::TableMiss)?;

    let action = match vip.mode {
        forward_mode::L2 => forward::l2(ctx, &choice.backend, &globals)?,
        forward_mode::IPIP => {
            let inner = forward::Inner {
                l3_off: l2.l3_off,
                tos: hdr.tos,
                total_len: ip.total_len,
                dont_fragment: frag_off & IPV4_DF != 0,
            };
            let flow_hash = *hash.get_or_insert_with(|| flow_hash(&flow));
            forward::ipip(ctx, &inner, &choice.backend, &globals, flow_hash)?
        }
        _ => return Err(DropReason::TableMiss),
    };
    stats::forwarded(vip.vip_id, choice.backend_id, bytes);
    Ok(action)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
