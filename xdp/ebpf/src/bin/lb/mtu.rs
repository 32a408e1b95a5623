//! Encapsulation and the MTU. IPIP adds an outer header; a packet that would then be larger
//! than `encap.mtu` is never forwarded silently (the next link would drop it unseen). XDP
//! cannot fragment, so: with DF set it is answered with ICMP "fragmentation needed" (next-hop
//! MTU = `encap.mtu` less the outer header) from the VIP, and the client's path MTU discovery
//! sends smaller packets; with DF clear, or with `encap.on_too_big = "drop"`, it is dropped
//! and counted (`encap_too_big`).
//!
//! IPv6 counterpart: the same two functions with the 40-byte outer header and ICMPv6
//! "packet too big" (which IPv6 sends regardless of DF: IPv6 routers never fragment).

use xlb_common::{DropReason, Globals, LbCounter, encap_flags};
use xlb_ebpf::headers::IPV4_HLEN;

use crate::{forward::Inner, icmp, stats};

/// Whether an IPv4 packet of `total_len` bytes would exceed `encap.mtu` once encapsulated.
#[inline(always)]
pub fn exceeds(globals: &Globals, total_len: usize) -> bool {
    globals.encap_mtu != 0 && total_len + IPV4_HLEN > usize::from(globals.encap_mtu)
}

/// A packet that [`exceeds`] the MTU: answered with "fragmentation needed" when it forbids
/// fragmentation and the config allows it, dropped otherwise. Not inlined (a BPF-to-BPF
/// call): the ICMP builder stays out of the code of the forwarding path.
#[inline(never)]
pub fn too_big(
    ctx: &aya_ebpf::programs::XdpContext,
    inner: &Inner,
    globals: &Globals,
) -> Result<u32, DropReason> {
    if !inner.dont_fragment || globals.encap_flags & encap_flags::TOO_BIG_DROP != 0 {
        return Err(DropReason::EncapTooBig);
    }
    let action = icmp::frag_needed(ctx, inner.l3_off, globals.encap_mtu - IPV4_HLEN as u16)?;
    stats::lb(LbCounter::IcmpTooBigSent);
    Ok(action)
}
