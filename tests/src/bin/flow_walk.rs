//! Measures what xlbd's `xlb_flow_table_entries` and its flow-table sweeper cost: the time to
//! count the flow tables' entries (the IPv4 sets by a pass over their mapping; the IPv6 hash
//! map in batches, as the metrics do, and key by key), and the time of a sweep
//! (`FlowSweeper::sweep`: every IPv4 slot read; the IPv6 table read in batches, and what goes
//! deleted), on tables of the default size filled with as many flows as they are sized for.
//! The tables are filled through the real program (BPF_PROG_TEST_RUN of distinct SYNs, IPv4 and
//! IPv6) from every CPU in turn, since the hash map keeps a free list per CPU. Needs root.
//! Prints the fill, the median of five counts each way, the first sweep (which evicts the full
//! IPv6 table down to 80%) and the median of four more (nothing left to remove).
//! Usage: `flow_walk [ENTRIES [FILL]]` (default `limits.flow_table_size` 262144, filled whole;
//! FILL flows of each family in all when given).

use std::time::Instant;

use xlb::{config::Config, dataplane::Dataplane, state::DesiredState};
use xlb_tests::packet::{self, Flow, Flow6, L2, TCP_SYN};

const IF_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xaa];

fn pin_to(cpu: usize) -> bool {
    // SAFETY: the set is zeroed before use and passed with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn main() {
    let size: u32 = std::env::args()
        .nth(1)
        .map_or(262_144, |a| a.parse().expect("ENTRIES is a number"));
    let fill_to: Option<u32> = std::env::args()
        .nth(2)
        .map(|a| a.parse().expect("FILL is a number"));
    let text = format!(
        "[interface]\nname = \"walk0\"\n[limits]\nflow_table_size = {size}\n\
         [[vip]]\nname = \"web\"\naddress = \"10.0.0.10\"\nport = 80\nprotocol = \"tcp\"\n\
         mode = \"l2\"\ntable_size = 251\n  [[vip.backend]]\n  address = \"10.0.1.21\"\n  \
         mac = \"02:00:00:00:01:21\"\n\
         [[vip]]\nname = \"web6\"\naddress = \"fd00::10\"\nport = 80\nprotocol = \"tcp\"\n\
         mode = \"l2\"\ntable_size = 251\n  [[vip.backend]]\n  address = \"fd00:1::21\"\n  \
         mac = \"02:00:00:00:01:22\"\n"
    );
    let config = Config::parse(&text, "flow_walk.toml").unwrap_or_else(|e| panic!("{e}"));
    let state = DesiredState::from_config(&config).unwrap_or_else(|e| panic!("{e}"));
    let mut dataplane = Dataplane::load(&config.limits, xlb::config::MacAddr(IF_MAC))
        .unwrap_or_else(|e| panic!("loading the datapath (root needed): {e}"));
    dataplane.apply(&state).unwrap_or_else(|e| panic!("{e}"));
    let l2 = L2 {
        dst: IF_MAC,
        src: [0x02, 0, 0, 0, 0, 0xcc],
        vlan: None,
    };
    // Entries are stamped with the clock, and stay fresh for the sweeps below.
    let mut sweeper = dataplane
        .flow_sweeper(300)
        .unwrap_or_else(|e| panic!("{e}"));
    sweeper.set_clock(1000).unwrap_or_else(|e| panic!("{e}"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let mut out = vec![0u8; 256];
    let mut n: u32 = 0;
    for cpu in 0..cpus {
        if !pin_to(cpu) {
            continue;
        }
        // Each CPU's share, and a little more: the per-CPU lists are not exactly even.
        let share = fill_to.map_or(size / cpus as u32 + size / 16, |f| f / cpus as u32);
        for _ in 0..share {
            let flow = Flow {
                src: std::net::Ipv4Addr::from(0x0a40_0000 + (n >> 16)),
                dst: "10.0.0.10".parse().unwrap(),
                sport: (n & 0xffff) as u16,
                dport: 80,
            };
            let flow6 = Flow6 {
                src: std::net::Ipv6Addr::new(0xfd00, 0x40, 0, 0, 0, 0, (n >> 16) as u16, 1),
                dst: "fd00::10".parse().unwrap(),
                sport: (n & 0xffff) as u16,
                dport: 80,
            };
            n += 1;
            for frame in [
                packet::tcp4(&l2, &flow, TCP_SYN, b""),
                packet::tcp6(&l2, &flow6, TCP_SYN, b""),
            ] {
                dataplane
                    .test_run(&frame, &mut out)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
    let fill = started.elapsed();
    println!(
        "flow tables sized for {size}: {n} IPv4 and {n} IPv6 SYNs sent on {cpus} CPUs in \
         {fill:.2?}"
    );
    let mut counts = Vec::new();
    for (how, count) in [
        (
            "IPv4 sets, one pass over the mapping (as the metrics)",
            &Dataplane::count_flows as &dyn Fn(&Dataplane) -> _,
        ),
        (
            "IPv6 hash map, batched (as the metrics)",
            &Dataplane::count_flows6,
        ),
        (
            "IPv6 hash map, key by key",
            &Dataplane::count_flows6_key_by_key,
        ),
    ] {
        let mut walks = Vec::new();
        let mut entries = 0;
        for _ in 0..5 {
            let started = Instant::now();
            entries = count(&dataplane).unwrap_or_else(|e| panic!("{e}"));
            walks.push(started.elapsed());
        }
        walks.sort();
        println!(
            "  {how}: {entries} entries, median {:.1?} (min {:.1?}, max {:.1?}, 5 counts)",
            walks[2], walks[0], walks[4]
        );
        counts.push(entries);
    }
    assert_eq!(
        counts[1], counts[2],
        "the two counts of the IPv6 table disagree"
    );

    let mut sweeps = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let report = sweeper.sweep(1000).unwrap_or_else(|e| panic!("{e}"));
        sweeps.push((started.elapsed(), report));
    }
    let (first, report) = sweeps[0];
    println!(
        "  sweep: first {first:.1?} (IPv6 evicted {}, expired {}; left: {} IPv4, {} IPv6)",
        report.evicted, report.expired, report.entries, report.entries_v6
    );
    let mut rest: Vec<_> = sweeps[1..].iter().map(|(took, _)| *took).collect();
    rest.sort();
    println!(
        "  sweep with nothing to remove: median {:.1?} (min {:.1?}, max {:.1?}, 4 sweeps of \
         {} IPv4 and {} IPv6 entries)",
        rest[1], rest[0], rest[3], sweeps[4].1.entries, sweeps[4].1.entries_v6
    );
}
