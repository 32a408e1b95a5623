//! `[vip.health]` and `[vip.backend.health]`: how backends are checked, validated into
//! [`HealthConfig`] (see `docs/config.md`, "Health checks").

use std::{fmt, time::Duration};

use serde::Serialize;

use super::{ForwardMode, Protocol};
use crate::health::{Check, Settings};

/// Which way probes reach a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeVia {
    /// To the VIP's address, IPv4-in-IPv4 encapsulated towards the backend like data traffic
    /// (`ipip` VIPs only): a backend that does not serve the VIP fails.
    Encap,
    /// To the backend's own address.
    Direct,
}

impl fmt::Display for ProbeVia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeVia::Encap => "encap",
            ProbeVia::Direct => "direct",
        })
    }
}

/// What a VIP does when every backend with weight is down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AllDown {
    /// Keep the backends that were serving when the last one went down ("fail static"): a
    /// probe path that breaks for every backend at once does not take the service down.
    #[default]
    Keep,
    /// Take every backend out: new flows to the VIP are dropped (counted as `no_backend`).
    Drop,
}

impl fmt::Display for AllDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AllDown::Keep => "keep",
            AllDown::Drop => "drop",
        })
    }
}

/// The resolved health settings of a VIP, or of one backend that overrides them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthConfig {
    /// The probe; `None` for `check = "none"`: never probed, always taken as up.
    #[serde(flatten)]
    pub check: Option<Check>,
    /// Destination port of probes.
    pub port: u16,
    /// Time between two probes of a backend.
    pub interval_ms: u32,
    /// How long a probe may take before it counts as failed.
    pub timeout_ms: u32,
    /// Consecutive successes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take a backend out.
    pub fall: u32,
    /// Which way probes go.
    pub via: ProbeVia,
}

/// Defaults of the fields left out (HAProxy's: `inter 2s`, `rise 2`, `fall 3`).
pub mod defaults {
    /// `interval_ms`.
    pub const INTERVAL_MS: u32 = 2000;
    /// `timeout_ms`.
    pub const TIMEOUT_MS: u32 = 1000;
    /// `rise`.
    pub const RISE: u32 = 2;
    /// `fall`.
    pub const FALL: u32 = 3;
    /// `path` of an HTTP check.
    pub const HTTP_PATH: &str = "/";
}

impl HealthConfig {
    /// The settings of a VIP without a `[vip.health]` table: a TCP connect to the VIP's port
    /// for a TCP VIP, through the encapsulation in mode `ipip`. No check for a UDP VIP (a UDP
    /// service answers only requests it understands: no generic probe fits), nor for a VIP on
    /// every port (which port would be probed is the operator's to say).
    pub fn defaults_for(protocol: Protocol, port: u16, mode: ForwardMode) -> HealthConfig {
        HealthConfig {
            check: match protocol {
                Protocol::Tcp if port != 0 => Some(Check::Tcp),
                Protocol::Tcp | Protocol::Udp => None,
            },
            port,
            interval_ms: defaults::INTERVAL_MS,
            timeout_ms: defaults::TIMEOUT_MS,
            rise: defaults::RISE,
            fall: defaults::FALL,
            via: match mode {
                ForwardMode::Ipip => ProbeVia::Encap,
                ForwardMode::L2 => ProbeVia::Direct,
            },
        }
    }

    /// The name of the check in the config file: `tcp`, `http`, `udp` or `none`.
    pub fn check_name(&self) -> &'static str {
        match &self.check {
            None => "none",
            Some(Check::Tcp) => "tcp",
            Some(Check::Http { .. }) => "http",
            Some(Check::Udp { .. }) => "udp",
        }
    }

    /// The settings the health checker runs with, for a check other than `none`.
    pub fn settings(&self) -> Option<Settings> {
        Some(Settings {
            check: self.check.clone()?,
            interval: Duration::from_millis(u64::from(self.interval_ms)),
            timeout: Duration::from_millis(u64::from(self.timeout_ms)),
            rise: self.rise,
            fall: self.fall,
        })
    }
}
