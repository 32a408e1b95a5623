//! `[policy]`, `[events]` and a VIP's `source_ranges`: what the datapath drops before
//! balancing, and which events it reports. Types, their raw (span-keeping) forms and their
//! validation; precedence is documented in docs/policy.md.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use super::validate::Checker;

/// An IPv4 or IPv6 network: an address with its host bits zero, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// Leading network bits: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix_len: u8,
}

/// Why a string is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not `address` or `address/len`.
    #[error(
        "`{0}` is not a CIDR (expected an address or address/len, like 192.0.2.0/24 or 2001:db8::/32)"
    )]
    Syntax(String),
    /// The length is too long for the family.
    #[error("prefix length /{len} is too long for {family} (at most /{max})")]
    Length {
        /// The length written.
        len: u8,
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// Longest length of the family.
        max: u8,
    },
    /// Bits below the prefix length are set.
    #[error("`{text}` has host bits set; the network is {network}")]
    HostBits {
        /// The text as written.
        text: String,
        /// The network the text lies in.
        network: Cidr,
    },
}

impl Cidr {
    /// Longest prefix of the address family.
    pub fn max_len(addr: IpAddr) -> u8 {
        if addr.is_ipv4() { 32 } else { 128 }
    }

    /// True when `addr` lies inside this network.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                a.to_bits() & mask == net.to_bits()
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                a.to_bits() & mask == net.to_bits()
            }
            _ => false,
        }
    }

    fn masked(addr: IpAddr, prefix_len: u8) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V4((a.to_bits() & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V6((a.to_bits() & mask).into())
            }
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax(s.to_owned());
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let max = Cidr::max_len(addr);
        let prefix_len = match len {
            None => max,
            Some(len) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
                len.parse::<u8>().map_err(|_| syntax())?
            }
            Some(_) => return Err(syntax()),
        };
        if prefix_len > max {
            return Err(CidrError::Length {
                len: prefix_len,
                family: if addr.is_ipv4() { "IPv4" } else { "IPv6" },
                max,
            });
        }
        let network = Cidr {
            addr: Cidr::masked(addr, prefix_len),
            prefix_len,
        };
        if network.addr != addr {
            return Err(CidrError::HostBits {
                text: s.to_owned(),
                network,
            });
        }
        Ok(network)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Drop a kind of packet, or pass it to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Drop and count it.
    Drop,
    /// Let the kernel have it.
    Pass,
}

/// `policy.icmp_echo`: what becomes of an ICMP echo request to a VIP address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IcmpEcho {
    /// Answer it in XDP (counted `icmp_echo_replied`).
    #[default]
    Reply,
    /// Let the kernel have it (counted `icmp_passed`).
    Pass,
    /// Drop and count it (`icmp_echo`).
    Drop,
}

/// `[policy.rate_limit]`: new TCP connections per source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct RateLimit {
    /// SYNs per second one source may send to the VIPs.
    pub per_second: u32,
    /// SYNs a source may send at once (the bucket's depth).
    pub burst: u32,
}

/// `[policy]`: validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyConfig {
    /// Sources dropped (`denied`), IPv4 and IPv6, in file order.
    pub deny: Vec<Cidr>,
    /// When not empty for a family, the only sources of that family let in (`not_allowed`).
    pub allow: Vec<Cidr>,
    /// TCP/UDP to a VIP address on a port no VIP serves (and other protocols but ICMP).
    pub unserved: Action,
    /// IPv4 packets with options to a VIP.
    pub ipv4_options: Action,
    /// IPv4 fragments to a VIP.
    pub fragments: Action,
    /// Per-source limit of new TCP connections; `None` = no limit.
    pub rate_limit: Option<RateLimit>,
    /// New flows per second and CPU the flow table takes (`[policy.flow_guard]`); `None` = no
    /// ceiling.
    pub flow_insert_rate: Option<u32>,
    /// ICMP echo requests to a VIP address.
    pub icmp_echo: IcmpEcho,
    /// ICMP to a VIP address that is neither an echo request nor an error about a VIP flow.
    pub icmp_other: Action,
    /// ICMP messages per second and CPU the datapath sends (echo replies, "fragmentation
    /// needed", "packet too big"); 0 = no limit.
    pub icmp_rate_limit: u32,
}

/// `policy.icmp_rate_limit` when not set: the kernel's own default for what it sends
/// (`net.ipv4.icmp_msgs_per_sec`), here per CPU.
pub const DEFAULT_ICMP_RATE_LIMIT: u32 = 1000;

impl Default for PolicyConfig {
    /// No lists, unserved traffic dropped, options forwarded, fragments dropped, no limits,
    /// echo requests answered, other ICMP passed.
    fn default() -> Self {
        PolicyConfig {
            deny: Vec::new(),
            allow: Vec::new(),
            unserved: Action::Drop,
            ipv4_options: Action::Pass,
            fragments: Action::Drop,
            rate_limit: None,
            flow_insert_rate: None,
            icmp_echo: IcmpEcho::Reply,
            icmp_other: Action::Pass,
            icmp_rate_limit: DEFAULT_ICMP_RATE_LIMIT,
        }
    }
}

/// `[events]`: what the datapath reports to `xlb observe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct EventsConfig {
    /// Drop events per second and CPU; 0 = none.
    pub drops_per_second: u32,
    /// One forwarded packet in this many becomes an event; 0 = none.
    pub forward_sample: u32,
    /// Events xlbd keeps in memory for the API.
    pub keep: u32,
}

impl Default for EventsConfig {
    /// 1,000 drop events per second and CPU, no forward sample, 10,000 kept.
    fn default() -> Self {
        EventsConfig {
            drops_per_second: 1000,
            forward_sample: 0,
            keep: 10_000,
        }
    }
}

// ----- raw forms -----

/// `[policy]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub deny: Option<Spanned<Vec<Spanned<String>>>>,
    pub allow: Option<Spanned<Vec<Spanned<String>>>>,
    pub unserved: Option<Spanned<String>>,
    pub ipv4_options: Option<Spanned<String>>,
    pub fragments: Option<Spanned<String>>,
    pub icmp_echo: Option<Spanned<String>>,
    pub icmp_other: Option<Spanned<String>>,
    pub icmp_rate_limit: Option<Spanned<i64>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub flow_guard: Option<Spanned<RawFlowGuard>>,
}

/// `[policy.rate_limit]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub new_connections_per_second: Option<Spanned<i64>>,
    pub burst: Option<Spanned<i64>>,
}

/// `[policy.flow_guard]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlowGuard {
    pub new_flows_per_second: Option<Spanned<i64>>,
}

/// `[events]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvents {
    pub drops_per_second: Option<Spanned<i64>>,
    pub forward_sample: Option<Spanned<i64>>,
    pub keep: Option<Spanned<i64>>,
}

// ----- validation -----

/// Accepted per-source rates and bursts (the datapath's refill arithmetic relies on the bound).
const RATE_RANGE: RangeInclusive<i64> = 1..=1_000_000;
/// Accepted flow-insert ceilings per CPU.
const FLOW_RATE_RANGE: RangeInclusive<i64> = 1..=100_000_000;
/// Accepted ICMP rate limits per CPU (0 = no limit).
const ICMP_RATE_RANGE: RangeInclusive<i64> = 0..=1_000_000;
/// Accepted drop-event rates per CPU.
const EVENT_RATE_RANGE: RangeInclusive<i64> = 0..=1_000_000;
/// Accepted forward sample (1 in N).
const SAMPLE_RANGE: RangeInclusive<i64> = 0..=1_000_000_000;
/// Accepted number of events kept by xlbd.
const KEEP_RANGE: RangeInclusive<i64> = 1..=1_000_000;

const ACTIONS: &[(&str, Action)] = &[("drop", Action::Drop), ("pass", Action::Pass)];
const ECHO_ACTIONS: &[(&str, IcmpEcho)] = &[
    ("reply", IcmpEcho::Reply),
    ("pass", IcmpEcho::Pass),
    ("drop", IcmpEcho::Drop),
];

impl Checker<'_> {
    /// `[policy]`; `max_prefixes` is `limits.policy_prefixes` when valid.
    pub(super) fn policy(
        &mut self,
        raw: Option<&Spanned<RawPolicy>>,
        max_prefixes: Option<u32>,
    ) -> PolicyConfig {
        let defaults = PolicyConfig::default();
        let Some(raw) = raw.map(Spanned::get_ref) else {
            return defaults;
        };
        let deny = self.cidr_list(raw.deny.as_ref(), "policy.deny");
        let allow = self.cidr_list(raw.allow.as_ref(), "policy.allow");
        // A prefix in both lists has no clear meaning: refuse it.
        let indexed = |list: &[(Cidr, &Spanned<String>, usize)]| -> Vec<(Cidr, usize)> {
            list.iter().map(|(c, _, i)| (*c, *i)).collect()
        };
        for problem in in_both(&indexed(&deny), &indexed(&allow)) {
            let entry = allow.iter().find(|(_, _, i)| *i == problem.index);
            if let Some((_, span, _)) = entry {
                self.error_at(
                    span,
                    &format!("policy.allow[{}]", problem.index),
                    problem.message,
                );
            }
        }
        if let Some(max) = max_prefixes {
            for (family, is_v4) in [("IPv4", true), ("IPv6", false)] {
                let mut entries = deny
                    .iter()
                    .chain(&allow)
                    .filter(|(c, _, _)| c.addr.is_ipv4() == is_v4);
                if let Some((_, span, _)) = entries.nth(max as usize) {
                    let count = deny
                        .iter()
                        .chain(&allow)
                        .filter(|(c, _, _)| c.addr.is_ipv4() == is_v4)
                        .count();
                    self.error_at(
                        span,
                        "policy",
                        format!(
                            "{count} {family} prefixes in policy.deny and policy.allow but \
                             limits.policy_prefixes is {max}"
                        ),
                    );
                }
            }
        }
        let mut action = |value: &Option<Spanned<String>>, key: &str, default| match value {
            None => default,
            Some(value) => self
                .keyword(value, &format!("policy.{key}"), "action", ACTIONS)
                .unwrap_or(default),
        };
        let unserved = action(&raw.unserved, "unserved", defaults.unserved);
        let ipv4_options = action(&raw.ipv4_options, "ipv4_options", defaults.ipv4_options);
        let fragments = action(&raw.fragments, "fragments", defaults.fragments);
        let icmp_other = action(&raw.icmp_other, "icmp_other", defaults.icmp_other);
        let icmp_echo = match &raw.icmp_echo {
            None => defaults.icmp_echo,
            Some(value) => self
                .keyword(value, "policy.icmp_echo", "action", ECHO_ACTIONS)
                .unwrap_or(defaults.icmp_echo),
        };
        let icmp_rate_limit = match &raw.icmp_rate_limit {
            None => defaults.icmp_rate_limit,
            Some(value) => self
                .integer::<u32>(value, "policy.icmp_rate_limit", ICMP_RATE_RANGE)
                .unwrap_or(defaults.icmp_rate_limit),
        };
        let rate_limit = raw.rate_limit.as_ref().and_then(|limit| {
            let span = limit.span();
            let limit = limit.get_ref();
            let field = "policy.rate_limit";
            let per_second = self
                .required(
                    &limit.new_connections_per_second,
                    span,
                    field,
                    "new_connections_per_second",
                )
                .and_then(|v| {
                    self.integer::<u32>(
                        v,
                        &format!("{field}.new_connections_per_second"),
                        RATE_RANGE,
                    )
                });
            let burst = match &limit.burst {
                None => per_second,
                Some(v) => self.integer::<u32>(v, &format!("{field}.burst"), RATE_RANGE),
            };
            Some(RateLimit {
                per_second: per_second?,
                burst: burst?,
            })
        });
        let flow_insert_rate = raw.flow_guard.as_ref().and_then(|guard| {
            let field = "policy.flow_guard";
            let value = self.required(
                &guard.get_ref().new_flows_per_second,
                guard.span(),
                field,
                "new_flows_per_second",
            )?;
            self.integer::<u32>(
                value,
                &format!("{field}.new_flows_per_second"),
                FLOW_RATE_RANGE,
            )
        });
        PolicyConfig {
            deny: deny.into_iter().map(|(c, _, _)| c).collect(),
            allow: allow.into_iter().map(|(c, _, _)| c).collect(),
            unserved,
            ipv4_options,
            fragments,
            rate_limit,
            flow_insert_rate,
            icmp_echo,
            icmp_other,
            icmp_rate_limit,
        }
    }

    /// `[events]`.
    pub(super) fn events(&mut self, raw: Option<&Spanned<RawEvents>>) -> EventsConfig {
        let defaults = EventsConfig::default();
        let Some(raw) = raw.map(Spanned::get_ref) else {
            return defaults;
        };
        let mut value = |value: &Option<Spanned<i64>>, key: &str, default, range| match value {
            None => default,
            Some(value) => self
                .integer(value, &format!("events.{key}"), range)
                .unwrap_or(default),
        };
        EventsConfig {
            drops_per_second: value(
                &raw.drops_per_second,
                "drops_per_second",
                defaults.drops_per_second,
                EVENT_RATE_RANGE,
            ),
            forward_sample: value(
                &raw.forward_sample,
                "forward_sample",
                defaults.forward_sample,
                SAMPLE_RANGE,
            ),
            keep: value(&raw.keep, "keep", defaults.keep, KEEP_RANGE),
        }
    }

    /// A VIP's `source_ranges`: of the VIP's own family (`vip`, its address when valid), not
    /// empty, no duplicates.
    pub(super) fn source_ranges(
        &mut self,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
        field: &str,
        vip: Option<IpAddr>,
    ) -> Option<Vec<Cidr>> {
        let raw = raw?;
        if raw.get_ref().is_empty() {
            self.error_at(
                raw,
                field,
                "an empty source_ranges would refuse every client; leave it out to allow all",
            );
            return Some(Vec::new());
        }
        let ranges = self.cidr_list(Some(raw), field);
        if let Some(vip) = vip {
            for (cidr, span, index) in &ranges {
                if cidr.addr.is_ipv6() != vip.is_ipv6() {
                    let (range, own) = match vip {
                        IpAddr::V4(_) => ("IPv6", "IPv4"),
                        IpAddr::V6(_) => ("IPv4", "IPv6"),
                    };
                    self.error_at(
                        span,
                        &format!("{field}[{index}]"),
                        format!(
                            "{cidr} is {range} but the VIP {vip} is {own}: a VIP's source \
                             ranges are of its own family (only those sources can reach it)"
                        ),
                    );
                }
            }
        }
        Some(ranges.into_iter().map(|(c, _, _)| c).collect())
    }

    /// A list of CIDRs with their spans and indices; bad and duplicate entries are reported
    /// and left out.
    fn cidr_list<'r>(
        &mut self,
        raw: Option<&'r Spanned<Vec<Spanned<String>>>>,
        field: &str,
    ) -> Vec<(Cidr, &'r Spanned<String>, usize)> {
        let Some(raw) = raw else {
            return Vec::new();
        };
        let entries = raw.get_ref();
        let texts: Vec<&str> = entries.iter().map(|e| e.get_ref().as_str()).collect();
        let (list, problems) = parse_list(&texts, field);
        for problem in problems {
            let entry = &entries[problem.index];
            self.error_at(
                entry,
                &format!("{field}[{}]", problem.index),
                problem.message,
            );
        }
        list.into_iter()
            .map(|(cidr, index)| (cidr, &entries[index], index))
            .collect()
    }
}

/// A bad entry of a CIDR list: its index and what is wrong.
struct ListProblem {
    index: usize,
    message: String,
}

/// Parses a list of CIDRs: the good entries with their indices, and a problem for each bad or
/// duplicate one. The one parser of the file's lists and the API's.
fn parse_list(entries: &[&str], field: &str) -> (Vec<(Cidr, usize)>, Vec<ListProblem>) {
    let mut seen: HashMap<Cidr, usize> = HashMap::new();
    let mut list = Vec::new();
    let mut problems = Vec::new();
    for (index, text) in entries.iter().enumerate() {
        match text.parse::<Cidr>() {
            Err(error) => problems.push(ListProblem {
                index,
                message: error.to_string(),
            }),
            Ok(cidr) => {
                let first = *seen.entry(cidr).or_insert(index);
                if first == index {
                    list.push((cidr, index));
                } else {
                    problems.push(ListProblem {
                        index,
                        message: format!("duplicate prefix {cidr} ({field}[{first}])"),
                    });
                }
            }
        }
    }
    (list, problems)
}

/// Allow entries that are also deny entries: a prefix belongs to one list.
fn in_both(deny: &[(Cidr, usize)], allow: &[(Cidr, usize)]) -> Vec<ListProblem> {
    let denied: HashMap<Cidr, usize> = deny.iter().copied().collect();
    allow
        .iter()
        .filter_map(|(cidr, index)| {
            denied.get(cidr).map(|first| ListProblem {
                index: *index,
                message: format!(
                    "{cidr} is also policy.deny[{first}]; a prefix belongs to one list"
                ),
            })
        })
        .collect()
}

/// Global (deny, allow) lists, validated.
pub type Lists = (Vec<Cidr>, Vec<Cidr>);
/// Problems of lists given through the API: (field, message).
pub type ListErrors = Vec<(String, String)>;

/// Validates global lists given outside the file (through the API) by the rules of the
/// file's `policy.deny` and `policy.allow`: (deny, allow), or every (field, problem).
pub fn check_lists(deny: &[String], allow: &[String]) -> Result<Lists, ListErrors> {
    fn texts(list: &[String]) -> Vec<&str> {
        list.iter().map(String::as_str).collect()
    }
    let (deny, deny_problems) = parse_list(&texts(deny), "policy.deny");
    let (allow, allow_problems) = parse_list(&texts(allow), "policy.allow");
    let both = in_both(&deny, &allow);
    let problems: Vec<(String, String)> = deny_problems
        .into_iter()
        .map(|p| (format!("policy.deny[{}]", p.index), p.message))
        .chain(
            allow_problems
                .into_iter()
                .chain(both)
                .map(|p| (format!("policy.allow[{}]", p.index), p.message)),
        )
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    let cidrs = |list: Vec<(Cidr, usize)>| list.into_iter().map(|(c, _)| c).collect();
    Ok((cidrs(deny), cidrs(allow)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_lists_are_checked_like_the_files() {
        let (deny, allow) =
            check_lists(&["198.51.100.0/24".into()], &["192.0.2.7".into()]).unwrap();
        assert_eq!((deny.len(), allow.len()), (1, 1));
        let problems = check_lists(
            &["10.0.0.0/8".into(), "bad".into()],
            &["10.0.0.0/8".into(), "10.0.0.0/8".into()],
        )
        .unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            ["policy.deny[1]", "policy.allow[1]", "policy.allow[0]"]
        );
    }

    #[test]
    fn cidrs_parse_and_refuse_host_bits() {
        let c: Cidr = "192.0.2.0/24".parse().unwrap();
        assert_eq!(c.prefix_len, 24);
        assert!(c.contains("192.0.2.77".parse().unwrap()));
        assert!(!c.contains("192.0.3.1".parse().unwrap()));
        let host: Cidr = "2001:db8::1".parse().unwrap();
        assert_eq!(host.prefix_len, 128);
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("192.0.2.1".parse().unwrap()));
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix_len, 0);
        assert!(matches!(
            "192.0.2.1/24".parse::<Cidr>(),
            Err(CidrError::HostBits { .. })
        ));
        assert!(matches!(
            "192.0.2.0/33".parse::<Cidr>(),
            Err(CidrError::Length { max: 32, .. })
        ));
        for bad in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "nope/8",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(CidrError::Syntax(_))),
                "{bad}"
            );
        }
    }
}
