//! Helpers shared by xlb's fixture and end-to-end tests: a packet builder with its own checksum
//! code (independent of the datapath's), and guards that clean up what a test created.

pub mod bench_env;
pub mod lab;
pub mod netns;
pub mod packet;
pub mod pins;

/// Skips (with a message on stderr) when not running as root: BPF and namespaces need it.
/// Returns true when the test should go on.
pub fn have_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: needs root (BPF, network namespaces)");
    }
    root
}
