//! Benchmark of the change path through a running `xlbd` (needs root): the time from writing
//! the config file to the new state being applied (inotify, debounce, parse, validate, build,
//! apply), and the round trip of an API push (`PUT .../weight`), for a file of 1 and of 1,000
//! VIPs. The baseline measured in the same run is the API's round trip for `GET /v1/status`,
//! which does no change at all. Writes `reload-<UTC date>.md` to `--out DIR` (default
//! `perf/results/`) and prints it.
//!
//! Usage: `reload_bench [--quick] [--out DIR]`; xlbd is the one built next to this binary.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use xlb::api::client;
use xlb_tests::{lab::xlbd_path, netns::NetNs};

/// Median, min and max of timings, in milliseconds.
fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{:.2} ms ({:.2} – {:.2})",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1])
    )
}

/// A config with `vips` TCP VIPs on port 80 of 10.98.x.y, 3 backends each.
fn config_text(vips: usize, weight: u32) -> String {
    let mut text = String::from(
        "[interface]\nname = \"xlbrb-lb\"\nattach_mode = \"native\"\n\n[limits]\nmax_vips = 2048\nmax_backends = 16384\nmaglev_slots = 8388608\n",
    );
    for i in 0..vips {
        let (hi, lo) = (i / 250, i % 250 + 1);
        writeln!(
            text,
            "\n[[vip]]\nname = \"v{i}\"\naddress = \"10.98.{hi}.{lo}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"l2\"\ntable_size = 1021"
        )
        .unwrap();
        for b in 1..=3u32 {
            let w = if i == 0 && b == 1 { weight } else { 100 };
            writeln!(
                text,
                "  [[vip.backend]]\n  address = \"10.97.{hi}.{}\"\n  mac = \"02:97:00:00:{:02x}:{:02x}\"\n  weight = {w}",
                (lo + b as usize) % 250 + 1,
                hi,
                b
            )
            .unwrap();
        }
    }
    text
}

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(socket: &Path) -> Value {
    client::call(socket, "GET", "/v1/status", None)
        .expect("status")
        .1
}

fn start(ns: &NetNs, dir: &Path, config: &Path) -> Daemon {
    let socket = dir.join("xlbd.sock");
    let child = ns
        .command(xlbd_path().to_str().unwrap())
        .args(["--config", config.to_str().unwrap()])
        .args(["--api-socket", socket.to_str().unwrap()])
        .args(["--state-dir", dir.join("state").to_str().unwrap()])
        .args(["--log-level", "warn", "--no-pin"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("xlbd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while client::call(&socket, "GET", "/v1/status", None).is_err() {
        assert!(Instant::now() < deadline, "xlbd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon { child, socket }
}

struct Row {
    vips: usize,
    file: String,
    apply: String,
    api_push: String,
    api_status: String,
}

fn measure(ns: &NetNs, dir: &Path, vips: usize, runs: usize) -> Row {
    let config = dir.join("xlb.toml");
    std::fs::write(&config, config_text(vips, 100)).unwrap();
    let daemon = start(ns, dir, &config);
    let (mut file, mut apply, mut push, mut plain) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let generation = status(&daemon.socket)["generation"].as_u64().unwrap();
        let text = config_text(vips, 50 + (run as u32 % 2) * 10);
        let tmp = config.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        let started = Instant::now();
        std::fs::rename(&tmp, &config).unwrap();
        let deadline = started + Duration::from_secs(10);
        let applied = loop {
            let s = status(&daemon.socket);
            if s["generation"].as_u64().unwrap() > generation {
                break s;
            }
            assert!(Instant::now() < deadline, "file change not applied in 10 s");
            std::thread::sleep(Duration::from_micros(500));
        };
        file.push(started.elapsed());
        let micros = applied["last_reload"]["changed"]["micros"]
            .as_u64()
            .unwrap_or(0);
        apply.push(Duration::from_micros(micros));

        let weight = json!({"weight": 20 + run % 2});
        let started = Instant::now();
        let (code, body) = client::call(
            &daemon.socket,
            "PUT",
            "/v1/vips/v0/backends/10.97.0.3/weight",
            Some(&weight),
        )
        .expect("API push");
        assert_eq!(code, 200, "{body}");
        push.push(started.elapsed());

        let started = Instant::now();
        status(&daemon.socket);
        plain.push(started.elapsed());
    }
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir.join("state"));
    Row {
        vips,
        file: summary(file),
        apply: summary(apply),
        api_push: summary(push),
        api_status: summary(plain),
    }
}

fn main() -> ExitCode {
    let args = match xlb_tests::bench_env::BenchArgs::parse("reload_bench") {
        Ok(args) => args,
        Err(code) => return code,
    };
    let (quick, out_dir) = (args.quick, args.out_or_results());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("reload_bench runs xlbd and needs root");
        return ExitCode::FAILURE;
    }
    let ns = NetNs::new("xlbrb-ns");
    ns.veth_pair("xlbrb-lb", "xlbrb-pe");
    let dir = std::env::temp_dir().join(format!("xlbrb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let runs = if quick { 8 } else { 30 };
    let rows: Vec<Row> = [1, 1000]
        .iter()
        .map(|&vips| measure(&ns, &dir, vips, runs))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);

    let date = String::from_utf8_lossy(
        &Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_owned();
    let mut text = String::new();
    writeln!(text, "# Change latency through a running xlbd\n").unwrap();
    writeln!(
        text,
        "- Date: {date}; {runs} changes per row; xlbd: `{}`\n- File: a weight edited, written to a temporary file and renamed over the config (as editors do); measured until `GET /v1/status` shows the new generation. Includes the watcher's {} ms debounce.\n- Apply: the time xlbd reports for the change itself (parse, validate, build, apply).\n- API push: round trip of `PUT /v1/vips/v0/backends/…/weight` (validated and applied before the answer).\n- Baseline: round trip of `GET /v1/status` in the same run.\n",
        xlbd_path().display(),
        xlb::watch::DEBOUNCE.as_millis()
    )
    .unwrap();
    writeln!(text, "| VIPs in the file | file write -> applied | apply (reported) | API push | API status (baseline) |").unwrap();
    writeln!(text, "| ---: | --- | --- | --- | --- |").unwrap();
    for row in &rows {
        writeln!(
            text,
            "| {} | {} | {} | {} | {} |",
            row.vips, row.file, row.apply, row.api_push, row.api_status
        )
        .unwrap();
    }
    print!("{text}");
    let path = out_dir.join(format!(
        "reload-{date}{}.md",
        if quick { "-quick" } else { "" }
    ));
    if let Err(error) =
        std::fs::create_dir_all(&out_dir).and_then(|()| std::fs::write(&path, &text))
    {
        eprintln!("writing {}: {error}", path.display());
        return ExitCode::FAILURE;
    }
    eprintln!("report written to {}", path.display());
    ExitCode::SUCCESS
}
