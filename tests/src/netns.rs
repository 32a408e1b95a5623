//! Network namespaces and commands run inside them, with guards that remove what a test made,
//! also when it fails (Drop runs during a panic's unwinding).

use std::process::{Command, Output};

/// Runs a command, panicking with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A network namespace, deleted (with its interfaces) when dropped.
pub struct NetNs {
    /// The namespace's name.
    pub name: String,
}

impl NetNs {
    /// Creates a namespace named `name` and this process's id (so that test runs side by side,
    /// from other checkouts too, never share or delete each other's), with loopback up.
    pub fn new(name: &str) -> NetNs {
        let name = format!("{name}-{:x}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace, panicking on failure.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Adds a veth pair `a` <-> `b` inside the namespace, both ends up (a link to attach XDP to,
    /// with a peer so the kernel sees it as running).
    pub fn veth_pair(&self, a: &str, b: &str) {
        self.exec(&["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
        self.exec(&["ip", "link", "set", a, "up"]);
        self.exec(&["ip", "link", "set", b, "up"]);
    }

    /// A `Command` that will run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for NetNs {
    /// Stops whatever still runs inside the namespace (a test that failed half way may leave a
    /// daemon there: deleting the namespace would not stop it), then deletes it.
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) has no memory preconditions; the pid was listed as running
                    // in this test's own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
