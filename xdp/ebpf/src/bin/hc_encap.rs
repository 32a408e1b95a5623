//! Health-probe encapsulation, a tc egress classifier on the balancer's interface. A probe socket
//! marked with `SO_MARK` = m connects to VIP:port; this program finds m in `XLBH_TARGETS` and
//! wraps each of its packets in an outer IPv4 header towards that backend, the same way `xlb_lb`
//! forwards client traffic in IPIP mode. The backend strips it and answers from the VIP straight
//! to the balancer, so the probe connects only if the backend really serves the VIP.
//!
//! Every other packet is left alone with `TC_ACT_UNSPEC` ("no verdict"): it is transmitted
//! untouched, and other tc programs or filters on the interface still see it.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use xlb_common::{
    health::{HcCounter, HcTarget, MAX_TARGETS},
    proto,
};
use xlb_ebpf::{
    csum,
    headers::{ETH_HLEN, ETH_P_IP_BE, IPV4_DF, IPV4_HLEN, Ipv4Hdr},
};

/// Socket mark of a probe -> the backend its packets are encapsulated towards.
#[map(name = "XLBH_TARGETS")]
static TARGETS: HashMap<u32, HcTarget> = HashMap::with_max_entries(MAX_TARGETS, BPF_F_NO_PREALLOC);

/// Packets per [`HcCounter`].
#[map(name = "XLBH_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(HcCounter::COUNT, 0);

/// Offset of the Ethernet header's ethertype.
const ETHERTYPE_OFF: usize = 12;

/// Entry point: encapsulate a marked probe packet, or leave the packet alone.
#[classifier]
pub fn xlb_hc_encap(ctx: TcContext) -> i32 {
    let (counter, verdict) = match target(&ctx) {
        None => (HcCounter::Passed, TC_ACT_UNSPEC),
        Some(target) => match encapsulate(&ctx, &target) {
            Ok(()) => (HcCounter::Encapsulated, TC_ACT_OK),
            Err(()) => (HcCounter::Errors, TC_ACT_SHOT),
        },
    };
    if let Some(count) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's own slot of a per-CPU array.
        unsafe { *count += 1 };
    }
    verdict
}

/// The probe target of this packet's socket mark, if it is a probe's.
#[inline(always)]
fn target(ctx: &TcContext) -> Option<HcTarget> {
    // SAFETY: the context pointer the kernel passed in; `mark` is readable by tc programs.
    let mark = unsafe { (*ctx.skb.skb).mark };
    // Mark 0 is "no mark": most packets stop here without a lookup.
    if mark == 0 {
        return None;
    }
    // SAFETY: the value is copied out at once, before the daemon can replace or free it.
    unsafe { TARGETS.get(mark) }.copied()
}

/// Pushes an outer IPv4 header between the Ethernet header and the packet, addressed from
/// `target.outer_src` to `target.backend`, and sends the frame to `target.mac`. Bytes are read
/// and written with the load/store helpers, which check bounds themselves and work whether or
/// not the headers are in the linear part of the skb.
#[inline(always)]
fn encapsulate(ctx: &TcContext, target: &HcTarget) -> Result<(), ()> {
    // Probes are IPv4 on an Ethernet device; anything else cannot be wrapped the way the data
    // path wraps client packets, and must not reach the VIP unwrapped either.
    let ether_type: u16 = ctx.load(ETHERTYPE_OFF).map_err(|_| ())?;
    if ether_type != ETH_P_IP_BE {
        return Err(());
    }
    let inner: Ipv4Hdr = ctx.load(ETH_HLEN).map_err(|_| ())?;
    if inner.version_ihl >> 4 != 4 || inner.version_ihl & 0x0f < 5 {
        return Err(());
    }
    let inner_len = u16::from_be(inner.tot_len) as usize;
    // The outer total length must fit in 16 bits.
    if inner_len < IPV4_HLEN || inner_len + IPV4_HLEN > u16::MAX as usize {
        return Err(());
    }

    let mut outer = Ipv4Hdr {
        version_ihl: 0x45,
        tos: inner.tos,
        tot_len: ((inner_len + IPV4_HLEN) as u16).to_be(),
        id: 0,
        frag_off: inner.frag_off & IPV4_DF.to_be(),
        ttl: 64,
        protocol: proto::IPIP,
        check: 0,
        saddr: target.outer_src,
        daddr: target.backend,
    };
    outer.check = csum::ipv4_header(&outer);

    // Room for the outer header right after the MAC header. The ENCAP flag records the inner
    // headers, so checksum offload and GSO still find the TCP header, and lowers the GSO
    // segment size by 20 bytes for oversized (GSO) probes.
    ctx.adjust_room(
        IPV4_HLEN as i32,
        BPF_ADJ_ROOM_MAC,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64,
    )
    .map_err(|_| ())?;
    ctx.store(ETH_HLEN, &outer, 0).map_err(|_| ())?;
    // The source MAC is already the interface's own; only the next hop changes.
    ctx.store(0, &target.mac, 0).map_err(|_| ())?;
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
