//! End-to-end: real kernels in network namespaces, real HTTP servers on three backends, curl as
//! the client, xlbd attached in native mode on the balancer's veth. Each test has its own
//! namespace prefix, so they run side by side.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use xlb_tests::{
    have_root,
    lab::{LB_MAC, Lab, VIP, per_backend, repo_root, xlbd_path},
    netns::NetNs,
};

const REQUESTS: usize = 300;

/// A packet capture in the client's namespace of everything sent from the VIP, with link-level
/// headers, so the source MAC of every reply is known. Written to a pcap file (printing live
/// cannot keep up with a burst), read back when finished.
struct ReplyCapture<'a> {
    lab: &'a Lab,
    child: Child,
    pcap: PathBuf,
    stderr_path: PathBuf,
}

impl<'a> ReplyCapture<'a> {
    fn start(lab: &'a Lab) -> ReplyCapture<'a> {
        let stderr_path = lab.workdir.join("tcpdump.err");
        let pcap = lab.workdir.join("replies.pcap");
        let child = lab
            .command("client", "tcpdump")
            .args([
                "-i",
                "eth0",
                "-n",
                "-c",
                "20000",
                "-w",
                pcap.to_str().unwrap(),
            ])
            .args(["src", "host", VIP])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("tcpdump (installed by scripts/setup.sh)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&stderr_path)
            .unwrap_or_default()
            .contains("listening on")
        {
            assert!(Instant::now() < deadline, "tcpdump did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        ReplyCapture {
            lab,
            child,
            pcap,
            stderr_path,
        }
    }

    /// Stops the capture; returns the source MAC of every captured reply.
    fn finish(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_secs(1));
        // SAFETY: kill(2) on our own, unreaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let summary = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        assert!(
            summary
                .lines()
                .any(|line| line.trim() == "0 packets dropped by kernel"),
            "capture lost packets: {summary}"
        );
        let out = self
            .lab
            .command("client", "tcpdump")
            .args(["-r", self.pcap.to_str().unwrap(), "-e", "-n"])
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1).map(str::to_owned))
            .collect()
    }
}

fn udp_names(lab: &Lab, count: usize) -> Vec<String> {
    let script = format!(
        "import socket\n\
         for _ in range({count}):\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n\
         \x20   s.sendto(b'ping', ('{VIP}', 53))\n\
         \x20   print(s.recvfrom(256)[0].split()[0].decode()); s.close()\n"
    );
    let out = lab
        .command("client", "python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "UDP client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn counter(stats: &serde_json::Value, section: &str, name: &str) -> u64 {
    stats[section]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry[0] == name)
        .map(|entry| entry[1]["packets"].as_u64().or(entry[1].as_u64()).unwrap())
        .unwrap_or_else(|| panic!("no {section}/{name} in stats"))
}

fn balance_http_and_udp(prefix: &str, mode: &str) {
    let mut lab = Lab::up(prefix, mode);
    let config = repo_root().join(format!("config/demo-{mode}.toml"));
    lab.start_xlbd(&config);
    assert!(lab.lb_has_xdp());

    let capture = ReplyCapture::start(&lab);
    let bodies = lab.curl_vip(REQUESTS);
    let reply_macs = capture.finish();

    // Every request answered, by a real backend, each with a fair share.
    assert_eq!(bodies.len(), REQUESTS, "every request must be answered");
    let shares = per_backend(&bodies);
    assert_eq!(
        shares.keys().collect::<Vec<_>>(),
        ["be1", "be2", "be3"],
        "{shares:?}"
    );
    for (backend, n) in &shares {
        // Expected 100 each; 60..140 is five standard deviations of a fair split.
        assert!(
            (60..=140).contains(n),
            "{backend} served {n} of {REQUESTS}: {shares:?}"
        );
    }

    // Direct server return: every reply reached the client straight from a backend's MAC.
    assert!(
        reply_macs.len() >= REQUESTS * 3,
        "captured only {} replies",
        reply_macs.len()
    );
    let from_lb = reply_macs.iter().filter(|mac| *mac == LB_MAC).count();
    assert_eq!(from_lb, 0, "replies must bypass the balancer");
    assert!(
        reply_macs
            .iter()
            .all(|mac| mac.starts_with("02:99:00:00:00:1")),
        "{reply_macs:?}"
    );

    // UDP to the same VIP address, port 53.
    let names = udp_names(&lab, 60);
    assert_eq!(names.len(), 60);
    assert!(
        per_backend(&names).len() >= 2,
        "UDP flows spread: {names:?}"
    );

    let stats = lab.stop_xlbd();
    assert!(!lab.lb_has_xdp(), "SIGTERM detaches the program");
    let tx = counter(&stats, "actions", "tx");
    let web = &stats["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web")
        .unwrap();
    let web_packets = web["counter"]["packets"].as_u64().unwrap();
    let backend_sum: u64 = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["counter"]["packets"].as_u64().unwrap())
        .sum();
    // Each HTTP exchange sends at least SYN, ACK, request and FIN/ACK through the balancer.
    assert!(
        web_packets >= (REQUESTS * 4) as u64,
        "web VIP forwarded {web_packets}"
    );
    assert_eq!(
        backend_sum, web_packets,
        "per-backend counters add up to the VIP's"
    );
    assert!(tx >= web_packets + 60, "tx {tx} covers HTTP and UDP");
    for reason in stats["drops"].as_array().unwrap() {
        assert_eq!(reason[1], 0, "no drops in a clean run: {reason}");
    }
    assert_eq!(counter(&stats, "actions", "aborted"), 0);
    // The balancer never saw the replies: what it passed to its stack is only ARP and the like.
    let passed = counter(&stats, "actions", "pass");
    assert!(
        passed < 50,
        "{passed} packets passed to the balancer's stack"
    );
}

#[test]
fn l2_dsr_balances_real_http_and_udp() {
    if have_root() {
        balance_http_and_udp("xlbt-l2-", "l2");
    }
}

#[test]
fn ipip_dsr_balances_real_http_and_udp() {
    if have_root() {
        balance_http_and_udp("xlbt-ip-", "ipip");
    }
}

#[test]
fn invalid_config_exits_with_every_error_and_attaches_nothing() {
    if !have_root() {
        return;
    }
    let ns = NetNs::new("xlbt-bad-lb");
    ns.veth_pair("xlbdemo-lb", "xlbdemo-pe");
    let dir = std::env::temp_dir().join(format!("xlbt-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let demo = std::fs::read_to_string(repo_root().join("config/demo-l2.toml")).unwrap();
    let broken = demo
        .replacen("mac = \"02:99:00:00:00:12\"", "mac = \"02:99:00:00:00\"", 1)
        .replacen("port = 80", "port = 80\ntable_size = 65536", 1);
    let path = dir.join("broken.toml");
    std::fs::write(&path, &broken).unwrap();

    let run_xlbd = || {
        let out = ns
            .command(xlbd_path().to_str().unwrap())
            .args(["--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        stderr
    };
    let stderr = run_xlbd();
    let file = path.to_str().unwrap();
    assert!(
        stderr.contains(&format!("{file}:")),
        "errors name the file: {stderr}"
    );
    assert!(
        stderr.contains("table_size") && stderr.contains("prime"),
        "{stderr}"
    );
    assert!(stderr.contains("backend[1].mac"), "{stderr}");
    let link = ns.exec(&["ip", "-d", "link", "show", "xlbdemo-lb"]);
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "nothing attached"
    );

    // A valid config for an interface that does not exist: a clear error, nothing attached.
    let missing = demo.replacen("name = \"xlbdemo-lb\"", "name = \"xlbdemo-none\"", 1);
    std::fs::write(&path, missing).unwrap();
    let stderr = run_xlbd();
    assert!(stderr.contains("xlbdemo-none"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
