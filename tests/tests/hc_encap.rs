//! Health probes through the data path: in the IPIP lab, a probe socket marked with `SO_MARK`
//! on the balancer connects to the VIP, `xlb_hc_encap` (tc egress on the balancer's interface)
//! wraps its packets in IPv4-in-IPv4 towards one backend, and the backend's decapsulator and
//! HTTP server answer from the VIP. A backend that still answers on its own address but no
//! longer serves the VIP must fail the probe. Run once per tc hook (tcx and netlink/clsact).
//! Namespaces are prefixed `xlbhe-`; everything is removed on drop, also when a test fails.

use std::{
    fs::File,
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    num::NonZeroU32,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    time::{Duration, Instant},
};

use xlb::{
    config::MacAddr,
    dataplane::hc_encap::{HealthEncap, TcHook},
};
use xlb_tests::{have_root, lab::Lab};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);
const BE1: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 11);
const BE1_MAC: MacAddr = MacAddr([0x02, 0x99, 0, 0, 0, 0x11]);
const LB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const LB_IF: &str = "xlbdemo-lb";
/// The neighbour entry for the VIP on the balancer: a MAC nobody has. Encapsulated probes get
/// the backend's MAC instead; anything sent to the VIP unencapsulated goes nowhere.
const VIP_NEIGH_MAC: &str = "02:99:00:00:00:99";
/// Bound of every probe connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn mark(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).expect("non-zero mark")
}

/// This thread inside a named network namespace until dropped, then back where it was. Only the
/// calling thread moves (setns), so tests running side by side are unaffected.
struct InNetns {
    home: File,
}

impl InNetns {
    fn enter(name: &str) -> InNetns {
        let home = File::open("/proc/thread-self/ns/net").expect("own network namespace");
        let target = File::open(format!("/var/run/netns/{name}"))
            .unwrap_or_else(|e| panic!("namespace {name}: {e}"));
        // SAFETY: setns(2) on a namespace descriptor we hold open; it moves this thread only.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {name}: {}", io::Error::last_os_error());
        InNetns { home }
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        // SAFETY: as in `enter`, back to the namespace this thread came from.
        let rc = unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 && !std::thread::panicking() {
            panic!("setns back: {}", io::Error::last_os_error());
        }
    }
}

/// A TCP connection to `to` from this thread's namespace, its socket marked `mark` (if any)
/// before connecting, bounded by [`CONNECT_TIMEOUT`].
fn connect(to: SocketAddrV4, mark: Option<u32>) -> io::Result<TcpStream> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Some(mark) = mark {
        // SAFETY: `mark` is a readable u32 for the length given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&raw const mark).cast(),
                size_of::<u32>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `address` is a valid sockaddr_in for the length given.
    let rc = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&raw const address).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if rc != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(error);
        }
        let mut poll = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, CONNECT_TIMEOUT.as_millis() as i32) };
        if ready < 0 {
            return Err(io::Error::last_os_error());
        }
        if ready == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        let mut so_error: i32 = 0;
        let mut len = size_of::<i32>() as u32;
        // SAFETY: `so_error` and `len` are writable and sized as getsockopt expects.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut so_error).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if so_error != 0 {
            return Err(io::Error::from_raw_os_error(so_error));
        }
    }
    let stream = TcpStream::from(socket);
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    Ok(stream)
}

/// One HTTP GET of `/` on a connected stream; returns the body ("beN addr:port").
fn http_get(mut stream: TcpStream) -> io::Result<String> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (_, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, response.clone()))?;
    Ok(body.trim().to_owned())
}

/// Connect and GET, bounded.
fn probe(to: SocketAddrV4, mark: Option<u32>) -> io::Result<String> {
    http_get(connect(to, mark)?)
}

/// As [`probe`], retried for up to 10 s: the backends' decapsulators start in the background.
fn probe_until_up(to: SocketAddrV4, mark: Option<u32>) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match probe(to, mark) {
            Ok(body) => return body,
            Err(e) => assert!(
                Instant::now() < deadline,
                "probe of {to} with mark {mark:?} still failing after 10 s: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn counter(encap: &HealthEncap, name: &str) -> u64 {
    encap
        .counters()
        .expect("counters")
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
        .1
}

/// (encapsulated, passed, errors), after a short pause so that the last connection's closing
/// packets are counted.
fn counters(encap: &HealthEncap) -> (u64, u64, u64) {
    std::thread::sleep(Duration::from_millis(300));
    (
        counter(encap, "encapsulated"),
        counter(encap, "passed"),
        counter(encap, "errors"),
    )
}

fn lab_ok(lab: &Lab, host: &str, program: &str, args: &[&str]) -> String {
    let out = lab
        .command(host, program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The egress qdiscs and filters of the balancer's interface, as tc prints them.
fn tc_state(lab: &Lab) -> (String, String) {
    let qdiscs = lab_ok(lab, "lb", "tc", &["qdisc", "show", "dev", LB_IF]);
    let filters = lab_ok(lab, "lb", "tc", &["filter", "show", "dev", LB_IF, "egress"]);
    (qdiscs, filters)
}

fn probe_through_data_path(prefix: &str, hook: TcHook) {
    // Drop order (reverse of declaration): the encapsulator inside the namespace, then the
    // thread back home, then the lab.
    let lab = Lab::up(prefix, "ipip");
    // The balancer reaches the VIP on-link through its interface; nobody answers ARP for it
    // (backends ignore ARP for addresses on their loopback), so the neighbour is static.
    lab_ok(
        &lab,
        "lb",
        "ip",
        &["route", "add", "10.99.0.100/32", "dev", LB_IF],
    );
    lab_ok(
        &lab,
        "lb",
        "ip",
        &[
            "neigh",
            "add",
            "10.99.0.100",
            "lladdr",
            VIP_NEIGH_MAC,
            "dev",
            LB_IF,
        ],
    );
    let vip = SocketAddrV4::new(VIP, 80);
    let be1 = SocketAddrV4::new(BE1, 80);

    let netns = InNetns::enter(&lab.ns("lb"));
    let mut encap = HealthEncap::attach_with(LB_IF, hook).expect("attach xlb_hc_encap");
    match hook {
        // Whether the tcx link is there shows in the probes below (Debian's bpftool 7.1
        // cannot list tcx links per device).
        TcHook::Tcx => {
            let (qdiscs, _) = tc_state(&lab);
            assert!(!qdiscs.contains("clsact"), "tcx needs no qdisc: {qdiscs}");
        }
        TcHook::Netlink => {
            let (qdiscs, filters) = tc_state(&lab);
            assert!(qdiscs.contains("clsact"), "no clsact qdisc: {qdiscs}");
            assert!(filters.contains("xlb_hc_encap"), "no filter: {filters}");
        }
    }
    encap
        .set_target(mark(7), BE1, BE1_MAC, LB_ADDR)
        .expect("set target");

    // 1. A marked probe of the VIP reaches be1 encapsulated, and be1 answers from the VIP.
    let body = probe_until_up(vip, Some(7));
    assert!(
        body.starts_with("be1 10.99.0.2:"),
        "marked probe of the VIP answered by: {body:?}"
    );
    let (encapsulated, passed, errors) = counters(&encap);
    // At least SYN, ACK, request, FIN.
    assert!(encapsulated >= 4, "encapsulated {encapsulated}");
    assert_eq!(errors, 0);

    // 3. Unmarked packets, and marked ones without a target, leave untouched.
    let body = probe(be1, None).expect("plain probe of be1's own address");
    assert!(body.starts_with("be1 "), "{body:?}");
    let body = probe(be1, Some(8)).expect("probe with a mark that has no target");
    assert!(body.starts_with("be1 "), "{body:?}");
    let (encapsulated_after, passed_after, errors_after) = counters(&encap);
    assert_eq!(
        encapsulated_after, encapsulated,
        "unmarked traffic was encapsulated"
    );
    assert!(
        passed_after >= passed + 8,
        "passed went from {passed} to {passed_after} over two connections"
    );
    assert_eq!(errors_after, 0);

    // 2. be1 loses the VIP: the marked probe fails, although be1's own address still answers.
    lab_ok(
        &lab,
        "be1",
        "ip",
        &["addr", "del", "10.99.0.100/32", "dev", "lo"],
    );
    let started = Instant::now();
    let result = probe(vip, Some(7));
    assert!(
        result.is_err(),
        "probe of the VIP succeeded though be1 no longer has it: {result:?}"
    );
    assert!(
        started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(1),
        "failure not bounded"
    );
    let body = probe(be1, None).expect("be1's own address still answers");
    assert!(body.starts_with("be1 "), "{body:?}");
    let (encapsulated_down, _, errors_down) = counters(&encap);
    assert!(
        encapsulated_down > encapsulated_after,
        "the failing probe's SYNs were not encapsulated"
    );
    assert_eq!(errors_down, 0);

    // The VIP back: the probe passes again.
    lab_ok(
        &lab,
        "be1",
        "ip",
        &["addr", "add", "10.99.0.100/32", "dev", "lo"],
    );
    let body = probe_until_up(vip, Some(7));
    assert!(body.starts_with("be1 10.99.0.2:"), "{body:?}");

    // Without its target, mark 7 is an ordinary mark again.
    encap.remove_target(mark(7)).expect("remove target");
    encap
        .remove_target(mark(7))
        .expect("removing an absent target");
    let (before, _, _) = counters(&encap);
    let body = probe(be1, Some(7)).expect("mark 7 without a target");
    assert!(body.starts_with("be1 "), "{body:?}");
    let (after, _, _) = counters(&encap);
    assert_eq!(after, before, "a removed target still encapsulates");

    // Dropping detaches (a program left attached would keep its map, target included, and the
    // probe would still pass), and removes the qdisc only if it was added for it.
    encap
        .set_target(mark(7), BE1, BE1_MAC, LB_ADDR)
        .expect("set target again");
    drop(encap);
    let result = probe(vip, Some(7));
    assert!(result.is_err(), "still encapsulated after drop: {result:?}");
    let (qdiscs, filters) = tc_state(&lab);
    assert!(!filters.contains("xlb_hc_encap"), "filter left: {filters}");
    assert!(!qdiscs.contains("clsact"), "qdisc left: {qdiscs}");

    if hook == TcHook::Netlink {
        // A clsact qdisc that was there before stays, with only our filter gone.
        lab_ok(&lab, "lb", "tc", &["qdisc", "add", "dev", LB_IF, "clsact"]);
        let encap = HealthEncap::attach_with(LB_IF, hook).expect("attach beside a qdisc");
        let (_, filters) = tc_state(&lab);
        assert!(filters.contains("xlb_hc_encap"), "no filter: {filters}");
        drop(encap);
        let (qdiscs, filters) = tc_state(&lab);
        assert!(!filters.contains("xlb_hc_encap"), "filter left: {filters}");
        assert!(
            qdiscs.contains("clsact"),
            "a qdisc we did not add was removed"
        );

        // A filter left behind by a process that died (here: one never dropped) is replaced by
        // the next attach, not run beside it.
        std::mem::forget(HealthEncap::attach_with(LB_IF, hook).expect("attach"));
        let encap = HealthEncap::attach_with(LB_IF, hook).expect("attach over a stale filter");
        let (_, filters) = tc_state(&lab);
        assert_eq!(
            filters
                .lines()
                .filter(|l| l.contains("xlb_hc_encap"))
                .count(),
            1,
            "stale filter kept: {filters}"
        );
        drop(encap);
        let (_, filters) = tc_state(&lab);
        assert!(!filters.contains("xlb_hc_encap"), "filter left: {filters}");
    }
    drop(netns);
    // The lab's own cleanup also stops be1..be3 and removes every namespace.
    drop(lab);
    let left = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.lines().any(|l| l.starts_with(prefix)),
        "namespaces left: {left}"
    );
}

#[test]
fn marked_probe_follows_the_ipip_path_tcx() {
    if have_root() {
        probe_through_data_path("xlbhe-tcx-", TcHook::Tcx);
    }
}

#[test]
fn marked_probe_follows_the_ipip_path_netlink() {
    if have_root() {
        probe_through_data_path("xlbhe-nl-", TcHook::Netlink);
    }
}
