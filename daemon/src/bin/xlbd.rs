//! `xlbd`: the xlb load balancer daemon.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use tracing::error;

use xlb::{
    api::server::{ServerConfig, TcpListenConfig},
    check,
    controller::{ChangeError, Controller, Options, StartError},
    dataplane::{
        decap::{Decap, PassAll},
        pin::PinDir,
    },
    logging::{self, LogFormat},
    signals::{Signal, Signals},
};

/// XDP load balancer daemon: Maglev consistent hashing, direct server return.
#[derive(Parser)]
#[command(name = "xlbd", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Config file.
    #[arg(long, short, default_value = "/etc/xlb/xlb.toml")]
    config: PathBuf,
    /// Write a JSON snapshot of all counters here, periodically and at exit.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Seconds between stats snapshots.
    #[arg(long, default_value_t = 5.0)]
    stats_interval: f64,
    /// Unix socket of the API (owner root, mode 0660).
    #[arg(long, default_value = "/run/xlb/xlbd.sock")]
    api_socket: PathBuf,
    /// Group that owns the API socket (its members may use `xlb`).
    #[arg(long)]
    api_socket_group: Option<String>,
    /// Also serve the API over TCP at ADDR:PORT, or PORT for 127.0.0.1:PORT. Needs
    /// --api-token-file.
    #[arg(long)]
    api_listen: Option<String>,
    /// File holding the bearer token that TCP clients must send.
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// Directory for state pushed through the API (restored at start).
    #[arg(long, default_value = "/var/lib/xlb")]
    state_dir: PathBuf,
    /// Do not watch the config file for changes (SIGHUP and `xlb reload` still work).
    #[arg(long)]
    no_watch: bool,
    /// Serve Prometheus metrics (GET /metrics) at ADDR:PORT, or PORT for 127.0.0.1:PORT;
    /// `off` serves none. Only loopback unless an address is given here.
    #[arg(long, default_value = "127.0.0.1:9642")]
    metrics_listen: String,
    /// Pin the datapath's maps and XDP link under DIR/<interface>/ so it keeps forwarding
    /// while xlbd restarts or is upgraded, and adopt what is pinned there at start.
    #[arg(long, value_name = "DIR", default_value = xlb::dataplane::pin::DEFAULT_ROOT)]
    pin_root: PathBuf,
    /// Pin nothing: the program is detached when xlbd exits (labs, tests).
    #[arg(long)]
    no_pin: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer (the default).
    Run(RunArgs),
    /// Validate config files and exit: 0 if all are valid, 1 otherwise.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// On a backend: strip xlb's IPIP encapsulation for local VIPs (for hosts without the
    /// ipip module). Runs until SIGTERM/SIGINT.
    Decap {
        /// Interface that receives the encapsulated traffic.
        #[arg(long, short)]
        interface: String,
        /// VIP address served on this host (repeatable).
        #[arg(long = "vip", required = true)]
        vips: Vec<std::net::IpAddr>,
        /// Attach in generic mode instead of native.
        #[arg(long)]
        generic: bool,
    },
    /// Detach the datapath of an interface and remove everything pinned for it (maps, flow
    /// table, counters): for removal. Refused while an xlbd answers on the API socket.
    Detach {
        /// The interface.
        #[arg(long, short)]
        interface: String,
        /// The pin root xlbd ran with.
        #[arg(long, value_name = "DIR", default_value = xlb::dataplane::pin::DEFAULT_ROOT)]
        pin_root: PathBuf,
        /// The API socket of a running xlbd (checked to refuse detaching under it).
        #[arg(long, default_value = "/run/xlb/xlbd.sock")]
        api_socket: PathBuf,
    },
    /// Lab helper: attach a pass-all XDP program to a veth so it accepts frames its peer sends
    /// with XDP_TX (the kernel drops them otherwise). Runs until SIGTERM/SIGINT.
    XdpPass {
        /// The veth end that receives the balancer's XDP_TX frames.
        #[arg(long, short)]
        interface: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { files }) => {
            let ok = check::check_files(&files, &mut std::io::stdout(), &mut std::io::stderr());
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(Command::Decap {
            interface,
            vips,
            generic,
        }) => {
            logging::init(cli.log_format, &cli.log_level);
            report(run_decap(&interface, &vips, !generic))
        }
        Some(Command::Detach {
            interface,
            pin_root,
            api_socket,
        }) => {
            logging::init(cli.log_format, &cli.log_level);
            report(run_detach(&interface, &pin_root, &api_socket))
        }
        Some(Command::XdpPass { interface }) => {
            logging::init(cli.log_format, &cli.log_level);
            report(run_pass(&interface))
        }
        Some(Command::Run(args)) => {
            logging::init(cli.log_format, &cli.log_level);
            report(run(args))
        }
        None => {
            logging::init(cli.log_format, &cli.log_level);
            report(run(cli.run))
        }
    }
}

fn tcp_listener(args: &RunArgs) -> Result<Option<TcpListenConfig>, String> {
    let Some(listen) = &args.api_listen else {
        return Ok(None);
    };
    let address = xlb::metrics::parse_listen("--api-listen", listen)?;
    let token_file = args
        .api_token_file
        .as_ref()
        .ok_or("--api-listen needs --api-token-file: the TCP API refuses to run without a token")?;
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| format!("--api-token-file {}: {e}", token_file.display()))?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(format!(
            "--api-token-file {} is empty",
            token_file.display()
        ));
    }
    Ok(Some(TcpListenConfig { address, token }))
}

fn run(args: RunArgs) -> Result<(), String> {
    // A zero period would make the stats tick always ready: the controller would spin (NaN
    // compares false with everything, so it is named).
    if args.stats_interval.is_nan() || args.stats_interval < 0.1 {
        return Err(format!(
            "--stats-interval {}: must be at least 0.1 (seconds)",
            args.stats_interval
        ));
    }
    let interval = Duration::try_from_secs_f64(args.stats_interval)
        .map_err(|e| format!("--stats-interval: {e}"))?;
    let signals = Signals::block().map_err(|e| format!("blocking signals: {e}"))?;
    let options = Options {
        api: ServerConfig {
            unix_socket: args.api_socket.clone(),
            unix_socket_mode: 0o660,
            unix_socket_group: args.api_socket_group.clone(),
            tcp: tcp_listener(&args)?,
        },
        config_path: args.config,
        state_dir: args.state_dir,
        stats_file: args.stats_file,
        stats_interval: interval,
        watch: !args.no_watch,
        pin_root: (!args.no_pin).then(|| args.pin_root.clone()),
        metrics: match args.metrics_listen.as_str() {
            "off" => None,
            text => Some(xlb::metrics::parse_listen("--metrics-listen", text)?),
        },
    };
    let controller = Controller::start(options).map_err(|error| match error {
        // Config diagnostics are one per line, each with file:line:column.
        StartError::Change(ChangeError::Invalid(config)) => {
            format!("invalid config, nothing attached:\n{config}")
        }
        // A refused adoption touched nothing: what is pinned keeps forwarding.
        StartError::Dataplane(error @ xlb::dataplane::DataplaneError::Pin(_)) => {
            format!("{error}; the pinned datapath was left as it is")
        }
        other => format!("{other}; nothing attached"),
    })?;
    controller.run(signals).map_err(|e| e.to_string())
}

fn run_decap(interface: &str, vips: &[std::net::IpAddr], native: bool) -> Result<(), String> {
    let signals = Signals::block().map_err(|e| format!("blocking signals: {e}"))?;
    let mut decap = Decap::attach(interface, native).map_err(|e| e.to_string())?;
    for vip in vips {
        decap.add_vip(*vip).map_err(|e| e.to_string())?;
    }
    tracing::info!(interface, ?vips, "decap attached");
    while signals.wait(Duration::from_secs(1)) != Some(Signal::Terminate) {}
    let counters = decap.counters().map_err(|e| e.to_string())?;
    tracing::info!(?counters, "decap detached");
    Ok(())
}

fn run_detach(interface: &str, root: &Path, api_socket: &Path) -> Result<(), String> {
    if std::os::unix::net::UnixStream::connect(api_socket).is_ok() {
        return Err(format!(
            "an xlbd is running (answering on {}): stop it first",
            api_socket.display()
        ));
    }
    let pins = PinDir::new(root, interface);
    let removed = pins.remove().map_err(|e| e.to_string())?;
    if removed.is_empty() {
        println!("nothing pinned in {}", pins.path().display());
    } else {
        println!(
            "detached {interface}: removed {} pinned objects and {}",
            removed.len(),
            pins.path().display()
        );
    }
    Ok(())
}

fn run_pass(interface: &str) -> Result<(), String> {
    let signals = Signals::block().map_err(|e| format!("blocking signals: {e}"))?;
    let _pass = PassAll::attach(interface).map_err(|e| e.to_string())?;
    tracing::info!(interface, "pass-all XDP program attached");
    while signals.wait(Duration::from_secs(1)) != Some(Signal::Terminate) {}
    Ok(())
}

fn report(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            eprintln!("xlbd: {message}");
            ExitCode::FAILURE
        }
    }
}
