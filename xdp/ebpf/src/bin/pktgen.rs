//! The packet generator. `xlb-pktgen` runs this program with BPF_PROG_TEST_RUN and
//! BPF_F_TEST_XDP_LIVE_FRAMES: the kernel hands it the same template frame over and over, and
//! every XDP_TX becomes a real transmission out of the interface named in the run's context.
//!
//! Each run rewrites the whole Ethernet, IPv4 and UDP/TCP header from `XLBPG_CONFIG`, with the
//! flow taken from a per-CPU sequence number. Optionally each CPU is paced (frames that come
//! too early are dropped instead of sent) and has a budget of frames, so a rate and a count
//! hold exactly although the kernel decides how often the program runs. Rewriting everything matters: the kernel recycles
//! the frame's page without copying the template again, so the page holds whatever the last
//! user of it (a load balancer that rewrote the MACs or pushed an outer header) left there.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use xlb_common::{
    pktgen::{
        PACE_CATCH_UP_NS, PktgenConfig, PktgenCounter, PktgenCpu, TCP_ACK, TCP_SEQ, TCP_WINDOW,
        config_flags,
    },
    proto,
};
use xlb_ebpf::{
    csum,
    headers::{ETH_HLEN, ETH_P_IP_BE, EthHdr, IPV4_HLEN, Ipv4Hdr, TCP_MIN_HLEN, UDP_HLEN},
    packet::{frame_len, ptr_at},
};

/// UDP header.
#[repr(C)]
#[derive(Clone, Copy)]
struct UdpHdr {
    sport: u16,
    dport: u16,
    len: u16,
    check: u16,
}
const _: () = assert!(core::mem::size_of::<UdpHdr>() == UDP_HLEN);

/// TCP header without options. The 32-bit fields are split into 16-bit halves so the struct
/// has 2-byte alignment, which is what the frame guarantees at offset 34.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHdr {
    sport: u16,
    dport: u16,
    seq: [u16; 2],
    ack: [u16; 2],
    off_flags: u16,
    window: u16,
    check: u16,
    urg: u16,
}
const _: () = assert!(core::mem::size_of::<TcpHdr>() == TCP_MIN_HLEN);

/// Offset of the L4 header: Ethernet and an IPv4 header without options.
const L4_OFF: usize = ETH_HLEN + IPV4_HLEN;

/// What to write into each frame; filled by `xlb-pktgen` before the run.
#[map(name = "XLBPG_CONFIG")]
static CONFIG: Array<PktgenConfig> = Array::with_max_entries(1, 0);

/// Per-CPU sequence number, pace and budget.
#[map(name = "XLBPG_CPU")]
static CPU: PerCpuArray<PktgenCpu> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU [`PktgenCounter`]s.
#[map(name = "XLBPG_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PktgenCounter::COUNT, 0);

/// Entry point: write the next flow's headers and transmit, or count why not and drop.
#[xdp]
pub fn xlb_pktgen(ctx: XdpContext) -> u32 {
    let (counter, action) = match generate(&ctx) {
        Ok(()) => (PktgenCounter::Sent, xdp_action::XDP_TX),
        Err(counter) => (counter, xdp_action::XDP_DROP),
    };
    if let Some(count) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's own slot of a per-CPU array; only this program on this CPU
        // writes it.
        unsafe { *count += 1 };
    }
    action
}

/// `Err` names why the frame is not sent.
#[inline(always)]
fn generate(ctx: &XdpContext) -> Result<(), PktgenCounter> {
    const FAILED: PktgenCounter = PktgenCounter::Failed;
    // Copied at once: the tool may not change it during a run, but a copy costs nothing.
    let config = *CONFIG.get(0).ok_or(FAILED)?;
    let cpu = CPU.get_ptr_mut(0).ok_or(FAILED)?;
    // SAFETY: this CPU's own slot of a per-CPU array, written only by this program on this
    // CPU (and by the tool between runs).
    let state = unsafe { &mut *cpu };
    let budgeted = config.flags & config_flags::BUDGETED != 0;
    if budgeted && state.budget == 0 {
        return Err(PktgenCounter::Exhausted);
    }
    if config.gap_ns != 0 {
        let gap = u64::from(config.gap_ns);
        // SAFETY: the helper has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        if now < state.next_ns {
            return Err(PktgenCounter::Paced);
        }
        // A CPU that fell behind catches up on at most PACE_CATCH_UP_NS; one that is starting
        // (the tool writes 0) starts now, without a burst.
        let due = if state.next_ns == 0 {
            now
        } else {
            state.next_ns.max(now.saturating_sub(PACE_CATCH_UP_NS))
        };
        state.next_ns = due + gap;
    }
    if budgeted {
        state.budget -= 1;
    }
    let n = state.seq;
    state.seq = n + 1;
    write_headers(ctx, &config, n).ok_or(FAILED)
}

/// Writes frame `n`'s Ethernet, IPv4 and UDP/TCP headers; `None` if the frame is too short.
#[inline(always)]
fn write_headers(ctx: &XdpContext, config: &PktgenConfig, n: u64) -> Option<()> {
    // The tool guarantees flows >= 1 and sport_count >= 1. Checked division all the same:
    // Rust's `%` and `/` would panic on zero, and a panic cannot be verified.
    let flow = n.checked_rem(u64::from(config.flows))? as u32;
    let sport = config
        .sport_base
        .wrapping_add(flow.checked_rem(config.sport_count)? as u16);
    let saddr = config
        .src_addr
        .wrapping_add(flow.checked_div(config.sport_count)?);

    let l3_len = frame_len(ctx).checked_sub(ETH_HLEN)?;
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the 14 bytes lie inside the frame; EthHdr has alignment 2
    // and the frame starts 2-byte aligned.
    unsafe {
        *eth = EthHdr {
            dst: config.dst_mac,
            src: config.src_mac,
            ether_type: ETH_P_IP_BE,
        };
    }

    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: (l3_len as u16).to_be(),
        id: 0,
        frag_off: 0,
        ttl: 64,
        protocol: config.proto,
        check: 0,
        saddr: saddr.to_be(),
        daddr: config.dst_addr,
    };
    ip.check = csum::ipv4_header(&ip);
    let ip_ptr: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: ptr_at checked that the 20 bytes lie inside the frame. Offset 14 is only 2-byte
    // aligned, hence the unaligned write.
    unsafe { ip_ptr.write_unaligned(ip) };

    let l4_len = l3_len.checked_sub(IPV4_HLEN)?;
    if config.proto == proto::TCP {
        let check = tcp_check(config, saddr, sport);
        let tcp: *mut TcpHdr = ptr_at(ctx, L4_OFF)?;
        // SAFETY: ptr_at checked that the 20 bytes lie inside the frame; TcpHdr has alignment
        // 2, which offset 34 of a 2-byte aligned frame satisfies.
        unsafe {
            *tcp = TcpHdr {
                sport: sport.to_be(),
                dport: config.dst_port,
                seq: halves(TCP_SEQ),
                ack: halves(TCP_ACK),
                // Data offset 5 words, then the flags.
                off_flags: u16::from_ne_bytes([0x50, config.tcp_flags]),
                window: TCP_WINDOW.to_be(),
                check,
                urg: 0,
            };
        }
    } else {
        let udp: *mut UdpHdr = ptr_at(ctx, L4_OFF)?;
        // SAFETY: ptr_at checked that the 8 bytes lie inside the frame; UdpHdr has alignment 2.
        // A zero UDP checksum means "none", which IPv4 allows.
        unsafe {
            *udp = UdpHdr {
                sport: sport.to_be(),
                dport: config.dst_port,
                len: (l4_len as u16).to_be(),
                check: 0,
            };
        }
    }
    Some(())
}

/// A 32-bit host-order value as the two 16-bit words it occupies in the packet.
#[inline(always)]
fn halves(value: u32) -> [u16; 2] {
    let be = value.to_be_bytes();
    [
        u16::from_ne_bytes([be[0], be[1]]),
        u16::from_ne_bytes([be[2], be[3]]),
    ]
}

/// The TCP checksum of this flow's segment: flow 0's checksum (computed by the tool over the
/// whole segment) adjusted for the changed source address and port (RFC 1624: add the one's
/// complement of each old 16-bit word and the new word).
#[inline(always)]
fn tcp_check(config: &PktgenConfig, saddr: u32, sport: u16) -> u16 {
    let [old_a0, old_a1] = halves(config.src_addr);
    let [new_a0, new_a1] = halves(saddr);
    let old_port = config.sport_base.to_be();
    let new_port = sport.to_be();
    let sum = u32::from(!config.tcp_check_base)
        + u32::from(!old_a0)
        + u32::from(!old_a1)
        + u32::from(!old_port)
        + u32::from(new_a0)
        + u32::from(new_a1)
        + u32::from(new_port);
    !csum::fold(sum)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
