//! Policy end to end in the namespace lab: a denied client cannot connect while an allowed one
//! can; the roles swap through the file and through the API without a restart; a bounded SYN
//! flood from many sources does not break established connections; `xlb observe` shows the
//! drops with their reason, and its JSON lines parse.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use xlb::api::client;
use xlb_tests::{
    have_root,
    lab::{Lab, VIP, repo_root, xlbd_path},
};

/// The lab client's own address, and a second one it gets for these tests.
const FIRST: &str = "10.99.0.1";
const SECOND: &str = "10.99.0.5";

fn api(lab: &Lab, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    client::call(&lab.api_socket(), method, path, body.as_ref())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", lab.log()))
}

fn generation(lab: &Lab) -> u64 {
    api(lab, "GET", "/v1/status", None).1["generation"]
        .as_u64()
        .unwrap()
}

/// Waits (10 s at most) until the generation passes `after`.
fn wait_generation(lab: &Lab, after: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while generation(lab) <= after {
        assert!(
            Instant::now() < deadline,
            "no change applied in 10 s:\n{}",
            lab.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP GET of the VIP from the client, from source `source`: the body, or None when no
/// answer came within 2 s.
fn get_from(lab: &Lab, source: &str) -> Option<String> {
    let out = lab
        .command("client", "curl")
        .args(["-s", "--max-time", "2", "--interface", source])
        .arg(format!("http://{VIP}/"))
        .stderr(Stdio::null())
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !body.is_empty()).then_some(body)
}

/// Asserts `allowed` gets answers and `denied` does not (3 tries each, on new connections).
fn assert_roles(lab: &Lab, allowed: &str, denied: &str, when: &str) {
    for _ in 0..3 {
        assert!(
            get_from(lab, allowed).is_some(),
            "{when}: {allowed} should connect\n{}",
            lab.log()
        );
        assert!(
            get_from(lab, denied).is_none(),
            "{when}: {denied} should not connect"
        );
    }
}

fn write_renamed(path: &Path, text: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn xlb_path() -> PathBuf {
    xlbd_path().with_file_name("xlb")
}

/// Runs `xlb observe` with `args` against the lab's daemon; its standard output.
fn observe(lab: &Lab, args: &[&str]) -> String {
    let out = std::process::Command::new(xlb_path())
        .arg("--socket")
        .arg(lab.api_socket())
        .arg("observe")
        .args(args)
        .output()
        .expect("running xlb observe");
    assert!(
        out.status.success(),
        "xlb observe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn lab_with_policy(prefix: &str, policy: &str) -> (Lab, PathBuf) {
    let mut lab = Lab::up(prefix, "l2");
    let out = lab
        .command("client", "ip")
        .args(["addr", "add", &format!("{SECOND}/24"), "dev", "eth0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "adding {SECOND} to the client");
    let config = lab.workdir.join("xlb.toml");
    let demo = std::fs::read_to_string(repo_root().join("config/demo-l2.toml")).unwrap();
    std::fs::write(&config, format!("{demo}\n{policy}")).unwrap();
    lab.start_xlbd(&config);
    (lab, config)
}

#[test]
fn denied_clients_are_dropped_and_roles_swap_through_file_and_api() {
    if !have_root() {
        return;
    }
    let (lab, config) =
        lab_with_policy("xpo-sw-", &format!("[policy]\ndeny = [\"{SECOND}/32\"]\n"));
    assert_roles(&lab, FIRST, SECOND, "file denies the second address");

    // xlb observe shows the drops, with their reason, in both formats.
    let lines = observe(
        &lab,
        &[
            "--type", "drop", "--reason", "denied", "--output", "json", "--last", "100",
        ],
    );
    let events: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!events.is_empty(), "no drop events:\n{}", lab.log());
    for event in &events {
        assert_eq!(event["verdict"], "drop");
        assert_eq!(event["reason"], "denied");
        assert_eq!(event["src"], SECOND);
        assert_eq!(event["dst"], VIP);
        assert_eq!(event["dport"], 80);
        assert_eq!(event["vip"], "web");
    }
    let table = observe(&lab, &["--type", "drop", "--from", &format!("{SECOND}/32")]);
    assert!(
        table.lines().any(|l| l.contains("DROP")
            && l.contains("denied")
            && l.contains(&format!("{SECOND}:"))
            && l.contains("vip=web")),
        "{table}"
    );
    assert_eq!(
        observe(&lab, &["--type", "drop", "--from", &format!("{FIRST}/32")]),
        "",
        "the allowed client has no drops"
    );

    // The file swaps the roles: no restart.
    let g = generation(&lab);
    let text = std::fs::read_to_string(&config).unwrap();
    write_renamed(&config, &text.replace(SECOND, FIRST));
    wait_generation(&lab, g);
    assert_roles(&lab, SECOND, FIRST, "file denies the first address");

    // The API swaps them back, with an allow list this time: only the first is let in.
    let g = generation(&lab);
    let (status, body) = api(
        &lab,
        "PUT",
        "/v1/policy",
        Some(json!({"allow": [format!("{FIRST}/32")]})),
    );
    assert_eq!(status, 200, "{body}");
    wait_generation(&lab, g);
    assert_roles(&lab, FIRST, SECOND, "the API allows only the first address");
    let (_, policy) = api(&lab, "GET", "/v1/policy", None);
    assert_eq!(policy["lists_source"], "api");
    let not_allowed = observe(&lab, &["--reason", "not_allowed", "--output", "json"]);
    assert!(
        not_allowed.lines().any(|l| l.contains(SECOND)),
        "{not_allowed}"
    );

    // A bad list is refused with the field named, and the old one keeps serving.
    let (status, body) = api(
        &lab,
        "PUT",
        "/v1/policy",
        Some(json!({"deny": ["10.99.0.1/8"]})),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "deny[0]");
    assert_roles(&lab, FIRST, SECOND, "after a refused change");

    // Forgetting the API's lists brings the file's back.
    let g = generation(&lab);
    assert_eq!(api(&lab, "DELETE", "/v1/policy", None).0, 200);
    wait_generation(&lab, g);
    assert_roles(&lab, SECOND, FIRST, "the file's lists again");
}

#[test]
fn a_syn_flood_from_many_sources_does_not_break_established_connections() {
    if !have_root() {
        return;
    }
    let (lab, _config) = lab_with_policy(
        "xpo-fl-",
        "[policy.flow_guard]\nnew_flows_per_second = 20\n",
    );
    // Established connections: each streams 40 lines over 4 s.
    let long = lab.slow_streams(4);
    std::thread::sleep(Duration::from_millis(500));
    // The flood: at most 30,000 SYNs from random sources, at most 8 s.
    let flood = lab
        .command("client", "python3")
        .arg(repo_root().join("scripts/lab-synflood.py"))
        .args([VIP, "80", "30000", "8"])
        .output()
        .unwrap();
    assert!(
        flood.status.success(),
        "{}",
        String::from_utf8_lossy(&flood.stderr)
    );
    let sent: u64 = String::from_utf8_lossy(&flood.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(sent > 1000, "the flood sent only {sent} SYNs");

    for child in long {
        let out = child.wait_with_output().unwrap();
        let lines = String::from_utf8_lossy(&out.stdout).lines().count();
        assert_eq!(
            lines, 40,
            "an established connection broke during the flood"
        );
    }
    // New connections still work, and the guard engaged.
    assert!(
        get_from(&lab, FIRST).is_some(),
        "new connection after the flood"
    );
    let (_, policy) = api(&lab, "GET", "/v1/policy", None);
    let not_remembered = policy["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == "flow_not_remembered")
        .and_then(|c| c[1].as_u64())
        .unwrap();
    assert!(
        not_remembered > 0,
        "the flow guard never engaged ({sent} SYNs): {policy}"
    );
}
