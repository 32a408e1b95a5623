//! What travels over the API: the typed commands a request routes to, the JSON bodies they
//! carry, the views the daemon answers with, and the error every failure becomes.
//!
//! Request bodies are strict (`deny_unknown_fields`): a misspelt field is an error naming it,
//! never a silently ignored key. Only the JSON shape is checked here; whether an address, MAC
//! or protocol name means anything is the controller's question, answered by the config
//! validator.

use serde::{Deserialize, Serialize};

use super::http::Response;

/// Largest backend weight, the same range (`0..=10000`) the config file accepts.
pub const MAX_WEIGHT: u32 = 10_000;

/// One API request, parsed and type-checked, ready for the controller to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `GET /v1/status`: the daemon's state and counters.
    Status,
    /// `GET /v1/events?...`: recent datapath events, filtered.
    Events(crate::events::EventQuery),
    /// `GET /v1/policy`: the policy in force and where its lists come from.
    GetPolicy,
    /// `PUT /v1/policy`: global deny and allow lists set through the API, in place of the
    /// file's.
    SetPolicy(PolicyLists),
    /// `DELETE /v1/policy`: forget the API's lists; the file's apply again.
    ResetPolicy,
    /// `GET /v1/vips`: every VIP with its backends.
    ListVips,
    /// `GET /v1/vips/{name}`: one VIP.
    GetVip {
        /// The VIP's name.
        name: String,
    },
    /// `POST /v1/vips`: add a VIP (201 on success).
    AddVip(VipSpec),
    /// `DELETE /v1/vips/{name}`: remove a VIP.
    RemoveVip {
        /// The VIP's name.
        name: String,
    },
    /// `PUT /v1/vips/{name}/backends`: replace a VIP's whole backend set.
    SetBackends {
        /// The VIP's name.
        vip: String,
        /// The new backend set.
        backends: Vec<BackendSpec>,
    },
    /// `PUT /v1/vips/{name}/backends/{address}/weight`: change one backend's weight.
    SetWeight {
        /// The VIP's name.
        vip: String,
        /// The backend's address, as written in the path.
        backend: String,
        /// The new weight, `0..=MAX_WEIGHT`.
        weight: u32,
    },
    /// `DELETE /v1/vips/{name}/backends/{address}/weight`: forget the weight set through the API;
    /// the backend's configured weight applies again.
    ResetWeight {
        /// The VIP's name.
        vip: String,
        /// The backend's address, as written in the path.
        backend: String,
    },
    /// `POST /v1/vips/{name}/backends/{address}/drain`: stop sending new flows to a backend.
    Drain {
        /// The VIP's name.
        vip: String,
        /// The backend's address, as written in the path.
        backend: String,
    },
    /// `POST /v1/vips/{name}/backends/{address}/undrain`: give a drained backend its weight back.
    Undrain {
        /// The VIP's name.
        vip: String,
        /// The backend's address, as written in the path.
        backend: String,
    },
    /// `POST /v1/reload`: reload the config file, as SIGHUP does.
    Reload,
}

/// A VIP as the API adds it: the same fields as a `[[vip]]` table of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSpec {
    /// Unique name of the VIP.
    pub name: String,
    /// The VIP address, e.g. `"10.0.0.100"`.
    pub address: String,
    /// The port; 0 means every port of the address and protocol.
    pub port: u16,
    /// `"tcp"` or `"udp"`.
    pub protocol: String,
    /// Forwarding mode, `"l2"` or `"ipip"`.
    pub mode: String,
    /// Maglev table size (a prime); the config's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
    /// Sources allowed to reach the VIP (IPv4 CIDRs); every source when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ranges: Option<Vec<String>>,
    /// The backends.
    pub backends: Vec<BackendSpec>,
    /// Health-check settings: the keys of a config file's `[vip.health]`, checked by the same
    /// validator; defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
}

/// The keys of a `[vip.health]` (or `[vip.backend.health]`) table, as JSON values; the
/// config validator checks them (an unknown key or a wrong type is a 400 naming it).
pub type HealthSpec = std::collections::BTreeMap<String, serde_json::Value>;

/// A backend as the API sets it: the same fields as a `[[vip.backend]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// The backend's address.
    pub address: String,
    /// Its MAC address (`"02:00:00:00:00:01"`); required in L2 mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Its weight; the config's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// A name for humans; the address when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Health-check settings of this backend over the VIP's (`[vip.backend.health]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
}

/// Body of `PUT /v1/vips/{name}/backends`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetBackendsRequest {
    /// The new backend set.
    pub backends: Vec<BackendSpec>,
}

/// Body of `PUT /v1/vips/{name}/backends/{address}/weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetWeightRequest {
    /// The new weight, `0..=MAX_WEIGHT`.
    pub weight: u32,
}

/// Answer of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// The daemon's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_seconds: u64,
    /// The interface the load balancer is attached to.
    pub interface: String,
    /// How it is attached (`"native"`, `"generic"`, ...).
    pub attach_mode: String,
    /// Number of changes applied since start; every successful change adds one.
    pub generation: u64,
    /// The config file.
    pub config_path: String,
    /// The latest reload (or the start-up load), if any.
    pub last_reload: Option<ReloadView>,
    /// Reloads that were applied.
    pub reloads_ok: u64,
    /// Reloads that were refused.
    pub reloads_failed: u64,
    /// API requests answered with success.
    pub api_requests_ok: u64,
    /// API requests answered with an error.
    pub api_requests_failed: u64,
    /// Number of VIPs.
    pub vips: usize,
    /// Number of backends over all VIPs.
    pub backends: usize,
    /// Health checks: backends checked, up and down, transitions, probes.
    #[serde(default)]
    pub health: HealthStatusView,
    /// The flow tables: entries (counted at most 5 s ago) and xlbd's removals; absent when the
    /// tables could not be read.
    #[serde(default)]
    pub flow_table: Option<FlowTableStatusView>,
    /// Packets per final XDP action, by action name.
    pub actions: Vec<(String, u64)>,
    /// Packets per drop reason, by reason name.
    pub drops: Vec<(String, u64)>,
}

/// The flow tables in `GET /v1/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTableStatusView {
    /// Flows in the IPv4 table (slots in use).
    pub entries: u32,
    /// Entries in the IPv6 table.
    pub entries_v6: u32,
    /// The flows each table is sized for (`limits.flow_table_size`), the IPv6 table's most
    /// entries.
    pub capacity: u32,
    /// Slots of the IPv4 table (twice the capacity, in sets of 4).
    #[serde(default)]
    pub slots: u32,
    /// Entries removed for being idle longer than the timeout, since xlbd started.
    pub expired: u64,
    /// IPv6 entries removed, least recently seen first, from a table more than 90% full.
    pub evicted: u64,
    /// `limits.flow_idle_timeout`, seconds.
    pub idle_timeout_seconds: u32,
}

/// One reload: where it came from and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadView {
    /// Whether it was applied.
    pub ok: bool,
    /// What triggered it: `"startup"`, `"file"`, `"signal"` or `"api"`.
    pub source: String,
    /// When it happened, seconds since the Unix epoch.
    pub unix_time: u64,
    /// Why it was refused.
    pub error: Option<String>,
    /// What it changed, when applied.
    pub changed: Option<ChangeView>,
}

/// The size of one applied change, counted in VIPs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeView {
    /// VIPs added.
    pub added: usize,
    /// VIPs whose backends, weights or table changed.
    pub changed: usize,
    /// VIPs removed.
    pub removed: usize,
    /// VIPs left untouched.
    pub unchanged: usize,
    /// How long applying took, in microseconds.
    pub micros: u64,
}

/// One VIP as the daemon runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipView {
    /// Its name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// Its port (0: every port).
    pub port: u16,
    /// `"tcp"` or `"udp"`.
    pub protocol: String,
    /// `"l2"` or `"ipip"`.
    pub mode: String,
    /// Where it was defined: `"file"` or `"api"`.
    pub source: String,
    /// Its Maglev table size.
    pub table_size: u32,
    /// Packets forwarded for it.
    pub packets: u64,
    /// Bytes forwarded for it.
    pub bytes: u64,
    /// Health of its backends that have weight: `"unchecked"`, `"up"`, `"degraded"` (some
    /// down), `"all down (keep)"` or `"all down (drop)"` (its `on_all_down` policy at work).
    #[serde(default)]
    pub health: String,
    /// Its backends.
    pub backends: Vec<BackendView>,
}

/// One backend of a VIP as the daemon runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    /// Its name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// Its MAC address.
    pub mac: String,
    /// The weight in force (0 while drained).
    pub weight: u32,
    /// The weight it has when not drained.
    pub configured_weight: u32,
    /// `"active"` or `"drained"`.
    pub state: String,
    /// Slots it holds in the VIP's Maglev table.
    pub slots: u32,
    /// Packets forwarded to it.
    pub packets: u64,
    /// Bytes forwarded to it.
    pub bytes: u64,
    /// Its health; absent when it is not checked (check `"none"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<BackendHealthView>,
}

/// What is known of one checked backend's health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHealthView {
    /// `"up"` or `"down"`.
    pub health: String,
    /// The last transition's reason (`"starting"` before any), e.g. `"connection refused (3
    /// failures in a row)"`.
    pub reason: String,
    /// When the health last changed (Unix seconds), 0 if it never did.
    pub since_unix: u64,
    /// Transitions to down since the backend was first checked.
    pub went_down: u64,
    /// Transitions to up since then.
    pub came_up: u64,
}

/// Health checks of the whole daemon, for `xlb status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatusView {
    /// Backends being checked.
    pub checked: u64,
    /// Of those, up.
    pub up: u64,
    /// Of those, down.
    pub down: u64,
    /// Transitions to down since start.
    pub went_down: u64,
    /// Transitions to up since start.
    pub came_up: u64,
    /// Probes started.
    pub probes_started: u64,
    /// Probes that succeeded.
    pub probes_succeeded: u64,
    /// Probes that failed (timeouts included).
    pub probes_failed: u64,
    /// Probes not run for a reason on the balancer's side (file descriptors, ports, memory).
    pub local_errors: u64,
    /// Why encapsulated probes cannot be sent, if they cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encap_error: Option<String>,
    /// Probe packets the tc encapsulator handled, by outcome (`encapsulated`, `passed`,
    /// `errors`); empty while no probe is encapsulated.
    #[serde(default)]
    pub encap_packets: Vec<(String, u64)>,
}

/// Answer of `GET /v1/vips`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipListView {
    /// Every VIP.
    pub vips: Vec<VipView>,
}

/// Answer of every command that changes something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeResult {
    /// Always true: a refused change is an error response instead.
    pub ok: bool,
    /// The generation after the change.
    pub generation: u64,
    /// What the change did.
    pub change: ChangeView,
}

/// Why a request failed: an HTTP status, a message for the operator and, when one field of the
/// body is to blame, its path (`backends[0].weight`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status, 4xx or 5xx.
    pub status: u16,
    /// What went wrong, for the operator.
    pub message: String,
    /// The body field at fault, if any.
    pub field: Option<String>,
    /// For 405: the methods the path accepts (sent as an `Allow` header and an `allow` list).
    pub allow: Vec<&'static str>,
}

impl ApiError {
    /// An error with the given status and message.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
            allow: Vec::new(),
        }
    }

    /// 400: the request is malformed or a field is invalid.
    pub fn bad_request(message: impl Into<String>, field: Option<&str>) -> Self {
        Self {
            field: field.map(str::to_owned),
            ..Self::new(400, message)
        }
    }

    /// 401: the TCP listener needs a valid bearer token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, message)
    }

    /// 404: no such endpoint, VIP or backend.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }

    /// 405: the path exists but not with this method.
    pub fn method_not_allowed(method: &str, path: &str, allow: &[&'static str]) -> Self {
        Self {
            allow: allow.to_vec(),
            ..Self::new(
                405,
                format!(
                    "method {method} is not allowed on {path} (allowed: {})",
                    allow.join(", ")
                ),
            )
        }
    }

    /// 408: the client was too slow to send its request.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(408, message)
    }

    /// 409: the request contradicts the current state (a VIP that already exists, ...).
    pub fn conflict(message: impl Into<String>, field: Option<&str>) -> Self {
        Self {
            field: field.map(str::to_owned),
            ..Self::new(409, message)
        }
    }

    /// 411: a body was sent without `Content-Length`.
    pub fn length_required(message: impl Into<String>) -> Self {
        Self::new(411, message)
    }

    /// 413: the body is larger than the API accepts.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(413, message)
    }

    /// 415: a body that is not `application/json`.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, message)
    }

    /// 431: the request head is too large or has too many headers.
    pub fn header_too_large(message: impl Into<String>) -> Self {
        Self::new(431, message)
    }

    /// 500: the daemon failed (a map update error, ...).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }

    /// 503: the daemon cannot take the request now (too many connections, ...).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, message)
    }
}

impl From<ApiError> for Response {
    fn from(error: ApiError) -> Self {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), error.message.into());
        if let Some(field) = error.field {
            body.insert("field".into(), field.into());
        }
        if !error.allow.is_empty() {
            body.insert("allow".into(), error.allow.into());
        }
        Response {
            status: error.status,
            body: body.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn errors_become_json_with_the_field_only_when_known() {
        let response = Response::from(ApiError::bad_request("bad weight", Some("weight")));
        assert_eq!(response.status, 400);
        assert_eq!(
            response.body,
            json!({"error": "bad weight", "field": "weight"})
        );
        let response = Response::from(ApiError::not_found("no VIP named web"));
        assert_eq!(response.body, json!({"error": "no VIP named web"}));
        let response = Response::from(ApiError::method_not_allowed(
            "PUT",
            "/v1/vips",
            &["GET", "POST"],
        ));
        assert_eq!(response.status, 405);
        assert_eq!(response.body["allow"], json!(["GET", "POST"]));
    }

    #[test]
    fn optional_spec_fields_may_be_left_out_both_ways() {
        let spec: VipSpec = serde_json::from_value(json!({
            "name": "web", "address": "10.0.0.100", "port": 80, "protocol": "tcp", "mode": "l2",
            "backends": [{"address": "10.0.0.11"}]
        }))
        .unwrap();
        assert_eq!(spec.table_size, None);
        assert_eq!(spec.backends[0].weight, None);
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["backends"][0], json!({"address": "10.0.0.11"}));
        assert!(back.get("table_size").is_none());
    }
}

/// Global deny and allow lists (CIDRs as text), as `PUT /v1/policy` takes them and the API
/// state keeps them. Validated by the same code as the file's `[policy]` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyLists {
    /// Denied sources.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Allowed sources (when not empty for a family, the only ones let in).
    #[serde(default)]
    pub allow: Vec<String>,
}

/// Answer of `GET /v1/policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    /// `file` or `api`: where the global lists in force come from.
    pub lists_source: String,
    /// Denied sources in force.
    pub deny: Vec<String>,
    /// Allowed sources in force.
    pub allow: Vec<String>,
    /// `drop` or `pass`.
    pub unserved: String,
    /// `drop` or `pass`.
    pub ipv4_options: String,
    /// `drop` or `pass`.
    pub fragments: String,
    /// `reply`, `pass` or `drop`: ICMP echo requests to a VIP address.
    pub icmp_echo: String,
    /// `drop` or `pass`: other ICMP to a VIP address that is not about a VIP flow.
    pub icmp_other: String,
    /// The MTU encapsulation keeps to, as the datapath holds it (`encap.mtu`, else the
    /// interface's).
    pub encap_mtu: u16,
    /// `icmp` or `drop`: packets encapsulation would make larger than `encap_mtu`.
    pub on_too_big: String,
    /// (new connections per second, burst) per source, if limited.
    pub rate_limit: Option<(u32, u32)>,
    /// New flows per second and CPU the flow table takes, if capped.
    pub flow_insert_rate: Option<u32>,
    /// ICMP messages per second and CPU the datapath sends (`policy.icmp_rate_limit`); 0 =
    /// no limit.
    #[serde(default)]
    pub icmp_rate_limit: u32,
    /// VIPs with source ranges: (VIP name, ranges).
    pub vip_source_ranges: Vec<(String, Vec<String>)>,
    /// Policy and event counters (`flow_not_remembered`, `event_lost`, ...).
    pub counters: Vec<(String, u64)>,
}
