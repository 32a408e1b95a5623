//! The event loop: one `mio::Poll` for every probe socket and a waker for commands, a binary
//! heap of timers (next probe due, probe timeout), and the targets' threshold states.
//!
//! Timers are never removed from the heap: each carries the epoch of its target (or the serial
//! of its probe) and is ignored when it fires if that no longer matches. A target's epoch
//! changes only when it is replaced or removed, so a stale timer costs one pop.

use std::{
    borrow::Cow,
    cmp::Ordering,
    collections::{BinaryHeap, HashMap, VecDeque},
    io,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::{Events, Poll, Token};

use super::{
    Counters, Health, MAX_OPEN_PROBES, SettingsError, Target, TargetId, Transition,
    probe::{Outcome, Probe, Ready, Start},
    state::Threshold,
};

/// The token of the waker; probe sockets use their slot index.
pub(crate) const WAKER: Token = Token(usize::MAX);

/// The biggest datagram a UDP reply is read into (larger ones are cut, which only matters for
/// an `expect` longer than this).
const SCRATCH: usize = 64 * 1024;

/// How late a timer may fire, so that timers close together fire in one wake-up: with 10,000
/// targets a second this batches about 50 probes per wake-up instead of one or two, and costs
/// nothing that matters to a check (a probe starts or times out at most this much late).
pub(crate) const TIMER_SLACK: Duration = Duration::from_millis(5);

/// Local errors are logged at most once per this period.
const LOCAL_ERROR_LOG_PERIOD: Duration = Duration::from_secs(10);

/// What the [`Checker`](super::Checker) asks of the loop.
pub(crate) enum Command {
    /// Replace the set of targets.
    SetTargets(Vec<Target>),
    /// Send every target's id, health and last result.
    Snapshot(Sender<Vec<(TargetId, Health, String)>>),
    /// Stop the loop.
    Stop,
}

/// How many probe sockets may be open at once: [`MAX_OPEN_PROBES`], or half the file
/// descriptors the process may open if that is fewer, leaving the rest to the daemon.
pub(crate) fn socket_budget() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass, which lives across the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 {
        return MAX_OPEN_PROBES;
    }
    let half = usize::try_from(limit.rlim_cur / 2).unwrap_or(usize::MAX);
    if half < MAX_OPEN_PROBES {
        tracing::warn!(
            nofile = limit.rlim_cur,
            max_open_probes = half.max(1),
            "RLIMIT_NOFILE is low: fewer probe sockets may be open at once"
        );
    }
    half.clamp(1, MAX_OPEN_PROBES)
}

/// One target and its state.
struct Entry {
    target: Target,
    threshold: Threshold,
    /// The last probe's result, or why the target is never probed.
    last: Cow<'static, str>,
    /// Changes when the target is replaced; timers and queue places of an older epoch are
    /// ignored.
    epoch: u64,
    /// When the current (or next) probe is due; the next is due one interval after it.
    due: Instant,
    /// The slot of the probe in flight.
    in_flight: Option<usize>,
    /// Whether the target waits in the queue for a socket slot.
    waiting: bool,
}

/// A probe in flight.
struct InFlight {
    id: TargetId,
    /// Unique per probe, so a timeout timer cannot end a later probe in the same slot.
    serial: u64,
    probe: Probe,
}

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy)]
enum Timer {
    /// A target's probe is due.
    Due { id: TargetId, epoch: u64 },
    /// A probe's time is up.
    Timeout { slot: usize, serial: u64 },
}

/// A timer in the heap, ordered so that the earliest is on top.
struct Scheduled {
    at: Instant,
    /// Breaks ties in insertion order.
    seq: u64,
    timer: Timer,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reverse for the earliest first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The loop's state, owned by its thread.
pub(crate) struct Engine {
    poll: Poll,
    commands: Receiver<Command>,
    events: Sender<Transition>,
    counters: Arc<Counters>,
    max_open: usize,
    targets: HashMap<TargetId, Entry>,
    /// Probes in flight by slot (the slot is the socket's mio token).
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    open: usize,
    timers: BinaryHeap<Scheduled>,
    /// Targets due while `max_open` sockets were open, in the order they became due.
    queue: VecDeque<(TargetId, u64)>,
    /// Targets whose `waiting` is set (the queue may also hold stale places).
    waiting: usize,
    next_seq: u64,
    next_epoch: u64,
    next_serial: u64,
    scratch: Vec<u8>,
    /// Whether "all sockets busy" was logged and not yet cleared.
    saturated: bool,
    last_local_error_log: Option<Instant>,
}

impl Engine {
    /// A loop with no targets.
    pub fn new(
        poll: Poll,
        commands: Receiver<Command>,
        events: Sender<Transition>,
        counters: Arc<Counters>,
        max_open: usize,
    ) -> Engine {
        Engine {
            poll,
            commands,
            events,
            counters,
            max_open,
            targets: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            open: 0,
            timers: BinaryHeap::new(),
            queue: VecDeque::new(),
            waiting: 0,
            next_seq: 0,
            next_epoch: 0,
            next_serial: 0,
            scratch: vec![0; SCRATCH],
            saturated: false,
            last_local_error_log: None,
        }
    }

    /// Runs until [`Command::Stop`] or until the checker is gone.
    pub fn run(mut self) {
        tracing::debug!(max_open = self.max_open, "health checker started");
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self
                .timers
                .peek()
                .map(|next| (next.at + TIMER_SLACK).saturating_duration_since(Instant::now()));
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(%error, "health checker: poll failed, stopping");
                return;
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    let ready = Ready {
                        writable: event.is_writable(),
                        error: event.is_error(),
                    };
                    self.on_ready(event.token().0, ready);
                }
            }
            if !self.take_commands() {
                break;
            }
            self.fire_timers(Instant::now());
            self.start_queued();
            self.publish();
        }
        tracing::debug!("health checker stopped");
    }

    /// Handles every pending command; false when the loop must stop.
    fn take_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::SetTargets(targets)) => self.set_targets(targets),
                Ok(Command::Snapshot(reply)) => {
                    let mut all: Vec<_> = self
                        .targets
                        .iter()
                        .map(|(&id, entry)| (id, entry.threshold.health(), entry.last.to_string()))
                        .collect();
                    all.sort_unstable_by_key(|&(id, ..)| id);
                    let _ = reply.send(all);
                }
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn set_targets(&mut self, targets: Vec<Target>) {
        let now = Instant::now();
        let mut incoming: HashMap<TargetId, Target> = HashMap::with_capacity(targets.len());
        for target in targets {
            let id = target.id;
            if incoming.insert(id, target).is_some() {
                tracing::warn!(id, "health target listed twice: the last one is used");
            }
        }
        let known: Vec<TargetId> = self.targets.keys().copied().collect();
        let mut previous_health = HashMap::new();
        for id in known {
            match incoming.get(&id) {
                Some(target) if *target == self.targets[&id].target => {
                    incoming.remove(&id);
                }
                Some(_) => {
                    let old = self.remove(id);
                    previous_health.insert(id, old.threshold.health());
                }
                None => {
                    self.remove(id);
                }
            }
        }
        let (mut added, mut changed) = (0usize, 0usize);
        for (id, target) in incoming {
            let previous = previous_health.get(&id).copied();
            if previous.is_some() {
                changed += 1;
            } else {
                added += 1;
            }
            self.add(target, previous, now);
        }
        self.compact_timers();
        tracing::debug!(
            targets = self.targets.len(),
            added,
            changed,
            "health targets set"
        );
    }

    /// Drops the timers of replaced and removed targets once they outnumber the live ones, so
    /// that frequent changes to targets with long intervals cannot grow the heap without bound.
    fn compact_timers(&mut self) {
        let live = self.targets.len() + self.open;
        if self.timers.len() <= 2 * live + 1024 {
            return;
        }
        let (targets, slots) = (&self.targets, &self.slots);
        self.timers.retain(|scheduled| match scheduled.timer {
            Timer::Due { id, epoch } => targets.get(&id).is_some_and(|e| e.epoch == epoch),
            Timer::Timeout { slot, serial } => {
                matches!(slots.get(slot), Some(Some(flight)) if flight.serial == serial)
            }
        });
    }

    /// Adds a target (new, or replacing one whose health was `previous`), starting Up with its
    /// first probe inside its interval; or Down for good if its settings are invalid.
    fn add(&mut self, target: Target, previous: Option<Health>, now: Instant) {
        let id = target.id;
        let settings = &target.settings;
        let invalid: Option<SettingsError> = target.validate().err();
        let (health, last): (Health, Cow<'static, str>) = match &invalid {
            None => (Health::Up, "starting".into()),
            Some(error) => (Health::Down, format!("invalid settings: {error}").into()),
        };
        let reason = match (previous, health) {
            (Some(Health::Down), Health::Up) => Some("target changed; starts up".into()),
            (Some(Health::Up) | None, Health::Down) => Some(last.to_string()),
            _ => None,
        };
        if let Some(error) = &invalid {
            tracing::warn!(id, address = %target.address, %error, "health target not probed");
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let due = now + first_offset(id, settings.interval);
        let entry = Entry {
            threshold: Threshold::new(health, settings.rise, settings.fall),
            target,
            last,
            epoch,
            due,
            in_flight: None,
            waiting: false,
        };
        self.targets.insert(id, entry);
        if invalid.is_none() {
            self.schedule(due, Timer::Due { id, epoch });
        }
        if let Some(reason) = reason {
            self.emit(id, health, reason);
        }
    }

    /// Forgets a target, closing its probe in flight.
    fn remove(&mut self, id: TargetId) -> Entry {
        let entry = self.targets.remove(&id).expect("removing a known target");
        if let Some(slot) = entry.in_flight {
            self.release(slot);
        }
        if entry.waiting {
            self.waiting -= 1;
        }
        entry
    }

    fn schedule(&mut self, at: Instant, timer: Timer) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.timers.push(Scheduled { at, seq, timer });
    }

    fn fire_timers(&mut self, now: Instant) {
        while self.timers.peek().is_some_and(|next| next.at <= now) {
            let Some(Scheduled { timer, .. }) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::Due { id, epoch } => {
                    let Some(entry) = self.targets.get_mut(&id) else {
                        continue;
                    };
                    if entry.epoch != epoch || entry.in_flight.is_some() || entry.waiting {
                        continue;
                    }
                    // Behind those already waiting, even if a slot was just freed: first
                    // come, first served, so no target can starve another.
                    if self.open >= self.max_open || self.waiting > 0 {
                        entry.waiting = true;
                        self.waiting += 1;
                        self.queue.push_back((id, epoch));
                        self.counters.probes_deferred.fetch_add(1, Relaxed);
                        if !self.saturated {
                            self.saturated = true;
                            tracing::warn!(
                                max_open = self.max_open,
                                "every probe socket is busy: probes wait their turn"
                            );
                        }
                    } else {
                        self.start(id, now);
                    }
                }
                Timer::Timeout { slot, serial } => {
                    let Some(Some(flight)) = self.slots.get(slot) else {
                        continue;
                    };
                    if flight.serial != serial {
                        continue;
                    }
                    let settings = &self.targets[&flight.id].target.settings;
                    // One last look: when the loop is starved of CPU, an answer may be in
                    // whose event is still unread, and that is not the backend's fault.
                    let outcome = match self.slots[slot].as_mut() {
                        Some(flight) => flight
                            .probe
                            .on_ready(&settings.check, Ready::UNKNOWN, &mut self.scratch)
                            .unwrap_or_else(|| flight.probe.timed_out(settings.timeout)),
                        None => continue,
                    };
                    self.finish(slot, outcome, now);
                }
            }
        }
    }

    /// Starts the probes that waited for a socket slot, oldest first, while slots are free.
    fn start_queued(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let now = Instant::now();
        while self.open < self.max_open {
            let Some((id, epoch)) = self.queue.pop_front() else {
                break;
            };
            let Some(entry) = self.targets.get_mut(&id) else {
                continue;
            };
            if entry.epoch != epoch || !entry.waiting {
                continue;
            }
            entry.waiting = false;
            self.waiting -= 1;
            self.start(id, now);
        }
        if self.queue.is_empty() && self.saturated {
            self.saturated = false;
            tracing::info!("probe sockets available again");
        }
    }

    /// Starts a probe of `id` now.
    fn start(&mut self, id: TargetId, now: Instant) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let entry = &self.targets[&id];
        let timeout = entry.target.settings.timeout;
        match Probe::start(&entry.target, self.poll.registry(), Token(slot)) {
            Start::Pending(probe) => {
                self.counters.probes_started.fetch_add(1, Relaxed);
                let serial = self.next_serial;
                self.next_serial += 1;
                self.slots[slot] = Some(InFlight { id, serial, probe });
                self.open += 1;
                if let Some(entry) = self.targets.get_mut(&id) {
                    entry.in_flight = Some(slot);
                }
                // Not `now`: after a stall thousands of probes start in one go, and the last
                // must get its whole timeout too.
                self.schedule(Instant::now() + timeout, Timer::Timeout { slot, serial });
            }
            Start::Done(outcome) => {
                self.counters.probes_started.fetch_add(1, Relaxed);
                self.free.push(slot);
                self.record(id, outcome);
                self.schedule_next(id, now);
            }
            Start::Local(error) => {
                self.free.push(slot);
                self.counters.local_errors.fetch_add(1, Relaxed);
                let log = self
                    .last_local_error_log
                    .is_none_or(|last| now.duration_since(last) >= LOCAL_ERROR_LOG_PERIOD);
                if log {
                    self.last_local_error_log = Some(now);
                    tracing::warn!(
                        id,
                        %error,
                        open = self.open,
                        "cannot start a health probe: not counted as a result, retried at \
                         the next interval (logged once per 10 s)"
                    );
                }
                self.schedule_next(id, now);
            }
        }
    }

    /// A probe socket is ready.
    fn on_ready(&mut self, slot: usize, ready: Ready) {
        let Some(Some(flight)) = self.slots.get_mut(slot) else {
            return;
        };
        let Some(entry) = self.targets.get(&flight.id) else {
            return;
        };
        if let Some(outcome) =
            flight
                .probe
                .on_ready(&entry.target.settings.check, ready, &mut self.scratch)
        {
            self.finish(slot, outcome, Instant::now());
        }
    }

    /// Ends the probe in `slot` with `outcome` and schedules the target's next one.
    fn finish(&mut self, slot: usize, outcome: Outcome, now: Instant) {
        let Some(flight) = self.release(slot) else {
            return;
        };
        if let Some(entry) = self.targets.get_mut(&flight.id) {
            entry.in_flight = None;
        }
        self.record(flight.id, outcome);
        self.schedule_next(flight.id, now);
    }

    /// Frees a slot, closing its socket.
    fn release(&mut self, slot: usize) -> Option<InFlight> {
        let flight = self.slots.get_mut(slot)?.take()?;
        self.open -= 1;
        self.free.push(slot);
        Some(flight)
    }

    /// The next probe is due one interval after the last was; at once if that is past.
    fn schedule_next(&mut self, id: TargetId, now: Instant) {
        let Some(entry) = self.targets.get_mut(&id) else {
            return;
        };
        entry.due = (entry.due + entry.target.settings.interval).max(now);
        let (due, epoch) = (entry.due, entry.epoch);
        self.schedule(due, Timer::Due { id, epoch });
    }

    /// Feeds a result to the target's threshold and sends the flip, if any.
    fn record(&mut self, id: TargetId, outcome: Outcome) {
        let counter = if outcome.success {
            &self.counters.probes_succeeded
        } else {
            &self.counters.probes_failed
        };
        counter.fetch_add(1, Relaxed);
        let Some(entry) = self.targets.get_mut(&id) else {
            return;
        };
        let flip = entry.threshold.record(outcome.success);
        entry.last = outcome.detail;
        if let Some(flip) = flip {
            let reason = if flip.streak > 1 {
                let kind = match flip.health {
                    Health::Up => "successes",
                    Health::Down => "failures",
                };
                format!("{} ({} {kind} in a row)", entry.last, flip.streak)
            } else {
                entry.last.to_string()
            };
            self.emit(id, flip.health, reason);
        }
    }

    fn emit(&mut self, id: TargetId, health: Health, reason: String) {
        tracing::info!(id, %health, %reason, "health changed");
        self.counters.transitions.fetch_add(1, Relaxed);
        let _ = self.events.send(Transition { id, health, reason });
    }

    /// Updates the gauges that [`Stats`](super::Stats) reads.
    fn publish(&self) {
        let counters = &self.counters;
        counters.targets.store(self.targets.len() as u64, Relaxed);
        counters.open_sockets.store(self.open as u64, Relaxed);
        counters.waiting.store(self.waiting as u64, Relaxed);
    }
}

/// Where in its interval a target's first probe falls: a hash of its id, so that targets added
/// together spread evenly, and the same target lands at the same place every time.
fn first_offset(id: TargetId, interval: Duration) -> Duration {
    let nanos = interval.as_nanos().max(1);
    // splitmix64's finaliser: consecutive ids land far apart.
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let offset = u128::from(z) % nanos;
    Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_probes_spread_over_the_interval() {
        let interval = Duration::from_secs(1);
        let mut buckets = [0u32; 10];
        for id in 0..10_000u64 {
            let offset = first_offset(id, interval);
            assert!(offset < interval);
            buckets[(offset.as_millis() / 100) as usize] += 1;
        }
        // 1,000 expected per tenth of the interval.
        for (i, &n) in buckets.iter().enumerate() {
            assert!((850..=1150).contains(&n), "bucket {i}: {n}: {buckets:?}");
        }
        assert_eq!(first_offset(42, interval), first_offset(42, interval));
    }

    /// Runs an engine with room for `max_open` sockets in a thread; returns what drives it.
    fn spawn(
        max_open: usize,
    ) -> (
        Sender<Command>,
        Arc<mio::Waker>,
        Arc<Counters>,
        std::thread::JoinHandle<()>,
    ) {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER).unwrap());
        let (commands, command_rx) = crossbeam_channel::unbounded();
        let (events, _) = crossbeam_channel::unbounded();
        let counters = Arc::new(Counters::default());
        let engine = Engine::new(poll, command_rx, events, counters.clone(), max_open);
        let thread = std::thread::spawn(move || engine.run());
        (commands, waker, counters, thread)
    }

    #[test]
    fn probes_beyond_the_socket_budget_wait_their_turn() {
        // A bound UDP socket that never answers: every probe stays open until its timeout.
        let mute = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = mute.local_addr().unwrap();
        let (commands, waker, counters, thread) = spawn(2);
        let targets = (0..6)
            .map(|id| Target {
                settings: crate::health::Settings {
                    check: crate::health::Check::Udp {
                        payload: b"x".to_vec(),
                        expect: None,
                    },
                    interval: Duration::from_millis(50),
                    timeout: Duration::from_millis(100),
                    rise: 1,
                    fall: 1,
                },
                ..Target::new(id, address)
            })
            .collect();
        commands.send(Command::SetTargets(targets)).unwrap();
        waker.wake().unwrap();
        let deadline = Instant::now() + Duration::from_millis(800);
        let mut most_open = 0;
        while Instant::now() < deadline {
            most_open = most_open.max(counters.open_sockets.load(Relaxed));
            std::thread::sleep(Duration::from_millis(2));
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        commands.send(Command::Snapshot(reply)).unwrap();
        waker.wake().unwrap();
        let snapshot = answer.recv().unwrap();
        commands.send(Command::Stop).unwrap();
        waker.wake().unwrap();
        thread.join().unwrap();

        assert_eq!(most_open, 2);
        assert!(counters.probes_deferred.load(Relaxed) > 0);
        assert_eq!(counters.probes_succeeded.load(Relaxed), 0);
        // Every target had its turn: none is starved by the others.
        assert_eq!(snapshot.len(), 6);
        for (id, health, last) in snapshot {
            assert_eq!(health, Health::Down, "{id}");
            assert_eq!(last, "timeout after 100ms waiting for a UDP reply", "{id}");
        }
    }

    #[test]
    fn timers_pop_earliest_first_then_in_insertion_order() {
        let t0 = Instant::now();
        let mut heap = BinaryHeap::new();
        for (seq, ms) in [(0, 30), (1, 10), (2, 20), (3, 10)] {
            heap.push(Scheduled {
                at: t0 + Duration::from_millis(ms),
                seq,
                timer: Timer::Due { id: seq, epoch: 0 },
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|s| s.seq)).collect();
        assert_eq!(order, vec![1, 3, 2, 0]);
    }
}
