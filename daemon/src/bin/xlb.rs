//! `xlb`: the operator's command-line client. It talks to a running `xlbd` over its API socket
//! (see `docs/api.md`), and validates config files locally with `check`.
//!
//! Exit codes: 0 success, 1 the daemon refused the request (or `check` found errors), 2 usage
//! error or unusable local input, 3 the daemon could not be reached.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand, ValueEnum};
use serde::de::DeserializeOwned;
use serde_json::Value;
use xlb::api::{
    ApiError, BackendSpec, BackendView, ChangeResult, FlowTableStatusView, HealthStatusView,
    StatusView, VipListView, VipSpec, VipView,
    client::{self, ClientError, DEFAULT_SOCKET, encode_segment},
    routes::parse_json,
    types::{MAX_WEIGHT, PolicyLists, PolicyView, SetBackendsRequest, SetWeightRequest},
};
use xlb::config::service_label;
use xlb::events::{EventView, EventsView, Verdict};

/// One table row from anything displayable.
macro_rules! row {
    ($($cell:expr),* $(,)?) => {
        vec![$($cell.to_string()),*]
    };
}

/// The daemon accepted the request.
const EXIT_OK: u8 = 0;
/// The daemon refused the request (4xx or 5xx), or `check` found errors.
const EXIT_REFUSED: u8 = 1;
/// Bad arguments or unusable local input (clap uses 2 for usage errors too).
const EXIT_USAGE: u8 = 2;
/// The daemon could not be reached or did not answer properly.
const EXIT_UNREACHABLE: u8 = 3;

/// Command-line client of the xlb load balancer.
///
/// Exit codes: 0 success; 1 the daemon refused the request; 2 usage error; 3 cannot reach the
/// daemon.
#[derive(Parser)]
#[command(name = "xlb", version)]
struct Cli {
    /// xlbd's API socket [env: XLB_SOCKET] [default: /run/xlb/xlbd.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Use xlbd's TCP listener at ADDRESS instead of the socket; the token comes from the
    /// XLB_TOKEN environment variable.
    #[arg(long, global = true, value_name = "ADDRESS")]
    tcp: Option<SocketAddr>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// How answers are printed.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned tables for humans.
    Table,
    /// The daemon's JSON, pretty-printed.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Show the daemon's state and counters.
    Status,
    /// List, show, add and remove VIPs.
    Vip {
        #[command(subcommand)]
        command: VipCommand,
    },
    /// Show the load-balancing table: every VIP with its backends and their Maglev share.
    Lb {
        #[command(subcommand)]
        command: LbCommand,
    },
    /// Change a VIP's backends: replace the set, set a weight, drain, undrain.
    Backend {
        #[command(subcommand)]
        command: BackendCommand,
    },
    /// Reload the config file, as SIGHUP does.
    Reload,
    /// Show datapath events (drops with their reason, sampled forwards), one line each;
    /// `--output json` prints JSON lines.
    Observe(ObserveArgs),
    /// Show or change the policy's global deny and allow lists.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Validate config files exactly as xlbd would (no daemon needed): exit 0 if all are
    /// valid, 1 otherwise.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ObserveArgs {
    /// Only drops or only forwards.
    #[arg(long = "type", value_name = "drop|forward", value_parser = ["drop", "forward"])]
    kind: Option<String>,
    /// Only packets to this VIP address (and port).
    #[arg(long, value_name = "ADDR[:PORT]")]
    vip: Option<String>,
    /// Only drops for this reason (see docs/policy.md for the names).
    #[arg(long, value_name = "R")]
    reason: Option<String>,
    /// Only packets from this network.
    #[arg(long, value_name = "CIDR")]
    from: Option<String>,
    /// Keep printing new events until interrupted.
    #[arg(long)]
    follow: bool,
    /// Show the N most recent matching events first [default: 20, or 0 with --follow].
    #[arg(long, value_name = "N")]
    last: Option<usize>,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Show the policy in force, where its lists come from, and its counters.
    Show,
    /// Replace the global lists through the API (the file's lists no longer apply).
    Set {
        /// A denied source CIDR; repeat for each one.
        #[arg(long = "deny", value_name = "CIDR")]
        deny: Vec<String>,
        /// An allowed source CIDR; repeat for each one.
        #[arg(long = "allow", value_name = "CIDR")]
        allow: Vec<String>,
    },
    /// Forget the lists set through the API: the file's lists apply again.
    Reset,
}

#[derive(Subcommand)]
enum VipCommand {
    /// List every VIP.
    List,
    /// Show one VIP and its backends.
    Show {
        /// The VIP's name.
        name: String,
    },
    /// Add a VIP from a JSON spec (see docs/api.md).
    Add {
        /// The JSON file, or - for standard input.
        #[arg(long, short)]
        file: PathBuf,
    },
    /// Remove a VIP added through the API.
    Remove {
        /// The VIP's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum LbCommand {
    /// List every VIP with its backends, their state, weight and share of the Maglev table.
    List,
}

#[derive(Subcommand)]
enum BackendCommand {
    /// Replace a VIP's whole backend set.
    Set {
        /// The VIP's name.
        vip: String,
        /// A backend; repeat for each one.
        #[arg(
            long = "backend",
            value_name = "ADDR[,mac=MAC][,weight=N][,name=NAME]",
            value_parser = parse_backend,
            required_unless_present = "file",
            conflicts_with = "file"
        )]
        backends: Vec<BackendSpec>,
        /// The backends as JSON ({"backends": [...]} or a bare list), or - for standard input.
        #[arg(long, short)]
        file: Option<PathBuf>,
    },
    /// Set one backend's weight (0 to 10000).
    Weight {
        /// The VIP's name.
        vip: String,
        /// The backend's address.
        address: String,
        /// The new weight.
        #[arg(value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_WEIGHT)))]
        weight: u32,
    },
    /// Forget a weight set through the API: the configured weight applies again.
    ResetWeight {
        /// The VIP's name.
        vip: String,
        /// The backend's address.
        address: String,
    },
    /// Stop sending new flows to a backend; its established flows stay.
    Drain {
        /// The VIP's name.
        vip: String,
        /// The backend's address.
        address: String,
    },
    /// Give a drained backend its weight back.
    Undrain {
        /// The VIP's name.
        vip: String,
        /// The backend's address.
        address: String,
    },
}

/// How a successful answer is shown as a table.
#[derive(Clone, Copy)]
enum Render {
    Status,
    VipList,
    Vip,
    Lb,
    Change,
    Policy,
}

/// One API call to make.
struct Call {
    method: &'static str,
    path: String,
    body: Option<Value>,
    render: Render,
}

/// Unusable local input: reported as `xlb: ...`, exit 2.
struct UsageError(String);

/// Where calls go: the Unix socket, or the TCP listener with its token.
enum Target {
    Socket(PathBuf),
    Tcp(SocketAddr, String),
}

impl Target {
    fn from_cli(socket: Option<PathBuf>, tcp: Option<SocketAddr>) -> Result<Target, UsageError> {
        match tcp {
            Some(address) => {
                let token = std::env::var("XLB_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        UsageError(
                            "--tcp needs the API token in the XLB_TOKEN environment variable"
                                .into(),
                        )
                    })?;
                Ok(Target::Tcp(address, token))
            }
            None => Ok(Target::Socket(
                socket
                    .or_else(|| std::env::var_os("XLB_SOCKET").map(PathBuf::from))
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            )),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClientError> {
        match self {
            Target::Tcp(address, token) => client::call_tcp(*address, token, method, path, body),
            Target::Socket(socket) => client::call(socket, method, path, body),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let target = match Target::from_cli(cli.socket, cli.tcp) {
        Ok(target) => target,
        Err(UsageError(message)) => {
            eprintln!("xlb: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let call = match cli.command {
        Command::Check { files } => {
            let ok =
                xlb::check::check_files(&files, &mut std::io::stdout(), &mut std::io::stderr());
            return ExitCode::from(if ok { EXIT_OK } else { EXIT_REFUSED });
        }
        Command::Observe(args) => return ExitCode::from(observe(&target, &args, cli.output)),
        command => match build_call(command) {
            Ok(call) => call,
            Err(UsageError(message)) => {
                eprintln!("xlb: {message}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let answer = target.call(call.method, &call.path, call.body.as_ref());
    ExitCode::from(report(answer, call.render, cli.output))
}

/// How often `observe --follow` asks for new events.
const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// `xlb observe`: prints matching events, then (with `--follow`) new ones as they come.
fn observe(target: &Target, args: &ObserveArgs, output: Output) -> u8 {
    let mut filters = Vec::new();
    let mut add = |key: &str, value: &Option<String>| {
        if let Some(value) = value {
            filters.push(format!("{key}={}", encode_segment(value)));
        }
    };
    add("type", &args.kind);
    add("vip", &args.vip);
    add("reason", &args.reason);
    add("from", &args.from);
    let last = args.last.unwrap_or(if args.follow { 0 } else { 20 });
    let mut query = format!("last={last}");
    let mut stdout = std::io::stdout().lock();
    loop {
        let path = format!("/v1/events?{query}&{}", filters.join("&"));
        let (status, body) = match target.call("GET", path.trim_end_matches('&'), None) {
            Ok(answer) => answer,
            Err(error) => {
                eprintln!("xlb: {error}");
                return EXIT_UNREACHABLE;
            }
        };
        if !(200..300).contains(&status) {
            eprintln!("xlb: {}", error_line(status, &body));
            return EXIT_REFUSED;
        }
        let Ok(answer) = serde_json::from_value::<EventsView>(body) else {
            eprintln!("xlb: the daemon's answer is not a list of events");
            return EXIT_UNREACHABLE;
        };
        for event in &answer.events {
            let line = match output {
                Output::Json => serde_json::to_string(event).unwrap_or_default(),
                Output::Table => event_line(event),
            };
            if writeln!(stdout, "{line}").is_err() {
                // The reader went away (a closed pipe): nothing more to do.
                return EXIT_OK;
            }
        }
        let _ = stdout.flush();
        if !args.follow {
            return EXIT_OK;
        }
        query = format!("after={}", answer.next);
        std::thread::sleep(FOLLOW_INTERVAL);
    }
}

/// One event as a line: time, verdict, reason, 5-tuple, VIP and backend.
fn event_line(event: &EventView) -> String {
    let endpoint = |address: Option<std::net::IpAddr>, port: u16| match address {
        Some(std::net::IpAddr::V6(a)) => format!("[{a}]:{port}"),
        Some(a) => format!("{a}:{port}"),
        None => "-".to_owned(),
    };
    let verdict = match event.verdict {
        Verdict::Drop => "DROP",
        Verdict::Forward => "FORWARD",
    };
    format!(
        "{} {verdict:<7} {:<17} {:<4} {} -> {} vip={} backend={}",
        event.time,
        event.reason.as_deref().unwrap_or("-"),
        event.protocol,
        endpoint(event.src, event.sport),
        endpoint(event.dst, event.dport),
        event.vip.as_deref().unwrap_or("-"),
        event.backend.as_deref().unwrap_or("-"),
    )
}

/// Prints the answer and returns the exit code.
fn report(answer: Result<(u16, Value), ClientError>, render: Render, output: Output) -> u8 {
    let (status, body) = match answer {
        Ok(answer) => answer,
        Err(error) => {
            eprintln!("xlb: {error}");
            return EXIT_UNREACHABLE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if output == Output::Json {
        let text = serde_json::to_string_pretty(&body).unwrap_or_default();
        let _ = writeln!(stdout, "{text}");
    }
    if !(200..300).contains(&status) {
        eprintln!("xlb: {}", error_line(status, &body));
        return EXIT_REFUSED;
    }
    if output == Output::Table {
        let _ = write!(stdout, "{}", render_answer(render, &body));
    }
    EXIT_OK
}

/// `<error> (field: <field>)` from an error answer.
fn error_line(status: u16, body: &Value) -> String {
    let message = body
        .get("error")
        .and_then(Value::as_str)
        .map_or_else(|| format!("the daemon answered {status}"), str::to_owned);
    match body.get("field").and_then(Value::as_str) {
        Some(field) => format!("{message} (field: {field})"),
        None => message,
    }
}

fn build_call(command: Command) -> Result<Call, UsageError> {
    let get = |path: String, render| Call {
        method: "GET",
        path,
        body: None,
        render,
    };
    let change = |method, path: String, body| Call {
        method,
        path,
        body,
        render: Render::Change,
    };
    let backend_path = |vip: &str, address: &str, action: &str| {
        format!(
            "/v1/vips/{}/backends/{}/{action}",
            encode_segment(vip),
            encode_segment(address)
        )
    };
    Ok(match command {
        Command::Status => get("/v1/status".into(), Render::Status),
        Command::Vip { command } => match command {
            VipCommand::List => get("/v1/vips".into(), Render::VipList),
            VipCommand::Show { name } => {
                get(format!("/v1/vips/{}", encode_segment(&name)), Render::Vip)
            }
            VipCommand::Add { file } => {
                let spec: VipSpec = parse_input(&file, read_input(&file)?.as_bytes())?;
                change("POST", "/v1/vips".into(), Some(to_value(&spec)))
            }
            VipCommand::Remove { name } => change(
                "DELETE",
                format!("/v1/vips/{}", encode_segment(&name)),
                None,
            ),
        },
        Command::Lb {
            command: LbCommand::List,
        } => get("/v1/vips".into(), Render::Lb),
        Command::Backend { command } => match command {
            BackendCommand::Set {
                vip,
                backends,
                file,
            } => {
                let request = match file {
                    Some(file) => {
                        let text = read_input(&file)?;
                        // A bare list is accepted as the backend set itself.
                        let text = if text.trim_start().starts_with('[') {
                            format!("{{\"backends\": {text}}}")
                        } else {
                            text
                        };
                        parse_input::<SetBackendsRequest>(&file, text.as_bytes())?
                    }
                    None => SetBackendsRequest { backends },
                };
                change(
                    "PUT",
                    format!("/v1/vips/{}/backends", encode_segment(&vip)),
                    Some(to_value(&request)),
                )
            }
            BackendCommand::Weight {
                vip,
                address,
                weight,
            } => change(
                "PUT",
                backend_path(&vip, &address, "weight"),
                Some(to_value(&SetWeightRequest { weight })),
            ),
            BackendCommand::ResetWeight { vip, address } => {
                change("DELETE", backend_path(&vip, &address, "weight"), None)
            }
            BackendCommand::Drain { vip, address } => {
                change("POST", backend_path(&vip, &address, "drain"), None)
            }
            BackendCommand::Undrain { vip, address } => {
                change("POST", backend_path(&vip, &address, "undrain"), None)
            }
        },
        Command::Reload => change("POST", "/v1/reload".into(), None),
        Command::Policy { command } => match command {
            PolicyCommand::Show => get("/v1/policy".into(), Render::Policy),
            PolicyCommand::Set { deny, allow } => change(
                "PUT",
                "/v1/policy".into(),
                Some(to_value(&PolicyLists { deny, allow })),
            ),
            PolicyCommand::Reset => change("DELETE", "/v1/policy".into(), None),
        },
        Command::Observe(_) => unreachable!("observe polls on its own"),
        Command::Check { .. } => unreachable!("check runs locally"),
    })
}

fn to_value(value: &impl serde::Serialize) -> Value {
    // Our own request types are plain structs of strings and numbers.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Reads a file, or standard input for `-`.
fn read_input(file: &Path) -> Result<String, UsageError> {
    let mut text = String::new();
    let result = if file == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(file).map(|t| text = t)
    };
    result.map_err(|error| UsageError(format!("reading {}: {error}", input_name(file))))?;
    Ok(text)
}

/// How an input file is named in messages.
fn input_name(file: &Path) -> String {
    if file == Path::new("-") {
        "standard input".into()
    } else {
        file.display().to_string()
    }
}

/// Parses JSON input as strictly as the daemon will, so mistakes are caught before sending.
fn parse_input<T: DeserializeOwned>(file: &Path, bytes: &[u8]) -> Result<T, UsageError> {
    parse_json(bytes).map_err(|error: ApiError| {
        let field = error
            .field
            .map(|f| format!(" (field: {f})"))
            .unwrap_or_default();
        UsageError(format!("{}: {}{field}", input_name(file), error.message))
    })
}

/// Parses `ADDR[,mac=MAC][,weight=N][,name=NAME]`.
fn parse_backend(text: &str) -> Result<BackendSpec, String> {
    let mut parts = text.split(',');
    let address = parts.next().unwrap_or_default().trim();
    if address.is_empty() || address.contains('=') {
        return Err(
            "expected ADDR[,mac=MAC][,weight=N][,name=NAME], starting with the address".into(),
        );
    }
    let mut spec = BackendSpec {
        address: address.to_owned(),
        mac: None,
        weight: None,
        name: None,
        health: None,
    };
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        let (key, value) = (key.trim(), value.trim().to_owned());
        let duplicate = match key {
            "mac" => spec.mac.replace(value).is_some(),
            "name" => spec.name.replace(value).is_some(),
            "weight" => {
                let weight: u32 =
                    value
                        .parse()
                        .ok()
                        .filter(|w| *w <= MAX_WEIGHT)
                        .ok_or_else(|| {
                            format!("weight {value:?} is not a number in 0..={MAX_WEIGHT}")
                        })?;
                spec.weight.replace(weight).is_some()
            }
            _ => {
                return Err(format!(
                    "unknown key {key:?} (expected mac, weight or name)"
                ));
            }
        };
        if duplicate {
            return Err(format!("{key} given twice"));
        }
    }
    Ok(spec)
}

/// Renders a successful answer; an answer of an unexpected shape is printed as JSON.
fn render_answer(render: Render, body: &Value) -> String {
    fn typed<T: DeserializeOwned>(body: &Value, render: impl Fn(&T) -> String) -> Option<String> {
        serde_json::from_value::<T>(body.clone())
            .ok()
            .map(|v| render(&v))
    }
    let text = match render {
        Render::Status => typed(body, render_status),
        Render::VipList => typed(body, render_vip_list),
        Render::Vip => typed(body, render_vip),
        Render::Lb => typed(body, render_lb),
        Render::Change => typed(body, render_change),
        Render::Policy => typed(body, render_policy),
    };
    text.unwrap_or_else(|| {
        format!(
            "{}\n",
            serde_json::to_string_pretty(body).unwrap_or_default()
        )
    })
}

/// Aligns cells in columns two spaces apart; no trailing spaces.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn share(slots: u32, table_size: u32) -> String {
    if table_size == 0 {
        "-".into()
    } else {
        format!("{:.2}%", f64::from(slots) * 100.0 / f64::from(table_size))
    }
}

/// `1d 2h 3m 4s`, without leading zero units.
fn duration(seconds: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = seconds;
    for (size, unit) in units {
        let n = rest / size;
        rest %= size;
        if n > 0 || !parts.is_empty() || size == 1 {
            parts.push(format!("{n}{unit}"));
        }
    }
    parts.join(" ")
}

/// `YYYY-MM-DD hh:mm:ss UTC` (proleptic Gregorian, from days since the epoch).
fn utc(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(i64::MAX / 2);
    let secs = unix % 86_400;
    let (year, month, day) = xlb::events::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn change_text(change: &xlb::api::ChangeView) -> String {
    format!(
        "{} added, {} changed, {} removed, {} unchanged in {} µs",
        change.added, change.changed, change.removed, change.unchanged, change.micros
    )
}

fn render_status(status: &StatusView) -> String {
    let last_reload = match &status.last_reload {
        None => "none".to_owned(),
        Some(reload) => {
            let outcome = if reload.ok { "ok" } else { "FAILED" };
            let detail = match (&reload.error, &reload.changed) {
                (Some(error), _) => error.clone(),
                (None, Some(change)) => change_text(change),
                (None, None) => String::new(),
            };
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            };
            format!(
                "{outcome} ({}) at {}{detail}",
                reload.source,
                utc(reload.unix_time)
            )
        }
    };
    let mut rows = vec![
        row!["version", &status.version],
        row!["uptime", &duration(status.uptime_seconds)],
        row![
            "interface",
            &format!("{} ({})", status.interface, status.attach_mode),
        ],
        row!["config", &status.config_path],
        row!["generation", &status.generation],
        row!["vips", &status.vips],
        row!["backends", &status.backends],
        row!["last reload", &last_reload],
        row![
            "reloads",
            &format!("{} ok, {} failed", status.reloads_ok, status.reloads_failed),
        ],
        row![
            "api requests",
            &format!(
                "{} ok, {} failed",
                status.api_requests_ok, status.api_requests_failed
            ),
        ],
        row!["flow table", &flow_table_text(status.flow_table.as_ref())],
        row!["health", &health_text(&status.health)],
        row![
            "probes",
            &format!(
                "{} started, {} ok, {} failed, {} local errors",
                status.health.probes_started,
                status.health.probes_succeeded,
                status.health.probes_failed,
                status.health.local_errors
            ),
        ],
    ];
    if !status.health.encap_packets.is_empty() {
        let counts: Vec<String> = status
            .health
            .encap_packets
            .iter()
            .map(|(name, n)| format!("{n} {name}"))
            .collect();
        rows.push(row!["probe packets", &counts.join(", ")]);
    }
    if let Some(error) = &status.health.encap_error {
        rows.push(row!["probe encap", &format!("failed: {error}")]);
    }
    let mut out = table(&rows);
    let counters = |title: &str, counts: &[(String, u64)]| {
        let mut rows = vec![row![&title, &"PACKETS"]];
        rows.extend(counts.iter().map(|(name, n)| row![name, n]));
        table(&rows)
    };
    out.push('\n');
    out.push_str(&counters("ACTION", &status.actions));
    out.push('\n');
    out.push_str(&counters("DROP REASON", &status.drops));
    out
}

/// The flow tables in one line: entries of the capacity, and xlbd's removals.
fn flow_table_text(view: Option<&FlowTableStatusView>) -> String {
    let Some(v) = view else {
        return "unreadable".to_owned();
    };
    format!(
        "IPv4 {} flows in {} slots, IPv6 {} of {}; {} expired (idle > {} s), {} evicted since start",
        v.entries, v.slots, v.entries_v6, v.capacity, v.expired, v.idle_timeout_seconds, v.evicted
    )
}

fn health_text(health: &HealthStatusView) -> String {
    format!(
        "{} checked: {} up, {} down; {} went down, {} came up since start",
        health.checked, health.up, health.down, health.went_down, health.came_up
    )
}

/// A backend's health in one word: `up`, `down`, or `-` when it is not checked.
fn backend_health(b: &BackendView) -> &str {
    b.health.as_ref().map_or("-", |h| h.health.as_str())
}

fn render_vip_list(list: &VipListView) -> String {
    if list.vips.is_empty() {
        return "no VIPs\n".into();
    }
    let mut rows = vec![row![
        &"NAME",
        &"SERVICE",
        &"MODE",
        &"SOURCE",
        &"BACKENDS",
        &"ACTIVE",
        &"HEALTH",
        &"TABLE",
        &"PACKETS",
        &"BYTES",
    ]];
    for vip in &list.vips {
        let active = vip
            .backends
            .iter()
            .filter(|b| b.state == "active" && b.weight > 0 && backend_health(b) != "down")
            .count();
        rows.push(row![
            &vip.name,
            &service_label(&vip.address, vip.port, &vip.protocol),
            &vip.mode,
            &vip.source,
            &vip.backends.len(),
            &active,
            &vip.health,
            &vip.table_size,
            &vip.packets,
            &vip.bytes,
        ]);
    }
    table(&rows)
}

fn render_vip(vip: &VipView) -> String {
    let mut out = table(&[
        row!["name", &vip.name],
        row![
            "service",
            &service_label(&vip.address, vip.port, &vip.protocol)
        ],
        row!["mode", &vip.mode],
        row!["source", &vip.source],
        row!["table size", &vip.table_size],
        row!["health", &vip.health],
        row!["packets", &vip.packets],
        row!["bytes", &vip.bytes],
    ]);
    out.push('\n');
    if vip.backends.is_empty() {
        out.push_str("no backends\n");
        return out;
    }
    let mut rows = vec![row![
        &"NAME",
        &"ADDRESS",
        &"MAC",
        &"WEIGHT",
        &"CONFIGURED",
        &"STATE",
        &"HEALTH",
        &"SLOTS",
        &"SHARE",
        &"PACKETS",
        &"BYTES",
        &"DOWN/UP",
        &"LAST CHECK CHANGE",
    ]];
    for b in &vip.backends {
        let (changes, reason) = b.health.as_ref().map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |h| (format!("{}/{}", h.went_down, h.came_up), h.reason.clone()),
        );
        rows.push(row![
            &b.name,
            &b.address,
            &b.mac,
            &b.weight,
            &b.configured_weight,
            &b.state,
            &backend_health(b),
            &b.slots,
            &share(b.slots, vip.table_size),
            &b.packets,
            &b.bytes,
            &changes,
            &reason,
        ]);
    }
    out.push_str(&table(&rows));
    out
}

fn render_lb(list: &VipListView) -> String {
    if list.vips.is_empty() {
        return "no VIPs\n".into();
    }
    let mut rows = vec![row![
        &"SERVICE", &"MODE", &"SOURCE", &"BACKEND", &"STATE", &"HEALTH", &"WEIGHT", &"SLOTS",
        &"SHARE", &"PACKETS",
    ]];
    for vip in &list.vips {
        let service = service_label(&vip.address, vip.port, &vip.protocol);
        if vip.backends.is_empty() {
            rows.push(row![&service, &vip.mode, &vip.source, &"(none)"]);
        }
        for (i, b) in vip.backends.iter().enumerate() {
            // Like `cilium bpf lb list`: the service columns only on its first line.
            let (service, mode, source) = if i == 0 {
                (service.as_str(), vip.mode.as_str(), vip.source.as_str())
            } else {
                ("", "", "")
            };
            rows.push(row![
                &service,
                &mode,
                &source,
                &b.address,
                &b.state,
                &backend_health(b),
                &b.weight,
                &b.slots,
                &share(b.slots, vip.table_size),
                &b.packets,
            ]);
        }
    }
    table(&rows)
}

fn render_change(result: &ChangeResult) -> String {
    format!(
        "ok: generation {}: {}\n",
        result.generation,
        change_text(&result.change)
    )
}

fn render_policy(policy: &PolicyView) -> String {
    let list = |l: &[String]| {
        if l.is_empty() {
            "-".to_owned()
        } else {
            l.join(", ")
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "lists from:    {}", policy.lists_source);
    let _ = writeln!(out, "deny:          {}", list(&policy.deny));
    let _ = writeln!(out, "allow:         {}", list(&policy.allow));
    let _ = writeln!(out, "unserved:      {}", policy.unserved);
    let _ = writeln!(out, "ipv4_options:  {}", policy.ipv4_options);
    let _ = writeln!(out, "fragments:     {}", policy.fragments);
    let _ = writeln!(out, "icmp_echo:     {}", policy.icmp_echo);
    let _ = writeln!(out, "icmp_other:    {}", policy.icmp_other);
    let _ = writeln!(
        out,
        "encap mtu:     {} (too big: {})",
        policy.encap_mtu, policy.on_too_big
    );
    let _ = writeln!(
        out,
        "rate limit:    {}",
        policy
            .rate_limit
            .map_or("-".to_owned(), |(rate, burst)| format!(
                "{rate} new connections/s per source, burst {burst}"
            ))
    );
    let _ = writeln!(
        out,
        "flow guard:    {}",
        policy
            .flow_insert_rate
            .map_or("-".to_owned(), |rate| format!("{rate} new flows/s per CPU"))
    );
    let _ = writeln!(
        out,
        "icmp sent:     {}",
        match policy.icmp_rate_limit {
            0 => "no limit".to_owned(),
            rate => format!("at most {rate} messages/s per CPU"),
        }
    );
    for (vip, ranges) in &policy.vip_source_ranges {
        let _ = writeln!(out, "source ranges: {vip}: {}", list(ranges));
    }
    for (name, count) in &policy.counters {
        let _ = writeln!(out, "{name:<22} {count}");
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use xlb::api::{BackendHealthView, ChangeView, ReloadView};

    use super::*;

    fn backend(address: &str, weight: u32, state: &str, slots: u32, packets: u64) -> BackendView {
        BackendView {
            name: format!("be-{}", address.rsplit('.').next().unwrap_or_default()),
            address: address.into(),
            mac: "02:99:00:00:00:11".into(),
            weight,
            configured_weight: 100,
            state: state.into(),
            slots,
            packets,
            bytes: packets * 100,
            health: None,
        }
    }

    fn sample() -> VipListView {
        VipListView {
            vips: vec![
                VipView {
                    name: "web".into(),
                    address: "10.99.0.100".into(),
                    port: 80,
                    protocol: "tcp".into(),
                    mode: "l2".into(),
                    source: "file".into(),
                    table_size: 65537,
                    packets: 300,
                    bytes: 30000,
                    health: "degraded".into(),
                    backends: vec![
                        backend("10.99.0.11", 100, "active", 32769, 160),
                        BackendView {
                            health: Some(BackendHealthView {
                                health: "down".into(),
                                reason: "connection refused (3 failures in a row)".into(),
                                since_unix: 1_700_000_000,
                                went_down: 2,
                                came_up: 1,
                            }),
                            ..backend("10.99.0.12", 0, "active", 0, 140)
                        },
                        backend("10.99.0.13", 0, "drained", 0, 0),
                    ],
                },
                VipView {
                    name: "dns".into(),
                    address: "10.99.0.100".into(),
                    port: 0,
                    protocol: "udp".into(),
                    mode: "ipip".into(),
                    source: "api".into(),
                    table_size: 251,
                    packets: 0,
                    bytes: 0,
                    health: "unchecked".into(),
                    backends: vec![],
                },
            ],
        }
    }

    #[test]
    fn lb_list_is_stable() {
        assert_eq!(
            render_lb(&sample()),
            "\
SERVICE             MODE  SOURCE  BACKEND     STATE    HEALTH  WEIGHT  SLOTS  SHARE   PACKETS
10.99.0.100:80/tcp  l2    file    10.99.0.11  active   -       100     32769  50.00%  160
                                  10.99.0.12  active   down    0       0      0.00%   140
                                  10.99.0.13  drained  -       0       0      0.00%   0
10.99.0.100:*/udp   ipip  api     (none)
"
        );
    }

    #[test]
    fn vip_list_and_show_are_stable() {
        assert_eq!(
            render_vip_list(&sample()),
            "\
NAME  SERVICE             MODE  SOURCE  BACKENDS  ACTIVE  HEALTH     TABLE  PACKETS  BYTES
web   10.99.0.100:80/tcp  l2    file    3         1       degraded   65537  300      30000
dns   10.99.0.100:*/udp   ipip  api     0         0       unchecked  251    0        0
"
        );
        assert_eq!(render_vip_list(&VipListView { vips: vec![] }), "no VIPs\n");
        assert_eq!(
            render_vip(&sample().vips[0]),
            "\
name        web
service     10.99.0.100:80/tcp
mode        l2
source      file
table size  65537
health      degraded
packets     300
bytes       30000

NAME   ADDRESS     MAC                WEIGHT  CONFIGURED  STATE    HEALTH  SLOTS  SHARE   PACKETS  BYTES  DOWN/UP  LAST CHECK CHANGE
be-11  10.99.0.11  02:99:00:00:00:11  100     100         active   -       32769  50.00%  160      16000  -        -
be-12  10.99.0.12  02:99:00:00:00:11  0       100         active   down    0      0.00%   140      14000  2/1      connection refused (3 failures in a row)
be-13  10.99.0.13  02:99:00:00:00:11  0       100         drained  -       0      0.00%   0        0      -        -
"
        );
    }

    #[test]
    fn status_is_stable() {
        let status = StatusView {
            version: "0.1.0".into(),
            uptime_seconds: 3723,
            interface: "eth0".into(),
            attach_mode: "native".into(),
            generation: 7,
            config_path: "/etc/xlb/xlb.toml".into(),
            last_reload: Some(ReloadView {
                ok: true,
                source: "api".into(),
                unix_time: 1_700_000_000,
                error: None,
                changed: Some(ChangeView {
                    added: 1,
                    changed: 0,
                    removed: 0,
                    unchanged: 1,
                    micros: 153,
                }),
            }),
            reloads_ok: 12,
            reloads_failed: 1,
            api_requests_ok: 30,
            api_requests_failed: 2,
            vips: 2,
            backends: 3,
            health: HealthStatusView {
                checked: 2,
                up: 1,
                down: 1,
                went_down: 2,
                came_up: 1,
                probes_started: 40,
                probes_succeeded: 35,
                probes_failed: 5,
                local_errors: 0,
                encap_error: None,
                encap_packets: vec![("encapsulated".into(), 80), ("passed".into(), 3)],
            },
            flow_table: Some(FlowTableStatusView {
                entries: 12,
                entries_v6: 3,
                capacity: 262_144,
                slots: 524_288,
                expired: 40,
                evicted: 0,
                idle_timeout_seconds: 300,
            }),
            actions: vec![("pass".into(), 10), ("tx".into(), 300)],
            drops: vec![("fragment".into(), 0), ("no_backend".into(), 4)],
        };
        assert_eq!(
            render_status(&status),
            "\
version        0.1.0
uptime         1h 2m 3s
interface      eth0 (native)
config         /etc/xlb/xlb.toml
generation     7
vips           2
backends       3
last reload    ok (api) at 2023-11-14 22:13:20 UTC: 1 added, 0 changed, 0 removed, 1 unchanged in 153 µs
reloads        12 ok, 1 failed
api requests   30 ok, 2 failed
flow table     IPv4 12 flows in 524288 slots, IPv6 3 of 262144; 40 expired (idle > 300 s), 0 evicted since start
health         2 checked: 1 up, 1 down; 2 went down, 1 came up since start
probes         40 started, 35 ok, 5 failed, 0 local errors
probe packets  80 encapsulated, 3 passed

ACTION  PACKETS
pass    10
tx      300

DROP REASON  PACKETS
fragment     0
no_backend   4
"
        );
    }

    #[test]
    fn change_results_and_errors_read_as_one_line() {
        let body = json!({"ok": true, "generation": 8,
            "change": {"added": 0, "changed": 1, "removed": 0, "unchanged": 1, "micros": 42}});
        assert_eq!(
            render_answer(Render::Change, &body),
            "ok: generation 8: 0 added, 1 changed, 0 removed, 1 unchanged in 42 µs\n"
        );
        assert_eq!(
            error_line(400, &json!({"error": "bad weight", "field": "weight"})),
            "bad weight (field: weight)"
        );
        assert_eq!(error_line(502, &json!(null)), "the daemon answered 502");
        // An answer of another shape is shown as it came.
        assert_eq!(
            render_answer(Render::Status, &json!({"x": 1})),
            "{\n  \"x\": 1\n}\n"
        );
    }

    #[test]
    fn backend_specs_parse_strictly() {
        let spec = parse_backend("10.0.0.1,mac=02:00:00:00:00:01,weight=5,name=a").unwrap();
        assert_eq!(spec.address, "10.0.0.1");
        assert_eq!(spec.mac.as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(spec.weight, Some(5));
        assert_eq!(spec.name.as_deref(), Some("a"));
        assert_eq!(parse_backend("10.0.0.1").unwrap().weight, None);
        for bad in [
            "",
            "weight=1",
            "10.0.0.1,weight=x",
            "10.0.0.1,weight=10001",
            "10.0.0.1,colour=red",
            "10.0.0.1,name=a,name=b",
            "10.0.0.1,mac",
        ] {
            assert!(parse_backend(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn calls_have_encoded_paths_and_typed_bodies() {
        let call = build_call(Command::Backend {
            command: BackendCommand::Weight {
                vip: "my web".into(),
                address: "10.0.0.1".into(),
                weight: 7,
            },
        })
        .unwrap_or_else(|UsageError(e)| panic!("{e}"));
        assert_eq!(call.method, "PUT");
        assert_eq!(call.path, "/v1/vips/my%20web/backends/10.0.0.1/weight");
        assert_eq!(call.body, Some(json!({"weight": 7})));
    }

    #[test]
    fn utc_and_durations() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(90_061), "1d 1h 1m 1s");
        assert_eq!(duration(3600), "1h 0m 0s");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
