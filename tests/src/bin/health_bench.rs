//! Benchmark of the health checker (`xlb::health`): 10,000 TCP targets probed every second
//! (1,000 with `--quick`) against 100 listeners on loopback, measured over 20 windows of 1 s (5
//! with `--quick`) after a warm-up. Reports the CPU the checker's one thread uses, as a
//! percentage of one core (median over the windows, from `/proc/self/task/<tid>/schedstat`),
//! the probes per second it achieved against the expected rate, and the transitions (there
//! should be none: every listener stays up). Two baselines in the same run, as long each: a
//! checker with no targets (the idle loop), and a floor: one thread doing only a blocking
//! connect and close at the same rate, the kernel's share that no event loop can avoid.
//! Writes a markdown report to `perf/results/health-<UTC date>.md` (with `-quick` before `.md`
//! for `--quick`) and prints it.
//!
//! Usage: `health_bench [--quick] [--out DIR]`. Root is not needed, but it lets the bench raise
//! the file-descriptor limit.

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use xlb::health::{
    Check, Checker, Settings, Stats, THREAD_NAME, Target, crossbeam_channel::unbounded,
};
use xlb_tests::bench_env::{command_output, cpu_model};

/// Listening sockets the targets are spread over (on 127.0.0.1, one port each).
const LISTENERS: usize = 100;
/// Probe interval of every target.
const INTERVAL: Duration = Duration::from_secs(1);
/// Time given to the first probes (spread over one interval) before measuring.
const WARM_UP: Duration = Duration::from_secs(3);
/// The aim of the issue: "a small fraction of a core".
const TARGET_CPU_PERCENT: f64 = 25.0;
/// Most the checker's CPU per probe may be above the floor's (a bare blocking connect + close).
const MAX_OVERHEAD: f64 = 1.5;

/// Sizes of one run.
struct Plan {
    targets: usize,
    windows: usize,
    quick: bool,
}

/// One thread watched over 1 s windows.
struct Series {
    /// CPU per window, percent of one core.
    cpu: Vec<f64>,
    /// Time runnable but waiting for a CPU per window, percent: other load on the machine.
    wait: Vec<f64>,
    /// Work done (probes, connects) per second, per window.
    rate: Vec<f64>,
    /// CPU over the whole series, nanoseconds.
    cpu_ns: u64,
    /// Work done over the whole series.
    done: u64,
    wall: Duration,
}

impl Series {
    fn cpu_per_unit_us(&self) -> f64 {
        self.cpu_ns as f64 / 1e3 / self.done.max(1) as f64
    }
}

/// The median, min and max of a series of percentages, as text.
fn percent(values: &[f64]) -> String {
    let (median, min, max) = spread(values);
    format!("{median:.1}% ({min:.1}% – {max:.1}%)")
}

/// The median, min and max of a series of rates, as text.
fn per_second(values: &[f64]) -> String {
    let (median, min, max) = spread(values);
    format!("{median:.0} ({min:.0} – {max:.0})")
}

/// The median, min and max of a series.
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

/// Raises the soft file-descriptor limit to the hard one, and both to `want` if we may.
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

/// The floor: one thread doing what a TCP probe must (a blocking connect, then close) at a
/// fixed rate, with no event loop, no timers and no state.
struct Floor {
    tid: String,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Floor {
    fn start(addresses: Vec<SocketAddr>, per_second: u64) -> Floor {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn({
            let (done, stop) = (done.clone(), stop.clone());
            move || {
                // SAFETY: gettid has no preconditions.
                let _ = tid_tx.send(unsafe { libc::gettid() }.to_string());
                let start = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = start.elapsed().as_micros() as u64 * per_second / 1_000_000;
                    while n < due {
                        let _ = TcpStream::connect(addresses[n as usize % addresses.len()]);
                        n += 1;
                        done.store(n, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Floor {
            tid: tid_rx.recv().expect("the floor thread's id"),
            done,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Floor {
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

/// CPU time a thread has used and time it waited runnable for a CPU, in nanoseconds
/// (`schedstat`); where schedstat is missing, utime + stime from `stat` (10 ms ticks) and no
/// wait.
fn thread_times(tid: &str) -> (u64, u64) {
    if let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")) {
        let fields: Vec<u64> = text
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if fields.len() >= 2 {
            return (fields[0], fields[1]);
        }
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
    (fields.iter().sum::<u64>() * 1_000_000_000 / hz, 0)
}

/// Watches thread `tid` over `windows` windows of one second; `done` counts its work and
/// `each` runs at the end of every window.
fn sample(tid: &str, windows: usize, done: &dyn Fn() -> u64, mut each: impl FnMut()) -> Series {
    let start = Instant::now();
    let (cpu_start, wait_start) = thread_times(tid);
    let done_start = done();
    let (mut cpu, mut wait, mut rate) = (Vec::new(), Vec::new(), Vec::new());
    let (mut last_cpu, mut last_wait, mut last_done, mut last_at) =
        (cpu_start, wait_start, done_start, start);
    for i in 1..=windows {
        let next = start + Duration::from_secs(i as u64);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        let (used, waited) = thread_times(tid);
        let count = done();
        let wall = now.duration_since(last_at).as_secs_f64();
        cpu.push((used - last_cpu) as f64 / 1e9 / wall * 100.0);
        wait.push((waited - last_wait) as f64 / 1e9 / wall * 100.0);
        rate.push((count - last_done) as f64 / wall);
        each();
        (last_cpu, last_wait, last_done, last_at) = (used, waited, count, now);
    }
    Series {
        cpu,
        wait,
        rate,
        cpu_ns: last_cpu - cpu_start,
        done: last_done - done_start,
        wall: start.elapsed(),
    }
}

/// The one-minute load average, as text.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Everything one run measured.
struct Run {
    baseline: Series,
    floor: Series,
    load: Series,
    /// Checker counters at the start and end of the measured load.
    before: Stats,
    after: Stats,
    /// Transitions while measuring, and during the warm-up.
    transitions: usize,
    warm_up_transitions: usize,
    /// Most probe sockets seen open at a window's end.
    max_open: u64,
    /// Load average at the start and end of the measured load.
    load_average: (String, String),
    accepted: u64,
}

fn completed(stats: &Stats) -> u64 {
    stats.probes_succeeded + stats.probes_failed
}

fn run(plan: &Plan) -> Run {
    let listeners = Listeners::start(LISTENERS);
    let per_second = (plan.targets as f64 / INTERVAL.as_secs_f64()) as u64;

    eprintln!("baseline: a checker with no targets, {} s", plan.windows);
    let (tx, _rx) = unbounded();
    let idle = Checker::start(tx).expect("starting the checker");
    idle.set_targets(Vec::new());
    std::thread::sleep(Duration::from_millis(100));
    let tid = checker_tid().expect("the health checker thread is running");
    let baseline = sample(&tid, plan.windows, &|| 0, || {});
    drop(idle);

    eprintln!(
        "floor: blocking connect + close, {per_second}/s, {} s",
        plan.windows
    );
    let floor = Floor::start(listeners.addresses.clone(), per_second);
    std::thread::sleep(Duration::from_millis(500));
    let floor_series = sample(
        &floor.tid,
        plan.windows,
        &|| floor.done.load(Ordering::Relaxed),
        || {},
    );
    drop(floor);

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
    let tid = checker_tid().expect("the health checker thread is running");
    let before = checker.stats();
    let load_start = load_average();
    let mut max_open = 0;
    let load = sample(&tid, plan.windows, &|| completed(&checker.stats()), || {
        max_open = max_open.max(checker.stats().open_sockets)
    });
    let after = checker.stats();
    let transitions = rx.try_iter().count();
    let load_end = load_average();
    drop(checker);
    Run {
        baseline,
        floor: floor_series,
        load,
        before,
        after,
        transitions,
        warm_up_transitions,
        max_open,
        load_average: (load_start, load_end),
        accepted: listeners.accepted.load(Ordering::Relaxed),
    }
}

fn markdown(plan: &Plan, run: &Run, nofile: u64, date: &str, time: &str) -> String {
    let commit = xlb_tests::bench_env::commit();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = xlb_tests::bench_env::kernel();

    let expected = plan.targets as f64 / INTERVAL.as_secs_f64();
    let load = &run.load;
    let achieved = load.done as f64 / load.wall.as_secs_f64();
    let (cpu_median, ..) = spread(&load.cpu);
    let overhead = load.cpu_per_unit_us() / run.floor.cpu_per_unit_us().max(1e-9);
    let delta = |f: fn(&Stats) -> u64| f(&run.after) - f(&run.before);

    let mut out = String::new();
    let title = if plan.quick { " (quick)" } else { "" };
    writeln!(out, "# Health checker benchmark{title}\n").unwrap();
    writeln!(out, "- Date: {date} {time} UTC").unwrap();
    writeln!(out, "- Commit: {commit}").unwrap();
    writeln!(
        out,
        "- Machine: {cpus} CPUs (nproc), {}, kernel {kernel}; load average {} at the start of \
         the measured load, {} at its end",
        cpu_model(),
        run.load_average.0,
        run.load_average.1
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
        "- Run: three phases of {} windows of 1 s each, one after the other: **baseline**, a \
         checker with no targets; **floor**, one thread doing only what a TCP probe must (a \
         blocking `connect` to the same listeners, then `close`) at the same rate, with no event \
         loop; **checker**, after a {} s warm-up",
        plan.windows,
        WARM_UP.as_secs()
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
        "CPU is the measured thread's own (`/proc/self/task/<tid>/schedstat`), in percent of \
         one core, median (min – max) over the windows; **run-queue wait** is the time it was \
         runnable but waiting for a CPU (other load on the machine: when it is high, the thread \
         was starved and the figures are not the checker's). On loopback the kernel runs both \
         ends' TCP handshake and teardown in the softirq of the sending thread, so both the \
         floor and the checker include the listeners' kernel-side work: the floor is the part \
         no user-space design can remove, and **checker / floor** is what the event loop, \
         timers and state cost on top of it.\n"
    )
    .unwrap();
    writeln!(
        out,
        "| phase | thread CPU | run-queue wait | per second | CPU per probe |"
    )
    .unwrap();
    writeln!(out, "| --- | --- | --- | --- | ---: |").unwrap();
    writeln!(
        out,
        "| baseline: checker, no targets | {} | {} | 0 | – |",
        percent(&run.baseline.cpu),
        percent(&run.baseline.wait)
    )
    .unwrap();
    writeln!(
        out,
        "| floor: blocking connect + close | {} | {} | {} | {:.1} us |",
        percent(&run.floor.cpu),
        percent(&run.floor.wait),
        per_second(&run.floor.rate),
        run.floor.cpu_per_unit_us()
    )
    .unwrap();
    writeln!(
        out,
        "| checker: {} targets | {} | {} | {} | {:.1} us |",
        plan.targets,
        percent(&load.cpu),
        percent(&load.wait),
        per_second(&load.rate),
        load.cpu_per_unit_us()
    )
    .unwrap();
    writeln!(out).unwrap();
    writeln!(
        out,
        "- Probes completed while measuring: {} in {:.1} s, {achieved:.0}/s on average against \
         {expected:.0}/s expected ({:.1}%); checker / floor CPU per probe: {overhead:.2}x.",
        load.done,
        load.wall.as_secs_f64(),
        achieved / expected * 100.0,
    )
    .unwrap();
    writeln!(
        out,
        "- Failed probes: {}; deferred for want of a socket slot: {}; local errors: {}; most \
         sockets open at a window's end: {}.",
        delta(|s| s.probes_failed),
        delta(|s| s.probes_deferred),
        delta(|s| s.local_errors),
        run.max_open
    )
    .unwrap();
    writeln!(
        out,
        "- Transitions: {} while measuring (should be 0), {} during the warm-up; connections \
         accepted by the listeners over the whole run: {}.",
        run.transitions, run.warm_up_transitions, run.accepted
    )
    .unwrap();

    writeln!(out, "\nTargets:\n").unwrap();
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    writeln!(
        out,
        "- Probe rate within 2% of expected: {:.1}% ({}).",
        achieved / expected * 100.0,
        verdict((achieved / expected - 1.0).abs() < 0.02)
    )
    .unwrap();
    writeln!(
        out,
        "- No transitions after warm-up: {} ({}).",
        run.transitions,
        verdict(run.transitions == 0)
    )
    .unwrap();
    writeln!(
        out,
        "- Event loop overhead under {MAX_OVERHEAD:.1}x the floor: {overhead:.2}x ({}).",
        verdict(overhead < MAX_OVERHEAD)
    )
    .unwrap();
    writeln!(
        out,
        "- Checker thread under {TARGET_CPU_PERCENT:.0}% of one core: {cpu_median:.1}% ({}).{}",
        verdict(cpu_median < TARGET_CPU_PERCENT),
        if plan.quick {
            " (quick run: the aim is for 10,000 targets)"
        } else {
            " On loopback this includes the listeners' kernel work (see the floor)."
        }
    )
    .unwrap();
    out
}

fn main() -> ExitCode {
    let args = match xlb_tests::bench_env::BenchArgs::parse("health_bench") {
        Ok(args) => args,
        Err(code) => return code,
    };
    let (quick, out_dir) = (args.quick, args.out_or_results());
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

    let measured = run(&plan);
    let text = markdown(&plan, &measured, nofile, &date, &time);
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
