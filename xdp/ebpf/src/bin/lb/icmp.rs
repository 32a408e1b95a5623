//! ICMP addressed to a VIP address (IPv4), and the ICMP errors the balancer itself sends.
//!
//! The rules, in order (docs/architecture.md, "ICMP"):
//! - echo request: answered here, in place (`policy.icmp_echo = "reply"`, the default), or
//!   passed to the kernel, or dropped (`icmp_echo`);
//! - destination unreachable (fragmentation needed among them), time exceeded, parameter
//!   problem: an error about a packet a backend sent as the VIP. The quoted header names the
//!   client->VIP flow; the whole message goes to the backend that owns that flow (flow table,
//!   else the Maglev table, nothing remembered), in the VIP's mode, so the backend's kernel
//!   learns the path MTU (or the error) of its connection. A quote cut short or inconsistent is
//!   dropped (`icmp_bad_quote`); a quoted packet that no VIP serves falls to the next rule;
//! - anything else: passed to the kernel (`policy.icmp_other = "pass"`, the default) or
//!   dropped (`icmp_unhandled`).
//!
//! ICMPv6 (icmp6.rs) follows the same rules with its own parser of the quote; `other` is
//! shared.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_csum_diff, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use xlb_common::{
    DropReason, FlowKey, LbCounter, PolicyConfig, forward_mode, policy::window, policy_flags, proto,
};
use xlb_ebpf::{
    csum,
    headers::{
        EthHdr, ICMP_HLEN, IPV4_FRAG_OFFSET, IPV4_HLEN, IcmpHdr, Ipv4Hdr, PortsHdr, icmp_type,
    },
    packet::{frame_len, ptr_at},
    parse::{self, Ipv4},
};

use crate::{balance, forward, maps::GLOBALS, mtu, policy, stats};

/// Bytes of the offending packet an ICMP error from the balancer quotes: as many as keep the
/// error within 576 bytes (RFC 1812 4.3.2.3), as Linux does.
pub const QUOTE_LEN: usize = 576 - IPV4_HLEN - ICMP_HLEN;
/// The quote is summed by `bpf_csum_diff`, which takes at most 512 bytes (in 4-byte words) a
/// call: two calls, of this many bytes and the rest.
const QUOTE_FIRST: usize = 276;
const _: () = assert!(QUOTE_FIRST.is_multiple_of(4) && (QUOTE_LEN - QUOTE_FIRST).is_multiple_of(4));
const _: () = assert!(QUOTE_FIRST <= 512 && QUOTE_LEN - QUOTE_FIRST <= 512);
/// Type of service of the errors the balancer sends: precedence "internetwork control", as
/// the kernel's own ICMP errors.
const ERROR_TOS: u8 = 0xc0;
/// TTL of the messages the balancer originates (errors and echo replies).
const TTL: u8 = 64;

/// ICMP to a VIP address (the caller checked the exact set) whose IPv4 header is at `l3_off`:
/// the rules in the module comment. `bytes` is the frame length, for the VIP and backend
/// counters of a forwarded error. Not inlined: a BPF-to-BPF call, so that this rare path does
/// not weigh on the code of the balanced path (the verifier passes at most five arguments,
/// and packet pointers are derived again here from `ctx`).
#[inline(never)]
pub fn to_vip(
    ctx: &XdpContext,
    l3_off: usize,
    policy: &PolicyConfig,
    bytes: usize,
) -> Result<u32, DropReason> {
    let ip = parse::ipv4(ctx, l3_off)?;
    // SAFETY: parse::ipv4 returned a header that lies inside the frame.
    let hdr = unsafe { *ip.hdr };
    let (ip, hdr) = (&ip, &hdr);
    policy::options(policy, ip.header_len)?;
    let l4_off = l3_off + ip.header_len;
    if ip.header_len + ICMP_HLEN > ip.total_len {
        return Err(DropReason::L4Truncated);
    }
    let icmp: *mut IcmpHdr = ptr_at(ctx, l4_off).ok_or(DropReason::L4Truncated)?;
    // SAFETY: ptr_at checked that the 8-byte ICMP header lies inside the frame.
    let kind = unsafe { (*icmp).kind };
    match kind {
        icmp_type::ECHO_REQUEST => echo(ctx, ip, icmp, policy),
        icmp_type::DEST_UNREACH | icmp_type::TIME_EXCEEDED | icmp_type::PARAMETER_PROBLEM => {
            let quote_off = l4_off + ICMP_HLEN;
            let quote_len = ip.total_len - ip.header_len - ICMP_HLEN;
            match quoted_flow(ctx, quote_off, quote_len, hdr.daddr)? {
                Some(flow) => route_error(ctx, l3_off, ip, hdr, &flow, policy, bytes),
                None => other(policy),
            }
        }
        _ => other(policy),
    }
}

/// ICMP to a VIP address that no other rule takes: passed or dropped per `policy.icmp_other`.
#[inline(always)]
pub fn other(policy: &PolicyConfig) -> Result<u32, DropReason> {
    if policy.flags & policy_flags::ICMP_OTHER_DROP != 0 {
        return Err(DropReason::IcmpUnhandled);
    }
    stats::lb(LbCounter::IcmpPassed);
    Ok(xdp_action::XDP_PASS)
}

/// An echo request: turned into the reply in place (addresses and MACs swapped, type 0, a
/// fresh TTL, both checksums updated incrementally) and sent back out.
#[inline(always)]
fn echo(
    ctx: &XdpContext,
    ip: &Ipv4,
    icmp: *mut IcmpHdr,
    policy: &PolicyConfig,
) -> Result<u32, DropReason> {
    if let Some(action) = echo_policy(policy, false)? {
        return Ok(action);
    }
    may_send(policy)?;
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(DropReason::EthTruncated)?;
    let hdr = ip.hdr;
    // SAFETY: the Ethernet header (ptr_at), the IPv4 header (parse::ipv4) and the ICMP header
    // (the caller's ptr_at) were bounds-checked and stay where they are: nothing moved the frame.
    unsafe {
        core::mem::swap(&mut (*eth).src, &mut (*eth).dst);
        core::mem::swap(&mut (*hdr).saddr, &mut (*hdr).daddr);
        // Swapping the addresses leaves the header's sum as it was; the TTL word changes.
        let old = u16::from_ne_bytes([(*hdr).ttl, (*hdr).protocol]);
        (*hdr).ttl = TTL;
        let new = u16::from_ne_bytes([TTL, (*hdr).protocol]);
        (*hdr).check = csum::replace16((*hdr).check, old, new);

        reply_type(icmp, icmp_type::ECHO_REQUEST, icmp_type::ECHO_REPLY);
    }
    stats::lb(LbCounter::IcmpEchoReplied);
    Ok(xdp_action::XDP_TX)
}

/// What `policy.icmp_echo` makes of an echo request (ICMP or ICMPv6) before any reply: an
/// error to drop it, `Some(XDP_PASS)` (counted) to give it to the kernel, which it also is when
/// the caller cannot answer it here (`to_kernel`), or `None` to answer it.
#[inline(always)]
pub fn echo_policy(policy: &PolicyConfig, to_kernel: bool) -> Result<Option<u32>, DropReason> {
    if policy.flags & policy_flags::ICMP_ECHO_DROP != 0 {
        return Err(DropReason::IcmpEcho);
    }
    if policy.flags & policy_flags::ICMP_ECHO_PASS != 0 || to_kernel {
        stats::lb(LbCounter::IcmpPassed);
        return Ok(Some(xdp_action::XDP_PASS));
    }
    Ok(None)
}

/// Whether this CPU may send one more ICMP message (echo reply or error) this second:
/// `policy.icmp_rate_limit`, as the kernel's own `icmp_msgs_per_sec` limits what it sends, so
/// that the balancer cannot be made to send a flood of its own (to a spoofed source) at the
/// rate it receives. Past the limit the packet that would be answered is dropped, counted as
/// `icmp_rate_limited`.
#[inline(always)]
pub fn may_send(policy: &PolicyConfig) -> Result<(), DropReason> {
    if policy.icmp_rate == 0 || policy::within_rate(window::ICMP_SENT, policy.icmp_rate) {
        Ok(())
    } else {
        Err(DropReason::IcmpRateLimited)
    }
}

/// Turns the echo request header at `icmp` into the reply: type `request` -> `reply`, the
/// checksum updated for that one word (RFC 1624).
///
/// # Safety
/// `icmp` must point at an ICMP (or ICMPv6) header inside the frame, bounds-checked.
#[inline(always)]
pub unsafe fn reply_type(icmp: *mut IcmpHdr, request: u8, reply: u8) {
    // SAFETY: the caller guarantees the header lies inside the frame.
    unsafe {
        let code = (*icmp).code;
        (*icmp).kind = reply;
        (*icmp).check = csum::replace16(
            (*icmp).check,
            u16::from_ne_bytes([request, code]),
            u16::from_ne_bytes([reply, code]),
        );
    }
}

/// The client->VIP flow an ICMP error is about, read from the header it quotes: the packet a
/// backend sent as the VIP (source VIP:port, destination client:port), so the flow is that
/// packet reversed. `quote_len` is how much of the message follows the ICMP header; `vip` is
/// the address the error is addressed to, which must be the quoted packet's source. `None`
/// when the quoted packet is neither TCP nor UDP (no flow of a VIP).
#[inline(always)]
fn quoted_flow(
    ctx: &XdpContext,
    quote_off: usize,
    quote_len: usize,
    vip: u32,
) -> Result<Option<FlowKey>, DropReason> {
    let quoted: *const Ipv4Hdr = ptr_at(ctx, quote_off).ok_or(DropReason::IcmpBadQuote)?;
    // SAFETY: ptr_at checked that the quoted 20-byte header lies inside the frame.
    let quoted = unsafe { *quoted };
    let ihl = (quoted.version_ihl & 0x0f) as usize;
    if quoted.version_ihl >> 4 != 4
        || ihl < 5
        || quoted.saddr != vip
        || u16::from_be(quoted.frag_off) & IPV4_FRAG_OFFSET != 0
    {
        return Err(DropReason::IcmpBadQuote);
    }
    if quoted.protocol != proto::TCP && quoted.protocol != proto::UDP {
        return Ok(None);
    }
    let header_len = ihl * 4;
    if header_len + core::mem::size_of::<PortsHdr>() > quote_len {
        return Err(DropReason::IcmpBadQuote);
    }
    let ports: *const PortsHdr =
        ptr_at(ctx, quote_off + header_len).ok_or(DropReason::IcmpBadQuote)?;
    // SAFETY: ptr_at checked that the quoted ports lie inside the frame.
    let ports = unsafe { *ports };
    Ok(Some(FlowKey {
        src: quoted.daddr,
        dst: quoted.saddr,
        sport: ports.dport,
        dport: ports.sport,
        proto: quoted.protocol,
        _pad: 0,
        _pad2: 0,
    }))
}

/// Forwards an ICMP error about `flow` to the backend that owns the flow, in the VIP's mode.
/// The flow table is only read: an error never creates a flow entry (a forged error must not
/// cost an established flow its entry). An error that no VIP's flow explains goes to [`other`].
#[inline(always)]
fn route_error(
    ctx: &XdpContext,
    l3_off: usize,
    ip: &Ipv4,
    hdr: &Ipv4Hdr,
    flow: &FlowKey,
    policy: &PolicyConfig,
    bytes: usize,
) -> Result<u32, DropReason> {
    let Some(vip) = balance::find_vip(flow) else {
        return other(policy);
    };
    let mut hash = None;
    let choice = balance::owner(flow, &vip, &mut hash)?;
    // A reference into the map, not a copy: the settings entry is 56 bytes of stack.
    let globals = GLOBALS.get(0).ok_or(DropReason::TableMiss)?;
    // No error is ever sent about an error (RFC 1122 3.2.2): too big to encapsulate, it drops.
    if vip.mode == forward_mode::IPIP
        && mtu::exceeds(globals, ip.total_len, mtu::outer_len(&choice.backend))
    {
        return Err(DropReason::EncapTooBig);
    }
    let inner = forward::Inner::of(l3_off, hdr, ip.total_len);
    let action = forward::to_backend(ctx, &vip, &inner, &choice.backend, globals, flow, &mut hash)?;
    stats::forwarded(vip.vip_id, choice.backend_id, bytes);
    stats::lb(LbCounter::IcmpErrorForwarded);
    Ok(action)
}

/// Prepares the frame for an error about the packet at `l3_off`, sent back where it came from:
/// cuts it to the packet's first `quote_len` bytes and grows it at the front by `headers`
/// bytes (the error's IP and ICMP headers, written by the caller at `l3_off`), the Ethernet
/// header (and any tag) in front, its MACs swapped. The packet must hold the whole quote.
#[inline(always)]
pub fn room_for_error(
    ctx: &XdpContext,
    l3_off: usize,
    quote_len: usize,
    headers: usize,
) -> Result<(), DropReason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(DropReason::EthTruncated)?;
    // SAFETY: the header was bounds-checked by ptr_at.
    let (sender_mac, own_mac) = unsafe { ((*eth).src, (*eth).dst) };
    let keep = l3_off + quote_len;
    let len = frame_len(ctx);
    if len < keep {
        return Err(DropReason::EncapTooBig);
    }
    if len > keep {
        // SAFETY: the helper only moves ctx->data_end; pointers are re-derived afterwards.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((len - keep) as i32)) } != 0 {
            return Err(DropReason::EncapFailed);
        }
    }
    forward::grow_front(ctx, headers, l3_off, sender_mac, own_mac)
}

/// Turns the IPv4 packet at `l3_off` into an ICMP "fragmentation needed" (type 3 code 4) from
/// the address it was sent to, back to its sender through the MAC it came from: a new IPv4
/// and ICMP header in front of the packet's first [`QUOTE_LEN`] bytes (the frame is cut to
/// them). The caller guarantees the packet is at least that long (`encap.mtu` >= 576).
#[inline(always)]
pub fn frag_needed(ctx: &XdpContext, l3_off: usize, next_hop_mtu: u16) -> Result<u32, DropReason> {
    let packet: *const Ipv4Hdr = ptr_at(ctx, l3_off).ok_or(DropReason::Ipv4Truncated)?;
    // SAFETY: the header was bounds-checked by ptr_at.
    let (sender, addressed) = unsafe { ((*packet).saddr, (*packet).daddr) };
    room_for_error(ctx, l3_off, QUOTE_LEN, IPV4_HLEN + ICMP_HLEN)?;

    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: ERROR_TOS,
        tot_len: ((IPV4_HLEN + ICMP_HLEN + QUOTE_LEN) as u16).to_be(),
        id: 0,
        frag_off: 0,
        ttl: TTL,
        protocol: proto::ICMP,
        check: 0,
        saddr: addressed,
        daddr: sender,
    };
    ip.check = csum::ipv4_header(&ip);
    let mut icmp = IcmpHdr {
        kind: icmp_type::DEST_UNREACH,
        code: icmp_type::FRAG_NEEDED,
        check: 0,
        rest: [0, next_hop_mtu.to_be()],
    };
    let quote: *mut [u8; QUOTE_LEN] =
        ptr_at(ctx, l3_off + IPV4_HLEN + ICMP_HLEN).ok_or(DropReason::EncapFailed)?;
    let first = quote as *mut u32;
    // SAFETY: ptr_at checked that all QUOTE_LEN bytes lie inside the frame; the helper reads
    // QUOTE_FIRST bytes from `first` and the rest from just after them, both multiples of 4.
    let sum = unsafe {
        let head = bpf_csum_diff(core::ptr::null_mut(), 0, first, QUOTE_FIRST as u32, 0);
        let rest = (quote as *mut u8).add(QUOTE_FIRST) as *mut u32;
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            rest,
            (QUOTE_LEN - QUOTE_FIRST) as u32,
            head as u32,
        )
    };
    if sum < 0 {
        return Err(DropReason::EncapFailed);
    }
    let words = u32::from(u16::from_ne_bytes([icmp.kind, icmp.code]))
        + u32::from(icmp.rest[0])
        + u32::from(icmp.rest[1]);
    icmp.check = !csum::fold(u32::from(csum::fold(sum as u32)) + words);

    let ip_ptr: *mut Ipv4Hdr = ptr_at(ctx, l3_off).ok_or(DropReason::EncapFailed)?;
    let icmp_ptr: *mut IcmpHdr = ptr_at(ctx, l3_off + IPV4_HLEN).ok_or(DropReason::EncapFailed)?;
    // SAFETY: ptr_at checked that both headers lie inside the (grown) frame.
    unsafe {
        *ip_ptr = ip;
        *icmp_ptr = icmp;
    }
    Ok(xdp_action::XDP_TX)
}
