//! `[vip.health]` and `[vip.backend.health]`: each value checked where it is written, then a
//! backend's table laid over its VIP's resolved settings.

use std::ops::{Range, RangeInclusive};

use toml::Spanned;

use super::Checker;
use crate::config::health::defaults;
use crate::config::raw::{RawHealth, RawStatus};
use crate::config::{AllDown, ForwardMode, HealthConfig, ProbeVia, Protocol};
use crate::health::{Check, HTTP_STATUS_CODES, MAX_UDP_PAYLOAD};

/// Accepted `interval_ms`: 100 ms to one hour.
const INTERVAL_RANGE: RangeInclusive<i64> = 100..=3_600_000;
/// Accepted `timeout_ms` (and never above the interval).
const TIMEOUT_RANGE: RangeInclusive<i64> = 10..=3_600_000;
/// Accepted `rise` and `fall`.
const THRESHOLD_RANGE: RangeInclusive<i64> = 1..=100;
/// Accepted health `port`.
const PORT_RANGE: RangeInclusive<i64> = 1..=65_535;

/// The kind of check a table asks for, before its parameters are known.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    Tcp,
    Http,
    Udp,
}

const KINDS: &[(&str, Kind)] = &[
    ("tcp", Kind::Tcp),
    ("http", Kind::Http),
    ("udp", Kind::Udp),
    ("none", Kind::None),
];
const VIAS: &[(&str, ProbeVia)] = &[("encap", ProbeVia::Encap), ("direct", ProbeVia::Direct)];
const ALL_DOWN: &[(&str, AllDown)] = &[("keep", AllDown::Keep), ("drop", AllDown::Drop)];

fn kind_of(check: Option<&Check>) -> Kind {
    match check {
        None => Kind::None,
        Some(Check::Tcp) => Kind::Tcp,
        Some(Check::Http { .. }) => Kind::Http,
        Some(Check::Udp { .. }) => Kind::Udp,
    }
}

/// What the VIP around a health table is, as far as its defaults go (`None` where the VIP's
/// own field is invalid, reported already).
pub(super) struct VipContext {
    pub port: Option<u16>,
    pub protocol: Option<Protocol>,
    pub mode: Option<ForwardMode>,
}

impl Checker<'_> {
    /// The VIP's health settings and all-down policy from its `[vip.health]` (defaults when
    /// absent).
    pub(super) fn vip_health(
        &mut self,
        raw: Option<&Spanned<RawHealth>>,
        vip_span: Range<usize>,
        path: &str,
        vip: &VipContext,
    ) -> (HealthConfig, AllDown) {
        let path = format!("{path}.health");
        let base = HealthConfig::defaults_for(
            vip.protocol.unwrap_or(Protocol::Tcp),
            vip.port.unwrap_or_default(),
            vip.mode.unwrap_or(ForwardMode::L2),
        );
        let Some(raw) = raw else {
            self.health_port_needed(&base, None, vip_span, &path, vip);
            return (base, AllDown::default());
        };
        let table = raw.get_ref();
        let on_all_down = match &table.on_all_down {
            None => AllDown::default(),
            Some(value) => self
                .keyword(value, &format!("{path}.on_all_down"), "policy", ALL_DOWN)
                .unwrap_or_default(),
        };
        let health = self.health_table(table, &path, &base, vip);
        self.health_port_needed(&health, table.port.as_ref(), raw.span(), &path, vip);
        (health, on_all_down)
    }

    /// A backend's settings: its `[vip.backend.health]` over the VIP's, or `None` without one.
    pub(super) fn backend_health(
        &mut self,
        raw: Option<&Spanned<RawHealth>>,
        path: &str,
        vip_health: &HealthConfig,
        vip: &VipContext,
    ) -> Option<HealthConfig> {
        let raw = raw?;
        let path = format!("{path}.health");
        let table = raw.get_ref();
        if let Some(value) = &table.on_all_down {
            self.error_at(
                value,
                &format!("{path}.on_all_down"),
                "on_all_down is a policy of the whole VIP: set it in [vip.health]",
            );
        }
        Some(self.health_table(table, &path, vip_health, vip))
    }

    /// Lays `table` over `base`. Parameters of a check (`path`, `host`, `expect`, `payload`,
    /// `reply`) are inherited only when the kind of check stays the same.
    fn health_table(
        &mut self,
        table: &RawHealth,
        path: &str,
        base: &HealthConfig,
        vip: &VipContext,
    ) -> HealthConfig {
        let field = |key: &str| format!("{path}.{key}");
        let kind = match &table.check {
            None => Some(kind_of(base.check.as_ref())),
            Some(value) => self.keyword(value, &field("check"), "check", KINDS),
        };
        let inherited = kind
            .filter(|&k| k == kind_of(base.check.as_ref()))
            .and(base.check.as_ref());

        let check = match kind {
            None => base.check.clone(),
            Some(Kind::None) => None,
            Some(Kind::Tcp) => Some(Check::Tcp),
            Some(Kind::Http) => {
                let (base_path, base_host, base_expect) = match inherited {
                    Some(Check::Http { path, host, expect }) => {
                        (path.clone(), host.clone(), expect.clone())
                    }
                    _ => (defaults::HTTP_PATH.to_owned(), None, Vec::new()),
                };
                let http_path = match &table.path {
                    None => base_path,
                    Some(value) => self
                        .request_text(value, &field("path"), true)
                        .unwrap_or_default(),
                };
                let host = match &table.host {
                    None => base_host,
                    Some(value) => self.request_text(value, &field("host"), false),
                };
                let expect = match &table.expect {
                    None => base_expect,
                    Some(value) => self.http_expect(value, &field("expect")),
                };
                Some(Check::Http {
                    path: http_path,
                    host,
                    expect: if expect.is_empty() {
                        vec![crate::health::DEFAULT_HTTP_EXPECT]
                    } else {
                        expect
                    },
                })
            }
            Some(Kind::Udp) => {
                let (base_payload, base_reply) = match inherited {
                    Some(Check::Udp { payload, expect }) => (payload.clone(), expect.clone()),
                    _ => (Vec::new(), None),
                };
                let payload = match &table.payload {
                    None => base_payload,
                    Some(value) if value.get_ref().len() > MAX_UDP_PAYLOAD => {
                        self.error_at(
                            value,
                            &field("payload"),
                            format!(
                                "payload of {} bytes does not fit in one datagram \
                                 ({MAX_UDP_PAYLOAD} bytes at most)",
                                value.get_ref().len()
                            ),
                        );
                        Vec::new()
                    }
                    Some(value) => value.get_ref().as_bytes().to_vec(),
                };
                let reply = match &table.reply {
                    None => base_reply,
                    Some(value) => Some(value.get_ref().as_bytes().to_vec()),
                };
                Some(Check::Udp {
                    payload,
                    expect: reply,
                })
            }
        };
        if let Some(kind) = kind {
            self.misplaced_keys(table, kind, path);
        }

        let mut number = |value: &Option<Spanned<i64>>, key: &str, range, base: u32| match value {
            None => Some(base),
            Some(value) => self.integer::<u32>(value, &field(key), range),
        };
        let interval_ms = number(
            &table.interval_ms,
            "interval_ms",
            INTERVAL_RANGE,
            base.interval_ms,
        );
        // A timeout not given here never runs past this table's interval.
        let base_timeout = base.timeout_ms.min(interval_ms.unwrap_or(base.timeout_ms));
        let timeout_ms = number(&table.timeout_ms, "timeout_ms", TIMEOUT_RANGE, base_timeout);
        let rise = number(&table.rise, "rise", THRESHOLD_RANGE, base.rise);
        let fall = number(&table.fall, "fall", THRESHOLD_RANGE, base.fall);
        let port = match &table.port {
            None => Some(base.port),
            Some(value) => self.integer::<u16>(value, &field("port"), PORT_RANGE),
        };
        if let (Some(interval), Some(timeout), Some(given)) =
            (interval_ms, timeout_ms, &table.timeout_ms)
            && timeout > interval
        {
            self.error(
                Some(given.span()),
                &field("timeout_ms"),
                format!(
                    "timeout_ms ({timeout}) is longer than interval_ms ({interval}); a probe \
                     must end before the next one starts"
                ),
            );
        }
        let via = match &table.via {
            None => base.via,
            Some(value) => {
                let via = self.keyword(value, &field("via"), "probe path", VIAS);
                if via == Some(ProbeVia::Encap) && vip.mode == Some(ForwardMode::L2) {
                    self.error_at(
                        value,
                        &field("via"),
                        "via = \"encap\" needs a VIP in mode \"ipip\"; an l2 VIP's backends are \
                         probed on their own address (via = \"direct\")",
                    );
                }
                via.unwrap_or(base.via)
            }
        };
        HealthConfig {
            check,
            port: port.unwrap_or_default(),
            interval_ms: interval_ms.unwrap_or_default(),
            timeout_ms: timeout_ms.unwrap_or_default(),
            rise: rise.unwrap_or_default(),
            fall: fall.unwrap_or_default(),
            via,
        }
    }

    /// A VIP on every port (0) gives its checks no port: one must be set.
    fn health_port_needed(
        &mut self,
        health: &HealthConfig,
        port: Option<&Spanned<i64>>,
        span: Range<usize>,
        path: &str,
        vip: &VipContext,
    ) {
        if vip.port == Some(0) && port.is_none() && health.check.is_some() {
            self.error(
                Some(span),
                &format!("{path}.port"),
                format!(
                    "the VIP serves every port (port = 0), so its {} check needs a `port`",
                    health.check_name()
                ),
            );
        }
    }

    /// Parameters of another kind of check than the table's.
    fn misplaced_keys(&mut self, table: &RawHealth, kind: Kind, path: &str) {
        let http = [("path", &table.path), ("host", &table.host)];
        let udp = [("payload", &table.payload), ("reply", &table.reply)];
        let mut report = |key: &str, span: Range<usize>, wanted: &str| {
            self.error(
                Some(span),
                &format!("{path}.{key}"),
                format!("`{key}` is a setting of check = \"{wanted}\" only"),
            );
        };
        if kind != Kind::Http {
            for (key, value) in http {
                if let Some(value) = value {
                    report(key, value.span(), "http");
                }
            }
            if let Some(value) = &table.expect {
                report("expect", value.span(), "http");
            }
        }
        if kind != Kind::Udp {
            for (key, value) in udp {
                if let Some(value) = value {
                    report(key, value.span(), "udp");
                }
            }
        }
    }

    /// Text that goes into the request line or a header (the checker's own rule,
    /// [`crate::health::is_request_text`]); a path also starts with `/`.
    fn request_text(
        &mut self,
        value: &Spanned<String>,
        field: &str,
        is_path: bool,
    ) -> Option<String> {
        let text = value.get_ref();
        let valid = (!is_path || text.starts_with('/')) && crate::health::is_request_text(text);
        if !valid {
            let start = if is_path {
                "start with `/`"
            } else {
                "be non-empty"
            };
            self.error_at(
                value,
                field,
                format!("{text:?} must {start} and hold no spaces or control characters"),
            );
        }
        valid.then(|| text.clone())
    }

    fn http_expect(
        &mut self,
        value: &Spanned<Vec<Spanned<RawStatus>>>,
        field: &str,
    ) -> Vec<RangeInclusive<u16>> {
        if value.get_ref().is_empty() {
            self.error_at(
                value,
                field,
                "empty list; leave `expect` out to accept 200-399",
            );
        }
        let mut ranges = Vec::new();
        for (index, entry) in value.get_ref().iter().enumerate() {
            let field = format!("{field}[{index}]");
            let range = match entry.get_ref() {
                RawStatus::Code(code) => u16::try_from(*code).ok().map(|c| c..=c),
                RawStatus::Range(text) => text.split_once('-').and_then(|(a, b)| {
                    Some(a.trim().parse::<u16>().ok()?..=b.trim().parse::<u16>().ok()?)
                }),
            };
            match range {
                Some(range)
                    if !range.is_empty()
                        && HTTP_STATUS_CODES.contains(range.start())
                        && HTTP_STATUS_CODES.contains(range.end()) =>
                {
                    ranges.push(range);
                }
                _ => self.error_at(
                    entry,
                    &field,
                    "expected a status code in 100..=599 (`200`) or a range of them (`\"200-299\"`)",
                ),
            }
        }
        ranges
    }
}
