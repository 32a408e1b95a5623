//! State pushed through the API: VIPs the API owns, and per-backend runtime overrides (weight,
//! drain) that apply to any VIP. Persisted as JSON with an atomic write (temp file, fsync,
//! rename, fsync of the directory) so a restart restores exactly what was acknowledged.

use std::{
    collections::BTreeMap,
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::api::types::{BackendSpec, PolicyLists, VipSpec};

/// A runtime change to one backend of one VIP, on top of its configured weight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Weight set through the API; `None` keeps the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Drained: no new flows (weight 0 in the table), established flows continue.
    #[serde(default)]
    pub drained: bool,
}

impl Override {
    /// Whether the override changes nothing (and can be forgotten).
    pub fn is_empty(&self) -> bool {
        self.weight.is_none() && !self.drained
    }

    /// The weight the datapath should use for a backend configured with `configured`.
    pub fn effective_weight(&self, configured: u32) -> u32 {
        if self.drained {
            0
        } else {
            self.weight.unwrap_or(configured)
        }
    }
}

/// Everything the API has pushed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// VIPs added through the API, by name.
    #[serde(default)]
    pub vips: BTreeMap<String, VipSpec>,
    /// Overrides by VIP name, then backend address (as text).
    #[serde(default)]
    pub overrides: BTreeMap<String, BTreeMap<String, Override>>,
    /// Global deny/allow lists set through the API, in place of the file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyLists>,
}

/// Why the persisted API state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// Reading or writing the file failed.
    #[error("API state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error("API state file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// The TOML form of an API VIP, so it is validated by exactly the code that validates files.
#[derive(Serialize)]
struct TomlDoc<'a> {
    vip: Vec<TomlVip<'a>>,
}

#[derive(Serialize)]
struct TomlVip<'a> {
    name: &'a str,
    address: &'a str,
    port: u16,
    protocol: &'a str,
    mode: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    table_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_ranges: Option<&'a [String]>,
    health: Option<&'a crate::api::types::HealthSpec>,
    backend: Vec<&'a BackendSpec>,
}

impl Overlay {
    /// Reads the persisted state; a missing file is an empty overlay.
    pub fn load(path: &Path) -> Result<Overlay, OverlayError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Overlay::default());
            }
            Err(source) => {
                return Err(OverlayError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        serde_json::from_str(&text).map_err(|source| OverlayError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the state atomically: a reader (or a crash) sees the old file or the new one.
    pub fn save(&self, path: &Path) -> Result<(), OverlayError> {
        let io = |source| OverlayError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        let mut file = File::create(&tmp).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }

    /// The API VIPs as TOML `[[vip]]` tables, to be appended to the config file's text.
    pub fn vips_toml(&self) -> String {
        if self.vips.is_empty() {
            return String::new();
        }
        let doc = TomlDoc {
            vip: self
                .vips
                .values()
                .map(|v| TomlVip {
                    name: &v.name,
                    address: &v.address,
                    port: v.port,
                    protocol: &v.protocol,
                    mode: &v.mode,
                    table_size: v.table_size,
                    source_ranges: v.source_ranges.as_deref(),
                    health: v.health.as_ref(),
                    backend: v.backends.iter().collect(),
                })
                .collect(),
        };
        toml::to_string(&doc).unwrap_or_default()
    }

    /// The override of one backend, if any.
    pub fn override_for(&self, vip: &str, backend: &str) -> Option<&Override> {
        self.overrides.get(vip)?.get(backend)
    }

    /// Changes one backend's override; empty overrides are forgotten.
    pub fn set_override(&mut self, vip: &str, backend: &str, change: impl FnOnce(&mut Override)) {
        let per_vip = self.overrides.entry(vip.to_owned()).or_default();
        let entry = per_vip.entry(backend.to_owned()).or_default();
        change(entry);
        if entry.is_empty() {
            per_vip.remove(backend);
        }
        if per_vip.is_empty() {
            self.overrides.remove(vip);
        }
    }

    /// Forgets overrides whose VIP or backend no longer exists; `exists(vip, backend)` says
    /// which do. Returns the forgotten (vip, backend) pairs.
    pub fn prune(&mut self, exists: impl Fn(&str, &str) -> bool) -> Vec<(String, String)> {
        let mut pruned = Vec::new();
        for (vip, per_vip) in &mut self.overrides {
            per_vip.retain(|backend, _| {
                let keep = exists(vip, backend);
                if !keep {
                    pruned.push((vip.clone(), backend.clone()));
                }
                keep
            });
        }
        self.overrides.retain(|_, per_vip| !per_vip.is_empty());
        pruned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VipSpec {
        serde_json::from_str(
            r#"{"name":"api-web","address":"10.0.0.50","port":80,"protocol":"tcp","mode":"l2",
                "backends":[{"address":"10.0.1.1","mac":"02:00:00:00:00:01","weight":7,"name":"web-1.a_b"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn vips_render_as_toml_that_the_config_parser_reads_back() {
        let mut overlay = Overlay::default();
        let mut spec = spec();
        spec.source_ranges = Some(vec!["192.0.2.0/24".into()]);
        overlay.vips.insert("api-web".into(), spec);
        let text = format!("[interface]\nname = \"eth0\"\n{}", overlay.vips_toml());
        let config =
            crate::config::Config::parse(&text, "t").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.vips.len(), 1);
        let ranges = config.vips[0].source_ranges.as_ref().unwrap();
        assert_eq!(ranges[0].to_string(), "192.0.2.0/24");
        assert_eq!(config.vips[0].backends[0].weight, 7);
        assert_eq!(config.vips[0].backends[0].name, "web-1.a_b");
    }

    #[test]
    fn api_vips_take_source_ranges_of_their_own_family() {
        let text = |address: &str, backend: &str, ranges: &[&str]| {
            let mut spec = spec();
            spec.address = address.into();
            spec.backends[0].address = backend.into();
            spec.source_ranges = Some(ranges.iter().map(|r| (*r).to_string()).collect());
            let mut overlay = Overlay::default();
            overlay.vips.insert("api-web".into(), spec);
            format!("[interface]\nname = \"eth0\"\n{}", overlay.vips_toml())
        };
        let v6 = text("2001:db8::50", "2001:db8:1::1", &["2001:db8:c::/48"]);
        let config = crate::config::Config::parse(&v6, "t").unwrap_or_else(|e| panic!("{e}\n{v6}"));
        let ranges = config.vips[0].source_ranges.as_ref().unwrap();
        assert_eq!(ranges[0].to_string(), "2001:db8:c::/48");
        for (address, backend, ranges) in [
            (
                "2001:db8::50",
                "2001:db8:1::1",
                ["2001:db8:c::/48", "192.0.2.0/24"],
            ),
            ("10.0.0.50", "10.0.1.1", ["192.0.2.0/24", "2001:db8:c::/48"]),
        ] {
            let bad = text(address, backend, &ranges);
            match crate::config::Config::parse(&bad, "t") {
                Err(crate::config::ConfigError::Invalid { diagnostics }) => {
                    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
                    assert_eq!(diagnostics[0].field, "vip[0].source_ranges[1]");
                    assert!(
                        diagnostics[0].message.contains("of its own family"),
                        "{}",
                        diagnostics[0].message
                    );
                }
                other => panic!("accepted or other error: {other:?}\n{bad}"),
            }
        }
    }

    #[test]
    fn health_settings_of_api_vips_reach_the_config() {
        let mut spec = spec();
        spec.mode = "ipip".into();
        spec.health =
            serde_json::from_str(r#"{"check":"http","path":"/h","on_all_down":"drop"}"#).unwrap();
        spec.backends[0].health = serde_json::from_str(r#"{"rise":5}"#).unwrap();
        let mut overlay = Overlay::default();
        overlay.vips.insert("api-web".into(), spec);
        let text = format!("[interface]\nname = \"eth0\"\n{}", overlay.vips_toml());
        let config =
            crate::config::Config::parse(&text, "t").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let vip = &config.vips[0];
        assert_eq!(vip.on_all_down, crate::config::AllDown::Drop);
        assert_eq!(vip.health.check_name(), "http");
        assert_eq!(vip.health.via, crate::config::ProbeVia::Encap);
        assert_eq!(vip.health_of(&vip.backends[0]).rise, 5);
    }

    #[test]
    fn save_then_load_round_trips_and_overrides_prune() {
        let dir = std::env::temp_dir().join(format!("xlb-overlay-{}", std::process::id()));
        let path = dir.join("api-state.json");
        let mut overlay = Overlay::default();
        overlay.vips.insert("api-web".into(), spec());
        overlay.set_override("web", "10.0.0.1", |o| o.drained = true);
        overlay.set_override("web", "10.0.0.2", |o| o.weight = Some(5));
        overlay.save(&path).unwrap();
        assert_eq!(Overlay::load(&path).unwrap(), overlay);
        assert!(!path.with_extension("json.tmp").exists());

        overlay.set_override("web", "10.0.0.1", |o| o.drained = false);
        assert!(
            overlay.override_for("web", "10.0.0.1").is_none(),
            "empty overrides go away"
        );
        let pruned = overlay.prune(|_, backend| backend != "10.0.0.2");
        assert_eq!(pruned, [("web".to_owned(), "10.0.0.2".to_owned())]);
        assert!(overlay.overrides.is_empty());
        assert_eq!(
            Overlay::load(&dir.join("missing.json")).unwrap(),
            Overlay::default()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn effective_weight_drain_wins() {
        let o = Override {
            weight: Some(30),
            drained: true,
        };
        assert_eq!(o.effective_weight(100), 0);
        let o = Override {
            weight: Some(30),
            drained: false,
        };
        assert_eq!(o.effective_weight(100), 30);
        assert_eq!(Override::default().effective_weight(100), 100);
    }
}
