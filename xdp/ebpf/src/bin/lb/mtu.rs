//! Encapsulation and the MTU. IPIP adds an outer header; a packet that would then be larger
//! than `encap.mtu` is never forwarded silently (the next link would drop it unseen). XDP
//! cannot fragment, so: with DF set it is answered with ICMP "fragmentation needed" (next-hop
//! MTU = `encap.mtu` less the outer header) from the VIP, and the client's path MTU discovery
//! sends smaller packets; with DF clear, or with `encap.on_too_big = "drop"`, it is dropped
//! and counted (`encap_too_big`).
//!
//! An IPv4 packet to an IPv6 backend (IPv4-in-IPv6) grows by 40 bytes, and the next-hop MTU
//! sent back is `encap.mtu` - 40. An IPv6 packet to an ipip VIP (IPv6-in-IPv6) grows by 40
//! bytes too; IPv6 has no DF bit (routers never fragment), so it is always answered with
//! ICMPv6 "packet too big" (MTU `encap.mtu` - 40) unless `encap.on_too_big = "drop"`, or
//! unless that MTU would be below IPv6's minimum of 1280 (no such error may be sent): then it
//! is dropped and counted (`encap_too_big`).

use xlb_common::{Backend, DropReason, Globals, LbCounter, encap_flags, family};
use xlb_ebpf::headers::{IPV4_HLEN, IPV6_HLEN, IPV6_MIN_MTU};

use crate::{forward::Inner, icmp, icmp6, maps::GLOBALS, policy, stats};

/// The outer header encapsulation towards `backend` adds: IPv4 (20 bytes), or IPv6 (40) for
/// an IPv6 backend.
#[inline(always)]
pub fn outer_len(backend: &Backend) -> usize {
    if backend.family == family::V6 {
        IPV6_HLEN
    } else {
        IPV4_HLEN
    }
}

/// Whether an IP packet of `total_len` bytes would exceed `encap.mtu` once an outer header
/// of `outer_len` bytes is put in front.
#[inline(always)]
pub fn exceeds(globals: &Globals, total_len: usize, outer_len: usize) -> bool {
    globals.encap_mtu != 0 && total_len + outer_len > usize::from(globals.encap_mtu)
}

/// Whether [`too_big`] answers a packet with "fragmentation needed" (rather than dropping it):
/// it forbids fragmentation and the config does not say drop. The caller asks the ICMP rate
/// limit (`icmp::may_send`) before the call: inside it, that check would take stack the
/// verifier does not have for this chain of calls.
#[inline(always)]
pub fn answers(inner: &Inner, globals: &Globals) -> bool {
    inner.dont_fragment && globals.encap_flags & encap_flags::TOO_BIG_DROP == 0
}

/// A packet that [`exceeds`] the MTU: answered with "fragmentation needed" when it forbids
/// fragmentation and the config allows it, dropped otherwise. Not inlined (a BPF-to-BPF
/// call): the ICMP builder stays out of the code of the forwarding path.
#[inline(never)]
pub fn too_big(
    ctx: &aya_ebpf::programs::XdpContext,
    inner: &Inner,
    globals: &Globals,
    outer_len: usize,
) -> Result<u32, DropReason> {
    if !answers(inner, globals) {
        return Err(DropReason::EncapTooBig);
    }
    let next_hop_mtu = globals.encap_mtu.saturating_sub(outer_len as u16);
    let action = icmp::frag_needed(ctx, inner.l3_off, next_hop_mtu)?;
    stats::lb(LbCounter::IcmpTooBigSent);
    Ok(action)
}

/// An IPv6 packet at `l3_off` that is too big for IPv6-in-IPv6 (`forward6::too_big`):
/// answered with "packet too big" unless the config says drop or the MTU to report would be
/// below 1280. A BPF-to-BPF call of its own from `process`, beside the IPv6 path.
#[inline(never)]
pub fn too_big6(ctx: &aya_ebpf::programs::XdpContext, l3_off: usize) -> Result<u32, DropReason> {
    let globals = GLOBALS.get(0).ok_or(DropReason::TableMiss)?;
    let mtu = usize::from(globals.encap_mtu).saturating_sub(IPV6_HLEN);
    if globals.encap_flags & encap_flags::TOO_BIG_DROP != 0 || mtu < IPV6_MIN_MTU {
        return Err(DropReason::EncapTooBig);
    }
    icmp::may_send(policy::settings()?)?;
    let action = icmp6::packet_too_big(ctx, l3_off, mtu as u32)?;
    stats::lb(LbCounter::IcmpTooBigSent);
    Ok(action)
}
