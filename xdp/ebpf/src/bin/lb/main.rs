//! The xlb load balancer: parse -> balance -> forward, every exit a counted action.
//!
//! Traffic that is not for a VIP passes to the kernel untouched; malformed IPv4 (which the
//! kernel would discard too) and unbalanceable packets to a VIP are dropped with a reason.
//! "For a VIP" is first asked of a bitmap filter (one array read); a packet to a VIP then
//! needs one hash lookup (`XLB_VIPS`) to find its service, and the exact set of VIP addresses
//! is consulted only for fragments and truncated packets.
#![no_std]
#![no_main]

mod balance;
mod events;
mod forward;
mod icmp;
mod maps;
mod mtu;
mod policy;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use xlb_common::{
    DropReason, FlowKey, PolicyConfig, VipAddrKey, family, forward_mode, hash::vip_filter_slot,
    proto,
};
use xlb_ebpf::{
    headers::{
        ETH_P_IP_BE, IPV4_FRAG_MASK, PortsHdr, TCP_MIN_HLEN, TcpStartHdr, UDP_HLEN, tcp_flags,
    },
    packet::{frame_len, ptr_at},
    parse,
};

use crate::maps::{GLOBALS, VIP_ADDRS, VIP_FILTER};

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
/// changes the program's instructions (and its tag) without changing its behaviour. The
/// release build (variant 0) compiles the test away: no packet pays for it.
const VARIANT_SENTINEL_LEN: u32 = 0xffff_0000 + VARIANT;

/// Entry point: the action of [`process`], with drops counted by reason.
#[xdp]
pub fn xlb_lb(ctx: XdpContext) -> u32 {
    let bytes = frame_len(&ctx);
    if VARIANT != 0 && bytes as u32 == VARIANT_SENTINEL_LEN {
        return xdp_action::XDP_PASS;
    }
    let action = match process(&ctx, bytes) {
        Ok(action) => action,
        Err(reason) => {
            stats::drop(reason);
            events::dropped(&ctx, reason);
            xdp_action::XDP_DROP
        }
    };
    stats::action(action, bytes);
    action
}

#[inline(always)]
fn process(ctx: &XdpContext, bytes: usize) -> Result<u32, DropReason> {
    let l2 = parse::l2(ctx)?;
    if l2.ether_type != ETH_P_IP_BE {
        return policy::not_ipv4(ctx, &l2);
    }
    let ip = parse::ipv4(ctx, l2.l3_off)?;
    // SAFETY: parse::ipv4 returned a header that lies inside the frame.
    let hdr = unsafe { *ip.hdr };
    let policy = policy::global_v4(hdr.saddr)?;

    let dst = [hdr.daddr, 0, 0, 0];
    if !may_be_vip_address(dst) {
        return Ok(xdp_action::XDP_PASS);
    }
    let frag_off = u16::from_be(hdr.frag_off);
    if frag_off & IPV4_FRAG_MASK != 0 {
        if !is_vip_address(dst) {
            return Ok(xdp_action::XDP_PASS);
        }
        return policy::fragment(&policy);
    }
    let l4_off = l2.l3_off + ip.header_len;
    // The ports, and for TCP the data offset byte and the flags (read once, for the policy
    // checks and to tell a connection's first packet).
    let l4: Option<(PortsHdr, Option<(u8, u8)>)> = match hdr.protocol {
        proto::TCP if ip.header_len + TCP_MIN_HLEN <= ip.total_len => {
            ptr_at::<TcpStartHdr>(ctx, l4_off).map(|tcp| {
                // SAFETY: ptr_at checked that the header start lies inside the frame.
                let tcp = unsafe { *tcp };
                (tcp.ports, Some((tcp.data_offset, tcp.flags)))
            })
        }
        proto::UDP if ip.header_len + UDP_HLEN <= ip.total_len => {
            // SAFETY: ptr_at checked that the ports lie inside the frame.
            ptr_at::<PortsHdr>(ctx, l4_off).map(|ports| (unsafe { *ports }, None))
        }
        proto::TCP | proto::UDP => None,
        // ICMP has rules of its own (icmp.rs), for VIP addresses only: the filter may let
        // ICMP to another address through, and that is none of the balancer's business. A
        // call, not inlined: the rare path stays out of the hot path's code.
        proto::ICMP if is_vip_address(dst) => {
            return icmp::to_vip(ctx, l2.l3_off, &policy, bytes);
        }
        other => return unserved(&policy, dst, other),
    };
    let Some((ports, tcp)) = l4 else {
        if !is_vip_address(dst) {
            return Ok(xdp_action::XDP_PASS);
        }
        return Err(DropReason::L4Truncated);
    };

    let flow = FlowKey {
        src: hdr.saddr,
        dst: hdr.daddr,
        sport: ports.sport,
        dport: ports.dport,
        proto: hdr.protocol,
        _pad: 0,
        _pad2: 0,
    };
    let Some(vip) = balance::find_vip(&flow) else {
        return unserved(&policy, dst, hdr.protocol);
    };
    policy::options(&policy, ip.header_len)?;
    policy::vip(&policy, &vip, &flow, tcp)?;
    // A SYN without ACK opens a connection.
    let opens_connection =
        tcp.is_some_and(|(_, flags)| flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN);
    let mut hash = None;
    let choice = balance::choose(&flow, &vip, &policy, opens_connection, &mut hash)?;
    let globals = *GLOBALS.get(0).ok_or(DropReason::TableMiss)?;

    let inner = forward::Inner::of(l2.l3_off, &hdr, ip.total_len);
    if vip.mode == forward_mode::IPIP && mtu::exceeds(&globals, ip.total_len) {
        return mtu::too_big(ctx, &inner, &globals);
    }
    let action = forward::to_backend(
        ctx,
        &vip,
        &inner,
        &choice.backend,
        &globals,
        &flow,
        &mut hash,
    )?;
    stats::forwarded(vip.vip_id, choice.backend_id, bytes);
    events::forwarded(&policy, &flow, vip.vip_id, choice.backend_id);
    Ok(action)
}

/// Whether `addr` may carry a VIP: false for certain when its filter bit is clear.
#[inline(always)]
fn may_be_vip_address(addr: [u32; 4]) -> bool {
    let slot = vip_filter_slot(addr);
    VIP_FILTER
        .get(slot / 64)
        .is_some_and(|&word| word & (1 << (slot % 64)) != 0)
}

/// Whether `addr` carries a VIP, exactly: asked only where the filter let a packet through
/// that cannot be balanced (or is ICMP), and a wrong answer would touch someone else's packet.
#[inline(always)]
fn is_vip_address(addr: [u32; 4]) -> bool {
    let key = VipAddrKey {
        addr,
        family: family::V4,
        _pad: [0; 3],
    };
    // SAFETY: only presence is tested; the value is not read.
    unsafe { VIP_ADDRS.get(key) }.is_some()
}

/// A packet that no VIP serves: the policy's verdict for unserved traffic if it is addressed
/// to a VIP address (the exact set is asked only when that verdict is a drop), passed otherwise.
#[inline(always)]
fn unserved(policy: &PolicyConfig, addr: [u32; 4], protocol: u8) -> Result<u32, DropReason> {
    match policy::unserved(policy, protocol) {
        Err(reason) if is_vip_address(addr) => Err(reason),
        _ => Ok(xdp_action::XDP_PASS),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
