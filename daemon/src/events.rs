//! Datapath events in the daemon: a reader thread drains the `XLB_EVENTS` ring buffer into a
//! bounded in-memory log, which the API serves (`GET /v1/events`, `xlb observe`).
//!
//! The datapath never waits for us: when the ring buffer is full it drops the event and counts
//! it (`event_lost`). The log is bounded too: the oldest events make room for new ones.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use serde::{Deserialize, Serialize};
use tracing::warn;
use xlb_common::{DropReason, EVENT_NO_ID, Event, event_verdict, family};

use crate::config::Cidr;

/// How long the reader waits for the ring buffer before checking whether to stop.
const POLL_MS: i32 = 200;

/// One event as the daemon keeps it: the datapath's record and when it happened.
#[derive(Debug, Clone, Copy)]
pub struct Logged {
    /// Position in the log, increasing from 1; `after` queries continue from it.
    pub seq: u64,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub unix_ns: u64,
    /// The datapath's record.
    pub event: Event,
}

/// The bounded log of recent events.
#[derive(Debug)]
pub struct EventLog {
    inner: Mutex<LogInner>,
}

#[derive(Debug)]
struct LogInner {
    events: VecDeque<Logged>,
    capacity: usize,
    next_seq: u64,
}

impl EventLog {
    /// An empty log keeping at most `capacity` events.
    pub fn new(capacity: usize) -> Arc<EventLog> {
        Arc::new(EventLog {
            inner: Mutex::new(LogInner {
                events: VecDeque::new(),
                capacity: capacity.max(1),
                next_seq: 1,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        // A panic while holding the lock cannot leave the deque half-updated in a way that
        // matters (each operation is one push or pop): keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes how many events are kept (the oldest go first).
    pub fn set_capacity(&self, capacity: usize) {
        let mut inner = self.lock();
        inner.capacity = capacity.max(1);
        while inner.events.len() > inner.capacity {
            inner.events.pop_front();
        }
    }

    /// Appends an event.
    pub fn push(&self, unix_ns: u64, event: Event) {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if inner.events.len() == inner.capacity {
            inner.events.pop_front();
        }
        inner.events.push_back(Logged {
            seq,
            unix_ns,
            event,
        });
    }

    /// Events after `after` (all kept when `None`) that `keep` accepts, at most the `last`
    /// newest of them, and the sequence number to continue from.
    pub fn query(
        &self,
        after: Option<u64>,
        last: Option<usize>,
        keep: impl Fn(&Logged) -> bool,
    ) -> (Vec<Logged>, u64) {
        let inner = self.lock();
        let after = after.unwrap_or(0);
        let mut found: Vec<Logged> = inner
            .events
            .iter()
            .filter(|l| l.seq > after && keep(l))
            .copied()
            .collect();
        if let Some(last) = last
            && found.len() > last
        {
            found.drain(..found.len() - last);
        }
        (found, inner.next_seq - 1)
    }
}

/// The reader thread; stops (and is joined) when dropped.
pub struct Reader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Nanoseconds of a clock.
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids used are always available.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Starts draining `ring` into `log`.
pub fn spawn_reader(mut ring: RingBuf<MapData>, log: Arc<EventLog>) -> std::io::Result<Reader> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("xlb-events".into())
        .spawn(move || {
            let fd = ring.as_raw_fd();
            while !stopping.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, count 1; the fd lives as long as `ring`.
                let ready = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
                if ready < 0 {
                    let error = std::io::Error::last_os_error();
                    if error.kind() != std::io::ErrorKind::Interrupted {
                        warn!(%error, "polling the event ring buffer failed; events stop");
                        return;
                    }
                    continue;
                }
                // bpf_ktime_get_ns is CLOCK_MONOTONIC: shift it to wall time.
                let offset = wall_ns().saturating_sub(clock_ns(libc::CLOCK_MONOTONIC));
                while let Some(item) = ring.next() {
                    if item.len() != size_of::<Event>() {
                        warn!(len = item.len(), "event of unexpected size skipped");
                        continue;
                    }
                    // SAFETY: the item holds exactly one Event (size checked), valid for any
                    // bit pattern; read_unaligned does not rely on its alignment.
                    let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
                    log.push(event.ts_ns + offset, event);
                }
            }
        })?;
    Ok(Reader {
        stop,
        thread: Some(thread),
    })
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

// ----- queries and views -----

/// `drop` or `forward`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Dropped by the datapath.
    Drop,
    /// Forwarded to a backend.
    Forward,
}

/// A VIP filter: an address, and optionally a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipFilter {
    /// The VIP address.
    pub address: IpAddr,
    /// The port, if given.
    pub port: Option<u16>,
}

impl std::str::FromStr for VipFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(address) = s.parse::<IpAddr>() {
            return Ok(VipFilter {
                address,
                port: None,
            });
        }
        let socket: std::net::SocketAddr = s
            .parse()
            .map_err(|_| format!("`{s}` is not ADDR or ADDR:PORT"))?;
        Ok(VipFilter {
            address: socket.ip(),
            port: Some(socket.port()),
        })
    }
}

/// What `GET /v1/events` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events after this sequence number.
    pub after: Option<u64>,
    /// Only the newest N matching events.
    pub last: Option<usize>,
    /// Only drops or only forwards.
    pub verdict: Option<Verdict>,
    /// Only drops for this reason.
    pub reason: Option<DropReason>,
    /// Only packets to this VIP address (and port).
    pub vip: Option<VipFilter>,
    /// Only sources in this network.
    pub from: Option<Cidr>,
}

/// One event as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Sequence number in the daemon's log.
    pub seq: u64,
    /// Wall-clock time, RFC 3339 with nanoseconds, UTC.
    pub time: String,
    /// `drop` or `forward`.
    pub verdict: Verdict,
    /// Drop reason name (drops only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `tcp`, `udp`, `icmp` or the protocol number.
    pub protocol: String,
    /// Source address.
    pub src: Option<IpAddr>,
    /// Source port (0 when the packet had none).
    pub sport: u16,
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// Destination port (0 when the packet had none).
    pub dport: u16,
    /// The VIP the packet was addressed to, by name, when one matches.
    pub vip: Option<String>,
    /// The backend it was forwarded to (forwards only).
    pub backend: Option<String>,
}

/// Answer of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsView {
    /// Matching events, oldest first.
    pub events: Vec<EventView>,
    /// Sequence number of the newest event logged: pass it as `after` to continue.
    pub next: u64,
}

/// The addresses of an event.
pub fn addresses(event: &Event) -> (Option<IpAddr>, Option<IpAddr>) {
    let v4 = |w: [u32; 4]| IpAddr::V4(Ipv4Addr::from(w[0].to_ne_bytes()));
    let v6 = |w: [u32; 4]| {
        let mut octets = [0u8; 16];
        for (i, word) in w.iter().enumerate() {
            octets[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    match event.family {
        family::V4 => (Some(v4(event.src)), Some(v4(event.dst))),
        family::V6 => (Some(v6(event.src)), Some(v6(event.dst))),
        _ => (None, None),
    }
}

impl EventQuery {
    /// Whether a logged event matches every filter.
    pub fn matches(&self, logged: &Logged) -> bool {
        let e = &logged.event;
        let verdict = if e.verdict == event_verdict::DROP {
            Verdict::Drop
        } else {
            Verdict::Forward
        };
        let (src, dst) = addresses(e);
        self.verdict.is_none_or(|v| v == verdict)
            && self
                .reason
                .is_none_or(|r| verdict == Verdict::Drop && e.reason == r as u32)
            && self.vip.is_none_or(|vip| {
                dst == Some(vip.address) && vip.port.is_none_or(|p| p == u16::from_be(e.dport))
            })
            && self
                .from
                .is_none_or(|net| src.is_some_and(|src| net.contains(src)))
    }
}

/// (year, month, day) of a number of days since 1970-01-01, proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Formats a wall-clock time as RFC 3339 UTC with nanoseconds.
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = (unix_ns / 1_000_000_000) as i64;
    let nanos = unix_ns % 1_000_000_000;
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Protocol name of a number.
pub fn protocol_name(proto: u8) -> String {
    match proto {
        xlb_common::proto::TCP => "tcp".into(),
        xlb_common::proto::UDP => "udp".into(),
        xlb_common::proto::ICMP => "icmp".into(),
        58 => "icmpv6".into(),
        other => other.to_string(),
    }
}

/// The view of a logged event; `names` gives (VIP, backend) names for it.
pub fn view(logged: &Logged, names: (Option<String>, Option<String>)) -> EventView {
    let e = &logged.event;
    let (src, dst) = addresses(e);
    let drop = e.verdict == event_verdict::DROP;
    EventView {
        seq: logged.seq,
        time: rfc3339(logged.unix_ns),
        verdict: if drop {
            Verdict::Drop
        } else {
            Verdict::Forward
        },
        reason: drop.then(|| {
            DropReason::from_index(e.reason)
                .map_or_else(|| e.reason.to_string(), |r| r.name().into())
        }),
        protocol: protocol_name(e.proto),
        src,
        sport: u16::from_be(e.sport),
        dst,
        dport: u16::from_be(e.dport),
        vip: names.0,
        backend: if drop || e.backend_id == EVENT_NO_ID {
            None
        } else {
            names.1
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(verdict: u8, src: [u8; 4], dport: u16) -> Event {
        Event {
            src: [u32::from_ne_bytes(src), 0, 0, 0],
            dst: [u32::from_ne_bytes([10, 0, 0, 10]), 0, 0, 0],
            dport: dport.to_be(),
            family: family::V4,
            verdict,
            reason: DropReason::Denied as u32,
            ..Event::default()
        }
    }

    #[test]
    fn the_log_is_bounded_and_queries_filter_and_continue() {
        let log = EventLog::new(3);
        for i in 0..5u8 {
            log.push(u64::from(i), event(event_verdict::DROP, [192, 0, 2, i], 80));
        }
        let (all, next) = log.query(None, None, |_| true);
        assert_eq!(next, 5);
        assert_eq!(all.iter().map(|l| l.seq).collect::<Vec<_>>(), [3, 4, 5]);
        let (after, _) = log.query(Some(4), None, |_| true);
        assert_eq!(after.len(), 1);
        let (last, _) = log.query(None, Some(2), |_| true);
        assert_eq!(last.iter().map(|l| l.seq).collect::<Vec<_>>(), [4, 5]);

        let query = EventQuery {
            from: Some("192.0.2.4/32".parse().unwrap()),
            vip: Some("10.0.0.10:80".parse().unwrap()),
            verdict: Some(Verdict::Drop),
            reason: Some(DropReason::Denied),
            ..EventQuery::default()
        };
        let (found, _) = log.query(None, None, |l| query.matches(l));
        assert_eq!(found.len(), 1);
        let other_port = EventQuery {
            vip: Some("10.0.0.10:443".parse().unwrap()),
            ..EventQuery::default()
        };
        assert!(
            log.query(None, None, |l| other_port.matches(l))
                .0
                .is_empty()
        );
        let forwards = EventQuery {
            verdict: Some(Verdict::Forward),
            ..EventQuery::default()
        };
        assert!(log.query(None, None, |l| forwards.matches(l)).0.is_empty());
        log.set_capacity(1);
        assert_eq!(log.query(None, None, |_| true).0.len(), 1);
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_764_107_045_123_456_789),
            "2025-11-25T21:44:05.123456789Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn views_name_reason_ports_and_addresses() {
        let logged = Logged {
            seq: 7,
            unix_ns: 0,
            event: event(event_verdict::DROP, [192, 0, 2, 1], 8080),
        };
        let view = view(&logged, (Some("web".into()), Some("ignored".into())));
        assert_eq!(view.reason.as_deref(), Some("denied"));
        assert_eq!(view.dport, 8080);
        assert_eq!(view.src, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(view.backend, None, "a drop has no backend");
        assert_eq!(view.vip.as_deref(), Some("web"));
    }
}
