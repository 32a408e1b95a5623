//! ICMPv6 addressed to an IPv6 VIP address, and the "packet too big" the balancer sends for
//! an IPv6 packet too big to encapsulate. The rules follow the IPv4 ones (icmp.rs) and the
//! same settings and counters (docs/architecture.md, "ICMP"):
//! - neighbour discovery (types 133-137): always passed, never counted: the kernel must keep
//!   resolving the VIP address (a neighbour solicitation for it) whatever the settings say;
//! - echo request: answered here in place (`policy.icmp_echo = "reply"`), passed, or dropped
//!   (`icmp_echo`). A request carrying extension headers is passed to the kernel;
//! - destination unreachable, packet too big, time exceeded, parameter problem: an error about
//!   a packet a backend sent as the VIP. The quoted IPv6 header (no extension headers between
//!   it and the ports) names the client->VIP flow; the whole message goes to the flow's owner
//!   (flow table, else Maglev table, nothing remembered) in the VIP's mode. A quote cut short
//!   or sent by another address is dropped (`icmp_bad_quote`); a quoted packet no VIP serves
//!   falls to the next rule;
//! - anything else: `policy.icmp_other` (passed and counted, or dropped as `icmp_unhandled`).

use aya_ebpf::{bindings::xdp_action, helpers::bpf_csum_diff, programs::XdpContext};
use xlb_common::{DropReason, FlowKey6, LbCounter, PolicyConfig, proto};
use xlb_ebpf::{
    csum,
    headers::{EthHdr, ICMP_HLEN, IPV6_HLEN, IPV6_MIN_MTU, IcmpHdr, Ipv6Hdr, PortsHdr, icmp6_type},
    packet::ptr_at,
    parse,
};

use crate::{balance, forward6, icmp, maps::GLOBALS, stats, v6};

/// Bytes of the offending packet a "packet too big" quotes: as many as keep the error within
/// the minimum IPv6 MTU (RFC 4443 2.4 (c)).
pub const QUOTE_LEN: usize = IPV6_MIN_MTU - IPV6_HLEN - ICMP_HLEN;
/// `bpf_csum_diff` sums at most 512 bytes a call: the quote is summed in three parts.
const QUOTE_PART: usize = 512;
const _: () = assert!(QUOTE_LEN > 2 * QUOTE_PART && (QUOTE_LEN - 2 * QUOTE_PART) <= QUOTE_PART);
const _: () = assert!(QUOTE_LEN.is_multiple_of(4));
/// Hop limit of the messages the balancer originates (errors and echo replies).
const HOP_LIMIT: u8 = 64;

/// ICMPv6 to an IPv6 VIP address (the caller checked the exact set and the global lists)
/// whose IPv6 header is at `l3_off`: the rules in the module comment. `bytes` is the frame
/// length, for the counters of a forwarded error. Not inlined: a BPF-to-BPF call of its own
/// from `process`, beside the IPv6 path rather than below it (the 512-byte stack limit).
#[inline(never)]
pub fn to_vip(
    ctx: &XdpContext,
    l3_off: usize,
    policy: &PolicyConfig,
    bytes: usize,
) -> Result<u32, DropReason> {
    let ip = parse::ipv6(ctx, l3_off)?;
    // SAFETY: parse::ipv6 returned a header that lies inside the frame.
    let hdr = unsafe { *ip.hdr };
    let end = l3_off + IPV6_HLEN + ip.payload_len;
    // The IPv6 path walked these headers already (and dropped a VIP's packet it could not);
    // the walk is repeated rather than its result carried through the action.
    let (_, l4_off) = v6::skip_extensions(ctx, l3_off + IPV6_HLEN, hdr.next_header, end)?;
    if l4_off + ICMP_HLEN > end {
        return Err(DropReason::L4Truncated);
    }
    let icmp: *mut IcmpHdr = ptr_at(ctx, l4_off).ok_or(DropReason::L4Truncated)?;
    // SAFETY: ptr_at checked that the 8-byte ICMPv6 header lies inside the frame.
    let kind = unsafe { (*icmp).kind };
    match kind {
        icmp6_type::ND_FIRST..=icmp6_type::ND_LAST => Ok(xdp_action::XDP_PASS),
        icmp6_type::ECHO_REQUEST => echo(ctx, ip.hdr, icmp, l4_off - l3_off, policy),
        icmp6_type::DEST_UNREACH
        | icmp6_type::PACKET_TOO_BIG
        | icmp6_type::TIME_EXCEEDED
        | icmp6_type::PARAMETER_PROBLEM => {
            match quoted_flow(ctx, l4_off + ICMP_HLEN, end, hdr.daddr)? {
                Some(flow) => route_error(ctx, l3_off, &hdr, ip.payload_len, &flow, policy, bytes),
                None => icmp::other(policy),
            }
        }
        _ => icmp::other(policy),
    }
}

/// An echo request: turned into the reply in place (addresses and MACs swapped, type 129, a
/// fresh hop limit) and sent back out. Swapping the addresses leaves the pseudo-header's sum
/// as it was, and the hop limit is not summed: only the type word changes the checksum.
/// `headers_len` is the length of the IPv6 header and its extension headers.
#[inline(always)]
fn echo(
    ctx: &XdpContext,
    hdr: *mut Ipv6Hdr,
    icmp: *mut IcmpHdr,
    headers_len: usize,
    policy: &PolicyConfig,
) -> Result<u32, DropReason> {
    // A reply would carry the request's extension headers back: the kernel answers those.
    if let Some(action) = icmp::echo_policy(policy, headers_len != IPV6_HLEN)? {
        return Ok(action);
    }
    icmp::may_send(policy)?;
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(DropReason::EthTruncated)?;
    // SAFETY: the Ethernet header (ptr_at), the IPv6 header (parse::ipv6) and the ICMPv6
    // header (the caller's ptr_at) were bounds-checked and stay put: nothing moved the frame.
    unsafe {
        core::mem::swap(&mut (*eth).src, &mut (*eth).dst);
        core::mem::swap(&mut (*hdr).saddr, &mut (*hdr).daddr);
        (*hdr).hop_limit = HOP_LIMIT;
        icmp::reply_type(icmp, icmp6_type::ECHO_REQUEST, icmp6_type::ECHO_REPLY);
    }
    stats::lb(LbCounter::IcmpEchoReplied);
    Ok(xdp_action::XDP_TX)
}

/// The client->VIP flow an ICMPv6 error is about, read from the IPv6 header it quotes at
/// `quote_off` (the message ends at `end`): the packet a backend sent as `vip`, reversed.
/// `None` when the quoted packet's next header is neither TCP nor UDP (extension headers in
/// the quote are not walked: a backend's replies carry none).
#[inline(always)]
fn quoted_flow(
    ctx: &XdpContext,
    quote_off: usize,
    end: usize,
    vip: [u32; 4],
) -> Result<Option<FlowKey6>, DropReason> {
    if quote_off + IPV6_HLEN > end {
        return Err(DropReason::IcmpBadQuote);
    }
    let quoted: *const Ipv6Hdr = ptr_at(ctx, quote_off).ok_or(DropReason::IcmpBadQuote)?;
    // SAFETY: ptr_at checked that the quoted 40-byte header lies inside the frame.
    let quoted = unsafe { *quoted };
    if u32::from_be(quoted.vtc_flow) >> 28 != 6 || quoted.saddr != vip {
        return Err(DropReason::IcmpBadQuote);
    }
    if quoted.next_header != proto::TCP && quoted.next_header != proto::UDP {
        return Ok(None);
    }
    let ports_off = quote_off + IPV6_HLEN;
    if ports_off + core::mem::size_of::<PortsHdr>() > end {
        return Err(DropReason::IcmpBadQuote);
    }
    let ports: *const PortsHdr = ptr_at(ctx, ports_off).ok_or(DropReason::IcmpBadQuote)?;
    // SAFETY: ptr_at checked that the quoted ports lie inside the frame.
    let ports = unsafe { *ports };
    Ok(Some(FlowKey6 {
        src: quoted.daddr,
        dst: quoted.saddr,
        sport: ports.dport,
        dport: ports.sport,
        proto: quoted.next_header,
        _pad: 0,
        _pad2: 0,
    }))
}

/// Forwards an ICMPv6 error about `flow` to the backend that owns the flow, in the VIP's
/// mode, without touching the flow table (see `icmp::route_error`). An error no VIP's flow
/// explains goes to `icmp::other`; one too big to encapsulate is dropped (no error about an
/// error, RFC 4443 2.4 (e)).
#[inline(always)]
fn route_error(
    ctx: &XdpContext,
    l3_off: usize,
    hdr: &Ipv6Hdr,
    payload_len: usize,
    flow: &FlowKey6,
    policy: &PolicyConfig,
    bytes: usize,
) -> Result<u32, DropReason> {
    let Some(vip) = balance::find_vip(flow) else {
        return icmp::other(policy);
    };
    let mut hash = None;
    let choice = balance::owner(flow, &vip, &mut hash)?;
    // A reference into the map, not a copy: the settings entry is 56 bytes of stack.
    let globals = GLOBALS.get(0).ok_or(DropReason::TableMiss)?;
    let inner = forward6::Inner::of(l3_off, hdr, payload_len);
    if forward6::too_big(&vip, &inner, globals) {
        return Err(DropReason::EncapTooBig);
    }
    let action =
        forward6::to_backend(ctx, &vip, &inner, &choice.backend, globals, flow, &mut hash)?;
    stats::forwarded(vip.vip_id, choice.backend_id, bytes);
    stats::lb(LbCounter::IcmpErrorForwarded);
    Ok(action)
}

/// Turns the IPv6 packet at `l3_off` into an ICMPv6 "packet too big" (type 2, code 0) from the
/// address it was sent to, back to its sender through the MAC it came from: a new IPv6 and
/// ICMPv6 header in front of the packet's first [`QUOTE_LEN`] bytes (the frame is cut to
/// them), 1280 bytes in all. The caller guarantees `mtu` >= 1280, so the packet (longer than
/// `mtu`) holds the whole quote.
#[inline(always)]
pub fn packet_too_big(ctx: &XdpContext, l3_off: usize, mtu: u32) -> Result<u32, DropReason> {
    let packet: *const Ipv6Hdr = ptr_at(ctx, l3_off).ok_or(DropReason::Ipv6Truncated)?;
    // SAFETY: the header was bounds-checked by ptr_at.
    let (sender, addressed) = unsafe { ((*packet).saddr, (*packet).daddr) };
    icmp::room_for_error(ctx, l3_off, QUOTE_LEN, IPV6_HLEN + ICMP_HLEN)?;

    let message_len = (ICMP_HLEN + QUOTE_LEN) as u16;
    let ip = Ipv6Hdr {
        vtc_flow: (6u32 << 28).to_be(),
        payload_len: message_len.to_be(),
        next_header: proto::ICMPV6,
        hop_limit: HOP_LIMIT,
        saddr: addressed,
        daddr: sender,
    };
    let mut icmp = IcmpHdr {
        kind: icmp6_type::PACKET_TOO_BIG,
        code: 0,
        check: 0,
        rest: [((mtu >> 16) as u16).to_be(), (mtu as u16).to_be()],
    };
    let quote: *mut [u8; QUOTE_LEN] =
        ptr_at(ctx, l3_off + IPV6_HLEN + ICMP_HLEN).ok_or(DropReason::EncapFailed)?;
    let start = quote as *mut u8;
    // SAFETY: ptr_at checked that all QUOTE_LEN bytes lie inside the frame; the three calls
    // read consecutive parts of them (512, 512 and the rest, all multiples of 4 bytes).
    let sum = unsafe {
        let first = bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            start as *mut u32,
            QUOTE_PART as u32,
            0,
        );
        let second = bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            start.add(QUOTE_PART) as *mut u32,
            QUOTE_PART as u32,
            first as u32,
        );
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            start.add(2 * QUOTE_PART) as *mut u32,
            (QUOTE_LEN - 2 * QUOTE_PART) as u32,
            second as u32,
        )
    };
    if sum < 0 {
        return Err(DropReason::EncapFailed);
    }
    // The pseudo-header (RFC 8200 8.1): both addresses, the 32-bit upper-layer length and the
    // next header, as native-endian 16-bit words like the rest of the sum.
    let words = u32::from(u16::from_ne_bytes([icmp.kind, icmp.code]))
        + u32::from(icmp.rest[0])
        + u32::from(icmp.rest[1])
        + u32::from(message_len.to_be())
        + u32::from(u16::from_ne_bytes([0, proto::ICMPV6]))
        + address_sum(&addressed)
        + address_sum(&sender);
    icmp.check = !csum::fold(u32::from(csum::fold(sum as u32)) + words);

    let ip_ptr: *mut Ipv6Hdr = ptr_at(ctx, l3_off).ok_or(DropReason::EncapFailed)?;
    let icmp_ptr: *mut IcmpHdr = ptr_at(ctx, l3_off + IPV6_HLEN).ok_or(DropReason::EncapFailed)?;
    // SAFETY: ptr_at checked that both headers lie inside the (grown) frame.
    unsafe {
        *ip_ptr = ip;
        *icmp_ptr = icmp;
    }
    Ok(xdp_action::XDP_TX)
}

/// The one's complement sum of an IPv6 address's 16-bit words (as stored), not folded.
/// Written out: an iterator over the words compiles to a loop the verifier cannot follow.
#[inline(always)]
fn address_sum(addr: &[u32; 4]) -> u32 {
    u32::from(csum::fold(addr[0]))
        + u32::from(csum::fold(addr[1]))
        + u32::from(csum::fold(addr[2]))
        + u32::from(csum::fold(addr[3]))
}
