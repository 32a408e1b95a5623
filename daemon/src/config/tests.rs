//! End-to-end tests of `Config::parse`: whole files in, configs or located diagnostics out.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use super::*;
use crate::health::Check;

const ORIGIN: &str = "test.toml";

fn parse(text: &str) -> Config {
    Config::parse(text, ORIGIN).unwrap_or_else(|error| panic!("config rejected:\n{error}"))
}

/// The diagnostics of an invalid config, as `line:column: field` (no origin, no message).
fn locations(text: &str) -> Vec<String> {
    diagnostics(text)
        .iter()
        .map(|d| format!("{}:{}: {}", d.line, d.column, d.field))
        .collect()
}

fn diagnostics(text: &str) -> Vec<Diagnostic> {
    match Config::parse(text, ORIGIN) {
        Ok(config) => panic!("config accepted: {config:?}"),
        Err(ConfigError::Invalid { diagnostics }) => {
            assert!(!diagnostics.is_empty());
            diagnostics
        }
        Err(error) => panic!("unexpected error {error:?}"),
    }
}

/// The diagnostics of an invalid config, as `line:column: field: message` (no origin).
fn errors(text: &str) -> Vec<String> {
    diagnostics(text)
        .iter()
        .map(|d| format!("{}:{}: {}: {}", d.line, d.column, d.field, d.message))
        .collect()
}

/// The only diagnostic of an invalid config, as `line:column: field: message`.
fn only_error(text: &str) -> String {
    let mut errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors.remove(0)
}

/// Asserts the only diagnostic starts with `prefix`, for messages that list serde's expectations.
fn assert_only_error_starts(text: &str, prefix: &str) {
    let error = only_error(text);
    assert!(error.starts_with(prefix), "{error}");
}

/// A valid one-VIP l2 config; tests change a line of it to get exactly one error.
/// Line numbers: 1 [interface], 2 name, 4 [[vip]], 5 name, 6 address, 7 port, 8 protocol,
/// 9 mode, 11 [[vip.backend]], 12 address, 13 mac.
const BASE: &str = r#"[interface]
name = "eth0"

[[vip]]
name = "web"
address = "10.0.0.10"
port = 80
protocol = "tcp"
mode = "l2"

[[vip.backend]]
address = "10.0.0.21"
mac = "02:00:00:00:01:01"
"#;

fn base_with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1)
}

const FULL: &str = r#"
[interface]
name = "ens1f0"
attach_mode = "generic"

[limits]
flow_table_size = 1_048_576
max_vips = 16
max_backends = 256
maglev_slots = 1000000

[encap]
source_prefix = "10.200.0.0/24"
next_hop_mac = "02:00:00:00:00:fe"

[[vip]]
name = "web"
address = "10.100.0.10"
port = 443
protocol = "tcp"
mode = "l2"
table_size = 251

  [[vip.backend]]
  address = "10.100.0.21"
  mac = "02:00:00:00:01:01"
  weight = 50
  name = "web-1"

  [[vip.backend]]
  address = "10.100.0.22"
  mac = "02:00:00:00:01:02"
  weight = 0

[[vip]]
name = "dns"
address = "10.100.0.11"
port = 0
protocol = "udp"
mode = "ipip"

  [[vip.backend]]
  address = "192.168.7.1"

  [[vip.backend]]
  address = "192.168.7.2"
  mac = "02:00:00:00:02:02"
"#;

/// Default health settings but for the check, port and path.
fn health(check: Option<Check>, port: u16, via: ProbeVia) -> HealthConfig {
    HealthConfig {
        check,
        port,
        interval_ms: 2000,
        timeout_ms: 1000,
        rise: 2,
        fall: 3,
        via,
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[test]
fn full_config_reads_into_the_exact_struct() {
    let expected = Config {
        interface: InterfaceConfig {
            name: "ens1f0".to_owned(),
            attach_mode: AttachMode::Generic,
        },
        limits: Limits {
            flow_table_size: 1_048_576,
            max_vips: 16,
            max_backends: 256,
            maglev_slots: 1_000_000,
            ..Limits::default()
        },
        encap: EncapConfig {
            source_prefix: Ipv4Net {
                addr: Ipv4Addr::new(10, 200, 0, 0),
                prefix_len: 24,
            },
            source_prefix_v6: None,
            next_hop_mac: Some(MacAddr([2, 0, 0, 0, 0, 0xfe])),
            ..EncapConfig::default()
        },
        vips: vec![
            VipConfig {
                name: "web".to_owned(),
                address: v4(10, 100, 0, 10),
                port: 443,
                protocol: Protocol::Tcp,
                mode: ForwardMode::L2,
                table_size: 251,
                health: health(Some(Check::Tcp), 443, ProbeVia::Direct),
                on_all_down: AllDown::Keep,
                backends: vec![
                    BackendConfig {
                        name: "web-1".to_owned(),
                        address: v4(10, 100, 0, 21),
                        mac: MacAddr([2, 0, 0, 0, 1, 1]),
                        weight: 50,
                        health: None,
                    },
                    BackendConfig {
                        name: "10.100.0.22".to_owned(),
                        address: v4(10, 100, 0, 22),
                        mac: MacAddr([2, 0, 0, 0, 1, 2]),
                        weight: 0,
                        health: None,
                    },
                ],
                source_ranges: None,
            },
            VipConfig {
                name: "dns".to_owned(),
                address: v4(10, 100, 0, 11),
                port: 0,
                protocol: Protocol::Udp,
                mode: ForwardMode::Ipip,
                table_size: 65537,
                // UDP: no probe unless one is configured.
                health: health(None, 0, ProbeVia::Encap),
                on_all_down: AllDown::Keep,
                backends: vec![
                    BackendConfig {
                        name: "192.168.7.1".to_owned(),
                        address: v4(192, 168, 7, 1),
                        // No `mac`: falls back on encap.next_hop_mac.
                        mac: MacAddr([2, 0, 0, 0, 0, 0xfe]),
                        weight: 100,
                        health: None,
                    },
                    BackendConfig {
                        name: "192.168.7.2".to_owned(),
                        address: v4(192, 168, 7, 2),
                        mac: MacAddr([2, 0, 0, 0, 2, 2]),
                        weight: 100,
                        health: None,
                    },
                ],
                source_ranges: None,
            },
        ],
        policy: Default::default(),
        events: Default::default(),
    };
    assert_eq!(parse(FULL), expected);
}

#[test]
fn defaults_fill_optional_fields_and_sections() {
    let config = parse(BASE);
    assert_eq!(config.interface.attach_mode, AttachMode::Auto);
    assert_eq!(
        config.limits,
        Limits {
            flow_table_size: 262_144,
            max_vips: 1024,
            max_backends: 65_536,
            maglev_slots: 4_194_304,
            policy_prefixes: 65_536,
            rate_limit_sources: 65_536,
            flow_idle_timeout: 300,
        }
    );
    assert_eq!(config.encap.source_prefix.to_string(), "172.16.0.0/16");
    assert_eq!(config.encap.next_hop_mac, None);
    let vip = &config.vips[0];
    assert_eq!(vip.table_size, crate::maglev::DEFAULT_TABLE_SIZE);
    assert_eq!(vip.backends[0].weight, 100);
    assert_eq!(vip.backends[0].name, "10.0.0.21");
}

#[test]
fn partial_sections_keep_defaults_for_the_rest() {
    let text = format!(
        "{BASE}\n[limits]\nmax_vips = 8\n\n[encap]\nnext_hop_mac = \"02:00:00:00:00:01\"\n"
    );
    let config = parse(&text);
    assert_eq!(config.limits.max_vips, 8);
    assert_eq!(config.limits.flow_table_size, 262_144);
    assert_eq!(config.encap.source_prefix.to_string(), "172.16.0.0/16");
    assert_eq!(config.encap.next_hop_mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
}

#[test]
fn a_config_without_vips_is_valid() {
    let config = parse("[interface]\nname = \"eth0\"\n");
    assert!(config.vips.is_empty());
}

#[test]
fn serializes_to_json_with_readable_values() {
    let json = serde_json::to_value(parse(FULL)).unwrap();
    assert_eq!(json["interface"]["attach_mode"], "generic");
    assert_eq!(json["encap"]["source_prefix"], "10.200.0.0/24");
    assert_eq!(json["encap"]["next_hop_mac"], "02:00:00:00:00:fe");
    assert_eq!(json["vips"][1]["protocol"], "udp");
    assert_eq!(json["vips"][1]["mode"], "ipip");
    assert_eq!(json["vips"][0]["address"], "10.100.0.10");
    assert_eq!(json["vips"][0]["backends"][0]["mac"], "02:00:00:00:01:01");
}

#[test]
fn enum_helpers() {
    assert_eq!(Protocol::Tcp.number(), 6);
    assert_eq!(Protocol::Udp.number(), 17);
    assert_eq!(Protocol::Udp.to_string(), "udp");
    assert_eq!(ForwardMode::L2.to_string(), "l2");
    assert_eq!(ForwardMode::Ipip.to_string(), "ipip");
    assert_eq!(AttachMode::Native.to_string(), "native");
}

// ----- syntax, types and unknown keys: one diagnostic from the TOML layer -----

#[test]
fn syntax_error_gives_line_and_column() {
    assert_eq!(
        only_error(&base_with("port = 80", "port = 8 0")),
        "7:8: (syntax): string values must be quoted, expected literal string"
    );
    let diagnostics = diagnostics("[interface\nname = \"eth0\"\n");
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0].line, 1);
    assert_eq!(diagnostics[0].field, "(syntax)");
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    assert_eq!(
        only_error(&base_with("port = 80", "port = 80\nport = 81")),
        "8:1: (syntax): duplicate key"
    );
}

#[test]
fn unknown_top_level_key_is_named_with_its_line() {
    let text = format!("{BASE}\n[metrics]\nport = 9100\n");
    assert_eq!(
        only_error(&text),
        "15:2: metrics: unknown field `metrics`, expected one of `interface`, `limits`, \
         `encap`, `policy`, `events`, `vip`"
    );
}

#[test]
fn unknown_key_in_vip_is_named_with_its_line() {
    let text = base_with("port = 80", "port = 80\nsheduler = \"rr\"");
    assert_only_error_starts(
        &text,
        "8:1: vip[0].sheduler: unknown field `sheduler`, expected one of",
    );
}

#[test]
fn unknown_key_in_backend_is_named_with_its_line() {
    let text = base_with("mac = ", "wieght = 5\nmac = ");
    assert_only_error_starts(
        &text,
        "13:1: vip[0].backend[0].wieght: unknown field `wieght`",
    );
}

#[test]
fn unknown_key_in_interface_and_limits() {
    assert_only_error_starts(
        &base_with("name = \"eth0\"", "name = \"eth0\"\nqueues = 4"),
        "3:1: interface.queues: unknown field `queues`",
    );
    assert_only_error_starts(
        &format!("{BASE}[limits]\nflows = 5\n"),
        "15:1: limits.flows: unknown field `flows`",
    );
}

#[test]
fn wrong_type_names_the_field() {
    assert_eq!(
        only_error(&base_with("port = 80", "port = \"80\"")),
        "7:8: vip[0].port: invalid type: string \"80\", expected i64"
    );
    assert_only_error_starts(
        &base_with("mac = \"02:00:00:00:01:01\"", "mac = 2"),
        "13:7: vip[0].backend[0].mac: invalid type: integer `2`",
    );
}

#[test]
fn wrong_type_in_inline_tables_names_the_field() {
    let text = "interface = { name = \"eth0\" }\nvip = [{ name = \"a\", backend = [{ weight = \"x\" }] }]\n";
    assert_only_error_starts(text, "2:44: vip[0].backend[0].weight: invalid type");
}

// ----- semantic errors: located at the offending value -----

#[test]
fn missing_interface_section() {
    let text = BASE.replace("[interface]\nname = \"eth0\"\n", "");
    assert_eq!(
        only_error(&text),
        "1:1: interface: missing required section [interface]"
    );
}

#[test]
fn missing_required_fields_point_at_their_table() {
    let text = BASE
        .replace("name = \"eth0\"\n", "")
        .replace("port = 80\n", "")
        .replace("address = \"10.0.0.21\"\n", "");
    assert_eq!(
        locations(&text),
        [
            "1:1: interface.name",
            "3:1: vip[0].port",
            "9:1: vip[0].backend[0].address"
        ]
    );
    assert_eq!(
        diagnostics(&text)[1].message,
        "missing required field `port`"
    );
}

#[test]
fn every_missing_vip_field_is_reported() {
    let text = "[interface]\nname = \"eth0\"\n[[vip]]\n[[vip.backend]]\naddress = \"10.0.0.1\"\n";
    assert_eq!(
        locations(text),
        [
            "3:1: vip[0].name",
            "3:1: vip[0].address",
            "3:1: vip[0].port",
            "3:1: vip[0].protocol",
            "3:1: vip[0].mode",
        ]
    );
}

#[test]
fn bad_interface_name_and_attach_mode() {
    assert_eq!(
        only_error(&base_with("\"eth0\"", "\"eth0 \"")),
        "2:8: interface.name: \"eth0 \" is not a valid interface name: 1 to 15 bytes, not `.` \
         or `..`, without `/`, `:` or whitespace"
    );
    assert_eq!(
        locations(&base_with("\"eth0\"", "\"a-very-long-name0\"")),
        ["2:8: interface.name"]
    );
    assert_eq!(
        only_error(&base_with("\"eth0\"", "\"eth0\"\nattach_mode = \"skb\"")),
        "3:15: interface.attach_mode: unknown attach mode \"skb\"; accepted values: \
         \"native\", \"generic\", \"auto\""
    );
}

#[test]
fn bad_vip_address() {
    let cases = [
        ("\"10.0.0\"", "`10.0.0` is not an IPv4 or IPv6 address"),
        (
            "\"0.0.0.0\"",
            "0.0.0.0 (unspecified) cannot be a VIP address",
        ),
        ("\"::\"", ":: (unspecified) cannot be a VIP address"),
        (
            "\"ff02::1\"",
            "ff02::1 is a multicast address and cannot be a VIP address",
        ),
        (
            "\"224.0.0.1\"",
            "224.0.0.1 is a multicast address and cannot be a VIP address",
        ),
        (
            "\"255.255.255.255\"",
            "255.255.255.255 (broadcast) cannot be a VIP address",
        ),
    ];
    for (value, message) in cases {
        assert_eq!(
            only_error(&base_with("\"10.0.0.10\"", value)),
            format!("6:11: vip[0].address: {message}")
        );
    }
}

#[test]
fn bad_backend_address() {
    assert_eq!(
        only_error(&base_with("\"10.0.0.21\"", "\"web-1\"")),
        "12:11: vip[0].backend[0].address: `web-1` is not an IPv4 or IPv6 address"
    );
}

#[test]
fn ipv6_vips_and_backends() {
    // An IPv6 VIP with IPv6 backends in mode l2: valid.
    let v6 = base_with("\"10.0.0.10\"", "\"2001:db8::10\"").replacen(
        "\"10.0.0.21\"",
        "\"2001:db8::21\"",
        1,
    );
    let config = Config::parse(&v6, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.vips[0].address,
        "2001:db8::10".parse::<IpAddr>().unwrap()
    );
    assert_eq!(config.encap.source_prefix_v6, None);

    // An IPv6 VIP with an IPv4 backend: nothing carries IPv6 in IPv4.
    assert_eq!(
        only_error(&base_with("\"10.0.0.10\"", "\"2001:db8::10\"")),
        "12:11: vip[0].backend[0].address: IPv6 VIP 2001:db8::10 cannot have the IPv4 backend \
         10.0.0.21: no encapsulation carries IPv6 in IPv4"
    );
    // Mode l2 needs the VIP's family.
    assert_eq!(
        only_error(&base_with("\"10.0.0.21\"", "\"2001:db8::21\"")),
        "12:11: vip[0].backend[0].address: mode \"l2\" needs backends of the VIP's address \
         family: IPv4 VIP 10.0.0.10, IPv6 backend 2001:db8::21 (mode \"ipip\" sends \
         IPv4-in-IPv6)"
    );
    // An IPv6 VIP takes IPv6 source ranges, and refuses IPv4 ones.
    let ranges = |list: &str| {
        v6.replacen(
            "mode = \"l2\"",
            &format!("mode = \"l2\"\nsource_ranges = [{list}]"),
            1,
        )
    };
    let config = Config::parse(
        &ranges("\"2001:db8:1::/48\", \"2001:db8:2::7/128\""),
        "test.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let texts: Vec<String> = config.vips[0]
        .source_ranges
        .as_ref()
        .expect("ranges kept")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(texts, ["2001:db8:1::/48", "2001:db8:2::7/128"]);
    assert_eq!(
        only_error(&ranges("\"2001:db8:1::/48\", \"192.0.2.0/24\"")),
        "10:37: vip[0].source_ranges[1]: 192.0.2.0/24 is IPv4 but the VIP 2001:db8::10 is IPv6: a \
         VIP's source ranges are of its own family (only those sources can reach it)"
    );
}

#[test]
fn ipv6_backends_in_mode_ipip() {
    let ipip = |encap: &str, health: &str| {
        format!(
            "[interface]\nname = \"eth0\"\n{encap}\n[[vip]]\nname = \"web\"\n\
             address = \"10.0.0.10\"\nport = 80\nprotocol = \"tcp\"\nmode = \"ipip\"\n\
             {health}\n[[vip.backend]]\naddress = \"2001:db8::21\"\nmac = \"02:00:00:00:01:01\"\n"
        )
    };
    let encap = "[encap]\nsource_prefix_v6 = \"fd00:16::/64\"";
    let direct = "[vip.health]\nvia = \"direct\"";
    let config = Config::parse(&ipip(encap, direct), "test.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.encap.source_prefix_v6,
        Some("fd00:16::/64".parse().unwrap())
    );
    // Without the IPv6 outer source.
    assert_eq!(
        only_error(&ipip("", direct)),
        "12:1: vip[0].backend[0].address: IPv6 backend 2001:db8::21 in mode \"ipip\" needs \
         encap.source_prefix_v6 (the outer IPv6 source of IPv6-in-IPv6 and IPv4-in-IPv6 \
         packets), which is not set"
    );
    // Probes through the encapsulation (the default in mode ipip) are IPv4-only.
    assert_eq!(
        only_error(&ipip(encap, "")),
        "12:1: vip[0].backend[0].health.via: IPv6 backend 2001:db8::21: health checks through \
         the encapsulation (via = \"encap\", the default in mode \"ipip\") are IPv4-only; set \
         via = \"direct\" in [vip.health] or the backend's health"
    );
    // The IPv6 prefix: an IPv6 network of /32 or longer.
    for (value, message) in [
        (
            "\"10.0.0.0/8\"",
            "an IPv6 prefix is needed here (the IPv4 one is encap.source_prefix)",
        ),
        (
            "\"fd00::/16\"",
            "prefix length /16 is out of range 32..=128",
        ),
        (
            "\"fd00::1/64\"",
            "`fd00::1/64` has host bits set; the network is fd00::/64",
        ),
    ] {
        let text = ipip(&format!("[encap]\nsource_prefix_v6 = {value}"), direct);
        assert_eq!(
            only_error(&text),
            format!("4:20: encap.source_prefix_v6: {message}")
        );
    }
}

#[test]
fn bad_port_protocol_and_mode() {
    assert_eq!(
        only_error(&base_with("port = 80", "port = 65536")),
        "7:8: vip[0].port: 65536 is out of range 0..=65535"
    );
    assert_eq!(
        only_error(&base_with("port = 80", "port = -1")),
        "7:8: vip[0].port: -1 is out of range 0..=65535"
    );
    assert_eq!(
        only_error(&base_with("\"tcp\"", "\"sctp\"")),
        "8:12: vip[0].protocol: unknown protocol \"sctp\"; accepted values: \"tcp\", \"udp\""
    );
    assert_eq!(
        only_error(&base_with("\"l2\"", "\"nat\"")),
        "9:8: vip[0].mode: unknown mode \"nat\"; accepted values: \"l2\", \"ipip\""
    );
    // Keywords are exact: no case folding.
    assert_eq!(
        locations(&base_with("\"tcp\"", "\"TCP\"")),
        ["8:12: vip[0].protocol"]
    );
}

#[test]
fn bad_names() {
    assert_eq!(
        only_error(&base_with("\"web\"", "\"web site\"")),
        "5:8: vip[0].name: \"web site\" is not a valid name: 1 to 63 characters of A-Z, a-z, \
         0-9, `_`, `.` and `-`"
    );
    assert_eq!(
        locations(&base_with("\"web\"", "\"\"")),
        ["5:8: vip[0].name"]
    );
    let long = format!("\"{}\"", "a".repeat(64));
    assert_eq!(
        locations(&base_with("\"web\"", &long)),
        ["5:8: vip[0].name"]
    );
    let max = format!("\"{}\"", "a".repeat(63));
    parse(&base_with("\"web\"", &max));
    assert_eq!(
        locations(&base_with("mac = ", "name = \"web/1\"\nmac = ")),
        ["13:8: vip[0].backend[0].name"]
    );
}

#[test]
fn bad_macs() {
    let cases = [
        (
            "\"02:00:00:00:01\"",
            "`02:00:00:00:01` is not a MAC address (expected six hex octets like 02:00:00:00:00:01)",
        ),
        (
            "\"01:00:5e:00:00:01\"",
            "01:00:5e:00:00:01 is a multicast MAC address; a unicast MAC is required",
        ),
        (
            "\"FF:FF:FF:FF:FF:FF\"",
            "ff:ff:ff:ff:ff:ff is the broadcast MAC address; a unicast MAC is required",
        ),
        (
            "\"00:00:00:00:00:00\"",
            "00:00:00:00:00:00 is not a usable MAC address",
        ),
    ];
    for (value, message) in cases {
        assert_eq!(
            only_error(&base_with("\"02:00:00:00:01:01\"", value)),
            format!("13:7: vip[0].backend[0].mac: {message}")
        );
    }
    let text = format!("{BASE}[encap]\nnext_hop_mac = \"03:00:00:00:00:01\"\n");
    assert_eq!(
        only_error(&text),
        "15:16: encap.next_hop_mac: 03:00:00:00:00:01 is a multicast MAC address; a unicast \
         MAC is required"
    );
}

#[test]
fn missing_mac_in_l2_mode() {
    assert_eq!(
        only_error(&base_with("mac = \"02:00:00:00:01:01\"\n", "")),
        "11:1: vip[0].backend[0].mac: missing required field `mac` (every backend of a VIP in \
         mode \"l2\" needs one)"
    );
}

#[test]
fn missing_mac_in_ipip_mode_without_next_hop() {
    let text = base_with("mac = \"02:00:00:00:01:01\"\n", "").replace("\"l2\"", "\"ipip\"");
    assert_eq!(
        only_error(&text),
        "11:1: vip[0].backend[0].mac: missing `mac`, and encap.next_hop_mac is not set: a \
         backend of a VIP in mode \"ipip\" needs one of them"
    );
    // With the fallback set it is fine.
    let config = parse(&format!(
        "{text}[encap]\nnext_hop_mac = \"02:00:00:00:00:09\"\n"
    ));
    assert_eq!(config.vips[0].backends[0].mac, MacAddr([2, 0, 0, 0, 0, 9]));
}

#[test]
fn an_invalid_next_hop_is_reported_once_not_for_every_backend() {
    let text = base_with("mac = \"02:00:00:00:01:01\"\n", "").replace("\"l2\"", "\"ipip\"");
    let text = format!("{text}[encap]\nnext_hop_mac = \"nope\"\n");
    assert_eq!(locations(&text), ["14:16: encap.next_hop_mac"]);
}

#[test]
fn bad_weights() {
    assert_eq!(
        only_error(&base_with("mac = ", "weight = 10001\nmac = ")),
        "13:10: vip[0].backend[0].weight: 10001 is out of range 0..=10000"
    );
    assert_eq!(
        locations(&base_with("mac = ", "weight = -5\nmac = ")),
        ["13:10: vip[0].backend[0].weight"]
    );
    parse(&base_with("mac = ", "weight = 10000\nmac = "));
    parse(&base_with("mac = ", "weight = 0\nmac = "));
}

#[test]
fn vip_without_backends() {
    let text = BASE.split("\n[[vip.backend]]").next().unwrap();
    assert_eq!(only_error(text), "4:1: vip[0].backend: VIP has no backends");
}

#[test]
fn table_size_must_be_prime_in_range_and_fit_the_backends() {
    let with_size = |size: &str| {
        base_with(
            "mode = \"l2\"",
            &format!("mode = \"l2\"\ntable_size = {size}"),
        )
    };
    assert_eq!(
        only_error(&with_size("65536")),
        "10:14: vip[0].table_size: 65536 is not prime; Maglev needs a prime table size (the \
         nearest primes are 65521 and 65537)"
    );
    assert_eq!(
        only_error(&with_size("5")),
        "10:14: vip[0].table_size: 5 is out of range 7..=16777213"
    );
    assert_eq!(
        only_error(&with_size("16777216")),
        "10:14: vip[0].table_size: 16777216 is out of range 7..=16777213"
    );
    parse(&with_size("7"));
    let largest = format!(
        "{}[limits]\nmaglev_slots = 33554426\n",
        with_size("16777213")
    );
    assert_eq!(parse(&largest).vips[0].table_size, 16_777_213);

    let mut text = with_size("7");
    for i in 2..=8 {
        text.push_str(&format!(
            "[[vip.backend]]\naddress = \"10.0.0.{i}\"\nmac = \"02:00:00:00:00:0{i}\"\n"
        ));
    }
    assert_eq!(
        only_error(&text),
        "10:14: vip[0].table_size: table_size 7 is smaller than the number of backends (8); \
         Maglev needs at least one slot per backend"
    );
}

#[test]
fn duplicate_vip_names_and_services() {
    let second = "\n[[vip]]\nname = \"web\"\naddress = \"10.0.0.10\"\nport = 80\nprotocol = \"tcp\"\nmode = \"l2\"\n[[vip.backend]]\naddress = \"10.0.0.21\"\nmac = \"02:00:00:00:01:01\"\n";
    let text = format!("{BASE}{second}");
    let diagnostics = diagnostics(&text);
    let found: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        found,
        [
            "test.toml:15:1: vip[1]: duplicate VIP: vip[0] (line 4) already serves 10.0.0.10 \
             port 80 tcp",
            "test.toml:16:8: vip[1].name: duplicate VIP name `web` (vip[0], line 4)",
        ]
    );
    // The same address and port with another protocol is another service.
    let text = format!(
        "{BASE}{}",
        second
            .replace("\"web\"", "\"web-udp\"")
            .replace("\"tcp\"", "\"udp\"")
    );
    parse(&text);
}

#[test]
fn duplicate_backends_within_a_vip() {
    let text = format!(
        "{BASE}[[vip.backend]]\naddress = \"10.0.0.21\"\nmac = \"02:00:00:00:01:02\"\n\
         [[vip.backend]]\naddress = \"10.0.0.23\"\nname = \"10.0.0.21\"\nmac = \"02:00:00:00:01:03\"\n"
    );
    assert_eq!(
        errors(&text),
        [
            "15:11: vip[0].backend[1].address: duplicate backend address 10.0.0.21 \
             (backend[0], line 11)",
            "19:8: vip[0].backend[2].name: duplicate backend name `10.0.0.21` (backend[0], \
             line 11)",
        ]
    );
}

#[test]
fn the_same_backend_may_serve_several_vips() {
    let text = format!(
        "{BASE}[[vip]]\nname = \"web2\"\naddress = \"10.0.0.11\"\nport = 80\nprotocol = \"tcp\"\n\
         mode = \"l2\"\n[[vip.backend]]\naddress = \"10.0.0.21\"\nmac = \"02:00:00:00:01:01\"\n"
    );
    assert_eq!(parse(&text).vips.len(), 2);
}

#[test]
fn limits_out_of_range() {
    let text = format!(
        "{BASE}[limits]\nflow_table_size = 1023\nmax_vips = 0\nmax_backends = 16777217\n\
         maglev_slots = 1073741825\nflow_idle_timeout = 5\n"
    );
    assert_eq!(
        errors(&text),
        [
            "15:19: limits.flow_table_size: 1023 is out of range 1024..=67108864",
            "16:12: limits.max_vips: 0 is out of range 1..=1048576",
            "17:16: limits.max_backends: 16777217 is out of range 1..=16777216",
            "18:16: limits.maglev_slots: 1073741825 is out of range 1024..=1073741824",
            "19:21: limits.flow_idle_timeout: 5 is out of range 10..=86400",
        ]
    );
}

#[test]
fn source_prefix_checks() {
    let with = |prefix: &str| format!("{BASE}[encap]\nsource_prefix = \"{prefix}\"\n");
    assert_eq!(
        only_error(&with("172.16.0.0/4")),
        "15:17: encap.source_prefix: prefix length /4 is out of range 8..=32"
    );
    assert_eq!(
        only_error(&with("172.16.0.0/33")),
        "15:17: encap.source_prefix: prefix length /33 is out of range (an IPv4 prefix length \
         is at most 32)"
    );
    assert_eq!(
        only_error(&with("172.16.0.1/16")),
        "15:17: encap.source_prefix: `172.16.0.1/16` has host bits set; the network is \
         172.16.0.0/16"
    );
    assert_eq!(
        only_error(&with("172.16.0.0")),
        "15:17: encap.source_prefix: `172.16.0.0` is not an IPv4 prefix (expected a.b.c.d/len, \
         like 172.16.0.0/16)"
    );
    assert_eq!(
        only_error(&with("fd00::/64")),
        "15:17: encap.source_prefix: an IPv4 prefix is needed here (an IPv6 one goes in \
         encap.source_prefix_v6)"
    );
    assert_eq!(
        parse(&with("10.1.2.3/32")).encap.source_prefix.to_string(),
        "10.1.2.3/32"
    );
    assert_eq!(parse(&with("10.0.0.0/8")).encap.source_prefix.prefix_len, 8);
}

/// `count` one-backend VIPs on consecutive addresses, after `header`.
fn many_vips(header: &str, count: usize, table_size: u32) -> String {
    let mut text = format!("[interface]\nname = \"eth0\"\n{header}");
    for i in 0..count {
        text.push_str(&format!(
            "[[vip]]\nname = \"v{i}\"\naddress = \"10.0.{}.{}\"\nport = 80\nprotocol = \"tcp\"\n\
             mode = \"l2\"\ntable_size = {table_size}\n[[vip.backend]]\naddress = \"10.1.0.1\"\n\
             mac = \"02:00:00:00:00:01\"\n",
            i / 256,
            i % 256
        ));
    }
    text
}

#[test]
fn too_many_vips() {
    // Each VIP takes 10 lines; vip[2] starts on line 5 + 2 * 10.
    let text = many_vips("[limits]\nmax_vips = 2\n", 3, 7);
    assert_eq!(
        only_error(&text),
        "25:1: vip[2]: 3 VIPs configured but limits.max_vips is 2"
    );
    parse(&many_vips("[limits]\nmax_vips = 2\n", 2, 7));
}

#[test]
fn too_many_backends() {
    // vip[1].backend[0] is the third backend: line 5 + 10 + 3 + 7.
    let text = many_vips("[limits]\nmax_backends = 2\n", 3, 7).replacen(
        "[[vip]]\nname = \"v1\"",
        "[[vip.backend]]\naddress = \"10.1.0.2\"\nmac = \"02:00:00:00:00:02\"\n[[vip]]\nname = \"v1\"",
        1,
    );
    assert_eq!(
        only_error(&text),
        "25:1: vip[1].backend[0]: 4 backends configured across all VIPs but limits.max_backends \
         is 2"
    );
}

#[test]
fn maglev_slots_must_hold_two_tables_per_vip() {
    // 3 VIPs x 2 x 251 = 1506 slots; 1024 holds two VIPs' tables, not three.
    let text = many_vips("[limits]\nmaglev_slots = 1024\n", 3, 251);
    assert_eq!(
        only_error(&text),
        "31:14: vip[2].table_size: the Maglev tables of all VIPs need 1506 slots (2 x \
         table_size per VIP, for atomic updates) but limits.maglev_slots is 1024; this VIP's \
         table is the first that does not fit"
    );
    parse(&many_vips("[limits]\nmaglev_slots = 1506\n", 3, 251));
}

#[test]
fn default_limits_fit_31_default_sized_vips_but_not_32() {
    let mut text = many_vips("", 32, 65537);
    assert_eq!(locations(&text), ["319:14: vip[31].table_size"]);
    text = many_vips("", 31, 65537);
    assert_eq!(parse(&text).vips.len(), 31);
}

#[test]
fn many_errors_are_reported_at_once_in_source_order() {
    let text = r#"[interface]
name = "eth0"
attach_mode = "fast"

[[vip]]
name = "web"
address = "10.0.0.10"
port = 80
protocol = "tcp"
mode = "l2"

[[vip.backend]]
address = "10.0.0.21"
weight = 20000

[[vip]]
name = "web"
address = "10.0.0.999"
port = 80
protocol = "tcp"
mode = "l2"
[[vip.backend]]
address = "10.0.0.22"
mac = "02:00:00:00:01:02"
"#;
    assert_eq!(
        locations(text),
        [
            "3:15: interface.attach_mode",
            "12:1: vip[0].backend[0].mac",
            "14:10: vip[0].backend[0].weight",
            "17:8: vip[1].name",
            "18:11: vip[1].address",
        ]
    );
}

#[test]
fn three_errors_give_three_diagnostics() {
    let text = base_with("port = 80", "port = 99999")
        .replace("\"tcp\"", "\"icmp\"")
        .replace("\"02:00:00:00:01:01\"", "\"zz\"");
    assert_eq!(
        locations(&text),
        [
            "7:8: vip[0].port",
            "8:12: vip[0].protocol",
            "13:7: vip[0].backend[0].mac"
        ]
    );
}

#[test]
fn error_display_lists_every_diagnostic_with_the_origin() {
    let text = base_with("port = 80", "port = 99999").replace("\"tcp\"", "\"icmp\"");
    let error = Config::parse(&text, "/etc/xlb/xlb.toml").unwrap_err();
    assert_eq!(
        error.to_string(),
        "/etc/xlb/xlb.toml:7:8: vip[0].port: 99999 is out of range 0..=65535\n\
         /etc/xlb/xlb.toml:8:12: vip[0].protocol: unknown protocol \"icmp\"; accepted values: \
         \"tcp\", \"udp\""
    );
}

#[test]
fn load_names_the_file() {
    let path = Path::new("/nonexistent/xlb.toml");
    let error = Config::load(path).unwrap_err();
    assert!(matches!(&error, ConfigError::Io { path: p, .. } if p == path));
    assert!(
        error.to_string().starts_with("/nonexistent/xlb.toml: "),
        "{error}"
    );

    let dir = std::env::temp_dir().join(format!("xlb-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, base_with("port = 80", "port = 70000")).unwrap();
    let error = Config::load(&file).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(error.diagnostics()[0].origin, file.display().to_string());
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}:7:8: ", file.display()))
    );
}

#[test]
fn shipped_example_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            Config::load(&path).unwrap_or_else(|error| panic!("{error}"));
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} configs in {}", dir.display());
}

#[test]
fn demo_configs_hold_the_lab_values() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let backends = |vip: &VipConfig| -> Vec<(String, String, u32)> {
        vip.backends
            .iter()
            .map(|b| (b.address.to_string(), b.mac.to_string(), b.weight))
            .collect()
    };
    let expected_backends: Vec<(String, String, u32)> = (11..=13)
        .map(|i| (format!("10.99.0.{i}"), format!("02:99:00:00:00:{i}"), 100))
        .collect();
    // The IPv6 VIP (web6) has the same backends at their IPv6 addresses.
    let expected_backends6: Vec<(String, String, u32)> = (11..=13)
        .map(|i| (format!("fd99::{i}"), format!("02:99:00:00:00:{i}"), 100))
        .collect();
    let expected_for = |vip: &VipConfig| {
        if vip.address.is_ipv6() {
            expected_backends6.clone()
        } else {
            expected_backends.clone()
        }
    };

    let l2 = Config::load(&dir.join("demo-l2.toml")).unwrap();
    assert_eq!(l2.interface.name, "xlbdemo-lb");
    assert_eq!(l2.interface.attach_mode, AttachMode::Native);
    let services: Vec<_> = l2
        .vips
        .iter()
        .map(|v| (v.address.to_string(), v.port, v.protocol, v.mode))
        .collect();
    assert_eq!(
        services,
        [
            ("10.99.0.100".to_owned(), 80, Protocol::Tcp, ForwardMode::L2),
            ("10.99.0.100".to_owned(), 53, Protocol::Udp, ForwardMode::L2),
            ("fd99:1::100".to_owned(), 80, Protocol::Tcp, ForwardMode::L2),
        ]
    );
    assert_eq!(l2.vips[0].name, "web");
    for vip in &l2.vips {
        assert_eq!(backends(vip), expected_for(vip));
    }

    let ipip = Config::load(&dir.join("demo-ipip.toml")).unwrap();
    assert_eq!(ipip.interface.name, "xlbdemo-lb");
    assert_eq!(ipip.interface.attach_mode, AttachMode::Native);
    assert_eq!(ipip.encap.source_prefix.to_string(), "172.16.0.0/16");
    assert_eq!(
        ipip.encap
            .source_prefix_v6
            .map(|p| p.to_string())
            .as_deref(),
        Some("fd99:ffff::/64")
    );
    assert_eq!(ipip.vips.len(), 3);
    let web = &ipip.vips[0];
    assert_eq!(
        (
            web.name.as_str(),
            web.address,
            web.port,
            web.protocol,
            web.mode,
            web.table_size
        ),
        (
            "web",
            v4(10, 99, 0, 100),
            80,
            Protocol::Tcp,
            ForwardMode::Ipip,
            65537
        )
    );
    let dns = &ipip.vips[1];
    assert_eq!(
        (dns.port, dns.protocol, dns.mode),
        (53, Protocol::Udp, ForwardMode::Ipip)
    );
    let web6 = &ipip.vips[2];
    assert_eq!(
        (web6.name.as_str(), web6.address.to_string(), web6.mode),
        ("web6", "fd99:1::100".to_owned(), ForwardMode::Ipip)
    );
    for vip in &ipip.vips {
        assert_eq!(backends(vip), expected_for(vip));
    }
}

// ----- [policy], [events], source_ranges -----

#[test]
fn policy_reads_with_defaults_and_both_families() {
    let config = parse(&format!(
        "{BASE}\n[policy]\ndeny = [\"198.51.100.0/24\", \"2001:db8::/32\"]\nallow = \
         [\"192.0.2.7\"]\nunserved = \"pass\"\n[policy.rate_limit]\n\
         new_connections_per_second = 50\n[policy.flow_guard]\nnew_flows_per_second = 1000\n\
         [events]\ndrops_per_second = 10\nforward_sample = 100\n"
    ));
    let policy = &config.policy;
    assert_eq!(policy.deny.len(), 2);
    assert_eq!(policy.allow[0].to_string(), "192.0.2.7/32");
    assert_eq!(policy.unserved, crate::config::Action::Pass);
    assert_eq!(policy.fragments, crate::config::Action::Drop);
    assert_eq!(policy.ipv4_options, crate::config::Action::Pass);
    let limit = policy.rate_limit.unwrap();
    assert_eq!(
        (limit.per_second, limit.burst),
        (50, 50),
        "burst defaults to the rate"
    );
    assert_eq!(policy.flow_insert_rate, Some(1000));
    assert_eq!(config.events.drops_per_second, 10);
    assert_eq!(config.events.forward_sample, 100);
    assert_eq!(config.events.keep, 10_000);
    assert_eq!(parse(BASE).policy, crate::config::PolicyConfig::default());
}

#[test]
fn the_icmp_rate_limit_defaults_to_1000_and_0_lifts_it() {
    assert_eq!(parse(BASE).policy.icmp_rate_limit, 1000);
    let with = |value: &str| format!("{BASE}\n[policy]\nicmp_rate_limit = {value}\n");
    assert_eq!(parse(&with("50")).policy.icmp_rate_limit, 50);
    assert_eq!(parse(&with("0")).policy.icmp_rate_limit, 0, "no limit");
    let errors = errors(&with("-1"));
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].ends_with("policy.icmp_rate_limit: -1 is out of range 0..=1000000"),
        "{}",
        errors[0]
    );
}

#[test]
fn policy_errors_are_all_reported_with_their_place() {
    let vip = BASE.replace("mode = \"l2\"", "mode = \"l2\"\nsource_ranges = []");
    let text = format!(
        "{vip}\n[policy]\ndeny = [\"10.0.0.1/8\", \"nope\", \"10.0.0.0/8\", \"10.0.0.0/8\"]\n\
         allow = [\"10.0.0.0/8\", \"192.0.2.0/33\"]\nfragments = \"maybe\"\n\
         [policy.rate_limit]\nburst = 0\n"
    );
    assert_eq!(
        errors(&text),
        [
            "10:17: vip[0].source_ranges: an empty source_ranges would refuse every client; \
             leave it out to allow all",
            "17:9: policy.deny[0]: `10.0.0.1/8` has host bits set; the network is 10.0.0.0/8",
            "17:23: policy.deny[1]: `nope` is not a CIDR (expected an address or address/len, \
             like 192.0.2.0/24 or 2001:db8::/32)",
            "17:45: policy.deny[3]: duplicate prefix 10.0.0.0/8 (policy.deny[2])",
            "18:10: policy.allow[0]: 10.0.0.0/8 is also policy.deny[2]; a prefix belongs to one list",
            "18:24: policy.allow[1]: prefix length /33 is too long for IPv4 (at most /32)",
            "19:13: policy.fragments: unknown action \"maybe\"; accepted values: \"drop\", \"pass\"",
            "20:1: policy.rate_limit.new_connections_per_second: missing required field \
             `new_connections_per_second`",
            "21:9: policy.rate_limit.burst: 0 is out of range 1..=1000000",
        ]
    );
}

#[test]
fn vip_source_ranges_are_of_the_vip_family_and_count_against_the_limit() {
    let vip = BASE.replace(
        "mode = \"l2\"",
        "mode = \"l2\"\nsource_ranges = [\"192.0.2.0/24\", \"2001:db8::/32\", \"192.0.2.0/24\"]",
    );
    let text = format!("{vip}\n[limits]\npolicy_prefixes = 1\n");
    assert_eq!(
        errors(&text),
        [
            "10:17: vip[0].source_ranges: 2 source ranges across all VIPs but \
             limits.policy_prefixes is 1",
            "10:34: vip[0].source_ranges[1]: 2001:db8::/32 is IPv6 but the VIP 10.0.0.10 is IPv4: \
             a VIP's source ranges are of its own family (only those sources can reach it)",
            "10:51: vip[0].source_ranges[2]: duplicate prefix 192.0.2.0/24 \
             (vip[0].source_ranges[0])",
        ]
    );
}
// ----- [vip.health] -----

#[test]
fn health_tables_resolve_with_backend_overrides() {
    let text = format!(
        "{BASE}{}",
        r#"
[vip.health]
check = "http"
path = "/healthz"
host = "web.example"
expect = [200, "300-302"]
interval_ms = 500
timeout_ms = 200
rise = 1
fall = 2
on_all_down = "drop"

[[vip.backend]]
address = "10.0.0.22"
mac = "02:00:00:00:01:02"
  [vip.backend.health]
  path = "/other"
  port = 8080

[[vip.backend]]
address = "10.0.0.23"
mac = "02:00:00:00:01:03"
  [vip.backend.health]
  check = "udp"
  payload = "ping"
  reply = "pong"
"#
    );
    let config = parse(&text);
    let vip = &config.vips[0];
    let http = |path: &str| {
        Some(Check::Http {
            path: path.to_owned(),
            host: Some("web.example".to_owned()),
            expect: vec![200..=200, 300..=302],
        })
    };
    let expected = HealthConfig {
        check: http("/healthz"),
        port: 80,
        interval_ms: 500,
        timeout_ms: 200,
        rise: 1,
        fall: 2,
        via: ProbeVia::Direct,
    };
    assert_eq!(vip.health, expected);
    assert_eq!(vip.on_all_down, AllDown::Drop);
    assert_eq!(vip.backends[0].health, None);
    assert_eq!(vip.health_of(&vip.backends[0]), &expected);
    // Same kind of check: the VIP's host and expect are kept, path and port overridden.
    let be2 = vip.backends[1].health.clone().unwrap();
    assert_eq!((be2.check, be2.port), (http("/other"), 8080));
    // Another kind: only the timing is inherited.
    let be3 = vip.backends[2].health.clone().unwrap();
    assert_eq!(
        be3.check,
        Some(Check::Udp {
            payload: b"ping".to_vec(),
            expect: Some(b"pong".to_vec()),
        })
    );
    assert_eq!((be3.interval_ms, be3.rise, be3.port), (500, 1, 80));
    let json = serde_json::to_value(&config).unwrap();
    let health = &json["vips"][0]["health"];
    assert_eq!(
        (&health["check"], &health["path"]),
        (&"http".into(), &"/healthz".into())
    );
    let unchecked = serde_json::to_value(HealthConfig {
        check: None,
        ..vip.health.clone()
    })
    .unwrap();
    assert!(unchecked.get("check").is_none(), "{unchecked}");
}

#[test]
fn ipip_vips_probe_through_encap_by_default_and_http_accepts_2xx_3xx() {
    let text = base_with("mode = \"l2\"", "mode = \"ipip\"")
        + "[vip.health]\ncheck = \"http\"\nvia = \"direct\"\n";
    let config = parse(&text);
    assert_eq!(config.vips[0].health.via, ProbeVia::Direct);
    assert_eq!(
        config.vips[0].health.check,
        Some(Check::Http {
            path: "/".to_owned(),
            host: None,
            expect: vec![200..=399],
        })
    );
    let config = parse(&base_with("mode = \"l2\"", "mode = \"ipip\""));
    assert_eq!(config.vips[0].health.via, ProbeVia::Encap);
    assert_eq!(config.vips[0].health.check, Some(Check::Tcp));
}

#[test]
fn every_bad_health_value_is_reported_at_its_place() {
    // Lines: 15 [vip.health], 16 check, 17 interval, 18 timeout, 19 rise, 20 fall, 21 via,
    // 22 on_all_down, 23 payload, 24 expect, 25 path; 27 backend health, 28 on_all_down.
    let text = format!(
        "{BASE}{}",
        r#"
[vip.health]
check = "http"
interval_ms = 50
timeout_ms = 0
rise = 0
fall = 101
via = "encap"
on_all_down = "panic"
payload = "x"
expect = [99, "300-200", "abc"]
path = "no-slash"

  [vip.backend.health]
  on_all_down = "drop"
"#
    );
    assert_eq!(
        locations(&text),
        [
            "17:15: vip[0].health.interval_ms",
            "18:14: vip[0].health.timeout_ms",
            "19:8: vip[0].health.rise",
            "20:8: vip[0].health.fall",
            "21:7: vip[0].health.via",
            "22:15: vip[0].health.on_all_down",
            "23:11: vip[0].health.payload",
            "24:11: vip[0].health.expect[0]",
            "24:15: vip[0].health.expect[1]",
            "24:26: vip[0].health.expect[2]",
            "25:8: vip[0].health.path",
            "28:17: vip[0].backend[0].health.on_all_down",
        ]
    );
}

#[test]
fn health_cross_field_rules() {
    let with = |extra: &str| format!("{BASE}\n[vip.health]\n{extra}\n");
    assert_eq!(
        only_error(&with("interval_ms = 1000\ntimeout_ms = 1500")),
        "17:14: vip[0].health.timeout_ms: timeout_ms (1500) is longer than interval_ms (1000); \
         a probe must end before the next one starts"
    );
    // A shorter interval alone brings the default timeout down with it.
    let short = parse(&with("interval_ms = 500"));
    assert_eq!(
        (
            short.vips[0].health.interval_ms,
            short.vips[0].health.timeout_ms
        ),
        (500, 500)
    );
    // A VIP on every port is not checked unless told which port to probe.
    let every_port = base_with("port = 80", "port = 0");
    assert_eq!(parse(&every_port).vips[0].health.check, None);
    parse(&format!("{every_port}[vip.health]\ninterval_ms = 500\n"));
    assert_eq!(
        only_error(&format!("{every_port}[vip.health]\ncheck = \"tcp\"\n")),
        "14:1: vip[0].health.port: the VIP serves every port (port = 0), so its tcp check needs \
         a `port`"
    );
    let probed = parse(&format!(
        "{every_port}[vip.health]\ncheck = \"tcp\"\nport = 8080\n"
    ));
    assert_eq!(probed.vips[0].health.port, 8080);
    assert_eq!(
        only_error(&with("check = \"tcp\"\nreply = \"x\"")),
        "17:9: vip[0].health.reply: `reply` is a setting of check = \"udp\" only"
    );
    assert_eq!(
        only_error(&with("check = \"ping\"")),
        "16:9: vip[0].health.check: unknown check \"ping\"; accepted values: \"tcp\", \"http\", \
         \"udp\", \"none\""
    );
}

// ----- ICMP and the MTU of encapsulation -----

#[test]
fn icmp_and_mtu_keys_read_with_defaults() {
    let config = parse(BASE);
    assert_eq!(config.policy.icmp_echo, crate::config::IcmpEcho::Reply);
    assert_eq!(config.policy.icmp_other, crate::config::Action::Pass);
    assert_eq!(config.encap.mtu, None, "the interface's MTU");
    assert_eq!(config.encap.on_too_big, crate::config::TooBig::Icmp);
    let config = parse(&format!(
        "{BASE}\n[encap]\nmtu = 1480\non_too_big = \"drop\"\n\n[policy]\nicmp_echo = \"pass\"\n\
         icmp_other = \"drop\"\n"
    ));
    assert_eq!(config.encap.mtu, Some(1480));
    assert_eq!(config.encap.on_too_big, crate::config::TooBig::Drop);
    assert_eq!(config.policy.icmp_echo, crate::config::IcmpEcho::Pass);
    assert_eq!(config.policy.icmp_other, crate::config::Action::Drop);
}

#[test]
fn icmp_and_mtu_errors_are_all_reported_with_their_place() {
    let text = format!(
        "{BASE}\n[encap]\nmtu = 575\non_too_big = \"fragment\"\n\n[policy]\n\
         icmp_echo = \"answer\"\nicmp_other = \"reply\"\n"
    );
    assert_eq!(
        errors(&text),
        [
            "16:7: encap.mtu: 575 is out of range 576..=65535",
            "17:14: encap.on_too_big: unknown action \"fragment\"; accepted values: \"icmp\", \
             \"drop\"",
            "20:13: policy.icmp_echo: unknown action \"answer\"; accepted values: \"reply\", \
             \"pass\", \"drop\"",
            "21:14: policy.icmp_other: unknown action \"reply\"; accepted values: \"drop\", \
             \"pass\"",
        ]
    );
    assert_eq!(
        only_error(&format!("{BASE}\n[encap]\nmtu = 65536\n")),
        "16:7: encap.mtu: 65536 is out of range 576..=65535"
    );
}
