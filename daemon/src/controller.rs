//! The controller: the one place where changes happen. A file edit, SIGHUP, `xlb reload` and
//! every API write all go through [`Controller::change`]: build the layered config (file + API
//! VIPs), validate it whole with the config file's own validator, apply runtime overrides,
//! build the desired state, let the dataplane apply the per-VIP diff, persist API state, and
//! only then adopt the result. Anything that fails leaves the applied state serving.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crossbeam_channel::{Sender, bounded, select, tick, unbounded};
use tracing::{error, info, warn};

use crate::{
    api::{
        self,
        routes::{Command, route},
        server::{Request, Response, ServerConfig},
        types::{
            ApiError, BackendView, ChangeResult, ChangeView, PolicyView, ReloadView, StatusView,
            VipListView, VipSpec, VipView,
        },
    },
    config::{Action, Config, ConfigError, Diagnostic},
    dataplane::{ApplyReport, Dataplane, DataplaneError},
    events::{self, EventLog, EventQuery, EventsView},
    monitor::{self, Monitor},
    notify::Notifier,
    overlay::{Overlay, OverlayError},
    signals::{Signal, Signals},
    state::DesiredState,
    watch,
};

/// How long an API request may wait for the controller; the client gets 503 after that, and the
/// request is dropped unexecuted.
const API_WAIT: Duration = Duration::from_secs(30);

/// Where a change came from (shown in status and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Daemon start.
    Startup,
    /// The config file changed on disk.
    File,
    /// SIGHUP.
    Signal,
    /// An API request.
    Api,
    /// A backend's health changed.
    Health,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Startup => "startup",
            Source::File => "file",
            Source::Signal => "signal",
            Source::Api => "api",
            Source::Health => "health",
        }
    }
}

/// Why a change was refused. Nothing was changed in every case but `Persist`, which rolls the
/// datapath back before reporting.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The config file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The layered config is invalid.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// The state could not be built (Maglev) from a valid config.
    #[error("{0}")]
    State(#[from] crate::state::StateError),
    /// The dataplane refused or failed the change.
    #[error("{0}")]
    Dataplane(#[from] DataplaneError),
    /// The API state could not be saved; the change was rolled back.
    #[error("{0} (change rolled back)")]
    Persist(#[from] OverlayError),
    /// Saving the API state failed, and so did putting back what was serving: the datapath
    /// now holds the refused change, which is not saved.
    #[error(
        "{persist}; rolling the change back failed too: {rollback} (the datapath serves the unsaved change)"
    )]
    RollbackFailed {
        /// Why the API state could not be saved.
        persist: OverlayError,
        /// Why the previous state could not be applied again.
        rollback: DataplaneError,
    },
}

/// Options of the controller (from the command line).
#[derive(Debug, Clone)]
pub struct Options {
    /// The config file.
    pub config_path: PathBuf,
    /// Directory for persisted API state.
    pub state_dir: PathBuf,
    /// JSON counters snapshot, written periodically.
    pub stats_file: Option<PathBuf>,
    /// Period of the snapshot.
    pub stats_interval: Duration,
    /// The API listeners.
    pub api: ServerConfig,
    /// Watch the config file for changes.
    pub watch: bool,
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
    /// Pin maps and link under `<root>/<interface>/` and adopt what is pinned there; `None`
    /// loads unpinned and detaches at exit.
    pub pin_root: Option<PathBuf>,
}

/// The layered config: file VIPs first, then API VIPs.
struct Layered {
    config: Config,
    api_vips: BTreeSet<String>,
}

/// Parses the file text with the API VIPs appended, so both are validated together by the
/// same code; diagnostics in the appended part are reported against the API state.
fn layered(file_text: &str, file_origin: &str, overlay: &Overlay) -> Result<Layered, ConfigError> {
    let api_text = overlay.vips_toml();
    let mut text = file_text.to_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let file_lines = text.lines().count();
    text.push_str(&api_text);
    let mut config = Config::parse(&text, file_origin).map_err(|error| match error {
        ConfigError::Invalid { mut diagnostics } => {
            for d in &mut diagnostics {
                if d.line > file_lines {
                    d.origin = API_ORIGIN.to_owned();
                    d.line -= file_lines;
                }
            }
            ConfigError::Invalid { diagnostics }
        }
        other => other,
    })?;
    if let Some(lists) = &overlay.policy {
        let (deny, allow) =
            crate::config::check_lists(&lists.deny, &lists.allow).map_err(|problems| {
                ConfigError::Invalid {
                    diagnostics: problems
                        .into_iter()
                        .map(|(field, message)| Diagnostic {
                            origin: API_ORIGIN.to_owned(),
                            line: 1,
                            column: 1,
                            field,
                            message,
                        })
                        .collect(),
                }
            })?;
        config.policy.deny = deny;
        config.policy.allow = allow;
    }
    Ok(Layered {
        config,
        api_vips: overlay.vips.keys().cloned().collect(),
    })
}

/// The config with runtime overrides applied: what the datapath should serve.
fn effective(config: &Config, overlay: &Overlay) -> Config {
    let mut config = config.clone();
    for vip in &mut config.vips {
        for backend in &mut vip.backends {
            if let Some(o) = overlay.override_for(&vip.name, &backend.address.to_string()) {
                backend.weight = o.effective_weight(backend.weight);
            }
        }
    }
    config
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Counters of what happened, for status.
#[derive(Default)]
struct Counters {
    generation: u64,
    reloads_ok: u64,
    reloads_failed: u64,
    api_ok: u64,
    api_failed: u64,
    last_reload: Option<ReloadView>,
    last_success_unix: Option<u64>,
}

/// Owns the dataplane and the sources of desired state.
pub struct Controller {
    options: Options,
    dataplane: Dataplane,
    file_text: String,
    /// The file's text as last read, applied or refused: an event that finds the same text
    /// again is not a change.
    seen_file: String,
    overlay: Overlay,
    config: Config,
    /// What is applied; unchanged VIPs' tables are reused from it on the next change.
    desired: DesiredState,
    api_vips: BTreeSet<String>,
    /// Interface and limits in force: fixed when the program was loaded.
    running: (crate::config::InterfaceConfig, crate::config::Limits),
    counters: Counters,
    started: Instant,
    notifier: Notifier,
    /// Recent datapath events, filled by `_event_reader`.
    event_log: Arc<EventLog>,
    _event_reader: Option<events::Reader>,
    /// Keeps the flow tables: clock, idle expiry, room under pressure (stops when dropped).
    _flow_sweeper: crate::dataplane::flows::SweeperThread,
    /// Health checks of the backends, and what they take out of the desired state.
    health: Monitor,
}

fn change_view(report: &ApplyReport, started: Instant) -> ChangeView {
    ChangeView {
        added: report.added,
        changed: report.changed,
        removed: report.removed,
        unchanged: report.unchanged,
        micros: started.elapsed().as_micros() as u64,
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The first change (file + restored API state) failed.
    #[error("{0}")]
    Change(#[from] ChangeError),
    /// The dataplane could not be loaded or attached.
    #[error("datapath: {0}")]
    Dataplane(#[from] DataplaneError),
    /// The persisted API state could not be read.
    #[error("{0}")]
    Overlay(#[from] OverlayError),
    /// The API could not start.
    #[error("API: {0}")]
    Api(String),
    /// The metrics listener could not start.
    #[error("{0}")]
    Metrics(#[source] Box<crate::metrics::ListenError>),
    /// Signals, the watcher or threads could not be set up.
    #[error("{what}: {source}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

enum Event {
    Signal(Signal),
    FileChanged,
    /// A request, where to answer, and when the asker stops waiting.
    Api(Request, Sender<Response>, Instant),
    /// A Prometheus scrape: where to send the text.
    Metrics(Sender<String>),
}

impl Controller {
    fn state_path(&self) -> PathBuf {
        self.options.state_dir.join("api-state.json")
    }

    /// Loads everything, applies the state (file + restored API state) and attaches. Nothing is
    /// attached unless the whole state is valid and applied.
    pub fn start(options: Options) -> Result<Controller, StartError> {
        let overlay = Overlay::load(&options.state_dir.join("api-state.json"))?;
        let file_text = read_file(&options.config_path)?;
        let origin = options.config_path.display().to_string();
        let layered = layered(&file_text, &origin, &overlay).map_err(ChangeError::from)?;
        let desired = DesiredState::from_config(&effective(&layered.config, &overlay))
            .map_err(ChangeError::from)?;
        // Another daemon answering on our socket: refuse before touching the interface.
        if std::os::unix::net::UnixStream::connect(&options.api.unix_socket).is_ok() {
            return Err(StartError::Api(format!(
                "another xlbd is serving on {}",
                options.api.unix_socket.display()
            )));
        }
        let interface = layered.config.interface.name.clone();
        let mut health = Monitor::start(&interface).map_err(|source| StartError::Setup {
            what: "health checker",
            source,
        })?;
        let if_mac = crate::dataplane::interface_mac(&interface)?;
        let limits = &layered.config.limits;
        let mut dataplane = match &options.pin_root {
            Some(root) => Dataplane::load_pinned(
                limits,
                if_mac,
                crate::dataplane::pin::PinDir::new(root, &interface),
            )?,
            None => Dataplane::load(limits, if_mac)?,
        };
        let started = Instant::now();
        match crate::dataplane::interface_mtu(&interface) {
            Ok(mtu) => dataplane.set_interface_mtu(mtu),
            Err(error) => warn!(%error, "encap.mtu defaults to 1500"),
        }
        let report = dataplane.apply(&desired)?;
        let event_log = EventLog::new(layered.config.events.keep as usize);
        let event_reader = match dataplane.take_events() {
            Some(ring) => Some(events::spawn_reader(ring, Arc::clone(&event_log)).map_err(
                |source| StartError::Setup {
                    what: "event reader thread",
                    source,
                },
            )?),
            None => None,
        };
        // The flow tables' clock is running before the first packet arrives.
        let flow_sweeper = dataplane
            .flow_sweeper(limits.flow_idle_timeout)?
            .spawn()
            .map_err(|source| StartError::Setup {
                what: "flow table sweeper thread",
                source,
            })?;
        dataplane.attach(&interface, layered.config.interface.attach_mode)?;
        health.update(&layered.config);
        let mut controller = Controller {
            options,
            dataplane,
            seen_file: file_text.clone(),
            file_text,
            overlay,
            running: (layered.config.interface.clone(), layered.config.limits),
            config: layered.config,
            desired,
            api_vips: layered.api_vips,
            counters: Counters::default(),
            started: Instant::now(),
            notifier: Notifier::from_env(),
            event_log,
            _event_reader: event_reader,
            _flow_sweeper: flow_sweeper,
            health,
        };
        controller.record(Source::Startup, Ok(change_view(&report, started)));
        Ok(controller)
    }

    fn record(&mut self, source: Source, result: Result<ChangeView, &ChangeError>) {
        let view = match result {
            Ok(change) => {
                self.counters.generation += 1;
                self.counters.reloads_ok += 1;
                self.counters.last_success_unix = Some(unix_now());
                info!(
                    source = source.name(),
                    generation = self.counters.generation,
                    added = change.added,
                    changed = change.changed,
                    removed = change.removed,
                    unchanged = change.unchanged,
                    micros = change.micros,
                    "state applied"
                );
                ReloadView {
                    ok: true,
                    source: source.name().to_owned(),
                    unix_time: unix_now(),
                    error: None,
                    changed: Some(change),
                }
            }
            Err(e) => {
                self.counters.reloads_failed += 1;
                let what = match e {
                    ChangeError::Dataplane(error)
                        if !matches!(error, DataplaneError::Capacity { .. }) =>
                    {
                        "change failed while applying; VIPs switched before the error keep their new state, the others their old one"
                    }
                    ChangeError::RollbackFailed { .. } => {
                        "change could not be saved nor rolled back; the datapath serves it unsaved"
                    }
                    _ => "change refused; the previous state keeps serving",
                };
                error!(source = source.name(), error = %e, "{what}");
                ReloadView {
                    ok: false,
                    source: source.name().to_owned(),
                    unix_time: unix_now(),
                    error: Some(e.to_string()),
                    changed: None,
                }
            }
        };
        self.counters.last_reload = Some(view);
    }

    /// The single change path. `file_text`/`overlay` replace the current ones when given.
    fn change(
        &mut self,
        source: Source,
        file_text: Option<String>,
        overlay: Option<Overlay>,
    ) -> Result<ChangeView, ChangeError> {
        let started = Instant::now();
        self.notifier.reloading();
        let result = self.try_change(file_text, overlay, started);
        self.record(source, result.as_ref().map(Clone::clone));
        self.notifier.ready(&self.summary());
        result
    }

    fn try_change(
        &mut self,
        file_text: Option<String>,
        overlay: Option<Overlay>,
        started: Instant,
    ) -> Result<ChangeView, ChangeError> {
        let file_text = file_text.unwrap_or_else(|| self.file_text.clone());
        let overlay_changed = overlay.is_some();
        let mut overlay = overlay.unwrap_or_else(|| self.overlay.clone());
        let origin = self.options.config_path.display().to_string();
        let layered = layered(&file_text, &origin, &overlay)?;
        if (&layered.config.interface, &layered.config.limits) != (&self.running.0, &self.running.1)
        {
            warn!(
                "[interface] and [limits] changes take effect only after a restart; applying the rest"
            );
        }
        let pruned = overlay.prune(|vip, backend| {
            layered.config.vips.iter().any(|v| {
                v.name == vip && v.backends.iter().any(|b| b.address.to_string() == backend)
            })
        });
        for (vip, backend) in &pruned {
            info!(
                vip,
                backend, "forgetting the override of a backend that no longer exists"
            );
        }
        let mut serving = effective(&layered.config, &overlay);
        self.health.apply(&mut serving, &self.desired);
        let desired = DesiredState::from_config_reusing(&serving, Some(&self.desired))?;
        let report = self.dataplane.apply(&desired)?;
        if (overlay_changed || !pruned.is_empty())
            && overlay != self.overlay
            && let Err(error) = overlay.save(&self.state_path())
        {
            // Put back what was serving, so the datapath matches what is persisted.
            if let Err(rollback) = self.dataplane.apply(&self.desired) {
                return Err(ChangeError::RollbackFailed {
                    persist: error,
                    rollback,
                });
            }
            return Err(error.into());
        }
        self.event_log
            .set_capacity(layered.config.events.keep as usize);
        self.desired = desired;
        self.file_text = file_text;
        self.overlay = overlay;
        self.config = layered.config;
        self.api_vips = layered.api_vips;
        self.health.update(&self.config);
        Ok(change_view(&report, started))
    }

    fn summary(&self) -> String {
        let backends: usize = self.config.vips.iter().map(|v| v.backends.len()).sum();
        format!(
            "{} VIPs, {} backends, generation {}, {} refused changes",
            self.config.vips.len(),
            backends,
            self.counters.generation,
            self.counters.reloads_failed
        )
    }

    /// Re-reads the config file. With `only_if_changed`, identical contents are not applied.
    fn reload_file(
        &mut self,
        source: Source,
        only_if_changed: bool,
    ) -> Result<Option<ChangeView>, ChangeError> {
        let text = match read_file(&self.options.config_path) {
            Ok(text) => text,
            Err(error) => {
                self.record(source, Err(&error));
                return Err(error);
            }
        };
        if only_if_changed && text == self.seen_file {
            return Ok(None);
        }
        self.seen_file.clone_from(&text);
        self.change(source, Some(text), None).map(Some)
    }

    /// Runs until SIGTERM/SIGINT: serves the API, watches the file, handles SIGHUP.
    pub fn run(mut self, signals: Signals) -> Result<(), StartError> {
        let (events_tx, events) = unbounded::<Event>();
        let signal_tx = events_tx.clone();
        std::thread::Builder::new()
            .name("xlb-signals".into())
            .spawn(move || {
                loop {
                    if let Some(signal) = signals.wait(Duration::from_secs(1))
                        && signal_tx.send(Event::Signal(signal)).is_err()
                    {
                        return;
                    }
                }
            })
            .map_err(|source| StartError::Setup {
                what: "signal thread",
                source,
            })?;
        if self.options.watch {
            let (file_tx, file_rx) = unbounded::<()>();
            watch::spawn(&self.options.config_path, file_tx).map_err(|source| {
                StartError::Setup {
                    what: "watching the config file",
                    source,
                }
            })?;
            let forward = events_tx.clone();
            std::thread::Builder::new()
                .name("xlb-watch-fwd".into())
                .spawn(move || {
                    for () in file_rx {
                        if forward.send(Event::FileChanged).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|source| StartError::Setup {
                    what: "watch thread",
                    source,
                })?;
        }
        let api_tx = events_tx.clone();
        let handler: Arc<dyn Fn(Request) -> Response + Send + Sync> = Arc::new(move |request| {
            let (reply_tx, reply_rx) = bounded(1);
            let deadline = Instant::now() + API_WAIT;
            if api_tx
                .send(Event::Api(request, reply_tx, deadline))
                .is_err()
            {
                return ApiError::unavailable("xlbd is shutting down").into();
            }
            reply_rx
                .recv_timeout(API_WAIT)
                .unwrap_or_else(|_| ApiError::unavailable("xlbd did not answer in time").into())
        });
        let _server = api::server::start(&self.options.api, handler)
            .map_err(|e| StartError::Api(e.to_string()))?;
        if let Some(address) = self.options.metrics {
            let metrics_tx = events_tx.clone();
            crate::metrics::serve(address, move || {
                let (reply_tx, reply_rx) = bounded(1);
                metrics_tx.send(Event::Metrics(reply_tx)).ok()?;
                reply_rx.recv_timeout(crate::metrics::SCRAPE_WAIT).ok()
            })
            .map_err(|source| StartError::Metrics(Box::new(source)))?;
        }
        drop(events_tx);

        let attachment = self
            .dataplane
            .attachment()
            .map(|a| format!("{} ({:?})", a.interface, a.mode));
        info!(attached = attachment.as_deref().unwrap_or("-"), socket = %self.options.api.unix_socket.display(), "xlbd ready");
        self.notifier.ready(&self.summary());

        let stats_tick = tick(self.options.stats_interval);
        let transitions = self.health.transitions().clone();
        self.write_stats();
        loop {
            select! {
                recv(transitions) -> transition => {
                    // Take every transition already waiting: one change for a burst (a rack
                    // going dark), not one per backend.
                    let mut changed = false;
                    for transition in transition.into_iter().chain(transitions.try_iter()) {
                        changed |= self.health.record(transition);
                    }
                    if changed {
                        let _ = self.change(Source::Health, None, None);
                    }
                }
                recv(events) -> event => match event {
                    Ok(Event::Signal(Signal::Terminate)) | Err(_) => break,
                    Ok(Event::Signal(Signal::Reload)) => {
                        let _ = self.reload_file(Source::Signal, false);
                    }
                    Ok(Event::FileChanged) => {
                        let _ = self.reload_file(Source::File, true);
                    }
                    Ok(Event::Api(request, reply, deadline)) => {
                        // A request whose asker gave up is not carried out: a retry must not
                        // apply it twice.
                        if Instant::now() < deadline {
                            let response = self.handle(&request);
                            let _ = reply.send(response);
                        } else {
                            warn!(method = %request.method, path = %request.path, "API request expired before its turn; not carried out");
                        }
                    }
                    Ok(Event::Metrics(reply)) => {
                        let _ = reply.send(self.metrics_text());
                    }
                },
                recv(stats_tick) -> _ => self.write_stats(),
            }
        }
        self.notifier.stopping();
        if self.dataplane.outlives_daemon() {
            info!(
                pins = %self.dataplane.pins().map_or_else(String::new, |p| p.path().display().to_string()),
                "stopping: the XDP program stays attached and its maps pinned, so traffic keeps flowing (`xlbd detach` removes them)"
            );
        } else {
            info!("stopping: detaching the XDP program");
            self.dataplane.detach()?;
        }
        self.write_stats();
        Ok(())
    }

    fn write_stats(&self) {
        let Some(path) = &self.options.stats_file else {
            return;
        };
        let result = self
            .dataplane
            .stats()
            .map_err(|e| e.to_string())
            .and_then(|snapshot| {
                let text = serde_json::to_string_pretty(&snapshot).unwrap_or_default() + "\n";
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, text)
                    .and_then(|()| std::fs::rename(&tmp, path))
                    .map_err(|e| format!("{}: {e}", path.display()))
            });
        if let Err(error) = result {
            warn!(%error, "stats snapshot not written; still serving");
        }
    }

    /// The Prometheus exposition text of the datapath's and the controller's counters.
    fn metrics_text(&mut self) -> String {
        let snapshot = match self.dataplane.stats() {
            Ok(snapshot) => Some(snapshot),
            Err(error) => {
                warn!(%error, "counters unreadable; metrics report the datapath down");
                None
            }
        };
        let flow_table = match self.dataplane.flow_table() {
            Ok(view) => Some(view),
            Err(error) => {
                warn!(%error, "flow table unreadable; its metrics are left out");
                None
            }
        };
        let control = crate::metrics::ControlCounts {
            reloads_ok: self.counters.reloads_ok,
            reloads_failed: self.counters.reloads_failed,
            last_success_unix: self.counters.last_success_unix,
            api_ok: self.counters.api_ok,
            api_failed: self.counters.api_failed,
        };
        crate::metrics::render(snapshot.as_ref(), flow_table, &control, &|vip, backend| {
            crate::metrics::BackendControl {
                drained: self
                    .overlay
                    .override_for(vip, backend)
                    .is_some_and(|o| o.drained),
                health: backend.parse().ok().and_then(|address| {
                    let view = self.health.backend(vip, address)?;
                    Some(crate::metrics::BackendHealth {
                        up: !self.health.is_down(vip, address),
                        went_down: view.went_down,
                        came_up: view.came_up,
                    })
                }),
            }
        })
    }

    /// Serves one API request.
    pub fn handle(&mut self, request: &Request) -> Response {
        let result = route(request).and_then(|command| self.execute(command));
        match result {
            Ok(response) => {
                self.counters.api_ok += 1;
                response
            }
            Err(error) => {
                self.counters.api_failed += 1;
                warn!(method = %request.method, path = %request.path, status = error.status, error = %error.message, "API request refused");
                error.into()
            }
        }
    }

    fn execute(&mut self, command: Command) -> Result<Response, ApiError> {
        match command {
            Command::Status => Ok(json(200, &self.status_view())),
            Command::Events(query) => Ok(json(200, &self.events_view(&query))),
            Command::GetPolicy => Ok(json(200, &self.policy_view())),
            Command::SetPolicy(lists) => {
                let mut overlay = self.overlay.clone();
                overlay.policy = Some(lists);
                self.api_change(overlay, 200)
            }
            Command::ResetPolicy => {
                let mut overlay = self.overlay.clone();
                overlay.policy = None;
                self.api_change(overlay, 200)
            }
            Command::ListVips => Ok(json(
                200,
                &VipListView {
                    vips: self.vip_views(),
                },
            )),
            Command::GetVip { name } => self
                .vip_views()
                .into_iter()
                .find(|v| v.name == name)
                .map(|v| json(200, &v))
                .ok_or_else(|| ApiError::not_found(format!("no VIP named {name:?}"))),
            Command::Reload => {
                let change = self
                    .reload_file(Source::Api, false)
                    .map_err(|e| change_error(&e))?;
                Ok(self.change_result(200, change.unwrap_or_default()))
            }
            Command::AddVip(spec) => {
                if self.config.vips.iter().any(|v| v.name == spec.name) {
                    return Err(ApiError::conflict(
                        format!("a VIP named {:?} already exists", spec.name),
                        Some("name"),
                    ));
                }
                if let Some(other) = self.same_service(&spec) {
                    return Err(ApiError::conflict(
                        format!(
                            "{} is already served by VIP {other:?}",
                            crate::config::service_label(&spec.address, spec.port, &spec.protocol)
                        ),
                        Some("address"),
                    ));
                }
                let mut overlay = self.overlay.clone();
                overlay.vips.insert(spec.name.clone(), spec);
                self.api_change(overlay, 201)
            }
            Command::RemoveVip { name } => {
                self.owned_by_api(&name)?;
                let mut overlay = self.overlay.clone();
                overlay.vips.remove(&name);
                overlay.overrides.remove(&name);
                self.api_change(overlay, 200)
            }
            Command::SetBackends { vip, backends } => {
                self.owned_by_api(&vip)?;
                let mut overlay = self.overlay.clone();
                if let Some(spec) = overlay.vips.get_mut(&vip) {
                    spec.backends = backends;
                }
                self.api_change(overlay, 200)
            }
            Command::SetWeight {
                vip,
                backend,
                weight,
            } => {
                let backend = self.find_backend(&vip, &backend)?;
                let mut overlay = self.overlay.clone();
                overlay.set_override(&vip, &backend, |o| o.weight = Some(weight));
                self.api_change(overlay, 200)
            }
            Command::ResetWeight { vip, backend } => {
                let backend = self.find_backend(&vip, &backend)?;
                let mut overlay = self.overlay.clone();
                overlay.set_override(&vip, &backend, |o| o.weight = None);
                self.api_change(overlay, 200)
            }
            Command::Drain { vip, backend } => {
                let backend = self.find_backend(&vip, &backend)?;
                let mut overlay = self.overlay.clone();
                overlay.set_override(&vip, &backend, |o| o.drained = true);
                self.api_change(overlay, 200)
            }
            Command::Undrain { vip, backend } => {
                let backend = self.find_backend(&vip, &backend)?;
                let mut overlay = self.overlay.clone();
                overlay.set_override(&vip, &backend, |o| o.drained = false);
                self.api_change(overlay, 200)
            }
        }
    }

    fn api_change(&mut self, overlay: Overlay, status: u16) -> Result<Response, ApiError> {
        let change = self
            .change(Source::Api, None, Some(overlay))
            .map_err(|e| change_error(&e))?;
        Ok(self.change_result(status, change))
    }

    fn change_result(&self, status: u16, change: ChangeView) -> Response {
        json(
            status,
            &ChangeResult {
                ok: true,
                generation: self.counters.generation,
                change,
            },
        )
    }

    fn same_service(&self, spec: &VipSpec) -> Option<String> {
        self.config
            .vips
            .iter()
            .find(|v| {
                v.address.to_string() == spec.address
                    && v.port == spec.port
                    && v.protocol.to_string() == spec.protocol
            })
            .map(|v| v.name.clone())
    }

    /// API writes to a VIP's definition are allowed only for VIPs the API created.
    fn owned_by_api(&self, name: &str) -> Result<(), ApiError> {
        if self.api_vips.contains(name) {
            return Ok(());
        }
        if self.config.vips.iter().any(|v| v.name == name) {
            return Err(ApiError::conflict(
                format!(
                    "VIP {name:?} is defined in the config file; change it there (the API may only set weights and drain its backends)"
                ),
                None,
            ));
        }
        Err(ApiError::not_found(format!("no VIP named {name:?}")))
    }

    /// The canonical text of a backend address of a VIP, or 404.
    fn find_backend(&self, vip: &str, backend: &str) -> Result<String, ApiError> {
        let Some(config) = self.config.vips.iter().find(|v| v.name == vip) else {
            return Err(ApiError::not_found(format!("no VIP named {vip:?}")));
        };
        let wanted: Option<std::net::IpAddr> = backend.parse().ok();
        config
            .backends
            .iter()
            .find(|b| Some(b.address) == wanted || b.name == backend)
            .map(|b| b.address.to_string())
            .ok_or_else(|| ApiError::not_found(format!("VIP {vip:?} has no backend {backend:?}")))
    }

    fn events_view(&self, query: &EventQuery) -> EventsView {
        let (found, next) = self
            .event_log
            .query(query.after, query.last, |l| query.matches(l));
        let events = found
            .iter()
            .map(|logged| {
                let e = &logged.event;
                let names = if e.verdict == xlb_common::event_verdict::FORWARD {
                    self.dataplane.names_of(e.vip_id, e.backend_id)
                } else {
                    (self.vip_for(e), None)
                };
                events::view(logged, names)
            })
            .collect();
        EventsView { events, next }
    }

    /// The VIP a dropped packet was addressed to: the exact port first, then a port-0 VIP.
    fn vip_for(&self, event: &xlb_common::Event) -> Option<String> {
        let (_, dst) = events::addresses(event);
        let dst = dst?;
        let port = u16::from_be(event.dport);
        let on = |p: u16| {
            self.config
                .vips
                .iter()
                .find(|v| v.address == dst && v.port == p && v.protocol.number() == event.proto)
        };
        on(port).or_else(|| on(0)).map(|v| v.name.clone())
    }

    fn policy_view(&self) -> PolicyView {
        let policy = &self.config.policy;
        let action = |a: Action| match a {
            Action::Drop => "drop".to_owned(),
            Action::Pass => "pass".to_owned(),
        };
        let texts = |list: &[crate::config::Cidr]| list.iter().map(ToString::to_string).collect();
        PolicyView {
            lists_source: if self.overlay.policy.is_some() {
                "api"
            } else {
                "file"
            }
            .to_owned(),
            deny: texts(&policy.deny),
            allow: texts(&policy.allow),
            unserved: action(policy.unserved),
            ipv4_options: action(policy.ipv4_options),
            fragments: action(policy.fragments),
            icmp_echo: match policy.icmp_echo {
                crate::config::IcmpEcho::Reply => "reply",
                crate::config::IcmpEcho::Pass => "pass",
                crate::config::IcmpEcho::Drop => "drop",
            }
            .to_owned(),
            icmp_other: action(policy.icmp_other),
            encap_mtu: self.dataplane.encap_mtu(),
            on_too_big: match self.config.encap.on_too_big {
                crate::config::TooBig::Icmp => "icmp",
                crate::config::TooBig::Drop => "drop",
            }
            .to_owned(),
            rate_limit: policy.rate_limit.map(|r| (r.per_second, r.burst)),
            flow_insert_rate: policy.flow_insert_rate,
            icmp_rate_limit: policy.icmp_rate_limit,
            vip_source_ranges: self
                .config
                .vips
                .iter()
                .filter_map(|v| Some((v.name.clone(), texts(v.source_ranges.as_ref()?))))
                .collect(),
            counters: self
                .dataplane
                .global_stats()
                .map(|s| s.policy)
                .unwrap_or_default(),
        }
    }

    fn status_view(&mut self) -> StatusView {
        let flow_table = match self.dataplane.flow_table() {
            Ok(view) => Some(crate::api::types::FlowTableStatusView {
                entries: view.entries,
                entries_v6: view.entries_v6,
                capacity: view.capacity,
                slots: view.slots,
                expired: view.expired,
                evicted: view.evicted,
                idle_timeout_seconds: self.running.1.flow_idle_timeout,
            }),
            Err(error) => {
                warn!(%error, "flow table unreadable; status leaves it out");
                None
            }
        };
        let snapshot = self.dataplane.global_stats().ok();
        let attachment = self.dataplane.attachment();
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            interface: self.running.0.name.clone(),
            attach_mode: attachment
                .map_or("detached", |a| match a.mode {
                    aya::programs::XdpMode::Driver => "native",
                    aya::programs::XdpMode::Skb => "generic",
                    aya::programs::XdpMode::Hardware => "offload",
                    aya::programs::XdpMode::Default => "default",
                })
                .to_owned(),
            generation: self.counters.generation,
            config_path: self.options.config_path.display().to_string(),
            last_reload: self.counters.last_reload.clone(),
            reloads_ok: self.counters.reloads_ok,
            reloads_failed: self.counters.reloads_failed,
            api_requests_ok: self.counters.api_ok,
            api_requests_failed: self.counters.api_failed,
            vips: self.config.vips.len(),
            backends: self.config.vips.iter().map(|v| v.backends.len()).sum(),
            health: self.health.summary(),
            flow_table,
            actions: snapshot
                .as_ref()
                .map(|s| {
                    s.actions
                        .iter()
                        .map(|(n, c)| (n.clone(), c.packets))
                        .collect()
                })
                .unwrap_or_default(),
            drops: snapshot.map(|s| s.drops).unwrap_or_default(),
        }
    }

    fn vip_views(&self) -> Vec<VipView> {
        let snapshot = self.dataplane.stats().unwrap_or_default();
        // By name, so that each VIP finds its counters in one lookup (a scan per VIP made a
        // listing of 100,000 VIPs quadratic).
        let by_name: std::collections::HashMap<&str, &crate::dataplane::stats::VipStats> =
            snapshot.vips.iter().map(|s| (s.name.as_str(), s)).collect();
        self.config
            .vips
            .iter()
            .map(|vip| {
                let stats = by_name.get(vip.name.as_str()).copied();
                let mut view = VipView {
                    name: vip.name.clone(),
                    address: vip.address.to_string(),
                    port: vip.port,
                    protocol: vip.protocol.to_string(),
                    mode: vip.mode.to_string(),
                    source: if self.api_vips.contains(&vip.name) {
                        "api"
                    } else {
                        "file"
                    }
                    .to_owned(),
                    table_size: vip.table_size,
                    packets: stats.map_or(0, |s| s.counter.packets),
                    bytes: stats.map_or(0, |s| s.counter.bytes),
                    health: String::new(),
                    backends: vip
                        .backends
                        .iter()
                        .enumerate()
                        .map(|(i, b)| {
                            let address = b.address.to_string();
                            let o = self
                                .overlay
                                .override_for(&vip.name, &address)
                                .cloned()
                                .unwrap_or_default();
                            let bstats = stats.and_then(|s| s.backends.get(i));
                            BackendView {
                                name: b.name.clone(),
                                address,
                                mac: b.mac.to_string(),
                                weight: o.effective_weight(b.weight),
                                configured_weight: b.weight,
                                state: if o.drained { "drained" } else { "active" }.to_owned(),
                                slots: bstats.map_or(0, |s| s.slots),
                                packets: bstats.map_or(0, |s| s.counter.packets),
                                bytes: bstats.map_or(0, |s| s.counter.bytes),
                                health: self.health.backend(&vip.name, b.address),
                            }
                        })
                        .collect(),
                };
                let weighted: Vec<Option<bool>> = view
                    .backends
                    .iter()
                    .filter(|b| b.weight > 0)
                    .map(|b| b.health.as_ref().map(|h| h.health == "up"))
                    .collect();
                view.health = monitor::vip_state(vip, &weighted);
                view
            })
            .collect()
    }
}

fn read_file(path: &Path) -> Result<String, ChangeError> {
    std::fs::read_to_string(path).map_err(|source| ChangeError::Read {
        path: path.to_owned(),
        source,
    })
}

fn json(status: u16, value: &impl serde::Serialize) -> Response {
    Response {
        status,
        body: serde_json::to_value(value).unwrap_or_default(),
    }
}

/// An API error for a refused change: 400 naming the first invalid field, 409 for capacity.
fn change_error(error: &ChangeError) -> ApiError {
    match error {
        ChangeError::Invalid(config) => {
            // Problems in what the request pushed are named as the request names them; a
            // problem in the file (or between the file and the request) keeps its position.
            let lines: Vec<String> = config
                .diagnostics()
                .iter()
                .map(|d| match d.origin.as_str() {
                    API_ORIGIN => format!("{}: {}", api_field(&d.field), d.message),
                    _ => d.to_string(),
                })
                .collect();
            let field = config
                .diagnostics()
                .iter()
                .find(|d| d.origin == API_ORIGIN)
                .map(|d| api_field(&d.field));
            ApiError::bad_request(lines.join("; "), field.as_deref())
        }
        ChangeError::Dataplane(DataplaneError::Capacity { .. }) => {
            ApiError::conflict(error.to_string(), None)
        }
        ChangeError::State(_) => ApiError::bad_request(error.to_string(), None),
        _ => ApiError::internal(error.to_string()),
    }
}

/// A config field path (`vip[3].backend[1].address`) as the API names it
/// (`backends[1].address`).
fn api_field(field: &str) -> String {
    if let Some(list) = field.strip_prefix("policy.") {
        return list.to_owned();
    }
    let rest = match field.strip_prefix("vip[") {
        Some(rest) => rest.split_once("].").map_or(rest, |(_, r)| r),
        None => field,
    };
    match rest.strip_prefix("backend") {
        Some(tail) if tail.is_empty() || tail.starts_with(['[', '.']) => format!("backends{tail}"),
        _ => rest.to_owned(),
    }
}

/// Origin given to diagnostics about VIPs pushed through the API.
const API_ORIGIN: &str = "API state";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_are_named_as_the_api_names_them() {
        assert_eq!(
            api_field("vip[3].backend[1].address"),
            "backends[1].address"
        );
        assert_eq!(api_field("vip[3].backend"), "backends");
        assert_eq!(api_field("vip[0].address"), "address");
        assert_eq!(api_field("vip[0].backends_x"), "backends_x");
        assert_eq!(api_field("vip[2].source_ranges[1]"), "source_ranges[1]");
        assert_eq!(api_field("policy.deny[2]"), "deny[2]");
        assert_eq!(api_field("vip[2].health.path"), "health.path");
        assert_eq!(
            api_field("vip[2].backend[0].health.rise"),
            "backends[0].health.rise"
        );
    }

    #[test]
    fn layered_diagnostics_point_into_the_api_state() {
        let file = "[interface]\nname = \"eth0\"\n";
        let mut overlay = Overlay::default();
        let spec: VipSpec = serde_json::from_str(
            r#"{"name":"a","address":"10.0.0.300","port":80,"protocol":"tcp","mode":"l2","backends":[]}"#,
        )
        .unwrap();
        overlay.vips.insert("a".into(), spec);
        let Err(ConfigError::Invalid { diagnostics }) = layered(file, "f.toml", &overlay) else {
            panic!("invalid expected");
        };
        assert!(
            diagnostics.iter().all(|d| d.origin == API_ORIGIN),
            "{diagnostics:?}"
        );
        let fields: Vec<String> = diagnostics.iter().map(|d| api_field(&d.field)).collect();
        assert!(fields.contains(&"address".to_owned()), "{fields:?}");
        assert!(fields.contains(&"backends".to_owned()), "{fields:?}");
    }
}
