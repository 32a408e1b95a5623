//! The control plane end to end: file edits, SIGHUP and API pushes while traffic runs, invalid
//! changes refused with the old state serving, API bad input, socket permissions, the TCP
//! listener's token, and API state that survives a restart.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use xlb::api::client;
use xlb_tests::{
    have_root,
    lab::{Lab, VIP, repo_root, xlbd_path},
};

fn api(lab: &Lab, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    client::call(&lab.api_socket(), method, path, body.as_ref())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", lab.log()))
}

fn status(lab: &Lab) -> Value {
    api(lab, "GET", "/v1/status", None).1
}

/// Writes the config the way editors do: a temporary file renamed over the old one.
fn write_renamed(path: &Path, text: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits (5 s at most) until the status counter `field` passes `after`; returns the status.
fn wait_past(lab: &Lab, field: &str, after: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = status(lab);
        if s[field].as_u64().unwrap() > after {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{field} did not pass {after} in 5 s: {s}\n{}",
            lab.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the daemon's generation passes `after` (a change was applied).
fn wait_generation(lab: &Lab, after: u64) -> Value {
    wait_past(lab, "generation", after)
}

/// Waits until the daemon has refused one more change than `before`.
fn wait_refused(lab: &Lab, before: u64) -> Value {
    wait_past(lab, "reloads_failed", before)
}

fn lab_with_config(prefix: &str) -> (Lab, std::path::PathBuf) {
    let mut lab = Lab::up(prefix, "l2");
    let config = lab.workdir.join("xlb.toml");
    std::fs::copy(repo_root().join("config/demo-l2.toml"), &config).unwrap();
    lab.start_xlbd(&config);
    (lab, config)
}

fn backend_spec(i: u8) -> Value {
    json!({"address": format!("10.99.0.1{i}"), "mac": format!("02:99:00:00:00:1{i}"), "name": format!("be{i}")})
}

#[test]
fn changes_under_traffic_lose_no_packet_and_reset_no_connection() {
    if !have_root() {
        return;
    }
    let (lab, config) = lab_with_config("xlbt-rl-");
    let original = std::fs::read_to_string(&config).unwrap();

    // Long-lived connections: each streams 40 lines over 4 s.
    let long = lab.slow_streams(6);
    // A UDP request/response stream: 700 datagrams, one every 5 ms.
    let udp = lab
        .command("client", "python3")
        .arg(repo_root().join("scripts/lab-traffic.py"))
        .args([VIP, "700", "0.005"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // New connections all along: 20 batches of 10 requests.
    let workdir = lab.workdir.clone();
    let prefix = lab.prefix.clone();
    let fresh = std::thread::spawn(move || {
        let _ = workdir;
        let mut answered = 0;
        for _ in 0..20 {
            let mut curl = std::process::Command::new("ip");
            curl.args([
                "netns",
                "exec",
                &format!("{prefix}client"),
                "curl",
                "-s",
                "--max-time",
                "5",
                "-H",
                "Connection: close",
            ]);
            for _ in 0..10 {
                curl.arg(format!("http://{VIP}/"));
            }
            let out = curl.output().unwrap();
            answered += String::from_utf8_lossy(&out.stdout).lines().count();
            std::thread::sleep(Duration::from_millis(100));
        }
        answered
    });

    // Changes while all of that runs.
    let g0 = status(&lab)["generation"].as_u64().unwrap();
    write_renamed(
        &config,
        &original.replacen("weight = 100", "weight = 50", 1),
    );
    let s = wait_generation(&lab, g0);
    assert_eq!(s["last_reload"]["source"], "file");
    // Edited again and again, each edit applied before the next.
    for round in 0..8 {
        let g = status(&lab)["generation"].as_u64().unwrap();
        let weight = if round % 2 == 0 {
            "weight = 60"
        } else {
            "weight = 50"
        };
        write_renamed(&config, &original.replacen("weight = 100", weight, 1));
        wait_generation(&lab, g);
    }

    let g = s["generation"].as_u64().unwrap();
    let spec = json!({"name": "api-web", "address": VIP, "port": 8080, "protocol": "tcp", "mode": "l2",
                      "table_size": 1021, "backends": [backend_spec(1), backend_spec(2)]});
    let (code, body) = api(&lab, "POST", "/v1/vips", Some(spec));
    assert_eq!(code, 201, "{body}");
    assert!(body["generation"].as_u64().unwrap() > g);

    let (code, body) = api(
        &lab,
        "PUT",
        "/v1/vips/web/backends/10.99.0.13/weight",
        Some(json!({"weight": 30})),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = api(&lab, "POST", "/v1/vips/web/backends/10.99.0.11/drain", None);
    assert_eq!(code, 200, "{body}");

    // An invalid file: refused, reported with its position, the old state keeps serving.
    let failed = status(&lab)["reloads_failed"].as_u64().unwrap();
    let before = status(&lab)["generation"].as_u64().unwrap();
    std::fs::write(
        &config,
        format!("{original}\n[[vip]]\nname = \"broken\nport = 1\n"),
    )
    .unwrap();
    let s = wait_refused(&lab, failed);
    assert_eq!(s["last_reload"]["ok"], false);
    let error = s["last_reload"]["error"].as_str().unwrap();
    assert!(
        error.contains("xlb.toml:"),
        "the error names the file and line: {error}"
    );
    assert_eq!(s["generation"].as_u64().unwrap(), before, "nothing applied");

    let (code, body) = api(
        &lab,
        "PUT",
        "/v1/vips/api-web/backends",
        Some(json!({"backends": [backend_spec(3)]})),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = api(
        &lab,
        "POST",
        "/v1/vips/web/backends/10.99.0.11/undrain",
        None,
    );
    assert_eq!(code, 200, "{body}");
    // Back to a valid file (in place this time), then an explicit reload through the API.
    let g = status(&lab)["generation"].as_u64().unwrap();
    std::fs::write(&config, &original).unwrap();
    wait_generation(&lab, g);
    let (code, body) = api(&lab, "POST", "/v1/reload", None);
    assert_eq!(code, 200, "{body}");

    // Everything sent was answered; no connection was reset.
    for child in long {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a long-lived connection failed: {:?}",
            out.status
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().count(),
            40,
            "stream cut short"
        );
    }
    let udp = udp.wait_with_output().unwrap();
    let udp: Value = serde_json::from_slice(&udp.stdout).expect("UDP stream summary");
    assert_eq!(udp["lost"], 0, "UDP datagrams lost during changes: {udp}");
    assert_eq!(udp["replied"], 700, "{udp}");
    assert_eq!(
        fresh.join().unwrap(),
        200,
        "every new connection during the changes succeeded"
    );

    // The final state is what the last changes asked for.
    let (_, vips) = api(&lab, "GET", "/v1/vips", None);
    let vips = vips["vips"].as_array().unwrap();
    let api_web = vips
        .iter()
        .find(|v| v["name"] == "api-web")
        .expect("api-web kept across file reloads");
    assert_eq!(api_web["source"], "api");
    assert_eq!(api_web["backends"].as_array().unwrap().len(), 1);
    let web = vips.iter().find(|v| v["name"] == "web").unwrap();
    let be3 = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == "10.99.0.13")
        .unwrap();
    assert_eq!(
        be3["weight"], 30,
        "the API weight override survives file reloads"
    );
    assert_eq!(be3["configured_weight"], 100);
    let s = status(&lab);
    assert_eq!(s["last_reload"]["ok"], true);
    assert!(s["reloads_failed"].as_u64().unwrap() >= 1);

    // Forgetting the override gives the configured weight back.
    let (code, body) = api(
        &lab,
        "DELETE",
        "/v1/vips/web/backends/10.99.0.13/weight",
        None,
    );
    assert_eq!(code, 200, "{body}");
    let (_, web) = api(&lab, "GET", "/v1/vips/web", None);
    let be3 = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == "10.99.0.13")
        .unwrap();
    assert_eq!(be3["weight"], 100, "{be3}");
}

#[test]
fn api_refuses_bad_input_with_the_field_and_changes_nothing() {
    if !have_root() {
        return;
    }
    let (lab, _config) = lab_with_config("xlbt-api-");
    let socket = std::fs::metadata(lab.api_socket()).unwrap();
    assert_eq!(socket.permissions().mode() & 0o777, 0o660, "socket mode");
    assert_eq!(socket.uid(), 0, "socket owner");

    let generation = status(&lab)["generation"].clone();
    let good = json!({"name": "x", "address": "10.99.0.200", "port": 80, "protocol": "tcp", "mode": "l2",
                      "backends": [backend_spec(1)]});
    let with = |key: &str, value: Value| {
        let mut spec = good.clone();
        spec[key] = value;
        spec
    };
    // (what, method, path, body, expected status, expected field)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<Value>,
        u16,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "unknown field",
            "POST",
            "/v1/vips",
            Some(with("colour", json!("blue"))),
            400,
            Some("colour"),
        ),
        (
            "wrong type",
            "POST",
            "/v1/vips",
            Some(with("port", json!("eighty"))),
            400,
            Some("port"),
        ),
        (
            "invalid address",
            "POST",
            "/v1/vips",
            Some(with("address", json!("10.99.0.300"))),
            400,
            Some("address"),
        ),
        (
            "invalid backend MAC",
            "POST",
            "/v1/vips",
            Some(with(
                "backends",
                json!([{"address": "10.99.0.11", "mac": "zz"}]),
            )),
            400,
            Some("backends[0].mac"),
        ),
        (
            "duplicate backends",
            "POST",
            "/v1/vips",
            Some(with("backends", json!([backend_spec(1), backend_spec(1)]))),
            400,
            Some("backends[1]"),
        ),
        (
            "unknown protocol",
            "POST",
            "/v1/vips",
            Some(with("protocol", json!("sctp"))),
            400,
            Some("protocol"),
        ),
        (
            "no backends",
            "POST",
            "/v1/vips",
            Some(with("backends", json!([]))),
            400,
            Some("backends"),
        ),
        (
            "service taken by a file VIP",
            "POST",
            "/v1/vips",
            Some(with("port", json!(80)).tap_address(VIP)),
            409,
            Some("address"),
        ),
        (
            "name taken by a file VIP",
            "POST",
            "/v1/vips",
            Some(with("name", json!("web"))),
            409,
            Some("name"),
        ),
        ("unknown VIP", "GET", "/v1/vips/nope", None, 404, None),
        (
            "unknown backend",
            "POST",
            "/v1/vips/web/backends/10.99.0.99/drain",
            None,
            404,
            None,
        ),
        (
            "weight out of range",
            "PUT",
            "/v1/vips/web/backends/10.99.0.11/weight",
            Some(json!({"weight": 10001})),
            400,
            Some("weight"),
        ),
        (
            "file VIP's backend set",
            "PUT",
            "/v1/vips/web/backends",
            Some(json!({"backends": [backend_spec(1)]})),
            409,
            None,
        ),
        ("wrong method", "DELETE", "/v1/status", None, 405, None),
        ("unknown path", "GET", "/v2/everything", None, 404, None),
    ];
    for (what, method, path, body, code, field) in cases {
        let (got, reply) = api(&lab, method, path, body);
        assert_eq!(got, code, "{what}: {reply}");
        assert!(
            reply["error"].is_string(),
            "{what}: JSON error expected: {reply}"
        );
        if let Some(field) = field {
            let named = reply["field"].as_str().unwrap_or_default();
            assert!(
                named.starts_with(field),
                "{what}: field {named:?}, expected {field:?}: {reply}"
            );
        }
    }
    // Malformed JSON and an oversized body, sent raw.
    let (got, reply) = raw(
        &lab,
        "POST /v1/vips HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"name\":",
    );
    assert_eq!(got, 400, "{reply}");
    let big = "x".repeat(100_000);
    let (got, reply) = raw(
        &lab,
        &format!(
            "POST /v1/vips HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{big}",
            big.len()
        ),
    );
    assert_eq!(got, 413, "{reply}");
    assert_eq!(
        status(&lab)["generation"],
        generation,
        "no bad request changed anything"
    );
    // 15 table cases and the malformed JSON reach the controller and are counted; the oversized
    // body is refused by the transport before it.
    assert!(status(&lab)["api_requests_failed"].as_u64().unwrap() >= 16);
}

trait TapAddress {
    fn tap_address(self, address: &str) -> Self;
}

impl TapAddress for Value {
    fn tap_address(mut self, address: &str) -> Self {
        self["address"] = json!(address);
        self
    }
}

/// Sends raw bytes to the API socket; returns the status and body.
fn raw(lab: &Lab, request: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(lab.api_socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(request.as_bytes());
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, reply)
}

#[test]
fn api_state_survives_a_restart_and_tcp_needs_its_token() {
    if !have_root() {
        return;
    }
    let (mut lab, config) = lab_with_config("xlbt-ps-");
    let spec = json!({"name": "api-web", "address": VIP, "port": 8080, "protocol": "tcp", "mode": "l2",
                      "backends": [backend_spec(2)]});
    assert_eq!(api(&lab, "POST", "/v1/vips", Some(spec)).0, 201);
    assert_eq!(
        api(&lab, "POST", "/v1/vips/web/backends/be3/drain", None).0,
        200
    );
    lab.stop_xlbd();

    lab.start_xlbd(&config);
    let (_, vips) = api(&lab, "GET", "/v1/vips", None);
    let vips = vips["vips"].as_array().unwrap();
    assert!(
        vips.iter()
            .any(|v| v["name"] == "api-web" && v["source"] == "api"),
        "API VIP restored: {vips:?}"
    );
    let web = vips.iter().find(|v| v["name"] == "web").unwrap();
    let be3 = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "be3")
        .unwrap();
    assert_eq!(be3["state"], "drained", "drain restored");
    assert_eq!(be3["slots"], 0, "a drained backend has no slots");
    // Traffic to the restored API VIP works.
    let out = lab
        .command("client", "curl")
        .args(["-s", "--max-time", "5", &format!("http://{VIP}:8080/")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("be2"),
        "{out:?}"
    );
    lab.stop_xlbd();

    // TCP listener: refused without a token file; with one, 401 without the right token.
    let out = lab
        .command("lb", xlbd_path().to_str().unwrap())
        .args(["--config", config.to_str().unwrap(), "--api-socket"])
        .arg(lab.workdir.join("other.sock"))
        .args(["--state-dir"])
        .arg(lab.workdir.join("state"))
        .args(["--api-listen", "127.0.0.1:9901"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let token_file = lab.workdir.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    lab.start_xlbd_with(
        &config,
        &[
            "--api-listen",
            "9901",
            "--api-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let curl = |auth: Option<&str>| {
        let mut command = lab.command("lb", "curl");
        command.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ]);
        if let Some(auth) = auth {
            command.args(["-H", auth]);
        }
        let out = command
            .arg("http://127.0.0.1:9901/v1/status")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(None), "401", "no token");
    assert_eq!(
        curl(Some("Authorization: Bearer wrong")),
        "401",
        "wrong token"
    );
    assert_eq!(
        curl(Some("Authorization: Bearer s3cret-token")),
        "200",
        "right token"
    );
    lab.stop_xlbd();
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    if !have_root() {
        return;
    }
    let ns = xlb_tests::netns::NetNs::new("xlbt-sd-lb");
    ns.veth_pair("xlbdemo-lb", "xlbdemo-pe");
    let dir = std::env::temp_dir().join(format!("xlbt-sd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = ns
        .command(xlbd_path().to_str().unwrap())
        .args([
            "--config",
            repo_root().join("config/demo-l2.toml").to_str().unwrap(),
        ])
        .arg("--api-socket")
        .arg(dir.join("xlbd.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--no-pin")
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let next = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1\nSTATUS="), "{ready}");
    assert!(ready.contains("3 VIPs"), "{ready}");
    // SAFETY: kill(2) on our own, unreaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(
        next().starts_with("READY=1"),
        "ready again after the reload"
    );
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(next(), "STOPPING=1");
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}
