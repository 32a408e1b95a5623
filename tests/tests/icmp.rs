//! ICMP through the balancer, end to end in the namespace lab (`scripts/lab.sh`): ping answered
//! by the datapath, path MTU discovery towards the clients through the balancer (a router with
//! a smaller MTU on the client side), and an upload through an IPIP VIP whose packets are too
//! big once encapsulated; each over IPv4, and over IPv6 (ICMPv6 echo, packet too big). Namespaces
//! are named `xic...` (IPv4) and `xi6...` (IPv6) with this process's id, a prefix of their own
//! per test (`xicp`, `xicm`, `xicu`, `xicrt`, `xiccl`, `xi6p`, `xi6m`, `xi6u`, `xi6rt`,
//! `xi6cl`) so the tests run side by side.
//!
//! Each test fails without its feature: the balancer's kernel owns no VIP address and does not
//! forward, so without the datapath no echo reply comes back, the router's "fragmentation
//! needed" never reaches the backend (the download stalls on its first full-size segment), and
//! the encapsulated full-size segments of the upload are dropped by the veth (1520 bytes over a
//! 1500-byte MTU) without the ICMP that makes the client send smaller ones. Each test also
//! checks that the balancer's counter for the ICMP it handled moved.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xlb_tests::{
    have_root,
    lab::{Lab, VIP, VIP6, repo_root},
    netns::NetNs,
};

/// The balancer's count of ICMP handled with `outcome`, polled until it reaches `at_least`
/// (30 s at most); returns the last value read.
fn icmp_count(lab: &Lab, outcome: &str, at_least: f64) -> f64 {
    let series = format!("xlb_icmp_packets_total{{outcome=\"{outcome}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = lab.metric(&series).unwrap_or(0.0);
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs curl (`command`, in some namespace) with `args` and a 60 s limit; returns its output,
/// panicking with `stalled` and curl's error if it fails.
fn curl(mut command: Command, args: &[&str], stalled: &str) -> String {
    let out = command
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{stalled}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `host`'s route to `to` (from `from`, if given) caches the path MTU `mtu`.
fn route_mtu(lab: &Lab, host: &str, to: &str, from: Option<&str>, mtu: u16) -> bool {
    let mut command = lab.command(host, "ip");
    command.args(["route", "get", to]);
    if let Some(from) = from {
        command.args(["from", from]);
    }
    let out = command.output().expect("ip route get");
    String::from_utf8_lossy(&out.stdout).contains(&format!("mtu {mtu}"))
}

#[test]
fn ping_to_a_vip_is_answered_by_the_datapath() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::up("xicp", "l2");
    lab.start_xlbd(&repo_root().join("config/demo-l2.toml"));
    // A minimal ping (the lab has no ping binary): three echo requests on a raw socket, each
    // answered within 5 s by an echo reply from the VIP with the same identifier and sequence.
    let script = format!(
        r#"
import socket, struct, time
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.settimeout(5)
ident = 0x4a1c
for seq in range(3):
    body = b"xlb ping %d...." % seq
    msg = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + body
    msg = msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]
    sock.sendto(msg, ("{VIP}", 0))
    deadline = time.time() + 5
    while True:
        data, peer = sock.recvfrom(2048)
        icmp = data[(data[0] & 15) * 4:]
        kind, code, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
        if peer[0] == "{VIP}" and kind == 0 and rid == ident and rseq == seq:
            assert icmp[8:] == body and csum(icmp) == 0, "bad reply"
            print("reply", seq)
            break
        assert time.time() < deadline, "no reply"
"#
    );
    let out = lab
        .command("client", "python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "no echo reply from the VIP:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        3,
        "every request answered: {stdout}"
    );
    assert!(
        icmp_count(&lab, "echo_replied", 3.0) >= 3.0,
        "the replies did not come from the datapath"
    );
}

/// A router between the lab and a client further away: its client-side link has an MTU of
/// 1000 while the backends send 1500-byte segments (the client's MSS says 1460).
struct FarClient {
    // Dropped in this order: the client, then the router (whose bridge port goes with it).
    client: NetNs,
    /// Held for its Drop: the router lives as long as the test.
    _router: NetNs,
}

/// The far client's address.
const FAR_CLIENT: &str = "10.98.1.1";
/// The router's address on the lab's bridge.
const ROUTER: &str = "10.99.0.250";

impl FarClient {
    fn attach(lab: &Lab) -> FarClient {
        let router = NetNs::new("xicrt");
        let client = NetNs::new("xiccl");
        let sw = lab.ns("sw");
        let lab_ns = |ns: &str, args: &[&str]| {
            let mut full = vec!["netns", "exec", ns];
            full.extend_from_slice(args);
            xlb_tests::netns::run("ip", &full);
        };
        // Bridge side.
        lab_ns(
            &sw,
            &[
                "ip",
                "link",
                "add",
                "p-xicrt",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &router.name,
            ],
        );
        lab_ns(
            &sw,
            &["ip", "link", "set", "p-xicrt", "master", "br0", "up"],
        );
        router.exec(&["ip", "link", "set", "eth0", "up"]);
        router.exec(&["ip", "addr", "add", &format!("{ROUTER}/24"), "dev", "eth0"]);
        // Client side, MTU 1000 on the router's end only.
        router.exec(&[
            "ip",
            "link",
            "add",
            "eth1",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &client.name,
        ]);
        router.exec(&["ip", "link", "set", "eth1", "mtu", "1000", "up"]);
        router.exec(&["ip", "addr", "add", "10.98.1.254/24", "dev", "eth1"]);
        router.exec(&[
            "ip",
            "route",
            "add",
            &format!("{VIP}/32"),
            "via",
            "10.99.0.2",
        ]);
        router.exec(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv4.icmp_ratelimit=0",
        ]);
        client.exec(&["ip", "link", "set", "eth0", "up"]);
        client.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{FAR_CLIENT}/24"),
            "dev",
            "eth0",
        ]);
        client.exec(&["ip", "route", "add", "default", "via", "10.98.1.254"]);
        // As in scripts/lab.sh: a veth leaves checksums unfinished, XDP would carry them on.
        client.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        for backend in ["be1", "be2", "be3"] {
            lab_ns(
                &lab.ns(backend),
                &["ip", "route", "add", "10.98.1.0/24", "via", ROUTER],
            );
        }
        FarClient {
            client,
            _router: router,
        }
    }
}

#[test]
fn a_smaller_mtu_towards_the_client_still_lets_a_large_download_complete() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::up("xicm", "l2");
    let far = FarClient::attach(&lab);
    lab.start_xlbd(&repo_root().join("config/demo-l2.toml"));
    let size = 2 * 1024 * 1024;
    let downloaded = curl(
        far.client.command("curl"),
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("http://{VIP}/bytes/{size}"),
        ],
        "the download through the 1000-byte link stalled",
    );
    assert_eq!(downloaded, size.to_string());
    assert!(
        icmp_count(&lab, "error_forwarded", 1.0) >= 1.0,
        "the router's fragmentation needed did not go through the balancer"
    );
    // The backend learnt the smaller MTU towards the client from the forwarded error.
    let learnt = ["be1", "be2", "be3"]
        .iter()
        .any(|be| route_mtu(&lab, be, FAR_CLIENT, Some(VIP), 1000));
    assert!(learnt, "no backend caches the path MTU 1000 to the client");
}

#[test]
fn an_upload_too_big_to_encapsulate_completes_through_the_balancers_icmp() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::up("xicu", "ipip");
    lab.start_xlbd(&repo_root().join("config/demo-ipip.toml"));
    // The config leaves encap.mtu out: the balancer's interface MTU is in force.
    let (status, policy) = xlb::api::client::call(&lab.api_socket(), "GET", "/v1/policy", None)
        .unwrap_or_else(|e| panic!("GET /v1/policy: {e}\n{}", lab.log()));
    assert_eq!(status, 200);
    assert_eq!(
        (
            &policy["encap_mtu"],
            &policy["on_too_big"],
            &policy["icmp_echo"],
            &policy["icmp_other"]
        ),
        (
            &serde_json::json!(1500),
            &serde_json::json!("icmp"),
            &serde_json::json!("reply"),
            &serde_json::json!("pass")
        ),
        "{policy}"
    );
    let size = 1024 * 1024;
    let upload = lab.workdir.join("upload.bin");
    std::fs::write(&upload, vec![b'u'; size]).expect("upload file");
    let body = curl(
        lab.command("client", "curl"),
        &[
            "--data-binary",
            &format!("@{}", upload.display()),
            &format!("http://{VIP}/"),
        ],
        "the upload stalled",
    );
    assert!(
        body.trim_end().ends_with(&format!("received {size}")),
        "unexpected answer {body:?}"
    );
    assert!(
        icmp_count(&lab, "too_big_sent", 1.0) >= 1.0,
        "the balancer sent no fragmentation needed"
    );
    // The client learnt the MTU the balancer announced: 1500 less the outer header.
    assert!(
        route_mtu(&lab, "client", VIP, None, 1480),
        "the client caches no path MTU 1480 to the VIP"
    );
}

// ----- IPv6: ICMPv6 echo, packet too big towards the backends and from the balancer -----

/// A config serving the lab's IPv6 VIP on port 80 in `mode` with the three backends at their
/// IPv6 addresses, health-checked directly over TCP.
fn config6(lab: &Lab, mode: &str) -> std::path::PathBuf {
    let mut text = format!(
        "[interface]\nname = \"xlbdemo-lb\"\nattach_mode = \"native\"\n\n\
         [encap]\nsource_prefix_v6 = \"fd99:ffff::/64\"\n\n\
         [[vip]]\nname = \"web6\"\naddress = \"{VIP6}\"\nport = 80\nprotocol = \"tcp\"\n\
         mode = \"{mode}\"\ntable_size = 251\n  [vip.health]\n  via = \"direct\"\n  \
         check = \"tcp\"\n  interval_ms = 500\n  timeout_ms = 400\n"
    );
    for i in 1..=3 {
        text.push_str(&format!(
            "  [[vip.backend]]\n  name = \"be{i}\"\n  address = \"fd99::1{i}\"\n  \
             mac = \"02:99:00:00:00:1{i}\"\n"
        ));
    }
    let path = lab.workdir.join("icmp6.toml");
    std::fs::write(&path, text).expect("writing the config");
    path
}

#[test]
fn ping6_to_an_ipv6_vip_is_answered_by_the_datapath() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::up("xi6p", "l2");
    let config = config6(&lab, "l2");
    lab.start_xlbd(&config);
    // Three ICMPv6 echo requests on a raw socket (the kernel fills in their checksum), each
    // answered within 5 s by an echo reply from the VIP with the same identifier, sequence and
    // data, and a checksum that holds over the pseudo-header.
    let script = format!(
        r#"
import socket, struct, time
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
vip = socket.inet_pton(socket.AF_INET6, "{VIP6}")
me = socket.inet_pton(socket.AF_INET6, "fd99::1")
sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
sock.settimeout(5)
ident = 0x4a1d
for seq in range(3):
    body = b"xlb ping6 %d..." % seq
    sock.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, seq) + body, ("{VIP6}", 0))
    deadline = time.time() + 5
    while True:
        data, peer = sock.recvfrom(2048)
        kind, code, _, rid, rseq = struct.unpack("!BBHHH", data[:8])
        if peer[0] == "{VIP6}" and kind == 129 and rid == ident and rseq == seq:
            pseudo = vip + me + struct.pack("!I", len(data)) + b"\0\0\0\x3a"
            assert data[8:] == body and csum(pseudo + data) == 0, "bad reply"
            print("reply", seq)
            break
        assert time.time() < deadline, "no reply"
"#
    );
    let out = lab
        .command("client", "python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "no echo reply from the IPv6 VIP:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        lab.log()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        3,
        "every request answered: {stdout}"
    );
    assert!(
        icmp_count(&lab, "echo_replied", 3.0) >= 3.0,
        "the replies did not come from the datapath"
    );
}

/// The far IPv6 client's address.
const FAR_CLIENT6: &str = "fd98:1::1";
/// The IPv6 router's address on the lab's bridge.
const ROUTER6: &str = "fd99::250";

/// As [`FarClient`], over IPv6: a router whose client-side link has the IPv6 minimum MTU, 1280.
fn attach_far_client6(lab: &Lab) -> FarClient {
    let router = NetNs::new("xi6rt");
    let client = NetNs::new("xi6cl");
    let sw = lab.ns("sw");
    xlb_tests::netns::run(
        "ip",
        &[
            "netns",
            "exec",
            &sw,
            "ip",
            "link",
            "add",
            "p-xi6rt",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &router.name,
        ],
    );
    xlb_tests::netns::run(
        "ip",
        &[
            "netns", "exec", &sw, "ip", "link", "set", "p-xi6rt", "master", "br0", "up",
        ],
    );
    router.exec(&[
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv6.icmp.ratelimit=0",
    ]);
    router.exec(&["ip", "link", "set", "eth0", "up"]);
    router.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{ROUTER6}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    router.exec(&[
        "ip",
        "link",
        "add",
        "eth1",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &client.name,
    ]);
    router.exec(&["ip", "link", "set", "eth1", "mtu", "1280", "up"]);
    router.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd98:1::254/64",
        "dev",
        "eth1",
        "nodad",
    ]);
    router.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        &format!("{VIP6}/128"),
        "via",
        "fd99::2",
    ]);
    client.exec(&["ip", "link", "set", "eth0", "up"]);
    client.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{FAR_CLIENT6}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    client.exec(&["ip", "-6", "route", "add", "default", "via", "fd98:1::254"]);
    // As in scripts/lab.sh: a veth leaves checksums unfinished, XDP would carry them on.
    client.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
    for backend in ["be1", "be2", "be3"] {
        xlb_tests::netns::run(
            "ip",
            &[
                "netns",
                "exec",
                &lab.ns(backend),
                "ip",
                "-6",
                "route",
                "add",
                "fd98:1::/64",
                "via",
                ROUTER6,
            ],
        );
    }
    FarClient {
        client,
        _router: router,
    }
}

#[test]
fn ipv6_path_mtu_discovery_through_the_balancer_lets_a_large_download_complete() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::up("xi6m", "l2");
    let far = attach_far_client6(&lab);
    let config = config6(&lab, "l2");
    lab.start_xlbd(&config);
    let size = 2 * 1024 * 1024;
    let downloaded = curl(
        far.client.command("curl"),
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("http://[{VIP6}]/bytes/{size}"),
        ],
        "the IPv6 download through the 1280-byte link stalled",
    );
    assert_eq!(downloaded, size.to_string());
    assert!(
        icmp_count(&lab, "error_forwarded", 1.0) >= 1.0,
        "the router's packet too big did not go through the balancer"
    );
    // The backend that served the download learnt the smaller MTU from the forwarded error.
    let learnt = ["be1", "be2", "be3"]
        .iter()
        .any(|be| route_mtu(&lab, be, FAR_CLIENT6, Some(VIP6), 1280));
    assert!(learnt, "no backend caches the path MTU 1280 to the client");
}

#[test]
fn an_ipv6_upload_too_big_to_encapsulate_completes_through_packet_too_big() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::up("xi6u", "ipip");
    let config = config6(&lab, "ipip");
    lab.start_xlbd(&config);
    let size = 1024 * 1024;
    let upload = lab.workdir.join("upload6.bin");
    std::fs::write(&upload, vec![b'u'; size]).expect("upload file");
    let body = curl(
        lab.command("client", "curl"),
        &[
            "--data-binary",
            &format!("@{}", upload.display()),
            &format!("http://[{VIP6}]/"),
        ],
        "the IPv6 upload stalled",
    );
    assert!(
        body.trim_end().ends_with(&format!("received {size}")),
        "unexpected answer {body:?}"
    );
    assert!(
        icmp_count(&lab, "too_big_sent", 1.0) >= 1.0,
        "the balancer sent no packet too big"
    );
    // The client learnt the MTU the balancer announced: 1500 less the outer IPv6 header.
    assert!(
        route_mtu(&lab, "client", VIP6, None, 1460),
        "the client caches no path MTU 1460 to the IPv6 VIP"
    );
}
