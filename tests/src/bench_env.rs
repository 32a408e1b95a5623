//! What the benchmarks write in their report headers about the machine they ran on.

/// The trimmed standard output of a command, or "unknown" if it fails.
pub fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The CPU model from /proc/cpuinfo, or "unknown".
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Pins the calling thread to the last CPU (one per-CPU LRU list, one cache, fewer
/// migrations); the CPU, or None if pinning failed.
pub fn pin_to_last_cpu() -> Option<usize> {
    let cpus = std::thread::available_parallelism().ok()?.get();
    let cpu = cpus - 1;
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it (cpu is below
    // the number of CPUs, far below CPU_SETSIZE); sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        (libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0)
            .then_some(cpu)
    }
}

/// The command line every report-writing benchmark takes: `[--quick] [--out DIR]`.
pub struct BenchArgs {
    /// `--quick`: the shorter plan.
    pub quick: bool,
    /// `--out DIR`, if given.
    pub out: Option<std::path::PathBuf>,
}

impl BenchArgs {
    /// Parses the process's arguments for the benchmark `name`; prints the usage and returns
    /// a failure exit code on anything else.
    pub fn parse(name: &str) -> Result<BenchArgs, std::process::ExitCode> {
        let mut parsed = BenchArgs {
            quick: false,
            out: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => parsed.quick = true,
                "--out" if let Some(dir) = args.next() => parsed.out = Some(dir.into()),
                _ => {
                    eprintln!("usage: {name} [--quick] [--out DIR]");
                    return Err(std::process::ExitCode::FAILURE);
                }
            }
        }
        Ok(parsed)
    }

    /// The output directory: `--out`, or `perf/results` in the repository.
    pub fn out_or_results(&self) -> std::path::PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| crate::lab::repo_root().join("perf/results"))
    }
}

/// The repository's commit for a report header: the short hash, and "(with uncommitted
/// changes)" when the tree differs from it.
pub fn commit() -> String {
    let repo = crate::lab::repo_root();
    let repo = repo.to_string_lossy();
    let commit = command_output("git", &["-C", &repo, "rev-parse", "--short", "HEAD"]);
    let dirty = command_output("git", &["-C", &repo, "status", "--porcelain"]);
    if dirty.is_empty() || dirty == "unknown" {
        commit
    } else {
        format!("{commit} (with uncommitted changes)")
    }
}

/// The running kernel's release, for a report header.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned())
}
