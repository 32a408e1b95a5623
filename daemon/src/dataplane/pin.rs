//! Pinning the load balancer's maps and XDP link on bpffs, so the datapath outlives the daemon:
//! a restart or an upgrade adopts what is pinned instead of starting from empty maps, and the
//! flow table (established flows) survives.
//!
//! Layout of one interface's directory (`<root>/<interface>/`):
//! - every map of the load balancer under its own name (`XLB_VIPS`, `XLB_FLOW_SETS`, ...);
//! - the XDP bpf_link as `link-native` or `link-generic` (the attach mode is in the name,
//!   because the kernel does not report it for a link).
//!
//! Removing the link's pin (with no process holding the link) detaches the program; removing
//! the maps' pins frees them once no program uses them. [`PinDir::remove`] does both.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::maps::{Array, MapData};
use xlb_common::{Globals, LAYOUT_VERSION, map_names};

/// The default root: one directory per interface below it.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/xlb";

/// Maps of the load balancer that are pinned (all of them: state, flows and counters).
pub const PINNED_MAPS: [&str; 30] = [
    map_names::VIPS,
    map_names::VIPS6,
    map_names::VIP_BY_ID,
    map_names::VIP_BY_ID6,
    map_names::VIP_ADDRS,
    map_names::VIP_FILTER,
    map_names::POLICY,
    map_names::POLICY_V4,
    map_names::POLICY_V6,
    map_names::POLICY_V4_24,
    map_names::POLICY_V4_MIX,
    map_names::POLICY_V4_B16,
    map_names::POLICY_VIP,
    map_names::RATE,
    map_names::POLICY_VIP6,
    map_names::RATE6,
    map_names::WINDOWS,
    map_names::EVENTS,
    map_names::STATS_POLICY,
    map_names::BACKENDS,
    map_names::MAGLEV,
    map_names::FLOWS,
    map_names::FLOWS6,
    map_names::CLOCK,
    map_names::GLOBALS,
    map_names::STATS_ACTIONS,
    map_names::STATS_DROPS,
    map_names::STATS_LB,
    map_names::STATS_VIPS,
    map_names::STATS_BACKENDS,
];

/// Errors about pinned state.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The pinned maps were written by a daemon with another map layout.
    #[error(
        "the maps pinned in {dir} have layout version {found}, this xlbd uses {expected}: \
         it cannot adopt them (run `xlbd detach --interface {interface}` to remove the old \
         datapath; established flows are lost)"
    )]
    Layout {
        /// The pin directory.
        dir: PathBuf,
        /// The interface.
        interface: String,
        /// Version found in the pinned globals.
        found: u32,
        /// This build's version.
        expected: u32,
    },
    /// A pinned map's size differs from what the config's limits ask for.
    #[error(
        "pinned map {map} in {dir} has {found} entries, the config's limits ask for {expected}: \
         [limits] changes need a fresh datapath (run `xlbd detach --interface {interface}`, \
         then start; established flows are lost)"
    )]
    Size {
        /// The pin directory.
        dir: PathBuf,
        /// The interface.
        interface: String,
        /// The map.
        map: &'static str,
        /// Entries of the pinned map.
        found: u32,
        /// Entries the limits ask for.
        expected: u32,
    },
    /// Reading a pinned object failed.
    #[error("{what} {path}: {message}")]
    Object {
        /// What was being done.
        what: &'static str,
        /// The pinned file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
    /// A file system operation on the pin directory failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The pin directory of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinDir {
    path: PathBuf,
    interface: String,
}

impl PinDir {
    /// `<root>/<interface>`.
    pub fn new(root: &Path, interface: &str) -> PinDir {
        PinDir {
            path: root.join(interface),
            interface: interface.to_owned(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The interface it belongs to.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Where a map is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Where the link is pinned for an attach mode (`native` or `generic`).
    pub fn link(&self, mode: &str) -> PathBuf {
        self.path.join(format!("link-{mode}"))
    }

    /// The pinned link and its mode, if one is pinned.
    pub fn pinned_link(&self) -> Option<(PathBuf, &'static str)> {
        ["native", "generic"]
            .into_iter()
            .map(|mode| (self.link(mode), mode))
            .find(|(path, _)| path.exists())
    }

    /// Whether a datapath is pinned here (its globals map exists).
    pub fn has_maps(&self) -> bool {
        self.map(map_names::GLOBALS).exists()
    }

    /// Creates the directory (and the root) if missing.
    pub fn create(&self) -> Result<(), PinError> {
        std::fs::create_dir_all(&self.path).map_err(|source| PinError::Io {
            what: "creating",
            path: self.path.clone(),
            source,
        })
    }

    /// Checks the layout version written in the pinned globals. `Ok(None)` when nothing is
    /// pinned; a different version is an error: adopting maps of another layout would
    /// misread them.
    pub fn check_layout(&self) -> Result<Option<u32>, PinError> {
        if !self.has_maps() {
            return Ok(None);
        }
        let path = self.map(map_names::GLOBALS);
        let object = |what, message: String| PinError::Object {
            what,
            path: path.clone(),
            message,
        };
        let data = MapData::from_pin(&path).map_err(|e| object("opening", e.to_string()))?;
        // A globals value of another size is another layout too.
        let found = match Array::<MapData, Globals>::try_from(aya::maps::Map::Array(data)) {
            Ok(globals) => {
                globals
                    .get(&0, 0)
                    .map_err(|e| object("reading", e.to_string()))?
                    .layout_version
            }
            Err(_) => 0,
        };
        if found != LAYOUT_VERSION {
            return Err(PinError::Layout {
                dir: self.path.clone(),
                interface: self.interface.clone(),
                found,
                expected: LAYOUT_VERSION,
            });
        }
        Ok(Some(found))
    }

    /// Checks that every pinned map has the size the config's limits ask for: a map pinned
    /// with other limits cannot be resized in place.
    pub fn check_sizes(&self, sizes: &[(&'static str, u32)]) -> Result<(), PinError> {
        for &(map, expected) in sizes {
            let path = self.map(map);
            if !path.exists() {
                continue;
            }
            let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| PinError::Object {
                what: "reading",
                path: path.clone(),
                message: e.to_string(),
            })?;
            if info.max_entries() != expected {
                return Err(PinError::Size {
                    dir: self.path.clone(),
                    interface: self.interface.clone(),
                    map,
                    found: info.max_entries(),
                    expected,
                });
            }
        }
        Ok(())
    }

    /// Removes everything pinned here: the link first (the program detaches as soon as no
    /// process holds it), then the maps, then the directory. Returns what was removed.
    pub fn remove(&self) -> Result<Vec<PathBuf>, PinError> {
        let mut removed = Vec::new();
        let entries = match std::fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(removed),
            Err(source) => {
                return Err(PinError::Io {
                    what: "listing",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        // Links before maps.
        paths.sort_by_key(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("link-"))
        });
        for path in paths {
            std::fs::remove_file(&path).map_err(|source| PinError::Io {
                what: "unpinning",
                path: path.clone(),
                source,
            })?;
            removed.push(path);
        }
        std::fs::remove_dir(&self.path).map_err(|source| PinError::Io {
            what: "removing",
            path: self.path.clone(),
            source,
        })?;
        Ok(removed)
    }
}
