//! Measures what xlbd's `xlb_flow_table_entries` and its flow-table sweeper cost: the time to
//! count the flow table's entries (in batches, as the metrics do, and key by key), and the
//! time of a sweep (`FlowSweeper::sweep`: read in batches, delete what goes), on a full table
//! of the default size. The table is filled through the real program (BPF_PROG_TEST_RUN of
//! distinct SYNs) from every CPU in turn, since the hash map keeps a free list per CPU.
//! Needs root. Prints the fill, the median of five counts each way, the first sweep (which
//! evicts a full table down to 80%) and the median of four more (nothing left to remove).
//! Usage: `flow_walk [ENTRIES [FILL]]` (default 262144 entries, filled whole; FILL flows
//! in all when given).

use std::time::Instant;

use xlb::{config::Config, dataplane::Dataplane, state::DesiredState};
use xlb_tests::packet::{self, Flow, L2, TCP_SYN};

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
         mac = \"02:00:00:00:01:21\"\n"
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
            n += 1;
            dataplane
                .test_run(&packet::tcp4(&l2, &flow, TCP_SYN, b""), &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let fill = started.elapsed();
    println!("flow table of {size}: {n} SYNs sent on {cpus} CPUs in {fill:.2?}");
    let mut counts = Vec::new();
    for (how, count) in [
        (
            "batched (as the metrics)",
            &Dataplane::count_flows as &dyn Fn(&Dataplane) -> _,
        ),
        ("key by key", &Dataplane::count_flows_key_by_key),
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
    assert_eq!(counts[0], counts[1], "the two counts disagree");

    let mut sweeps = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let report = sweeper.sweep(1000).unwrap_or_else(|e| panic!("{e}"));
        sweeps.push((started.elapsed(), report));
    }
    let (first, report) = sweeps[0];
    println!(
        "  sweep: first {first:.1?} (evicted {}, expired {}, {} entries left)",
        report.evicted, report.expired, report.entries
    );
    let mut rest: Vec<_> = sweeps[1..].iter().map(|(took, _)| *took).collect();
    rest.sort();
    println!(
        "  sweep with nothing to remove: median {:.1?} (min {:.1?}, max {:.1?}, 4 sweeps of \
         {} entries)",
        rest[1], rest[0], rest[3], sweeps[4].1.entries
    );
}
