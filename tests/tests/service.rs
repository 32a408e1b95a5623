//! Running as a service: with the datapath pinned, `kill -9` of xlbd, a restart and an upgrade
//! to a build whose XDP program differs all happen under bounded traffic that must lose no
//! packet and break no connection; the restarted daemon adopts the pinned state (counters
//! continue); `xlbd detach` leaves nothing attached or pinned. Prefix `xsv`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use xlb_tests::{
    have_root,
    lab::{Lab, VIP, repo_root, xlbd_path},
};

/// Interface of the balancer in the lab.
const LB_IF: &str = "xlbdemo-lb";

/// Bounded traffic from the client while xlbd goes away and comes back: one long TCP
/// download (60 lines, one every 100 ms) and one UDP flow of paced pings, each answered.
struct Traffic {
    download: Child,
    pings: Child,
}

/// Pings sent by [`Traffic`], 25 ms apart (about 7.5 s).
const PINGS: usize = 300;

impl Traffic {
    fn start(lab: &Lab) -> Traffic {
        let download = lab
            .command("client", "curl")
            .args(["-sS", "--max-time", "30", &format!("http://{VIP}/slow/60")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("curl");
        // One socket, so one flow: every reply must come from the same backend, and a ping
        // without an answer within 1 s counts as lost. Not connected: with direct server
        // return the backend answers from its own address, not the VIP's.
        let script = format!(
            "import socket, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)\n\
             lost = []; names = set(); end = time.time() + 30\n\
             for i in range({PINGS}):\n\
             \x20   if time.time() > end: lost.append('deadline'); break\n\
             \x20   s.sendto(b'ping %d' % i, ('{VIP}', 53))\n\
             \x20   try:\n\
             \x20       while True:\n\
             \x20           reply = s.recv(256).split()\n\
             \x20           if reply[-1] == str(i).encode(): break\n\
             \x20       names.add(reply[0].decode())\n\
             \x20   except socket.timeout:\n\
             \x20       lost.append(str(i))\n\
             \x20   time.sleep(0.025)\n\
             print(len(lost), ','.join(sorted(names)), ' '.join(lost[:20]))\n"
        );
        let pings = lab
            .command("client", "python3")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        Traffic { download, pings }
    }

    /// Waits for both; panics unless the download completed whole from one backend and every
    /// ping was answered by one backend.
    fn finish(self, what: &str) {
        let out = self.download.wait_with_output().unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{what}: the TCP download broke: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 60, "{what}: download incomplete: {body}");
        assert!(
            lines.iter().all(|l| *l == lines[0]),
            "{what}: the download switched backends: {body}"
        );
        let out = self.pings.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{what}: UDP client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut fields = text.split_whitespace();
        let lost = fields.next().unwrap_or_default();
        let names = fields.next().unwrap_or_default();
        assert_eq!(lost, "0", "{what}: UDP pings lost ({text})");
        assert!(
            !names.is_empty() && !names.contains(','),
            "{what}: the UDP flow was answered by {names:?}, not one backend"
        );
    }
}

/// Waits until the traffic has been flowing for a while (both clients still running).
fn let_traffic_flow(seconds: u64) {
    std::thread::sleep(Duration::from_secs(seconds));
}

/// One sample of xlbd's metrics; waits (20 s at most) while the series is missing.
fn metric(lab: &Lab, series: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = lab.metric(series) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "no {series} in the metrics:\n{}",
            lab.metrics_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The id of the program the pinned link runs, from bpftool.
fn linked_program(pin: &Path) -> u64 {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(pin)
        .output()
        .expect("bpftool (installed by scripts/setup.sh)");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool link show: {e}: {out:?}"));
    info["prog_id"].as_u64().expect("prog_id")
}

/// A second xlbd whose load balancer program differs by one constant (`XLB_EBPF_VARIANT=1`),
/// built once into its own target directory (kept between runs, so later runs are quick).
fn variant_xlbd() -> PathBuf {
    let target = repo_root().join("target/xsv-upgrade");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "xlb-daemon", "--bin", "xlbd"])
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", &target)
        .env("XLB_EBPF_VARIANT", "1")
        .status()
        .expect("cargo build of the variant");
    assert!(status.success(), "building the variant xlbd failed");
    target.join("debug/xlbd")
}

#[test]
fn restarts_and_upgrades_under_traffic_lose_nothing_and_detach_removes_everything() {
    if !have_root() {
        return;
    }
    let variant = variant_xlbd();
    let mut lab = Lab::up("xsv-", "l2");
    let pins = lab.pin("svc").root().to_owned();
    let dir = pins.join(LB_IF);
    let config = repo_root().join("config/demo-l2.toml");
    lab.start_xlbd(&config);
    let link = dir.join("link-native");
    assert!(link.exists(), "link not pinned:\n{}", lab.log());
    let first_program = linked_program(&link);
    let warmup = lab.curl_vip(20);
    assert_eq!(warmup.len(), 20);
    let vip_series = "xlb_vip_packets_total{vip=\"web\"}";
    let before_kill = metric(&lab, vip_series);
    assert!(before_kill > 0.0, "no packets counted");
    // Every series exists from the start, at zero where nothing happened.
    assert_eq!(metric(&lab, "xlb_drops_total{reason=\"fragment\"}"), 0.0);
    // Loopback only by default: the balancer's own address does not answer.
    let outside = lab
        .command("client", "curl")
        .args(["-sS", "--max-time", "3", "http://10.99.0.2:9642/metrics"])
        .output()
        .unwrap();
    assert!(
        !outside.status.success(),
        "metrics reachable from outside the balancer"
    );

    // kill -9: nothing is cleaned up, the datapath keeps forwarding on its own, and the next
    // xlbd adopts it (same build: the program is kept, not replaced).
    let traffic = Traffic::start(&lab);
    let_traffic_flow(1);
    lab.kill_xlbd();
    assert!(lab.lb_has_xdp(), "the program went away with xlbd");
    let_traffic_flow(2);
    lab.start_xlbd(&config);
    assert!(
        lab.log().contains("adopting pinned maps"),
        "not adopted:\n{}",
        lab.log()
    );
    traffic.finish("kill -9 and restart");
    assert_eq!(
        linked_program(&link),
        first_program,
        "the same build must keep the attached program"
    );
    let after_restart = metric(&lab, vip_series);
    assert!(
        after_restart > before_kill,
        "counters did not continue: {before_kill} then {after_restart}"
    );
    assert_eq!(metric(&lab, "xlb_datapath_up"), 1.0);

    // Upgrade: a graceful stop leaves the datapath running, a build with another program
    // replaces it atomically.
    let traffic = Traffic::start(&lab);
    let_traffic_flow(1);
    lab.stop_xlbd();
    assert!(
        lab.lb_has_xdp(),
        "a stop for an upgrade must leave the datapath"
    );
    lab.start_xlbd_binary(&variant, &config, &[]);
    assert!(
        lab.log().contains("replaced its program atomically"),
        "program not replaced:\n{}",
        lab.log()
    );
    traffic.finish("upgrade");
    assert_ne!(
        linked_program(&link),
        first_program,
        "the upgrade did not change the program"
    );
    assert!(metric(&lab, vip_series) > after_restart);

    // Removal: refused while xlbd runs, then everything goes.
    let api = lab.api_socket();
    let detach = |lab: &Lab| {
        lab.command("lb", xlbd_path().to_str().unwrap())
            .args(["detach", "--interface", LB_IF])
            .arg("--pin-root")
            .arg(&pins)
            .arg("--api-socket")
            .arg(&api)
            .output()
            .expect("xlbd detach")
    };
    let refused = detach(&lab);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("stop it"),
        "detach under a running xlbd: {refused:?}"
    );
    lab.stop_xlbd();
    let out = detach(&lab);
    assert!(out.status.success(), "xlbd detach: {out:?}");
    assert!(!lab.lb_has_xdp(), "still attached after xlbd detach");
    assert!(
        !dir.exists(),
        "pins left: {:?}",
        std::fs::read_dir(&dir).map(|d| d.count())
    );
}
