//! The config file as written: every value kept with its span so validation can point at it.
//!
//! Fields are optional and loosely typed (`String`, `i64`) on purpose: serde stops at the first
//! error, while `validate` reports every missing field and bad value at once.

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub interface: Option<Spanned<RawInterface>>,
    pub limits: Option<Spanned<RawLimits>>,
    pub encap: Option<Spanned<RawEncap>>,
    pub policy: Option<Spanned<super::policy::RawPolicy>>,
    pub events: Option<Spanned<super::policy::RawEvents>>,
    #[serde(default)]
    pub vip: Vec<Spanned<RawVip>>,
}

/// `[interface]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInterface {
    pub name: Option<Spanned<String>>,
    pub attach_mode: Option<Spanned<String>>,
}

/// `[limits]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub flow_table_size: Option<Spanned<i64>>,
    pub max_vips: Option<Spanned<i64>>,
    pub max_backends: Option<Spanned<i64>>,
    pub maglev_slots: Option<Spanned<i64>>,
    pub policy_prefixes: Option<Spanned<i64>>,
    pub rate_limit_sources: Option<Spanned<i64>>,
    pub flow_idle_timeout: Option<Spanned<i64>>,
}

/// `[encap]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncap {
    pub source_prefix: Option<Spanned<String>>,
    pub source_prefix_v6: Option<Spanned<String>>,
    pub next_hop_mac: Option<Spanned<String>>,
    pub mtu: Option<Spanned<i64>>,
    pub on_too_big: Option<Spanned<String>>,
}

/// One `[[vip]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    pub name: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub protocol: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub table_size: Option<Spanned<i64>>,
    pub source_ranges: Option<Spanned<Vec<Spanned<String>>>>,
    pub health: Option<Spanned<RawHealth>>,
    #[serde(default)]
    pub backend: Vec<Spanned<RawBackend>>,
}

/// One `[[vip.backend]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub address: Option<Spanned<String>>,
    pub mac: Option<Spanned<String>>,
    pub weight: Option<Spanned<i64>>,
    pub name: Option<Spanned<String>>,
    pub health: Option<Spanned<RawHealth>>,
}

/// `[vip.health]`, or a backend's `[vip.backend.health]` overriding some of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub check: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub interval_ms: Option<Spanned<i64>>,
    pub timeout_ms: Option<Spanned<i64>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub via: Option<Spanned<String>>,
    pub on_all_down: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub expect: Option<Spanned<Vec<Spanned<RawStatus>>>>,
    pub payload: Option<Spanned<String>>,
    pub reply: Option<Spanned<String>>,
}

/// One entry of an HTTP check's `expect`: a code (`200`) or a range (`"200-299"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawStatus {
    Code(i64),
    Range(String),
}
