//! Health checks (`xlb::health`) against real sockets on loopback: TCP, HTTP and UDP probes,
//! the rise/fall thresholds with real timing, and replacing the set of targets. No root is
//! needed except for the `SO_MARK` test, which skips without it.

use std::{
    cell::RefCell,
    collections::VecDeque,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use xlb::health::{
    Check, Checker, Health, Settings, Target, TargetId, Transition,
    crossbeam_channel::{Receiver, unbounded},
};

/// Probe interval of the tests: short, so that rise/fall take a fraction of a second.
const INTERVAL: Duration = Duration::from_millis(100);
/// Slack on every wait: the machine may be busy with other tests.
const SLACK: Duration = Duration::from_secs(2);
/// Scheduling noise allowed on top of a bound the thresholds promise (timer slack is 5 ms).
const TOLERANCE: Duration = Duration::from_millis(500);

fn settings(check: Check, rise: u32, fall: u32) -> Settings {
    Settings {
        check,
        interval: INTERVAL,
        timeout: Duration::from_millis(300),
        rise,
        fall,
    }
}

fn target(id: TargetId, address: SocketAddr, settings: Settings) -> Target {
    Target {
        id,
        address,
        settings,
        bind: None,
        mark: None,
    }
}

/// The transitions a checker sent, read in order per target: a transition of another target
/// than the one waited for is kept for later.
struct Events {
    rx: Receiver<Transition>,
    later: RefCell<VecDeque<Transition>>,
}

fn start() -> (Checker, Events) {
    let (tx, rx) = unbounded();
    let events = Events {
        rx,
        later: RefCell::new(VecDeque::new()),
    };
    (Checker::start(tx).expect("starting the checker"), events)
}

/// Waits for the next transition of `id` and checks its health.
fn expect_transition(
    events: &Events,
    id: TargetId,
    health: Health,
    within: Duration,
) -> Transition {
    let deadline = Instant::now() + within;
    let mut later = events.later.borrow_mut();
    let t = match later.iter().position(|t| t.id == id) {
        Some(i) => later.remove(i).unwrap(),
        None => loop {
            match events.rx.recv_deadline(deadline) {
                Ok(t) if t.id == id => break t,
                Ok(t) => later.push_back(t),
                Err(_) => panic!("no transition of {id} to {health} within {within:?}"),
            }
        },
    };
    assert_eq!(t.health, health, "unexpected transition {t:?}");
    t
}

/// Asserts that no transition of `id` comes within `wait`.
fn expect_quiet(events: &Events, id: TargetId, wait: Duration) {
    let deadline = Instant::now() + wait;
    let mut later = events.later.borrow_mut();
    if let Some(t) = later.iter().find(|t| t.id == id) {
        panic!("unexpected transition {t:?}");
    }
    while let Ok(t) = events.rx.recv_deadline(deadline) {
        assert_ne!(t.id, id, "unexpected transition {t:?}");
        later.push_back(t);
    }
}

/// Waits until `id`'s snapshot line satisfies `ok`, returning it.
fn wait_snapshot(
    checker: &Checker,
    id: TargetId,
    within: Duration,
    ok: impl Fn(Health, &str) -> bool,
) -> (Health, String) {
    let deadline = Instant::now() + within;
    loop {
        let line = checker
            .snapshot()
            .into_iter()
            .find(|(i, ..)| *i == id)
            .map(|(_, h, last)| (h, last));
        if let Some((health, last)) = &line
            && ok(*health, last)
        {
            return (*health, last.clone());
        }
        assert!(
            Instant::now() < deadline,
            "target {id} not as expected within {within:?}: {line:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port on 127.0.0.1 with nothing listening (bound then closed: the kernel does not hand it
/// out again at once).
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A TCP listener that accepts in a thread, counting connections and remembering peers.
struct Server {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn bind(address: &str) -> Server {
        let listener = TcpListener::bind(address).unwrap();
        let address = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (accepted, peers, stop) = (accepted.clone(), peers.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((_, peer)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            peers.lock().unwrap().push(peer);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
        });
        Server {
            address,
            accepted,
            peers,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    /// Closes the listener: connects are refused from then on.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn tcp_up_down_up_with_rise_and_fall() {
    let address = closed_port();
    let (checker, rx) = start();
    let (rise, fall) = (2, 3);
    checker.set_targets(vec![target(1, address, settings(Check::Tcp, rise, fall))]);

    // Starts Up: nothing listens, so `fall` refusals take it down, the first one within an
    // interval.
    let started = Instant::now();
    let down = expect_transition(&rx, 1, Health::Down, INTERVAL * fall + TOLERANCE);
    assert_eq!(down.reason, "connection refused (3 failures in a row)");
    assert!(
        started.elapsed() >= INTERVAL * (fall - 1),
        "down after {:?}, before {fall} probes could run",
        started.elapsed()
    );

    // Reopened: up after `rise` successes.
    let server = Server::bind(&address.to_string());
    let up = expect_transition(&rx, 1, Health::Up, INTERVAL * (rise + 1) + TOLERANCE);
    assert_eq!(up.reason, "connected (2 successes in a row)");
    assert_eq!(
        checker.snapshot(),
        vec![(1, Health::Up, "connected".to_owned())]
    );

    // Closed: down within interval x fall, plus one interval.
    drop(server);
    expect_transition(&rx, 1, Health::Down, INTERVAL * (fall + 1) + TOLERANCE);
}

#[test]
fn tcp_timeout_when_syns_are_dropped() {
    // A listener with a backlog of 0 and one connection it never accepts has a full accept
    // queue: the kernel drops further SYNs, so a connect neither succeeds nor is refused.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: the fd is a live listening socket; listen() again only changes its backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let address = listener.local_addr().unwrap();
    let _filler = TcpStream::connect(address).unwrap();

    let (checker, rx) = start();
    let mut s = settings(Check::Tcp, 1, 1);
    s.timeout = Duration::from_millis(250);
    checker.set_targets(vec![target(7, address, s)]);
    let down = expect_transition(
        &rx,
        7,
        Health::Down,
        INTERVAL + Duration::from_millis(250) + SLACK,
    );
    assert_eq!(down.reason, "timeout after 250ms");
    drop(listener);
}

/// A tiny HTTP server: answers every request with the status in `status`, and keeps the
/// requests it read.
struct HttpServer {
    address: SocketAddr,
    status: Arc<AtomicU16>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    fn start(status: u16) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (status, requests, stop) = (status.clone(), requests.clone(), stop.clone());
            move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    stream
                        .set_read_timeout(Some(Duration::from_secs(1)))
                        .unwrap();
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    requests
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&request).into_owned());
                    let code = status.load(Ordering::Relaxed);
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
            }
        });
        HttpServer {
            address,
            status,
            requests,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn http(path: &str, host: Option<&str>, expect: Vec<std::ops::RangeInclusive<u16>>) -> Check {
    Check::Http {
        path: path.to_owned(),
        host: host.map(str::to_owned),
        expect,
    }
}

#[test]
fn http_200_then_503_goes_down_and_sends_path_and_host() {
    let server = HttpServer::start(200);
    let (checker, rx) = start();
    checker.set_targets(vec![
        target(
            1,
            server.address,
            settings(http("/healthz?deep=1", Some("svc.example"), vec![]), 1, 2),
        ),
        // No host: the address is the Host header.
        target(2, server.address, settings(http("/", None, vec![]), 1, 2)),
    ]);
    wait_snapshot(&checker, 1, SLACK, |h, last| {
        h == Health::Up && last == "HTTP 200"
    });
    wait_snapshot(&checker, 2, SLACK, |h, last| {
        h == Health::Up && last == "HTTP 200"
    });

    server.status.store(503, Ordering::Relaxed);
    let down = expect_transition(&rx, 1, Health::Down, INTERVAL * 3 + SLACK);
    assert_eq!(down.reason, "HTTP 503 (2 failures in a row)");
    expect_transition(&rx, 2, Health::Down, INTERVAL * 3 + SLACK);

    server.status.store(204, Ordering::Relaxed);
    let up = expect_transition(&rx, 1, Health::Up, INTERVAL * 2 + SLACK);
    assert_eq!(up.reason, "HTTP 204");
    drop(checker);

    let requests = server.requests.lock().unwrap().clone();
    let with_host = requests
        .iter()
        .find(|r| r.contains("Host: svc.example"))
        .expect("a request with the configured host");
    assert_eq!(
        with_host,
        "GET /healthz?deep=1 HTTP/1.1\r\nHost: svc.example\r\nConnection: close\r\n\
         User-Agent: xlb-health\r\n\r\n"
    );
    let default_host = format!("GET / HTTP/1.1\r\nHost: {}\r\n", server.address);
    assert!(
        requests.iter().any(|r| r.starts_with(&default_host)),
        "no request starting {default_host:?} in {requests:?}"
    );
}

#[test]
fn http_expect_ranges_and_a_closed_port() {
    let server = HttpServer::start(503);
    let closed = closed_port();
    let (checker, rx) = start();
    checker.set_targets(vec![
        // 503 is what this target wants.
        target(
            1,
            server.address,
            settings(http("/", None, vec![500..=503]), 1, 1),
        ),
        // The default (200..=399) does not take 503.
        target(2, server.address, settings(http("/", None, vec![]), 1, 1)),
        target(3, closed, settings(http("/", None, vec![]), 1, 1)),
    ]);
    assert_eq!(
        expect_transition(&rx, 2, Health::Down, INTERVAL * 2 + SLACK).reason,
        "HTTP 503"
    );
    wait_snapshot(&checker, 1, SLACK, |h, last| {
        h == Health::Up && last == "HTTP 503"
    });
    wait_snapshot(&checker, 3, SLACK, |h, last| {
        h == Health::Down && last == "connection refused"
    });
    expect_quiet(&rx, 1, INTERVAL * 3);
}

#[test]
fn http_garbage_and_early_close_fail() {
    // A server that answers with something that is not HTTP, and one that closes at once.
    let garbage = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let (garbage_address, silent_address) =
        (garbage.local_addr().unwrap(), silent.local_addr().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = [(garbage, true), (silent, false)]
        .into_iter()
        .map(|(listener, talk)| {
            let stop = stop.clone();
            listener.set_nonblocking(true).unwrap();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            if talk {
                                let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect();
    let (checker, rx) = start();
    checker.set_targets(vec![
        target(1, garbage_address, settings(http("/", None, vec![]), 1, 1)),
        target(2, silent_address, settings(http("/", None, vec![]), 1, 1)),
    ]);
    let one = expect_transition(&rx, 1, Health::Down, INTERVAL * 2 + SLACK);
    assert_eq!(one.reason, "bad HTTP status line \"SSH-2.0-OpenSSH_9.2\"");
    let two = expect_transition(&rx, 2, Health::Down, INTERVAL * 2 + SLACK);
    assert!(
        two.reason == "connection closed before the HTTP status line"
            || two.reason.starts_with("receive: connection reset"),
        "{two:?}"
    );
    drop(checker);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
}

/// A UDP echo server in a thread; closing it (drop) makes the port unreachable.
struct Echo {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start() -> Echo {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = socket.local_addr().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&buf[..n], peer);
                    }
                }
            }
        });
        Echo {
            address,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn udp(payload: &[u8], expect: Option<&[u8]>) -> Check {
    Check::Udp {
        payload: payload.to_vec(),
        expect: expect.map(<[u8]>::to_vec),
    }
}

#[test]
fn udp_echo_up_mismatch_and_port_unreachable() {
    let echo = Echo::start();
    let (checker, rx) = start();
    checker.set_targets(vec![
        target(1, echo.address, settings(udp(b"ping", Some(b"pi")), 1, 2)),
        target(2, echo.address, settings(udp(b"ping", Some(b"pong")), 1, 1)),
        target(3, echo.address, settings(udp(b"", None), 1, 1)),
    ]);
    wait_snapshot(&checker, 1, SLACK, |h, last| {
        h == Health::Up && last == "UDP reply of 4 bytes"
    });
    wait_snapshot(&checker, 3, SLACK, |h, last| {
        h == Health::Up && last == "UDP reply of 0 bytes"
    });
    let mismatch = expect_transition(&rx, 2, Health::Down, INTERVAL * 2 + SLACK);
    assert_eq!(mismatch.reason, "UDP reply of 4 bytes did not match");

    drop(echo);
    let down = expect_transition(&rx, 1, Health::Down, INTERVAL * 3 + SLACK);
    assert_eq!(down.reason, "port unreachable (2 failures in a row)");
}

#[test]
fn udp_timeout_when_nothing_answers() {
    // Bound, so no ICMP error comes back, but never read.
    let mute = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (checker, rx) = start();
    checker.set_targets(vec![target(
        1,
        mute.local_addr().unwrap(),
        settings(udp(b"hello?", None), 1, 1),
    )]);
    let down = expect_transition(
        &rx,
        1,
        Health::Down,
        INTERVAL + Duration::from_millis(300) + SLACK,
    );
    assert_eq!(down.reason, "timeout after 300ms waiting for a UDP reply");
}

#[test]
fn set_targets_keeps_unchanged_state_and_stops_removed_targets() {
    let server = Server::bind("127.0.0.1:0");
    let closed = closed_port();
    let (checker, rx) = start();
    let a = target(1, closed, settings(Check::Tcp, 1, 1));
    let b = target(2, server.address, settings(Check::Tcp, 1, 1));
    checker.set_targets(vec![a.clone(), b.clone()]);
    expect_transition(&rx, 1, Health::Down, INTERVAL * 2 + SLACK);
    wait_snapshot(&checker, 2, SLACK, |h, last| {
        h == Health::Up && last == "connected"
    });
    assert_eq!(checker.stats().targets, 2);

    // A unchanged keeps its Down state (a new target would start Up); B removed; C new.
    let c = target(3, server.address, settings(Check::Tcp, 1, 1));
    checker.set_targets(vec![a.clone(), c.clone()]);
    let snapshot = checker.snapshot();
    assert_eq!(snapshot.len(), 2, "{snapshot:?}");
    assert_eq!(snapshot[0].0, 1);
    assert_eq!(snapshot[0].1, Health::Down);
    assert_eq!(snapshot[0].2, "connection refused");
    assert_eq!(snapshot[1], (3, Health::Up, "starting".to_owned()));
    expect_quiet(&rx, 1, INTERVAL * 3);

    // Nothing probes the server any more once C is gone too.
    checker.set_targets(vec![a.clone()]);
    std::thread::sleep(INTERVAL * 2);
    let before = server.accepted.load(Ordering::Relaxed);
    std::thread::sleep(INTERVAL * 5);
    assert_eq!(server.accepted.load(Ordering::Relaxed), before);
    assert!(before > 0);

    // A with other settings is a new target: it starts Up again, and says so.
    let mut a2 = a.clone();
    a2.settings.fall = 2;
    checker.set_targets(vec![a2]);
    let up = expect_transition(&rx, 1, Health::Up, SLACK);
    assert_eq!(up.reason, "target changed; starts up");
    expect_transition(&rx, 1, Health::Down, INTERVAL * 3 + SLACK);

    checker.set_targets(Vec::new());
    assert!(checker.snapshot().is_empty());
}

#[test]
fn invalid_settings_go_down_without_probing() {
    let server = Server::bind("127.0.0.1:0");
    let (checker, rx) = start();
    checker.set_targets(vec![
        target(
            1,
            server.address,
            settings(http("/a\r\nX: y", None, vec![]), 1, 1),
        ),
        Target {
            bind: Some("::1".parse().unwrap()),
            ..target(2, server.address, settings(Check::Tcp, 1, 1))
        },
    ]);
    let one = expect_transition(&rx, 1, Health::Down, SLACK);
    assert!(
        one.reason.starts_with("invalid settings: HTTP path"),
        "{one:?}"
    );
    let two = expect_transition(&rx, 2, Health::Down, SLACK);
    assert!(
        two.reason.starts_with("invalid settings: bind address ::1"),
        "{two:?}"
    );
    std::thread::sleep(INTERVAL * 3);
    assert_eq!(server.accepted.load(Ordering::Relaxed), 0);
    assert_eq!(checker.stats().probes_started, 0);
}

#[test]
fn bind_address_is_the_probe_source() {
    let server = Server::bind("127.0.0.1:0");
    let (checker, _rx) = start();
    checker.set_targets(vec![Target {
        bind: Some("127.0.0.2".parse().unwrap()),
        ..target(1, server.address, settings(Check::Tcp, 1, 1))
    }]);
    wait_snapshot(&checker, 1, SLACK, |h, last| {
        h == Health::Up && last == "connected"
    });
    let peers = server.peers.lock().unwrap().clone();
    assert!(!peers.is_empty());
    assert!(
        peers.iter().all(|p| p.ip().to_string() == "127.0.0.2"),
        "{peers:?}"
    );
}

#[test]
fn mark_is_set_on_probe_sockets() {
    if !xlb_tests::have_root() {
        return;
    }
    let server = Server::bind("127.0.0.1:0");
    let (checker, _rx) = start();
    checker.set_targets(vec![Target {
        mark: Some(0x4242),
        ..target(1, server.address, settings(Check::Tcp, 1, 1))
    }]);
    // SO_MARK needs CAP_NET_ADMIN: a probe that could not set it would fail with "SO_MARK".
    wait_snapshot(&checker, 1, SLACK, |h, last| {
        h == Health::Up && last == "connected"
    });
}

#[test]
fn many_targets_spread_and_drop_is_prompt() {
    let server = Server::bind("127.0.0.1:0");
    let (checker, rx) = start();
    let targets: Vec<Target> = (0..500)
        .map(|id| {
            let mut s = settings(Check::Tcp, 1, 1);
            s.interval = Duration::from_millis(500);
            target(id, server.address, s)
        })
        .collect();
    checker.set_targets(targets);
    // After one interval every target has had its first probe, spread over the interval.
    std::thread::sleep(Duration::from_millis(700));
    let stats = checker.stats();
    assert!(stats.probes_succeeded >= 500, "{stats:?}");
    assert_eq!(stats.probes_failed, 0, "{stats:?}");
    assert!(rx.rx.try_recv().is_err());
    let snapshot = checker.snapshot();
    assert_eq!(snapshot.len(), 500);
    assert!(
        snapshot
            .iter()
            .all(|(_, h, last)| *h == Health::Up && last == "connected")
    );

    let stopping = Instant::now();
    drop(checker);
    assert!(
        stopping.elapsed() < Duration::from_millis(500),
        "drop took {:?}",
        stopping.elapsed()
    );
}

#[test]
fn tcp_and_udp_over_ipv6_loopback() {
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("skipped: no IPv6 loopback");
        return;
    };
    let tcp = listener.local_addr().unwrap();
    let echo = UdpSocket::bind("[::1]:0").unwrap();
    let udp_address = echo.local_addr().unwrap();
    let (checker, rx) = start();
    checker.set_targets(vec![
        target(1, tcp, settings(Check::Tcp, 1, 1)),
        target(2, udp_address, settings(udp(b"ping", None), 1, 1)),
    ]);
    wait_snapshot(&checker, 1, SLACK, |h, last| {
        h == Health::Up && last == "connected"
    });
    // Nothing reads the UDP socket: a timeout. Then closed: port unreachable (ICMPv6).
    expect_transition(
        &rx,
        2,
        Health::Down,
        INTERVAL + Duration::from_millis(300) + SLACK,
    );
    drop(echo);
    drop(listener);
    let down = expect_transition(&rx, 1, Health::Down, INTERVAL * 2 + SLACK);
    assert_eq!(down.reason, "connection refused");
    wait_snapshot(&checker, 2, SLACK, |h, last| {
        h == Health::Down && last == "port unreachable"
    });
}
