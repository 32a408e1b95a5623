//! Prometheus metrics. Every scrape renders a fresh registry from the datapath's counters
//! (summed over CPUs) and the controller's own counts, so a removed VIP or backend disappears at
//! once and every series exists, at zero, from the first scrape. Labels are bounded: `vip`
//! (the VIP's name) and `backend` (its address), never anything taken from a packet.
//!
//! The listener is a plain blocking HTTP/1.1 server on 127.0.0.1 by default; each request is
//! answered by asking the controller's thread for the text (the maps belong to it).

use std::{
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use tracing::{info, warn};

use crate::{
    api::http::{self, Transport},
    dataplane::{flows::FlowTableView, stats::Snapshot},
};

/// The metrics' names, in one place: the dashboard test checks the dashboard against them.
pub mod names {
    /// Packets forwarded per VIP.
    pub const VIP_PACKETS: &str = "xlb_vip_packets_total";
    /// Bytes forwarded per VIP.
    pub const VIP_BYTES: &str = "xlb_vip_bytes_total";
    /// Packets forwarded per backend.
    pub const BACKEND_PACKETS: &str = "xlb_backend_packets_total";
    /// Bytes forwarded per backend.
    pub const BACKEND_BYTES: &str = "xlb_backend_bytes_total";
    /// A backend's effective weight (0 when drained).
    pub const BACKEND_WEIGHT: &str = "xlb_backend_weight";
    /// 1 when an operator drained the backend.
    pub const BACKEND_DRAINED: &str = "xlb_backend_drained";
    /// 0 when health checks find the backend down, 1 otherwise (unchecked backends are 1).
    pub const BACKEND_UP: &str = "xlb_backend_up";
    /// 1 when the backend is health checked.
    pub const BACKEND_CHECKED: &str = "xlb_backend_checked";
    /// Health changes of a backend, by the health it changed to (`to`: up, down).
    pub const BACKEND_TRANSITIONS: &str = "xlb_backend_health_transitions_total";
    /// Maglev slots the backend owns.
    pub const BACKEND_SLOTS: &str = "xlb_backend_slots";
    /// Packets dropped, by reason.
    pub const DROPS: &str = "xlb_drops_total";
    /// Packets per XDP action.
    pub const XDP_ACTIONS: &str = "xlb_xdp_actions_total";
    /// Bytes per XDP action.
    pub const XDP_ACTION_BYTES: &str = "xlb_xdp_action_bytes_total";
    /// New flows (a backend chosen from the Maglev table).
    pub const FLOWS_NEW: &str = "xlb_flows_new_total";
    /// Packets of known flows.
    pub const FLOW_HITS: &str = "xlb_flow_hits_total";
    /// Flows whose backend was removed, rehashed.
    pub const FLOWS_REHASHED: &str = "xlb_flows_rehashed_total";
    /// New flows the flow table refused to store (still forwarded): a full IPv6 table.
    pub const FLOW_INSERT_FAILURES: &str = "xlb_flow_insert_failures_total";
    /// New IPv4 flows that took the slot of their set's least recently seen flow (the set was
    /// full; the displaced flow's next packet is balanced again).
    pub const FLOWS_DISPLACED: &str = "xlb_flows_displaced_total";
    /// New flows not stored because the flow-insert ceiling was reached (still forwarded).
    pub const FLOWS_NOT_REMEMBERED: &str = "xlb_flows_not_remembered_total";
    /// New flows whose key was already in the flow table (its entry overwritten).
    pub const FLOWS_REPLACED: &str = "xlb_flows_replaced_total";
    /// ICMP handled by the datapath, by outcome (`echo_replied`, `error_forwarded`, `passed`,
    /// `too_big_sent`); ICMP it dropped is in [`DROPS`] (`icmp_*`, `encap_too_big`).
    pub const ICMP: &str = "xlb_icmp_packets_total";
    /// Entries in the flow table (counted by a walk at most 5 s old).
    pub const FLOW_TABLE_ENTRIES: &str = "xlb_flow_table_entries";
    /// Entries in the IPv6 flow table (same walk).
    pub const FLOW_TABLE_ENTRIES_V6: &str = "xlb_flow_table_entries_v6";
    /// The flows each flow table is sized for (`limits.flow_table_size`; the IPv4 table has
    /// twice as many slots).
    pub const FLOW_TABLE_CAPACITY: &str = "xlb_flow_table_capacity";
    /// Flow-table entries `xlbd` removed, least recently seen first, to make room in a table
    /// more than 90% full.
    pub const FLOW_TABLE_EVICTIONS: &str = "xlb_flow_table_evictions_total";
    /// Flow-table entries `xlbd` removed for being idle longer than `limits.flow_idle_timeout`.
    pub const FLOW_TABLE_EXPIRED: &str = "xlb_flow_table_expired_total";
    /// Datapath events written to the ring buffer.
    pub const EVENTS_SENT: &str = "xlb_events_sent_total";
    /// Datapath events lost because the ring buffer was full.
    pub const EVENTS_LOST: &str = "xlb_events_lost_total";
    /// Drop events not sent because the per-CPU event budget was spent.
    pub const EVENTS_SUPPRESSED: &str = "xlb_events_suppressed_total";
    /// Config changes by result.
    pub const RELOADS: &str = "xlb_config_reloads_total";
    /// Unix time of the last applied change.
    pub const LAST_RELOAD_SUCCESS: &str = "xlb_config_last_reload_success_timestamp_seconds";
    /// API requests by result.
    pub const API_REQUESTS: &str = "xlb_api_requests_total";
    /// VIPs served.
    pub const VIPS: &str = "xlb_vips";

    /// Every name the daemon exports.
    pub const ALL: [&str; 35] = [
        VIP_PACKETS,
        VIP_BYTES,
        BACKEND_PACKETS,
        BACKEND_BYTES,
        BACKEND_WEIGHT,
        BACKEND_DRAINED,
        BACKEND_UP,
        BACKEND_CHECKED,
        BACKEND_TRANSITIONS,
        BACKEND_SLOTS,
        DROPS,
        XDP_ACTIONS,
        XDP_ACTION_BYTES,
        FLOWS_NEW,
        FLOW_HITS,
        FLOWS_REHASHED,
        FLOW_INSERT_FAILURES,
        FLOWS_NOT_REMEMBERED,
        FLOWS_REPLACED,
        FLOWS_DISPLACED,
        ICMP,
        FLOW_TABLE_ENTRIES,
        FLOW_TABLE_ENTRIES_V6,
        FLOW_TABLE_CAPACITY,
        FLOW_TABLE_EVICTIONS,
        FLOW_TABLE_EXPIRED,
        EVENTS_SENT,
        EVENTS_LOST,
        EVENTS_SUPPRESSED,
        RELOADS,
        LAST_RELOAD_SUCCESS,
        API_REQUESTS,
        VIPS,
        BUILD_INFO,
        UP,
    ];
    /// Always 1, labelled with the daemon's version.
    pub const BUILD_INFO: &str = "xlb_build_info";
    /// 1 while the datapath's counters can be read.
    pub const UP: &str = "xlb_datapath_up";
}

/// What the controller knows besides the datapath's counters.
#[derive(Debug, Default, Clone)]
pub struct ControlCounts {
    /// Changes applied (startup, file, signal, API).
    pub reloads_ok: u64,
    /// Changes refused or failed.
    pub reloads_failed: u64,
    /// Unix time of the last applied change.
    pub last_success_unix: Option<u64>,
    /// API requests answered with success.
    pub api_ok: u64,
    /// API requests refused.
    pub api_failed: u64,
}

/// What the control plane knows of one backend.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BackendControl {
    /// An operator drained it.
    pub drained: bool,
    /// Its health, when it is checked.
    pub health: Option<BackendHealth>,
}

/// A checked backend's health.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BackendHealth {
    /// The checks find it up.
    pub up: bool,
    /// Times it went down.
    pub went_down: u64,
    /// Times it came (back) up.
    pub came_up: u64,
}

/// The control plane's view of a backend: (VIP name, backend address) -> state.
pub type Backends<'a> = &'a dyn Fn(&str, &str) -> BackendControl;

/// Renders the exposition text. `snapshot` is `None` when the counters could not be read:
/// `xlb_datapath_up` is then 0 and the datapath series are left out rather than faked; the
/// flow-table series are left out when `flow_table` is `None` (its walk failed).
pub fn render(
    snapshot: Option<&Snapshot>,
    flow_table: Option<FlowTableView>,
    control: &ControlCounts,
    backends: Backends<'_>,
) -> String {
    let recorder: PrometheusRecorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        for (result, count) in [
            ("ok", control.reloads_ok),
            ("failed", control.reloads_failed),
        ] {
            counter!(names::RELOADS, "result" => result).absolute(count);
        }
        gauge!(names::LAST_RELOAD_SUCCESS).set(control.last_success_unix.unwrap_or(0) as f64);
        for (result, count) in [("ok", control.api_ok), ("failed", control.api_failed)] {
            counter!(names::API_REQUESTS, "result" => result).absolute(count);
        }
        gauge!(names::UP).set(if snapshot.is_some() { 1.0 } else { 0.0 });
        let Some(snapshot) = snapshot else {
            return;
        };
        for (action, c) in &snapshot.actions {
            counter!(names::XDP_ACTIONS, "action" => action.clone()).absolute(c.packets);
            counter!(names::XDP_ACTION_BYTES, "action" => action.clone()).absolute(c.bytes);
        }
        for (reason, count) in &snapshot.drops {
            counter!(names::DROPS, "reason" => reason.clone()).absolute(*count);
        }
        for (event, count) in &snapshot.lb {
            if let Some(outcome) = event.strip_prefix("icmp_") {
                counter!(names::ICMP, "outcome" => outcome.to_owned()).absolute(*count);
                continue;
            }
            let name = match event.as_str() {
                "flow_hit" => names::FLOW_HITS,
                "flow_new" => names::FLOWS_NEW,
                "flow_backend_gone" => names::FLOWS_REHASHED,
                "flow_insert_failed" => names::FLOW_INSERT_FAILURES,
                "flow_replaced" => names::FLOWS_REPLACED,
                "flow_displaced" => names::FLOWS_DISPLACED,
                other => {
                    warn!(
                        event = other,
                        "load-balancing counter without a metric name"
                    );
                    continue;
                }
            };
            counter!(name).absolute(*count);
        }
        for (event, count) in &snapshot.policy {
            let name = match event.as_str() {
                "flow_not_remembered" => names::FLOWS_NOT_REMEMBERED,
                "event_sent" => names::EVENTS_SENT,
                "event_lost" => names::EVENTS_LOST,
                "event_suppressed" => names::EVENTS_SUPPRESSED,
                other => {
                    warn!(event = other, "policy counter without a metric name");
                    continue;
                }
            };
            counter!(name).absolute(*count);
        }
        if let Some(table) = flow_table {
            gauge!(names::FLOW_TABLE_ENTRIES).set(f64::from(table.entries));
            gauge!(names::FLOW_TABLE_ENTRIES_V6).set(f64::from(table.entries_v6));
            gauge!(names::FLOW_TABLE_CAPACITY).set(f64::from(table.capacity));
            counter!(names::FLOW_TABLE_EVICTIONS).absolute(table.evicted);
            counter!(names::FLOW_TABLE_EXPIRED).absolute(table.expired);
        }
        gauge!(names::VIPS).set(snapshot.vips.len() as f64);
        for vip in &snapshot.vips {
            let v = vip.name.clone();
            counter!(names::VIP_PACKETS, "vip" => v.clone()).absolute(vip.counter.packets);
            counter!(names::VIP_BYTES, "vip" => v.clone()).absolute(vip.counter.bytes);
            for b in &vip.backends {
                let labels = [("vip", v.clone()), ("backend", b.address.clone())];
                counter!(names::BACKEND_PACKETS, &labels).absolute(b.counter.packets);
                counter!(names::BACKEND_BYTES, &labels).absolute(b.counter.bytes);
                gauge!(names::BACKEND_WEIGHT, &labels).set(f64::from(b.weight));
                gauge!(names::BACKEND_SLOTS, &labels).set(f64::from(b.slots));
                let state = backends(&vip.name, &b.address);
                gauge!(names::BACKEND_DRAINED, &labels).set(flag(state.drained));
                gauge!(names::BACKEND_CHECKED, &labels).set(flag(state.health.is_some()));
                gauge!(names::BACKEND_UP, &labels).set(flag(state.health.is_none_or(|h| h.up)));
                let health = state.health.unwrap_or_default();
                for (to, count) in [("down", health.went_down), ("up", health.came_up)] {
                    let labels = [
                        ("vip", v.clone()),
                        ("backend", b.address.clone()),
                        ("to", to.to_owned()),
                    ];
                    counter!(names::BACKEND_TRANSITIONS, &labels).absolute(count);
                }
            }
        }
    });
    handle.render()
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics listener on {address}: {source}")]
pub struct ListenError {
    /// The address asked for.
    pub address: SocketAddr,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// Parses `--metrics-listen`: `ADDR:PORT`, or `PORT` alone for 127.0.0.1:PORT.
pub fn parse_listen(flag: &str, text: &str) -> Result<SocketAddr, String> {
    match text.parse::<u16>() {
        Ok(port) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => text
            .parse()
            .map_err(|e| format!("{flag} {text}: {e} (expected ADDR:PORT or PORT)")),
    }
}

/// Serves `GET /metrics` on `address`; `scrape` produces the text (it returns `None` when the
/// controller is gone). Returns the bound address (useful with port 0).
pub fn serve(
    address: SocketAddr,
    scrape: impl Fn() -> Option<String> + Send + 'static,
) -> Result<SocketAddr, ListenError> {
    let listener = TcpListener::bind(address).map_err(|source| ListenError { address, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ListenError { address, source })?;
    std::thread::Builder::new()
        .name("xlb-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => answer(stream, &scrape),
                    Err(error) => warn!(%error, "metrics connection failed"),
                }
            }
        })
        .map_err(|source| ListenError { address, source })?;
    info!(address = %bound, "metrics listener ready");
    Ok(bound)
}

fn answer(mut stream: TcpStream, scrape: &dyn Fn() -> Option<String>) {
    let _ = stream.set_read_timeout(Some(http::IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(http::IO_TIMEOUT));
    let (status, body) = match http::read_request(&mut stream, Transport::Tcp) {
        Err(error) => (error.status, format!("{}\n", error.message)),
        Ok(request) if request.path != "/metrics" => (404, "try /metrics\n".to_owned()),
        Ok(request) if request.method != "GET" && request.method != "HEAD" => {
            (405, "only GET\n".to_owned())
        }
        Ok(_) => match scrape() {
            Some(text) => (200, text),
            None => (503, "xlbd is shutting down\n".to_owned()),
        },
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        http::reason(status),
        body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()));
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// How long a scrape waits for the controller before answering 503.
pub const SCRAPE_WAIT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use xlb_common::Counter;

    use super::*;
    use crate::dataplane::stats::{BackendStats, VipStats};

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn renders_counters_with_bounded_labels_and_zeros() {
        let snapshot = Snapshot {
            actions: vec![(
                "tx".into(),
                Counter {
                    packets: 7,
                    bytes: 700,
                },
            )],
            drops: vec![("fragment".into(), 0), ("no_backend".into(), 3)],
            lb: vec![
                ("flow_hit".into(), 5),
                ("flow_new".into(), 2),
                ("flow_backend_gone".into(), 0),
                ("flow_insert_failed".into(), 0),
                ("flow_replaced".into(), 1),
                ("icmp_echo_replied".into(), 6),
                ("flow_displaced".into(), 3),
            ],
            policy: vec![
                ("flow_not_remembered".into(), 0),
                ("event_sent".into(), 4),
                ("event_lost".into(), 1),
                ("event_suppressed".into(), 0),
            ],
            vips: vec![VipStats {
                name: "web".into(),
                service: "10.0.0.1:80/tcp".into(),
                mode: "l2".into(),
                counter: Counter {
                    packets: 7,
                    bytes: 700,
                },
                backends: vec![
                    BackendStats {
                        name: "a".into(),
                        address: "10.1.0.1".into(),
                        weight: 0,
                        slots: 0,
                        counter: Counter::default(),
                    },
                    BackendStats {
                        name: "b".into(),
                        address: "10.1.0.2".into(),
                        weight: 1,
                        slots: 7,
                        counter: Counter::default(),
                    },
                ],
            }],
        };
        let control = ControlCounts {
            reloads_ok: 2,
            reloads_failed: 1,
            last_success_unix: Some(1_700_000_000),
            api_ok: 4,
            api_failed: 0,
        };
        let table = FlowTableView {
            entries: 1,
            entries_v6: 0,
            capacity: 4096,
            slots: 8192,
            expired: 5,
            evicted: 3,
        };
        let text = render(Some(&snapshot), Some(table), &control, &|vip, backend| {
            let ours = vip == "web" && backend == "10.1.0.1";
            BackendControl {
                drained: ours,
                health: ours.then_some(BackendHealth {
                    up: false,
                    went_down: 2,
                    came_up: 1,
                }),
            }
        });
        let backend = "{vip=\"web\",backend=\"10.1.0.1\"}";
        let expected = [
            ("xlb_xdp_actions_total{action=\"tx\"}".to_owned(), 7.0),
            ("xlb_drops_total{reason=\"fragment\"}".to_owned(), 0.0),
            ("xlb_drops_total{reason=\"no_backend\"}".to_owned(), 3.0),
            ("xlb_flows_new_total".to_owned(), 2.0),
            ("xlb_vip_bytes_total{vip=\"web\"}".to_owned(), 700.0),
            (format!("xlb_backend_packets_total{backend}"), 0.0),
            (format!("xlb_backend_drained{backend}"), 1.0),
            (format!("xlb_backend_up{backend}"), 0.0),
            (format!("xlb_backend_checked{backend}"), 1.0),
            (
                "xlb_backend_health_transitions_total{vip=\"web\",backend=\"10.1.0.1\",to=\"down\"}"
                    .to_owned(),
                2.0,
            ),
            // Not checked: up, unchecked, no transitions.
            ("xlb_backend_up{vip=\"web\",backend=\"10.1.0.2\"}".to_owned(), 1.0),
            ("xlb_backend_checked{vip=\"web\",backend=\"10.1.0.2\"}".to_owned(), 0.0),
            (
                "xlb_backend_health_transitions_total{vip=\"web\",backend=\"10.1.0.2\",to=\"up\"}"
                    .to_owned(),
                0.0,
            ),
            ("xlb_flows_replaced_total".to_owned(), 1.0),
            ("xlb_flows_displaced_total".to_owned(), 3.0),
            ("xlb_flow_table_entries".to_owned(), 1.0),
            ("xlb_flow_table_capacity".to_owned(), 4096.0),
            ("xlb_flow_table_evictions_total".to_owned(), 3.0),
            ("xlb_flow_table_expired_total".to_owned(), 5.0),
            (
                "xlb_config_reloads_total{result=\"failed\"}".to_owned(),
                1.0,
            ),
            ("xlb_api_requests_total{result=\"failed\"}".to_owned(), 0.0),
            (
                "xlb_config_last_reload_success_timestamp_seconds".to_owned(),
                1.7e9,
            ),
            ("xlb_datapath_up".to_owned(), 1.0),
            (
                "xlb_icmp_packets_total{outcome=\"echo_replied\"}".to_owned(),
                6.0,
            ),
        ];
        for (series, value) in expected {
            assert_eq!(sample(&text, &series), Some(value), "{series}\n{text}");
        }
        let rendered = exported_names(&text);
        for name in &rendered {
            assert!(
                names::ALL.contains(&name.as_str()),
                "{name} is not in names::ALL"
            );
        }
        for name in names::ALL {
            assert!(
                rendered.contains(name),
                "{name} is in names::ALL but not rendered"
            );
        }
    }

    /// Metric names in exposition text.
    fn exported_names(text: &str) -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
            .collect()
    }

    /// Every `xlb_*` name the shipped Grafana dashboard queries is one the daemon exports.
    #[test]
    fn dashboard_queries_only_exported_metrics() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../packaging/grafana-dashboard.json"))
                .expect("the dashboard is valid JSON");
        let mut queries = Vec::new();
        collect_queries(&dashboard, &mut queries);
        assert!(queries.len() >= 10, "too few queries found: {queries:?}");
        let mut used = std::collections::BTreeSet::new();
        for query in &queries {
            let mut rest = query.as_str();
            while let Some(at) = rest.find("xlb_") {
                let tail = &rest[at..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                used.insert(tail[..end].to_owned());
                rest = &tail[end..];
            }
        }
        let missing: Vec<&String> = used
            .iter()
            .filter(|name| !names::ALL.contains(&name.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "the dashboard queries metrics xlbd does not export: {missing:?}"
        );
        assert!(used.len() >= 15, "the dashboard uses only {used:?}");
    }

    /// The `expr` of every panel target and the `query` of every template variable.
    fn collect_queries(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => collect_queries(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect_queries(v, out)),
            _ => {}
        }
    }

    #[test]
    fn unreadable_counters_are_left_out_not_faked() {
        let text = render(None, None, &ControlCounts::default(), &|_, _| {
            BackendControl::default()
        });
        assert_eq!(sample(&text, "xlb_datapath_up"), Some(0.0));
        assert!(!text.contains("xlb_drops_total"), "{text}");
    }

    #[test]
    fn listen_addresses() {
        let parse = |text| parse_listen("--metrics-listen", text);
        assert_eq!(parse("9642").unwrap().to_string(), "127.0.0.1:9642");
        assert_eq!(parse("[::1]:1").unwrap().to_string(), "[::1]:1");
        assert_eq!(
            parse("everywhere").unwrap_err(),
            "--metrics-listen everywhere: invalid socket address syntax (expected ADDR:PORT or PORT)"
        );
    }
}
