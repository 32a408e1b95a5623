//! The xlb config file: a TOML document read into a fully validated [`Config`] or rejected with
//! every problem listed, each with its file, line, column and field (see `docs/config.md`).
//!
//! Reading goes in two steps: serde fills the span-keeping structs of `raw` (syntax errors,
//! wrong types and unknown keys stop there), then `validate` checks every value and cross-field
//! rule, collecting all errors before it builds the [`Config`]. A `Config` value is always valid.

mod diagnostic;
mod health;
mod net;
mod policy;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use serde::Serialize;

pub use diagnostic::{ConfigError, Diagnostic};
pub use health::{AllDown, HealthConfig, ProbeVia, defaults as health_defaults};
pub use net::{Ipv4Net, MacAddr, NetParseError, service_label};
pub use policy::{
    Action, Cidr, CidrError, EventsConfig, IcmpEcho, PolicyConfig, RateLimit, check_lists,
};

/// The validated configuration of one xlbd instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The NIC the XDP program is attached to.
    pub interface: InterfaceConfig,
    /// Sizes of the dataplane's maps.
    pub limits: Limits,
    /// Settings for IPv4-in-IPv4 encapsulation.
    pub encap: EncapConfig,
    /// The virtual services, in file order.
    pub vips: Vec<VipConfig>,
    /// What the datapath drops before balancing (`[policy]`).
    pub policy: PolicyConfig,
    /// Which datapath events are reported (`[events]`).
    pub events: EventsConfig,
}

/// `[interface]`: where the XDP program runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceConfig {
    /// Kernel name of the NIC, like `eth0`.
    pub name: String,
    /// How the XDP program is attached.
    pub attach_mode: AttachMode,
}

/// How the XDP program is attached to the NIC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver; fails if the driver has no XDP support.
    Native,
    /// In the generic (skb) path; works on any NIC, slower.
    Generic,
    /// Native, falling back to generic with a warning.
    #[default]
    Auto,
}

/// `[limits]`: capacities of the dataplane's maps, fixed when the program is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Limits {
    /// Entries of each flow table (IPv4 and IPv6).
    pub flow_table_size: u32,
    /// Most VIPs the VIP map holds.
    pub max_vips: u32,
    /// Most backends across all VIPs.
    pub max_backends: u32,
    /// Length of the slot array shared by all Maglev tables (each VIP takes 2 x table_size).
    pub maglev_slots: u32,
    /// Capacity of each global CIDR trie (IPv4, IPv6), and of the VIPs' source ranges.
    pub policy_prefixes: u32,
    /// Sources the per-source rate limiter tracks at once (LRU: the oldest are forgotten).
    pub rate_limit_sources: u32,
    /// Seconds a flow may stay silent before `xlbd` removes its flow table entry.
    pub flow_idle_timeout: u32,
}

impl Default for Limits {
    /// The values used for fields left out of `[limits]`.
    fn default() -> Self {
        Limits {
            flow_table_size: 262_144,
            max_vips: 1024,
            max_backends: 65_536,
            maglev_slots: 4_194_304,
            policy_prefixes: 65_536,
            rate_limit_sources: 65_536,
            flow_idle_timeout: 300,
        }
    }
}

/// `[encap]`: settings for VIPs in mode `ipip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct EncapConfig {
    /// Outer source addresses: host bits are filled from the flow hash so backends spread by RSS.
    pub source_prefix: Ipv4Net,
    /// Outer IPv6 source addresses of IPv6 encapsulation (IPv6-in-IPv6, IPv4-in-IPv6), host
    /// bits from the flow hash; required when a VIP in mode `ipip` has an IPv6 backend.
    pub source_prefix_v6: Option<Cidr>,
    /// Destination MAC of IPIP frames for backends without their own `mac`.
    pub next_hop_mac: Option<MacAddr>,
    /// Largest packet encapsulation may produce (outer header included); `None` = the
    /// interface's MTU, read when xlbd starts (1500 where it cannot be read).
    pub mtu: Option<u16>,
    /// What happens to a packet that encapsulation would make larger than the MTU.
    pub on_too_big: TooBig,
}

/// `encap.on_too_big`: a packet too big to encapsulate (XDP cannot fragment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TooBig {
    /// With DF set, answer the client with ICMP "fragmentation needed" (path MTU discovery);
    /// with DF clear, drop and count it (`encap_too_big`).
    #[default]
    Icmp,
    /// Drop and count it (`encap_too_big`), DF or not.
    Drop,
}

impl Default for EncapConfig {
    /// The values used for fields left out of `[encap]`: source prefix 172.16.0.0/16, the
    /// interface's MTU, ICMP for packets too big.
    fn default() -> Self {
        EncapConfig {
            source_prefix: Ipv4Net {
                addr: Ipv4Addr::new(172, 16, 0, 0),
                prefix_len: 16,
            },
            source_prefix_v6: None,
            next_hop_mac: None,
            mtu: None,
            on_too_big: TooBig::Icmp,
        }
    }
}

/// One `[[vip]]`: a virtual service and its backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VipConfig {
    /// Unique label, used in logs and stats.
    pub name: String,
    /// The virtual address (IPv4 or IPv6).
    pub address: IpAddr,
    /// Destination port; 0 matches every port of the protocol.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// How packets reach the backends.
    pub mode: ForwardMode,
    /// Maglev lookup table size, a prime at least the number of backends.
    pub table_size: u32,
    /// The backends, in file order.
    pub backends: Vec<BackendConfig>,
    /// Sources allowed to reach this VIP (`source_ranges`); `None` allows every source.
    pub source_ranges: Option<Vec<Cidr>>,
    /// How its backends are checked (`[vip.health]`, defaults when absent).
    pub health: HealthConfig,
    /// What happens when every backend is down.
    pub on_all_down: AllDown,
}

/// Transport protocol of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP, IP protocol 6.
    Tcp,
    /// UDP, IP protocol 17.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(&self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// How a VIP's packets are forwarded to a backend; both are direct server return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// Rewrite the destination MAC; backends share the L2 segment and own the VIP.
    L2,
    /// Wrap in an outer IPv4 header addressed to the backend.
    Ipip,
}

impl fmt::Display for ForwardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ForwardMode::L2 => "l2",
            ForwardMode::Ipip => "ipip",
        })
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Auto => "auto",
        })
    }
}

/// One `[[vip.backend]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendConfig {
    /// Label, unique within the VIP; the address text when not given.
    pub name: String,
    /// The backend's address (IPv4 for now).
    pub address: IpAddr,
    /// Destination MAC of frames to this backend: its own `mac`, else `encap.next_hop_mac`.
    pub mac: MacAddr,
    /// Share of new flows; 0 drains the backend (kept for existing flows, no new ones).
    pub weight: u32,
    /// Its own health settings (`[vip.backend.health]` over the VIP's), when it has any.
    pub health: Option<HealthConfig>,
}

impl VipConfig {
    /// The health settings of one of its backends: the backend's own, else the VIP's.
    pub fn health_of<'a>(&'a self, backend: &'a BackendConfig) -> &'a HealthConfig {
        backend.health.as_ref().unwrap_or(&self.health)
    }
}

impl Config {
    /// Reads and validates a file. Errors name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Validates text; `origin` is the file name used in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|error| ConfigError::Invalid {
            diagnostics: vec![Diagnostic::from_toml(text, origin, &error)],
        })?;
        validate::validate(raw, text, origin)
            .map_err(|diagnostics| ConfigError::Invalid { diagnostics })
    }
}
