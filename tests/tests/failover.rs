//! Health checks end to end, in the namespace lab with three real HTTP backends: a backend
//! whose server stops leaves the table within `interval x fall` (+ one interval) while
//! connections open to the other two go on untouched, and comes back after `rise` successes;
//! a drained backend finishes its open connections and gets no new one; in IPIP mode a
//! backend that answers on its own address but does not serve the VIP is caught; with every
//! backend down a VIP drops new flows or keeps its last set, as configured.
//! Namespaces are prefixed `xhc`; the lab removes everything on drop, also on failure.

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use xlb::api::client;
use xlb_tests::{
    have_root,
    lab::{Lab, VIP, per_backend, repo_root},
};

/// Probe timing of the tests: fast, so detection is quick, with a timeout well inside it.
const INTERVAL_MS: u64 = 500;
const FALL: u64 = 2;
const RISE: u64 = 2;
/// Lines each long-lived connection streams, one every 100 ms (`/slow/N`).
const SLOW_LINES: usize = 100;
/// Long-lived connections opened before each event: enough that every backend gets some
/// (Maglev spreads them; three backends miss one with probability 3 x (2/3)^24 < 2e-4).
const LONG_CONNECTIONS: usize = 24;

const INTERFACE: &str = "[interface]\nname = \"xlbdemo-lb\"\nattach_mode = \"native\"\n";

/// A VIP over the lab's three backends, checked with HTTP GETs at the test's timing, with
/// `extra` lines in its `[vip.health]`.
fn vip_text(name: &str, port: u16, mode: &str, table_size: u32, extra: &str) -> String {
    let backends: String = (1..=3)
        .map(|i| {
            format!(
                "[[vip.backend]]\nname = \"be{i}\"\naddress = \"10.99.0.1{i}\"\n\
                 mac = \"02:99:00:00:00:1{i}\"\n"
            )
        })
        .collect();
    format!(
        "\n[[vip]]\nname = \"{name}\"\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"tcp\"\n\
         mode = \"{mode}\"\ntable_size = {table_size}\n\
         [vip.health]\ncheck = \"http\"\npath = \"/\"\ninterval_ms = {INTERVAL_MS}\n\
         timeout_ms = 300\nrise = {RISE}\nfall = {FALL}\n{extra}{backends}"
    )
}

/// The lab's web VIP (port 80) and, in IPIP mode, a second VIP on port 8080 over the same
/// backends that probes them on their own address (`via = "direct"`).
fn config(mode: &str) -> String {
    let mut text = format!("{INTERFACE}{}", vip_text("web", 80, mode, 65537, ""));
    if mode == "ipip" {
        text.push_str(&vip_text(
            "web-direct",
            8080,
            "ipip",
            251,
            "via = \"direct\"\n",
        ));
    }
    text
}

fn start(prefix: &str, mode: &str) -> Lab {
    start_with(prefix, mode, &config(mode))
}

fn start_with(prefix: &str, mode: &str, config: &str) -> Lab {
    let mut lab = Lab::up(prefix, mode);
    let path = lab.workdir.join("xlb.toml");
    std::fs::write(&path, config).unwrap();
    lab.start_xlbd(&path);
    lab
}

fn api(lab: &Lab, method: &str, path: &str) -> Value {
    let (code, body) = client::call(&lab.api_socket(), method, path, None)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", lab.log()));
    assert!(code < 300, "{method} {path}: {code} {body}\n{}", lab.log());
    body
}

/// A backend of a VIP as `GET /v1/vips/{vip}` shows it.
fn backend(lab: &Lab, vip: &str, name: &str) -> Value {
    let view = api(lab, "GET", &format!("/v1/vips/{vip}"));
    view["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name} in {view}"))
        .clone()
}

/// Polls (every 20 ms, `limit` at most) until `vip`'s backend `name` has `health`; returns
/// how long that took.
fn wait_health(lab: &Lab, vip: &str, name: &str, health: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let b = backend(lab, vip, name);
        if b["health"]["health"] == health {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{vip}/{name} not {health} in {limit:?}: {b}\n{}",
            lab.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A lab HTTP server this test started; stopped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `host`'s HTTP server again.
fn start_server(lab: &Lab, host: &str) -> Server {
    Server(
        lab.command(host, "python3")
            .arg(repo_root().join("scripts/lab-backend.py"))
            .args(["--name", host])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the lab backend"),
    )
}

/// Long-lived connections to the VIP, each streaming [`SLOW_LINES`] lines.
fn open_long(lab: &Lab) -> Vec<Child> {
    let children = (0..LONG_CONNECTIONS)
        .map(|_| {
            lab.command("client", "curl")
                .args([
                    "-s",
                    "--max-time",
                    "40",
                    &format!("http://{VIP}/slow/{SLOW_LINES}"),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Until each has had its first line: the backend chose, the flow is in the table.
    std::thread::sleep(Duration::from_millis(600));
    children
}

/// How each long-lived connection ended: (backend, complete), the backend named by its first
/// line ("" if none came), complete when curl succeeded with every line from that backend.
fn finish_long(children: Vec<Child>) -> Vec<(String, bool)> {
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            let backend = lines.first().copied().unwrap_or("").to_owned();
            let complete = out.status.success()
                && lines.len() == SLOW_LINES
                && lines.iter().all(|l| *l == backend);
            (backend, complete)
        })
        .collect()
}

/// Asserts every connection to one of `healthy` completed, and each of them had one.
fn assert_untouched(ends: &[(String, bool)], healthy: &[&str]) {
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for (backend, complete) in ends {
        if healthy.contains(&backend.as_str()) {
            assert!(complete, "a connection to {backend} broke: {ends:?}");
            *per.entry(backend.as_str()).or_default() += 1;
        }
    }
    for name in healthy {
        assert!(
            per.contains_key(name),
            "no long-lived connection went to {name}: {ends:?}"
        );
    }
}

/// One batch of new connections sent while a backend fails and comes back.
struct Batch {
    started: Instant,
    /// The backends that answered, one per request that succeeded.
    answers: Vec<String>,
    /// curl's errors.
    errors: String,
}

/// Requests per batch of [`new_traffic`].
const BATCH: usize = 5;

/// New connections all along: a batch of [`BATCH`] requests every 100 ms until `stop` (at most
/// 600 batches), each on a new connection.
fn new_traffic(
    lab: &Lab,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Batch>> {
    let client = lab.ns("client");
    std::thread::spawn(move || {
        let mut batches = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && batches.len() < 600 {
            let started = Instant::now();
            let mut curl = Command::new("ip");
            curl.args(["netns", "exec", &client, "curl", "-sS", "--max-time", "3"]);
            curl.args(["-H", "Connection: close"]);
            for _ in 0..BATCH {
                curl.arg(format!("http://{VIP}/"));
            }
            let out = curl.output().unwrap();
            let answers = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
                .collect();
            let errors = String::from_utf8_lossy(&out.stderr).into_owned();
            batches.push(Batch {
                started,
                answers,
                errors,
            });
            std::thread::sleep(Duration::from_millis(100));
        }
        batches
    })
}

fn failover(prefix: &str, mode: &str) {
    let lab = start(prefix, mode);
    assert_eq!(
        per_backend(&lab.curl_vip(60)).len(),
        3,
        "all three serve at start"
    );
    let long = open_long(&lab);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = new_traffic(&lab, stop.clone());

    lab.stop_server("be2");
    // Down within interval x fall, plus one interval for where in its interval the first
    // failing probe fell; a second more for a loaded machine and the polling.
    let bound = Duration::from_millis(INTERVAL_MS * (FALL + 1) + 1000);
    let took = wait_health(&lab, "web", "be2", "down", Duration::from_secs(20));
    let down_seen = Instant::now();
    eprintln!("{mode}: be2 marked down {took:?} after its server stopped (bound {bound:?})");
    assert!(took <= bound, "down after {took:?}, above {bound:?}");
    let be2 = backend(&lab, "web", "be2");
    assert_eq!(be2["slots"], 0, "{be2}");
    assert_eq!(be2["health"]["went_down"], 1, "{be2}");
    let vip = api(&lab, "GET", "/v1/vips/web");
    assert_eq!(vip["health"], "degraded", "{vip}");

    // New connections: all answered, none by be2.
    let answers = per_backend(&lab.curl_vip(90));
    assert_eq!(answers.values().sum::<usize>(), 90, "{answers:?}");
    assert!(!answers.contains_key("be2"), "{answers:?}");
    assert_untouched(&finish_long(long), &["be1", "be3"]);

    // Back: up after `rise` successes, and new flows reach it again.
    let restarted = Instant::now();
    let _server = start_server(&lab, "be2");
    wait_health(&lab, "web", "be2", "up", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let batches = traffic.join().unwrap();
    // Between the failure seen and the restart: every new connection answered, none by be2.
    let between: Vec<&Batch> = batches
        .iter()
        .filter(|b| b.started > down_seen && b.started < restarted)
        .collect();
    assert!(between.len() >= 3, "too few batches while be2 was down");
    for batch in &between {
        assert_eq!(
            batch.answers.len(),
            BATCH,
            "a new connection failed {:?} after be2 was seen down: {:?} {}\n{}",
            batch.started - down_seen,
            batch.answers,
            batch.errors,
            lab.log()
        );
        assert!(
            !batch.answers.iter().any(|a| a == "be2"),
            "{:?}",
            batch.answers
        );
    }
    let lost_before: usize = batches
        .iter()
        .filter(|b| b.started <= down_seen)
        .map(|b| BATCH - b.answers.len())
        .sum();
    eprintln!(
        "{mode}: {} batches of {BATCH} new connections; {lost_before} failed before be2 was \
         marked down (sent to the dead backend), none after",
        batches.len()
    );
    let be2 = backend(&lab, "web", "be2");
    assert_eq!(be2["health"]["came_up"], 1, "{be2}");
    assert!(
        be2["health"]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("{RISE} successes in a row")),
        "{be2}"
    );
    assert!(be2["slots"].as_u64().unwrap() > 0, "{be2}");
    let answers = per_backend(&lab.curl_vip(90));
    assert!(answers.get("be2").is_some_and(|&n| n > 0), "{answers:?}");

    let status = api(&lab, "GET", "/v1/status");
    assert!(
        status["health"]["went_down"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(
        status["health"]["came_up"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(lab.log().contains("backend down"), "{}", lab.log());
}

#[test]
fn a_stopped_backend_leaves_and_comes_back_l2() {
    if !have_root() {
        return;
    }
    failover("xhcfl-", "l2");
}

#[test]
fn a_stopped_backend_leaves_and_comes_back_ipip() {
    if !have_root() {
        return;
    }
    failover("xhcfi-", "ipip");
}

#[test]
fn drained_backends_finish_their_connections_and_get_no_new_one() {
    if !have_root() {
        return;
    }
    let lab = start("xhcdr-", "ipip");
    let long = open_long(&lab);
    // be1 drained through the API, be2 through the file (weight 0).
    api(&lab, "POST", "/v1/vips/web/backends/be1/drain");
    let be1 = backend(&lab, "web", "be1");
    assert_eq!(
        (be1["state"].as_str(), be1["slots"].as_u64()),
        (Some("drained"), Some(0))
    );
    assert_eq!(be1["health"]["health"], "up", "drained is not down: {be1}");
    let path = lab.workdir.join("xlb.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let be2 = "name = \"be2\"\n";
    assert!(text.contains(be2));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text.replacen(be2, &format!("{be2}weight = 0\n"), 1)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend(&lab, "web", "be2")["slots"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the file's drain was not applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let answers = per_backend(&lab.curl_vip(60));
    assert_eq!(answers.get("be3"), Some(&60), "{answers:?}");
    // Every connection, the drained backends' included, runs to its end.
    assert_untouched(&finish_long(long), &["be1", "be2", "be3"]);
}

#[test]
fn a_backend_not_serving_the_vip_is_caught_through_the_encapsulation() {
    if !have_root() {
        return;
    }
    let lab = start("xhcvn-", "ipip");
    wait_health(&lab, "web", "be3", "up", Duration::from_secs(10));
    // be3 forgets the VIP: its server still answers on 10.99.0.13, and its decapsulator still
    // runs, but packets to the VIP are no longer its own.
    let out = lab
        .command("be3", "ip")
        .args(["addr", "del", &format!("{VIP}/32"), "dev", "lo"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    wait_health(&lab, "web", "be3", "down", Duration::from_secs(20));
    let be3 = backend(&lab, "web", "be3");
    assert_eq!(be3["slots"], 0, "{be3}");
    // Its own address still answers: a probe there would have passed, as the `via =
    // "direct"` VIP over the same backends shows.
    let direct = lab
        .command("client", "curl")
        .args(["-s", "--max-time", "5", "http://10.99.0.13/"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&direct.stdout).starts_with("be3 "),
        "{direct:?}"
    );
    // Several probe intervals after the encapsulated probe failed, the direct one still passes.
    std::thread::sleep(Duration::from_millis(INTERVAL_MS * (FALL + 2)));
    let be3_direct = backend(&lab, "web-direct", "be3");
    assert_eq!(be3_direct["health"]["health"], "up", "{be3_direct}");
    assert_eq!(be3_direct["health"]["went_down"], 0, "{be3_direct}");

    let answers = per_backend(&lab.curl_vip(60));
    assert_eq!(answers.values().sum::<usize>(), 60, "{answers:?}");
    assert!(!answers.contains_key("be3"), "{answers:?}");
    let status = api(&lab, "GET", "/v1/status");
    let encapsulated = status["health"]["encap_packets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == "encapsulated")
        .map_or(0, |c| c[1].as_u64().unwrap());
    assert!(encapsulated > 0, "{status}");

    // The neighbour entry xlbd added for the probes goes away when it stops. (The tc program
    // is a tcx link on this kernel, which the kernel drops with the process; bpftool cannot
    // show tcx links per device here, and program names are global, shared with tests that
    // run beside this one.)
    let neighbour = |lab: &Lab| {
        let out = lab
            .command("lb", "ip")
            .args(["neigh", "show", VIP, "dev", "xlbdemo-lb"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = neighbour(&lab);
    assert!(
        before.contains("02:78:6c:62:00:00") && before.contains("PERMANENT"),
        "{before}"
    );
    let mut lab = lab;
    lab.stop_xlbd();
    assert_eq!(neighbour(&lab).trim(), "", "neighbour entry left behind");
}

#[test]
fn every_backend_down_drops_or_keeps_as_configured() {
    if !have_root() {
        return;
    }
    let config = format!(
        "{INTERFACE}{}{}",
        vip_text("web", 80, "l2", 65537, "on_all_down = \"drop\"\n"),
        vip_text("web-keep", 8080, "l2", 251, "on_all_down = \"keep\"\n")
    );
    let lab = start_with("xhcad-", "l2", &config);
    for host in ["be1", "be2", "be3"] {
        lab.stop_server(host);
    }
    for vip in ["web", "web-keep"] {
        for host in ["be1", "be2", "be3"] {
            wait_health(&lab, vip, host, "down", Duration::from_secs(20));
        }
    }
    let slots = |view: &Value| -> Vec<u64> {
        view["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["slots"].as_u64().unwrap())
            .collect()
    };
    let web = api(&lab, "GET", "/v1/vips/web");
    assert_eq!(web["health"], "all down (drop)", "{web}");
    assert_eq!(slots(&web), [0, 0, 0], "{web}");
    let keep = api(&lab, "GET", "/v1/vips/web-keep");
    assert_eq!(keep["health"], "all down (keep)", "{keep}");
    assert_eq!(
        slots(&keep).iter().sum::<u64>(),
        251,
        "the table stays full: {keep}"
    );

    // `drop`: a new connection to the VIP is dropped by the balancer, and counted.
    let no_backend = |lab: &Lab| {
        let status = api(lab, "GET", "/v1/status");
        status["drops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d[0] == "no_backend")
            .map_or(0, |d| d[1].as_u64().unwrap())
    };
    let before = no_backend(&lab);
    let out = lab
        .command("client", "curl")
        .args(["-s", "--max-time", "2", &format!("http://{VIP}/")])
        .output()
        .unwrap();
    assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while no_backend(&lab) == before {
        assert!(Instant::now() < deadline, "no no_backend drop counted");
        std::thread::sleep(Duration::from_millis(50));
    }

    // One backend back: both VIPs serve with it alone.
    let _server = start_server(&lab, "be1");
    wait_health(&lab, "web", "be1", "up", Duration::from_secs(20));
    wait_health(&lab, "web-keep", "be1", "up", Duration::from_secs(20));
    let web = api(&lab, "GET", "/v1/vips/web");
    assert_eq!(web["health"], "degraded", "{web}");
    assert_eq!(slots(&web), [65537, 0, 0], "{web}");
    let answers = per_backend(&lab.curl_vip(10));
    assert_eq!(answers.get("be1"), Some(&10), "{answers:?}");
}
