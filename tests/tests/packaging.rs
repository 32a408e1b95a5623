//! Packaging: the systemd unit passes `systemd-analyze verify` without a warning and grants only
//! capabilities this kernel knows; the Debian package (cargo-deb) installs into this machine,
//! ships what it should with the config as a conffile that keeps an operator's edits, and its
//! removal detaches a datapath xlbd left pinned and leaves nothing behind. Prefix `xsv`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use xlb_tests::{
    have_root,
    lab::{repo_root, xlbd_path},
    netns::NetNs,
};

fn output(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup.sh installs it)"))
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The values of `key=` lines of the unit, split on whitespace.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_owned))
        .collect()
}

#[test]
fn systemd_unit_verifies_and_grants_only_known_capabilities() {
    let unit = std::fs::read_to_string(repo_root().join("packaging/xlbd.service")).unwrap();
    // systemd-analyze checks that the commands exist: point them at this build.
    let dir = std::env::temp_dir().join(format!("xsv-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let local = dir.join("xlbd.service");
    let xlb = xlbd_path().with_file_name("xlb");
    std::fs::write(
        &local,
        unit.replace("/usr/bin/xlbd", xlbd_path().to_str().unwrap())
            .replace("/usr/bin/xlb ", &format!("{} ", xlb.display())),
    )
    .unwrap();
    let out = output("systemd-analyze", &["verify", local.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    ok(&out, "systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warns: {stderr}"
    );

    assert_eq!(unit_values(&unit, "Type"), ["notify"]);
    assert_eq!(unit_values(&unit, "Restart"), ["on-failure"]);
    // The config is checked before start and before every reload, which waits for the result.
    let pre = unit_values(&unit, "ExecStartPre").join(" ");
    assert!(pre.contains("xlbd check /etc/xlb/xlb.toml"), "{pre}");
    let reload: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .collect();
    assert_eq!(
        reload,
        [
            "/usr/bin/xlbd check /etc/xlb/xlb.toml",
            "/usr/bin/xlb reload"
        ]
    );
    let bounding = unit_values(&unit, "CapabilityBoundingSet");
    assert_eq!(bounding, unit_values(&unit, "AmbientCapabilities"));
    assert!(
        bounding.contains(&"CAP_BPF".to_owned()) && bounding.contains(&"CAP_NET_ADMIN".to_owned())
    );
    assert!(
        !bounding.contains(&"CAP_SYS_ADMIN".to_owned()),
        "CAP_SYS_ADMIN is not needed"
    );
    for cap in &bounding {
        let out = output("capsh", &[&format!("--supports={}", cap.to_lowercase())]);
        assert!(out.status.success(), "{cap} unknown to this kernel");
        assert!(
            unit.contains(&format!("#  {cap} ")),
            "{cap} has no comment saying why it is needed"
        );
    }
    assert!(unit_values(&unit, "ReadWritePaths").contains(&"/sys/fs/bpf".to_owned()));
}

/// Removes the package (purging its conffiles) on drop, whatever the test did.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["-P", "xlb"]).output();
    }
}

/// A bind mount, unmounted on drop.
struct BindMount(PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

/// A child process, killed on drop if still running.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the installed xlbd in `ns` with the default pin root. `ip netns exec` mounts a sysfs
/// of the namespace's own on /sys, hiding the host's bpffs; `bpffs` is a bind mount of it made
/// outside, put back on /sys/fs/bpf inside the command's own mount namespace.
fn installed_xlbd(ns: &NetNs, bpffs: &Path, config: &Path, dir: &Path) -> std::process::Child {
    let script = format!(
        "mount --bind {} /sys/fs/bpf && exec /usr/bin/xlbd --config {} --api-socket {} \
         --state-dir {} --metrics-listen off",
        bpffs.display(),
        config.display(),
        dir.join("xlbd.sock").display(),
        dir.join("state").display()
    );
    ns.command("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("xlbd.log")).unwrap())
        .spawn()
        .expect("installed xlbd")
}

#[test]
fn debian_package_installs_keeps_edits_and_removes_cleanly() {
    if !have_root() {
        return;
    }
    let status = output("dpkg-query", &["-W", "-f=${Status}", "xlb"]);
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("installed"),
        "an xlb package is already installed on this machine; not touching it"
    );
    // The debug build the suite made, packaged without rebuilding.
    let out_dir: PathBuf = repo_root().join(format!("target/xsv-deb-{}", std::process::id()));
    let out = Command::new(env!("CARGO"))
        .args([
            "deb",
            "-p",
            "xlb-daemon",
            "--profile",
            "dev",
            "--no-build",
            "-o",
        ])
        .arg(&out_dir)
        .current_dir(repo_root())
        .output()
        .expect("cargo deb (scripts/setup.sh installs cargo-deb)");
    ok(&out, "cargo deb");
    let deb = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");
    let deb = deb.to_str().unwrap().to_owned();

    let _installed = Installed;
    ok(&output("dpkg", &["-i", &deb]), "dpkg -i");
    for file in [
        "/usr/bin/xlbd",
        "/usr/bin/xlb",
        "/lib/systemd/system/xlbd.service",
        "/etc/xlb/xlb.toml",
        "/usr/share/doc/xlb/operations.md",
        "/usr/share/doc/xlb/config.md",
        "/usr/share/xlb/grafana-dashboard.json",
    ] {
        assert!(Path::new(file).is_file(), "{file} not installed");
    }
    let conffiles = ok(
        &output("dpkg-query", &["-W", "-f=${Conffiles}", "xlb"]),
        "dpkg-query",
    );
    assert!(conffiles.contains("/etc/xlb/xlb.toml"), "{conffiles}");
    ok(
        &output("/usr/bin/xlbd", &["check", "/etc/xlb/xlb.toml"]),
        "xlbd check of the shipped config",
    );

    // An operator's edit survives an upgrade (here: the same package installed again).
    let edited = std::fs::read_to_string("/etc/xlb/xlb.toml").unwrap() + "# edited by xsv\n";
    std::fs::write("/etc/xlb/xlb.toml", &edited).unwrap();
    ok(
        &output("dpkg", &["-i", "--force-confold", &deb]),
        "dpkg -i (upgrade)",
    );
    assert_eq!(
        std::fs::read_to_string("/etc/xlb/xlb.toml").unwrap(),
        edited,
        "the upgrade lost the operator's edit"
    );

    // A datapath the installed xlbd left pinned (a stop keeps it attached)...
    let ns = NetNs::new("xsv-deb");
    ns.veth_pair("xsvdeb0", "xsvdeb1");
    let dir = std::env::temp_dir().join(format!("xsv-deb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("xlb.toml");
    std::fs::write(
        &config,
        edited
            .replace("name = \"eth0\"", "name = \"xsvdeb0\"")
            .replace("attach_mode = \"auto\"", "attach_mode = \"generic\""),
    )
    .unwrap();
    let bpffs = dir.join("bpffs");
    std::fs::create_dir_all(&bpffs).unwrap();
    ok(
        &output("mount", &["--bind", "/sys/fs/bpf", bpffs.to_str().unwrap()]),
        "bind-mounting bpffs",
    );
    let bind = BindMount(bpffs.clone());
    let mut xlbd = Running(installed_xlbd(&ns, &bpffs, &config, &dir));
    let pinned = Path::new("/sys/fs/bpf/xlb/xsvdeb0");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(dir.join("xlbd.log"))
        .unwrap_or_default()
        .contains("xlbd ready")
    {
        assert!(
            Instant::now() < deadline && xlbd.0.try_wait().unwrap().is_none(),
            "installed xlbd did not start: {}",
            std::fs::read_to_string(dir.join("xlbd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill(2) on our own, unreaped child.
    unsafe { libc::kill(xlbd.0.id() as i32, libc::SIGTERM) };
    assert!(xlbd.0.wait().unwrap().success());
    drop(bind);
    assert!(pinned.join("link-generic").exists(), "nothing pinned");
    let link = String::from_utf8_lossy(&ns.exec(&["ip", "-d", "link", "show", "xsvdeb0"]).stdout)
        .into_owned();
    assert!(link.contains("prog/xdp"), "xlbd's stop detached: {link}");

    // ...is detached by the package's removal, which leaves the conffile until purge.
    let removal = output("dpkg", &["-r", "xlb"]);
    let leftover = pinned.exists();
    if leftover {
        // Clean up ourselves so the machine is left as found, then fail.
        let _ = Command::new(xlbd_path())
            .args(["detach", "--interface", "xsvdeb0"])
            .output();
    }
    ok(&removal, "dpkg -r");
    assert!(!leftover, "the removal left {} pinned", pinned.display());
    let link = String::from_utf8_lossy(&ns.exec(&["ip", "-d", "link", "show", "xsvdeb0"]).stdout)
        .into_owned();
    assert!(
        !link.contains("prog/xdp"),
        "still attached after removal: {link}"
    );
    assert!(!Path::new("/usr/bin/xlbd").exists());
    assert!(
        Path::new("/etc/xlb/xlb.toml").exists(),
        "remove must keep conffiles"
    );
    ok(&output("dpkg", &["-P", "xlb"]), "dpkg -P");
    assert!(
        !Path::new("/etc/xlb/xlb.toml").exists(),
        "purge left the config"
    );
    assert!(!Path::new("/sys/fs/bpf/xlb").exists());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&out_dir);
}
