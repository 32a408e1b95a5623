//! From a request to a typed [`Command`]: match the path, check the method, and parse the body
//! strictly, naming the field at fault when it is wrong.

use serde::de::DeserializeOwned;
use xlb_common::DropReason;

use crate::events::{EventQuery, Verdict};

pub use super::types::Command;
use super::{
    http::Request,
    types::{ApiError, MAX_WEIGHT, SetBackendsRequest, SetWeightRequest, VipSpec},
};

/// The media type every request body must have.
pub const JSON: &str = "application/json";

/// What a path and method name, before the body is looked at.
enum Target {
    Status,
    Events,
    GetPolicy,
    SetPolicy,
    ResetPolicy,
    Reload,
    ListVips,
    AddVip,
    GetVip(String),
    RemoveVip(String),
    SetBackends(String),
    SetWeight(String, String),
    ResetWeight(String, String),
    Drain(String, String),
    Undrain(String, String),
}

impl Target {
    fn takes_body(&self) -> bool {
        matches!(
            self,
            Self::AddVip | Self::SetBackends(_) | Self::SetWeight(..) | Self::SetPolicy
        )
    }
}

/// Maps a request to the command it asks for, or to the error to answer with: 404 for an
/// unknown path, 405 for a wrong method, 400 for a query, a bad body or a body where none is
/// taken, 415 for a body that is not JSON.
pub fn route(req: &Request) -> Result<Command, ApiError> {
    let target = target(req)?;
    if let Some(query) = &req.query
        && !matches!(target, Target::Events)
    {
        return Err(ApiError::bad_request(
            format!("only GET /v1/events takes query parameters (got ?{query})"),
            None,
        ));
    }
    if !target.takes_body() && !req.body.is_empty() {
        return Err(ApiError::bad_request(
            format!("{} {} takes no body", req.method, req.path),
            None,
        ));
    }
    Ok(match target {
        Target::Status => Command::Status,
        Target::Events => Command::Events(event_query(req.query.as_deref().unwrap_or(""))?),
        Target::GetPolicy => Command::GetPolicy,
        Target::SetPolicy => Command::SetPolicy(body(req)?),
        Target::ResetPolicy => Command::ResetPolicy,
        Target::Reload => Command::Reload,
        Target::ListVips => Command::ListVips,
        Target::AddVip => Command::AddVip(body::<VipSpec>(req)?),
        Target::GetVip(name) => Command::GetVip { name },
        Target::RemoveVip(name) => Command::RemoveVip { name },
        Target::SetBackends(vip) => Command::SetBackends {
            vip,
            backends: body::<SetBackendsRequest>(req)?.backends,
        },
        Target::SetWeight(vip, backend) => {
            let SetWeightRequest { weight } = body(req)?;
            if weight > MAX_WEIGHT {
                return Err(ApiError::bad_request(
                    format!("weight: {weight} is out of range 0..={MAX_WEIGHT}"),
                    Some("weight"),
                ));
            }
            Command::SetWeight {
                vip,
                backend,
                weight,
            }
        }
        Target::ResetWeight(vip, backend) => Command::ResetWeight { vip, backend },
        Target::Drain(vip, backend) => Command::Drain { vip, backend },
        Target::Undrain(vip, backend) => Command::Undrain { vip, backend },
    })
}

fn target(req: &Request) -> Result<Target, ApiError> {
    let segments = segments(&req.path)?;
    if segments.iter().any(String::is_empty) {
        return Err(ApiError::not_found(format!("no endpoint {}", req.path)));
    }
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method.as_str();
    let wrong_method =
        |allow: &[&'static str]| Err(ApiError::method_not_allowed(method, &req.path, allow));
    let owned = |s: &&str| (*s).to_owned();
    Ok(match (segments.as_slice(), method) {
        (["v1", "status"], "GET") => Target::Status,
        (["v1", "status"], _) => return wrong_method(&["GET"]),

        (["v1", "events"], "GET") => Target::Events,
        (["v1", "events"], _) => return wrong_method(&["GET"]),

        (["v1", "policy"], "GET") => Target::GetPolicy,
        (["v1", "policy"], "PUT") => Target::SetPolicy,
        (["v1", "policy"], "DELETE") => Target::ResetPolicy,
        (["v1", "policy"], _) => return wrong_method(&["GET", "PUT", "DELETE"]),

        (["v1", "reload"], "POST") => Target::Reload,
        (["v1", "reload"], _) => return wrong_method(&["POST"]),

        (["v1", "vips"], "GET") => Target::ListVips,
        (["v1", "vips"], "POST") => Target::AddVip,
        (["v1", "vips"], _) => return wrong_method(&["GET", "POST"]),

        (["v1", "vips", name], "GET") => Target::GetVip(owned(name)),
        (["v1", "vips", name], "DELETE") => Target::RemoveVip(owned(name)),
        (["v1", "vips", _], _) => return wrong_method(&["GET", "DELETE"]),

        (["v1", "vips", vip, "backends"], "PUT") => Target::SetBackends(owned(vip)),
        (["v1", "vips", _, "backends"], _) => return wrong_method(&["PUT"]),

        (["v1", "vips", vip, "backends", backend, "weight"], "PUT") => {
            Target::SetWeight(owned(vip), owned(backend))
        }
        (["v1", "vips", vip, "backends", backend, "weight"], "DELETE") => {
            Target::ResetWeight(owned(vip), owned(backend))
        }
        (["v1", "vips", _, "backends", _, "weight"], _) => {
            return wrong_method(&["PUT", "DELETE"]);
        }

        (["v1", "vips", vip, "backends", backend, "drain"], "POST") => {
            Target::Drain(owned(vip), owned(backend))
        }
        (["v1", "vips", vip, "backends", backend, "undrain"], "POST") => {
            Target::Undrain(owned(vip), owned(backend))
        }
        (["v1", "vips", _, "backends", _, "drain" | "undrain"], _) => {
            return wrong_method(&["POST"]);
        }

        _ => {
            return Err(ApiError::not_found(format!(
                "no endpoint {} (see docs/api.md)",
                req.path
            )));
        }
    })
}

/// Parses the filters of `GET /v1/events`: `after`, `last`, `type` (drop|forward), `reason`,
/// `vip` (ADDR or ADDR:PORT) and `from` (a CIDR). Anything else is refused.
fn event_query(query: &str) -> Result<EventQuery, ApiError> {
    let mut parsed = EventQuery::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| {
            ApiError::bad_request(format!("{key}: not valid percent-encoded UTF-8"), Some(key))
        })?;
        let bad = |what: &str| {
            ApiError::bad_request(format!("{key}: {value:?} is not {what}"), Some(key))
        };
        match key {
            "after" => parsed.after = Some(value.parse().map_err(|_| bad("a sequence number"))?),
            "last" => parsed.last = Some(value.parse().map_err(|_| bad("a count"))?),
            "type" => {
                parsed.verdict = Some(match value.as_str() {
                    "drop" => Verdict::Drop,
                    "forward" => Verdict::Forward,
                    _ => return Err(bad("drop or forward")),
                });
            }
            "reason" => {
                let names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
                parsed.reason = Some(
                    DropReason::from_name(&value)
                        .ok_or_else(|| bad(&format!("a drop reason ({})", names.join(", "))))?,
                );
            }
            "vip" => parsed.vip = Some(value.parse().map_err(|_| bad("ADDR or ADDR:PORT"))?),
            "from" => parsed.from = Some(value.parse().map_err(|_| bad("a CIDR"))?),
            _ => {
                return Err(ApiError::bad_request(
                    format!(
                        "unknown parameter {key:?}; GET /v1/events takes after, last, type, \
                         reason, vip and from"
                    ),
                    Some(key),
                ));
            }
        }
    }
    Ok(parsed)
}

/// Splits the path into percent-decoded segments; an empty segment matches no endpoint.
fn segments(path: &str) -> Result<Vec<String>, ApiError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(ApiError::not_found(format!("no endpoint {path}")));
    };
    rest.split('/')
        .map(|segment| {
            percent_decode(segment).ok_or_else(|| {
                ApiError::bad_request(
                    format!("path segment {segment:?} is not valid percent-encoded UTF-8"),
                    None,
                )
            })
        })
        .collect()
}

/// Decodes `%XX` escapes; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses a required JSON body into `T`, naming the field at fault on error.
fn body<T: DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    if req.body.is_empty() {
        return Err(ApiError::bad_request(
            format!("{} {} needs a JSON body", req.method, req.path),
            None,
        ));
    }
    match req.content_type.as_deref() {
        Some(JSON) => {}
        Some(other) => {
            return Err(ApiError::unsupported_media_type(format!(
                "body must be {JSON}, not {other}"
            )));
        }
        None => {
            return Err(ApiError::unsupported_media_type(format!(
                "body must be {JSON}: send Content-Type: {JSON}"
            )));
        }
    }
    parse_json(&req.body)
}

/// Parses JSON strictly into `T`: trailing data is an error, and a type error, unknown field or
/// missing field names its path (`backends[0].weight`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| json_error(&error))?;
    deserializer
        .end()
        .map_err(|error| ApiError::bad_request(format!("malformed JSON: {error}"), None))?;
    Ok(value)
}

fn json_error(error: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = error.inner();
    if !inner.is_data() {
        return ApiError::bad_request(format!("malformed JSON: {inner}"), None);
    }
    let path = error.path().to_string();
    let parent = if path == "." { None } else { Some(path) };
    let message = inner.to_string();
    // serde reports a missing field at its parent: add the field's name, so the path names
    // the field itself, as it does for a wrong type or an unknown field.
    let field = match quoted_after(&message, "missing field `") {
        Some(missing) => Some(match parent {
            Some(parent) => format!("{parent}.{missing}"),
            None => missing.to_owned(),
        }),
        None => parent,
    };
    let message = match &field {
        Some(field) => format!("{field}: {message}"),
        None => message,
    };
    ApiError::bad_request(message, field.as_deref())
}

/// The text between `prefix` and the next backtick in `message`.
fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let start = message.find(prefix)? + prefix.len();
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::{
        http::Transport,
        types::{BackendSpec, VipSpec},
    };

    fn request(method: &str, path: &str, body: Option<serde_json::Value>) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: None,
            content_type: body.as_ref().map(|_| JSON.to_owned()),
            body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            transport: Transport::Unix,
        }
    }

    fn routed(method: &str, path: &str, body: Option<serde_json::Value>) -> Command {
        route(&request(method, path, body)).unwrap()
    }

    fn refused(method: &str, path: &str, body: Option<serde_json::Value>) -> ApiError {
        route(&request(method, path, body)).unwrap_err()
    }

    fn web_spec() -> serde_json::Value {
        json!({
            "name": "web", "address": "10.0.0.100", "port": 80, "protocol": "tcp", "mode": "l2",
            "table_size": 65537,
            "backends": [{"address": "10.0.0.11", "mac": "02:00:00:00:00:11", "weight": 100, "name": "be1"}]
        })
    }

    #[test]
    fn every_route_gives_its_command() {
        assert_eq!(routed("GET", "/v1/status", None), Command::Status);
        assert_eq!(routed("GET", "/v1/vips", None), Command::ListVips);
        assert_eq!(
            routed("GET", "/v1/vips/web", None),
            Command::GetVip { name: "web".into() }
        );
        assert_eq!(
            routed("POST", "/v1/vips", Some(web_spec())),
            Command::AddVip(VipSpec {
                name: "web".into(),
                address: "10.0.0.100".into(),
                port: 80,
                protocol: "tcp".into(),
                mode: "l2".into(),
                table_size: Some(65537),
                source_ranges: None,
                backends: vec![BackendSpec {
                    address: "10.0.0.11".into(),
                    mac: Some("02:00:00:00:00:11".into()),
                    weight: Some(100),
                    name: Some("be1".into()),
                    health: None,
                }],
                health: None,
            })
        );
        assert_eq!(
            routed("DELETE", "/v1/vips/web", None),
            Command::RemoveVip { name: "web".into() }
        );
        assert_eq!(
            routed(
                "PUT",
                "/v1/vips/web/backends",
                Some(json!({"backends": [{"address": "10.0.0.12"}]}))
            ),
            Command::SetBackends {
                vip: "web".into(),
                backends: vec![BackendSpec {
                    address: "10.0.0.12".into(),
                    mac: None,
                    weight: None,
                    name: None,
                    health: None,
                }],
            }
        );
        assert_eq!(
            routed(
                "PUT",
                "/v1/vips/web/backends/10.0.0.11/weight",
                Some(json!({"weight": 0}))
            ),
            Command::SetWeight {
                vip: "web".into(),
                backend: "10.0.0.11".into(),
                weight: 0,
            }
        );
        assert_eq!(
            routed("POST", "/v1/vips/web/backends/10.0.0.11/drain", None),
            Command::Drain {
                vip: "web".into(),
                backend: "10.0.0.11".into()
            }
        );
        assert_eq!(
            routed("POST", "/v1/vips/web/backends/10.0.0.11/undrain", None),
            Command::Undrain {
                vip: "web".into(),
                backend: "10.0.0.11".into()
            }
        );
        assert_eq!(routed("POST", "/v1/reload", None), Command::Reload);
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(
            routed("GET", "/v1/vips/my%20web%2Fa", None),
            Command::GetVip {
                name: "my web/a".into()
            }
        );
        assert_eq!(
            routed("POST", "/v1/vips/w/backends/fe80%3A%3A1/drain", None),
            Command::Drain {
                vip: "w".into(),
                backend: "fe80::1".into()
            }
        );
        for bad in ["/v1/vips/%zz", "/v1/vips/%4", "/v1/vips/%ff"] {
            assert_eq!(refused("GET", bad, None).status, 400, "{bad}");
        }
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
        for path in [
            "/",
            "/v1",
            "/v2/status",
            "/v1/status/",
            "/v1/vips/",
            "/v1//vips",
            "/v1/vips/web/backends/a/b/c",
            "/v1/vips/web/backends/a/enable",
        ] {
            assert_eq!(refused("GET", path, None).status, 404, "{path}");
        }
        let cases: [(&str, &str, &[&str]); 7] = [
            ("POST", "/v1/status", &["GET"]),
            ("GET", "/v1/reload", &["POST"]),
            ("DELETE", "/v1/vips", &["GET", "POST"]),
            ("PUT", "/v1/vips/web", &["GET", "DELETE"]),
            ("GET", "/v1/vips/web/backends", &["PUT"]),
            ("POST", "/v1/vips/web/backends/a/weight", &["PUT", "DELETE"]),
            ("PUT", "/v1/vips/web/backends/a/drain", &["POST"]),
        ];
        for (method, path, allow) in cases {
            let error = refused(method, path, None);
            assert_eq!(error.status, 405, "{method} {path}");
            assert_eq!(error.allow, allow, "{method} {path}");
        }
    }

    #[test]
    fn unknown_fields_are_named() {
        let mut spec = web_spec();
        spec["colour"] = json!("blue");
        let error = refused("POST", "/v1/vips", Some(spec));
        assert_eq!(error.status, 400);
        assert_eq!(error.field.as_deref(), Some("colour"));
        assert!(
            error.message.contains("unknown field `colour`"),
            "{error:?}"
        );

        let mut spec = web_spec();
        spec["backends"][0]["wieght"] = json!(1);
        let error = refused("POST", "/v1/vips", Some(spec));
        assert_eq!(error.field.as_deref(), Some("backends[0].wieght"));
    }

    #[test]
    fn wrong_types_and_missing_fields_name_the_path() {
        let mut spec = web_spec();
        spec["backends"][0]["weight"] = json!("heavy");
        let error = refused("POST", "/v1/vips", Some(spec));
        assert_eq!(error.status, 400);
        assert_eq!(error.field.as_deref(), Some("backends[0].weight"));
        assert!(
            error
                .message
                .starts_with("backends[0].weight: invalid type")
        );

        let mut spec = web_spec();
        spec["port"] = json!(70000);
        assert_eq!(
            refused("POST", "/v1/vips", Some(spec)).field.as_deref(),
            Some("port")
        );

        let mut spec = web_spec();
        spec.as_object_mut().unwrap().remove("port");
        assert_eq!(
            refused("POST", "/v1/vips", Some(spec)).field.as_deref(),
            Some("port")
        );

        let error = refused(
            "PUT",
            "/v1/vips/web/backends",
            Some(json!({"backends": [{"weight": 1}]})),
        );
        assert_eq!(error.field.as_deref(), Some("backends[0].address"));

        let error = refused(
            "PUT",
            "/v1/vips/web/backends/a/weight",
            Some(json!({"weight": -1})),
        );
        assert_eq!(error.field.as_deref(), Some("weight"));
        let error = refused(
            "PUT",
            "/v1/vips/web/backends/a/weight",
            Some(json!({"weight": 10001})),
        );
        assert_eq!(
            (error.status, error.field.as_deref()),
            (400, Some("weight"))
        );
    }

    #[test]
    fn malformed_json_and_media_types() {
        let mut req = request("POST", "/v1/vips", None);
        req.body = b"{\"name\": ".to_vec();
        req.content_type = Some(JSON.into());
        let error = route(&req).unwrap_err();
        assert_eq!((error.status, error.field.as_deref()), (400, None));
        assert!(error.message.starts_with("malformed JSON"), "{error:?}");

        req.body = format!("{} {{}}", web_spec()).into_bytes();
        assert_eq!(route(&req).unwrap_err().status, 400, "trailing data");

        req.body = web_spec().to_string().into_bytes();
        req.content_type = Some("text/plain".into());
        assert_eq!(route(&req).unwrap_err().status, 415);
        req.content_type = None;
        assert_eq!(route(&req).unwrap_err().status, 415);

        assert_eq!(refused("POST", "/v1/vips", None).status, 400, "no body");
        assert_eq!(
            refused("POST", "/v1/reload", Some(json!({}))).status,
            400,
            "body where none is taken"
        );
        let mut req = request("GET", "/v1/status", None);
        req.query = Some("verbose=1".into());
        assert_eq!(route(&req).unwrap_err().status, 400);
    }

    fn with_query(query: &str) -> Result<Command, ApiError> {
        let mut req = request("GET", "/v1/events", None);
        req.query = Some(query.to_owned());
        route(&req)
    }

    #[test]
    fn events_take_filters_and_refuse_bad_ones() {
        let Command::Events(query) = with_query(
            "after=7&last=5&type=drop&reason=denied&vip=10.0.0.10%3A80&from=192.0.2.0%2F24",
        )
        .unwrap() else {
            panic!("not an events command");
        };
        assert_eq!(query.after, Some(7));
        assert_eq!(query.last, Some(5));
        assert_eq!(query.verdict, Some(Verdict::Drop));
        assert_eq!(query.reason, Some(DropReason::Denied));
        assert_eq!(query.vip.unwrap().port, Some(80));
        assert_eq!(query.from.unwrap().prefix_len, 24);
        assert_eq!(
            routed("GET", "/v1/events", None),
            Command::Events(EventQuery::default())
        );
        for bad in [
            "type=lost",
            "reason=nope",
            "vip=x",
            "from=10.0.0.1/8",
            "last=-1",
            "colour=red",
        ] {
            let error = with_query(bad).unwrap_err();
            assert_eq!(error.status, 400, "{bad}");
            assert!(error.field.is_some(), "{bad}");
        }
        let mut status = request("GET", "/v1/status", None);
        status.query = Some("x=1".into());
        assert_eq!(route(&status).unwrap_err().status, 400);
    }

    #[test]
    fn policy_routes() {
        assert_eq!(routed("GET", "/v1/policy", None), Command::GetPolicy);
        assert_eq!(routed("DELETE", "/v1/policy", None), Command::ResetPolicy);
        assert_eq!(
            routed("PUT", "/v1/policy", Some(json!({"deny": ["192.0.2.0/24"]}))),
            Command::SetPolicy(crate::api::types::PolicyLists {
                deny: vec!["192.0.2.0/24".into()],
                allow: vec![],
            })
        );
        assert_eq!(
            refused("PUT", "/v1/policy", Some(json!({"denny": []})))
                .field
                .as_deref(),
            Some("denny")
        );
        assert_eq!(refused("POST", "/v1/policy", None).status, 405);
    }
}
