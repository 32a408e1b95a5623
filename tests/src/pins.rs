//! A bpffs directory of a test's own for pinned maps and links, removed on drop (unpinning the
//! link detaches its program; unpinning the maps frees them), also when the test panics.
//!
//! `ip netns exec` mounts a sysfs of the namespace's own on /sys, which hides /sys/fs/bpf from
//! an xlbd started that way; a bind mount of the directory elsewhere (on the host's bpffs, so
//! the pins outlive xlbd as they do in production) is visible in both places.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// `/sys/fs/bpf/xsv-<name>-<pid>/`, bind-mounted on `/tmp/xsv-pins-<name>-<pid>/`.
pub struct TestPins {
    bpffs: PathBuf,
    root: PathBuf,
}

impl TestPins {
    /// A fresh, empty root for `name`.
    pub fn new(name: &str) -> TestPins {
        let id = format!("{name}-{}", std::process::id());
        let pins = TestPins {
            bpffs: PathBuf::from(format!("/sys/fs/bpf/xsv-{id}")),
            root: std::env::temp_dir().join(format!("xsv-pins-{id}")),
        };
        pins.clean();
        std::fs::create_dir_all(&pins.bpffs).expect("creating a bpffs directory");
        std::fs::create_dir_all(&pins.root).expect("creating the bind-mount point");
        let status = Command::new("mount")
            .arg("--bind")
            .arg(&pins.bpffs)
            .arg(&pins.root)
            .status()
            .expect("mount");
        assert!(status.success(), "bind-mounting {}", pins.bpffs.display());
        pins
    }

    fn clean(&self) {
        let _ = Command::new("umount").arg(&self.root).output();
        let _ = std::fs::remove_dir(&self.root);
        let _ = std::fs::remove_dir_all(&self.bpffs);
    }

    /// The root to give xlbd (`--pin-root`) or `PinDir::new`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Files pinned below the root, recursively (empty when nothing is pinned).
    pub fn pinned(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        self.clean();
    }
}
