//! End-to-end over IPv6: the lab of `scripts/lab.sh` (client, balancer, three backends in
//! namespaces on one bridge, IPv6 alongside IPv4), curl as the client, xlbd in native mode.
//! An IPv6 VIP in mode l2 (MAC rewrite) and in mode ipip (IPv6-in-IPv6), and an IPv4 VIP with
//! IPv6 backends (IPv4-in-IPv6); the backends' decapsulators strip both encapsulations. The
//! backends are health-checked over IPv6 (HTTP or TCP, `via = "direct"`), and a stopped one
//! leaves the table.

use std::time::{Duration, Instant};

use xlb::api::client;
use xlb_tests::{
    have_root,
    lab::{Lab, VIP, VIP6, per_backend, xlbd_path},
};

const REQUESTS: usize = 90;

/// A config serving `vip` on port 80 in `mode` with the lab's three backends at their IPv6
/// addresses (fd99::11..13), probed directly with `check` every 500 ms.
fn config(vip: &str, mode: &str, check: &str) -> String {
    let mut text = format!(
        "[interface]\nname = \"xlbdemo-lb\"\nattach_mode = \"native\"\n\n\
         [encap]\nsource_prefix_v6 = \"fd99:ffff::/64\"\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\n\
         mode = \"{mode}\"\ntable_size = 251\n  [vip.health]\n  via = \"direct\"\n  \
         check = \"{check}\"\n  interval_ms = 500\n  timeout_ms = 400\n"
    );
    for i in 1..=3 {
        text.push_str(&format!(
            "  [[vip.backend]]\n  name = \"be{i}\"\n  address = \"fd99::1{i}\"\n  \
             mac = \"02:99:00:00:00:1{i}\"\n"
        ));
    }
    text
}

/// Brings up a lab, serves `vip` in `mode`, sends `REQUESTS` curls to `url`, and checks that
/// every one was answered, by every backend, with nothing dropped; then stops be3's server
/// and checks that the health checks (`check`, to its IPv6 address) take it out.
fn balance(prefix: &str, lab_mode: &str, vip: &str, mode: &str, check: &str, url: &str) {
    let mut lab = Lab::up(prefix, lab_mode);
    let path = lab.workdir.join("ipv6.toml");
    std::fs::write(&path, config(vip, mode, check)).expect("writing the config");
    lab.start_xlbd(&path);
    assert!(lab.lb_has_xdp());

    let bodies = lab.curl(url, REQUESTS);
    assert_eq!(bodies.len(), REQUESTS, "every request answered: {bodies:?}");
    let shares = per_backend(&bodies);
    assert_eq!(
        shares.keys().collect::<Vec<_>>(),
        ["be1", "be2", "be3"],
        "{shares:?}"
    );
    // The client's own address as the backend saw it: no address translation on the way.
    let client = if vip.contains(':') {
        "fd99::1:"
    } else {
        "10.99.0.1:"
    };
    assert!(
        bodies.iter().all(|b| b
            .split_whitespace()
            .nth(1)
            .is_some_and(|a| a.starts_with(client))),
        "{bodies:?}"
    );

    // The CLI names IPv6 VIPs as [address]:port and lists the IPv6 backends.
    let service = if vip.contains(':') {
        format!("[{vip}]:80/tcp")
    } else {
        format!("{vip}:80/tcp")
    };
    for command in [&["vip", "list"][..], &["lb", "list"][..], &["status"][..]] {
        let out = std::process::Command::new(xlbd_path().with_file_name("xlb"))
            .arg("--socket")
            .arg(lab.api_socket())
            .args(command)
            .output()
            .expect("running xlb");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "xlb {command:?}: {text}");
        if command[0] != "status" {
            assert!(text.contains(&service), "xlb {command:?}: {text}");
        }
        if command[0] == "lb" {
            assert!(text.contains("fd99::13"), "xlb lb list: {text}");
        }
    }

    // Health checks over IPv6: be3 stops serving, its probes fail, it leaves the table.
    lab.stop_server("be3");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, view) = client::call(&lab.api_socket(), "GET", "/v1/vips/web", None)
            .unwrap_or_else(|e| panic!("GET /v1/vips/web: {e}"));
        assert_eq!(code, 200, "{view}");
        let be3 = view["backends"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["name"] == "be3"))
            .cloned()
            .unwrap_or_else(|| panic!("no be3 in {view}"));
        if be3["health"]["health"] == "down" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "be3 not down in 30 s: {be3}\n{}",
            lab.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = per_backend(&lab.curl(url, 30));
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        ["be1", "be2"],
        "{after:?}"
    );

    let stats = lab.stop_xlbd();
    let web = stats["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web")
        .expect("the VIP's counters")
        .clone();
    let forwarded = web["counter"]["packets"].as_u64().unwrap();
    // Each exchange sends at least SYN, ACK, request and FIN/ACK through the balancer.
    assert!(
        forwarded >= (REQUESTS * 4) as u64,
        "VIP forwarded {forwarded}"
    );
    for reason in stats["drops"].as_array().unwrap() {
        assert_eq!(reason[1], 0, "no drops in a clean run: {reason}");
    }
}

#[test]
fn ipv6_vip_in_l2_mode_answers_curl_over_ipv6_from_every_backend() {
    if have_root() {
        balance(
            "x6a",
            "l2",
            VIP6,
            "l2",
            "http",
            &format!("http://[{VIP6}]/"),
        );
    }
}

#[test]
fn ipv6_vip_in_ipip_mode_answers_curl_over_ipv6_in_ipv6() {
    if have_root() {
        balance(
            "x6b",
            "ipip",
            VIP6,
            "ipip",
            "tcp",
            &format!("http://[{VIP6}]/"),
        );
    }
}

#[test]
fn ipv4_vip_with_ipv6_backends_answers_curl_over_ipv4_in_ipv6() {
    if have_root() {
        balance(
            "x6c",
            "ipip",
            VIP,
            "ipip",
            "http",
            &format!("http://{VIP}/"),
        );
    }
}
