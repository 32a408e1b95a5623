//! `xlb-pktgen`: xlb's packet generator, for load tests on machines without the kernel's
//! pktgen module. It sends UDP or TCP frames over many flows out of an interface (XDP live
//! frames through BPF_PROG_TEST_RUN) and can count what arrives back (`--sink`) or on another
//! interface (`xlb-pktgen sink`).
//!
//! Exit codes: 0 success, 1 the run failed, 2 usage error.

use std::{
    net::Ipv4Addr,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use xlb::{
    config::MacAddr,
    dataplane::interface_mac,
    pktgen::{
        Floor, FrameSpec, Generator, MAX_BATCH, Protocol, RunLimits, RunReport, Sink, SinkReport,
        tcp_flags,
    },
    signals::{Signal, Signals},
};
use xlb_common::Counter;

/// Longest run accepted, so a typo cannot start an endless flood.
const MAX_DURATION: f64 = 3600.0;
/// How long the sink keeps counting after the generator stopped, for frames still in flight.
const DRAIN: Duration = Duration::from_millis(100);
/// How often the sink subcommand reads its counter.
const SINK_POLL: Duration = Duration::from_millis(100);

/// xlb's packet generator: UDP or TCP frames over many flows, sent from an XDP program with
/// BPF_PROG_TEST_RUN live frames. Bounded by --count and --duration, whichever comes first.
///
/// Exit codes: 0 success; 1 the run failed; 2 usage error.
#[derive(Parser)]
#[command(name = "xlb-pktgen", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    send: SendArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Send frames (the default).
    Send(Box<SendArgs>),
    /// Count (and drop) every frame arriving on an interface until --duration or SIGINT, then
    /// print the count and the rate while frames were arriving.
    Sink {
        /// Interface to count on.
        #[arg(long, short)]
        interface: String,
        /// Seconds to count for.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Attach in generic (skb) mode instead of native.
        #[arg(long)]
        generic: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Attach the floor program (swap MACs, send back with XDP_TX) to an interface until
    /// --duration or SIGINT: what a throughput test measures in the load balancer's place.
    Floor {
        /// Interface to attach to.
        #[arg(long, short)]
        interface: String,
        /// Seconds to stay attached (at most 3600).
        #[arg(long, default_value_t = 600.0)]
        duration: f64,
        /// Attach in generic (skb) mode instead of native.
        #[arg(long)]
        generic: bool,
    },
}

#[derive(clap::Args, Clone)]
struct SendArgs {
    /// Interface to send from (its XDP transmit path is used).
    #[arg(long, short)]
    interface: Option<String>,
    /// Destination MAC: the next hop, e.g. the load balancer's interface.
    #[arg(long)]
    dst_mac: Option<MacAddr>,
    /// Source MAC [default: the interface's].
    #[arg(long)]
    src_mac: Option<MacAddr>,
    /// First source address; flows beyond the source ports use the following addresses.
    #[arg(long)]
    src: Option<Ipv4Addr>,
    /// Destination address (the VIP).
    #[arg(long)]
    dst: Option<Ipv4Addr>,
    /// First source port.
    #[arg(long, default_value_t = 1024)]
    sport: u16,
    /// Destination port.
    #[arg(long, default_value_t = 80)]
    dport: u16,
    /// Transport protocol.
    #[arg(long, value_enum, default_value = "udp")]
    proto: Protocol,
    /// TCP flags of the segments (TCP only).
    #[arg(long, value_enum, default_value = "ack")]
    tcp_flags: TcpFlags,
    /// Distinct flows (source address and port pairs), cycled through in order.
    #[arg(long, default_value_t = 10_000)]
    flows: u32,
    /// Ethernet frame length in bytes, without the 4-byte FCS (60..=3368).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Stop after this many frames.
    #[arg(long, default_value_t = 1_000_000_000)]
    count: u64,
    /// Stop after this many seconds (at most 3600).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Frames per second over all threads [default: as fast as possible].
    #[arg(long)]
    rate: Option<u64>,
    /// Generator threads, each pinned to its own CPU.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Frames per kernel batch (1..=256).
    #[arg(long, default_value_t = 64)]
    batch: u32,
    /// Also attach the counting sink (xlb_sink) to the interface and report the frames that
    /// come back, e.g. from a load balancer at the other end of a veth that sends them back
    /// with XDP_TX.
    #[arg(long)]
    sink: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// TCP flags of generated segments.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum TcpFlags {
    /// SYN: every segment opens a connection.
    Syn,
    /// ACK: segments of established connections.
    Ack,
}

/// What a send prints with --json.
#[derive(Serialize)]
struct SendOutput<'a> {
    interface: &'a str,
    proto: Protocol,
    size: usize,
    flows: u32,
    threads: usize,
    sent: RunReport,
    sent_pps: f64,
    sent_gbps: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sink: Option<SinkOutput>,
}

/// What a sink prints with --json.
#[derive(Serialize)]
struct SinkOutput {
    #[serde(flatten)]
    report: SinkReport,
    pps: f64,
    gbps: f64,
}

impl From<SinkReport> for SinkOutput {
    fn from(report: SinkReport) -> Self {
        SinkOutput {
            pps: report.pps(),
            gbps: report.gbps(),
            report,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Send(args)) => send(&args),
        Some(Command::Sink {
            interface,
            duration,
            generic,
            json,
        }) => sink(&interface, duration, generic, json),
        Some(Command::Floor {
            interface,
            duration,
            generic,
        }) => floor(&interface, duration, generic),
        None => send(&cli.send),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("xlb-pktgen: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Run(message)) => {
            eprintln!("xlb-pktgen: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Why the tool stopped early.
enum Failure {
    /// Bad or missing arguments.
    Usage(String),
    /// The run itself failed.
    Run(String),
}

fn run_err(error: impl std::fmt::Display) -> Failure {
    Failure::Run(error.to_string())
}

fn duration(seconds: f64) -> Result<Duration, Failure> {
    if !(seconds > 0.0 && seconds <= MAX_DURATION) {
        return Err(Failure::Usage(format!(
            "--duration {seconds}: must be above 0 and at most {MAX_DURATION} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn required<T: Clone>(value: &Option<T>, flag: &str) -> Result<T, Failure> {
    value
        .clone()
        .ok_or_else(|| Failure::Usage(format!("{flag} is required")))
}

fn send(args: &SendArgs) -> Result<(), Failure> {
    let interface = required(&args.interface, "--interface")?;
    let src_mac = match args.src_mac {
        Some(mac) => mac,
        None => interface_mac(&interface).map_err(run_err)?,
    };
    let spec = FrameSpec {
        dst_mac: required(&args.dst_mac, "--dst-mac")?,
        src_mac,
        src: required(&args.src, "--src")?,
        dst: required(&args.dst, "--dst")?,
        sport: args.sport,
        dport: args.dport,
        proto: args.proto,
        tcp_flags: match args.tcp_flags {
            TcpFlags::Syn => tcp_flags::SYN,
            TcpFlags::Ack => tcp_flags::ACK,
        },
        flows: args.flows,
        size: args.size,
    };
    spec.validate().map_err(|e| Failure::Usage(e.to_string()))?;
    if args.batch == 0 || args.batch > MAX_BATCH {
        return Err(Failure::Usage(format!(
            "--batch {}: must be 1..={MAX_BATCH}",
            args.batch
        )));
    }
    if args.rate == Some(0) {
        return Err(Failure::Usage("--rate must be above 0".into()));
    }
    let limits = RunLimits {
        count: args.count,
        duration: duration(args.duration)?,
        rate: args.rate,
        threads: args.threads,
        batch: args.batch,
    };

    // Blocked before any thread starts, so every thread inherits the mask and SIGINT or
    // SIGTERM ends the run cleanly (with a report) instead of killing it.
    let signals = Signals::block().map_err(|e| run_err(format!("blocking signals: {e}")))?;
    let mut generator = Generator::load(&spec).map_err(run_err)?;
    let sink = if args.sink {
        Some(Sink::attach(&interface, false).map_err(run_err)?)
    } else {
        None
    };
    if !args.json {
        let (last_src, _) = spec.flow(spec.flows - 1);
        eprintln!(
            "xlb-pktgen: {interface}: {} {}..{last_src} ports {}.. -> {}:{}, {} flows, {}-byte frames, {} thread(s), up to {} frames or {:.1} s{}",
            spec.proto.name(),
            spec.src,
            spec.sport,
            spec.dst,
            spec.dport,
            spec.flows,
            spec.size,
            limits.threads,
            limits.count,
            args.duration,
            limits
                .rate
                .map(|r| format!(", {r} frames/s"))
                .unwrap_or_default(),
        );
    }

    let before = sink
        .as_ref()
        .map(Sink::counter)
        .transpose()
        .map_err(run_err)?;
    // Asked by the run every few milliseconds, from the thread that polls the counters.
    let stop = || signals.wait(Duration::ZERO) == Some(Signal::Terminate);
    let report = generator.run(&interface, &limits, &stop).map_err(run_err)?;
    let sink_report = match (&sink, before) {
        (Some(sink), Some(before)) => {
            std::thread::sleep(DRAIN);
            let after = sink.counter().map_err(run_err)?;
            Some(SinkReport::between(before, after, report.seconds))
        }
        _ => None,
    };

    if args.json {
        let output = SendOutput {
            interface: &interface,
            proto: spec.proto,
            size: spec.size,
            flows: spec.flows,
            threads: limits.threads,
            sent: report,
            sent_pps: report.pps(),
            sent_gbps: report.gbps(),
            sink: sink_report.map(SinkOutput::from),
        };
        println!(
            "{}",
            serde_json::to_string(&output).map_err(|e| run_err(format!("JSON: {e}")))?
        );
    } else {
        println!(
            "sent {} frames in {:.2} s: {:.3} Mpps, {:.3} Gbit/s",
            report.packets,
            report.seconds,
            report.pps() / 1e6,
            report.gbps()
        );
        if let Some(sink) = sink_report {
            println!(
                "received back {} frames: {:.3} Mpps, {:.3} Gbit/s ({:.1}% of sent)",
                sink.packets,
                sink.pps() / 1e6,
                sink.gbps(),
                percent(sink.packets, report.packets)
            );
        }
    }
    if report.failed > 0 {
        return Err(Failure::Run(format!(
            "the generator program dropped {} frames it could not build (a bug)",
            report.failed
        )));
    }
    Ok(())
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn sink(interface: &str, seconds: f64, generic: bool, json: bool) -> Result<(), Failure> {
    let limit = duration(seconds)?;
    let signals = Signals::block().map_err(|e| run_err(format!("blocking signals: {e}")))?;
    let sink = Sink::attach(interface, generic).map_err(run_err)?;
    // On stderr even with --json: scripts wait for it to know the sink is attached.
    eprintln!("xlb-pktgen: counting on {interface} for up to {seconds} s");
    let start = Instant::now();
    let initial = sink.counter().map_err(run_err)?;
    // The window over which frames arrived: from the last reading before the count first
    // moved to the reading where it last moved.
    let (mut last, mut last_at) = (initial, start);
    let mut window: Option<(Instant, Instant, Counter)> = None;
    while start.elapsed() < limit {
        let wait = SINK_POLL.min(limit.saturating_sub(start.elapsed()));
        if signals.wait(wait) == Some(Signal::Terminate) {
            break;
        }
        let now = Instant::now();
        let counter = sink.counter().map_err(run_err)?;
        if counter.packets != last.packets {
            window = Some(match window {
                None => (last_at, now, counter),
                Some((first, _, _)) => (first, now, counter),
            });
        }
        (last, last_at) = (counter, now);
    }
    let report = match window {
        Some((first, end, counter)) => {
            SinkReport::between(initial, counter, (end - first).as_secs_f64())
        }
        None => SinkReport::default(),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&SinkOutput::from(report))
                .map_err(|e| run_err(format!("JSON: {e}")))?
        );
    } else {
        println!(
            "received {} frames over {:.2} s of traffic: {:.3} Mpps, {:.3} Gbit/s",
            report.packets,
            report.seconds,
            report.pps() / 1e6,
            report.gbps()
        );
    }
    Ok(())
}

fn floor(interface: &str, seconds: f64, generic: bool) -> Result<(), Failure> {
    let limit = duration(seconds)?;
    let signals = Signals::block().map_err(|e| run_err(format!("blocking signals: {e}")))?;
    let _floor = Floor::attach(interface, generic).map_err(run_err)?;
    eprintln!("xlb-pktgen: xlb_floor attached to {interface} for up to {seconds} s");
    let start = Instant::now();
    while start.elapsed() < limit {
        let wait = Duration::from_secs(1).min(limit.saturating_sub(start.elapsed()));
        if signals.wait(wait) == Some(Signal::Terminate) {
            break;
        }
    }
    Ok(())
}
