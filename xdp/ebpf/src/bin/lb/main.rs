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
mod forward6;
mod icmp;
mod icmp6;
mod maps;
mod mtu;
mod policy;
mod stats;
mod v6;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use xlb_common::{
    DropReason, FlowKey, PolicyConfig, VipAddrKey, family, forward_mode, hash::vip_filter_slot,
    proto,
};
use xlb_ebpf::{
    headers::{
        ETH_P_IP_BE, ETH_P_IPV6_BE, IPV4_FRAG_MASK, PortsHdr, TCP_MIN_HLEN, TcpStartHdr, UDP_HLEN,
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

/// Dispatches by ethertype. Each family's path, and the ICMP path, is a BPF-to-BPF call, not
/// inlined: the verifier limits the stack of a chain of calls to 512 bytes in all, and each
/// path needs about 300 of them; called from here, no path's frame sits below another's.
#[inline(always)]
fn process(ctx: &XdpContext, bytes: usize) -> Result<u32, DropReason> {
    let l2 = parse::l2(ctx)?;
    if l2.ether_type == ETH_P_IP_BE {
        let action = ipv4(ctx, l2.l3_off, bytes)?;
        if action == ICMP_TO_VIP {
            return icmp::to_vip(ctx, l2.l3_off, policy::settings()?, bytes);
        }
        return Ok(action);
    }
    if l2.ether_type == ETH_P_IPV6_BE {
        return match v6::process(ctx, l2.l3_off, bytes)? {
            ICMP_TO_VIP => icmp6::to_vip(ctx, l2.l3_off, policy::settings()?, bytes),
            TOO_BIG => mtu::too_big6(ctx, l2.l3_off),
            action => Ok(action),
        };
    }
    Ok(xdp_action::XDP_PASS)
}

/// What [`ipv4`] and `v6::process` return for ICMP to a VIP address (which has passed the
/// global lists): the caller hands it to `icmp::to_vip` or `icmp6::to_vip`. Not an XDP action
/// (those are 0..=4).
const ICMP_TO_VIP: u32 = u32::MAX;
/// What `v6::process` returns for a packet too big to encapsulate: the caller hands it to
/// `mtu::too_big6`. Not an XDP action.
const TOO_BIG: u32 = u32::MAX - 1;

/// The IPv4 path, from the IPv4 header at `l3_off` on.
#[inline(never)]
fn ipv4(ctx: &XdpContext, l3_off: usize, bytes: usize) -> Result<u32, DropReason> {
    let ip = parse::ipv4(ctx, l3_off)?;
    // SAFETY: parse::ipv4 returned a header that lies inside the frame.
    let hdr = unsafe { *ip.hdr };
    let policy = policy::settings()?;

    let dst = [hdr.daddr, 0, 0, 0];
    if !may_be_vip_address(dst) {
        policy::lists_v4(policy, hdr.saddr)?;
        return Ok(xdp_action::XDP_PASS);
    }
    // The global lists are asked where the packet's flow is known: an established flow whose
    // source passed the lists of the current generation skips them. Every way out before that
    // point leaves the frame untouched and asks the lists here, so they keep their precedence
    // over every other verdict.
    let mut lists_checked = false;
    let result = to_vip_address(ctx, bytes, l3_off, &ip, policy, &mut lists_checked);
    if !lists_checked {
        policy::lists_v4(policy, hdr.saddr)?;
    }
    result
}

/// An IPv4 packet whose destination may carry a VIP. Sets `lists_checked` once the global
/// lists have been asked (or skipped for an established flow of the current generation);
/// every return before that leaves the frame untouched.
#[inline(always)]
fn to_vip_address(
    ctx: &XdpContext,
    bytes: usize,
    l3_off: usize,
    ip: &parse::Ipv4,
    policy: &PolicyConfig,
    lists_checked: &mut bool,
) -> Result<u32, DropReason> {
    // SAFETY: parse::ipv4 returned a header that lies inside the frame.
    let hdr = unsafe { *ip.hdr };
    let dst = [hdr.daddr, 0, 0, 0];
    let frag_off = u16::from_be(hdr.frag_off);
    if frag_off & IPV4_FRAG_MASK != 0 {
        if !is_vip_address(dst) {
            return Ok(xdp_action::XDP_PASS);
        }
        return policy::fragment(policy);
    }
    let l4_off = l3_off + ip.header_len;
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
        // ICMP to another address through, and that is none of the balancer's business. The
        // global lists come first, as for every packet; then the caller calls the ICMP path
        // (a call of its own, out of the hot path's code and stack frame).
        proto::ICMP if is_vip_address(dst) => {
            *lists_checked = true;
            policy::lists_v4(policy, hdr.saddr)?;
            return Ok(ICMP_TO_VIP);
        }
        other => return unserved(policy, dst, other),
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
    let mut hash = None;
    let entry = balance::established(&flow, policy::opens_connection(tcp), &mut hash);
    *lists_checked = true;
    policy::lists_for_flow(policy, flow.src, entry)?;
    // SAFETY: the entry is copied at once; one deleted and reused under us gives at worst a
    // backend id and a VIP id that are checked like any other.
    let entry = entry.map(|entry| unsafe { *entry });
    let Some(vip) = balance::vip_of(&flow, entry.as_ref()) else {
        return unserved(policy, dst, hdr.protocol);
    };
    policy::options(policy, ip.header_len)?;
    policy::vip(policy, &vip, &flow, tcp)?;
    let choice = balance::choose(&flow, &vip, policy, entry, &mut hash)?;
    // A reference into the map, not a copy: the settings entry is 56 bytes of stack.
    let globals = GLOBALS.get(0).ok_or(DropReason::TableMiss)?;

    let inner = forward::Inner::of(l3_off, &hdr, ip.total_len);
    let outer_len = mtu::outer_len(&choice.backend);
    if vip.mode == forward_mode::IPIP && mtu::exceeds(globals, ip.total_len, outer_len) {
        if mtu::answers(&inner, globals) {
            icmp::may_send(policy)?;
        }
        return mtu::too_big(ctx, &inner, globals, outer_len);
    }
    let action = forward::to_backend(
        ctx,
        &vip,
        &inner,
        &choice.backend,
        globals,
        &flow,
        &mut hash,
    )?;
    stats::forwarded(vip.vip_id, choice.backend_id, bytes);
    events::forwarded(policy, &flow, vip.vip_id, choice.backend_id);
    Ok(action)
}

/// Whether `addr` may carry a VIP: false for certain when its filter bit is clear.
#[inline(always)]
pub(crate) fn may_be_vip_address(addr: [u32; 4]) -> bool {
    let slot = vip_filter_slot(addr);
    VIP_FILTER
        .get(slot / 64)
        .is_some_and(|&word| word & (1 << (slot % 64)) != 0)
}

/// Whether `addr` carries a VIP, exactly: asked only where the filter let a packet through
/// that cannot be balanced (or is ICMP), and a wrong answer would touch someone else's packet.
#[inline(always)]
fn is_vip_address(addr: [u32; 4]) -> bool {
    is_vip_address_of(addr, family::V4)
}

/// As [`is_vip_address`] for an address of either family.
#[inline(always)]
pub(crate) fn is_vip_address_of(addr: [u32; 4], family: u8) -> bool {
    let key = VipAddrKey {
        addr,
        family,
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
