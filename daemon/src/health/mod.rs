//! Active health checks of backends: TCP connect, HTTP GET and UDP request/reply probes, all run
//! as non-blocking sockets on one event loop (mio) in one thread, whatever the number of
//! targets.
//!
//! The caller hands the whole set of [`Target`]s to a [`Checker`] and hears about every change
//! of health as a [`Transition`] on a channel. A target flips only after `fall` consecutive
//! failures (Up to Down) or `rise` consecutive successes (Down to Up); a timeout is a failure.
//!
//! **Starting state.** A new target starts [`Health::Up`] and needs `fall` failures to go down,
//! as HAProxy does for a server it has not checked yet and as Katran assumes of every real: a
//! restart of the daemon, or a reload that adds a target, must not take traffic away from
//! backends that are serving it. No transition is sent for the starting state; the first one a
//! target can get is Down.
//!
//! **Scale.** Probes are scheduled from a binary heap of due times, the first probe of each
//! target at a deterministic offset inside its interval (a hash of its id) so that 10,000
//! targets added at once do not all fire at once. At most [`MAX_OPEN_PROBES`] sockets are open
//! at a time; a probe due beyond that waits its turn in a queue and is counted in
//! [`Stats::probes_deferred`], first come first served. Timers may fire up to 5 ms late, so
//! that probes due close together start in one wake-up of the loop.
//!
//! **Sockets.** Each probe opens a fresh socket and closes it with a plain `close` (a FIN, no
//! RST), so backends see orderly connections and the checker's side keeps the TIME-WAIT.
//!
//! Failures on our side that say nothing about the backend (out of file descriptors, buffers,
//! memory or ephemeral ports) do not count as a result: they are counted in
//! [`Stats::local_errors`], logged, and the probe is tried again at the next interval.

mod engine;
mod probe;
mod state;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// The channel crate transitions are sent on, re-exported so a caller can make the
/// [`Sender`](crossbeam_channel::Sender) that [`Checker::start`] takes without naming the same
/// version itself.
pub use crossbeam_channel;

/// The caller's name for a target; the checker only compares ids.
pub type TargetId = u64;

/// At most this many probe sockets are open at once. A probe due while this many are in flight
/// waits for one to finish. Lowered at start when the process's file-descriptor limit
/// (`RLIMIT_NOFILE`) is too small to leave room for the rest of the daemon.
pub const MAX_OPEN_PROBES: usize = 4096;

/// The largest UDP probe payload: one IPv4 datagram.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// The status codes an HTTP check's `expect` ranges may name.
pub const HTTP_STATUS_CODES: RangeInclusive<u16> = 100..=599;

/// The status codes an HTTP check accepts when its `expect` list is empty.
pub const DEFAULT_HTTP_EXPECT: RangeInclusive<u16> = 200..=399;

/// What a probe does and what counts as a success. (Serialized for the config's `Serialize`,
/// as `check = "tcp"` and the like.)
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "check")]
pub enum Check {
    /// A TCP connect that completes (the socket is closed right after): success when the
    /// socket becomes writable with no error.
    Tcp,
    /// A TCP connect, then `GET path HTTP/1.1`; success when the response's status code is in
    /// one of the `expect` ranges ([`DEFAULT_HTTP_EXPECT`] when the list is empty). Only the
    /// status line is read (at most 1 KiB); the connection is closed then, which resets it if
    /// the server had sent more.
    Http {
        /// The request target, starting with `/`.
        path: String,
        /// The `Host` header; the target's address (`ip:port`) when `None`.
        host: Option<String>,
        /// Status codes that count as a success.
        expect: Vec<RangeInclusive<u16>>,
    },
    /// A datagram sent on a connected UDP socket; success when a reply comes back before the
    /// timeout and, if `expect` is set, begins with those bytes. An ICMP port unreachable is an
    /// immediate failure.
    Udp {
        /// The datagram to send (may be empty).
        payload: Vec<u8>,
        /// The bytes the reply must begin with; any reply will do when `None`.
        expect: Option<Vec<u8>>,
    },
}

/// How and how often one target is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The probe.
    pub check: Check,
    /// Time between the starts of two probes of the target.
    pub interval: Duration,
    /// How long a probe may take before it counts as a failure.
    pub timeout: Duration,
    /// Consecutive successes that bring a Down target Up.
    pub rise: u32,
    /// Consecutive failures that take an Up target Down.
    pub fall: u32,
}

impl Default for Settings {
    /// A TCP check every 2 s with a 1 s timeout, up after 2 successes and down after 3
    /// failures: HAProxy's defaults (`inter 2s`, `rise 2`, `fall 3`, and a connect timeout
    /// below the interval), which operators already know, and which take a dead backend out
    /// in about 6 s without flapping on one lost SYN.
    fn default() -> Settings {
        Settings {
            check: Check::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

/// Something wrong with a target's settings. A target given to [`Checker::set_targets`] with
/// such an error is never probed: it goes Down at once, with the error as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The interval is zero.
    #[error("interval must be above zero")]
    ZeroInterval,
    /// The timeout is zero.
    #[error("timeout must be above zero")]
    ZeroTimeout,
    /// `rise` is zero.
    #[error("rise must be at least 1")]
    ZeroRise,
    /// `fall` is zero.
    #[error("fall must be at least 1")]
    ZeroFall,
    /// The HTTP path does not start with `/` or holds a space or control character (which
    /// would break, or inject into, the request).
    #[error("HTTP path {0:?} must start with '/' and hold no spaces or control characters")]
    BadPath(String),
    /// The HTTP host is empty or holds a space or control character.
    #[error("HTTP host {0:?} must be non-empty and hold no spaces or control characters")]
    BadHost(String),
    /// An expected status range is empty or outside 100..=599.
    #[error("HTTP expect range {start}..={end} must be non-empty and within 100..=599")]
    BadExpect {
        /// First code of the range.
        start: u16,
        /// Last code of the range.
        end: u16,
    },
    /// The UDP payload does not fit in one datagram.
    #[error("UDP payload of {0} bytes is larger than a datagram (65,507 bytes)")]
    PayloadTooLarge(usize),
    /// The bind address is of another family than the target's address.
    #[error("bind address {bind} is not of the same family as {address}")]
    BindFamily {
        /// The bind address.
        bind: IpAddr,
        /// The target's address.
        address: SocketAddr,
    },
}

/// Whether `text` may go into an HTTP probe's request line or `Host` header: non-empty, without
/// whitespace or control characters (which would break, or inject into, the request).
pub fn is_request_text(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl Settings {
    /// Checks the settings; [`Checker::set_targets`] does the same for every target.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.interval.is_zero() {
            return Err(SettingsError::ZeroInterval);
        }
        if self.timeout.is_zero() {
            return Err(SettingsError::ZeroTimeout);
        }
        if self.rise == 0 {
            return Err(SettingsError::ZeroRise);
        }
        if self.fall == 0 {
            return Err(SettingsError::ZeroFall);
        }
        match &self.check {
            Check::Tcp => {}
            Check::Http { path, host, expect } => {
                if !path.starts_with('/') || !is_request_text(path) {
                    return Err(SettingsError::BadPath(path.clone()));
                }
                if let Some(host) = host.as_ref().filter(|h| !is_request_text(h)) {
                    return Err(SettingsError::BadHost(host.clone()));
                }
                if let Some(range) = expect.iter().find(|r| {
                    r.is_empty()
                        || !HTTP_STATUS_CODES.contains(r.start())
                        || !HTTP_STATUS_CODES.contains(r.end())
                }) {
                    return Err(SettingsError::BadExpect {
                        start: *range.start(),
                        end: *range.end(),
                    });
                }
            }
            Check::Udp { payload, .. } => {
                if payload.len() > MAX_UDP_PAYLOAD {
                    return Err(SettingsError::PayloadTooLarge(payload.len()));
                }
            }
        }
        Ok(())
    }
}

/// One backend to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The caller's id for it, unique in a set.
    pub id: TargetId,
    /// Where probes go.
    pub address: SocketAddr,
    /// How it is checked.
    pub settings: Settings,
    /// Source address of the probes; the kernel picks one when `None`.
    pub bind: Option<IpAddr>,
    /// `SO_MARK` of the probe socket (needs `CAP_NET_ADMIN`), so that a later tc program can
    /// encapsulate probes like data traffic.
    pub mark: Option<u32>,
}

impl Target {
    /// A target with default settings, no bind address and no mark.
    pub fn new(id: TargetId, address: SocketAddr) -> Target {
        Target {
            id,
            address,
            settings: Settings::default(),
            bind: None,
            mark: None,
        }
    }

    /// Checks the settings and that `bind` is of the address's family.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.settings.validate()?;
        match self.bind {
            Some(bind) if bind.is_ipv4() != self.address.is_ipv4() => {
                Err(SettingsError::BindFamily {
                    bind,
                    address: self.address,
                })
            }
            _ => Ok(()),
        }
    }
}

/// Whether a target passes its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Passing: send it traffic.
    Up,
    /// Failing: do not.
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// A target's health flipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The target.
    pub id: TargetId,
    /// Its new health.
    pub health: Health,
    /// Why, for an operator: the last probe's result and the streak, e.g. `"HTTP 503 (3
    /// failures in a row)"`, or `"connection refused"` when one result was enough.
    pub reason: String,
}

/// Counters of the event loop since [`Checker::start`], read without stopping it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Targets in the current set.
    pub targets: u64,
    /// Probes started (a socket was opened, or an immediate result was had).
    pub probes_started: u64,
    /// Probes that ended in a success.
    pub probes_succeeded: u64,
    /// Probes that ended in a failure, timeouts included.
    pub probes_failed: u64,
    /// Probes that had to wait for a free socket slot ([`MAX_OPEN_PROBES`]).
    pub probes_deferred: u64,
    /// Probes that could not run for a reason on our side (no file descriptor, buffer, memory
    /// or ephemeral port): not counted as a result, tried again at the next interval.
    pub local_errors: u64,
    /// Probe sockets open now.
    pub open_sockets: u64,
    /// Probes waiting for a socket slot now.
    pub waiting: u64,
    /// Transitions sent.
    pub transitions: u64,
}

/// The counters behind [`Stats`], written by the event loop only.
#[derive(Debug, Default)]
struct Counters {
    targets: AtomicU64,
    probes_started: AtomicU64,
    probes_succeeded: AtomicU64,
    probes_failed: AtomicU64,
    probes_deferred: AtomicU64,
    local_errors: AtomicU64,
    open_sockets: AtomicU64,
    waiting: AtomicU64,
    transitions: AtomicU64,
}

impl Counters {
    fn read(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            targets: get(&self.targets),
            probes_started: get(&self.probes_started),
            probes_succeeded: get(&self.probes_succeeded),
            probes_failed: get(&self.probes_failed),
            probes_deferred: get(&self.probes_deferred),
            local_errors: get(&self.local_errors),
            open_sockets: get(&self.open_sockets),
            waiting: get(&self.waiting),
            transitions: get(&self.transitions),
        }
    }
}

/// The name of the event-loop thread (what `/proc/self/task/*/comm` shows).
pub const THREAD_NAME: &str = "xlb-health";

/// The health checker: one thread running every probe. Dropping it stops the thread.
pub struct Checker {
    commands: crossbeam_channel::Sender<engine::Command>,
    waker: Arc<mio::Waker>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl Checker {
    /// Starts the event-loop thread, with no targets. Transitions are sent on `events`; the
    /// checker goes on if the receiver is dropped.
    pub fn start(events: crossbeam_channel::Sender<Transition>) -> std::io::Result<Checker> {
        let poll = mio::Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), engine::WAKER)?);
        let (commands, command_rx) = crossbeam_channel::unbounded();
        let counters = Arc::new(Counters::default());
        let max_open = engine::socket_budget();
        let engine = engine::Engine::new(poll, command_rx, events, counters.clone(), max_open);
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || engine.run())?;
        Ok(Checker {
            commands,
            waker,
            counters,
            thread: Some(thread),
        })
    }

    /// Replaces the whole set of targets. A target whose id, address, settings, bind address
    /// and mark are all unchanged keeps its health, streak and schedule. Any other is new: it
    /// starts Up (see the [module](self) doc) with its first probe inside its interval; one
    /// that replaces a Down target of the same id gets a transition to Up ("target changed"),
    /// so that a receiver's view always matches [`snapshot`](Checker::snapshot). A target no
    /// longer in the set is forgotten and its probe in flight, if any, is abandoned. Of two
    /// targets with the same id, the last wins.
    pub fn set_targets(&self, targets: Vec<Target>) {
        self.send(engine::Command::SetTargets(targets));
    }

    /// Every target's id, health and last result (`"starting"` before its first probe), in
    /// id order. Empty if the event loop has died.
    pub fn snapshot(&self) -> Vec<(TargetId, Health, String)> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.send(engine::Command::Snapshot(reply));
        answer.recv().unwrap_or_default()
    }

    /// The event loop's counters.
    pub fn stats(&self) -> Stats {
        self.counters.read()
    }

    fn send(&self, command: engine::Command) {
        if self.commands.send(command).is_ok()
            && let Err(error) = self.waker.wake()
        {
            tracing::error!(%error, "cannot wake the health checker");
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.send(engine::Command::Stop);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the health checker thread panicked");
        }
    }
}

impl fmt::Debug for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checker")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
