//! Metrics of a live xlbd in the namespace lab: after traffic, the flow table holds exactly
//! the flows sent (`xlb_flow_table_entries`) and nothing was evicted; health-checked backends
//! are up (`xlb_backend_up` 1, `xlb_backend_checked` 1), and a backend whose server stops
//! reads 0 within the health bound, with one transition to down counted. Namespaces are
//! prefixed `xmt` (`xmx` for the expiry test); the lab removes everything on drop, also on
//! failure. Idle flows expire on a live xlbd.

use std::time::{Duration, Instant};

use xlb_tests::{
    have_root,
    lab::{Lab, per_backend, repo_root, xlbd_path},
};

/// Probe timing: fast, so the test is quick, with a timeout well inside it.
const INTERVAL_MS: u64 = 500;
const FALL: u64 = 2;

/// The demo L2 config with HTTP health checks on the web VIP.
fn config() -> String {
    let demo = std::fs::read_to_string(repo_root().join("config/demo-l2.toml")).unwrap();
    let health = format!(
        "mode = \"l2\"\n\n  [vip.health]\n  check = \"http\"\n  path = \"/\"\n  \
         interval_ms = {INTERVAL_MS}\n  timeout_ms = 300\n  rise = 2\n  fall = {FALL}\n"
    );
    // The web VIP is the first one.
    demo.replacen("mode = \"l2\"\n", &health, 1)
}

fn backend_series(name: &str, address: &str) -> String {
    format!("{name}{{vip=\"web\",backend=\"{address}\"}}")
}

/// Polls the metrics (20 s at most) until `series` reads `value`; returns how long it took.
fn wait_metric(lab: &Lab, series: &str, value: f64) -> Duration {
    let started = Instant::now();
    loop {
        let seen = lab.metric(series);
        if seen == Some(value) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{series} is {seen:?}, not {value}, after 20 s:\n{}",
            lab.metrics_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn flow_table_entries_and_backend_health_are_exported() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::up("xmt-", "l2");
    let path = lab.workdir.join("xlb.toml");
    std::fs::write(&path, config()).unwrap();
    lab.start_xlbd(&path);

    // Every series exists from the start.
    assert_eq!(lab.metric("xlb_flow_table_entries"), Some(0.0));
    assert_eq!(lab.metric("xlb_flow_table_capacity"), Some(262_144.0));
    assert_eq!(lab.metric("xlb_flow_table_evictions_total"), Some(0.0));
    assert_eq!(lab.metric("xlb_flows_replaced_total"), Some(0.0));
    let backends = [
        ("be1", "10.99.0.11"),
        ("be2", "10.99.0.12"),
        ("be3", "10.99.0.13"),
    ];
    for (_, address) in backends {
        assert_eq!(
            lab.metric(&backend_series("xlb_backend_checked", address)),
            Some(1.0)
        );
        wait_metric(&lab, &backend_series("xlb_backend_up", address), 1.0);
    }
    // The DNS VIP is not checked: it reads up, and unchecked.
    let dns = "{vip=\"dns\",backend=\"10.99.0.11\"}";
    assert_eq!(lab.metric(&format!("xlb_backend_up{dns}")), Some(1.0));
    assert_eq!(lab.metric(&format!("xlb_backend_checked{dns}")), Some(0.0));

    // Each GET is one new connection from its own source port: one flow each. The count is
    // at most 5 s old, so it is polled until a walk after the traffic.
    const FLOWS: usize = 40;
    let answers = lab.curl_vip(FLOWS);
    assert_eq!(answers.len(), FLOWS, "{:?}", per_backend(&answers));
    wait_metric(&lab, "xlb_flow_table_entries", FLOWS as f64);
    // A SYN the client retransmitted is a new flow that replaced its own entry.
    let new = lab.metric("xlb_flows_new_total").unwrap();
    let replaced = lab.metric("xlb_flows_replaced_total").unwrap();
    assert_eq!(
        new - replaced,
        FLOWS as f64,
        "new {new}, replaced {replaced}"
    );
    assert_eq!(lab.metric("xlb_flow_table_evictions_total"), Some(0.0));

    // A stopped server: its gauge reads 0 within interval x fall, plus one interval for where
    // the first failing probe fell, plus two seconds for a loaded machine and the scrapes.
    lab.stop_server("be2");
    let be2 = |name: &str| backend_series(name, "10.99.0.12");
    let bound = Duration::from_millis(INTERVAL_MS * (FALL + 1) + 2000);
    let took = wait_metric(&lab, &be2("xlb_backend_up"), 0.0);
    eprintln!("be2 read down {took:?} after its server stopped (bound {bound:?})");
    assert!(took <= bound, "down after {took:?}, above {bound:?}");
    let went_down =
        "xlb_backend_health_transitions_total{vip=\"web\",backend=\"10.99.0.12\",to=\"down\"}";
    assert_eq!(lab.metric(went_down), Some(1.0));
    for address in ["10.99.0.11", "10.99.0.13"] {
        assert_eq!(
            lab.metric(&backend_series("xlb_backend_up", address)),
            Some(1.0)
        );
    }
}

/// `xlbd` keeps the flow table: with `limits.flow_idle_timeout` at its minimum (10 s), the
/// entries of finished connections are removed within the timeout plus a sweep and a metrics
/// walk, counted in `xlb_flow_table_expired_total`, and nothing is evicted.
#[test]
fn idle_flows_expire_on_a_live_xlbd() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::up("xmx-", "l2");
    let path = lab.workdir.join("xlb.toml");
    let demo = std::fs::read_to_string(repo_root().join("config/demo-l2.toml")).unwrap();
    std::fs::write(&path, format!("{demo}\n[limits]\nflow_idle_timeout = 10\n")).unwrap();
    lab.start_xlbd(&path);
    assert_eq!(lab.metric("xlb_flow_table_expired_total"), Some(0.0));

    const FLOWS: usize = 10;
    let sent = Instant::now();
    let answers = lab.curl_vip(FLOWS);
    assert_eq!(answers.len(), FLOWS, "{:?}", per_backend(&answers));
    wait_metric(&lab, "xlb_flow_table_entries", FLOWS as f64);
    assert_eq!(lab.metric("xlb_flow_table_expired_total"), Some(0.0));

    // Idle for more than 10 s, then found by a sweep (every 2 s) and a metrics walk (at most
    // 5 s old): 17 s, plus slack for a loaded machine.
    let bound = Duration::from_secs(30);
    loop {
        let (entries, expired) = (
            lab.metric("xlb_flow_table_entries"),
            lab.metric("xlb_flow_table_expired_total"),
        );
        if entries == Some(0.0) && expired == Some(FLOWS as f64) {
            break;
        }
        assert!(
            sent.elapsed() < bound,
            "entries {entries:?}, expired {expired:?} after {:?}:\n{}",
            sent.elapsed(),
            lab.metrics_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = sent.elapsed();
    eprintln!("{FLOWS} idle flows expired {took:?} after they were sent (timeout 10 s)");
    assert!(
        took >= Duration::from_secs(10),
        "expired before the timeout: {took:?}"
    );
    assert_eq!(lab.metric("xlb_flow_table_evictions_total"), Some(0.0));

    // `xlb status` says the same.
    let out = std::process::Command::new(xlbd_path().with_file_name("xlb"))
        .arg("--socket")
        .arg(lab.api_socket())
        .arg("status")
        .output()
        .expect("running xlb");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "xlb status: {text}");
    let value = format!(
        "IPv4 0 flows in 524288 slots, IPv6 0 of 262144; {FLOWS} expired (idle > 10 s), 0 evicted since \
         start"
    );
    assert!(
        text.lines()
            .any(|line| line.starts_with("flow table ") && line.ends_with(&value)),
        "xlb status:\n{text}"
    );
}
