//! Benchmark of applying a change to a loaded dataplane (needs root): a datapath of many VIPs
//! (10,000 x 10 backends, Maglev tables of 16,381 slots; 1,000 VIPs with `--quick`) takes
//! changes that touch 1, 100 and every VIP (one backend's weight in each touched VIP). For each
//! it reports, separately, the time to build the desired state (every VIP's Maglev table, as
//! `xlbd` does on a reload, and the touched VIPs' tables alone) and the time of
//! `Dataplane::apply`, next to a plain memcpy of as many slots as the change writes: the memory
//! bound of the work. Writes a markdown report to `perf/results/apply-<UTC date>.md` (with
//! `-quick` before `.md` for `--quick`) and prints it.
//!
//! Usage: `apply_bench [--quick] [--out DIR]` (see `perf/apply.sh`).

use std::{
    fmt::Write as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use xlb::{
    config::{Config, MacAddr},
    dataplane::{ApplyReport, Dataplane},
    state::DesiredState,
    synthetic,
};
use xlb_tests::bench_env::{command_output, cpu_model};

/// Backends per VIP.
const BACKENDS: usize = 10;
/// Maglev table size of every VIP (prime).
const TABLE_SIZE: u32 = 16_381;
/// The apply-time targets of the issue.
const TARGET_ONE_VIP: Duration = Duration::from_millis(5);
const TARGET_ALL_VIPS: Duration = Duration::from_secs(2);

/// Sizes of one run of the benchmark.
struct Plan {
    vips: usize,
    /// (VIPs touched per change, runs).
    changes: Vec<(usize, usize)>,
    quick: bool,
}

/// Median, minimum and maximum of a set of timings.
struct Summary {
    median: Duration,
    min: Duration,
    max: Duration,
}

impl Summary {
    fn of(mut times: Vec<Duration>) -> Summary {
        times.sort();
        Summary {
            median: times[times.len() / 2],
            min: times[0],
            max: times[times.len() - 1],
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} – {})",
            ms(self.median),
            ms(self.min),
            ms(self.max)
        )
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.3} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Changes one backend's weight in `touched` VIPs spread over the config, to a weight no
/// earlier change used, so every touched VIP differs from what is applied. Returns the indices.
fn touch(config: &mut Config, touched: usize, serial: usize) -> Vec<usize> {
    let total = config.vips.len();
    let indices: Vec<usize> = (0..touched).map(|i| i * total / touched).collect();
    for &i in &indices {
        config.vips[i].backends[serial % BACKENDS].weight = 101 + serial as u32;
    }
    indices
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

/// One copy of `slots` u32 from one warm buffer to another: what writing the tables costs at
/// memory speed.
fn memcpy_baseline(slots: usize, runs: usize) -> Summary {
    let source: Vec<u32> = (0..slots as u32).collect();
    let mut dest = vec![1u32; slots];
    let times = (0..runs)
        .map(|_| {
            let (_, t) = timed(|| dest.copy_from_slice(std::hint::black_box(&source)));
            std::hint::black_box(&dest);
            t
        })
        .collect();
    Summary::of(times)
}

fn build(config: &Config) -> DesiredState {
    DesiredState::from_config(config).unwrap_or_else(|e| panic!("building the state: {e}"))
}

/// What xlbd does on a change: rebuild only the VIPs whose config changed.
fn reuse(config: &Config, previous: &DesiredState) -> DesiredState {
    DesiredState::from_config_reusing(config, Some(previous))
        .unwrap_or_else(|e| panic!("building the state: {e}"))
}

/// One row of the report.
struct Row {
    touched: usize,
    runs: usize,
    build_all: Summary,
    build_touched: Summary,
    apply: Summary,
    memcpy: Summary,
}

fn run(plan: &Plan) -> (String, Vec<Row>) {
    let mut config = synthetic::config(plan.vips, BACKENDS, TABLE_SIZE);
    let mut setup = String::new();

    let (state, t_build) = timed(|| build(&config));
    let (dataplane, t_load) = timed(|| {
        Dataplane::load(&config.limits, MacAddr([0x02, 0, 0, 0, 0, 0xaa]))
            .unwrap_or_else(|e| panic!("loading the dataplane: {e}"))
    });
    let mut dataplane = dataplane;
    let (report, t_apply) = timed(|| dataplane.apply(&state));
    let report = report.unwrap_or_else(|e| panic!("initial apply: {e}"));
    assert_eq!(report.added, plan.vips);
    // The cost of a reload that changes nothing: the per-VIP comparison alone.
    let mut current = state;
    let noop: Vec<Duration> = (0..5)
        .map(|_| {
            let state = reuse(&config, &current);
            let (report, t) = timed(|| dataplane.apply(&state));
            let report = report.unwrap_or_else(|e| panic!("no-op apply: {e}"));
            assert_eq!(report.unchanged, plan.vips);
            t
        })
        .collect();
    writeln!(
        setup,
        "Initial state: build {} ({} VIP tables), load {}, first apply {} (all VIPs added); \
         apply of an unchanged state: {}.",
        ms(t_build),
        plan.vips,
        ms(t_load),
        ms(t_apply),
        Summary::of(noop)
    )
    .unwrap();

    let mut rows = Vec::new();
    let mut serial = 0;
    for &(touched, runs) in &plan.changes {
        let (mut build_all, mut build_touched, mut apply) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            serial += 1;
            let indices = touch(&mut config, touched, serial);

            let subset = Config {
                interface: config.interface.clone(),
                limits: config.limits,
                encap: config.encap,
                vips: indices.iter().map(|&i| config.vips[i].clone()).collect(),
                policy: Default::default(),
                events: Default::default(),
            };
            let (_, t) = timed(|| build(&subset));
            build_touched.push(t);

            let (state, t) = timed(|| reuse(&config, &current));
            build_all.push(t);
            let (report, t) = timed(|| dataplane.apply(&state));
            apply.push(t);
            current = state;
            let report = report.unwrap_or_else(|e| panic!("apply: {e}"));
            assert_eq!(
                report,
                ApplyReport {
                    changed: touched,
                    unchanged: plan.vips - touched,
                    ..ApplyReport::default()
                }
            );
        }
        rows.push(Row {
            touched,
            runs,
            build_all: Summary::of(build_all),
            build_touched: Summary::of(build_touched),
            apply: Summary::of(apply),
            memcpy: memcpy_baseline(touched * TABLE_SIZE as usize, runs),
        });
        eprintln!("{touched} VIPs touched: done");
    }
    (setup, rows)
}

fn markdown(plan: &Plan, setup: &str, rows: &[Row], date: &str, time: &str) -> String {
    let commit = xlb_tests::bench_env::commit();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = xlb_tests::bench_env::kernel();
    let live_slots = plan.vips * TABLE_SIZE as usize;

    let mut out = String::new();
    let title = if plan.quick { " (quick)" } else { "" };
    writeln!(out, "# Apply benchmark{title}\n").unwrap();
    writeln!(out, "- Date: {date} {time} UTC").unwrap();
    writeln!(out, "- Commit: {commit}").unwrap();
    writeln!(
        out,
        "- Machine: {cpus} CPUs (nproc), {}, kernel {kernel}",
        cpu_model()
    )
    .unwrap();
    writeln!(
        out,
        "- Datapath: {} VIPs x {BACKENDS} backends, table_size {TABLE_SIZE} ({live_slots} live \
         slots, {} MB), maglev_slots {}",
        plan.vips,
        live_slots * 4 / 1_000_000,
        2 * live_slots
    )
    .unwrap();
    writeln!(
        out,
        "- Change: one backend's weight in each touched VIP (so each touched VIP gets a new \
         table, written to a fresh region)"
    )
    .unwrap();
    writeln!(
        out,
        "- Command: `sudo target/release/apply_bench{}` (`perf/apply.sh`)\n",
        if plan.quick { " --quick" } else { "" }
    )
    .unwrap();
    writeln!(out, "{setup}").unwrap();
    writeln!(
        out,
        "Times are median (min – max) over the runs. **Build (xlbd)** is \
         `DesiredState::from_config_reusing` on the whole config with the applied state, which \
         is what `xlbd` runs on every change (it rebuilds only the VIPs whose config changed); \
         **build (touched)** is `DesiredState::from_config` of the touched VIPs alone, for \
         comparison; **apply** is `Dataplane::apply`; **memcpy** copies as many slots as the \
         change writes, between two warm buffers.\n"
    )
    .unwrap();
    writeln!(
        out,
        "| VIPs touched | runs | slots written | build (xlbd) | build (touched) | apply | memcpy | apply / memcpy |"
    )
    .unwrap();
    writeln!(out, "| ---: | ---: | ---: | --- | --- | --- | --- | ---: |").unwrap();
    for row in rows {
        let ratio = row.apply.median.as_secs_f64() / row.memcpy.median.as_secs_f64().max(1e-9);
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {ratio:.0}x |",
            row.touched,
            row.runs,
            row.touched * TABLE_SIZE as usize,
            row.build_all,
            row.build_touched,
            row.apply,
            row.memcpy,
        )
        .unwrap();
    }

    writeln!(out, "\nTargets:\n").unwrap();
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    if let Some(one) = rows.iter().find(|r| r.touched == 1) {
        writeln!(
            out,
            "- One-VIP change applied in under {}: apply {} ({}); build + apply, as xlbd \
             does it, {} ({}).",
            ms(TARGET_ONE_VIP),
            ms(one.apply.median),
            verdict(one.apply.median < TARGET_ONE_VIP),
            ms(one.apply.median + one.build_all.median),
            verdict(one.apply.median + one.build_all.median < TARGET_ONE_VIP),
        )
        .unwrap();
    }
    if let Some(all) = rows.iter().find(|r| r.touched == plan.vips) {
        writeln!(
            out,
            "- {} VIPs changed in under {}: apply {} ({}); build + apply {} ({}).{}",
            plan.vips,
            ms(TARGET_ALL_VIPS),
            ms(all.apply.median),
            verdict(all.apply.median < TARGET_ALL_VIPS),
            ms(all.apply.median + all.build_all.median),
            verdict(all.apply.median + all.build_all.median < TARGET_ALL_VIPS),
            if plan.quick {
                " (quick run: the target is for 10,000 VIPs)"
            } else {
                ""
            }
        )
        .unwrap();
    }
    out
}

fn main() -> ExitCode {
    let args = match xlb_tests::bench_env::BenchArgs::parse("apply_bench") {
        Ok(args) => args,
        Err(code) => return code,
    };
    let (quick, out_dir) = (args.quick, args.out_or_results());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("apply_bench loads the XDP program and needs root");
        return ExitCode::FAILURE;
    }

    let plan = if quick {
        Plan {
            vips: 1000,
            changes: vec![(1, 20), (100, 20), (1000, 5)],
            quick,
        }
    } else {
        Plan {
            vips: 10_000,
            changes: vec![(1, 20), (100, 20), (10_000, 5)],
            quick,
        }
    };

    let date = command_output("date", &["-u", "+%Y-%m-%d"]);
    let time = command_output("date", &["-u", "+%H:%M"]);

    let (setup, rows) = run(&plan);
    let text = markdown(&plan, &setup, &rows, &date, &time);
    print!("{text}");
    let name = format!("apply-{date}{}.md", if quick { "-quick" } else { "" });
    let path = out_dir.join(name);
    if let Err(error) =
        std::fs::create_dir_all(&out_dir).and_then(|()| std::fs::write(&path, &text))
    {
        eprintln!("writing {}: {error}", path.display());
        return ExitCode::FAILURE;
    }
    eprintln!("report written to {}", path.display());
    ExitCode::SUCCESS
}
