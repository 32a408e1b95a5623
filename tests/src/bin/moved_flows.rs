//! Measures how much of a VIP's traffic moves when one of its N backends fails, on the real
//! Maglev tables xlbd builds: a config is parsed and turned into the desired state as the
//! daemon does, then built again with the failed backend at weight 0 (what the health monitor
//! does to a down backend, see `xlb::monitor`), and the two tables are compared slot by slot.
//! New flows hash uniformly over the slots, so the share of slots that changed backend is the
//! share of new flows that go elsewhere; established flows stay where the flow table pinned
//! them, except those of the failed backend. Every backend is failed in turn (at most 50, spread
//! over the set) and the results averaged. Nothing is timed: the figures are exact.
//!
//! Writes `perf/results/moved-flows-<UTC date>.md` (or into `--out DIR`) and prints it.
//! Usage: `moved_flows [--out DIR]`.

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use xlb::{config::Config, state::DesiredState};
use xlb_tests::bench_env::command_output;

/// Backend counts measured with the default table size.
const SIZES: [usize; 5] = [3, 5, 10, 100, 1000];
/// Backend counts measured again with a table of about 1,000 slots per backend, to see whether
/// a larger table reduces the collateral moves of large sets.
const LARGE_TABLE_SIZES: [usize; 2] = [100, 1000];
/// Most failures tried per size (spread evenly over the backends).
const MAX_TRIALS: usize = 50;
/// The default table size (the one a VIP without `table_size` gets).
const DEFAULT_TABLE: u32 = xlb::maglev::DEFAULT_TABLE_SIZE;

fn config(backends: usize, table_size: u32, weights: &dyn Fn(usize) -> u32) -> Config {
    let mut text = format!(
        "[interface]\nname = \"bench0\"\n[limits]\nmax_backends = 100000\n\
         [[vip]]\nname = \"web\"\naddress = \"10.0.0.1\"\nport = 80\nprotocol = \"tcp\"\n\
         mode = \"l2\"\ntable_size = {table_size}\n",
    );
    for k in 0..backends {
        let _ = write!(
            text,
            "[[vip.backend]]\naddress = \"10.{}.{}.{}\"\nmac = \"02:00:00:00:00:01\"\nweight = {}\n",
            1 + k / 65536,
            k / 256 % 256,
            k % 256,
            weights(k)
        );
    }
    Config::parse(&text, "moved_flows").unwrap_or_else(|e| panic!("{e}"))
}

/// The VIP's table: one backend index per slot.
fn table(config: &Config) -> Vec<u32> {
    let state = DesiredState::from_config(config).unwrap_or_else(|e| panic!("{e}"));
    let vip = state.vips.values().next().expect("one VIP");
    vip.table.to_vec()
}

/// One failure: the share of slots that changed backend, and of those, the share that did not
/// belong to the failed backend (collateral moves; 0 is Maglev's ideal).
fn fail_one(backends: usize, table_size: u32, failed: usize, before: &[u32]) -> (f64, f64) {
    let after = table(&config(backends, table_size, &|k| {
        if k == failed { 0 } else { 100 }
    }));
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let collateral = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b && **a != failed as u32)
        .count();
    (
        moved as f64 / before.len() as f64,
        collateral as f64 / before.len() as f64,
    )
}

struct Row {
    backends: usize,
    table_size: u32,
    trials: usize,
    mean: f64,
    min: f64,
    max: f64,
    collateral_mean: f64,
    collateral_max: f64,
}

fn measure(backends: usize, table_size: u32) -> Row {
    let before = table(&config(backends, table_size, &|_| 100));
    let trials = backends.min(MAX_TRIALS);
    let mut moved = Vec::with_capacity(trials);
    let mut collateral = Vec::with_capacity(trials);
    for t in 0..trials {
        let failed = t * backends / trials;
        let (m, c) = fail_one(backends, table_size, failed, &before);
        moved.push(m);
        collateral.push(c);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let fold = |v: &[f64], f: fn(f64, f64) -> f64, init| v.iter().copied().fold(init, f);
    Row {
        backends,
        table_size,
        trials,
        mean: mean(&moved),
        min: fold(&moved, f64::min, f64::INFINITY),
        max: fold(&moved, f64::max, 0.0),
        collateral_mean: mean(&collateral),
        collateral_max: fold(&collateral, f64::max, 0.0),
    }
}

fn report(rows: &[Row]) -> String {
    let commit = xlb_tests::bench_env::commit();
    let mut out = String::new();
    let _ = writeln!(out, "# Flows moved when one backend fails\n");
    let _ = writeln!(
        out,
        "- Date: {} UTC",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M"])
    );
    let _ = writeln!(out, "- Commit: {commit}");
    let _ = writeln!(
        out,
        "- Method: one VIP, N backends of weight 100, table size {DEFAULT_TABLE} (the default) \
         unless said otherwise; the \
         desired state built from the parsed config as xlbd builds it, then again with one backend \
         at weight 0 (what a down backend becomes); slots compared one by one. New flows hash \
         uniformly over the slots, so **moved** is the share of new flows sent elsewhere than \
         before. **Collateral** is the share of slots that moved although their backend is \
         alive (Maglev's ideal: 0). Each backend failed in turn (at most {MAX_TRIALS}, spread \
         over the set). Established flows do not move at all (the flow table pins them), except \
         those of the failed backend. A backend that comes back gets the same slots again \
         (the table is a function of the backend set), so recovery moves the same share back.\n\
         - Command: `cargo run --release -p xlb-tests --bin \
         moved_flows`\n"
    );
    let _ = writeln!(
        out,
        "| N | table size | failures tried | moved, mean | 1/N | moved / (1/N) | min – max | collateral, mean | collateral, max |"
    );
    let _ = writeln!(
        out,
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
    );
    for r in rows {
        let ideal = 1.0 / r.backends as f64;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.4}% | {:.4}% | {:.3} | {:.4}% – {:.4}% | {:.4}% | {:.4}% |",
            r.backends,
            r.table_size,
            r.trials,
            100.0 * r.mean,
            100.0 * ideal,
            r.mean / ideal,
            100.0 * r.min,
            100.0 * r.max,
            100.0 * r.collateral_mean,
            100.0 * r.collateral_max,
        );
    }
    out
}

fn main() -> ExitCode {
    let mut out_dir = xlb_tests::lab::repo_root().join("perf/results");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => match args.next() {
                Some(dir) => out_dir = PathBuf::from(dir),
                None => {
                    eprintln!("--out needs a directory");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("usage: moved_flows [--out DIR]");
                return ExitCode::from(2);
            }
        }
    }
    let mut rows: Vec<Row> = SIZES.iter().map(|&n| measure(n, DEFAULT_TABLE)).collect();
    for n in LARGE_TABLE_SIZES {
        let size = ((1000 * n as u32).max(DEFAULT_TABLE)..)
            .find(|&m| xlb::maglev::is_prime(m))
            .expect("a prime");
        rows.push(measure(n, size));
    }
    let text = report(&rows);
    print!("{text}");
    let date = command_output("date", &["-u", "+%Y-%m-%d"]);
    let path = out_dir.join(format!("moved-flows-{date}.md"));
    if let Err(error) =
        std::fs::create_dir_all(&out_dir).and_then(|()| std::fs::write(&path, &text))
    {
        eprintln!("{}: {error}", path.display());
        return ExitCode::FAILURE;
    }
    eprintln!("written to {}", path.display());
    ExitCode::SUCCESS
}
