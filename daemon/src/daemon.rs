//! The `xlbd` run loop: load and validate the config, fill the maps, attach, then serve signals
//! until told to stop. Nothing is attached unless the whole config is valid and applied.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::{error, info, warn};

use crate::{
    config::{Config, ConfigError},
    dataplane::{self, Dataplane, DataplaneError, stats::Snapshot},
    signals::{Signal, Signals},
    state::{DesiredState, StateError},
};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config file is missing or invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The config is valid but its state could not be built.
    #[error("config {path}: {source}")]
    State {
        /// The config file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: StateError,
    },
    /// Loading, filling or attaching the datapath failed.
    #[error("datapath: {0}")]
    Dataplane(#[from] DataplaneError),
    /// Signals could not be set up.
    #[error("blocking signals: {0}")]
    Signals(#[source] std::io::Error),
    /// The stats file could not be written.
    #[error("writing stats file {path}: {source}")]
    StatsFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Options of `xlbd run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The config file.
    pub config: PathBuf,
    /// Where to write a JSON snapshot of the counters (periodically and at exit).
    pub stats_file: Option<PathBuf>,
    /// How often to write the snapshot.
    pub stats_interval: Duration,
}

fn load_state(path: &Path) -> Result<(Config, DesiredState), DaemonError> {
    let config = Config::load(path)?;
    let state = DesiredState::from_config(&config).map_err(|source| DaemonError::State {
        path: path.to_owned(),
        source,
    })?;
    Ok((config, state))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(options: &RunOptions) -> Result<(), DaemonError> {
    let signals = Signals::block().map_err(DaemonError::Signals)?;
    let (config, state) = load_state(&options.config)?;
    let interface = config.interface.name.clone();
    let if_mac = dataplane::interface_mac(&interface)?;
    let mut dataplane = Dataplane::load(&config.limits, if_mac)?;
    let report = dataplane.apply(&state)?;
    info!(vips = report.added, config = %options.config.display(), "state applied");
    let attachment = dataplane.attach(&interface, config.interface.attach_mode)?;
    info!(
        interface = %attachment.interface,
        mode = ?attachment.mode,
        vips = state.vips.len(),
        "xlbd ready"
    );

    let mut next_stats = Instant::now();
    loop {
        if let Some(path) = &options.stats_file
            && Instant::now() >= next_stats
        {
            if let Err(error) = write_stats(&dataplane, path) {
                warn!(%error, "stats snapshot not written; still serving");
            }
            next_stats = Instant::now() + options.stats_interval;
        }
        match signals.wait(Duration::from_millis(200)) {
            Some(Signal::Terminate) => break,
            Some(Signal::Reload) => reload(&mut dataplane, &options.config, &config),
            None => {}
        }
    }

    info!("stopping: detaching the XDP program");
    dataplane.detach()?;
    let snapshot = dataplane.stats()?;
    if let Some(path) = &options.stats_file
        && let Err(error) = write_stats(&dataplane, path)
    {
        warn!(%error, "final stats snapshot not written");
    }
    log_summary(&snapshot);
    Ok(())
}

/// Re-reads the config on SIGHUP. A bad file changes nothing: the error is logged and the
/// applied state keeps serving. Settings fixed at load time (interface, limits) need a restart.
fn reload(dataplane: &mut Dataplane, path: &Path, running: &Config) {
    let started = Instant::now();
    match load_state(path) {
        Ok((config, state)) => {
            if config.interface != running.interface || config.limits != running.limits {
                warn!("[interface] and [limits] changes take effect only after a restart");
            }
            match dataplane.apply(&state) {
                Ok(report) => info!(
                    added = report.added,
                    changed = report.changed,
                    removed = report.removed,
                    unchanged = report.unchanged,
                    micros = started.elapsed().as_micros() as u64,
                    "config reloaded"
                ),
                Err(error) => {
                    error!(%error, "reload failed while applying; VIPs applied before the error keep their new state, the rest their old one")
                }
            }
        }
        Err(error) => {
            error!(%error, "reload refused: the config is invalid; the previous state keeps serving")
        }
    }
}

fn write_stats(dataplane: &Dataplane, path: &Path) -> Result<(), DaemonError> {
    let snapshot = dataplane.stats()?;
    let text = serde_json::to_string_pretty(&snapshot).unwrap_or_default();
    let tmp = path.with_extension("tmp");
    let result = std::fs::write(&tmp, text + "\n").and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|source| DaemonError::StatsFile {
        path: path.to_owned(),
        source,
    })
}

fn log_summary(snapshot: &Snapshot) {
    for vip in &snapshot.vips {
        info!(vip = %vip.name, service = %vip.service, packets = vip.counter.packets, bytes = vip.counter.bytes, "VIP totals");
        for backend in &vip.backends {
            info!(vip = %vip.name, backend = %backend.name, packets = backend.counter.packets, slots = backend.slots, "backend totals");
        }
    }
    let drops: u64 = snapshot.drops.iter().map(|(_, n)| n).sum();
    info!(
        tx = snapshot.action_packets("tx"),
        pass = snapshot.action_packets("pass"),
        drop = drops,
        "datapath totals"
    );
}
