//! Sampled events to the `XLB_EVENTS` ring buffer: drops up to a per-CPU rate, one forwarded
//! packet in N. Writing never waits: when the buffer is full the event is lost and counted.

use aya_ebpf::{helpers::bpf_get_prandom_u32, helpers::bpf_ktime_get_ns, programs::XdpContext};
use xlb_common::{
    DropReason, EVENT_NO_ID, Event, FlowKey, FlowKey6, PolicyConfig, PolicyCounter, event_verdict,
    family, policy::window, proto,
};
use xlb_ebpf::{
    headers::{ETH_P_IP_BE, ETH_P_IPV6_BE, IPV6_HLEN, Ipv4Hdr, Ipv6Src, PortsHdr},
    packet::ptr_at,
    parse,
};

use crate::{
    maps::EVENTS,
    policy::{count, settings, within_rate},
};

/// Sends a drop event for the frame in `ctx`, if the per-CPU drop-event rate allows. The
/// headers are read again here so the drop paths carry nothing extra.
#[inline(always)]
pub fn dropped(ctx: &XdpContext, reason: DropReason) {
    let Ok(settings) = settings() else {
        return;
    };
    let limit = settings.drop_events_rate;
    if limit == 0 {
        return;
    }
    if !within_rate(window::DROP_EVENTS, limit) {
        count(PolicyCounter::EventSuppressed);
        return;
    }
    let mut event = Event {
        verdict: event_verdict::DROP,
        reason: reason as u32,
        vip_id: EVENT_NO_ID,
        backend_id: EVENT_NO_ID,
        ..Event::default()
    };
    read_tuple(ctx, &mut event);
    send(&mut event);
}

/// Sends a forward event for one forwarded packet in `policy.forward_sample`.
#[inline(always)]
pub fn forwarded(policy: &PolicyConfig, flow: &FlowKey, vip_id: u32, backend_id: u32) {
    forward_event(policy, vip_id, backend_id, |event| {
        event.src[0] = flow.src;
        event.dst[0] = flow.dst;
        event.sport = flow.sport;
        event.dport = flow.dport;
        event.proto = flow.proto;
        event.family = family::V4;
    });
}

/// Sends a forward event for one forwarded IPv6 packet in `policy.forward_sample`.
#[inline(always)]
pub fn forwarded6(policy: &PolicyConfig, flow: &FlowKey6, vip_id: u32, backend_id: u32) {
    forward_event(policy, vip_id, backend_id, |event| {
        event.src = flow.src;
        event.dst = flow.dst;
        event.sport = flow.sport;
        event.dport = flow.dport;
        event.proto = flow.proto;
        event.family = family::V6;
    });
}

/// A forward event, if this packet is the sampled one; `tuple` fills in the addresses,
/// ports, protocol and family.
#[inline(always)]
fn forward_event(
    policy: &PolicyConfig,
    vip_id: u32,
    backend_id: u32,
    tuple: impl FnOnce(&mut Event),
) {
    if !sampled(policy) {
        return;
    }
    let mut event = Event {
        verdict: event_verdict::FORWARD,
        vip_id,
        backend_id,
        ..Event::default()
    };
    tuple(&mut event);
    send(&mut event);
}

/// Whether this forwarded packet is the one in `policy.forward_sample` to report.
#[inline(always)]
fn sampled(policy: &PolicyConfig) -> bool {
    let sample = policy.forward_sample;
    // SAFETY: the helper has no preconditions.
    sample != 0 && unsafe { bpf_get_prandom_u32() } % sample == 0
}

#[inline(always)]
fn send(event: &mut Event) {
    // SAFETY: the helper has no preconditions.
    event.ts_ns = unsafe { bpf_ktime_get_ns() };
    match EVENTS.output::<Event>(&*event, 0) {
        Ok(()) => count(PolicyCounter::EventSent),
        Err(_) => count(PolicyCounter::EventLost),
    }
}

/// Fills addresses, protocol and ports from whatever headers the frame has intact.
#[inline(always)]
fn read_tuple(ctx: &XdpContext, event: &mut Event) {
    let Ok(l2) = parse::l2(ctx) else {
        return;
    };
    if l2.ether_type == ETH_P_IPV6_BE {
        if ptr_at::<[u8; IPV6_HLEN]>(ctx, l2.l3_off).is_none() {
            return;
        }
        let Some(hdr) = ptr_at::<Ipv6Src>(ctx, l2.l3_off) else {
            return;
        };
        // SAFETY: ptr_at checked that the fixed header lies inside the frame.
        let hdr = unsafe { *hdr };
        event.src = hdr.saddr;
        event.proto = hdr.head[6];
        event.family = family::V6;
        // Destination: the 16 bytes after the source.
        if let Some(dst) = ptr_at::<[u32; 4]>(ctx, l2.l3_off + 24) {
            // SAFETY: ptr_at checked the bounds.
            event.dst = unsafe { *dst };
        }
        // The ports when TCP or UDP follows the fixed header directly (after extension
        // headers the event leaves them zero).
        if event.proto == proto::TCP || event.proto == proto::UDP {
            fill_ports(ctx, l2.l3_off + IPV6_HLEN, event);
        }
        return;
    }
    if l2.ether_type != ETH_P_IP_BE {
        return;
    }
    let Some(hdr) = ptr_at::<Ipv4Hdr>(ctx, l2.l3_off) else {
        return;
    };
    // SAFETY: ptr_at checked that the 20-byte header lies inside the frame.
    let hdr = unsafe { *hdr };
    event.src[0] = hdr.saddr;
    event.dst[0] = hdr.daddr;
    event.proto = hdr.protocol;
    event.family = family::V4;
    let ihl = (hdr.version_ihl & 0x0f) as usize;
    // Only the first fragment (offset 0) carries the ports.
    let first_fragment = u16::from_be(hdr.frag_off) & 0x1fff == 0;
    if (hdr.protocol == proto::TCP || hdr.protocol == proto::UDP) && ihl >= 5 && first_fragment {
        // The header length is at most 60: the mask keeps the offset provably bounded.
        let l4_off = l2.l3_off + ((ihl * 4) & 0x3f);
        fill_ports(ctx, l4_off, event);
    }
}

/// The ports of the TCP or UDP header at `l4_off`, if the frame holds them.
#[inline(always)]
fn fill_ports(ctx: &XdpContext, l4_off: usize, event: &mut Event) {
    if let Some(ports) = ptr_at::<PortsHdr>(ctx, l4_off) {
        // SAFETY: ptr_at checked that the ports lie inside the frame.
        let ports = unsafe { *ports };
        event.sport = ports.sport;
        event.dport = ports.dport;
    }
}
