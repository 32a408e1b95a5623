//! The IPv6 path: parse (fixed header, then the extension headers a packet to a service may
//! carry) -> global lists -> VIP -> flow table -> Maglev -> forward (L2, or IPv6-in-IPv6).
//! It mirrors the IPv4 path in main.rs with IPv6's own maps (`XLB_VIPS6`, `XLB_FLOWS6`); the
//! backends, Maglev slots and counters are shared.
//!
//! Traffic that is not for a VIP address passes to the kernel untouched, whatever its
//! extension headers: only packets to a VIP address are dropped for them.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use xlb_common::{DropReason, FlowKey6, PolicyConfig, family, policy_flags, proto};
use xlb_ebpf::{
    headers::{IPV6_HLEN, Ipv6ExtHdr, PortsHdr, TCP_MIN_HLEN, TcpStartHdr, UDP_HLEN, ipv6_ext},
    packet::ptr_at,
    parse,
};

use crate::{balance, events, forward6, maps::GLOBALS, may_be_vip_address, policy, stats};

/// Extension headers skipped before the upper-layer header; a packet to a VIP with more is
/// dropped (`ipv6_ext_header`). Real traffic to a service carries none, or one or two.
pub const MAX_EXT_HEADERS: usize = 4;

/// Balances an IPv6 packet whose fixed header starts at `l3_off`. Returns an XDP action, or
/// one of the caller's markers: `ICMP_TO_VIP` (ICMPv6 to a VIP address, past the global
/// lists) or `TOO_BIG` (too big to encapsulate, flow chosen): each the caller's next call.
#[inline(never)]
pub fn process(ctx: &XdpContext, l3_off: usize, bytes: usize) -> Result<u32, DropReason> {
    let ip = parse::ipv6(ctx, l3_off)?;
    // SAFETY: parse::ipv6 returned a header that lies inside the frame.
    let hdr = unsafe { *ip.hdr };
    let policy = policy::global_v6(hdr.saddr)?;

    let dst = hdr.daddr;
    if !may_be_vip_address(dst) {
        return Ok(xdp_action::XDP_PASS);
    }
    let end = l3_off + IPV6_HLEN + ip.payload_len;
    let (upper, l4_off) = match skip_extensions(ctx, l3_off + IPV6_HLEN, hdr.next_header, end) {
        Ok(upper) => upper,
        Err(_) if !is_vip_address6(dst) => return Ok(xdp_action::XDP_PASS),
        Err(DropReason::Ipv6Fragment) if policy.flags & policy_flags::PASS_FRAGMENTS != 0 => {
            return Ok(xdp_action::XDP_PASS);
        }
        Err(reason) => return Err(reason),
    };
    // As in the IPv4 path: the ports, and for TCP the data offset byte and the flags.
    let l4: Option<(PortsHdr, Option<(u8, u8)>)> = match upper {
        proto::TCP if l4_off + TCP_MIN_HLEN <= end => {
            ptr_at::<TcpStartHdr>(ctx, l4_off).map(|tcp| {
                // SAFETY: ptr_at checked that the header start lies inside the frame.
                let tcp = unsafe { *tcp };
                (tcp.ports, Some((tcp.data_offset, tcp.flags)))
            })
        }
        proto::UDP if l4_off + UDP_HLEN <= end => {
            // SAFETY: ptr_at checked that the ports lie inside the frame.
            ptr_at::<PortsHdr>(ctx, l4_off).map(|ports| (unsafe { *ports }, None))
        }
        proto::TCP | proto::UDP => None,
        // ICMPv6 to a VIP address has rules of its own (icmp6.rs), a call of its own made by
        // the caller; to another address it passes (`unserved`).
        proto::ICMPV6 if is_vip_address6(dst) => return Ok(crate::ICMP_TO_VIP),
        other => return unserved(policy, dst, other),
    };
    let Some((ports, tcp)) = l4 else {
        if !is_vip_address6(dst) {
            return Ok(xdp_action::XDP_PASS);
        }
        return Err(DropReason::L4Truncated);
    };

    let flow = FlowKey6 {
        src: hdr.saddr,
        dst,
        sport: ports.sport,
        dport: ports.dport,
        proto: upper,
        _pad: 0,
        _pad2: 0,
    };
    // The flow's entry first: an established flow finds its VIP by the id in it (an array
    // read), as in the IPv4 path, else by the hash lookup. A SYN without ACK opens a
    // connection; its flags' sanity is checked once the VIP is known, so that a packet no VIP
    // serves keeps the unserved verdict.
    // The IPv6 lists were asked above, for every packet: established flows do not skip them
    // as IPv4 flows do (the IPv6 lists are an LPM trie, with no per-flow generation check).
    let mut hash = None;
    // SAFETY: the entry is copied at once; one deleted and reused under us gives at worst a
    // backend id and a VIP id that are checked like any other.
    let entry = balance::established(&flow, policy::opens_connection(tcp), &mut hash)
        .map(|entry| unsafe { *entry });
    let Some(vip) = balance::vip_of(&flow, entry.as_ref()) else {
        return unserved(policy, dst, upper);
    };
    let opens_connection = policy::tcp_sane(tcp)?;
    policy::vip6(policy, &vip, &flow, opens_connection)?;
    let choice = balance::choose(&flow, &vip, policy, entry, &mut hash)?;
    // A reference into the map, not a copy: the settings entry is 56 bytes of stack.
    let globals = GLOBALS.get(0).ok_or(DropReason::TableMiss)?;

    let inner = forward6::Inner::of(l3_off, &hdr, ip.payload_len);
    if forward6::too_big(&vip, &inner, globals) {
        return Ok(crate::TOO_BIG);
    }
    let action = forward6::to_backend(
        ctx,
        &vip,
        &inner,
        &choice.backend,
        globals,
        &flow,
        &mut hash,
    )?;
    stats::forwarded(vip.vip_id, choice.backend_id, bytes);
    events::forwarded6(policy, &flow, vip.vip_id, choice.backend_id);
    Ok(action)
}

/// Skips the extension headers a packet to a service may carry: hop-by-hop options (first
/// only), destination options, and a routing header with no segments left (the packet has
/// reached its final destination). The other extension headers ([`unskipped`]) end the
/// walk. Returns the upper-layer protocol and its offset, or why the
/// packet cannot be balanced: a fragment, a header the balancer does not skip (or more than
/// [`MAX_EXT_HEADERS`]), or a header running past the payload (`end`).
#[inline(always)]
pub(crate) fn skip_extensions(
    ctx: &XdpContext,
    mut off: usize,
    mut next: u8,
    end: usize,
) -> Result<(u8, usize), DropReason> {
    for i in 0..MAX_EXT_HEADERS {
        match next {
            ipv6_ext::HOP_BY_HOP if i == 0 => {}
            ipv6_ext::ROUTING | ipv6_ext::DEST_OPTS => {}
            ipv6_ext::FRAGMENT => return Err(DropReason::Ipv6Fragment),
            ipv6_ext::HOP_BY_HOP => return Err(DropReason::Ipv6ExtHeader),
            other if unskipped(other) => return Err(DropReason::Ipv6ExtHeader),
            upper => return Ok((upper, off)),
        }
        let ext: *const Ipv6ExtHdr = ptr_at(ctx, off).ok_or(DropReason::Ipv6BadLength)?;
        // SAFETY: ptr_at checked that the 4 bytes lie inside the frame.
        let ext = unsafe { *ext };
        if next == ipv6_ext::ROUTING && ext.segments_left != 0 {
            return Err(DropReason::Ipv6ExtHeader);
        }
        off += (ext.len as usize + 1) * 8;
        if off > end {
            return Err(DropReason::Ipv6BadLength);
        }
        next = ext.next_header;
    }
    match next {
        ipv6_ext::HOP_BY_HOP | ipv6_ext::ROUTING | ipv6_ext::DEST_OPTS | ipv6_ext::FRAGMENT => {
            Err(DropReason::Ipv6ExtHeader)
        }
        other if unskipped(other) => Err(DropReason::Ipv6ExtHeader),
        upper => Ok((upper, off)),
    }
}

/// Extension headers (RFC 7045's list) the balancer does not look past: the ports behind
/// them are encrypted (ESP), or the header has no place in traffic to a service.
#[inline(always)]
fn unskipped(next: u8) -> bool {
    matches!(
        next,
        ipv6_ext::ESP
            | ipv6_ext::AUTH
            | ipv6_ext::MOBILITY
            | ipv6_ext::HIP
            | ipv6_ext::SHIM6
            | ipv6_ext::EXPERIMENT1
            | ipv6_ext::EXPERIMENT2
    )
}

/// Whether `addr` carries an IPv6 VIP, exactly (see `is_vip_address`).
#[inline(always)]
fn is_vip_address6(addr: [u32; 4]) -> bool {
    crate::is_vip_address_of(addr, family::V6)
}

/// An IPv6 packet no VIP serves: as the IPv4 path's `unserved`, with ICMPv6 (to an address
/// that is not a VIP's, such as the balancer's own: neighbour discovery above all) always
/// passed.
#[inline(always)]
fn unserved(policy: &PolicyConfig, addr: [u32; 4], protocol: u8) -> Result<u32, DropReason> {
    if protocol == proto::ICMPV6 {
        return Ok(xdp_action::XDP_PASS);
    }
    match policy::unserved(policy, protocol) {
        Err(reason) if is_vip_address6(addr) => Err(reason),
        _ => Ok(xdp_action::XDP_PASS),
    }
}
