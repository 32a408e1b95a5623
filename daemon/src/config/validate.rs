//! Turns the raw file into a [`Config`], checking every value and every cross-field rule and
//! collecting all problems before giving up, so one run of `xlbd check` lists them all.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::{Range, RangeInclusive};

use toml::Spanned;

use super::diagnostic::{Diagnostic, line_column};
use super::raw::{RawBackend, RawConfig, RawEncap, RawInterface, RawLimits, RawVip};
use super::{
    AttachMode, BackendConfig, Cidr, Config, EncapConfig, ForwardMode, HealthConfig,
    InterfaceConfig, Ipv4Net, Limits, MacAddr, NetParseError, ProbeVia, Protocol, TooBig,
    VipConfig,
};
use crate::maglev::is_prime;

mod health;

/// Accepted `limits.flow_table_size`.
const FLOW_TABLE_SIZE_RANGE: RangeInclusive<i64> = 1024..=67_108_864;
/// Accepted `limits.max_vips`.
const MAX_VIPS_RANGE: RangeInclusive<i64> = 1..=1_048_576;
/// Accepted `limits.max_backends`.
const MAX_BACKENDS_RANGE: RangeInclusive<i64> = 1..=16_777_216;
/// Accepted `limits.maglev_slots`.
const MAGLEV_SLOTS_RANGE: RangeInclusive<i64> = 1024..=1_073_741_824;
/// Accepted `limits.policy_prefixes`.
const POLICY_PREFIXES_RANGE: RangeInclusive<i64> = 1..=16_777_216;
/// Accepted `limits.rate_limit_sources`.
const RATE_LIMIT_SOURCES_RANGE: RangeInclusive<i64> = 1024..=16_777_216;
/// Accepted `limits.flow_idle_timeout` (seconds): from a few sweeps to a day.
const FLOW_IDLE_TIMEOUT_RANGE: RangeInclusive<i64> = 10..=86_400;
/// Accepted `vip.port`.
const PORT_RANGE: RangeInclusive<i64> = 0..=65_535;
/// Accepted `vip.table_size`: the smallest prime worth having to the largest prime below 2^24.
const TABLE_SIZE_RANGE: RangeInclusive<i64> = 7..=16_777_213;
/// Accepted `vip.backend.weight`.
const WEIGHT_RANGE: RangeInclusive<i64> = 0..=10_000;
/// `vip.backend.weight` when not given.
const DEFAULT_WEIGHT: u32 = 100;
/// Accepted `encap.mtu`: at least 576, so every packet too big to encapsulate is long enough
/// for the 548-byte quote of the "fragmentation needed" sent back (RFC 1812 4.3.2.3).
const ENCAP_MTU_RANGE: RangeInclusive<i64> = 576..=65_535;

/// Accepted values of `encap.on_too_big`.
const TOO_BIG_ACTIONS: &[(&str, TooBig)] = &[("icmp", TooBig::Icmp), ("drop", TooBig::Drop)];

/// Accepted prefix lengths of `encap.source_prefix`: /8 or longer, so hashes spread over a
/// sane block, and /32 for a single fixed source.
const SOURCE_PREFIX_LEN_RANGE: RangeInclusive<u8> = 8..=32;
/// Accepted prefix lengths of `encap.source_prefix_v6`: /32 or longer (the flow hash fills at
/// most the low 96 bits), and /128 for a single fixed source.
const SOURCE_PREFIX_V6_LEN_RANGE: RangeInclusive<u8> = 32..=128;
/// Longest VIP or backend name.
const NAME_MAX_CHARS: usize = 63;
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX_BYTES: usize = 15;

const ATTACH_MODES: &[(&str, AttachMode)] = &[
    ("native", AttachMode::Native),
    ("generic", AttachMode::Generic),
    ("auto", AttachMode::Auto),
];
const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];
const MODES: &[(&str, ForwardMode)] = &[("l2", ForwardMode::L2), ("ipip", ForwardMode::Ipip)];

/// Validates `raw` (parsed from `text`); every problem found, in source order, on failure.
pub(super) fn validate(
    raw: RawConfig,
    text: &str,
    origin: &str,
) -> Result<Config, Vec<Diagnostic>> {
    let mut checker = Checker {
        text,
        origin,
        diagnostics: Vec::new(),
    };
    let config = checker.config(&raw);
    let mut diagnostics = checker.diagnostics;
    if diagnostics.is_empty() {
        return Ok(config);
    }
    diagnostics.sort_by_key(|d| (d.line, d.column));
    Err(diagnostics)
}

/// Collects diagnostics while it builds the config. Where a value is invalid the config gets a
/// placeholder; it is returned only when there are no diagnostics, so no placeholder escapes.
pub(super) struct Checker<'a> {
    text: &'a str,
    origin: &'a str,
    diagnostics: Vec<Diagnostic>,
}

/// `encap.next_hop_mac` as far as backends of ipip VIPs care.
#[derive(Clone, Copy)]
enum NextHop {
    Absent,
    /// Given but wrong; already reported, so backends falling back on it stay quiet.
    Invalid,
    Valid(MacAddr),
}

/// What makes a VIP unique: address, port and protocol.
type Service = (IpAddr, u16, Protocol);

/// The limits that were valid; a limit given out of range takes part in no further check.
struct CheckedLimits {
    max_vips: Option<u32>,
    policy_prefixes: Option<u32>,
    max_backends: Option<u32>,
    maglev_slots: Option<u32>,
}

impl Checker<'_> {
    fn config(&mut self, raw: &RawConfig) -> Config {
        let interface = self.interface(raw.interface.as_ref());
        let (limits, checked) = self.limits(raw.limits.as_ref());
        let (encap, next_hop) = self.encap(raw.encap.as_ref());
        let vips = self.vips(&raw.vip, next_hop);
        // An invalid prefix is reported already: only a missing one is reported here.
        let given_v6 = raw
            .encap
            .as_ref()
            .is_some_and(|e| e.get_ref().source_prefix_v6.is_some());
        if !given_v6 {
            self.needs_source_prefix_v6(&raw.vip, &vips);
        }
        self.capacity(&raw.vip, &vips, &checked);
        let policy = self.policy(raw.policy.as_ref(), checked.policy_prefixes);
        let events = self.events(raw.events.as_ref());
        Config {
            interface,
            limits,
            encap,
            vips,
            policy,
            events,
        }
    }

    fn interface(&mut self, raw: Option<&Spanned<RawInterface>>) -> InterfaceConfig {
        let Some(raw) = raw else {
            self.error(None, "interface", "missing required section [interface]");
            return InterfaceConfig {
                name: String::new(),
                attach_mode: AttachMode::default(),
            };
        };
        let name = self
            .required(&raw.get_ref().name, raw.span(), "interface", "name")
            .and_then(|name| self.interface_name(name))
            .unwrap_or_default();
        let attach_mode = match &raw.get_ref().attach_mode {
            None => AttachMode::default(),
            Some(mode) => self
                .keyword(mode, "interface.attach_mode", "attach mode", ATTACH_MODES)
                .unwrap_or_default(),
        };
        InterfaceConfig { name, attach_mode }
    }

    fn limits(&mut self, raw: Option<&Spanned<RawLimits>>) -> (Limits, CheckedLimits) {
        let defaults = Limits::default();
        let Some(raw) = raw.map(Spanned::get_ref) else {
            let checked = CheckedLimits {
                max_vips: Some(defaults.max_vips),
                policy_prefixes: Some(defaults.policy_prefixes),
                max_backends: Some(defaults.max_backends),
                maglev_slots: Some(defaults.maglev_slots),
            };
            return (defaults, checked);
        };
        let mut limit = |value: &Option<Spanned<i64>>, key: &str, default, range| match value {
            None => Some(default),
            Some(value) => self.integer(value, &format!("limits.{key}"), range),
        };
        let flow_table_size = limit(
            &raw.flow_table_size,
            "flow_table_size",
            defaults.flow_table_size,
            FLOW_TABLE_SIZE_RANGE,
        );
        let max_vips = limit(&raw.max_vips, "max_vips", defaults.max_vips, MAX_VIPS_RANGE);
        let max_backends = limit(
            &raw.max_backends,
            "max_backends",
            defaults.max_backends,
            MAX_BACKENDS_RANGE,
        );
        let maglev_slots = limit(
            &raw.maglev_slots,
            "maglev_slots",
            defaults.maglev_slots,
            MAGLEV_SLOTS_RANGE,
        );
        let policy_prefixes = limit(
            &raw.policy_prefixes,
            "policy_prefixes",
            defaults.policy_prefixes,
            POLICY_PREFIXES_RANGE,
        );
        let rate_limit_sources = limit(
            &raw.rate_limit_sources,
            "rate_limit_sources",
            defaults.rate_limit_sources,
            RATE_LIMIT_SOURCES_RANGE,
        );
        let flow_idle_timeout = limit(
            &raw.flow_idle_timeout,
            "flow_idle_timeout",
            defaults.flow_idle_timeout,
            FLOW_IDLE_TIMEOUT_RANGE,
        );
        let limits = Limits {
            flow_table_size: flow_table_size.unwrap_or_default(),
            max_vips: max_vips.unwrap_or_default(),
            max_backends: max_backends.unwrap_or_default(),
            maglev_slots: maglev_slots.unwrap_or_default(),
            policy_prefixes: policy_prefixes.unwrap_or_default(),
            rate_limit_sources: rate_limit_sources.unwrap_or_default(),
            flow_idle_timeout: flow_idle_timeout.unwrap_or_default(),
        };
        let checked = CheckedLimits {
            max_vips,
            policy_prefixes,
            max_backends,
            maglev_slots,
        };
        (limits, checked)
    }

    fn encap(&mut self, raw: Option<&Spanned<RawEncap>>) -> (EncapConfig, NextHop) {
        let defaults = EncapConfig::default();
        let Some(raw) = raw.map(Spanned::get_ref) else {
            return (defaults, NextHop::Absent);
        };
        let source_prefix = match &raw.source_prefix {
            None => defaults.source_prefix,
            Some(prefix) => self.source_prefix(prefix).unwrap_or(defaults.source_prefix),
        };
        let next_hop = match &raw.next_hop_mac {
            None => NextHop::Absent,
            Some(mac) => match self.mac(mac, "encap.next_hop_mac") {
                Some(mac) => NextHop::Valid(mac),
                None => NextHop::Invalid,
            },
        };
        let next_hop_mac = match next_hop {
            NextHop::Valid(mac) => Some(mac),
            NextHop::Absent | NextHop::Invalid => None,
        };
        let source_prefix_v6 = raw
            .source_prefix_v6
            .as_ref()
            .and_then(|prefix| self.source_prefix_v6(prefix));
        let mtu = raw
            .mtu
            .as_ref()
            .and_then(|mtu| self.integer::<u16>(mtu, "encap.mtu", ENCAP_MTU_RANGE));
        let on_too_big = match &raw.on_too_big {
            None => defaults.on_too_big,
            Some(value) => self
                .keyword(value, "encap.on_too_big", "action", TOO_BIG_ACTIONS)
                .unwrap_or(defaults.on_too_big),
        };
        let encap = EncapConfig {
            source_prefix,
            source_prefix_v6,
            next_hop_mac,
            mtu,
            on_too_big,
        };
        (encap, next_hop)
    }

    fn source_prefix(&mut self, raw: &Spanned<String>) -> Option<Ipv4Net> {
        let text = raw.get_ref().as_str();
        let bad_len = |len: u8| {
            (!SOURCE_PREFIX_LEN_RANGE.contains(&len)).then(|| {
                format!(
                    "prefix length /{len} is out of range {}..={}",
                    SOURCE_PREFIX_LEN_RANGE.start(),
                    SOURCE_PREFIX_LEN_RANGE.end()
                )
            })
        };
        let problem = match text.parse::<Ipv4Net>() {
            Ok(prefix) => match bad_len(prefix.prefix_len) {
                None => return Some(prefix),
                Some(problem) => problem,
            },
            // A length out of range is the bigger mistake: report it rather than the host bits.
            Err(error @ NetParseError::HostBits { network, .. }) => {
                bad_len(network.prefix_len).unwrap_or_else(|| error.to_string())
            }
            Err(NetParseError::Prefix(_)) if text.contains(':') => {
                "an IPv4 prefix is needed here (an IPv6 one goes in encap.source_prefix_v6)"
                    .to_owned()
            }
            Err(error) => error.to_string(),
        };
        self.error_at(raw, "encap.source_prefix", problem);
        None
    }

    fn source_prefix_v6(&mut self, raw: &Spanned<String>) -> Option<Cidr> {
        let problem = match raw.get_ref().parse::<Cidr>() {
            Ok(prefix) if prefix.addr.is_ipv4() => {
                "an IPv6 prefix is needed here (the IPv4 one is encap.source_prefix)".to_owned()
            }
            Ok(prefix) if !SOURCE_PREFIX_V6_LEN_RANGE.contains(&prefix.prefix_len) => format!(
                "prefix length /{} is out of range {}..={}",
                prefix.prefix_len,
                SOURCE_PREFIX_V6_LEN_RANGE.start(),
                SOURCE_PREFIX_V6_LEN_RANGE.end()
            ),
            Ok(prefix) => return Some(prefix),
            Err(error) => error.to_string(),
        };
        self.error_at(raw, "encap.source_prefix_v6", problem);
        None
    }

    /// Without `encap.source_prefix_v6`, a VIP in mode `ipip` with an IPv6 backend has no
    /// outer IPv6 source: reported at its first IPv6 backend.
    fn needs_source_prefix_v6(&mut self, raw: &[Spanned<RawVip>], vips: &[VipConfig]) {
        for (index, (raw_vip, vip)) in raw.iter().zip(vips).enumerate() {
            if vip.mode != ForwardMode::Ipip {
                continue;
            }
            let Some(position) = vip.backends.iter().position(|b| b.address.is_ipv6()) else {
                continue;
            };
            self.error(
                Some(raw_vip.get_ref().backend[position].span()),
                &format!("vip[{index}].backend[{position}].address"),
                format!(
                    "IPv6 backend {} in mode \"ipip\" needs encap.source_prefix_v6 (the outer \
                     IPv6 source of IPv6-in-IPv6 and IPv4-in-IPv6 packets), which is not set",
                    vip.backends[position].address
                ),
            );
        }
    }

    fn vips(&mut self, raw: &[Spanned<RawVip>], next_hop: NextHop) -> Vec<VipConfig> {
        // First occurrence of each name and of each (address, port, protocol), for duplicates.
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut services: HashMap<Service, usize> = HashMap::new();
        let mut vips = Vec::with_capacity(raw.len());
        for (index, vip) in raw.iter().enumerate() {
            let path = format!("vip[{index}]");
            let (config, name, service) = self.vip(vip, &path, next_hop);
            if let Some(name) = name {
                let first = names.entry(name.get_ref().clone()).or_insert(index);
                if *first != index {
                    let line = self.line_of(&raw[*first].span());
                    self.error_at(
                        name,
                        &format!("{path}.name"),
                        format!(
                            "duplicate VIP name `{}` (vip[{first}], line {line})",
                            name.get_ref()
                        ),
                    );
                }
            }
            if let Some(service @ (address, port, protocol)) = service {
                let first = *services.entry(service).or_insert(index);
                if first != index {
                    let line = self.line_of(&raw[first].span());
                    self.error(
                        Some(vip.span()),
                        &path,
                        format!(
                            "duplicate VIP: vip[{first}] (line {line}) already serves {address} \
                             port {port} {protocol}"
                        ),
                    );
                }
            }
            vips.push(config);
        }
        vips
    }

    /// One VIP, its name (for the duplicate check) and its service key when fully valid.
    fn vip<'r>(
        &mut self,
        raw: &'r Spanned<RawVip>,
        path: &str,
        next_hop: NextHop,
    ) -> (VipConfig, Option<&'r Spanned<String>>, Option<Service>) {
        let span = raw.span();
        let vip = raw.get_ref();
        let name = self
            .required(&vip.name, span.clone(), path, "name")
            .filter(|name| self.label(name, &format!("{path}.name")).is_some());
        let address = self
            .required(&vip.address, span.clone(), path, "address")
            .and_then(|address| self.ip_address(address, &format!("{path}.address"), "VIP"));
        let port = self
            .required(&vip.port, span.clone(), path, "port")
            .and_then(|port| self.integer::<u16>(port, &format!("{path}.port"), PORT_RANGE));
        let protocol = self
            .required(&vip.protocol, span.clone(), path, "protocol")
            .and_then(|p| self.keyword(p, &format!("{path}.protocol"), "protocol", PROTOCOLS));
        let mode = self
            .required(&vip.mode, span.clone(), path, "mode")
            .and_then(|m| self.keyword(m, &format!("{path}.mode"), "mode", MODES));
        let table_size = self.table_size(vip, span.clone(), path);
        let source_ranges = self.source_ranges(
            vip.source_ranges.as_ref(),
            &format!("{path}.source_ranges"),
            address,
        );

        if vip.backend.is_empty() {
            self.error(
                Some(span.clone()),
                &format!("{path}.backend"),
                "VIP has no backends",
            );
        }
        let context = health::VipContext {
            port,
            protocol,
            mode,
        };
        let (health, on_all_down) =
            self.vip_health(vip.health.as_ref(), span.clone(), path, &context);
        let backends = self.backends(&vip.backend, path, next_hop, &health, &context);
        if let Some(address) = address {
            self.families(vip, path, address, mode, &backends, &health);
        }

        let service = match (address, port, protocol) {
            (Some(address), Some(port), Some(protocol)) => Some((address, port, protocol)),
            _ => None,
        };
        let config = VipConfig {
            name: name.map(|name| name.get_ref().clone()).unwrap_or_default(),
            address: address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            port: port.unwrap_or_default(),
            protocol: protocol.unwrap_or(Protocol::Tcp),
            mode: mode.unwrap_or(ForwardMode::L2),
            table_size: table_size.unwrap_or_default(),
            backends,
            source_ranges,
            health,
            on_all_down,
        };
        (config, name, service)
    }

    fn table_size(&mut self, vip: &RawVip, vip_span: Range<usize>, path: &str) -> Option<u32> {
        let field = format!("{path}.table_size");
        let (size, span) = match &vip.table_size {
            None => (crate::maglev::DEFAULT_TABLE_SIZE, vip_span),
            Some(raw) => {
                let size = self.integer::<u32>(raw, &field, TABLE_SIZE_RANGE)?;
                if !is_prime(size) {
                    let below = (7..size).rev().find(|&n| is_prime(n));
                    let above = (size..=u32::MAX).find(|&n| is_prime(n));
                    let nearest = match (below, above) {
                        (Some(below), Some(above)) => {
                            format!("the nearest primes are {below} and {above}")
                        }
                        (None, Some(above)) => format!("the next prime is {above}"),
                        _ => String::from("choose a prime"),
                    };
                    self.error_at(
                        raw,
                        &field,
                        format!("{size} is not prime; Maglev needs a prime table size ({nearest})"),
                    );
                    return None;
                }
                (size, raw.span())
            }
        };
        let backends = vip.backend.len();
        if backends > size as usize {
            let given = if vip.table_size.is_some() {
                ""
            } else {
                " (the default)"
            };
            self.error(
                Some(span),
                &field,
                format!(
                    "table_size {size}{given} is smaller than the number of backends ({backends}); \
                     Maglev needs at least one slot per backend"
                ),
            );
            return None;
        }
        Some(size)
    }

    fn backends(
        &mut self,
        raw: &[Spanned<RawBackend>],
        vip_path: &str,
        next_hop: NextHop,
        vip_health: &HealthConfig,
        context: &health::VipContext,
    ) -> Vec<BackendConfig> {
        let mode = context.mode;
        // First occurrence of each address and each name within this VIP, for duplicates.
        let mut addresses: HashMap<IpAddr, usize> = HashMap::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut backends = Vec::with_capacity(raw.len());
        for (index, backend) in raw.iter().enumerate() {
            let path = format!("{vip_path}.backend[{index}]");
            let span = backend.span();
            let be = backend.get_ref();

            let address_field = format!("{path}.address");
            let address = self
                .required(&be.address, span.clone(), &path, "address")
                .and_then(|address| {
                    Some((
                        address,
                        self.ip_address(address, &address_field, "backend")?,
                    ))
                });
            let mut duplicate_address = false;
            if let Some((raw_address, address)) = address {
                let first = *addresses.entry(address).or_insert(index);
                if first != index {
                    duplicate_address = true;
                    let line = self.line_of(&raw[first].span());
                    self.error_at(
                        raw_address,
                        &address_field,
                        format!(
                            "duplicate backend address {address} (backend[{first}], line {line})"
                        ),
                    );
                }
            }
            let address = address.map(|(_, address)| address);

            let name_field = format!("{path}.name");
            let name = match &be.name {
                Some(name) => self.label(name, &name_field),
                None => address.map(|address| address.to_string()),
            };
            if let Some(name) = &name {
                let first = *names.entry(name.clone()).or_insert(index);
                if first != index {
                    let line = self.line_of(&raw[first].span());
                    match &be.name {
                        Some(raw_name) => self.error_at(
                            raw_name,
                            &name_field,
                            format!(
                                "duplicate backend name `{name}` (backend[{first}], line {line})"
                            ),
                        ),
                        // The address is reported already; say nothing more about its echo.
                        None if duplicate_address => {}
                        None => self.error(
                            Some(span.clone()),
                            &name_field,
                            format!(
                                "the default name `{name}` (the address) is already taken by \
                                 backend[{first}] (line {line}); give this backend a `name`"
                            ),
                        ),
                    }
                }
            }

            let mac = self.backend_mac(be, span.clone(), &path, mode, next_hop);
            let weight = match &be.weight {
                None => Some(DEFAULT_WEIGHT),
                Some(weight) => self.integer(weight, &format!("{path}.weight"), WEIGHT_RANGE),
            };
            let health = self.backend_health(be.health.as_ref(), &path, vip_health, context);
            backends.push(BackendConfig {
                name: name.unwrap_or_default(),
                address: address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                mac: mac.unwrap_or(MacAddr([0; 6])),
                weight: weight.unwrap_or_default(),
                health,
            });
        }
        backends
    }

    fn backend_mac(
        &mut self,
        be: &RawBackend,
        span: Range<usize>,
        path: &str,
        mode: Option<ForwardMode>,
        next_hop: NextHop,
    ) -> Option<MacAddr> {
        let field = format!("{path}.mac");
        if let Some(mac) = &be.mac {
            return self.mac(mac, &field);
        }
        match (mode?, next_hop) {
            (ForwardMode::L2, _) => {
                self.error(
                    Some(span),
                    &field,
                    "missing required field `mac` (every backend of a VIP in mode \"l2\" needs one)",
                );
                None
            }
            (ForwardMode::Ipip, NextHop::Valid(mac)) => Some(mac),
            (ForwardMode::Ipip, NextHop::Invalid) => None,
            (ForwardMode::Ipip, NextHop::Absent) => {
                self.error(
                    Some(span),
                    &field,
                    "missing `mac`, and encap.next_hop_mac is not set: a backend of a VIP in \
                     mode \"ipip\" needs one of them",
                );
                None
            }
        }
    }

    /// Checks the totals against the limits, once each, at the first item that does not fit.
    fn capacity(&mut self, raw: &[Spanned<RawVip>], vips: &[VipConfig], limits: &CheckedLimits) {
        if let Some(max) = limits.policy_prefixes {
            let total: usize = vips
                .iter()
                .filter_map(|v| v.source_ranges.as_ref())
                .map(Vec::len)
                .sum();
            let mut running = 0;
            let first_over = vips.iter().position(|v| {
                running += v.source_ranges.as_ref().map_or(0, Vec::len);
                running > max as usize
            });
            if let Some(index) = first_over {
                let span = raw[index]
                    .get_ref()
                    .source_ranges
                    .as_ref()
                    .map_or(raw[index].span(), Spanned::span);
                self.error(
                    Some(span),
                    &format!("vip[{index}].source_ranges"),
                    format!(
                        "{total} source ranges across all VIPs but limits.policy_prefixes is {max}"
                    ),
                );
            }
        }

        if let Some(max) = limits.max_vips
            && let Some(first_over) = raw.get(max as usize)
        {
            self.error(
                Some(first_over.span()),
                &format!("vip[{max}]"),
                format!("{} VIPs configured but limits.max_vips is {max}", raw.len()),
            );
        }

        if let Some(max) = limits.max_backends {
            let total: usize = raw.iter().map(|vip| vip.get_ref().backend.len()).sum();
            let first_over = raw
                .iter()
                .enumerate()
                .flat_map(|(v, vip)| {
                    let backends = vip.get_ref().backend.iter().enumerate();
                    backends.map(move |(b, backend)| (v, b, backend.span()))
                })
                .nth(max as usize);
            if let Some((v, b, span)) = first_over {
                self.error(
                    Some(span),
                    &format!("vip[{v}].backend[{b}]"),
                    format!(
                        "{total} backends configured across all VIPs but limits.max_backends is {max}"
                    ),
                );
            }
        }

        if let Some(max) = limits.maglev_slots {
            // A zero table size is the placeholder of an invalid one, reported already.
            let sizes = vips.iter().map(|vip| u64::from(vip.table_size));
            let need: u64 = sizes.clone().map(|size| 2 * size).sum();
            let mut running = 0;
            let first_over = sizes.enumerate().find(|&(_, size)| {
                running += 2 * size;
                running > u64::from(max)
            });
            if let Some((index, _)) = first_over {
                let vip = &raw[index];
                let span = vip
                    .get_ref()
                    .table_size
                    .as_ref()
                    .map_or(vip.span(), Spanned::span);
                self.error(
                    Some(span),
                    &format!("vip[{index}].table_size"),
                    format!(
                        "the Maglev tables of all VIPs need {need} slots (2 x table_size per VIP, \
                         for atomic updates) but limits.maglev_slots is {max}; this VIP's table \
                         is the first that does not fit"
                    ),
                );
            }
        }
    }

    // ----- value checks: each reports its own problem and returns None -----

    pub(super) fn error(
        &mut self,
        span: Option<Range<usize>>,
        field: &str,
        message: impl Into<String>,
    ) {
        let diagnostic = Diagnostic::at(self.text, self.origin, span, field, message);
        self.diagnostics.push(diagnostic);
    }

    pub(super) fn error_at<T>(
        &mut self,
        value: &Spanned<T>,
        field: &str,
        message: impl Into<String>,
    ) {
        self.error(Some(value.span()), field, message);
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        line_column(self.text, span.start).0
    }

    /// `table.key`, reported at the table when missing.
    pub(super) fn required<'v, T>(
        &mut self,
        value: &'v Option<Spanned<T>>,
        table_span: Range<usize>,
        table: &str,
        key: &str,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() {
            self.error(
                Some(table_span),
                &format!("{table}.{key}"),
                format!("missing required field `{key}`"),
            );
        }
        value.as_ref()
    }

    pub(super) fn integer<T: TryFrom<i64>>(
        &mut self,
        value: &Spanned<i64>,
        field: &str,
        range: RangeInclusive<i64>,
    ) -> Option<T> {
        let number = *value.get_ref();
        let converted = range
            .contains(&number)
            .then(|| T::try_from(number).ok())
            .flatten();
        if converted.is_none() {
            self.error_at(
                value,
                field,
                format!(
                    "{number} is out of range {}..={}",
                    range.start(),
                    range.end()
                ),
            );
        }
        converted
    }

    pub(super) fn keyword<T: Copy>(
        &mut self,
        value: &Spanned<String>,
        field: &str,
        what: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let text = value.get_ref();
        let found = choices
            .iter()
            .find(|(name, _)| name == text)
            .map(|&(_, v)| v);
        if found.is_none() {
            let accepted: Vec<String> = choices
                .iter()
                .map(|(name, _)| format!("\"{name}\""))
                .collect();
            self.error_at(
                value,
                field,
                format!(
                    "unknown {what} \"{text}\"; accepted values: {}",
                    accepted.join(", ")
                ),
            );
        }
        found
    }

    /// An IPv4 or IPv6 address usable as a destination; `role` ("VIP", "backend") names it in
    /// messages.
    fn ip_address(&mut self, value: &Spanned<String>, field: &str, role: &str) -> Option<IpAddr> {
        let text = value.get_ref();
        let problem = match text.parse::<IpAddr>() {
            Err(_) => format!("`{text}` is not an IPv4 or IPv6 address"),
            Ok(address) if address.is_unspecified() => {
                format!("{address} (unspecified) cannot be a {role} address")
            }
            Ok(IpAddr::V4(address)) if address.is_broadcast() => {
                format!("255.255.255.255 (broadcast) cannot be a {role} address")
            }
            Ok(address) if address.is_multicast() => {
                format!("{address} is a multicast address and cannot be a {role} address")
            }
            Ok(address) => return Some(address),
        };
        self.error_at(value, field, problem);
        None
    }

    /// The address families of a VIP and its backends fit its mode: an IPv6 VIP has IPv6
    /// backends (nothing carries IPv6 in IPv4), mode `l2` has backends of the VIP's family,
    /// an IPv6 backend in mode `ipip` has `encap.source_prefix_v6` (checked in [`Self::config`])
    /// and is not probed through the encapsulation (IPv4-only).
    fn families(
        &mut self,
        vip: &RawVip,
        path: &str,
        address: IpAddr,
        mode: Option<ForwardMode>,
        backends: &[BackendConfig],
        vip_health: &HealthConfig,
    ) {
        for (index, (raw, backend)) in vip.backend.iter().zip(backends).enumerate() {
            let Some(raw_address) = &raw.get_ref().address else {
                continue;
            };
            // A backend whose address was invalid holds a placeholder: reported already.
            if backend.address.is_unspecified() || backend.address.is_ipv6() == address.is_ipv6() {
                if backend.address.is_ipv6() {
                    self.encap_probe_v6(raw, path, index, backend, vip_health);
                }
                continue;
            }
            let field = format!("{path}.backend[{index}].address");
            match (address, mode) {
                (IpAddr::V6(_), _) => self.error_at(
                    raw_address,
                    &field,
                    format!(
                        "IPv6 VIP {address} cannot have the IPv4 backend {}: no encapsulation \
                         carries IPv6 in IPv4",
                        backend.address
                    ),
                ),
                (IpAddr::V4(_), Some(ForwardMode::L2)) => self.error_at(
                    raw_address,
                    &field,
                    format!(
                        "mode \"l2\" needs backends of the VIP's address family: IPv4 VIP \
                         {address}, IPv6 backend {} (mode \"ipip\" sends IPv4-in-IPv6)",
                        backend.address
                    ),
                ),
                (IpAddr::V4(_), _) => self.encap_probe_v6(raw, path, index, backend, vip_health),
            }
        }
    }

    /// Health checks through the encapsulation are IPv4-only: an IPv6 backend probed
    /// `via = "encap"` (the default in mode `ipip`) is refused.
    fn encap_probe_v6(
        &mut self,
        raw: &Spanned<RawBackend>,
        path: &str,
        index: usize,
        backend: &BackendConfig,
        vip_health: &HealthConfig,
    ) {
        let health = backend.health.as_ref().unwrap_or(vip_health);
        if health.check.is_some() && health.via == ProbeVia::Encap {
            self.error(
                Some(raw.span()),
                &format!("{path}.backend[{index}].health.via"),
                format!(
                    "IPv6 backend {}: health checks through the encapsulation (via = \"encap\", \
                     the default in mode \"ipip\") are IPv4-only; set via = \"direct\" in \
                     [vip.health] or the backend's health",
                    backend.address
                ),
            );
        }
    }

    /// A unicast MAC address.
    fn mac(&mut self, value: &Spanned<String>, field: &str) -> Option<MacAddr> {
        let problem = match value.get_ref().parse::<MacAddr>() {
            Err(error) => error.to_string(),
            Ok(mac) if mac.is_zero() => format!("{mac} is not a usable MAC address"),
            Ok(mac) if mac.is_broadcast() => {
                format!("{mac} is the broadcast MAC address; a unicast MAC is required")
            }
            Ok(mac) if mac.is_multicast() => {
                format!("{mac} is a multicast MAC address; a unicast MAC is required")
            }
            Ok(mac) => return Some(mac),
        };
        self.error_at(value, field, problem);
        None
    }

    /// A VIP or backend name: 1..=63 characters of `[A-Za-z0-9_.-]`.
    fn label(&mut self, value: &Spanned<String>, field: &str) -> Option<String> {
        let text = value.get_ref();
        let valid = (1..=NAME_MAX_CHARS).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            self.error_at(
                value,
                field,
                format!(
                    "\"{text}\" is not a valid name: 1 to {NAME_MAX_CHARS} characters of \
                     A-Z, a-z, 0-9, `_`, `.` and `-`"
                ),
            );
        }
        valid.then(|| text.clone())
    }

    /// A name the kernel would accept for a network interface.
    fn interface_name(&mut self, value: &Spanned<String>) -> Option<String> {
        let text = value.get_ref();
        let valid = (1..=IFNAME_MAX_BYTES).contains(&text.len())
            && text != "."
            && text != ".."
            && !text
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace());
        if !valid {
            self.error_at(
                value,
                "interface.name",
                format!(
                    "\"{text}\" is not a valid interface name: 1 to {IFNAME_MAX_BYTES} bytes, \
                     not `.` or `..`, without `/`, `:` or whitespace"
                ),
            );
        }
        valid.then(|| text.clone())
    }
}
