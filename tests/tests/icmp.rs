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

/// Runs a ping `script` (python3, three echo requests, a line per reply) on the client and
/// checks that every request was answered, by the datapath (`echo_replied`), not the stack.
fn expect_three_echo_replies(lab: &Lab, script: &str, vip: &str) {
    let out = lab
        .command("client", "python3")
        .args(["-c", script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "no echo reply from {vip}:\n{}{}\n{}",
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
        icmp_count(lab, "echo_replied", 3.0) >= 3.0,
        "the replies did not come from the datapath"
    );
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
    expect_three_echo_replies(&lab, &script, "the VIP");
}

/// A router between the lab and a client further away, whose client-side link has a smaller
/// MTU than the backends' (which send full 1500-byte packets: the client's MSS says 1460).
struct FarClient {
    // Dropped in this order: the client, then the router (whose bridge port goes with it).
    client: NetNs,
    /// Held for its Drop: the router lives as long as the test.
    _router: NetNs,
}

/// The addressing of a [`FarClient`] in one family.
struct FarAddressing {
    /// Prefix of the router's and the client's namespace names (and the bridge port's).
    prefix: &'static str,
    /// `-4` or `-6`, for `ip`.
    family: &'static str,
    /// Extra words after `ip addr add` (`nodad` for IPv6: usable at once).
    addr_flags: &'static [&'static str],
    /// The router's address on the lab's bridge, with its prefix length.
    router_lab: &'static str,
    /// The router's address on the client's link, with its prefix length.
    router_client_side: &'static str,
    /// The router's address on the client's link (the client's gateway).
    gateway: &'static str,
    /// The client's address, with its prefix length.
    client: &'static str,
    /// The client's network (the backends' route towards it).
    client_net: &'static str,
    /// The VIP as a host route, and the balancer's address (its next hop).
    vip_route: String,
    lb: &'static str,
    /// The MTU of the router's end of the client's link.
    mtu: &'static str,
    /// Forwarding on, ICMP rate limit off.
    sysctls: &'static [&'static str],
}

/// The far client's address (IPv4).
const FAR_CLIENT: &str = "10.98.1.1";
/// The far client's address (IPv6).
const FAR_CLIENT6: &str = "fd98:1::1";

impl FarClient {
    fn attach(lab: &Lab, a: &FarAddressing) -> FarClient {
        let router = NetNs::new(&format!("{}rt", a.prefix));
        let client = NetNs::new(&format!("{}cl", a.prefix));
        let port = format!("p-{}rt", a.prefix);
        let in_lab = |host: &str, args: &[&str]| {
            let ns = lab.ns(host);
            let mut full = vec!["netns", "exec", &ns];
            full.extend_from_slice(args);
            xlb_tests::netns::run("ip", &full);
        };
        let addr = |ns: &NetNs, address: &str| {
            let mut args = vec!["ip", a.family, "addr", "add", address, "dev", "eth0"];
            args.extend_from_slice(a.addr_flags);
            ns.exec(&args);
        };
        // Bridge side.
        in_lab(
            "sw",
            &[
                "ip",
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &router.name,
            ],
        );
        in_lab("sw", &["ip", "link", "set", &port, "master", "br0", "up"]);
        let mut sysctl = vec!["sysctl", "-qw"];
        sysctl.extend_from_slice(a.sysctls);
        router.exec(&sysctl);
        router.exec(&["ip", "link", "set", "eth0", "up"]);
        addr(&router, a.router_lab);
        // Client side, the smaller MTU on the router's end only.
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
        router.exec(&["ip", "link", "set", "eth1", "mtu", a.mtu, "up"]);
        let mut args = vec![
            "ip",
            a.family,
            "addr",
            "add",
            a.router_client_side,
            "dev",
            "eth1",
        ];
        args.extend_from_slice(a.addr_flags);
        router.exec(&args);
        router.exec(&["ip", a.family, "route", "add", &a.vip_route, "via", a.lb]);
        client.exec(&["ip", "link", "set", "eth0", "up"]);
        addr(&client, a.client);
        client.exec(&["ip", a.family, "route", "add", "default", "via", a.gateway]);
        // As in scripts/lab.sh: a veth leaves checksums unfinished, XDP would carry them on.
        client.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        let router_addr = a.router_lab.split('/').next().unwrap();
        for backend in ["be1", "be2", "be3"] {
            in_lab(
                backend,
                &[
                    "ip",
                    a.family,
                    "route",
                    "add",
                    a.client_net,
                    "via",
                    router_addr,
                ],
            );
        }
        FarClient {
            client,
            _router: router,
        }
    }
}

/// Downloads 2 MiB from `url` (a VIP served in mode l2) by the far client; the backends' full
/// segments only get through once the router's error about them (`error_kind`) reaches the
/// flow's backend through the balancer, which then caches `mtu` towards `far_client` from `vip`.
fn download_learns_the_path_mtu(
    lab: &Lab,
    far: &FarClient,
    url: &str,
    (far_client, vip, mtu): (&str, &str, u16),
    error_kind: &str,
) {
    let size = 2 * 1024 * 1024;
    let downloaded = curl(
        far.client.command("curl"),
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("{url}bytes/{size}"),
        ],
        &format!("the download through the {mtu}-byte link stalled"),
    );
    assert_eq!(downloaded, size.to_string());
    assert!(
        icmp_count(lab, "error_forwarded", 1.0) >= 1.0,
        "the router's {error_kind} did not go through the balancer"
    );
    // The backend learnt the smaller MTU towards the client from the forwarded error.
    let learnt = ["be1", "be2", "be3"]
        .iter()
        .any(|be| route_mtu(lab, be, far_client, Some(vip), mtu));
    assert!(learnt, "no backend caches the path MTU {mtu} to the client");
}

#[test]
fn a_smaller_mtu_towards_the_client_still_lets_a_large_download_complete() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::up("xicm", "l2");
    let far = FarClient::attach(
        &lab,
        &FarAddressing {
            prefix: "xic",
            family: "-4",
            addr_flags: &[],
            router_lab: "10.99.0.250/24",
            router_client_side: "10.98.1.254/24",
            gateway: "10.98.1.254",
            client: "10.98.1.1/24",
            client_net: "10.98.1.0/24",
            vip_route: format!("{VIP}/32"),
            lb: "10.99.0.2",
            mtu: "1000",
            sysctls: &["net.ipv4.ip_forward=1", "net.ipv4.icmp_ratelimit=0"],
        },
    );
    lab.start_xlbd(&repo_root().join("config/demo-l2.toml"));
    download_learns_the_path_mtu(
        &lab,
        &far,
        &format!("http://{VIP}/"),
        (FAR_CLIENT, VIP, 1000),
        "fragmentation needed",
    );
}

/// Uploads 1 MiB to `url` (a VIP served in mode ipip) from the lab's client: its full-size
/// segments only get through once the balancer's own error about them has taught the client
/// the MTU `mtu` towards `vip`.
fn upload_learns_the_mtu(lab: &Lab, url: &str, vip: &str, mtu: u16) {
    let size = 1024 * 1024;
    let upload = lab.workdir.join("upload.bin");
    std::fs::write(&upload, vec![b'u'; size]).expect("upload file");
    let body = curl(
        lab.command("client", "curl"),
        &["--data-binary", &format!("@{}", upload.display()), url],
        "the upload stalled",
    );
    assert!(
        body.trim_end().ends_with(&format!("received {size}")),
        "unexpected answer {body:?}"
    );
    assert!(
        icmp_count(lab, "too_big_sent", 1.0) >= 1.0,
        "the balancer sent no error for packets too big"
    );
    // The client learnt the MTU the balancer announced: 1500 less the outer header.
    assert!(
        route_mtu(lab, "client", vip, None, mtu),
        "the client caches no path MTU {mtu} to the VIP"
    );
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
    upload_learns_the_mtu(&lab, &format!("http://{VIP}/"), VIP, 1480);
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
    expect_three_echo_replies(&lab, &script, "the IPv6 VIP");
}

#[test]
fn ipv6_path_mtu_discovery_through_the_balancer_lets_a_large_download_complete() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::up("xi6m", "l2");
    // The client-side link has the IPv6 minimum MTU, 1280.
    let far = FarClient::attach(
        &lab,
        &FarAddressing {
            prefix: "xi6",
            family: "-6",
            addr_flags: &["nodad"],
            router_lab: "fd99::250/64",
            router_client_side: "fd98:1::254/64",
            gateway: "fd98:1::254",
            client: "fd98:1::1/64",
            client_net: "fd98:1::/64",
            vip_route: format!("{VIP6}/128"),
            lb: "fd99::2",
            mtu: "1280",
            sysctls: &[
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv6.icmp.ratelimit=0",
            ],
        },
    );
    let config = config6(&lab, "l2");
    lab.start_xlbd(&config);
    download_learns_the_path_mtu(
        &lab,
        &far,
        &format!("http://[{VIP6}]/"),
        (FAR_CLIENT6, VIP6, 1280),
        "packet too big",
    );
}

#[test]
fn an_ipv6_upload_too_big_to_encapsulate_completes_through_packet_too_big() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::up("xi6u", "ipip");
    let config = config6(&lab, "ipip");
    lab.start_xlbd(&config);
    upload_learns_the_mtu(&lab, &format!("http://[{VIP6}]/"), VIP6, 1460);
}
