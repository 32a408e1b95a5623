//! Benchmark of the health checker (`xlb::health`): 10,000 TCP targets probed every second
//! (1,000 with `--quick`) against 100 listeners on loopback, run for 20 s (5 s with `--quick`)
//! after a warm-up. Reports the CPU the checker's one thread uses, as a percentage of one core
//! (median over 1 s windows, read from `/proc/self/task/<tid>/schedstat`), the probes per second
//! it achieved against the expected rate, and the transitions (there should be none: every
//! listener stays up). Baseline in the same run: a checker with no targets, for as long.
//! Writes a markdown report to `perf/results/health-<UTC date>.md` (with `-quick` before `.md`
//! for `--quick`) and prints it.
//!
//! Usage: `health_bench [--quick] [--out DIR]`. Root is not needed, but it lets the bench raise
//! the file-descriptor limit.

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use xlb::health::{
    Check, Checker, Settings, Stats, THREAD_NAME, Target, Transition,
    crossbeam_channel::{Receiver, unbounded},
};

/// Listening sockets the targets are spread over (on 127.0.0.1, one port each).
const LISTENERS: usize = 100;
/// Probe interval of every target.
const INTERVAL: Duration = Duration::from_secs(1);
/// Time given to the first probes (spread over one interval) before measuring.
const WARM_UP: Duration = Duration::from_secs(3);
/// The aim of the issue: "a small fraction of a core".
const TARGET_CPU_PERCENT: f64 = 25.0;

/// Sizes of one run.
struct Plan {
    targets: usize,
    windows: usize,
    quick: bool,
}

/// What one measuring phase saw, window by window.
struct Phase {
    /// CPU of the checker thread per window, percent of one core.
    cpu: Vec<f64>,
    /// Probes completed per second, per window.
    rate: Vec<f64>,
    /// Counters at the start and end of measuring.
    before: Stats,
    after: Stats,
    /// Transitions received while measuring.
    transitions: usize,
    /// Largest number of probe sockets seen open at a window's end.
    max_open: u64,
    /// CPU of the whole process over the phase (listeners' accept thread included), percent
    /// of one core.
    process_cpu: f64,
    /// CPU of the checker thread over the whole phase, nanoseconds.
    thread_cpu_ns: u64,
    wall: Duration,
}

/// The nth element of a sorted copy: median, min and max of a series.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
    )
}

/// Raises the soft file-descriptor limit to the hard one, and the hard one to `want` if we may.
fn raise_nofile(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max.max(want),
        rlim_max: limit.rlim_max.max(want),
    };
    // SAFETY: setrlimit reads the struct we own; failing (not root) leaves the limit as it was.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        let soft = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) };
    }
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur
}

/// Listeners that accept (and close) every connection, in one thread polling all of them.
struct Listeners {
    addresses: Vec<SocketAddr>,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listeners {
    fn start(count: usize) -> Listeners {
        let listeners: Vec<TcpListener> = (0..count)
            .map(|_| {
                let l = TcpListener::bind("127.0.0.1:0").expect("binding a listener");
                l.set_nonblocking(true).unwrap();
                l
            })
            .collect();
        let addresses = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (accepted, stop) = (accepted.clone(), stop.clone());
            move || {
                let mut fds: Vec<libc::pollfd> = listeners
                    .iter()
                    .map(|l| libc::pollfd {
                        fd: l.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: `fds` is a live array of `fds.len()` pollfd entries for sockets
                    // owned by `listeners`, which outlives the call.
                    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
                    if n <= 0 {
                        continue;
                    }
                    for (pollfd, listener) in fds.iter_mut().zip(&listeners) {
                        if pollfd.revents == 0 {
                            continue;
                        }
                        pollfd.revents = 0;
                        while listener.accept().is_ok() {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
        Listeners {
            addresses,
            accepted,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread id of the (one) health checker thread.
fn checker_tid() -> Option<String> {
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|task| {
        let task = task.ok()?;
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        (comm.trim() == THREAD_NAME).then(|| task.file_name().to_string_lossy().into_owned())
    })
}

/// CPU time the thread has used, in nanoseconds: schedstat's first field, or utime + stime
/// from stat (10 ms ticks) where schedstat is missing.
fn thread_cpu_ns(tid: &str) -> u64 {
    if let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        && let Some(ns) = text.split_whitespace().next().and_then(|v| v.parse().ok())
    {
        return ns;
    }
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    fields.iter().sum::<u64>() * 1_000_000_000 / hz
}

/// CPU time of the whole process (all threads), in nanoseconds.
fn process_cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// Measures the running checker over `windows` windows of one second.
fn measure(checker: &Checker, transitions: &Receiver<Transition>, windows: usize) -> Phase {
    let tid = checker_tid().expect("the health checker thread is running");
    // Transitions before now belong to the warm-up.
    let _ = transitions.try_iter().count();
    let before = checker.stats();
    let start = Instant::now();
    let process_start = process_cpu_ns();
    let thread_start = thread_cpu_ns(&tid);
    let (mut cpu, mut rate, mut max_open) = (Vec::new(), Vec::new(), 0);
    let (mut last_cpu, mut last_done, mut last_at) = (
        thread_start,
        before.probes_succeeded + before.probes_failed,
        start,
    );
    for i in 1..=windows {
        let next = start + Duration::from_secs(i as u64);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        let used = thread_cpu_ns(&tid);
        let stats = checker.stats();
        let done = stats.probes_succeeded + stats.probes_failed;
        let wall = now.duration_since(last_at).as_secs_f64();
        cpu.push((used - last_cpu) as f64 / 1e9 / wall * 100.0);
        rate.push((done - last_done) as f64 / wall);
        max_open = max_open.max(stats.open_sockets);
        (last_cpu, last_done, last_at) = (used, done, now);
    }
    let wall = start.elapsed();
    Phase {
        cpu,
        rate,
        before,
        after: checker.stats(),
        transitions: transitions.try_iter().count(),
        max_open,
        process_cpu: (process_cpu_ns() - process_start) as f64 / 1e9 / wall.as_secs_f64() * 100.0,
        thread_cpu_ns: last_cpu - thread_start,
        wall,
    }
}

fn run(plan: &Plan) -> (Phase, Phase, u64, usize) {
    let listeners = Listeners::start(LISTENERS);

    eprintln!("baseline: a checker with no targets, {} s", plan.windows);
    let (tx, rx) = unbounded();
    let idle = Checker::start(tx).expect("starting the checker");
    idle.set_targets(Vec::new());
    std::thread::sleep(Duration::from_millis(100));
    let baseline = measure(&idle, &rx, plan.windows);
    drop(idle);

    eprintln!(
        "load: {} TCP targets every {} s, {} s warm-up then {} s",
        plan.targets,
        INTERVAL.as_secs(),
        WARM_UP.as_secs(),
        plan.windows
    );
    let (tx, rx) = unbounded();
    let checker = Checker::start(tx).expect("starting the checker");
    let targets = (0..plan.targets)
        .map(|i| Target {
            id: i as u64,
            address: listeners.addresses[i % LISTENERS],
            settings: Settings {
                check: Check::Tcp,
                interval: INTERVAL,
                ..Settings::default()
            },
            bind: None,
            mark: None,
        })
        .collect();
    checker.set_targets(targets);
    std::thread::sleep(WARM_UP);
    let warm_up_transitions = rx.try_iter().count();
    let load = measure(&checker, &rx, plan.windows);
    drop(checker);
    let accepted = listeners.accepted.load(Ordering::Relaxed);
    (baseline, load, accepted, warm_up_transitions)
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

#[expect(
    clippy::too_many_arguments,
    reason = "one report, built from everything the run measured"
)]
fn markdown(
    plan: &Plan,
    baseline: &Phase,
    load: &Phase,
    accepted: u64,
    warm_up_transitions: usize,
    nofile: u64,
    date: &str,
    time: &str,
) -> String {
    let repo = xlb_tests::lab::repo_root();
    let repo = repo.to_string_lossy();
    let commit = command_output("git", &["-C", &repo, "rev-parse", "--short", "HEAD"]);
    let dirty = command_output("git", &["-C", &repo, "status", "--porcelain"]);
    let dirty = if dirty.is_empty() || dirty == "unknown" {
        ""
    } else {
        " (with uncommitted changes)"
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());

    let expected = plan.targets as f64 / INTERVAL.as_secs_f64();
    let (cpu_med, cpu_min, cpu_max) = spread(&load.cpu);
    let (base_med, base_min, base_max) = spread(&baseline.cpu);
    let (rate_med, rate_min, rate_max) = spread(&load.rate);
    let delta = |f: fn(&Stats) -> u64| f(&load.after) - f(&load.before);
    let done = delta(|s| s.probes_succeeded) + delta(|s| s.probes_failed);
    let average_rate = done as f64 / load.wall.as_secs_f64();
    let per_probe_us = load.thread_cpu_ns as f64 / 1e3 / done.max(1) as f64;

    let mut out = String::new();
    let title = if plan.quick { " (quick)" } else { "" };
    writeln!(out, "# Health checker benchmark{title}\n").unwrap();
    writeln!(out, "- Date: {date} {time} UTC").unwrap();
    writeln!(out, "- Commit: {commit}{dirty}").unwrap();
    writeln!(
        out,
        "- Machine: {cpus} CPUs (nproc), {}, kernel {kernel}",
        cpu_model()
    )
    .unwrap();
    writeln!(
        out,
        "- Load: {} TCP targets, interval {} s, timeout 1 s, rise 2, fall 3, against {LISTENERS} \
         listeners on 127.0.0.1 ({} targets each) accepting in one other thread; \
         RLIMIT_NOFILE {nofile}",
        plan.targets,
        INTERVAL.as_secs(),
        plan.targets / LISTENERS
    )
    .unwrap();
    writeln!(
        out,
        "- Run: {} s warm-up, then {} windows of 1 s; baseline: a checker with no targets for \
         as long, in the same run",
        WARM_UP.as_secs(),
        plan.windows
    )
    .unwrap();
    writeln!(
        out,
        "- Command: `cargo build --release -p xlb-tests --bin health_bench && \
         target/release/health_bench{}`\n",
        if plan.quick { " --quick" } else { "" }
    )
    .unwrap();

    writeln!(
        out,
        "CPU is the checker thread's own (`/proc/self/task/<tid>/schedstat`), in percent of one \
         core, median (min – max) over the 1 s windows. On loopback the kernel runs both ends' \
         TCP handshake and teardown in the softirq of the sending thread, so the figure includes \
         the listeners' kernel-side work too: against remote backends the checker's share is \
         lower.\n"
    )
    .unwrap();
    writeln!(
        out,
        "| | checker thread CPU | probes/s | probes/s expected |"
    )
    .unwrap();
    writeln!(out, "| --- | --- | --- | ---: |").unwrap();
    writeln!(
        out,
        "| baseline (no targets) | {base_med:.2}% ({base_min:.2}% – {base_max:.2}%) | 0 | 0 |"
    )
    .unwrap();
    writeln!(
        out,
        "| {} targets | {cpu_med:.1}% ({cpu_min:.1}% – {cpu_max:.1}%) | {rate_med:.0} \
         ({rate_min:.0} – {rate_max:.0}) | {expected:.0} |",
        plan.targets
    )
    .unwrap();
    writeln!(out).unwrap();
    writeln!(
        out,
        "- Probes completed while measuring: {done} in {:.1} s, {average_rate:.0}/s on average \
         ({:.1}% of expected); {:.1} us of checker CPU per probe.",
        load.wall.as_secs_f64(),
        average_rate / expected * 100.0,
        per_probe_us
    )
    .unwrap();
    writeln!(
        out,
        "- Failed probes: {}; deferred for want of a socket slot: {}; local errors: {}; most \
         sockets open at a window's end: {}.",
        delta(|s| s.probes_failed),
        delta(|s| s.probes_deferred),
        delta(|s| s.local_errors),
        load.max_open
    )
    .unwrap();
    writeln!(
        out,
        "- Transitions: {} while measuring (should be 0), {warm_up_transitions} during the \
         warm-up.",
        load.transitions
    )
    .unwrap();
    writeln!(
        out,
        "- Whole process while measuring (checker, accept thread, this bench): {:.1}% of one \
         core; connections accepted over the run: {accepted}.",
        load.process_cpu
    )
    .unwrap();

    writeln!(out, "\nTargets:\n").unwrap();
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    writeln!(
        out,
        "- Checker thread under {TARGET_CPU_PERCENT:.0}% of one core: {cpu_med:.1}% ({}).{}",
        verdict(cpu_med < TARGET_CPU_PERCENT),
        if plan.quick {
            " (quick run: the aim is for 10,000 targets)"
        } else {
            ""
        }
    )
    .unwrap();
    writeln!(
        out,
        "- Probe rate within 2% of expected: {:.1}% ({}).",
        average_rate / expected * 100.0,
        verdict((average_rate / expected - 1.0).abs() < 0.02)
    )
    .unwrap();
    writeln!(
        out,
        "- No transitions after warm-up: {} ({}).",
        load.transitions,
        verdict(load.transitions == 0)
    )
    .unwrap();
    out
}

fn main() -> ExitCode {
    let mut quick = false;
    let mut out_dir = xlb_tests::lab::repo_root().join("perf/results");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--out" => match args.next() {
                Some(dir) => out_dir = PathBuf::from(dir),
                None => {
                    eprintln!("--out needs a directory");
                    return ExitCode::FAILURE;
                }
            },
            _ => {
                eprintln!("usage: health_bench [--quick] [--out DIR]");
                return ExitCode::FAILURE;
            }
        }
    }
    let plan = if quick {
        Plan {
            targets: 1000,
            windows: 5,
            quick,
        }
    } else {
        Plan {
            targets: 10_000,
            windows: 20,
            quick,
        }
    };
    // Probe sockets (up to MAX_OPEN_PROBES), accepted sockets and the listeners.
    let nofile = raise_nofile(65_536);
    let date = command_output("date", &["-u", "+%Y-%m-%d"]);
    let time = command_output("date", &["-u", "+%H:%M"]);

    let (baseline, load, accepted, warm_up_transitions) = run(&plan);
    let text = markdown(
        &plan,
        &baseline,
        &load,
        accepted,
        warm_up_transitions,
        nofile,
        &date,
        &time,
    );
    print!("{text}");
    let name = format!("health-{date}{}.md", if quick { "-quick" } else { "" });
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
