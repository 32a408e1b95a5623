//! The lab of `scripts/lab.sh` (client, balancer, three HTTP backends on one bridge, each in its
//! own namespace) driven from tests, torn down on drop, also when the test panics.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// The VIP every lab serves.
pub const VIP: &str = "10.99.0.100";
/// The IPv6 VIP every lab's backends hold (on loopback), routed by the client via the balancer.
pub const VIP6: &str = "fd99:1::100";
/// The balancer's MAC address in the lab.
pub const LB_MAC: &str = "02:99:00:00:00:02";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `xlbd` binary of the same build as this one: next to a binary in `target/<profile>/`,
/// or one level up from a test binary in `target/<profile>/deps/` (run `cargo build` first).
pub fn xlbd_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().expect("binary directory");
    let candidates = [
        dir.join("xlbd"),
        dir.parent().map_or_else(PathBuf::new, |p| p.join("xlbd")),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{} missing: run `cargo build` first",
                candidates[1].display()
            )
        })
}

/// A running lab; everything it made goes away on drop.
pub struct Lab {
    /// Namespace name prefix.
    pub prefix: String,
    /// Scratch directory (configs, logs, stats).
    pub workdir: PathBuf,
    xlbd: Option<Child>,
    /// Where xlbd pins the datapath (`--pin-root`); `None` runs it with `--no-pin`.
    pins: Option<crate::pins::TestPins>,
}

fn lab_script(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/lab.sh"))
        .args(args)
        .env("XLBD", xlbd_path())
        .output()
        .expect("running scripts/lab.sh")
}

impl Lab {
    /// Brings up a lab in `mode` ("l2" or "ipip") with namespaces named `prefix`, this
    /// process's id and the host (so that runs side by side, from other checkouts too, never
    /// share or tear down each other's namespaces).
    pub fn up(prefix: &str, mode: &str) -> Lab {
        let prefix = format!("{prefix}{:x}-", std::process::id());
        let workdir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&workdir).expect("workdir");
        let lab = Lab {
            prefix: prefix.clone(),
            workdir,
            xlbd: None,
            pins: None,
        };
        let out = lab_script(&["up", &prefix, mode, lab.workdir.to_str().unwrap(), "3"]);
        assert!(
            out.status.success(),
            "lab up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    /// Namespace name of a lab host ("client", "lb", "be1", "sw", ...).
    pub fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    /// A command run in a lab host's namespace.
    pub fn command(&self, host: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(host), program]);
        command
    }

    /// Path of the stats file xlbd writes.
    pub fn stats_path(&self) -> PathBuf {
        self.workdir.join("stats.json")
    }

    /// The API socket of this lab's xlbd.
    pub fn api_socket(&self) -> PathBuf {
        self.workdir.join("xlbd.sock")
    }

    /// From now on xlbd pins the datapath under a bpffs directory of this lab's own, removed
    /// with the lab; returns it.
    pub fn pin(&mut self, name: &str) -> &crate::pins::TestPins {
        self.pins.insert(crate::pins::TestPins::new(name))
    }

    /// The pin root given to xlbd, if the lab pins.
    pub fn pin_root(&self) -> Option<&Path> {
        self.pins.as_ref().map(|p| p.root())
    }

    /// Starts xlbd in the balancer's namespace with `config` and waits until it is ready.
    pub fn start_xlbd(&mut self, config: &Path) {
        self.start_xlbd_with(config, &[]);
    }

    /// As [`Lab::start_xlbd`], with extra command-line arguments.
    pub fn start_xlbd_with(&mut self, config: &Path, extra: &[&str]) {
        self.start_xlbd_binary(&xlbd_path(), config, extra);
    }

    /// As [`Lab::start_xlbd_with`], running another build of xlbd (upgrades). Its log is
    /// appended to the same file, so earlier runs stay readable.
    pub fn start_xlbd_binary(&mut self, binary: &Path, config: &Path, extra: &[&str]) {
        let log_path = self.workdir.join("xlbd.log");
        let start_len = std::fs::metadata(&log_path).map_or(0, |m| m.len() as usize);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let pin_args: Vec<String> = match &self.pins {
            Some(pins) => vec!["--pin-root".into(), pins.root().display().to_string()],
            None => vec!["--no-pin".into()],
        };
        let child = self
            .command("lb", binary.to_str().unwrap())
            .args(["--config", config.to_str().unwrap()])
            .args([
                "--stats-file",
                self.stats_path().to_str().unwrap(),
                "--stats-interval",
                "0.5",
            ])
            .args(["--api-socket", self.api_socket().to_str().unwrap()])
            .args(["--state-dir", self.workdir.join("state").to_str().unwrap()])
            .args(&pin_args)
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting xlbd");
        self.xlbd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log()[start_len..].contains("xlbd ready") {
            if let Some(status) = self.xlbd.as_mut().unwrap().try_wait().unwrap() {
                panic!("xlbd exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "xlbd not ready in 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills xlbd with SIGKILL (no cleanup of any kind) and reaps it.
    pub fn kill_xlbd(&mut self) {
        let mut child = self.xlbd.take().expect("xlbd running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaping xlbd");
    }

    /// xlbd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.workdir.join("xlbd.log")).unwrap_or_default()
    }

    /// Stops xlbd with SIGTERM and returns the final counters it wrote.
    pub fn stop_xlbd(&mut self) -> serde_json::Value {
        let mut child = self.xlbd.take().expect("xlbd running");
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "xlbd exited with {status}:\n{}",
                    self.log()
                );
                break;
            }
            assert!(Instant::now() < deadline, "xlbd did not stop in 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(self.stats_path()).expect("stats file");
        serde_json::from_str(&text).expect("stats file is JSON")
    }

    /// Whether any XDP program is attached to the balancer's interface.
    pub fn lb_has_xdp(&self) -> bool {
        let out = self
            .command("lb", "ip")
            .args(["-d", "link", "show", "xlbdemo-lb"])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }

    /// Starts `count` long-lived connections from the client: each streams 40 lines over 4 s
    /// (`/slow/40` of the lab backends). Read each child's output to see them through.
    pub fn slow_streams(&self, count: usize) -> Vec<Child> {
        (0..count)
            .map(|_| {
                self.command("client", "curl")
                    .args(["-s", "--max-time", "30", &format!("http://{VIP}/slow/40")])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("starting curl")
            })
            .collect()
    }

    /// Pids of the lab's HTTP server in `host`'s namespace.
    pub fn server_pids(&self, host: &str) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.ns(host)])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("lab-backend.py"))
            })
            .collect()
    }

    /// Stops `host`'s HTTP server (and waits until it is gone, 5 s at most).
    pub fn stop_server(&self, host: &str) {
        let pids = self.server_pids(host);
        assert!(!pids.is_empty(), "no server running on {host}");
        for &pid in &pids {
            // SAFETY: kill(2) of a process of the lab's namespace, found just above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.server_pids(host).is_empty() {
            assert!(Instant::now() < deadline, "server of {host} did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// xlbd's metrics (`GET /metrics` on 127.0.0.1:9642, read with curl inside the balancer's
    /// namespace); retried for 20 s at most while xlbd does not answer.
    pub fn metrics_text(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self
                .command("lb", "curl")
                .args(["-sS", "--max-time", "5", "http://127.0.0.1:9642/metrics"])
                .output()
                .expect("curl");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no metrics in 20 s: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One sample of xlbd's metrics (`series` is the name with its labels, as exported);
    /// `None` when the series is not exported.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics_text()
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// `count` HTTP GETs of the VIP from the client with curl, each on a new connection.
    /// Returns the response bodies (one line each: "beN client-ip:port").
    pub fn curl_vip(&self, count: usize) -> Vec<String> {
        self.curl(&format!("http://{VIP}/"), count)
    }

    /// `count` HTTP GETs of `url` from the client with curl, each on a new connection (as
    /// [`Lab::curl_vip`]; `http://[fd99:1::100]/` for the IPv6 VIP).
    pub fn curl(&self, url: &str, count: usize) -> Vec<String> {
        let mut command = self.command("client", "curl");
        command.args(["-s", "--max-time", "5", "-H", "Connection: close"]);
        for _ in 0..count {
            command.arg(url);
        }
        let out = command.stderr(Stdio::inherit()).output().expect("curl");
        assert!(out.status.success(), "curl failed: {:?}", out.status);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.xlbd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Unpinning detaches the program and frees the maps.
        self.pins.take();
        let _ = lab_script(&["down", &self.prefix, self.workdir.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

/// Counts responses per backend name (the first word of each body).
pub fn per_backend(bodies: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for body in bodies {
        let name = body.split_whitespace().next().unwrap_or("").to_owned();
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}
