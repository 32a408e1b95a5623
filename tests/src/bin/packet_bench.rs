//! Per-packet cost of the datapath through BPF_PROG_TEST_RUN (needs root).
//!
//! The real load balancer (`xlb_lb`, loaded and filled by `Dataplane::load` and `apply`, as
//! `xlbd` does) runs packet classes one packet per call: the kernel does not reset a non-live XDP
//! test run's frame between repetitions (verified below on the running kernel), so a rewritten
//! frame would be fed back to the program. Each call's duration is the kernel's own
//! measurement; a batch's figure is the mean over its calls. The floor program `xlb_floor`
//! (swap MACs, `XDP_TX`) runs on the same frames in the batch right after or right before (the
//! order alternates by round), so noise hits both alike, and every class is reported as a ratio
//! to it: the median over rounds of the per-round ratio. The empty program `xlb_pass` is run
//! the same way to show the test harness's fixed cost per call (clock read, bottom-half
//! toggling), which is in every figure.
//!
//! Classes: TCP to a VIP on an established flow (flow-table hit), a new connection (SYN: Maglev
//! lookup and flow insert) and an ACK of a flow not in the table (lookup miss, then the same), UDP, L2 DSR and IPIP, a malformed packet (IPv4 IHL 4, dropped) and
//! traffic to an address that is not a VIP (passed); each with one flow and with 10,000
//! distinct flows cycling, at several datapath sizes (3, 1,000 and 100,000 VIPs; 3 and 1,000
//! backends). Writes `packet.md`, `packet.csv`, `packet.svg` (the ratios as a bar chart) and
//! `limits.md` (where the time goes: instruction counts from bpftool, map lookups per class,
//! costs by difference) into the output directory.
//!
//! Usage: `packet_bench [--quick] [--out DIR]` (see `perf/run.sh`); the default directory is
//! `perf/results/<UTC date>/`. `packet_bench --spin CLASS SECONDS` only runs one class on the
//! smallest datapath for that long, for a profiler to watch.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use xlb::{
    config::{
        AllDown, AttachMode, BackendConfig, Cidr, Config, EncapConfig, ForwardMode, HealthConfig,
        InterfaceConfig, Limits, MacAddr, ProbeVia, Protocol, VipConfig,
    },
    dataplane::{
        Dataplane,
        flows::{self, FlowSweeper},
        objects,
    },
    state::DesiredState,
};
use xlb_common::{FlowKey, LbCounter, VipAddrKey, VipKey, program_names};
use xlb_tests::bench_env::{command_output, cpu_model, pin_to_last_cpu};
use xlb_tests::packet::{self, Flow, Flow6, L2, TCP_ACK, TCP_SYN};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// The balancer's interface MAC (destination of client frames, source of forwarded ones).
const IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xcc];
/// TCP port 80 (L2) and UDP port 53 (L2) VIPs share this address.
const L2_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
/// TCP port 80, mode IPIP.
const IPIP_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);
/// An address no VIP has.
const NOT_A_VIP: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 9);
/// The IPv6 VIP (TCP/80) in mode l2; every datapath has it and the next one besides its IPv4
/// VIPs.
const L2_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// The IPv6 VIP (TCP/80) in mode ipip: IPv6-in-IPv6.
const IP6_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20);
/// Distinct flows of the cycling variants (and calls per batch).
const CYCLE: usize = 10_000;
/// Flow indices from here on are new flows, never used by an established class.
const NEW_FLOWS_FROM: u64 = 1 << 24;
/// Repetitions per call in the steady-state cross-check (frames the program leaves unchanged).
const STEADY_REPEAT: u32 = 10_000;
/// Calls per batch in the steady-state cross-check.
const STEADY_CALLS: usize = 20;
/// Output buffer: the largest frame (64 bytes) plus an IPIP header, with room to spare.
const OUT_LEN: usize = 256;

/// Targets of the issue, as ratios to the floor (medians).
const TARGET_EST_ONE: f64 = 2.3;
const TARGET_EST_CYCLE: f64 = 4.0;
const TARGET_NEW: f64 = 4.5;
/// 100,000 VIPs may cost at most this much more than the smallest datapath.
const TARGET_SCALE: f64 = 1.10;

/// A datapath size the classes run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Scale {
    /// IPv4 VIPs configured: the three the classes address plus fillers (TCP port 80, L2). Two
    /// IPv6 VIPs come on top ([`IPV6_VIPS`]).
    vips: usize,
    /// Backends of every VIP.
    backends: usize,
    /// Maglev table size of every VIP.
    table_size: u32,
    /// Flow-table entries. At the default size the table is filled to [`FILL_PERCENT`] before
    /// the measurement and kept there by `xlbd`'s sweeper; a larger table is left nearly empty.
    flow_table: u32,
}

/// The default flow-table size (`limits.flow_table_size`).
const DEFAULT_FLOWS: u32 = 262_144;
/// A flow table left nearly empty: the full run's new flows (31 rounds x 10,000 x 6 classes)
/// stay far below it, and nothing is removed.
const FREE_FLOWS: u32 = 4_194_304;

/// How full the default-size table is kept: midway between the sweeper's low and high water
/// marks, where a table under pressure lives (`xlbd` removes the least recently seen entries
/// above the high one, down to the low one).
const FILL_PERCENT: u64 = (flows::LOW_WATER_PERCENT + flows::HIGH_WATER_PERCENT) / 2;

/// The datapath clock while established flows and the fill are sent (seconds).
const CLOCK_STEADY: u32 = 1000;
/// The datapath clock while the fill is sent: its flows were seen before the classes' own
/// (a full IPv4 set gives a new flow the slot of its least recently seen flow, which is then a
/// fill flow, as on a balancer where most remembered flows are quieter than the busy ones),
/// but not so long before that the sweeps expire them.
const CLOCK_FILL: u32 = CLOCK_STEADY - 100;
/// The datapath clock while a new-flow batch is sent: its entries look idle since long before
/// [`CLOCK_STEADY`], so that the sweep after the batch removes exactly them (as `xlbd` makes
/// room on a live balancer); the fill flows they displaced are then topped up, so the table
/// stays at [`FILL_PERCENT`].
const CLOCK_NEW: u32 = 1;
/// The sweeper's idle timeout in the benchmark: between the two clocks.
const BENCH_IDLE_TIMEOUT: u32 = 500;

/// The smallest datapath, the reference of the scale comparison.
const BASE: Scale = Scale {
    vips: 3,
    backends: 3,
    table_size: 251,
    flow_table: DEFAULT_FLOWS,
};

impl Scale {
    fn label(&self) -> String {
        let flows = if self.flow_table == DEFAULT_FLOWS {
            String::new()
        } else {
            format!(
                ", flow table {} (never full)",
                thousands(u64::from(self.flow_table))
            )
        };
        format!(
            "{} VIPs x {} backends, table {}{flows}",
            thousands(self.vips as u64),
            thousands(self.backends as u64),
            thousands(u64::from(self.table_size))
        )
    }

    fn short(&self) -> String {
        if self.flow_table != BASE.flow_table {
            "flow table never full".to_owned()
        } else if self.backends != BASE.backends {
            format!("{} backends", thousands(self.backends as u64))
        } else if self.table_size != BASE.table_size {
            format!("table {}", thousands(u64::from(self.table_size)))
        } else {
            format!("{} VIPs", thousands(self.vips as u64))
        }
    }
}

/// Which flows a class's frames belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flows {
    /// The same flow on every call.
    One,
    /// 10,000 established flows in turn.
    Cycle,
    /// A flow never seen before on every call.
    New,
}

/// What a class's frames look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// TCP to the L2 VIP.
    TcpL2,
    /// TCP to one of up to 10,000 L2 VIPs (all of them if fewer), flow by flow.
    TcpL2Spread,
    /// UDP to the L2 VIP.
    UdpL2,
    /// TCP to the IPIP VIP.
    TcpIpip,
    /// A TCP SYN (a connection's first packet) to the L2 VIP.
    SynL2,
    /// A TCP SYN to the IPIP VIP.
    SynIpip,
    /// TCP to the L2 VIP with IPv4 IHL 4: dropped as ipv4_bad_header.
    BadIhl,
    /// TCP to an address that is not a VIP: passed.
    NotVip,
    /// TCP over IPv6 to the IPv6 L2 VIP.
    Tcp6L2,
    /// A TCP SYN over IPv6 to the IPv6 L2 VIP.
    Syn6L2,
    /// TCP over IPv6 to the IPv6 IPIP VIP (IPv6-in-IPv6).
    Tcp6Ip6,
}

/// One packet class.
#[derive(Clone, Copy, Debug)]
struct Class {
    id: &'static str,
    label: &'static str,
    shape: Shape,
    flows: Flows,
}

const fn class(id: &'static str, label: &'static str, shape: Shape, flows: Flows) -> Class {
    Class {
        id,
        label,
        shape,
        flows,
    }
}

/// Every class, in report order.
const CLASSES: [Class; 19] = [
    class(
        "tcp-l2-est-1",
        "TCP, established, L2 DSR",
        Shape::TcpL2,
        Flows::One,
    ),
    class(
        "tcp-l2-est-10k",
        "TCP, established, L2 DSR",
        Shape::TcpL2,
        Flows::Cycle,
    ),
    class(
        "tcp-l2-est-spread",
        "TCP, established, L2, flows spread over up to 10,000 VIPs",
        Shape::TcpL2Spread,
        Flows::Cycle,
    ),
    class(
        "tcp-l2-new",
        "TCP, new connection (SYN: Maglev + insert), L2",
        Shape::SynL2,
        Flows::New,
    ),
    class(
        "tcp-l2-new-ack",
        "TCP, ACK of a flow not in the table (lookup miss, Maglev, insert), L2",
        Shape::TcpL2,
        Flows::New,
    ),
    class(
        "tcp-l2-new-spread",
        "TCP, ACK of a flow not in the table, L2, spread over up to 10,000 VIPs",
        Shape::TcpL2Spread,
        Flows::New,
    ),
    class(
        "udp-l2-est-1",
        "UDP, established, L2 DSR",
        Shape::UdpL2,
        Flows::One,
    ),
    class(
        "udp-l2-est-10k",
        "UDP, established, L2 DSR",
        Shape::UdpL2,
        Flows::Cycle,
    ),
    class(
        "tcp-ipip-est-1",
        "TCP, established, IPIP",
        Shape::TcpIpip,
        Flows::One,
    ),
    class(
        "tcp-ipip-est-10k",
        "TCP, established, IPIP",
        Shape::TcpIpip,
        Flows::Cycle,
    ),
    class(
        "tcp-ipip-new",
        "TCP, new connection (SYN), IPIP",
        Shape::SynIpip,
        Flows::New,
    ),
    class(
        "drop-ihl4-1",
        "Malformed (IPv4 IHL 4), dropped",
        Shape::BadIhl,
        Flows::One,
    ),
    class(
        "drop-ihl4-10k",
        "Malformed (IPv4 IHL 4), dropped",
        Shape::BadIhl,
        Flows::Cycle,
    ),
    class(
        "pass-not-vip-1",
        "Not a VIP, passed",
        Shape::NotVip,
        Flows::One,
    ),
    class(
        "pass-not-vip-10k",
        "Not a VIP, passed",
        Shape::NotVip,
        Flows::Cycle,
    ),
    class(
        "tcp6-l2-est-1",
        "TCP over IPv6, established, L2 DSR",
        Shape::Tcp6L2,
        Flows::One,
    ),
    class(
        "tcp6-l2-est-10k",
        "TCP over IPv6, established, L2 DSR",
        Shape::Tcp6L2,
        Flows::Cycle,
    ),
    class(
        "tcp6-l2-new",
        "TCP over IPv6, new connection (SYN), L2",
        Shape::Syn6L2,
        Flows::New,
    ),
    class(
        "tcp6-ip6ip6-est-1",
        "TCP over IPv6, established, IPv6-in-IPv6",
        Shape::Tcp6Ip6,
        Flows::One,
    ),
];

/// The classes of `--quick`.
const QUICK_CLASSES: [&str; 11] = [
    "tcp-l2-est-1",
    "tcp-l2-est-10k",
    "tcp-l2-new",
    "tcp-l2-new-ack",
    "udp-l2-est-1",
    "tcp-ipip-est-1",
    "tcp-ipip-new",
    "drop-ihl4-1",
    "pass-not-vip-1",
    "tcp6-l2-est-1",
    "tcp6-l2-new",
];

impl Class {
    fn flows_label(&self) -> &'static str {
        match self.flows {
            Flows::One => "1",
            Flows::Cycle => "10,000",
            Flows::New => "new each call",
        }
    }

    /// The XDP action every call must return.
    fn action(&self) -> u32 {
        match self.shape {
            Shape::BadIhl => XDP_DROP,
            Shape::NotVip => XDP_PASS,
            _ => XDP_TX,
        }
    }

    /// Whether the program leaves the frame as it found it (apart from MACs it sets to the same
    /// value every time), so that `repeat > 1` measures the same path on every repetition.
    fn repeat_safe(&self) -> bool {
        self.flows == Flows::One
            && !matches!(self.shape, Shape::TcpIpip | Shape::SynIpip | Shape::Tcp6Ip6)
    }
}

/// Sizes of one run.
struct Plan {
    quick: bool,
    scales: Vec<Scale>,
    classes: Vec<Class>,
    rounds: usize,
    steady_rounds: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        let scale = |vips, backends, table_size| Scale {
            vips,
            backends,
            table_size,
            flow_table: DEFAULT_FLOWS,
        };
        let free = Scale {
            flow_table: FREE_FLOWS,
            ..BASE
        };
        if quick {
            Plan {
                quick,
                scales: vec![BASE, scale(1_000, 3, 251), scale(100_000, 3, 251), free],
                classes: CLASSES
                    .into_iter()
                    .filter(|c| QUICK_CLASSES.contains(&c.id))
                    .collect(),
                rounds: 5,
                steady_rounds: 3,
            }
        } else {
            Plan {
                quick,
                scales: vec![
                    BASE,
                    scale(1_000, 3, 251),
                    scale(100_000, 3, 251),
                    scale(3, 3, 65_537),
                    scale(3, 1_000, 65_537),
                    free,
                ],
                classes: CLASSES.to_vec(),
                rounds: 31,
                steady_rounds: 11,
            }
        }
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The i-th backend of an IPv6 VIP.
fn backend6(k: usize) -> BackendConfig {
    let address = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, (k >> 16) as u16, k as u16);
    BackendConfig {
        name: address.to_string(),
        address: IpAddr::V6(address),
        mac: MacAddr([0x02, 0x06, 0, (k >> 8) as u8, k as u8, 0x01]),
        weight: 100,
        health: None,
    }
}

/// The i-th backend of a VIP (addresses need only be unique within the VIP).
fn backend(k: usize) -> BackendConfig {
    let address = Ipv4Addr::new(10, 200 + (k >> 16) as u8, (k >> 8) as u8, k as u8);
    BackendConfig {
        name: address.to_string(),
        address: IpAddr::V4(address),
        mac: MacAddr([0x02, 0x01, 0, (k >> 8) as u8, k as u8, 0x01]),
        weight: 100,
        health: None,
    }
}

fn vip_config(
    name: String,
    address: IpAddr,
    port: u16,
    protocol: Protocol,
    mode: ForwardMode,
    scale: Scale,
) -> VipConfig {
    VipConfig {
        name,
        address,
        port,
        protocol,
        mode,
        table_size: scale.table_size,
        health: if address.is_ipv6() {
            HealthConfig {
                via: ProbeVia::Direct,
                ..HealthConfig::defaults_for(protocol, port, mode)
            }
        } else {
            HealthConfig::defaults_for(protocol, port, mode)
        },
        on_all_down: AllDown::default(),
        backends: if address.is_ipv6() {
            (0..scale.backends).map(backend6).collect()
        } else {
            (0..scale.backends).map(backend).collect()
        },
        source_ranges: None,
    }
}

/// The address of the i-th filler VIP.
fn filler(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(100 + (i >> 16) as u8, (i >> 8) as u8, i as u8, 1)
}

/// The config of a scale, built directly: 100,000 VIPs need a Maglev array above what config
/// validation accepts for `limits.maglev_slots`.
fn config(scale: Scale) -> Config {
    let mut vips = vec![
        vip_config(
            "tcp-l2".into(),
            L2_VIP.into(),
            80,
            Protocol::Tcp,
            ForwardMode::L2,
            scale,
        ),
        vip_config(
            "udp-l2".into(),
            L2_VIP.into(),
            53,
            Protocol::Udp,
            ForwardMode::L2,
            scale,
        ),
        vip_config(
            "tcp-ipip".into(),
            IPIP_VIP.into(),
            80,
            Protocol::Tcp,
            ForwardMode::Ipip,
            scale,
        ),
    ];
    for (name, address, mode) in [
        ("tcp6-l2", L2_VIP6, ForwardMode::L2),
        ("tcp6-ip6ip6", IP6_VIP6, ForwardMode::Ipip),
    ] {
        vips.push(vip_config(
            name.into(),
            address.into(),
            80,
            Protocol::Tcp,
            mode,
            scale,
        ));
    }
    vips.extend((0..scale.vips.saturating_sub(3)).map(|i| {
        vip_config(
            format!("filler{i}"),
            filler(i).into(),
            80,
            Protocol::Tcp,
            ForwardMode::L2,
            scale,
        )
    }));
    Config {
        interface: InterfaceConfig {
            name: "bench0".to_owned(),
            attach_mode: AttachMode::Auto,
        },
        limits: Limits {
            flow_table_size: scale.flow_table,
            max_vips: (scale.vips as u32 + IPV6_VIPS).max(16),
            max_backends: ((scale.vips + IPV6_VIPS as usize) * scale.backends + 16) as u32,
            maglev_slots: 2 * scale.table_size * (scale.vips as u32 + IPV6_VIPS),
            ..Limits::default()
        },
        encap: EncapConfig {
            next_hop_mac: Some(MacAddr([0x02, 0, 0, 0, 0xfe, 0x01])),
            source_prefix_v6: Some(Cidr {
                addr: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x16, 0, 0, 0, 0, 0, 0)),
                prefix_len: 64,
            }),
            ..EncapConfig::default()
        },
        vips,
        policy: Default::default(),
        events: Default::default(),
    }
}

/// IPv6 VIPs in every datapath, besides the scale's IPv4 VIPs.
const IPV6_VIPS: u32 = 2;

/// Source address of the i-th IPv6 flow (port as [`client`]'s).
fn client6(i: u64) -> Ipv6Addr {
    Ipv6Addr::from(0x2001_0db8_000c_0000_0000_0000_0000_0000u128 + u128::from(i >> 4))
}

/// A 74-byte TCP frame over IPv6 (14 + 40 + 20), `flags` set.
fn tcp6_frame(i: u64, dst: Ipv6Addr, flags: u8) -> Vec<u8> {
    let flow = Flow6 {
        src: client6(i),
        dst,
        sport: client(i).1,
        dport: 80,
    };
    packet::tcp6(&L2_IN, &flow, flags, &[])
}

/// Source address and port of the i-th flow.
fn client(i: u64) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(0x0b00_0000 + (i >> 4) as u32),
        20_000 + (i & 15) as u16,
    )
}

const L2_IN: L2 = L2 {
    dst: IF_MAC,
    src: CLIENT_MAC,
    vlan: None,
};

/// 64-byte frames (no FCS): 14 + 20 + 20 + 10 for TCP, 14 + 20 + 8 + 22 for UDP.
fn tcp_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr) -> Vec<u8> {
    tcp_frame_with(src, sport, dst, TCP_ACK)
}

/// A connection's first packet, 64 bytes like the others.
fn syn_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr) -> Vec<u8> {
    tcp_frame_with(src, sport, dst, TCP_SYN)
}

fn tcp_frame_with(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, flags: u8) -> Vec<u8> {
    let flow = Flow {
        src,
        dst,
        sport,
        dport: 80,
    };
    packet::tcp4(&L2_IN, &flow, flags, &[0x5a; 10])
}

fn udp_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr) -> Vec<u8> {
    let flow = Flow {
        src,
        dst,
        sport,
        dport: 53,
    };
    packet::udp4(&L2_IN, &flow, &[0x5a; 22])
}

/// A loaded datapath of one scale.
struct Scene {
    scale: Scale,
    dataplane: Dataplane,
    /// L2 TCP VIP addresses the spread classes cycle over.
    spread: Vec<Ipv4Addr>,
    /// Fixed frames of the One and Cycle classes, by class id.
    frames: BTreeMap<&'static str, Vec<Vec<u8>>>,
    /// Time to build the state, load the program and apply.
    setup: Duration,
    /// The flow tables' upkeep, for a default-size table (kept at [`FILL_PERCENT`]).
    sweeper: Option<FlowSweeper>,
}

impl Scene {
    fn new(scale: Scale) -> Scene {
        let start = Instant::now();
        let config = config(scale);
        let state = DesiredState::from_config(&config)
            .unwrap_or_else(|e| panic!("building the state of {}: {e}", scale.label()));
        let mut dataplane = Dataplane::load(&config.limits, MacAddr(IF_MAC))
            .unwrap_or_else(|e| panic!("loading the datapath for {}: {e}", scale.label()));
        dataplane
            .apply(&state)
            .unwrap_or_else(|e| panic!("applying {}: {e}", scale.label()));
        let l2_vips = scale.vips - 2;
        let spread_len = l2_vips.min(CYCLE);
        let spread = (0..spread_len)
            .map(|j| match j * l2_vips / spread_len {
                0 => L2_VIP,
                n => filler(n - 1),
            })
            .collect();
        let sweeper = (scale.flow_table == DEFAULT_FLOWS).then(|| {
            let mut sweeper = dataplane
                .flow_sweeper(BENCH_IDLE_TIMEOUT)
                .unwrap_or_else(|e| panic!("flow sweeper: {e}"));
            sweeper
                .set_clock(CLOCK_STEADY)
                .unwrap_or_else(|e| panic!("setting the clock: {e}"));
            sweeper
        });
        Scene {
            scale,
            dataplane,
            spread,
            frames: BTreeMap::new(),
            setup: start.elapsed(),
            sweeper,
        }
    }

    /// Sets the datapath clock, where a sweeper keeps this datapath's flow table.
    fn set_clock(&mut self, now_s: u32) {
        if let Some(sweeper) = &mut self.sweeper {
            sweeper
                .set_clock(now_s)
                .unwrap_or_else(|e| panic!("setting the clock: {e}"));
        }
    }

    /// Before a new-flow batch: its entries are stamped [`CLOCK_NEW`].
    fn before_new_flows(&mut self) {
        self.set_clock(CLOCK_NEW);
    }

    /// After a new-flow batch of `count` flows: the sweep removes them, and only them, and the
    /// clock goes back to [`CLOCK_STEADY`].
    fn after_new_flows(&mut self, count: usize) {
        self.set_clock(CLOCK_STEADY);
        if let Some(sweeper) = &self.sweeper {
            let report = sweeper
                .sweep(CLOCK_STEADY)
                .unwrap_or_else(|e| panic!("sweeping the flow table: {e}"));
            // The batch's flows, less those a later flow of the batch displaced.
            assert!(
                report.expired as usize <= count && report.expired > 0 && report.evicted == 0,
                "the sweep after a batch removes the batch's new flows and nothing else: \
                 {report:?} after {count} new flows"
            );
        }
    }

    /// The frame of flow `i` of a class shape.
    fn frame(&self, shape: Shape, i: u64) -> Vec<u8> {
        let (src, sport) = client(i);
        match shape {
            Shape::TcpL2 => tcp_frame(src, sport, L2_VIP),
            Shape::TcpL2Spread => {
                tcp_frame(src, sport, self.spread[i as usize % self.spread.len()])
            }
            Shape::UdpL2 => udp_frame(src, sport, L2_VIP),
            Shape::TcpIpip => tcp_frame(src, sport, IPIP_VIP),
            Shape::SynL2 => syn_frame(src, sport, L2_VIP),
            Shape::SynIpip => syn_frame(src, sport, IPIP_VIP),
            Shape::BadIhl => {
                let mut frame = tcp_frame(src, sport, L2_VIP);
                frame[14] = 0x44;
                frame
            }
            Shape::NotVip => tcp_frame(src, sport, NOT_A_VIP),
            Shape::Tcp6L2 => tcp6_frame(i, L2_VIP6, TCP_ACK),
            Shape::Syn6L2 => tcp6_frame(i, L2_VIP6, TCP_SYN),
            Shape::Tcp6Ip6 => tcp6_frame(i, IP6_VIP6, TCP_ACK),
        }
    }

    fn fixed_frames(&mut self, class: &Class) -> &[Vec<u8>] {
        if !self.frames.contains_key(class.id) {
            let count = match class.flows {
                Flows::One => 1,
                _ => CYCLE,
            };
            let frames = (0..count as u64)
                .map(|i| self.frame(class.shape, i))
                .collect();
            self.frames.insert(class.id, frames);
        }
        &self.frames[class.id]
    }
}

/// What the counters must show after a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expected {
    FlowHit,
    FlowNew,
    Other,
}

fn expected(class: &Class) -> Expected {
    match (class.shape, class.flows) {
        (Shape::BadIhl | Shape::NotVip, _) => Expected::Other,
        (_, Flows::New) => Expected::FlowNew,
        _ => Expected::FlowHit,
    }
}

/// Runs `calls` calls of the load balancer over `frames` in turn, `repeat` runs each, checks
/// every action and the counters, and returns the kernel's mean time per run in ns.
fn lb_batch(
    dataplane: &mut Dataplane,
    frames: &[Vec<u8>],
    calls: usize,
    repeat: u32,
    class: &Class,
) -> f64 {
    let lb_before = dataplane.lb_counts().unwrap_or_else(|e| panic!("{e}"));
    let actions_before = dataplane.action_counts().unwrap_or_else(|e| panic!("{e}"));
    let mut out = [0u8; OUT_LEN];
    let mut total = Duration::ZERO;
    let want = class.action();
    for call in 0..calls {
        let frame = &frames[call % frames.len()];
        let (action, len, duration) = dataplane
            .test_run_timed(frame, &mut out, repeat)
            .unwrap_or_else(|e| panic!("{}: BPF_PROG_TEST_RUN: {e}", class.id));
        let want_len = match class.shape {
            Shape::TcpIpip | Shape::SynIpip => frame.len() + 20,
            Shape::Tcp6Ip6 => frame.len() + 40,
            _ => frame.len(),
        };
        assert!(
            action == want && len == want_len,
            "{}: call {call} returned action {action} with {len} bytes, expected {want} with \
             {want_len}",
            class.id
        );
        total += duration;
    }
    let runs = (calls as u64) * u64::from(repeat);
    let lb_after = dataplane.lb_counts().unwrap_or_else(|e| panic!("{e}"));
    let actions_after = dataplane.action_counts().unwrap_or_else(|e| panic!("{e}"));
    let delta = |event: LbCounter| lb_after[event as usize] - lb_before[event as usize];
    let (hits, new) = (delta(LbCounter::FlowHit), delta(LbCounter::FlowNew));
    match expected(class) {
        // A class flow can lose its slot to the fill only in a set holding four class flows
        // (the fill is seen less recently): it is then balanced anew once and remembered.
        Expected::FlowHit => assert!(
            hits + new == runs && new <= runs / 100,
            "{}: flow-table hits and new flows of the batch: {hits} and {new} of {runs}",
            class.id
        ),
        Expected::FlowNew => assert_eq!(
            (hits, new),
            (0, runs),
            "{}: flow-table hits and new flows of the batch",
            class.id
        ),
        Expected::Other => assert_eq!(
            (hits, new),
            (0, 0),
            "{}: flow-table hits and new flows of the batch",
            class.id
        ),
    }
    assert_eq!(
        actions_after[want as usize] - actions_before[want as usize],
        runs,
        "{}: packets counted under action {want}",
        class.id
    );
    assert_eq!(
        delta(LbCounter::FlowInsertFailed),
        0,
        "{}: flow inserts refused",
        class.id
    );
    total.as_nanos() as f64 / calls as f64
}

/// Runs a helper program (`xlb_floor` or `xlb_pass`) the same way; returns the mean in ns.
fn aux_batch(program: &Xdp, frames: &[Vec<u8>], calls: usize, repeat: u32, want: u32) -> f64 {
    let mut out = [0u8; OUT_LEN];
    let mut total = Duration::ZERO;
    for call in 0..calls {
        let frame = &frames[call % frames.len()];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of a helper program: {e}"));
        assert_eq!(result.return_value, want, "helper program action");
        total += result.duration;
    }
    total.as_nanos() as f64 / calls as f64
}

/// The floor and empty programs, loaded from the helper object.
struct Helpers {
    ebpf: Ebpf,
}

impl Helpers {
    fn load() -> Helpers {
        let mut ebpf =
            Ebpf::load(objects::AUX).unwrap_or_else(|e| panic!("loading the helper object: {e}"));
        for name in [program_names::FLOOR, program_names::PASS] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .unwrap_or_else(|| panic!("no XDP program {name} in the helper object"));
            program
                .load()
                .unwrap_or_else(|e| panic!("loading {name}: {e}"));
        }
        Helpers { ebpf }
    }

    fn program(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("no XDP program {name}"))
    }

    fn floor(&self) -> &Xdp {
        self.program(program_names::FLOOR)
    }

    fn empty(&self) -> &Xdp {
        self.program(program_names::PASS)
    }
}

/// One round's figures of a (scale, class) pair, in ns per run.
#[derive(Clone, Copy, Debug)]
struct Sample {
    lb: f64,
    floor: f64,
    /// The empty program, in the same round and scale.
    empty: f64,
}

fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// The summary of one (scale, class) pair.
#[derive(Clone, Debug)]
struct Row {
    scale: Scale,
    class: Class,
    lb: f64,
    floor: f64,
    empty: f64,
    ratio: f64,
    ratio_p25: f64,
    ratio_p75: f64,
    /// Median of (lb - empty) and of (floor - empty): the programs without the harness.
    lb_net: f64,
    floor_net: f64,
}

impl Row {
    fn of(scale: Scale, class: Class, samples: &[Sample]) -> Row {
        let pick = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<_>>();
        let ratios = pick(&|s| s.lb / s.floor);
        Row {
            scale,
            class,
            lb: median(&pick(&|s| s.lb)),
            floor: median(&pick(&|s| s.floor)),
            empty: median(&pick(&|s| s.empty)),
            ratio: median(&ratios),
            ratio_p25: quantile(&ratios, 0.25),
            ratio_p75: quantile(&ratios, 0.75),
            lb_net: median(&pick(&|s| s.lb - s.empty)),
            floor_net: median(&pick(&|s| s.floor - s.empty)),
        }
    }
}

/// What BPF_PROG_TEST_RUN with `repeat = 2` did on this kernel.
struct Semantics {
    ipip_action: u32,
    ipip_len: usize,
    ipip_in: usize,
    new_hits: u64,
    new_inserts: u64,
}

/// Checks, on the running kernel, whether repetitions of one test run start from the input
/// frame again.
fn check_semantics(scene: &mut Scene) -> Semantics {
    let ipip = scene.frame(Shape::TcpIpip, NEW_FLOWS_FROM - 1);
    let mut out = [0u8; OUT_LEN];
    let (ipip_action, ipip_len, _) = scene
        .dataplane
        .test_run_timed(&ipip, &mut out, 2)
        .unwrap_or_else(|e| panic!("{e}"));
    let new = scene.frame(Shape::TcpL2, NEW_FLOWS_FROM - 2);
    let before = scene
        .dataplane
        .lb_counts()
        .unwrap_or_else(|e| panic!("{e}"));
    scene
        .dataplane
        .test_run_timed(&new, &mut out, 2)
        .unwrap_or_else(|e| panic!("{e}"));
    let after = scene
        .dataplane
        .lb_counts()
        .unwrap_or_else(|e| panic!("{e}"));
    let delta = |event: LbCounter| after[event as usize] - before[event as usize];
    Semantics {
        ipip_action,
        ipip_len,
        ipip_in: ipip.len(),
        new_hits: delta(LbCounter::FlowHit),
        new_inserts: delta(LbCounter::FlowNew),
    }
}

/// Everything measured in one run.
struct Results {
    rows: Vec<Row>,
    /// Per (scale index, class index): the per-round samples.
    samples: BTreeMap<(usize, usize), Vec<Sample>>,
    /// Steady-state rows (repeat > 1, smallest datapath).
    steady: Vec<Row>,
    semantics: Semantics,
    setups: Vec<(Scale, Duration)>,
    pinned: Option<usize>,
    /// `/proc/loadavg`'s three averages when the run started.
    load: String,
    elapsed: Duration,
    programs: Programs,
}

fn run(plan: &Plan) -> Results {
    let started = Instant::now();
    let load = std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    );
    let pinned = pin_to_last_cpu();
    let helpers = Helpers::load();
    let mut scenes: Vec<Scene> = plan
        .scales
        .iter()
        .map(|&scale| {
            eprintln!("[packet] loading {}", scale.label());
            let scene = Scene::new(scale);
            eprintln!(
                "[packet]   built, loaded and applied in {:.1} s",
                scene.setup.as_secs_f64()
            );
            scene
        })
        .collect();
    let semantics = check_semantics(&mut scenes[0]);
    let programs = Programs::inspect(&mut scenes[0].dataplane, &helpers);

    // Fill the flow table with flows no class uses, to 85% of the flows it is sized for (the
    // classes' own flows count): the steady state of a balancer that has run for a while.
    // Half the fill goes in before the classes' established flows and half after: in a set,
    // a flow takes the first free slot, so on average half of the other flows sharing a set
    // with an established flow are compared before it, as on a balancer where flows come and
    // go (all before it, or none, would flatter or penalise it).
    let mut out = [0u8; OUT_LEN];
    let mut next_new = NEW_FLOWS_FROM;
    for scene in &mut scenes {
        fill_flow_table(scene, &mut next_new, &mut out, FILL_PERCENT / 2);
    }
    warm_up(&mut scenes, plan, &mut out);
    for scene in &mut scenes {
        fill_flow_table(scene, &mut next_new, &mut out, FILL_PERCENT);
    }

    // Caches and predictors settle again after the fill.
    warm_up(&mut scenes, plan, &mut out);

    let mut samples: BTreeMap<(usize, usize), Vec<Sample>> = BTreeMap::new();
    let empty_frame = vec![scenes[0].frame(Shape::TcpL2, 0)];
    for round in 0..plan.rounds {
        let round_start = Instant::now();
        for (si, scene) in scenes.iter_mut().enumerate() {
            let empty = aux_batch(helpers.empty(), &empty_frame, CYCLE, 1, XDP_PASS);
            for (ci, class) in plan.classes.iter().enumerate() {
                let frames = if class.flows == Flows::New {
                    let frames = (next_new..next_new + CYCLE as u64)
                        .map(|i| scene.frame(class.shape, i))
                        .collect();
                    next_new += CYCLE as u64;
                    frames
                } else {
                    scene.fixed_frames(class).to_vec()
                };
                let floor_batch = || aux_batch(helpers.floor(), &frames, CYCLE, 1, XDP_TX);
                let new_flows = class.flows == Flows::New;
                if new_flows {
                    scene.before_new_flows();
                }
                let (lb, floor) = if round % 2 == 0 {
                    let lb = lb_batch(&mut scene.dataplane, &frames, CYCLE, 1, class);
                    (lb, floor_batch())
                } else {
                    let floor = floor_batch();
                    (
                        lb_batch(&mut scene.dataplane, &frames, CYCLE, 1, class),
                        floor,
                    )
                };
                if new_flows {
                    scene.after_new_flows(CYCLE);
                    fill_flow_table(scene, &mut next_new, &mut out, FILL_PERCENT);
                }
                samples
                    .entry((si, ci))
                    .or_default()
                    .push(Sample { lb, floor, empty });
            }
        }
        eprintln!(
            "[packet] round {}/{} done in {:.1} s",
            round + 1,
            plan.rounds,
            round_start.elapsed().as_secs_f64()
        );
    }

    // Steady state: the kernel's loop of `repeat` runs on one frame, smallest datapath.
    let mut steady_samples: BTreeMap<usize, Vec<Sample>> = BTreeMap::new();
    let scene = &mut scenes[0];
    for round in 0..plan.steady_rounds {
        let empty = aux_batch(
            helpers.empty(),
            &empty_frame,
            STEADY_CALLS,
            STEADY_REPEAT,
            XDP_PASS,
        );
        for (ci, class) in plan.classes.iter().enumerate() {
            if !class.repeat_safe() {
                continue;
            }
            let frames = scene.fixed_frames(class).to_vec();
            let floor_batch = || {
                aux_batch(
                    helpers.floor(),
                    &frames,
                    STEADY_CALLS,
                    STEADY_REPEAT,
                    XDP_TX,
                )
            };
            let lb_steady = |dataplane: &mut Dataplane| {
                lb_batch(dataplane, &frames, STEADY_CALLS, STEADY_REPEAT, class)
            };
            let (lb, floor) = if round % 2 == 0 {
                let lb = lb_steady(&mut scene.dataplane);
                (lb, floor_batch())
            } else {
                let floor = floor_batch();
                (lb_steady(&mut scene.dataplane), floor)
            };
            steady_samples
                .entry(ci)
                .or_default()
                .push(Sample { lb, floor, empty });
        }
    }

    let rows = samples
        .iter()
        .map(|(&(si, ci), s)| Row::of(plan.scales[si], plan.classes[ci], s))
        .collect();
    let steady = steady_samples
        .iter()
        .map(|(&ci, s)| Row::of(BASE, plan.classes[ci], s))
        .collect();
    Results {
        rows,
        samples,
        steady,
        semantics,
        setups: scenes.iter().map(|s| (s.scale, s.setup)).collect(),
        pinned,
        load,
        elapsed: started.elapsed(),
        programs,
    }
}

/// What the kernel says about the loaded programs.
struct Programs {
    /// (name, xlated instructions, jited bytes, verified instructions), bpftool's count when
    /// bpftool is there.
    sizes: Vec<(&'static str, Option<usize>, u32, Option<u32>)>,
    /// Calls in xlb_lb's translated code, by callee (helpers, map lookups, subprograms).
    calls: BTreeMap<String, usize>,
    /// Where the counts came from.
    source: String,
}

impl Programs {
    fn inspect(dataplane: &mut Dataplane, helpers: &Helpers) -> Programs {
        let mut sizes = Vec::new();
        let mut calls = BTreeMap::new();
        let mut source = String::from("bpftool prog dump xlated");
        let lb = dataplane.program_info().unwrap_or_else(|e| panic!("{e}"));
        let floor = helpers
            .floor()
            .info()
            .unwrap_or_else(|e| panic!("querying xlb_floor: {e}"));
        for (name, info) in [(program_names::LB, lb), (program_names::FLOOR, floor)] {
            let dump = Command::new("bpftool")
                .args(["prog", "dump", "xlated", "id", &info.id().to_string()])
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
            let count = match &dump {
                Some(text) => Some(xlated_instructions(text)),
                None => {
                    source = "ProgramInfo (bpftool not found): translated bytes / 8".into();
                    info.size_translated().map(|bytes| bytes as usize / 8)
                }
            };
            if name == program_names::LB
                && let Some(text) = &dump
            {
                calls = xlated_calls(text);
            }
            sizes.push((
                name,
                count,
                info.size_jitted(),
                info.verified_instruction_count(),
            ));
        }
        Programs {
            sizes,
            calls,
            source,
        }
    }
}

/// Instructions in a `bpftool prog dump xlated` listing (lines `  N: (op) ...`); a 16-byte
/// wide load counts once.
fn xlated_instructions(dump: &str) -> usize {
    dump.lines()
        .filter(|line| {
            let line = line.trim_start();
            line.split_once(':')
                .is_some_and(|(n, rest)| n.parse::<u32>().is_ok() && rest.starts_with(" ("))
        })
        .count()
}

/// Calls in a listing, by callee: `call __htab_map_lookup_elem#330864` counts under
/// `__htab_map_lookup_elem`, a bpf-to-bpf call `call pc+1001#bpf_prog_TAG_memset` under
/// `memset (subprogram)`.
fn xlated_calls(dump: &str) -> BTreeMap<String, usize> {
    let mut calls = BTreeMap::new();
    for line in dump.lines() {
        let Some((_, callee)) = line.split_once(") call ") else {
            continue;
        };
        let name = match callee.trim().split_once('#') {
            Some((target, prog)) if target.starts_with("pc") => {
                let sub = prog.splitn(4, '_').nth(3).unwrap_or(prog);
                format!("{sub} (subprogram)")
            }
            Some((name, _)) => name.to_owned(),
            None => callee.trim().to_owned(),
        };
        *calls.entry(name).or_insert(0) += 1;
    }
    calls
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

fn find<'a>(rows: &'a [Row], scale: Scale, id: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.scale == scale && r.class.id == id)
}

/// Per class, the median over rounds of (ratio at `scale`) / (ratio at the smallest datapath).
fn relative_to_base(results: &Results, scale_index: usize, class_index: usize) -> Option<f64> {
    let base = results.samples.get(&(0, class_index))?;
    let other = results.samples.get(&(scale_index, class_index))?;
    let rel: Vec<f64> = base
        .iter()
        .zip(other)
        .map(|(b, o)| (o.lb / o.floor) / (b.lb / b.floor))
        .collect();
    Some(median(&rel))
}

/// The scale index of 100,000 VIPs, if measured.
fn scale_100k(plan: &Plan) -> Option<usize> {
    plan.scales.iter().position(|s| s.vips == 100_000)
}

fn targets(plan: &Plan, results: &Results) -> String {
    let mut out = String::new();
    let rows = &results.rows;
    let mut line = |what: String, row: Option<&Row>, target: f64| match row {
        Some(row) => writeln!(
            out,
            "| {what} | {:.2}x ({:.2}–{:.2}) | < {target}x | {} |",
            row.ratio,
            row.ratio_p25,
            row.ratio_p75,
            verdict(row.ratio < target)
        )
        .unwrap(),
        None => writeln!(out, "| {what} | not measured | < {target}x | – |").unwrap(),
    };
    line(
        format!(
            "Established flow, 1 flow (`tcp-l2-est-1`, {})",
            BASE.short()
        ),
        find(rows, BASE, "tcp-l2-est-1"),
        TARGET_EST_ONE,
    );
    line(
        format!(
            "Established flow, 10,000 flows (`tcp-l2-est-10k`, {})",
            BASE.short()
        ),
        find(rows, BASE, "tcp-l2-est-10k"),
        TARGET_EST_CYCLE,
    );
    line(
        format!("New connection, SYN (`tcp-l2-new`, {})", BASE.short()),
        find(rows, BASE, "tcp-l2-new"),
        TARGET_NEW,
    );
    match scale_100k(plan) {
        Some(si) => {
            let worst = plan
                .classes
                .iter()
                .enumerate()
                .filter_map(|(ci, c)| Some((c.id, relative_to_base(results, si, ci)?)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let headline = plan
                .classes
                .iter()
                .position(|c| c.id == "tcp-l2-est-1")
                .and_then(|ci| relative_to_base(results, si, ci));
            if let (Some((id, worst)), Some(headline)) = (worst, headline) {
                writeln!(
                    out,
                    "| 100,000 VIPs vs {}: established flow (`tcp-l2-est-1`) | {headline:.2}x | \
                     ≤ {TARGET_SCALE:.2}x | {} |",
                    BASE.short(),
                    verdict(headline <= TARGET_SCALE)
                )
                .unwrap();
                writeln!(
                    out,
                    "| 100,000 VIPs vs {}: worst class (`{id}`) | {worst:.2}x | ≤ \
                     {TARGET_SCALE:.2}x | {} |",
                    BASE.short(),
                    verdict(worst <= TARGET_SCALE)
                )
                .unwrap();
            }
        }
        None => writeln!(
            out,
            "| 100,000 VIPs within 10% of {} | not measured | ≤ {TARGET_SCALE:.2}x | – |",
            BASE.short()
        )
        .unwrap(),
    }
    out
}

fn markdown(plan: &Plan, results: &Results, date: &str, time: &str) -> String {
    let commit = xlb_tests::bench_env::commit();
    // Not available_parallelism: the thread is pinned to one CPU by now.
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let kernel = xlb_tests::bench_env::kernel();
    let sem = &results.semantics;

    let mut out = String::new();
    let title = if plan.quick { " (quick)" } else { "" };
    writeln!(out, "## Per-packet cost with BPF_PROG_TEST_RUN{title}\n").unwrap();
    writeln!(out, "- Date: {date} {time} UTC; commit {commit}").unwrap();
    writeln!(
        out,
        "- Machine: {cpus} CPUs (nproc), {}, kernel {kernel}; benchmark thread pinned to CPU {}",
        cpu_model(),
        results
            .pinned
            .map_or_else(|| "none (pinning failed)".to_owned(), |c| c.to_string())
    )
    .unwrap();
    writeln!(
        out,
        "- Load average when the run started: {} (other work on the machine adds noise to \
         both sides of every ratio alike)",
        results.load
    )
    .unwrap();
    writeln!(
        out,
        "- Command: `sudo target/release/packet_bench{}` (run by `perf/run.sh`); {} rounds, \
         {} calls per batch, {:.0} s in all",
        if plan.quick { " --quick" } else { "" },
        plan.rounds,
        thousands(CYCLE as u64),
        results.elapsed.as_secs_f64()
    )
    .unwrap();
    writeln!(
        out,
        "- Datapaths (each VIP has the same backends and table size; the three IPv4 VIPs the \
         classes address, TCP/80 L2, UDP/53 L2 and TCP/80 IPIP, plus TCP/80 L2 fillers, and two \
         IPv6 VIPs besides the count, TCP/80 L2 and TCP/80 IPv6-in-IPv6, with IPv6 backends); flow \
         table sized for {} flows (the default; IPv4: 4-way sets with twice as many slots), \
         filled to {FILL_PERCENT}% of that with other flows before the measurement (half of them \
         before the classes' established flows and half after, so that on average half of the \
         flows sharing a set are compared first; the fill is stamped as seen before the \
         classes' flows; the flows of each new-flow batch are swept out after it, as `xlbd` \
         would, and the fill flows they displaced topped up), except where it says \"never \
         full\":",
        thousands(u64::from(DEFAULT_FLOWS))
    )
    .unwrap();
    for (scale, setup) in &results.setups {
        writeln!(
            out,
            "  - {} (built, loaded and applied in {:.1} s)",
            scale.label(),
            setup.as_secs_f64()
        )
        .unwrap();
    }
    writeln!(out).unwrap();

    writeln!(out, "### Method\n").unwrap();
    writeln!(
        out,
        "Every call runs **one packet once** (`repeat = 1`) and the figure is the kernel's own \
         duration for it, averaged over a batch of {} calls; the table gives the median over \
         the rounds. One packet per call because the kernel does not reset a non-live XDP test \
         run between repetitions, checked on this kernel: with `repeat = 2` an IPIP frame of {} \
         bytes came back as action {} with {} bytes (the second repetition ran on the first \
         one's encapsulated output), and a new flow counted {} new + {} hit (it is new only \
         once). New-flow classes use a never-seen source address or port on every call.\n",
        thousands(CYCLE as u64),
        sem.ipip_in,
        sem.ipip_action,
        sem.ipip_len,
        sem.new_inserts,
        sem.new_hits
    )
    .unwrap();
    writeln!(
        out,
        "The floor, `xlb_floor` (swap MACs, `XDP_TX`), runs the same frames in the batch just \
         before or after (the order alternates by round); **ratio** is the median over rounds \
         of `xlb_lb / xlb_floor` in the same round, with the 25th–75th percentile. Every batch \
         checks each call's action and output length, and the counters (flow-table hits or new \
         flows: exactly one per call). The kernel's figure for one run includes a fixed test \
         harness cost (one clock read, bottom halves off and on): the empty program \
         `xlb_pass` measured the same way took **{:.0} ns** per call on the smallest datapath, \
         and **net** subtracts it. 10,000-flow classes cycle through 10,000 established flows \
         whose entries are not in the L1/L2 caches when their turn comes.\n",
        results
            .rows
            .iter()
            .find(|r| r.scale == BASE)
            .map_or(f64::NAN, |r| r.empty)
    )
    .unwrap();

    writeln!(out, "### Targets\n").unwrap();
    writeln!(out, "| target | measured (p25–p75) | goal | verdict |").unwrap();
    writeln!(out, "| --- | ---: | ---: | --- |").unwrap();
    out.push_str(&targets(plan, results));
    writeln!(out).unwrap();

    for scale in &plan.scales {
        writeln!(out, "### {}\n", scale.label()).unwrap();
        writeln!(
            out,
            "| class | flows | xlb_lb ns | floor ns | ratio (p25–p75) | net xlb_lb ns | net floor ns |"
        )
        .unwrap();
        writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |").unwrap();
        for row in results.rows.iter().filter(|r| r.scale == *scale) {
            writeln!(
                out,
                "| {} (`{}`) | {} | {:.0} | {:.0} | **{:.2}x** ({:.2}–{:.2}) | {:.0} | {:.0} |",
                row.class.label,
                row.class.id,
                row.class.flows_label(),
                row.lb,
                row.floor,
                row.ratio,
                row.ratio_p25,
                row.ratio_p75,
                row.lb_net,
                row.floor_net
            )
            .unwrap();
        }
        writeln!(out).unwrap();
    }

    if plan.scales.len() > 1 {
        writeln!(out, "### Scale: ratio relative to {}\n", BASE.label()).unwrap();
        writeln!(
            out,
            "Median over rounds of (ratio at this size) / (ratio on the smallest datapath) in \
             the same round; 1.00 = no cost of size.\n"
        )
        .unwrap();
        let others: Vec<(usize, &Scale)> = plan.scales.iter().enumerate().skip(1).collect();
        let header: Vec<String> = others.iter().map(|(_, s)| s.short()).collect();
        writeln!(out, "| class | {} |", header.join(" | ")).unwrap();
        writeln!(out, "| --- |{}", " ---: |".repeat(others.len())).unwrap();
        for (ci, class) in plan.classes.iter().enumerate() {
            let cells: Vec<String> = others
                .iter()
                .map(|&(si, _)| {
                    relative_to_base(results, si, ci)
                        .map_or_else(|| "–".to_owned(), |r| format!("{r:.2}"))
                })
                .collect();
            writeln!(out, "| `{}` | {} |", class.id, cells.join(" | ")).unwrap();
        }
        writeln!(out).unwrap();
    }

    writeln!(
        out,
        "### Cross-check: the kernel's own loop (`repeat = {}`)\n",
        thousands(u64::from(STEADY_REPEAT))
    )
    .unwrap();
    writeln!(
        out,
        "For the classes whose frame the program leaves unchanged (one flow, not IPIP), \
         {STEADY_CALLS} calls of {} repetitions each, {}: one clock read per call instead of \
         per packet, and warm caches and branch predictors, as in a driver's NAPI loop. The \
         empty program takes {:.0} ns per run here.\n",
        thousands(u64::from(STEADY_REPEAT)),
        BASE.label(),
        results.steady.first().map_or(f64::NAN, |r| r.empty)
    )
    .unwrap();
    writeln!(
        out,
        "| class | xlb_lb ns | floor ns | ratio (p25–p75) | net xlb_lb ns | net floor ns |"
    )
    .unwrap();
    writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |").unwrap();
    for row in &results.steady {
        writeln!(
            out,
            "| `{}` | {:.0} | {:.0} | {:.2}x ({:.2}–{:.2}) | {:.0} | {:.0} |",
            row.class.id,
            row.lb,
            row.floor,
            row.ratio,
            row.ratio_p25,
            row.ratio_p75,
            row.lb_net,
            row.floor_net
        )
        .unwrap();
    }
    writeln!(
        out,
        "\nChart: [`packet.svg`](packet.svg); every figure: [`packet.csv`](packet.csv); where \
         the time goes: [`limits.md`](limits.md)."
    )
    .unwrap();
    out
}

fn csv(results: &Results) -> String {
    let mut out = String::from(
        "mode,vips,backends,table_size,class,flows,xlb_lb_ns,floor_ns,empty_ns,ratio,ratio_p25,\
         ratio_p75,net_xlb_lb_ns,net_floor_ns\n",
    );
    let rows = results
        .rows
        .iter()
        .map(|r| ("repeat1", r))
        .chain(results.steady.iter().map(|r| ("steady", r)));
    for (mode, r) in rows {
        writeln!(
            out,
            "{mode},{},{},{},{},{},{:.1},{:.1},{:.1},{:.3},{:.3},{:.3},{:.1},{:.1}",
            r.scale.vips,
            r.scale.backends,
            r.scale.table_size,
            r.class.id,
            match r.class.flows {
                Flows::One => "1",
                Flows::Cycle => "10000",
                Flows::New => "new",
            },
            r.lb,
            r.floor,
            r.empty,
            r.ratio,
            r.ratio_p25,
            r.ratio_p75,
            r.lb_net,
            r.floor_net
        )
        .unwrap();
    }
    out
}

/// A horizontal bar chart of the ratios, one group per class, one bar per datapath size, with
/// the targets marked; plain SVG, no dependencies.
fn svg(plan: &Plan, results: &Results) -> String {
    const COLORS: [&str; 5] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"];
    let (left, top, bar, gap, width) = (300.0, 60.0, 9.0, 10.0, 560.0);
    let per_class = plan.scales.len() as f64 * bar + gap;
    let height = top + per_class * plan.classes.len() as f64 + 50.0;
    let max_ratio = results
        .rows
        .iter()
        .map(|r| r.ratio)
        .chain([TARGET_NEW])
        .fold(1.0f64, f64::max)
        .ceil();
    let x = |ratio: f64| left + ratio / max_ratio * width;
    let total_width = left + width + 40.0;
    let mut s = String::new();
    writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_width}" height="{height}" font-family="sans-serif" font-size="11">"#
    )
    .unwrap();
    writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="18" font-size="14" font-weight="bold">xlb_lb per-packet cost as a ratio to xlb_floor (median, BPF_PROG_TEST_RUN, repeat = 1)</text>"#
    )
    .unwrap();
    for (i, scale) in plan.scales.iter().enumerate() {
        let lx = 10.0 + i as f64 * 175.0;
        writeln!(
            s,
            r#"<rect x="{lx}" y="30" width="10" height="10" fill="{}"/><text x="{}" y="39">{}</text>"#,
            COLORS[i % COLORS.len()],
            lx + 14.0,
            scale.short()
        )
        .unwrap();
    }
    let axis_bottom = height - 40.0;
    for tick in 0..=max_ratio as usize {
        let tx = x(tick as f64);
        writeln!(
            s,
            r##"<line x1="{tx}" y1="{top}" x2="{tx}" y2="{axis_bottom}" stroke="#ddd"/><text x="{tx}" y="{}" text-anchor="middle">{tick}x</text>"##,
            axis_bottom + 14.0
        )
        .unwrap();
    }
    for (ci, class) in plan.classes.iter().enumerate() {
        let y0 = top + ci as f64 * per_class;
        writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{} ({})</text>"#,
            left - 6.0,
            y0 + plan.scales.len() as f64 * bar / 2.0 + 4.0,
            class.id,
            class.flows_label()
        )
        .unwrap();
        for (si, scale) in plan.scales.iter().enumerate() {
            if let Some(row) = find(&results.rows, *scale, class.id) {
                let y = y0 + si as f64 * bar;
                writeln!(
                    s,
                    r#"<rect x="{left}" y="{y}" width="{:.1}" height="{}" fill="{}"><title>{} {}: {:.2}x</title></rect>"#,
                    x(row.ratio) - left,
                    bar - 1.0,
                    COLORS[si % COLORS.len()],
                    class.id,
                    scale.label(),
                    row.ratio
                )
                .unwrap();
            }
        }
        let target = match class.id {
            "tcp-l2-est-1" => Some(TARGET_EST_ONE),
            "tcp-l2-est-10k" => Some(TARGET_EST_CYCLE),
            "tcp-l2-new" => Some(TARGET_NEW),
            _ => None,
        };
        if let Some(target) = target {
            let tx = x(target);
            writeln!(
                s,
                r#"<line x1="{tx}" y1="{}" x2="{tx}" y2="{}" stroke="red" stroke-width="2" stroke-dasharray="3,2"><title>target {target}x</title></line>"#,
                y0 - 2.0,
                y0 + plan.scales.len() as f64 * bar + 1.0
            )
            .unwrap();
        }
    }
    writeln!(
        s,
        r#"<text x="{left}" y="{}">red dashes: targets of the issue (established 1 flow 2.3x, 10,000 flows 4x, new flow 4.5x)</text>"#,
        height - 8.0
    )
    .unwrap();
    s.push_str("</svg>\n");
    s
}

/// Map lookups and other work per class, read from the datapath's source at this commit.
const LOOKUPS: &str = "\
| class | hash-map lookups (key bytes hashed) | array lookups (inlined) | per-CPU counters | other |
| --- | --- | --- | --- | --- |
| not a VIP, passed | – (VIP address filter says no) | `XLB_VIP_FILTER` | actions | – |
| malformed, dropped | – | – | drops, actions | – |
| established, L2 | `XLB_VIPS` (8) only when the VIP of the flow's entry no longer matches | `XLB_VIP_FILTER`, `XLB_FLOW_SETS` (the flow's set: up to four keys compared), `XLB_CLOCK`, `XLB_VIP_BY_ID`, `XLB_BACKENDS`, `XLB_GLOBALS` | lb, vips, backends, actions | flow hash, MAC rewrite |
| established, IPIP | as L2 | as L2 | as L2 | as L2, `bpf_xdp_adjust_head`, outer header + checksum |
| new connection (SYN), L2 | `XLB_VIPS` | `XLB_VIP_FILTER`, `XLB_MAGLEV`, `XLB_BACKENDS`, `XLB_FLOW_SETS` (insert: the set's four slots read, one written), `XLB_GLOBALS` | lb, vips, backends, actions | flow hash |
| ACK of a flow not in the table, L2 | as SYN | as SYN, plus the set's keys compared (the lookup that misses) | as SYN | as SYN |
| new connection, IPIP | as new L2 | as new L2 | as new L2 | as established IPIP (hash computed once) |
| VIP on port 0 (any port) | one more `XLB_VIPS` lookup (exact port first) | | | |
| fragment or truncated L4 to a filter hit | `XLB_VIP_ADDRS` (20) decides drop or pass | | | |
";

/// What would move the figures, from the measurements above, the profile (`perf/run.sh`) and
/// the datapath's source at this commit.
const PROPOSALS: &str = "\
### What would move it

Already done, with the figures before and after in `CHANGELOG.md`: the VIP address set is no \
longer a hash lookup on every packet (a bitmap filter in an array decides \"not a VIP\" with \
one inlined read; the exact set is asked only for fragments and truncated packets), the \
per-packet maps have IPv4-sized keys (`VipKey` 8 bytes, `FlowKey` 16, so jhash and memcmp do \
less than half the work and the flow hash mixes 4 words instead of 10), and a TCP SYN skips \
the flow-table lookup (it is a new connection by definition).

What is left, by effect:

1. **New connections: the flow insert.** The LRU maps are gone (an insert rotated the \
   per-CPU LRU lists and, in a full table, evicted a victim on the packet path: 8.1x the \
   floor), and so is the IPv4 hash map that replaced them (5.5x: the bucket lock held while the \
   chain was walked, a free-list pop, the key and value copied, several cache misses; \
   `perf/results/2026-11-26-hashmap`). The IPv4 flow table is now an array of 4-way sets \
   (`daemon/src/dataplane/flows.rs`): an insert reads one set, two cache lines, and writes one \
   slot. What is left is that set's cache miss, the Maglev slot's and the backend's. Lever: a \
   per-VIP flag to bypass the flow table for services that do not need affinity across \
   backend changes (Katran's `F_LRU_BYPASS`: a new flow then costs what an established one \
   does). The IPv6 table is still a hash map (its new flows cost what IPv4's did).
2. **Fewer per-CPU counter updates** (a few ns). A forwarded packet updates four per-CPU \
   counters (`stats::action`, `stats::lb`, and `stats::forwarded` for the VIP and the backend, \
   `xdp/ebpf/src/bin/lb/stats.rs`): the flow-hit/new event could live in the per-VIP counter \
   and the per-action count be derived from the others for forwarded packets.
3. **Traffic spread over many VIPs** (the 100,000-VIP target for spread traffic). Traffic to a \
   few VIPs costs the same with 100,000 VIPs configured; 10,000 flows spread over 10,000 of the \
   100,000 VIPs cost more than the same flows to one VIP: each packet misses the caches on its \
   VIP's `XLB_VIPS` entry (allocated one by one, `BPF_F_NO_PREALLOC`, so scattered over \
   memory), its backend entry and the VIP's and backend's per-CPU counters, and in a virtual \
   machine every TLB miss walks two levels of page tables. Next: measure a preallocated \
   `XLB_VIPS` (entries in one contiguous area), which needs the switch's reasoning in \
   `docs/architecture.md` redone, since a preallocated map reuses a replaced element at once.
4. **10,000 flows:** the cost is memory latency: each flow's set is a cache line of its own, \
   spread over the table (16 MiB at the default size). A smaller `limits.flow_table_size` keeps \
   it denser, at the price of more displaced flows.
";

/// Costs by difference on the smallest datapath: the median over rounds of the difference of
/// two classes' figures in the same round.
fn differences(plan: &Plan, results: &Results) -> String {
    let index = |id: &str| plan.classes.iter().position(|c| c.id == id);
    let diff_in = |scale: usize, a: &str, b: &str| -> Option<f64> {
        let (sa, sb) = (
            results.samples.get(&(scale, index(a)?))?,
            results.samples.get(&(scale, index(b)?))?,
        );
        Some(median(
            &sa.iter()
                .zip(sb)
                .map(|(x, y)| x.lb - y.lb)
                .collect::<Vec<_>>(),
        ))
    };
    let diff = |a: &str, b: &str| diff_in(0, a, b);
    let spread = || diff_in(scale_100k(plan)?, "tcp-l2-est-spread", "tcp-l2-est-10k");
    let eviction = || -> Option<f64> {
        let free = plan
            .scales
            .iter()
            .position(|s| s.flow_table != DEFAULT_FLOWS)?;
        let ci = index("tcp-l2-new")?;
        let (full, free) = (
            results.samples.get(&(0, ci))?,
            results.samples.get(&(free, ci))?,
        );
        Some(median(
            &full
                .iter()
                .zip(free)
                .map(|(x, y)| x.lb - y.lb)
                .collect::<Vec<_>>(),
        ))
    };
    let floor_minus_empty = find(&results.rows, BASE, "tcp-l2-est-1").map(|r| r.floor_net);
    let steps: [(&str, Option<f64>); 11] = [
        (
            "floor − empty program (swap MACs: the floor's own work)",
            floor_minus_empty,
        ),
        (
            "malformed drop − floor: parse Ethernet and the IPv4 version/IHL byte, two counters",
            find(&results.rows, BASE, "drop-ihl4-1").map(|r| r.lb_net - r.floor_net),
        ),
        (
            "not a VIP − malformed drop: the rest of the IPv4 checks, the VIP address filter \
             (one array read)",
            diff("pass-not-vip-1", "drop-ihl4-1"),
        ),
        (
            "established L2 − not a VIP: flow hash, the flow's set, its VIP by id, backend and \
             globals, MAC rewrite, three more counters",
            diff("tcp-l2-est-1", "pass-not-vip-1"),
        ),
        (
            "new connection (SYN) − established (L2): flow hash, Maglev slot, flow insert, no \
             flow lookup",
            diff("tcp-l2-new", "tcp-l2-est-1"),
        ),
        (
            "ACK of a flow not in the table − SYN (L2): the flow lookup that misses",
            diff("tcp-l2-new-ack", "tcp-l2-new"),
        ),
        (
            "new flow in a table kept 85% full − in a nearly empty table (L2)",
            eviction(),
        ),
        (
            "IPIP − L2 (established): flow hash, `bpf_xdp_adjust_head`, outer header",
            diff("tcp-ipip-est-1", "tcp-l2-est-1"),
        ),
        (
            "10,000 flows − 1 flow (established L2): cache misses on flow entries",
            diff("tcp-l2-est-10k", "tcp-l2-est-1"),
        ),
        (
            "UDP − TCP (established L2)",
            diff("udp-l2-est-1", "tcp-l2-est-1"),
        ),
        (
            "at 100,000 VIPs: 10,000 flows spread over 10,000 VIPs − the same flows to one VIP \
             (established L2): cold VIP entries, backends and counters",
            spread(),
        ),
    ];
    let mut out = String::from("| step | ns (median of per-round differences) |\n| --- | ---: |\n");
    for (what, value) in steps {
        let cell = value.map_or_else(|| "not measured".to_owned(), |v| format!("{v:.0}"));
        writeln!(out, "| {what} | {cell} |").unwrap();
    }
    let not_vip = find(&results.rows, BASE, "pass-not-vip-1").map(|r| r.lb_net);
    if let Some(v) = not_vip {
        writeln!(
            out,
            "\nNot a VIP, passed, net of the harness: {v:.0} ns (parse, one filter read, one \
             counter)."
        )
        .unwrap();
    }
    out
}

fn limits(plan: &Plan, results: &Results) -> String {
    let mut out = String::new();
    writeln!(
        out,
        "### Program size ({})\n\n| program | xlated instructions | JIT bytes | verified \
         instructions |\n| --- | ---: | ---: | ---: |",
        results.programs.source
    )
    .unwrap();
    for (name, xlated, jited, verified) in &results.programs.sizes {
        writeln!(
            out,
            "| `{name}` | {} | {} | {} |",
            xlated.map_or_else(|| "?".to_owned(), |n| thousands(n as u64)),
            thousands(u64::from(*jited)),
            verified.map_or_else(|| "?".to_owned(), |n| thousands(u64::from(n)))
        )
        .unwrap();
    }
    if !results.programs.calls.is_empty() {
        let calls: Vec<String> = results
            .programs
            .calls
            .iter()
            .map(|(name, n)| format!("`{name}` x{n}"))
            .collect();
        writeln!(
            out,
            "\nCall sites in `xlb_lb`'s translated code (array and per-CPU array lookups are \
             inlined by the verifier and do not appear): {}.",
            calls.join(", ")
        )
        .unwrap();
    }
    writeln!(
        out,
        "\nKey sizes: `VipAddrKey` {} bytes, `VipKey` {} bytes, `FlowKey` {} bytes (every hash \
         lookup hashes the whole key with jhash and compares it with memcmp).\n",
        std::mem::size_of::<VipAddrKey>(),
        std::mem::size_of::<VipKey>(),
        std::mem::size_of::<FlowKey>()
    )
    .unwrap();
    writeln!(out, "### Map lookups per packet class\n\n{LOOKUPS}").unwrap();
    writeln!(
        out,
        "### Where the time goes, by difference ({}, repeat = 1)\n\n{}",
        BASE.label(),
        differences(plan, results)
    )
    .unwrap();
    writeln!(out, "{PROPOSALS}").unwrap();
    out
}

fn write(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Fills a default-size flow table with flows no class uses (from `next_new` on), up to
/// `percent` of its capacity with the entries already present; a larger table is left as it is.
fn fill_flow_table(scene: &mut Scene, next_new: &mut u64, out: &mut [u8], percent: u64) {
    if scene.scale.flow_table != DEFAULT_FLOWS {
        return;
    }
    let count = |scene: &Scene| {
        u64::from(
            scene
                .dataplane
                .count_flows()
                .unwrap_or_else(|e| panic!("counting the flow table: {e}")),
        )
    };
    let target = u64::from(scene.scale.flow_table) * percent / 100;
    scene.set_clock(CLOCK_FILL);
    // A fill flow that meets a full set displaces another fill flow: top up until the count
    // is reached (each pass adds about nine in ten of the flows it sends).
    let mut present = count(scene);
    for _ in 0..20 {
        let fill = target.saturating_sub(present);
        if fill == 0 {
            break;
        }
        for i in *next_new..*next_new + fill {
            let frame = scene.frame(Shape::TcpL2, i);
            scene
                .dataplane
                .test_run_timed(&frame, out, 1)
                .unwrap_or_else(|e| panic!("filling the flow table: {e}"));
        }
        *next_new += fill;
        present = count(scene);
    }
    scene.set_clock(CLOCK_STEADY);
    assert!(
        present >= target,
        "the fill fits: {present} of {target} flows"
    );
}

/// Runs every fixed-frame class once on every datapath: the first call inserts the established
/// classes' flows (not measured), and every batch checks its actions and counters.
fn warm_up(scenes: &mut [Scene], plan: &Plan, out: &mut [u8]) {
    for scene in scenes {
        for class in &plan.classes {
            if class.flows == Flows::New {
                continue;
            }
            let frames = scene.fixed_frames(class).to_vec();
            if expected(class) == Expected::FlowHit {
                for frame in &frames {
                    scene
                        .dataplane
                        .test_run_timed(frame, out, 1)
                        .unwrap_or_else(|e| panic!("{e}"));
                }
            }
            lb_batch(&mut scene.dataplane, &frames, frames.len(), 1, class);
        }
    }
}

/// New flows per batch of `--spin`, swept out after each: few sweeps (a sweep reads the whole
/// table), and the table stays below 100% (85% + 20,000 of 262,144 is 93%).
const SPIN_NEW_BATCH: u64 = 20_000;

/// `--spin CLASS SECONDS`: runs one class on the smallest datapath for a profiler.
fn spin(id: &str, seconds: u64) -> ExitCode {
    let Some(class) = CLASSES.iter().find(|c| c.id == id) else {
        let ids: Vec<&str> = CLASSES.iter().map(|c| c.id).collect();
        eprintln!("unknown class {id}; one of: {}", ids.join(", "));
        return ExitCode::FAILURE;
    };
    pin_to_last_cpu();
    let mut scene = Scene::new(BASE);
    let mut next_new = NEW_FLOWS_FROM;
    let mut out = [0u8; OUT_LEN];
    // The table as the measurement finds it.
    fill_flow_table(&mut scene, &mut next_new, &mut out, FILL_PERCENT);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        let new_flows = class.flows == Flows::New;
        let frames = if new_flows {
            let frames: Vec<Vec<u8>> = (next_new..next_new + SPIN_NEW_BATCH)
                .map(|i| scene.frame(class.shape, i))
                .collect();
            next_new += SPIN_NEW_BATCH;
            scene.before_new_flows();
            frames
        } else {
            scene.fixed_frames(class).to_vec()
        };
        for frame in &frames {
            scene
                .dataplane
                .test_run_timed(frame, &mut out, 1)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        if new_flows {
            scene.after_new_flows(frames.len());
            fill_flow_table(&mut scene, &mut next_new, &mut out, FILL_PERCENT);
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let mut quick = false;
    let mut out_dir = None;
    let mut args = std::env::args().skip(1);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("packet_bench loads XDP programs and needs root");
        return ExitCode::FAILURE;
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--out" => match args.next() {
                Some(dir) => out_dir = Some(PathBuf::from(dir)),
                None => {
                    eprintln!("--out needs a directory");
                    return ExitCode::FAILURE;
                }
            },
            "--spin" => {
                let (Some(id), Some(Ok(seconds))) = (args.next(), args.next().map(|s| s.parse()))
                else {
                    eprintln!("usage: packet_bench --spin CLASS SECONDS");
                    return ExitCode::FAILURE;
                };
                return spin(&id, seconds);
            }
            _ => {
                eprintln!("usage: packet_bench [--quick] [--out DIR] | --spin CLASS SECONDS");
                return ExitCode::FAILURE;
            }
        }
    }
    let date = command_output("date", &["-u", "+%Y-%m-%d"]);
    let time = command_output("date", &["-u", "+%H:%M"]);
    let out_dir =
        out_dir.unwrap_or_else(|| xlb_tests::lab::repo_root().join("perf/results").join(&date));

    let plan = Plan::new(quick);
    let results = run(&plan);
    let text = markdown(&plan, &results, &date, &time);
    print!("{text}");
    let written = std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("creating {}: {e}", out_dir.display()))
        .and_then(|()| write(&out_dir, "packet.md", &text))
        .and_then(|()| write(&out_dir, "packet.csv", &csv(&results)))
        .and_then(|()| write(&out_dir, "packet.svg", &svg(&plan, &results)))
        .and_then(|()| write(&out_dir, "limits.md", &limits(&plan, &results)));
    if let Err(error) = written {
        eprintln!("{error}");
        return ExitCode::FAILURE;
    }
    eprintln!(
        "[packet] report written to {}",
        out_dir.join("packet.md").display()
    );
    ExitCode::SUCCESS
}
