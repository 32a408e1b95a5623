//! Datapath fixtures: each case is a description, the input frame, the expected XDP action and
//! the expected output frame, run through BPF_PROG_TEST_RUN on the real program with maps filled
//! by the real control plane. Every drop must move exactly its reason's counter by one.

use std::net::{Ipv4Addr, Ipv6Addr};

use xlb::{
    config::Config,
    dataplane::{
        Dataplane,
        flows::{FlowSweeper, SweepReport},
    },
    state::{DesiredState, VipKeyOrd, addr_words},
};
use xlb_common::{
    DropReason, Event, FlowKey, FlowKey6, LbCounter, PolicyCounter, event_verdict, hash,
    hash::vip_filter_slot,
};
use xlb_tests::{
    have_root,
    packet::{self, Flow, Flow6, L2, TCP_ACK, TCP_SYN},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const IF_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xaa];
const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xcc];

const CONFIG: &str = r#"
[interface]
name = "fixture0"

[limits]
flow_table_size = 4096
max_vips = 64
max_backends = 256
maglev_slots = 262144

[encap]
source_prefix = "172.16.0.0/16"
next_hop_mac = "02:00:00:00:fe:01"

[[vip]]
name = "web-l2"
address = "10.0.0.10"
port = 80
protocol = "tcp"
mode = "l2"
table_size = 65537
  [[vip.backend]]
  address = "10.0.1.21"
  mac = "02:00:00:00:01:21"
  [[vip.backend]]
  address = "10.0.1.22"
  mac = "02:00:00:00:01:22"
  [[vip.backend]]
  address = "10.0.1.23"
  mac = "02:00:00:00:01:23"

[[vip]]
name = "dns-l2"
address = "10.0.0.10"
port = 53
protocol = "udp"
mode = "l2"
table_size = 251
  [[vip.backend]]
  address = "10.0.1.31"
  mac = "02:00:00:00:01:31"
  [[vip.backend]]
  address = "10.0.1.32"
  mac = "02:00:00:00:01:32"

[[vip]]
name = "web-ipip"
address = "10.0.0.20"
port = 80
protocol = "tcp"
mode = "ipip"
table_size = 251
  [[vip.backend]]
  address = "10.0.2.21"
  [[vip.backend]]
  address = "10.0.2.22"
  mac = "02:00:00:00:02:22"

[[vip]]
name = "dns-ipip"
address = "10.0.0.20"
port = 53
protocol = "udp"
mode = "ipip"
table_size = 251
  [[vip.backend]]
  address = "10.0.2.31"

[[vip]]
name = "any-port"
address = "10.0.0.30"
port = 0
protocol = "tcp"
mode = "l2"
table_size = 251
  [[vip.backend]]
  address = "10.0.3.1"
  mac = "02:00:00:00:03:01"

[[vip]]
name = "drained"
address = "10.0.0.40"
port = 80
protocol = "tcp"
mode = "l2"
table_size = 251
  [[vip.backend]]
  address = "10.0.4.1"
  mac = "02:00:00:00:04:01"
  weight = 0
"#;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

struct Lab {
    dataplane: Dataplane,
    config: Config,
    events: aya::maps::RingBuf<aya::maps::MapData>,
}

fn lab(config_text: &str) -> Lab {
    let config = Config::parse(config_text, "fixtures.toml").unwrap_or_else(|e| panic!("{e}"));
    let state = DesiredState::from_config(&config).unwrap_or_else(|e| panic!("{e}"));
    let mut dataplane = Dataplane::load(&config.limits, xlb::config::MacAddr(IF_MAC))
        .unwrap_or_else(|e| panic!("loading the datapath: {e}"));
    dataplane.apply(&state).unwrap_or_else(|e| panic!("{e}"));
    let events = dataplane.take_events().expect("the event ring buffer");
    Lab {
        dataplane,
        config,
        events,
    }
}

fn vip_key(address: &str, port: u16, proto: u8) -> VipKeyOrd {
    let (addr, fam) = addr_words(ip(address).into());
    VipKeyOrd {
        addr,
        port,
        proto,
        family: fam,
    }
}

fn flow_key(flow: &Flow, proto: u8) -> FlowKey {
    FlowKey {
        src: addr_words(flow.src.into()).0[0],
        dst: addr_words(flow.dst.into()).0[0],
        sport: flow.sport.to_be(),
        dport: flow.dport.to_be(),
        proto,
        _pad: 0,
        _pad2: 0,
    }
}

impl Lab {
    /// The backend index (in config order) the control plane's table picks for a flow.
    fn predicted_backend(&self, vip: &VipKeyOrd, flow: &Flow, proto: u8) -> usize {
        let table = self.dataplane.table(vip).unwrap().expect("VIP applied");
        let slot = hash::flow_hash(&flow_key(flow, proto)) % table.len() as u32;
        let id = table[slot as usize];
        (0..)
            .find(|&i| self.dataplane.backend_id(vip, i) == Some(id))
            .expect("slot holds one of the VIP's backends")
    }

    fn backend_mac(&self, vip_name: &str, index: usize) -> [u8; 6] {
        let vip = self
            .config
            .vips
            .iter()
            .find(|v| v.name == vip_name)
            .unwrap();
        vip.backends[index].mac.0
    }

    fn backend_addr(&self, vip_name: &str, index: usize) -> Ipv4Addr {
        let vip = self
            .config
            .vips
            .iter()
            .find(|v| v.name == vip_name)
            .unwrap();
        match vip.backends[index].address {
            std::net::IpAddr::V4(a) => a,
            other => panic!("unexpected {other}"),
        }
    }

    /// Every event the datapath has written since the last call.
    fn drain_events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(item) = self.events.next() {
            assert_eq!(item.len(), std::mem::size_of::<Event>(), "event size");
            // SAFETY: the item holds exactly one Event (size checked), which is valid for any
            // bit pattern; read_unaligned copes with the ring's 8-byte alignment.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
        }
        events
    }

    fn run(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; input.len() + 256];
        let (action, len) = self
            .dataplane
            .test_run(input, &mut out)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
        out.truncate(len);
        (action, out)
    }
}

enum Expected {
    /// The frame leaves unchanged (pass, or drop).
    Unchanged,
    /// The frame leaves as these bytes.
    Bytes(Vec<u8>),
}

struct Case {
    description: &'static str,
    input: Vec<u8>,
    action: u32,
    output: Expected,
    drop: Option<DropReason>,
}

fn to_lb(vlan: Option<u16>) -> L2 {
    L2 {
        dst: IF_MAC,
        src: CLIENT_MAC,
        vlan,
    }
}

fn flow(src: &str, dst: &str, sport: u16, dport: u16) -> Flow {
    Flow {
        src: ip(src),
        dst: ip(dst),
        sport,
        dport,
    }
}

/// The L2 DSR output: the same frame with the backend's MAC as destination, ours as source.
fn l2_rewritten(input: &[u8], backend_mac: [u8; 6]) -> Vec<u8> {
    let mut out = input.to_vec();
    out[0..6].copy_from_slice(&backend_mac);
    out[6..12].copy_from_slice(&IF_MAC);
    out
}

fn ipip_source(flow: &Flow, proto: u8) -> Ipv4Addr {
    // 172.16.0.0/16 with the host bits from the flow hash, as documented for encap.source_prefix.
    let prefix = u32::from_ne_bytes([172, 16, 0, 0]);
    let mask = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    let word = hash::ipip_source(prefix, mask, hash::flow_hash(&flow_key(flow, proto)));
    Ipv4Addr::from(word.to_ne_bytes())
}

fn cases(lab: &Lab) -> Vec<Case> {
    let web_l2 = vip_key("10.0.0.10", 80, 6);
    let dns_l2 = vip_key("10.0.0.10", 53, 17);
    let web_ipip = vip_key("10.0.0.20", 80, 6);
    let dns_ipip = vip_key("10.0.0.20", 53, 17);
    let any_port = vip_key("10.0.0.30", 0, 6);
    let mut cases = Vec::new();

    // --- Forwarded, L2 DSR.
    let f = flow("192.0.2.1", "10.0.0.10", 40000, 80);
    let input = packet::tcp4(&to_lb(None), &f, TCP_SYN, b"");
    let b = lab.predicted_backend(&web_l2, &f, 6);
    cases.push(Case {
        description: "TCP SYN to an L2 VIP: destination MAC becomes the Maglev backend's",
        output: Expected::Bytes(l2_rewritten(&input, lab.backend_mac("web-l2", b))),
        input,
        action: XDP_TX,
        drop: None,
    });
    let f = flow("192.0.2.2", "10.0.0.10", 5353, 53);
    let input = packet::udp4(&to_lb(None), &f, b"query");
    let b = lab.predicted_backend(&dns_l2, &f, 17);
    cases.push(Case {
        description: "UDP to an L2 VIP",
        output: Expected::Bytes(l2_rewritten(&input, lab.backend_mac("dns-l2", b))),
        input,
        action: XDP_TX,
        drop: None,
    });
    let f = flow("192.0.2.3", "10.0.0.10", 40001, 80);
    let input = packet::tcp4(&to_lb(Some(42)), &f, TCP_SYN, b"");
    let b = lab.predicted_backend(&web_l2, &f, 6);
    cases.push(Case {
        description: "VLAN-tagged TCP to an L2 VIP keeps its tag",
        output: Expected::Bytes(l2_rewritten(&input, lab.backend_mac("web-l2", b))),
        input,
        action: XDP_TX,
        drop: None,
    });
    let f = flow("192.0.2.4", "10.0.0.30", 40002, 8443);
    let input = packet::tcp4(&to_lb(None), &f, TCP_SYN, b"");
    let b = lab.predicted_backend(&any_port, &f, 6);
    cases.push(Case {
        description: "TCP to a port-0 VIP (every port) on another port",
        output: Expected::Bytes(l2_rewritten(&input, lab.backend_mac("any-port", b))),
        input,
        action: XDP_TX,
        drop: None,
    });
    let f = flow("192.0.2.5", "10.0.0.10", 40003, 80);
    let segment = packet::tcp_segment(&f, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n");
    let mut input = packet::ethernet(&to_lb(None), 0x0800);
    // Options: a record-route-sized run of NOPs and an end-of-list, 8 bytes.
    input.extend(packet::ipv4_header(
        f.src,
        f.dst,
        6,
        segment.len(),
        &[1, 1, 1, 1, 1, 1, 1, 0],
        0,
    ));
    input.extend(segment);
    let b = lab.predicted_backend(&web_l2, &f, 6);
    cases.push(Case {
        description: "IPv4 with options (IHL 7) to an L2 VIP: ports found past the options",
        output: Expected::Bytes(l2_rewritten(&input, lab.backend_mac("web-l2", b))),
        input,
        action: XDP_TX,
        drop: None,
    });

    // --- Forwarded, IPIP.
    for (description, vlan, f, proto, vip, name) in [
        (
            "TCP to an IPIP VIP: outer IPv4 header to the backend",
            None,
            flow("192.0.2.10", "10.0.0.20", 40010, 80),
            6u8,
            web_ipip,
            "web-ipip",
        ),
        (
            "UDP to an IPIP VIP",
            None,
            flow("192.0.2.11", "10.0.0.20", 5353, 53),
            17,
            dns_ipip,
            "dns-ipip",
        ),
        (
            "VLAN-tagged TCP to an IPIP VIP: tag stays in front of the outer header",
            Some(7),
            flow("192.0.2.12", "10.0.0.20", 40011, 80),
            6,
            web_ipip,
            "web-ipip",
        ),
    ] {
        let input = if proto == 6 {
            packet::tcp4(&to_lb(vlan), &f, TCP_SYN, b"")
        } else {
            packet::udp4(&to_lb(vlan), &f, b"query")
        };
        let b = lab.predicted_backend(&vip, &f, proto);
        let new_l2 = L2 {
            dst: lab.backend_mac(name, b),
            src: IF_MAC,
            vlan,
        };
        cases.push(Case {
            description,
            output: Expected::Bytes(packet::ipip_encapsulated(
                &input,
                &new_l2,
                ipip_source(&f, proto),
                lab.backend_addr(name, b),
            )),
            input,
            action: XDP_TX,
            drop: None,
        });
    }

    // --- Passed untouched.
    cases.push(Case {
        description: "TCP to a non-VIP address passes",
        input: packet::tcp4(
            &to_lb(None),
            &flow("192.0.2.20", "10.0.0.99", 40020, 80),
            TCP_SYN,
            b"",
        ),
        action: XDP_PASS,
        output: Expected::Unchanged,
        drop: None,
    });
    cases.push(Case {
        description: "TCP to a VIP address on a port no VIP serves: unserved (the default)",
        input: packet::tcp4(
            &to_lb(None),
            &flow("192.0.2.21", "10.0.0.10", 40021, 8080),
            TCP_SYN,
            b"",
        ),
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::Unserved),
    });
    cases.push(Case {
        description: "UDP to a VIP address on a TCP-only port: unserved",
        input: packet::udp4(
            &to_lb(None),
            &flow("192.0.2.22", "10.0.0.30", 40022, 80),
            b"x",
        ),
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::Unserved),
    });
    cases.push(Case {
        description: "ARP request for a VIP passes",
        input: packet::arp_request(CLIENT_MAC, ip("192.0.2.23"), ip("10.0.0.10")),
        action: XDP_PASS,
        output: Expected::Unchanged,
        drop: None,
    });
    cases.push(Case {
        description: "ICMP timestamp request to a VIP address passes to the stack (icmp_other)",
        input: packet::icmp4(
            &to_lb(None),
            ip("192.0.2.24"),
            ip("10.0.0.10"),
            &packet::icmp_message(13, 0, [0, 1, 0, 1], &[0; 12]),
        ),
        action: XDP_PASS,
        output: Expected::Unchanged,
        drop: None,
    });
    let mut ipv6 = packet::ethernet(&to_lb(None), 0x86dd);
    ipv6.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 59, 64]);
    ipv6.extend_from_slice(&[0u8; 32]);
    cases.push(Case {
        description: "IPv6 to a non-VIP address passes",
        input: ipv6,
        action: XDP_PASS,
        output: Expected::Unchanged,
        drop: None,
    });

    // --- Malformed or unbalanceable: dropped with a reason, never aborted.
    // (A frame shorter than 14 bytes cannot be fed to BPF_PROG_TEST_RUN, which refuses it.)
    let good = packet::tcp4(
        &to_lb(None),
        &flow("192.0.2.30", "10.0.0.10", 40030, 80),
        TCP_SYN,
        b"",
    );
    let tagged = packet::tcp4(
        &to_lb(Some(5)),
        &flow("192.0.2.30", "10.0.0.10", 40030, 80),
        TCP_SYN,
        b"",
    );
    cases.push(Case {
        description: "802.1Q tag cut short",
        input: tagged[..15].to_vec(),
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::EthTruncated),
    });
    cases.push(Case {
        description: "IPv4 header cut short",
        input: good[..14 + 12].to_vec(),
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::Ipv4Truncated),
    });
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    cases.push(Case {
        description: "IPv4 with IHL 4 (< 5)",
        input: bad_ihl,
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::Ipv4BadHeader),
    });
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    cases.push(Case {
        description: "IPv4 ethertype with version 6 in the header",
        input: bad_version,
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::Ipv4BadHeader),
    });
    let mut too_long = good.clone();
    too_long[16..18].copy_from_slice(&1500u16.to_be_bytes());
    cases.push(Case {
        description: "IPv4 total length longer than the frame",
        input: too_long,
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::Ipv4BadLength),
    });
    let mut too_short = good.clone();
    too_short[16..18].copy_from_slice(&16u16.to_be_bytes());
    cases.push(Case {
        description: "IPv4 total length shorter than its header",
        input: too_short,
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::Ipv4BadLength),
    });
    cases.push(Case {
        description: "TCP header to a VIP cut short (frame ends inside it)",
        input: {
            let mut p = good[..14 + 20 + 10].to_vec();
            p[16..18].copy_from_slice(&30u16.to_be_bytes());
            p
        },
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::L4Truncated),
    });
    let udp = packet::udp4(
        &to_lb(None),
        &flow("192.0.2.31", "10.0.0.10", 5353, 53),
        b"",
    );
    cases.push(Case {
        description: "UDP header to a VIP cut short",
        input: {
            let mut p = udp[..14 + 20 + 4].to_vec();
            p[16..18].copy_from_slice(&24u16.to_be_bytes());
            p
        },
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::L4Truncated),
    });
    let f = flow("192.0.2.32", "10.0.0.10", 40032, 80);
    let segment = packet::tcp_segment(&f, TCP_ACK, b"fragment");
    let mut fragment = packet::ethernet(&to_lb(None), 0x0800);
    fragment.extend(packet::ipv4_header(
        f.src,
        f.dst,
        6,
        segment.len(),
        &[],
        0x2000,
    ));
    fragment.extend(segment);
    cases.push(Case {
        description: "first fragment (MF set) to a VIP",
        input: fragment,
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::Fragment),
    });
    let mut later_fragment = packet::ethernet(&to_lb(None), 0x0800);
    later_fragment.extend(packet::ipv4_header(f.src, f.dst, 6, 8, &[], 0x0010));
    later_fragment.extend_from_slice(b"tailbyte");
    cases.push(Case {
        description: "non-first fragment (offset > 0) to a VIP",
        input: later_fragment,
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::Fragment),
    });
    let mut other_fragment = packet::ethernet(&to_lb(None), 0x0800);
    other_fragment.extend(packet::ipv4_header(
        f.src,
        ip("10.0.0.99"),
        6,
        8,
        &[],
        0x0010,
    ));
    other_fragment.extend_from_slice(b"tailbyte");
    cases.push(Case {
        description: "fragment to a non-VIP address passes",
        input: other_fragment,
        action: XDP_PASS,
        output: Expected::Unchanged,
        drop: None,
    });
    // An address that shares the VIP's filter bit: the filter says "maybe", the exact
    // lookups say no, and the packet passes like any other non-VIP packet.
    let twin = filter_twin(ip("10.0.0.10"));
    cases.push(Case {
        description: "TCP to a non-VIP address that shares a VIP's filter bit passes",
        input: packet::tcp4(
            &to_lb(None),
            &flow("192.0.2.34", &twin.to_string(), 40034, 80),
            TCP_SYN,
            b"",
        ),
        action: XDP_PASS,
        output: Expected::Unchanged,
        drop: None,
    });
    let mut twin_fragment = packet::ethernet(&to_lb(None), 0x0800);
    twin_fragment.extend(packet::ipv4_header(f.src, twin, 6, 8, &[], 0x0010));
    twin_fragment.extend_from_slice(b"tailbyte");
    cases.push(Case {
        description: "fragment to a non-VIP address that shares a VIP's filter bit passes",
        input: twin_fragment,
        action: XDP_PASS,
        output: Expected::Unchanged,
        drop: None,
    });
    cases.push(Case {
        description: "TCP to a VIP whose only backend is drained (weight 0)",
        input: packet::tcp4(
            &to_lb(None),
            &flow("192.0.2.33", "10.0.0.40", 40033, 80),
            TCP_SYN,
            b"",
        ),
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::NoBackend),
    });
    cases
}

/// Another address (in 16.0.0.0/4, only ever used in test runs) whose VIP filter bit is `vip`'s.
fn filter_twin(vip: Ipv4Addr) -> Ipv4Addr {
    let words = |a: Ipv4Addr| [u32::from_ne_bytes(a.octets()), 0, 0, 0];
    let slot = vip_filter_slot(words(vip));
    (0..1u32 << 28)
        .map(|host| Ipv4Addr::from(0x1000_0000 | host))
        .find(|&a| a != vip && vip_filter_slot(words(a)) == slot)
        .expect("2^28 addresses over 2^21 bits: one shares the bit")
}

#[test]
fn fixture_table() {
    if !have_root() {
        return;
    }
    let mut lab = lab(CONFIG);
    let cases = cases(&lab);
    assert!(cases.len() >= 25, "the table lost cases");
    run_table(&mut lab, &cases);
}

/// Runs every case and checks action, output, checksum and that exactly the expected drop
/// counter moved by one; panics with every failure listed.
fn run_table(lab: &mut Lab, cases: &[Case]) {
    let mut failures = Vec::new();
    lab.drain_events();
    for case in cases {
        let before = lab.dataplane.stats().unwrap();
        let (action, output) = lab.run(&case.input);
        let after = lab.dataplane.stats().unwrap();
        // Every drop is reported (up to the default 1,000 per second): one event, its reason.
        let events = lab.drain_events();
        let reasons: Vec<u32> = events
            .iter()
            .filter(|e| e.verdict == event_verdict::DROP)
            .map(|e| e.reason)
            .collect();
        let expected_reasons: Vec<u32> = case.drop.iter().map(|r| *r as u32).collect();
        if reasons != expected_reasons {
            failures.push(format!(
                "{}: drop events with reasons {reasons:?}, expected {expected_reasons:?}",
                case.description
            ));
        }
        let expected_bytes = match &case.output {
            Expected::Unchanged => &case.input,
            Expected::Bytes(bytes) => bytes,
        };
        if action != case.action {
            failures.push(format!(
                "{}: action {action}, expected {}",
                case.description, case.action
            ));
            continue;
        }
        if &output != expected_bytes {
            failures.push(format!(
                "{}: output differs\n  got      {}\n  expected {}",
                case.description,
                hex(&output),
                hex(expected_bytes)
            ));
        }
        if action == XDP_TX {
            let (l3_off, ether_type) = if output[12..14] == [0x81, 0x00] {
                (18, [output[16], output[17]])
            } else {
                (14, [output[12], output[13]])
            };
            // The IPv4 header to check: the packet's, or the one inside IPv4-in-IPv6.
            let ipv4_off = match ether_type {
                [0x08, 0x00] => Some(l3_off),
                [0x86, 0xdd] if output[l3_off + 6] == 4 => Some(l3_off + 40),
                _ => None,
            };
            if let Some(off) = ipv4_off
                && !packet::ipv4_checksum_ok(&output, off)
            {
                failures.push(format!("{}: bad IPv4 header checksum", case.description));
            }
        }
        for reason in DropReason::ALL {
            let moved = after.drop_packets(reason) - before.drop_packets(reason);
            let expected = u64::from(case.drop == Some(reason));
            if moved != expected {
                failures.push(format!(
                    "{}: drop counter {} moved by {moved}, expected {expected}",
                    case.description,
                    reason.name()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let stats = lab.dataplane.stats().unwrap();
    assert_eq!(stats.action_packets("aborted"), 0);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The backend a frame was sent to, by destination MAC.
fn sent_to(output: &[u8]) -> [u8; 6] {
    output[0..6].try_into().unwrap()
}

#[test]
fn established_flows_stay_on_their_backend_when_the_set_changes() {
    if !have_root() {
        return;
    }
    let mut lab = self::lab(CONFIG);
    let web = vip_key("10.0.0.10", 80, 6);
    let fourth = "  [[vip.backend]]\n  address = \"10.0.1.24\"\n  mac = \"02:00:00:00:01:24\"\n\n[[vip]]\nname = \"dns-l2\"";
    let grown_text = CONFIG.replacen("\n[[vip]]\nname = \"dns-l2\"", &format!("\n{fourth}"), 1);
    let grown = self::lab(&grown_text);
    let grown_state = DesiredState::from_config(&grown.config).unwrap();

    // Find flows whose Maglev slot moves to the new backend when it is added.
    let moved: Vec<Flow> = (41000..60000u16)
        .map(|port| flow("198.51.100.7", "10.0.0.10", port, 80))
        .filter(|f| grown.predicted_backend(&web, f, 6) == 3)
        .take(5)
        .collect();
    assert_eq!(moved.len(), 5, "some slots must move to a new backend");

    // Start those flows on the 3-backend set.
    let mut first_backend = Vec::new();
    for f in &moved {
        let (action, out) = lab.run(&packet::tcp4(&to_lb(None), f, TCP_SYN, b""));
        assert_eq!(action, XDP_TX, "{:?}", lab.dataplane.stats().unwrap().drops);
        first_backend.push(sent_to(&out));
    }
    // Add the fourth backend through the normal apply path.
    let report = lab.dataplane.apply(&grown_state).unwrap();
    assert_eq!(
        (report.changed, report.unchanged),
        (1, 5),
        "only web-l2 changes"
    );
    lab.config = grown.config.clone();
    let hits_before = lab.dataplane.stats().unwrap().lb_count(LbCounter::FlowHit);
    for (f, backend) in moved.iter().zip(&first_backend) {
        let (action, out) = lab.run(&packet::tcp4(&to_lb(None), f, TCP_ACK, b"data"));
        assert_eq!(action, XDP_TX);
        assert_eq!(sent_to(&out), *backend, "established flow {f:?} moved");
    }
    let hits_after = lab.dataplane.stats().unwrap().lb_count(LbCounter::FlowHit);
    assert_eq!(hits_after - hits_before, moved.len() as u64);

    // A new flow with the same slot goes to the new backend.
    let fresh = flow("198.51.100.7", "10.0.0.10", moved[0].sport, 80);
    let fresh = Flow {
        src: ip("198.51.100.8"),
        ..fresh
    };
    let b = lab.predicted_backend(&web, &fresh, 6);
    let (_, out) = lab.run(&packet::tcp4(&to_lb(None), &fresh, TCP_SYN, b""));
    assert_eq!(sent_to(&out), lab.backend_mac("web-l2", b));

    // A SYN on an established flow's ports opens a new connection: it skips the flow table,
    // goes where the table says now (the new backend), and its entry replaces the old one.
    let reused = moved[1];
    let now = lab.backend_mac("web-l2", 3);
    assert_ne!(first_backend[1], now);
    let (_, out) = lab.run(&packet::tcp4(&to_lb(None), &reused, TCP_SYN, b""));
    assert_eq!(
        sent_to(&out),
        now,
        "a SYN must follow the table, not the old entry"
    );
    let (_, out) = lab.run(&packet::tcp4(&to_lb(None), &reused, TCP_ACK, b"data"));
    assert_eq!(
        sent_to(&out),
        now,
        "the new connection's packets follow its SYN"
    );

    // Remove the backend the first flow is on: that flow is rehashed, counted as gone.
    let victim = first_backend[0];
    let victim_addr = lab.config.vips[0]
        .backends
        .iter()
        .find(|b| b.mac.0 == victim)
        .unwrap()
        .address
        .to_string();
    let shrunk_text = remove_backend(&grown_text, &victim_addr);
    let shrunk = Config::parse(&shrunk_text, "shrunk.toml").unwrap();
    lab.dataplane
        .apply(&DesiredState::from_config(&shrunk).unwrap())
        .unwrap();
    lab.config = shrunk;
    let gone_before = lab
        .dataplane
        .stats()
        .unwrap()
        .lb_count(LbCounter::FlowBackendGone);
    let (action, out) = lab.run(&packet::tcp4(&to_lb(None), &moved[0], TCP_ACK, b"data"));
    assert_eq!(action, XDP_TX);
    assert_ne!(sent_to(&out), victim, "a flow must leave a removed backend");
    let gone_after = lab
        .dataplane
        .stats()
        .unwrap()
        .lb_count(LbCounter::FlowBackendGone);
    assert_eq!(gone_after - gone_before, 1);
}

#[test]
fn a_syn_asks_the_table_and_leaves_a_drained_backend_while_its_flow_stays() {
    if !have_root() {
        return;
    }
    let mut lab = lab(CONFIG);
    let web = vip_key("10.0.0.10", 80, 6);
    let f = flow("198.51.100.9", "10.0.0.10", 42000, 80);
    let (action, out) = lab.run(&packet::tcp4(&to_lb(None), &f, TCP_SYN, b""));
    assert_eq!(action, XDP_TX);
    let first = sent_to(&out);
    let index = (0..)
        .find(|&i| lab.backend_mac("web-l2", i) == first)
        .unwrap();

    // Drain that backend, as a drain or a failed health check does (weight 0).
    let mut drained = lab.config.clone();
    drained.vips[0].backends[index].weight = 0;
    lab.dataplane
        .apply(&DesiredState::from_config(&drained).unwrap())
        .unwrap();
    lab.config = drained;

    // The established flow stays; a SYN of the same addresses and ports (a client reusing
    // them for a new connection) goes where the table sends new flows, and the flow follows.
    let (_, out) = lab.run(&packet::tcp4(&to_lb(None), &f, TCP_ACK, b"data"));
    assert_eq!(sent_to(&out), first, "the established flow must stay");
    let (_, out) = lab.run(&packet::tcp4(&to_lb(None), &f, TCP_SYN, b""));
    let now = lab.predicted_backend(&web, &f, 6);
    assert_ne!(now, index, "the drained backend has no slot");
    assert_eq!(sent_to(&out), lab.backend_mac("web-l2", now));
    let (_, out) = lab.run(&packet::tcp4(&to_lb(None), &f, TCP_ACK, b"data"));
    assert_eq!(sent_to(&out), lab.backend_mac("web-l2", now));
    // A SYN-ACK is not an opening: it follows the flow table like any other segment.
    let (_, out) = lab.run(&packet::tcp4(&to_lb(None), &f, TCP_SYN | TCP_ACK, b""));
    assert_eq!(sent_to(&out), lab.backend_mac("web-l2", now));
}

/// The flow table's accounting: a fresh SYN adds a key (`flow_new` only); a SYN on the ports
/// of a flow still remembered overwrites its entry, counted once as `flow_replaced`, and the
/// table does not grow.
#[test]
fn a_syn_on_a_remembered_flow_replaces_its_entry_and_counts_once() {
    if !have_root() {
        return;
    }
    let mut lab = lab(CONFIG);
    let counts = |lab: &Lab| {
        let stats = lab.dataplane.stats().unwrap();
        (
            stats.lb_count(LbCounter::FlowNew),
            stats.lb_count(LbCounter::FlowReplaced),
            stats.lb_count(LbCounter::FlowInsertFailed),
            lab.dataplane.count_flows().unwrap(),
        )
    };
    assert_eq!(counts(&lab), (0, 0, 0, 0), "a fresh datapath");
    let f = flow("198.51.100.11", "10.0.0.10", 43000, 80);
    let syn = packet::tcp4(&to_lb(None), &f, TCP_SYN, b"");
    let (action, _) = lab.run(&syn);
    assert_eq!(action, XDP_TX);
    assert_eq!(counts(&lab), (1, 0, 0, 1), "a fresh SYN adds one key");

    let (action, _) = lab.run(&syn);
    assert_eq!(action, XDP_TX);
    assert_eq!(
        counts(&lab),
        (2, 1, 0, 1),
        "a SYN on a remembered flow's ports replaces its entry"
    );

    // Established packets neither add nor replace.
    let (action, _) = lab.run(&packet::tcp4(&to_lb(None), &f, TCP_ACK, b"data"));
    assert_eq!(action, XDP_TX);
    assert_eq!(counts(&lab), (2, 1, 0, 1), "an established packet");

    // Another flow (an ACK of a flow the table does not know) adds a key, not a replacement.
    let g = flow("198.51.100.11", "10.0.0.10", 43001, 80);
    let (action, _) = lab.run(&packet::tcp4(&to_lb(None), &g, TCP_ACK, b"data"));
    assert_eq!(action, XDP_TX);
    assert_eq!(counts(&lab), (3, 1, 0, 2), "an unknown flow's first packet");
    let view = lab.dataplane.flow_table().unwrap();
    assert_eq!((view.entries, view.expired, view.evicted), (2, 0, 0));
}

/// The IPv4 flow table is sets of four slots: a new flow takes a free slot of its set, and in
/// a full set the slot seen least recently (`flow_displaced`); the other flows of the set stay,
/// and the displaced flow's next packet is balanced again, to the same backend, and
/// remembered again. Every packet is forwarded; the table holds exactly the flows added less
/// those displaced.
#[test]
fn a_full_flow_set_gives_a_new_flow_the_slot_seen_least_recently() {
    if !have_root() {
        return;
    }
    let config = CONFIG.replace("flow_table_size = 4096", "flow_table_size = 1024");
    let mut lab = lab(&config);
    let mut sweeper = lab.dataplane.flow_sweeper(300).unwrap();
    let sets = xlb_common::flow_sets(1024);
    let key = |port: u16| FlowKey {
        src: u32::from_ne_bytes("198.51.100.12".parse::<Ipv4Addr>().unwrap().octets()),
        dst: u32::from_ne_bytes("10.0.0.10".parse::<Ipv4Addr>().unwrap().octets()),
        sport: port.to_be(),
        dport: 80u16.to_be(),
        proto: 6,
        _pad: 0,
        _pad2: 0,
    };
    let set_of = |port: u16| xlb_common::flow_set_index(hash::flow_hash(&key(port)), sets);
    // Six flows of one set.
    let first = 20_000u16;
    let ports: Vec<u16> = (first..)
        .filter(|&p| set_of(p) == set_of(first))
        .take(6)
        .collect();
    let tcp = |port: u16, flags| {
        let f = flow("198.51.100.12", "10.0.0.10", port, 80);
        packet::tcp4(&to_lb(None), &f, flags, b"")
    };
    let counts = |lab: &Lab| {
        let stats = lab.dataplane.stats().unwrap();
        (
            stats.lb_count(LbCounter::FlowHit),
            stats.lb_count(LbCounter::FlowNew),
            stats.lb_count(LbCounter::FlowDisplaced),
        )
    };
    // Four flows fill the set, seen at 1000, 1001, 1002 and 1003 s.
    let mut backends = Vec::new();
    for (i, &port) in ports[..4].iter().enumerate() {
        sweeper.set_clock(1000 + i as u32).unwrap();
        let (action, out) = lab.run(&tcp(port, TCP_SYN));
        assert_eq!(action, XDP_TX);
        backends.push(sent_to(&out));
    }
    // The first sends again at 1004 s: the second is now the least recently seen.
    sweeper.set_clock(1004).unwrap();
    lab.run(&tcp(ports[0], TCP_ACK));
    assert_eq!(counts(&lab), (1, 4, 0));
    assert_eq!(lab.dataplane.count_flows().unwrap(), 4);

    // A fifth flow takes the second's slot.
    let (action, _) = lab.run(&tcp(ports[4], TCP_SYN));
    assert_eq!(action, XDP_TX, "a new flow is forwarded, full set or not");
    assert_eq!(counts(&lab), (1, 5, 1), "one flow displaced");
    assert_eq!(lab.dataplane.count_flows().unwrap(), 4);
    for &port in [ports[0], ports[2], ports[3], ports[4]].iter() {
        lab.run(&tcp(port, TCP_ACK));
    }
    assert_eq!(counts(&lab), (5, 5, 1), "the other four are all remembered");

    // The displaced flow's next packet goes to the same backend (the Maglev table did not
    // change) and is remembered again, displacing another (all four were seen at 1004 s).
    sweeper.set_clock(1005).unwrap();
    let (action, out) = lab.run(&tcp(ports[1], TCP_ACK));
    assert_eq!(action, XDP_TX);
    assert_eq!(
        sent_to(&out),
        backends[1],
        "balanced again, to the same backend"
    );
    assert_eq!(counts(&lab), (5, 6, 2));
    let (_, _) = lab.run(&tcp(ports[1], TCP_ACK));
    assert_eq!(counts(&lab), (6, 6, 2), "remembered again");

    // Many distinct flows: every one forwarded, the table holds exactly those not displaced,
    // and at most its slots.
    const SENT: u16 = 2 * 1024 + 100;
    for i in 0..SENT {
        let (action, _) = lab.run(&tcp(40_000 + i, TCP_SYN));
        assert_eq!(action, XDP_TX, "flow {i} is forwarded");
    }
    let (_, new, displaced) = counts(&lab);
    let entries = lab.dataplane.count_flows().unwrap();
    assert_eq!(
        u64::from(entries),
        new - displaced,
        "flows added less those displaced"
    );
    assert!(entries <= 2 * 1024, "{entries} flows in 2048 slots");
    assert!(displaced > 2, "a table past its size displaces flows");
    let stats = lab.dataplane.stats().unwrap();
    assert_eq!(stats.lb_count(LbCounter::FlowInsertFailed), 0);
    let view = lab.dataplane.flow_table().unwrap();
    assert_eq!((view.slots, view.capacity), (2048, 1024));
}

/// The expiry both flow tables share, with a clock of the test's own: packets stamp their
/// flow's entry with the datapath clock; a sweep removes the flows idle past the timeout (300
/// s), not one refreshed by a later packet. 500 flows (`frame` of ports 10,000 on) are sent at
/// 1000 s, 500 more (ports 20,000 on) at 1200 s, when the first flow sends again; the sweep at
/// 1350 s is returned, after checking that the refreshed flow is still remembered and another
/// of the first 500 is new again.
fn expire_idle_flows(
    lab: &mut Lab,
    sweeper: &mut FlowSweeper,
    frame: &dyn Fn(u16, u8) -> Vec<u8>,
) -> SweepReport {
    let send = |lab: &mut Lab, ports: std::ops::Range<u16>, flags| {
        for port in ports {
            assert_eq!(lab.run(&frame(port, flags)).0, XDP_TX);
        }
    };
    let new_flows = |lab: &Lab| lab.dataplane.stats().unwrap().lb_count(LbCounter::FlowNew);
    sweeper.set_clock(1000).unwrap();
    send(lab, 10_000..10_500, TCP_SYN);
    sweeper.set_clock(1200).unwrap();
    send(lab, 20_000..20_500, TCP_SYN);
    send(lab, 10_000..10_001, TCP_ACK);
    assert_eq!(new_flows(lab), 1000, "the ACK found its flow");
    let report = sweeper.sweep(1350).unwrap();
    send(lab, 10_000..10_001, TCP_ACK);
    assert_eq!(
        new_flows(lab),
        1000,
        "the refreshed flow is still remembered"
    );
    send(lab, 10_001..10_002, TCP_ACK);
    assert_eq!(new_flows(lab), 1001, "an expired flow is new again");
    report
}

/// `xlbd`'s upkeep of the IPv4 flow table ([`expire_idle_flows`]): the sweep frees the 499
/// idle slots.
#[test]
fn the_sweeper_expires_idle_ipv4_flows() {
    if !have_root() {
        return;
    }
    let mut lab = lab(CONFIG);
    let mut sweeper = lab.dataplane.flow_sweeper(300).unwrap();
    let tcp = |port: u16, flags| {
        let f = flow("198.51.100.13", "10.0.0.10", port, 80);
        packet::tcp4(&to_lb(None), &f, flags, b"")
    };
    let report = expire_idle_flows(&mut lab, &mut sweeper, &tcp);
    assert_eq!(
        (report.expired, report.evicted, report.entries),
        (499, 0, 501)
    );
    let stats = lab.dataplane.stats().unwrap();
    assert_eq!(
        stats.lb_count(LbCounter::FlowDisplaced),
        0,
        "8192 slots: no set full"
    );
    let view = lab.dataplane.flow_table().unwrap();
    assert_eq!((view.expired, view.evicted), (499, 0));
}

/// The IPv6 flow table (a hash map) evicts nothing on the packet path: full, it refuses new
/// keys, counted as `flow_insert_failed`, and still forwards those flows (by the Maglev
/// table). `xlbd`'s sweeper expires its idle entries ([`expire_idle_flows`]) and, in a table
/// above 90%, removes the least recently seen down to 80%, never a fresher flow. Batched and
/// key-by-key counts agree.
#[test]
fn the_ipv6_flow_table_refuses_when_full_and_the_sweeper_evicts_the_least_recently_seen() {
    if !have_root() {
        return;
    }
    let config = V6_CONFIG.replace("flow_table_size = 4096", "flow_table_size = 1024");
    let mut lab = lab(&config);
    let mut sweeper = lab.dataplane.flow_sweeper(300).unwrap();
    let tcp = |port: u16, flags| {
        let f = flow6("2001:db8:ff::13", "2001:db8::10", port, 80);
        packet::tcp6(&to_lb(None), &f, flags, b"")
    };
    let send = |lab: &mut Lab, ports: std::ops::Range<u16>, flags| {
        for port in ports {
            assert_eq!(lab.run(&tcp(port, flags)).0, XDP_TX);
        }
    };
    let new_flows = |lab: &Lab| lab.dataplane.stats().unwrap().lb_count(LbCounter::FlowNew);
    let report = expire_idle_flows(&mut lab, &mut sweeper, &tcp);
    assert_eq!(
        (report.expired, report.evicted, report.entries_v6),
        (499, 0, 501)
    );

    // C: 500 flows at 1400 s bring the table to 1002 entries (B, A's refreshed flow, the one
    // added again at 1200, and C), above the high-water mark (921 of 1024): 183 of the least
    // recently seen (at 1200) go, down to 819; C's flows all stay.
    sweeper.set_clock(1400).unwrap();
    send(&mut lab, 30_000..30_500, TCP_SYN);
    assert_eq!(lab.dataplane.count_flows6().unwrap(), 1002);
    assert_eq!(
        lab.dataplane.count_flows6_key_by_key().unwrap(),
        1002,
        "batched and key-by-key counts agree"
    );
    let report = sweeper.sweep(1400).unwrap();
    assert_eq!(
        (report.expired, report.evicted, report.entries_v6),
        (0, 183, 819)
    );
    assert_eq!(lab.dataplane.count_flows6().unwrap(), 819);
    let before = new_flows(&lab);
    send(&mut lab, 30_000..30_500, TCP_ACK);
    assert_eq!(
        new_flows(&lab),
        before,
        "the flows seen at 1400 s all stayed"
    );

    // Full: 205 more fill it (1024), and 100 past that are refused, still forwarded; none of
    // the flows it holds is evicted.
    send(&mut lab, 40_000..40_305, TCP_SYN);
    let stats = lab.dataplane.stats().unwrap();
    assert_eq!(stats.lb_count(LbCounter::FlowInsertFailed), 100);
    assert_eq!(
        lab.dataplane.count_flows6().unwrap(),
        1024,
        "the table is full"
    );
    let before = new_flows(&lab);
    send(&mut lab, 30_000..30_500, TCP_ACK);
    assert_eq!(new_flows(&lab), before, "a full table evicted nothing");

    let view = lab.dataplane.flow_table().unwrap();
    assert_eq!((view.expired, view.evicted), (499, 183));
}

/// The config text with `vip`'s `[[vip]]` table (up to the next one) left out.
fn without_vip(config: &str, name: &str) -> String {
    let start = config
        .find(&format!("[[vip]]\nname = \"{name}\"\n"))
        .expect("VIP in config");
    let end = config[start + 1..]
        .find("[[vip]]\n")
        .map_or(config.len(), |i| start + 1 + i);
    format!("{}{}", &config[..start], &config[end..])
}

fn apply_text(lab: &mut Lab, text: &str) {
    let config = Config::parse(text, "fixtures.toml").unwrap_or_else(|e| panic!("{e}"));
    let state = DesiredState::from_config(&config).unwrap_or_else(|e| panic!("{e}"));
    lab.dataplane
        .apply(&state)
        .unwrap_or_else(|e| panic!("{e}"));
    lab.config = config;
}

/// An established flow finds its VIP by the id in its flow entry (`XLB_VIP_BY_ID`, or
/// `XLB_VIP_BY_ID6`: an array read instead of a hash lookup), checked against the packet: when
/// its VIP is removed and the id (and the backend ids) go to a VIP on another address, the
/// flow's packets are not sent to that VIP's backends; they find no VIP and are dropped as
/// unserved (another VIP keeps the address a VIP address), as before the change.
struct VipIdReuse<'a> {
    /// The config, and the name of the VIP (TCP port 80, at `old`) that is removed.
    config: &'a str,
    removed: &'a str,
    /// The removed VIP's address, the address of the VIP added after it, and that VIP's
    /// backend's address (of the same family).
    old: &'a str,
    new: &'a str,
    new_backend: &'a str,
    /// A TCP frame with these flags from the client port to port 80 of an address.
    frame: &'a dyn Fn(&str, u16, u8) -> Vec<u8>,
    /// The ordered key of TCP port 80 at an address.
    key: &'a dyn Fn(&str) -> VipKeyOrd,
}

fn an_established_flow_never_follows_its_vip_id(case: &VipIdReuse) {
    let mut lab = lab(case.config);
    let old_id = lab
        .dataplane
        .vip_id(&(case.key)(case.old))
        .expect("VIP applied");
    let (action, _) = lab.run(&(case.frame)(case.old, 45000, TCP_SYN));
    assert_eq!(action, XDP_TX);
    let hits = |lab: &Lab| lab.dataplane.stats().unwrap().lb_count(LbCounter::FlowHit);
    let (action, _) = lab.run(&(case.frame)(case.old, 45000, TCP_ACK));
    assert_eq!((action, hits(&lab)), (XDP_TX, 1), "established");

    // Remove the VIP, then add one on another address: it gets the freed id.
    let removed = without_vip(case.config, case.removed);
    apply_text(&mut lab, &removed);
    let (action, _) = lab.run(&(case.frame)(case.old, 45000, TCP_ACK));
    assert_eq!(
        action, XDP_DROP,
        "port 80 is unserved (dropped, the default)"
    );
    let moved = format!(
        "{removed}\n[[vip]]\nname = \"moved\"\naddress = \"{}\"\nport = 80\n\
         protocol = \"tcp\"\nmode = \"l2\"\ntable_size = 251\n  [[vip.backend]]\n  \
         address = \"{}\"\n  mac = \"02:00:00:00:05:01\"\n",
        case.new, case.new_backend
    );
    apply_text(&mut lab, &moved);
    assert_eq!(
        lab.dataplane.vip_id(&(case.key)(case.new)),
        Some(old_id),
        "the new VIP reuses the id (the premise of this test)"
    );
    let before = hits(&lab);
    let (action, out) = lab.run(&(case.frame)(case.old, 45000, TCP_ACK));
    assert_ne!(
        (action, sent_to(&out)),
        (XDP_TX, [0x02, 0, 0, 0, 0x05, 0x01]),
        "the old flow reached the new VIP's backend"
    );
    assert_eq!(action, XDP_DROP, "still unserved");
    assert_eq!(hits(&lab), before);
    // The new VIP serves its own flows, and finds them by id.
    let (action, out) = lab.run(&(case.frame)(case.new, 45001, TCP_SYN));
    assert_eq!(
        (action, sent_to(&out)),
        (XDP_TX, [0x02, 0, 0, 0, 0x05, 0x01])
    );
    let (action, out) = lab.run(&(case.frame)(case.new, 45001, TCP_ACK));
    assert_eq!(
        (action, sent_to(&out), hits(&lab)),
        (XDP_TX, [0x02, 0, 0, 0, 0x05, 0x01], before + 1)
    );
}

#[test]
fn an_established_flow_never_follows_its_vip_id_to_another_vip() {
    if !have_root() {
        return;
    }
    // dns-l2 keeps 10.0.0.10 a VIP address.
    an_established_flow_never_follows_its_vip_id(&VipIdReuse {
        config: CONFIG,
        removed: "web-l2",
        old: "10.0.0.10",
        new: "10.0.0.50",
        new_backend: "10.0.5.1",
        frame: &|dst, port, flags| {
            packet::tcp4(
                &to_lb(None),
                &flow("198.51.100.21", dst, port, 80),
                flags,
                b"",
            )
        },
        key: &|addr| vip_key(addr, 80, 6),
    });
}

#[test]
fn an_established_ipv6_flow_never_follows_its_vip_id_to_another_vip() {
    if !have_root() {
        return;
    }
    // dns6-ipip keeps 2001:db8::20 a VIP address.
    an_established_flow_never_follows_its_vip_id(&VipIdReuse {
        config: V6_CONFIG,
        removed: "web6-ipip",
        old: "2001:db8::20",
        new: "2001:db8::30",
        new_backend: "2001:db8:5::1",
        frame: &|dst, port, flags| {
            packet::tcp6(
                &to_lb(None),
                &flow6("2001:db8:ff::21", dst, port, 80),
                flags,
                b"",
            )
        },
        key: &|addr| vip_key6(addr, 80, 6),
    });
}

/// A flow keeps the VIP it was balanced for: one established on a VIP that serves every port
/// stays on it when a VIP for its own port is added; new flows to that port go to the new VIP.
#[test]
fn a_flow_on_an_any_port_vip_stays_when_an_exact_port_vip_is_added() {
    if !have_root() {
        return;
    }
    let mut lab = lab(CONFIG);
    let any_port_backend = [0x02, 0, 0, 0, 0x03, 0x01];
    let exact_backend = [0x02, 0, 0, 0, 0x06, 0x01];
    let f = flow("198.51.100.22", "10.0.0.30", 46000, 8080);
    let (action, out) = lab.run(&packet::tcp4(&to_lb(None), &f, TCP_SYN, b""));
    assert_eq!((action, sent_to(&out)), (XDP_TX, any_port_backend));

    let exact = format!(
        "{CONFIG}\n[[vip]]\nname = \"exact\"\naddress = \"10.0.0.30\"\nport = 8080\n\
         protocol = \"tcp\"\nmode = \"l2\"\ntable_size = 251\n  [[vip.backend]]\n  \
         address = \"10.0.6.1\"\n  mac = \"02:00:00:00:06:01\"\n"
    );
    apply_text(&mut lab, &exact);
    let (action, out) = lab.run(&packet::tcp4(&to_lb(None), &f, TCP_ACK, b"data"));
    assert_eq!(
        (action, sent_to(&out)),
        (XDP_TX, any_port_backend),
        "the established flow stays with its VIP"
    );
    let g = flow("198.51.100.22", "10.0.0.30", 46001, 8080);
    let (action, out) = lab.run(&packet::tcp4(&to_lb(None), &g, TCP_SYN, b""));
    assert_eq!(
        (action, sent_to(&out)),
        (XDP_TX, exact_backend),
        "a new flow goes to the exact-port VIP"
    );
}

fn remove_backend(config: &str, address: &str) -> String {
    let needle = format!("  [[vip.backend]]\n  address = \"{address}\"\n");
    let start = config.find(&needle).expect("backend in config");
    let rest = &config[start + needle.len()..];
    let end = rest
        .find("\n  [[vip.backend]]")
        .or_else(|| rest.find("\n\n"))
        .unwrap();
    format!("{}{}", &config[..start], &rest[end + 1..])
}

// ----- Policy: global lists, per-VIP source ranges, unwanted packets, rate limits -----

const POLICY_CONFIG: &str = r#"
[interface]
name = "fixture1"

[limits]
flow_table_size = 4096
max_vips = 64
max_backends = 256
maglev_slots = 262144

[policy]
# Most specific prefix wins: 198.51.100.7 is allowed inside a denied /24, and 203.0.113.128/25
# is denied inside an allowed /24. With an allow list, sources matching nothing are dropped.
# The datapath resolves the lists per /24: 198.18.5.0/24 is denied whole; 100.100.7.0/24 (a /32
# allow inside a denied /16) and 100.101.5.0/24 (a deny /25 inside an allowed /16) are mixed.
deny = ["198.51.100.0/24", "203.0.113.128/25", "172.16.0.0/12", "198.18.5.0/24", "100.100.0.0/16", "100.101.5.128/25", "2001:db8:bad::/48"]
allow = ["198.51.100.7", "203.0.113.0/24", "192.0.2.0/24", "100.100.7.7", "100.101.0.0/16", "2001:db8::/32"]
ipv4_options = "drop"

[policy.rate_limit]
new_connections_per_second = 1
burst = 2

[[vip]]
name = "web"
address = "10.0.0.10"
port = 80
protocol = "tcp"
mode = "l2"
table_size = 251
  [[vip.backend]]
  address = "10.0.1.21"
  mac = "02:00:00:00:01:21"

[[vip]]
name = "admin"
address = "10.0.0.10"
port = 22
protocol = "tcp"
mode = "l2"
table_size = 251
source_ranges = ["192.0.2.128/25"]
  [[vip.backend]]
  address = "10.0.1.22"
  mac = "02:00:00:00:01:22"
"#;

/// The deny and allow lines of [`POLICY_CONFIG`], for variants of it.
const POLICY_DENY: &str = r#"deny = ["198.51.100.0/24", "203.0.113.128/25", "172.16.0.0/12", "198.18.5.0/24", "100.100.0.0/16", "100.101.5.128/25", "2001:db8:bad::/48"]"#;
const POLICY_ALLOW: &str = r#"allow = ["198.51.100.7", "203.0.113.0/24", "192.0.2.0/24", "100.100.7.7", "100.101.0.0/16", "2001:db8::/32"]"#;

fn ipv6_frame(src: &str, payload: usize) -> Vec<u8> {
    let src: std::net::Ipv6Addr = src.parse().unwrap();
    let dst: std::net::Ipv6Addr = "2001:db8::10".parse().unwrap();
    let mut frame = packet::ethernet(&to_lb(None), 0x86dd);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(payload as u16).to_be_bytes());
    frame.extend_from_slice(&[59, 64]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend(std::iter::repeat_n(0u8, payload));
    frame
}

fn policy_cases(lab: &Lab) -> Vec<Case> {
    let mut cases = Vec::new();
    let forwarded = |description: &'static str, src: &str, dport: u16, flags: u8| {
        let f = flow(src, "10.0.0.10", 41000, dport);
        let input = packet::tcp4(&to_lb(None), &f, flags, b"");
        let vip = if dport == 80 { "web" } else { "admin" };
        Case {
            description,
            output: Expected::Bytes(l2_rewritten(&input, lab.backend_mac(vip, 0))),
            input,
            action: XDP_TX,
            drop: None,
        }
    };
    let dropped = |description: &'static str, input: Vec<u8>, reason: DropReason| Case {
        description,
        input,
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(reason),
    };
    let syn = |src: &str, dport: u16| {
        packet::tcp4(
            &to_lb(None),
            &flow(src, "10.0.0.10", 41000, dport),
            TCP_SYN,
            b"",
        )
    };

    // Precedence of the global lists.
    cases.push(forwarded(
        "allowed source (allow /24) is balanced",
        "192.0.2.1",
        80,
        TCP_SYN,
    ));
    cases.push(dropped(
        "source in a denied /24: denied",
        syn("198.51.100.8", 80),
        DropReason::Denied,
    ));
    cases.push(forwarded(
        "allow /32 inside a denied /24: the more specific allow wins",
        "198.51.100.7",
        80,
        TCP_SYN,
    ));
    cases.push(dropped(
        "deny /25 inside an allowed /24: the more specific deny wins",
        syn("203.0.113.200", 80),
        DropReason::Denied,
    ));
    cases.push(forwarded(
        "the allowed half of that /24",
        "203.0.113.5",
        80,
        TCP_SYN,
    ));
    cases.push(dropped(
        "source in no list while the allow list is not empty: not allowed",
        syn("100.64.0.1", 80),
        DropReason::NotAllowed,
    ));
    cases.push(dropped(
        "a deny prefix shorter than /16 covers every /16 and /24 inside it",
        syn("172.20.1.1", 80),
        DropReason::Denied,
    ));
    cases.push(dropped(
        "a /24 denied whole (decided by its /24 code, no per-address table)",
        syn("198.18.5.9", 80),
        DropReason::Denied,
    ));
    cases.push(forwarded(
        "a /32 allow inside a denied /16: its /24 is mixed, the /32 passes",
        "100.100.7.7",
        80,
        TCP_SYN,
    ));
    cases.push(dropped(
        "its neighbour in the mixed /24 is denied by the /16",
        syn("100.100.7.8", 80),
        DropReason::Denied,
    ));
    cases.push(dropped(
        "another /24 of the denied /16 (whole /24 deny from a /16)",
        syn("100.100.200.1", 80),
        DropReason::Denied,
    ));
    cases.push(dropped(
        "a deny /25 inside an allowed /16: the /25 is denied",
        syn("100.101.5.200", 80),
        DropReason::Denied,
    ));
    cases.push(forwarded(
        "the other half of that mixed /24 is allowed by the /16",
        "100.101.5.5",
        80,
        TCP_SYN,
    ));
    cases.push(forwarded(
        "another /24 of the allowed /16",
        "100.101.9.9",
        80,
        TCP_SYN,
    ));
    cases.push(dropped(
        "global lists apply to traffic for any address, not only VIPs",
        packet::tcp4(
            &to_lb(None),
            &flow("198.51.100.9", "10.0.0.99", 41000, 80),
            TCP_SYN,
            b"",
        ),
        DropReason::Denied,
    ));
    cases.push(dropped(
        "IPv6 source in the IPv6 deny list",
        ipv6_frame("2001:db8:bad::1", 8),
        DropReason::Denied,
    ));
    cases.push(Case {
        description: "IPv6 source in the IPv6 allow list passes (IPv6 is not balanced yet)",
        input: ipv6_frame("2001:db8::1", 8),
        action: XDP_PASS,
        output: Expected::Unchanged,
        drop: None,
    });
    cases.push(dropped(
        "IPv6 source outside the IPv6 allow list",
        ipv6_frame("2001:dead::1", 8),
        DropReason::NotAllowed,
    ));
    cases.push(dropped(
        "IPv6 header cut short while IPv6 lists are in use",
        ipv6_frame("2001:db8::1", 0)[..14 + 30].to_vec(),
        DropReason::Ipv6Truncated,
    ));

    // Per-VIP source ranges (after the global lists).
    cases.push(dropped(
        "globally allowed source outside the VIP's source_ranges",
        syn("192.0.2.1", 22),
        DropReason::VipSourceDenied,
    ));
    cases.push(forwarded(
        "source inside the VIP's source_ranges",
        "192.0.2.130",
        22,
        TCP_SYN,
    ));

    // Unwanted packets to a VIP.
    cases.push(dropped(
        "TCP to the VIP address on a port no VIP serves",
        syn("192.0.2.2", 8080),
        DropReason::Unserved,
    ));
    let segment = packet::tcp_segment(&flow("192.0.2.3", "10.0.0.10", 41000, 80), TCP_ACK, b"");
    let mut options = packet::ethernet(&to_lb(None), 0x0800);
    options.extend(packet::ipv4_header(
        ip("192.0.2.3"),
        ip("10.0.0.10"),
        6,
        segment.len(),
        &[1, 1, 1, 0],
        0,
    ));
    options.extend(segment);
    cases.push(dropped(
        "IPv4 options to a VIP with ipv4_options = \"drop\"",
        options,
        DropReason::Ipv4Options,
    ));
    for (description, flags) in [
        ("TCP with no flags (null scan)", 0u8),
        ("TCP SYN+FIN", TCP_SYN | 0x01),
        ("TCP SYN+RST", TCP_SYN | 0x04),
        (
            "TCP FIN+PSH+URG without ACK (Xmas scan)",
            0x01 | 0x08 | 0x20,
        ),
    ] {
        let input = packet::tcp4(
            &to_lb(None),
            &flow("192.0.2.4", "10.0.0.10", 41001, 80),
            flags,
            b"",
        );
        cases.push(dropped(description, input, DropReason::TcpBadFlags));
    }
    let mut bad_offset = syn("192.0.2.5", 80);
    bad_offset[14 + 20 + 12] = 4 << 4;
    cases.push(dropped(
        "TCP data offset below 5 words",
        bad_offset,
        DropReason::TcpBadFlags,
    ));

    // Per-source rate of new connections: a burst of 2, then 1 per second.
    cases.push(forwarded("first SYN of a source", "192.0.2.9", 80, TCP_SYN));
    cases.push(forwarded(
        "second SYN (burst of 2)",
        "192.0.2.9",
        80,
        TCP_SYN,
    ));
    cases.push(dropped(
        "third SYN within the second: rate limited",
        syn("192.0.2.9", 80),
        DropReason::RateLimited,
    ));
    cases.push(forwarded(
        "an ACK of the same source is not a new connection",
        "192.0.2.9",
        80,
        TCP_ACK,
    ));
    cases
}

#[test]
fn policy_table() {
    if !have_root() {
        return;
    }
    let mut lab = lab(POLICY_CONFIG);
    let cases = policy_cases(&lab);
    run_table(&mut lab, &cases);
    // Every reason of the policy stage (`denied` to `ipv6_truncated`) is covered by the table;
    // the IPv6 parsing reasons after it by `ipv6_table`.
    for &reason in
        &DropReason::ALL[DropReason::Denied as usize..=DropReason::Ipv6Truncated as usize]
    {
        assert!(
            cases.iter().any(|c| c.drop == Some(reason)),
            "no case for {}",
            reason.name()
        );
    }
}

const PASSING_CONFIG: &str = r#"
[interface]
name = "fixture2"

[limits]
flow_table_size = 4096
max_vips = 64
max_backends = 256
maglev_slots = 262144

[policy]
unserved = "pass"
fragments = "pass"

[policy.flow_guard]
new_flows_per_second = 2

[events]
forward_sample = 1

[[vip]]
name = "web"
address = "10.0.0.10"
port = 80
protocol = "tcp"
mode = "l2"
table_size = 251
  [[vip.backend]]
  address = "10.0.1.21"
  mac = "02:00:00:00:01:21"
"#;

/// Pins the calling thread to its current CPU, so per-CPU state is the same across runs.
fn pin_to_one_cpu() {
    // SAFETY: sched_getcpu has no preconditions; the set is zeroed before use and passed with
    // its size.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

#[test]
fn unserved_and_fragments_can_pass_and_the_flow_guard_keeps_forwarding() {
    if !have_root() {
        return;
    }
    pin_to_one_cpu();
    let mut lab = lab(PASSING_CONFIG);
    let mut fragment = packet::ethernet(&to_lb(None), 0x0800);
    fragment.extend(packet::ipv4_header(
        ip("192.0.2.1"),
        ip("10.0.0.10"),
        6,
        8,
        &[],
        0x2000,
    ));
    fragment.extend_from_slice(b"8 bytes.");
    let cases = vec![
        Case {
            description: "fragment to a VIP with fragments = \"pass\"",
            input: fragment,
            action: XDP_PASS,
            output: Expected::Unchanged,
            drop: None,
        },
        Case {
            description: "unserved port with unserved = \"pass\"",
            input: packet::tcp4(
                &to_lb(None),
                &flow("192.0.2.1", "10.0.0.10", 41000, 8080),
                TCP_SYN,
                b"",
            ),
            action: XDP_PASS,
            output: Expected::Unchanged,
            drop: None,
        },
    ];
    run_table(&mut lab, &cases);

    // Flow guard: 2 new flows per second per CPU are remembered; the rest are still forwarded.
    // The window is one second: a slow machine that crosses it gets a fresh budget, so retry
    // a bounded number of rounds until one round fits in a window.
    let web = vip_key("10.0.0.10", 80, 6);
    let mut round = 0u16;
    loop {
        round += 1;
        assert!(round <= 20, "no round of 5 new flows fitted in one second");
        let before = lab.dataplane.stats().unwrap();
        let started = std::time::Instant::now();
        for i in 0..5u16 {
            let f = flow("192.0.2.50", "10.0.0.10", 1000 * round + i, 80);
            let (action, _) = lab.run(&packet::tcp4(&to_lb(None), &f, TCP_SYN, b""));
            assert_eq!(
                action, XDP_TX,
                "a new flow over the ceiling is still forwarded"
            );
        }
        if started.elapsed() >= std::time::Duration::from_millis(500) {
            continue;
        }
        let after = lab.dataplane.stats().unwrap();
        let not_remembered = after.policy_count(PolicyCounter::FlowNotRemembered)
            - before.policy_count(PolicyCounter::FlowNotRemembered);
        let new = after.lb_count(LbCounter::FlowNew) - before.lb_count(LbCounter::FlowNew);
        assert_eq!(new, 5);
        // The first round starts a window; later rounds may straddle two. At least the flows
        // past the ceiling of one window are not remembered.
        if not_remembered >= 3 || (round > 1 && not_remembered >= 1) {
            break;
        }
    }
    // Forward sample of 1: every forwarded packet gave a forward event naming its backend.
    let events = lab.drain_events();
    let forwards: Vec<&Event> = events
        .iter()
        .filter(|e| e.verdict == event_verdict::FORWARD)
        .collect();
    assert!(forwards.len() >= 5, "forward events: {}", forwards.len());
    let backend = lab.dataplane.backend_id(&web, 0).unwrap();
    assert!(forwards.iter().all(|e| e.backend_id == backend));
}

#[test]
fn policy_changes_apply_by_difference() {
    if !have_root() {
        return;
    }
    let mut lab = lab(POLICY_CONFIG);
    let changed_text = POLICY_CONFIG
        .replace(POLICY_DENY, r#"deny = ["100.64.0.0/10"]"#)
        .replace(POLICY_ALLOW, "");
    let changed = Config::parse(&changed_text, "changed.toml").unwrap_or_else(|e| panic!("{e}"));
    let state = DesiredState::from_config(&changed).unwrap_or_else(|e| panic!("{e}"));
    lab.dataplane
        .apply(&state)
        .unwrap_or_else(|e| panic!("{e}"));
    let backend = lab.backend_mac("web", 0);
    let forwarded = |description, src| forwarded_to_web(backend, description, src);
    let cases = vec![
        forwarded("a source of the removed deny /24 is let in", "198.51.100.8"),
        forwarded("a source of the removed deny /12 is let in", "172.20.1.1"),
        forwarded(
            "a source of the removed whole-/24 deny is let in",
            "198.18.5.9",
        ),
        forwarded(
            "a source of the removed mixed /24 (deny /25) is let in",
            "203.0.113.200",
        ),
        forwarded(
            "with no allow list left, any other source is let in",
            "8.8.8.8",
        ),
        denied_to_web("the new deny /10", "100.64.5.5"),
        Case {
            description: "IPv6 lists emptied: IPv6 passes",
            input: ipv6_frame("2001:db8:bad::1", 8),
            action: XDP_PASS,
            output: Expected::Unchanged,
            drop: None,
        },
    ];
    run_table(&mut lab, &cases);
}

/// [`POLICY_CONFIG`] denying only `count` /32s, each in a /24 of its own from `first` on (so
/// each /24 is mixed and needs a table), without the rate limit, under a prefix limit of 40,000:
/// 120,000 tables, capped at 65,533.
fn many_mixed_config(first: u32, count: u32) -> String {
    let deny: Vec<String> = (0..count)
        .map(|i| format!("\"{}\"", std::net::Ipv4Addr::from(first + (i << 8) + 1)))
        .collect();
    POLICY_CONFIG
        .replace(POLICY_DENY, &format!("deny = [{}]", deny.join(", ")))
        .replace(POLICY_ALLOW, "")
        .replace(
            "[policy.rate_limit]\nnew_connections_per_second = 1\nburst = 2\n",
            "",
        )
        .replace(
            "maglev_slots = 262144\n",
            "maglev_slots = 262144\npolicy_prefixes = 40000\n",
        )
}

/// A SYN from `src` to the `web` VIP of [`POLICY_CONFIG`].
fn syn_to_web(src: &str) -> Vec<u8> {
    packet::tcp4(
        &to_lb(None),
        &flow(src, "10.0.0.10", 42000, 80),
        TCP_SYN,
        b"",
    )
}

/// A SYN from `src` to `web`, forwarded to the backend with MAC `backend`.
fn forwarded_to_web(backend: [u8; 6], description: &'static str, src: &str) -> Case {
    let input = syn_to_web(src);
    Case {
        description,
        output: Expected::Bytes(l2_rewritten(&input, backend)),
        input,
        action: XDP_TX,
        drop: None,
    }
}

/// A SYN from `src` to `web`, dropped as denied.
fn denied_to_web(description: &'static str, src: &str) -> Case {
    Case {
        description,
        input: syn_to_web(src),
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::Denied),
    }
}

#[test]
fn a_change_needing_more_mixed_tables_than_free_is_refused_and_the_old_lists_serve() {
    if !have_root() {
        return;
    }
    // 33,000 mixed /24s in 20.0.0.0/8 fit (65,533 tables); replacing them all by 33,000 others
    // in 21.0.0.0/8 needs 33,000 fresh tables while the old ones are in use: 32,533 are free.
    let mut lab = lab(&many_mixed_config(0x1400_0000, 33_000));
    let other = many_mixed_config(0x1500_0000, 33_000);
    let config = Config::parse(&other, "other.toml").unwrap_or_else(|e| panic!("{e}"));
    let state = DesiredState::from_config(&config).unwrap_or_else(|e| panic!("{e}"));
    let error = lab
        .dataplane
        .apply(&state)
        .expect_err("too few free tables");
    let text = error.to_string();
    assert!(
        text.contains("mixed IPv4 /24 tables") && text.contains("need 33000, 32533 available"),
        "{text}"
    );
    let backend = lab.backend_mac("web", 0);
    let forwarded = |description, src| forwarded_to_web(backend, description, src);
    let denied = denied_to_web;
    let cases = vec![
        denied("a listed /32 of the old lists, first /24", "20.0.0.1"),
        denied("a listed /32 of the old lists, last /24", "20.128.231.1"),
        forwarded("its neighbour in the same mixed /24", "20.128.231.2"),
        forwarded("a /32 of the refused lists", "21.0.5.1"),
    ];
    run_table(&mut lab, &cases);
    // A change that fits goes through (6,000 new /32s: the trie, limited to 40,000 entries,
    // holds the old and the new entries during a change); the refused one left nothing behind.
    let half = many_mixed_config(0x1500_0000, 6_000);
    let config = Config::parse(&half, "half.toml").unwrap_or_else(|e| panic!("{e}"));
    let state = DesiredState::from_config(&config).unwrap_or_else(|e| panic!("{e}"));
    lab.dataplane
        .apply(&state)
        .unwrap_or_else(|e| panic!("{e}"));
    let cases = vec![
        forwarded("a /32 of the old lists, no longer listed", "20.0.0.1"),
        denied("a /32 of the new lists", "21.0.5.1"),
        forwarded("its neighbour", "21.0.5.2"),
    ];
    run_table(&mut lab, &cases);
}

// ----- IPv6: VIPs, backends, extension headers, IPv4-in-IPv6.

const V6_CONFIG: &str = r#"
[interface]
name = "fixture6"

[limits]
flow_table_size = 4096
max_vips = 64
max_backends = 256
maglev_slots = 262144

[encap]
source_prefix = "172.16.0.0/16"
source_prefix_v6 = "fd00:16::/64"
next_hop_mac = "02:00:00:00:fe:01"

[[vip]]
name = "web6-l2"
address = "2001:db8::10"
port = 80
protocol = "tcp"
mode = "l2"
table_size = 251
  [[vip.backend]]
  address = "2001:db8:1::21"
  mac = "02:00:00:00:01:21"
  [[vip.backend]]
  address = "2001:db8:1::22"
  mac = "02:00:00:00:01:22"

[[vip]]
name = "web6-ipip"
address = "2001:db8::20"
port = 80
protocol = "tcp"
mode = "ipip"
table_size = 251
  [vip.health]
  via = "direct"
  [[vip.backend]]
  address = "2001:db8:2::21"
  [[vip.backend]]
  address = "2001:db8:2::22"
  mac = "02:00:00:00:02:22"

[[vip]]
name = "dns6-ipip"
address = "2001:db8::20"
port = 53
protocol = "udp"
mode = "ipip"
table_size = 251
  [[vip.backend]]
  address = "2001:db8:2::31"

[[vip]]
name = "web4-in-6"
address = "10.0.0.50"
port = 80
protocol = "tcp"
mode = "ipip"
table_size = 251
  [vip.health]
  via = "direct"
  [[vip.backend]]
  address = "2001:db8:3::1"
  [[vip.backend]]
  address = "2001:db8:3::2"
"#;

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

fn flow6(src: &str, dst: &str, sport: u16, dport: u16) -> Flow6 {
    Flow6 {
        src: ip6(src),
        dst: ip6(dst),
        sport,
        dport,
    }
}

fn flow_key6(flow: &Flow6, proto: u8) -> FlowKey6 {
    FlowKey6 {
        src: addr_words(flow.src.into()).0,
        dst: addr_words(flow.dst.into()).0,
        sport: flow.sport.to_be(),
        dport: flow.dport.to_be(),
        proto,
        _pad: 0,
        _pad2: 0,
    }
}

/// The IPv6 outer source for a flow hash: fd00:16::/64 with the host bits from the hash, as
/// documented for encap.source_prefix_v6.
fn ip6_source(flow_hash: u32) -> Ipv6Addr {
    let prefix = addr_words(ip6("fd00:16::").into()).0;
    let mask = addr_words(ip6("::ffff:ffff:ffff:ffff").into()).0;
    let words = hash::ip6_source(prefix, mask, flow_hash);
    let mut bytes = [0u8; 16];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(bytes)
}

impl Lab {
    /// The backend index the control plane's table picks for a flow hash.
    fn predicted_by_hash(&self, vip: &VipKeyOrd, flow_hash: u32) -> usize {
        let table = self.dataplane.table(vip).unwrap().expect("VIP applied");
        let id = table[(flow_hash % table.len() as u32) as usize];
        (0..)
            .find(|&i| self.dataplane.backend_id(vip, i) == Some(id))
            .expect("slot holds one of the VIP's backends")
    }

    fn backend_addr6(&self, vip_name: &str, index: usize) -> Ipv6Addr {
        let vip = self
            .config
            .vips
            .iter()
            .find(|v| v.name == vip_name)
            .unwrap();
        match vip.backends[index].address {
            std::net::IpAddr::V6(a) => a,
            other => panic!("unexpected {other}"),
        }
    }
}

fn vip_key6(address: &str, port: u16, proto: u8) -> VipKeyOrd {
    let (addr, fam) = addr_words(ip6(address).into());
    VipKeyOrd {
        addr,
        port,
        proto,
        family: fam,
    }
}

/// Protocol numbers of the extension headers used below.
const HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST: u8 = 60;
const ESP: u8 = 50;

fn ipv6_cases(lab: &Lab) -> Vec<Case> {
    let web6_l2 = vip_key6("2001:db8::10", 80, 6);
    let web6_ipip = vip_key6("2001:db8::20", 80, 6);
    let dns6_ipip = vip_key6("2001:db8::20", 53, 17);
    let web4_in_6 = vip_key("10.0.0.50", 80, 6);
    let mut cases = Vec::new();

    // --- L2 DSR, with every skipped extension header kind.
    let f = flow6("2001:db8:c::1", "2001:db8::10", 40000, 80);
    let segment = packet::tcp6_segment(&f, TCP_SYN, b"");
    let b = lab.predicted_by_hash(&web6_l2, hash::flow_hash6(&flow_key6(&f, 6)));
    let mac = lab.backend_mac("web6-l2", b);
    let with_headers = |headers: &[(u8, u8, [u8; 2])]| {
        // Each entry: (this header's kind, length, first bytes); chained in order, then TCP.
        let mut rest = Vec::new();
        for (i, &(_, len, first)) in headers.iter().enumerate() {
            let next = headers.get(i + 1).map_or(6, |h| h.0);
            rest.extend(packet::ipv6_ext_header(next, len, first));
        }
        rest.extend_from_slice(&segment);
        packet::ipv6_frame(&to_lb(None), &f, headers.first().map_or(6, |h| h.0), &rest)
    };
    for (description, headers) in [
        (
            "TCP SYN to an IPv6 L2 VIP: destination MAC becomes the Maglev backend's",
            &[][..],
        ),
        (
            "IPv6 hop-by-hop options (first) skipped",
            &[(HOP, 0, [1, 4])][..],
        ),
        (
            "IPv6 destination options (16 bytes) skipped",
            &[(DEST, 1, [1, 12])][..],
        ),
        (
            "IPv6 routing header with no segments left skipped",
            &[(ROUTING, 0, [4, 0])][..],
        ),
        (
            "IPv6 hop-by-hop, destination options, routing, destination options (four) skipped",
            &[
                (HOP, 0, [1, 4]),
                (DEST, 0, [1, 4]),
                (ROUTING, 2, [4, 0]),
                (DEST, 0, [1, 4]),
            ][..],
        ),
    ] {
        let input = with_headers(headers);
        cases.push(Case {
            description,
            output: Expected::Bytes(l2_rewritten(&input, mac)),
            input,
            action: XDP_TX,
            drop: None,
        });
    }

    // --- IPv6-in-IPv6 and IPv4-in-IPv6.
    for (description, vlan, f, proto, vip, name) in [
        (
            "TCP to an IPv6 ipip VIP: IPv6-in-IPv6 to the backend",
            None,
            flow6("2001:db8:c::10", "2001:db8::20", 40010, 80),
            6u8,
            web6_ipip,
            "web6-ipip",
        ),
        (
            "UDP to an IPv6 ipip VIP",
            None,
            flow6("2001:db8:c::11", "2001:db8::20", 5353, 53),
            17,
            dns6_ipip,
            "dns6-ipip",
        ),
        (
            "VLAN-tagged TCP to an IPv6 ipip VIP: tag stays in front of the outer header",
            Some(7),
            flow6("2001:db8:c::12", "2001:db8::20", 40011, 80),
            6,
            web6_ipip,
            "web6-ipip",
        ),
    ] {
        let mut input = if proto == 6 {
            packet::tcp6(&to_lb(vlan), &f, TCP_SYN, b"")
        } else {
            packet::udp6(&to_lb(vlan), &f, b"query")
        };
        // A traffic class (DSCP 10, ECT(0)) to see it copied to the outer header.
        let l3 = if vlan.is_some() { 18 } else { 14 };
        input[l3] = 0x62;
        input[l3 + 1] = 0xa0;
        let flow_hash = hash::flow_hash6(&flow_key6(&f, proto));
        let b = lab.predicted_by_hash(&vip, flow_hash);
        let new_l2 = L2 {
            dst: lab.backend_mac(name, b),
            src: IF_MAC,
            vlan,
        };
        cases.push(Case {
            description,
            output: Expected::Bytes(packet::ip6_encapsulated(
                &input,
                &new_l2,
                ip6_source(flow_hash),
                lab.backend_addr6(name, b),
                hash::flow_label(flow_hash),
            )),
            input,
            action: XDP_TX,
            drop: None,
        });
    }
    for (description, vlan) in [
        ("TCP to an IPv4 VIP with IPv6 backends: IPv4-in-IPv6", None),
        (
            "VLAN-tagged IPv4-in-IPv6: the tag's ethertype becomes IPv6",
            Some(9),
        ),
    ] {
        let f = flow("192.0.2.50", "10.0.0.50", 40050, 80);
        let input = packet::tcp4(&to_lb(vlan), &f, TCP_SYN, b"");
        let flow_hash = hash::flow_hash(&flow_key(&f, 6));
        let b = lab.predicted_by_hash(&web4_in_6, flow_hash);
        let new_l2 = L2 {
            dst: lab.backend_mac("web4-in-6", b),
            src: IF_MAC,
            vlan,
        };
        cases.push(Case {
            description,
            output: Expected::Bytes(packet::ip6_encapsulated(
                &input,
                &new_l2,
                ip6_source(flow_hash),
                lab.backend_addr6("web4-in-6", b),
                hash::flow_label(flow_hash),
            )),
            input,
            action: XDP_TX,
            drop: None,
        });
    }

    // --- Passed untouched.
    let other = flow6("2001:db8:c::20", "2001:db8::99", 40020, 80);
    cases.push(Case {
        description: "IPv6 TCP to a non-VIP address passes",
        input: packet::tcp6(&to_lb(None), &other, TCP_SYN, b""),
        action: XDP_PASS,
        output: Expected::Unchanged,
        drop: None,
    });
    let mut rest = packet::ipv6_ext_header(6, 0, [0, 0]);
    rest.extend(packet::tcp6_segment(&other, TCP_SYN, b""));
    cases.push(Case {
        description: "IPv6 fragment to a non-VIP address passes",
        input: packet::ipv6_frame(&to_lb(None), &other, FRAGMENT, &rest),
        action: XDP_PASS,
        output: Expected::Unchanged,
        drop: None,
    });
    let mut rest = packet::ipv6_ext_header(6, 0, [0, 0]);
    rest.extend(packet::tcp6_segment(&other, TCP_SYN, b""));
    cases.push(Case {
        description: "IPv6 ESP to a non-VIP address passes",
        input: packet::ipv6_frame(&to_lb(None), &other, ESP, &rest),
        action: XDP_PASS,
        output: Expected::Unchanged,
        drop: None,
    });
    cases.push(Case {
        description: "neighbour solicitation for an IPv6 VIP address passes to the stack",
        input: neighbour_solicitation(ip6("2001:db8:c::21"), ip6("2001:db8::10")),
        action: XDP_PASS,
        output: Expected::Unchanged,
        drop: None,
    });

    // --- Dropped with a reason.
    let f = flow6("2001:db8:c::30", "2001:db8::10", 40030, 80);
    let good = packet::tcp6(&to_lb(None), &f, TCP_SYN, b"");
    let mut bad_version = good.clone();
    bad_version[14] = 0x40;
    cases.push(Case {
        description: "IPv6 ethertype with version 4 in the header",
        input: bad_version,
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::Ipv6BadHeader),
    });
    let mut too_long = good.clone();
    too_long[18..20].copy_from_slice(&1500u16.to_be_bytes());
    cases.push(Case {
        description: "IPv6 payload length longer than the frame",
        input: too_long,
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::Ipv6BadLength),
    });
    // Destination options of length 3 (32 bytes) in a 16-byte payload.
    let mut rest = packet::ipv6_ext_header(6, 0, [1, 4]);
    rest[1] = 3;
    rest.extend_from_slice(&[0u8; 8]);
    cases.push(Case {
        description: "IPv6 destination options running past the payload, to a VIP",
        input: packet::ipv6_frame(&to_lb(None), &f, DEST, &rest),
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(DropReason::Ipv6BadLength),
    });
    let segment = packet::tcp6_segment(&f, TCP_SYN, b"");
    let chain = |kinds: &[u8], firsts: &[[u8; 2]]| {
        let mut rest = Vec::new();
        for (i, first) in firsts.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(6);
            rest.extend(packet::ipv6_ext_header(next, 0, *first));
        }
        rest.extend_from_slice(&segment);
        packet::ipv6_frame(&to_lb(None), &f, kinds[0], &rest)
    };
    for (description, input, reason) in [
        (
            "IPv6 routing header with segments left, to a VIP",
            chain(&[ROUTING], &[[4, 1]]),
            DropReason::Ipv6ExtHeader,
        ),
        (
            "IPv6 hop-by-hop options not first, to a VIP",
            chain(&[DEST, HOP], &[[1, 4], [1, 4]]),
            DropReason::Ipv6ExtHeader,
        ),
        (
            "Five IPv6 extension headers, to a VIP",
            chain(&[DEST; 5], &[[1, 4]; 5]),
            DropReason::Ipv6ExtHeader,
        ),
        (
            "IPv6 ESP, to a VIP",
            chain(&[ESP], &[[0, 0]]),
            DropReason::Ipv6ExtHeader,
        ),
        (
            "IPv6 fragment, to a VIP",
            chain(&[FRAGMENT], &[[0, 0]]),
            DropReason::Ipv6Fragment,
        ),
        (
            "IPv6 TCP header cut short, to a VIP",
            packet::ipv6_frame(&to_lb(None), &f, 6, &segment[..12]),
            DropReason::L4Truncated,
        ),
        (
            "IPv6 TCP to a VIP address on a port no VIP serves: unserved",
            packet::tcp6(
                &to_lb(None),
                &flow6("2001:db8:c::31", "2001:db8::10", 40031, 8080),
                TCP_SYN,
                b"",
            ),
            DropReason::Unserved,
        ),
        (
            "IPv6 TCP to a VIP with SYN and FIN",
            packet::tcp6(&to_lb(None), &f, TCP_SYN | 0x01, b""),
            DropReason::TcpBadFlags,
        ),
        (
            "IPv6 shorter than its fixed header",
            good[..14 + 30].to_vec(),
            DropReason::Ipv6Truncated,
        ),
    ] {
        cases.push(Case {
            description,
            input,
            action: XDP_DROP,
            output: Expected::Unchanged,
            drop: Some(reason),
        });
    }
    cases
}

#[test]
fn ipv6_table() {
    if !have_root() {
        return;
    }
    let mut lab = lab(V6_CONFIG);
    let cases = ipv6_cases(&lab);
    run_table(&mut lab, &cases);
    // Every IPv6 parsing reason is covered by the table.
    for &reason in
        &DropReason::ALL[DropReason::Ipv6BadHeader as usize..=DropReason::Ipv6Fragment as usize]
    {
        assert!(
            cases.iter().any(|c| c.drop == Some(reason)),
            "no case for {}",
            reason.name()
        );
    }
}

// ----- IPv6 policy: per-VIP source ranges and the SYN rate limit per source /64.

const V6_POLICY_CONFIG: &str = r#"
[interface]
name = "fixture6p"

[limits]
flow_table_size = 4096
max_vips = 64
max_backends = 256
maglev_slots = 262144

[policy.rate_limit]
new_connections_per_second = 1
burst = 2

[[vip]]
name = "web6"
address = "2001:db8::10"
port = 80
protocol = "tcp"
mode = "l2"
table_size = 251
  [[vip.backend]]
  address = "2001:db8:1::21"
  mac = "02:00:00:00:01:21"

[[vip]]
name = "admin6"
address = "2001:db8::10"
port = 22
protocol = "tcp"
mode = "l2"
table_size = 251
source_ranges = ["2001:db8:c::/48", "2001:db8:f::7/128"]
  [[vip.backend]]
  address = "2001:db8:1::22"
  mac = "02:00:00:00:01:22"
"#;

/// A TCP segment from `src` to 2001:db8::10 (web6 on port 80, admin6 on 22), as a frame.
fn tcp6_to_vip(src: &str, dport: u16, flags: u8) -> Vec<u8> {
    let f = flow6(src, "2001:db8::10", 42000, dport);
    packet::ipv6_frame(&to_lb(None), &f, 6, &packet::tcp6_segment(&f, flags, b""))
}

/// A segment `tcp6_to_vip` builds, forwarded in L2 to the VIP's one backend.
fn forwarded6(lab: &Lab, description: &'static str, src: &str, dport: u16, flags: u8) -> Case {
    let input = tcp6_to_vip(src, dport, flags);
    let vip = if dport == 80 { "web6" } else { "admin6" };
    Case {
        description,
        output: Expected::Bytes(l2_rewritten(&input, lab.backend_mac(vip, 0))),
        input,
        action: XDP_TX,
        drop: None,
    }
}

fn dropped6(description: &'static str, src: &str, dport: u16, reason: DropReason) -> Case {
    Case {
        description,
        input: tcp6_to_vip(src, dport, TCP_SYN),
        action: XDP_DROP,
        output: Expected::Unchanged,
        drop: Some(reason),
    }
}

#[test]
fn ipv6_policy_table() {
    if !have_root() {
        return;
    }
    let mut lab = lab(V6_POLICY_CONFIG);
    let cases = vec![
        // Per-VIP source ranges of an IPv6 VIP.
        dropped6(
            "IPv6 source outside the IPv6 VIP's source_ranges",
            "2001:db8:d::1",
            22,
            DropReason::VipSourceDenied,
        ),
        dropped6(
            "IPv6 source next to a /128 range (2001:db8:f::8): outside",
            "2001:db8:f::8",
            22,
            DropReason::VipSourceDenied,
        ),
        forwarded6(
            &lab,
            "IPv6 source inside the VIP's /48 range",
            "2001:db8:c:5::9",
            22,
            TCP_SYN,
        ),
        forwarded6(
            &lab,
            "IPv6 source equal to the VIP's /128 range",
            "2001:db8:f::7",
            22,
            TCP_SYN,
        ),
        forwarded6(
            &lab,
            "IPv6 VIP without ranges serves a source another VIP refuses",
            "2001:db8:d::1",
            80,
            TCP_SYN,
        ),
        // Per-source SYN rate: a bucket per /64, a burst of 2, then 1 per second.
        forwarded6(&lab, "first SYN of a /64", "2001:db8:e:1::1", 80, TCP_SYN),
        forwarded6(
            &lab,
            "second SYN of the /64, from another address of it (burst of 2)",
            "2001:db8:e:1::2",
            80,
            TCP_SYN,
        ),
        dropped6(
            "third SYN of the /64, from a third address: rate limited (one bucket per /64)",
            "2001:db8:e:1:ffff::3",
            80,
            DropReason::RateLimited,
        ),
        forwarded6(
            &lab,
            "SYN of the next /64: a bucket of its own",
            "2001:db8:e:2::1",
            80,
            TCP_SYN,
        ),
        forwarded6(
            &lab,
            "an ACK of the limited /64 is not a new connection",
            "2001:db8:e:1::3",
            80,
            TCP_ACK,
        ),
    ];
    run_table(&mut lab, &cases);
}

#[test]
fn ipv6_source_ranges_change_by_difference() {
    if !have_root() {
        return;
    }
    let mut lab = lab(V6_POLICY_CONFIG);
    // admin6's ranges move to another /48, and web6 gets ranges of its own.
    let changed_text = V6_POLICY_CONFIG
        .replace(
            r#"source_ranges = ["2001:db8:c::/48", "2001:db8:f::7/128"]"#,
            r#"source_ranges = ["2001:db8:d::/48", "2001:db8:f::7/128"]"#,
        )
        .replace(
            "table_size = 251\n  [[vip.backend]]\n  address = \"2001:db8:1::21\"",
            "table_size = 251\nsource_ranges = [\"2001:db8:a::/48\"]\n  [[vip.backend]]\n  \
             address = \"2001:db8:1::21\"",
        );
    assert_ne!(changed_text, V6_POLICY_CONFIG);
    let changed = Config::parse(&changed_text, "changed.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(changed.vips.iter().all(|v| v.source_ranges.is_some()));
    let state = DesiredState::from_config(&changed).unwrap_or_else(|e| panic!("{e}"));
    lab.dataplane
        .apply(&state)
        .unwrap_or_else(|e| panic!("{e}"));
    let cases = vec![
        dropped6(
            "the removed range refuses its sources",
            "2001:db8:c::1",
            22,
            DropReason::VipSourceDenied,
        ),
        forwarded6(
            &lab,
            "the added range lets its sources in",
            "2001:db8:d::1",
            22,
            TCP_SYN,
        ),
        forwarded6(
            &lab,
            "the kept /128 range still lets in",
            "2001:db8:f::7",
            22,
            TCP_SYN,
        ),
        dropped6(
            "web6's ::/0 was replaced by its new range",
            "2001:db8:d::2",
            80,
            DropReason::VipSourceDenied,
        ),
        forwarded6(
            &lab,
            "web6's new range lets in",
            "2001:db8:a::1",
            80,
            TCP_SYN,
        ),
    ];
    run_table(&mut lab, &cases);
    // Back to the first config: web6 serves every source again.
    let first = Config::parse(V6_POLICY_CONFIG, "first.toml").unwrap_or_else(|e| panic!("{e}"));
    let state = DesiredState::from_config(&first).unwrap_or_else(|e| panic!("{e}"));
    lab.dataplane
        .apply(&state)
        .unwrap_or_else(|e| panic!("{e}"));
    let cases = vec![
        forwarded6(
            &lab,
            "web6 without ranges again: ::/0",
            "2001:db8:d::3",
            80,
            TCP_SYN,
        ),
        forwarded6(
            &lab,
            "admin6's first range again",
            "2001:db8:c::3",
            22,
            TCP_SYN,
        ),
        dropped6(
            "admin6's second config range removed",
            "2001:db8:d::4",
            22,
            DropReason::VipSourceDenied,
        ),
    ];
    run_table(&mut lab, &cases);
}

#[test]
fn established_ipv6_flows_stay_on_their_backend_in_the_ipv6_flow_table() {
    if !have_root() {
        return;
    }
    let mut lab = lab(V6_CONFIG);
    let f = flow6("2001:db8:c::40", "2001:db8::10", 40040, 80);
    let (action, first) = lab.run(&packet::tcp6(&to_lb(None), &f, TCP_SYN, b""));
    assert_eq!(action, XDP_TX);
    let before = lab.dataplane.stats().unwrap();
    // Remove the backend the flow is on... from the table only: drain it (weight 0), so
    // the flow's entry stays valid and a new flow cannot land on it.
    let on = sent_to(&first);
    let index = (0..2)
        .find(|&i| lab.backend_mac("web6-l2", i) == on)
        .unwrap();
    let drained = V6_CONFIG.replacen(
        &format!(
            "address = \"2001:db8:1::2{}\"\n  mac = \"02:00:00:00:01:2{}\"",
            index + 1,
            index + 1
        ),
        &format!(
            "address = \"2001:db8:1::2{}\"\n  mac = \"02:00:00:00:01:2{}\"\n  weight = 0",
            index + 1,
            index + 1
        ),
        1,
    );
    assert_ne!(drained, V6_CONFIG, "the backend to drain is in the config");
    let config = xlb::config::Config::parse(&drained, "drained.toml").unwrap();
    let state = DesiredState::from_config(&config).unwrap();
    lab.dataplane.apply(&state).unwrap();
    let (action, next) = lab.run(&packet::tcp6(&to_lb(None), &f, TCP_ACK, b"data"));
    assert_eq!(action, XDP_TX);
    assert_eq!(
        sent_to(&next),
        on,
        "the established flow stays on its backend"
    );
    let after = lab.dataplane.stats().unwrap();
    assert_eq!(
        after.lb_count(LbCounter::FlowHit) - before.lb_count(LbCounter::FlowHit),
        1,
        "found in the IPv6 flow table"
    );
    let (action, fresh) = lab.run(&packet::tcp6(&to_lb(None), &f, TCP_SYN, b""));
    assert_eq!(action, XDP_TX);
    assert_ne!(
        sent_to(&fresh),
        on,
        "a new connection avoids the drained backend"
    );
}

// ----- The backend-side decapsulator: every encapsulation the balancer sends.

#[test]
fn decap_table() {
    if !have_root() {
        return;
    }
    let mut decap = xlb::dataplane::decap::Decap::load().unwrap_or_else(|e| panic!("{e}"));
    decap.add_vip(ip("10.0.0.20").into()).unwrap();
    decap.add_vip(ip6("2001:db8::20").into()).unwrap();
    let on_wire = |vlan| L2 {
        dst: [0x02, 0, 0, 0, 0x02, 0x21],
        src: IF_MAC,
        vlan,
    };
    let outer4 = ip("172.16.1.2");
    let backend4 = ip("10.0.2.21");
    let outer6 = ip6("fd00:16::1:2");
    let backend6 = ip6("2001:db8:2::21");
    // The inner frames, as the client sent them (their MACs are replaced by the outer ones).
    let inner4 = |vlan, dst: &str| {
        packet::tcp4(
            &to_lb(vlan),
            &flow("192.0.2.60", dst, 40060, 80),
            TCP_ACK,
            b"GET /",
        )
    };
    let inner6 = |vlan, dst: &str| {
        packet::tcp6(
            &to_lb(vlan),
            &flow6("2001:db8:c::60", dst, 40060, 80),
            TCP_ACK,
            b"GET /",
        )
    };
    // What the decapsulator passes up: the outer frame's MACs and tag, the inner ethertype,
    // the inner packet.
    let stripped = |inner: &[u8], vlan: Option<u16>, ether_type: u16| {
        let l3_off = if vlan.is_some() { 18 } else { 14 };
        let mut frame = packet::ethernet(&on_wire(vlan), ether_type);
        frame.extend_from_slice(&inner[l3_off..]);
        frame
    };
    let mut cases = Vec::new();
    for vlan in [None, Some(7)] {
        let inner = inner4(vlan, "10.0.0.20");
        cases.push((
            "IPv4-in-IPv4 for a local VIP: outer header stripped",
            packet::ipip_encapsulated(&inner, &on_wire(vlan), outer4, backend4),
            XDP_PASS,
            Some(stripped(&inner, vlan, 0x0800)),
        ));
        let inner = inner6(vlan, "2001:db8::20");
        cases.push((
            "IPv6-in-IPv6 for a local VIP: outer header stripped",
            packet::ip6_encapsulated(&inner, &on_wire(vlan), outer6, backend6, 0x12345),
            XDP_PASS,
            Some(stripped(&inner, vlan, 0x86dd)),
        ));
        let inner = inner4(vlan, "10.0.0.20");
        cases.push((
            "IPv4-in-IPv6 for a local VIP: outer header stripped, ethertype back to IPv4",
            packet::ip6_encapsulated(&inner, &on_wire(vlan), outer6, backend6, 0x12345),
            XDP_PASS,
            Some(stripped(&inner, vlan, 0x0800)),
        ));
    }
    cases.push((
        "IPv6-in-IPv6 for another address: passed untouched",
        packet::ip6_encapsulated(
            &inner6(None, "2001:db8::99"),
            &on_wire(None),
            outer6,
            backend6,
            1,
        ),
        XDP_PASS,
        None,
    ));
    cases.push((
        "IPv4-in-IPv6 for another address: passed untouched",
        packet::ip6_encapsulated(
            &inner4(None, "10.0.0.99"),
            &on_wire(None),
            outer6,
            backend6,
            1,
        ),
        XDP_PASS,
        None,
    ));
    cases.push((
        "Plain IPv6 TCP to the VIP: passed untouched",
        inner6(None, "2001:db8::20"),
        XDP_PASS,
        None,
    ));
    let cut = packet::ip6_encapsulated(
        &inner6(None, "2001:db8::20"),
        &on_wire(None),
        outer6,
        backend6,
        1,
    );
    // The outer header says 20 bytes of payload: an inner IPv6 header cannot fit.
    let mut cut = cut[..14 + 40 + 20].to_vec();
    cut[18..20].copy_from_slice(&20u16.to_be_bytes());
    cases.push((
        "IPv6-in-IPv6 whose inner header is cut short: malformed, dropped",
        cut,
        XDP_DROP,
        None,
    ));

    let mut failures = Vec::new();
    for (description, input, action, expected) in &cases {
        let before = decap.counters().unwrap();
        let mut out = vec![0u8; input.len() + 64];
        let (got_action, len) = decap.test_run(input, &mut out).unwrap();
        out.truncate(len);
        let after = decap.counters().unwrap();
        let moved: Vec<&str> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| a.1 != b.1)
            .map(|(_, a)| a.0)
            .collect();
        let expected_counter = match (action, expected) {
            (&XDP_DROP, _) => "malformed",
            (_, Some(_)) => "decapsulated",
            (_, None) => "passed",
        };
        if moved != [expected_counter] {
            failures.push(format!("{description}: counters moved {moved:?}"));
        }
        if got_action != *action {
            failures.push(format!(
                "{description}: action {got_action}, expected {action}"
            ));
            continue;
        }
        let expected = expected.as_ref().unwrap_or(input);
        if &out != expected {
            failures.push(format!(
                "{description}: output differs\n  got      {}\n  expected {}",
                hex(&out),
                hex(expected)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Established flows skip the global lists while their entry holds the lists' current
/// generation; every change of the lists moves the generation, so an established flow from a
/// source the change denies is dropped at its next packet, and one the change lets in again
/// goes on to the backend it had.
#[test]
fn established_flows_meet_every_change_of_the_global_lists() {
    if !have_root() {
        return;
    }
    const BASE: &str = r#"
[interface]
name = "fixture3"

[[vip]]
name = "web"
address = "10.0.0.10"
port = 80
protocol = "tcp"
mode = "l2"
table_size = 251
  [[vip.backend]]
  address = "10.0.1.21"
  mac = "02:00:00:00:01:21"
  [[vip.backend]]
  address = "10.0.1.22"
  mac = "02:00:00:00:01:22"
"#;
    let mut lab = lab(BASE);
    let apply = |lab: &mut Lab, policy: &str| {
        let text = format!("{BASE}\n[policy]\n{policy}\n");
        let config = Config::parse(&text, "changed.toml").unwrap_or_else(|e| panic!("{e}"));
        let state = DesiredState::from_config(&config).unwrap_or_else(|e| panic!("{e}"));
        lab.dataplane
            .apply(&state)
            .unwrap_or_else(|e| panic!("{e}"));
    };
    let seven = flow("198.51.100.7", "10.0.0.10", 40007, 80);
    let eight = flow("198.51.100.8", "10.0.0.10", 40008, 80);
    // (flow, expected action, expected drop reason) after each change, for an ACK of the flow.
    let check = |lab: &mut Lab, step: &str, cases: &[(&Flow, u32, Option<DropReason>)]| {
        for &(f, action, reason) in cases {
            let before = lab.dataplane.stats().unwrap();
            let input = packet::tcp4(&to_lb(None), f, TCP_ACK, b"");
            let (got, output) = lab.run(&input);
            assert_eq!(got, action, "{step}: {} -> action", f.src);
            let after = lab.dataplane.stats().unwrap();
            if let Some(reason) = reason {
                assert_eq!(
                    after.drop_packets(reason) - before.drop_packets(reason),
                    1,
                    "{step}: {} dropped as {}",
                    f.src,
                    reason.name()
                );
            } else {
                let hits = after.lb_count(LbCounter::FlowHit) - before.lb_count(LbCounter::FlowHit);
                assert_eq!(hits, 1, "{step}: {} stays on its flow entry", f.src);
                let web = vip_key("10.0.0.10", 80, 6);
                let first = lab.predicted_backend(&web, f, 6);
                assert_eq!(sent_to(&output), lab.backend_mac("web", first), "{step}");
            }
        }
    };
    for f in [&seven, &eight] {
        let (action, _) = lab.run(&packet::tcp4(&to_lb(None), f, TCP_SYN, b""));
        assert_eq!(action, XDP_TX, "the flow opens");
    }
    check(
        &mut lab,
        "no lists",
        &[(&seven, XDP_TX, None), (&eight, XDP_TX, None)],
    );
    apply(&mut lab, r#"deny = ["198.51.100.7"]"#);
    check(
        &mut lab,
        "a /32 of the flows' /24 denied (a mixed /24)",
        &[
            (&seven, XDP_DROP, Some(DropReason::Denied)),
            (&eight, XDP_TX, None),
            (&eight, XDP_TX, None),
        ],
    );
    apply(&mut lab, r#"deny = ["198.51.100.0/24"]"#);
    check(
        &mut lab,
        "the whole /24 denied",
        &[
            (&eight, XDP_DROP, Some(DropReason::Denied)),
            (&seven, XDP_DROP, Some(DropReason::Denied)),
        ],
    );
    apply(&mut lab, "");
    check(
        &mut lab,
        "the lists emptied",
        &[(&seven, XDP_TX, None), (&eight, XDP_TX, None)],
    );
    apply(&mut lab, r#"allow = ["198.51.100.8"]"#);
    check(
        &mut lab,
        "an allow list that names only one of them",
        &[
            (&seven, XDP_DROP, Some(DropReason::NotAllowed)),
            (&eight, XDP_TX, None),
        ],
    );
}

// ----- ICMP to a VIP address, and the MTU of encapsulation -----

/// The fixture config with `encap.mtu = 1000`, so a packet of more than 980 bytes is too big
/// to encapsulate. Defaults otherwise: echo answered, other ICMP passed, ICMP for packets too
/// big.
fn icmp_config() -> String {
    let next_hop = "next_hop_mac = \"02:00:00:00:fe:01\"\n";
    CONFIG.replacen(next_hop, &format!("{next_hop}mtu = 1000\n"), 1)
}

/// `policy.icmp_rate_limit`: a CPU sends at most that many ICMP messages a second (echo
/// replies and "fragmentation needed" alike); past it the packet it would answer is dropped,
/// counted as `icmp_rate_limited`, and the next second it answers again.
#[test]
fn icmp_the_balancer_sends_stops_at_the_rate_limit() {
    if !have_root() {
        return;
    }
    pin_to_one_cpu();
    let config = format!("{}\n[policy]\nicmp_rate_limit = 3\n", icmp_config());
    let mut lab = lab(&config);
    let client = ip("192.0.2.61");
    let echo = packet::icmp4(
        &to_lb(None),
        client,
        ip("10.0.0.10"),
        &packet::icmp_message(8, 0, [0, 1, 0, 1], b"ping"),
    );
    let too_big = tcp4_sized(
        &to_lb(None),
        &flow("192.0.2.61", "10.0.0.20", 40111, 80),
        981,
        true,
    );
    let counts = |lab: &Lab| {
        let stats = lab.dataplane.stats().unwrap();
        (
            stats.lb_count(LbCounter::IcmpEchoReplied),
            stats.lb_count(LbCounter::IcmpTooBigSent),
            stats.drop_packets(DropReason::IcmpRateLimited),
        )
    };
    // Within one second: two replies and one error pass, the rest is dropped.
    let started = std::time::Instant::now();
    assert_eq!(lab.run(&echo).0, XDP_TX);
    assert_eq!(lab.run(&echo).0, XDP_TX);
    assert_eq!(lab.run(&too_big).0, XDP_TX);
    assert_eq!(lab.run(&echo).0, XDP_DROP, "a fourth message in the second");
    assert_eq!(lab.run(&too_big).0, XDP_DROP, "an error too");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(900),
        "the five packets ran within one window"
    );
    assert_eq!(counts(&lab), (2, 1, 2));
    // Other traffic is not limited: a TCP packet to the L2 VIP is forwarded.
    let f = flow("192.0.2.61", "10.0.0.10", 40112, 80);
    assert_eq!(
        lab.run(&packet::tcp4(&to_lb(None), &f, TCP_SYN, b"")).0,
        XDP_TX
    );
    // The next second the CPU may send again (a window closes at the first refusal after a
    // second, or within 64 more).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut refused = 0;
    while lab.run(&echo).0 == XDP_DROP {
        refused += 1;
        assert!(refused <= 64, "replies resume within 64 refusals");
    }
    assert_eq!(counts(&lab).0, 3, "answered again");
}

/// A router on the path between the backends and the clients.
const ROUTER: &str = "198.51.100.1";

/// A fixture and the load-balancing counter it must move by exactly one (none: no counter).
struct IcmpCase {
    case: Case,
    counter: Option<LbCounter>,
}

/// An IPv4 TCP frame of exactly `total_len` IP bytes (payload of zeros), DF set or not.
fn tcp4_sized(l2: &L2, f: &Flow, total_len: usize, dont_fragment: bool) -> Vec<u8> {
    let segment = packet::tcp_segment(f, TCP_ACK, &vec![0u8; total_len - 40]);
    let mut frame = packet::ethernet(l2, 0x0800);
    let frag = if dont_fragment { 0x4000 } else { 0 };
    frame.extend(packet::ipv4_header(
        f.src,
        f.dst,
        6,
        segment.len(),
        &[],
        frag,
    ));
    frame.extend(segment);
    frame
}

/// The packet a backend sends for `client_flow` (client -> VIP), reversed: source VIP:port,
/// destination client:port, as an IPv4 packet (no Ethernet header), `payload` bytes of data.
fn from_vip(client_flow: &Flow, proto: u8, payload: usize) -> Vec<u8> {
    let reply = Flow {
        src: client_flow.dst,
        dst: client_flow.src,
        sport: client_flow.dport,
        dport: client_flow.sport,
    };
    let l2 = to_lb(None);
    let frame = if proto == 6 {
        tcp4_sized(&l2, &reply, 40 + payload, true)
    } else {
        packet::udp4(&l2, &reply, &vec![0u8; payload])
    };
    frame[14..].to_vec()
}

/// An ICMP error of `kind`/`code` from the router to the VIP about `quoted` (an IPv4 packet).
fn icmp_error(kind: u8, code: u8, rest: [u8; 4], quoted: &[u8], vlan: Option<u16>) -> Vec<u8> {
    let vip = Ipv4Addr::new(quoted[12], quoted[13], quoted[14], quoted[15]);
    let message = packet::icmp_message(kind, code, rest, quoted);
    packet::icmp4(&to_lb(vlan), ip(ROUTER), vip, &message)
}

/// The echo reply to `request` (an echo request frame to `vip` from `client`), built from
/// scratch: MACs and addresses swapped, type 0, same identifier, sequence and data.
fn echo_reply(l2: &L2, client: Ipv4Addr, vip: Ipv4Addr, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let reply_l2 = L2 {
        dst: l2.src,
        src: l2.dst,
        vlan: l2.vlan,
    };
    packet::icmp4(
        &reply_l2,
        vip,
        client,
        &packet::icmp_message(0, 0, rest, data),
    )
}

fn icmp_cases(lab: &Lab) -> Vec<IcmpCase> {
    let web_l2 = vip_key("10.0.0.10", 80, 6);
    let web_ipip = vip_key("10.0.0.20", 80, 6);
    let dns_ipip = vip_key("10.0.0.20", 53, 17);
    let client = ip("192.0.2.50");
    let mut cases = Vec::new();
    let mut push = |case: Case, counter: Option<LbCounter>| cases.push(IcmpCase { case, counter });

    // --- Echo.
    let rest = [0x12, 0x34, 0, 1];
    let data = b"abcdefghijklmnopqrstuvwxyz012345";
    for (description, vlan) in [
        ("echo request to a VIP address: answered in place", None),
        (
            "VLAN-tagged echo request to a VIP address: answered with its tag",
            Some(9),
        ),
    ] {
        let l2 = to_lb(vlan);
        let request = packet::icmp_message(8, 0, rest, data);
        push(
            Case {
                description,
                input: packet::icmp4(&l2, client, ip("10.0.0.10"), &request),
                action: XDP_TX,
                output: Expected::Bytes(echo_reply(&l2, client, ip("10.0.0.10"), rest, data)),
                drop: None,
            },
            Some(LbCounter::IcmpEchoReplied),
        );
    }
    let twin = filter_twin(ip("10.0.0.10"));
    push(
        Case {
            description: "echo request to a non-VIP address sharing a VIP's filter bit passes",
            input: packet::icmp4(
                &to_lb(None),
                client,
                twin,
                &packet::icmp_message(8, 0, rest, data),
            ),
            action: XDP_PASS,
            output: Expected::Unchanged,
            drop: None,
        },
        None,
    );
    push(
        Case {
            description: "ICMP timestamp request to a VIP address: passed (icmp_other default)",
            input: packet::icmp4(
                &to_lb(None),
                client,
                ip("10.0.0.20"),
                &packet::icmp_message(13, 0, rest, &[0; 12]),
            ),
            action: XDP_PASS,
            output: Expected::Unchanged,
            drop: None,
        },
        Some(LbCounter::IcmpPassed),
    );
    let mut short = packet::ethernet(&to_lb(None), 0x0800);
    short.extend(packet::ipv4_header(client, ip("10.0.0.10"), 1, 4, &[], 0));
    short.extend_from_slice(&[8, 0, 0xf7, 0xff]);
    push(
        Case {
            description: "ICMP to a VIP address shorter than an ICMP header",
            input: short,
            action: XDP_DROP,
            output: Expected::Unchanged,
            drop: Some(DropReason::L4Truncated),
        },
        None,
    );

    // --- Errors about a VIP flow, routed to the flow's backend (no flow entry: Maglev).
    let f = flow("192.0.2.51", "10.0.0.10", 40100, 80);
    let input = icmp_error(3, 4, [0, 0, 0x02, 0x44], &from_vip(&f, 6, 1400), None);
    let b = lab.predicted_backend(&web_l2, &f, 6);
    push(
        Case {
            description: "fragmentation needed about an L2 VIP's flow: to the flow's backend MAC",
            output: Expected::Bytes(l2_rewritten(&input, lab.backend_mac("web-l2", b))),
            input,
            action: XDP_TX,
            drop: None,
        },
        Some(LbCounter::IcmpErrorForwarded),
    );
    for (description, vlan, f, proto, vip, name, kind, code) in [
        (
            "fragmentation needed about an IPIP VIP's flow: encapsulated to the flow's backend",
            None,
            flow("192.0.2.52", "10.0.0.20", 40101, 80),
            6u8,
            web_ipip,
            "web-ipip",
            3u8,
            4u8,
        ),
        (
            "VLAN-tagged fragmentation needed about an IPIP VIP's flow keeps its tag",
            Some(5),
            flow("192.0.2.53", "10.0.0.20", 40102, 80),
            6,
            web_ipip,
            "web-ipip",
            3,
            4,
        ),
        (
            "port unreachable about an IPIP VIP's UDP flow: routed like fragmentation needed",
            None,
            flow("192.0.2.54", "10.0.0.20", 5300, 53),
            17,
            dns_ipip,
            "dns-ipip",
            3,
            3,
        ),
        (
            "time exceeded about an IPIP VIP's flow: routed like fragmentation needed",
            None,
            flow("192.0.2.55", "10.0.0.20", 40103, 80),
            6,
            web_ipip,
            "web-ipip",
            11,
            0,
        ),
    ] {
        let input = icmp_error(
            kind,
            code,
            [0, 0, 0x02, 0x44],
            &from_vip(&f, proto, 100),
            vlan,
        );
        let b = lab.predicted_backend(&vip, &f, proto);
        let new_l2 = L2 {
            dst: lab.backend_mac(name, b),
            src: IF_MAC,
            vlan,
        };
        push(
            Case {
                description,
                output: Expected::Bytes(packet::ipip_encapsulated(
                    &input,
                    &new_l2,
                    ipip_source(&f, proto),
                    lab.backend_addr(name, b),
                )),
                input,
                action: XDP_TX,
                drop: None,
            },
            Some(LbCounter::IcmpErrorForwarded),
        );
    }

    // --- Errors that no VIP flow explains, or that cannot be read.
    let unserved = flow("192.0.2.56", "10.0.0.10", 40104, 8080);
    push(
        Case {
            description: "error about a port no VIP serves: passed (icmp_other)",
            input: icmp_error(3, 4, [0; 4], &from_vip(&unserved, 6, 100), None),
            action: XDP_PASS,
            output: Expected::Unchanged,
            drop: None,
        },
        Some(LbCounter::IcmpPassed),
    );
    let echo_from_vip = {
        let message = packet::icmp_message(0, 0, rest, data);
        let mut p = packet::ipv4_header(ip("10.0.0.10"), client, 1, message.len(), &[], 0);
        p.extend(message);
        p
    };
    push(
        Case {
            description: "error about an ICMP packet the VIP sent: passed (icmp_other)",
            input: icmp_error(3, 1, [0; 4], &echo_from_vip, None),
            action: XDP_PASS,
            output: Expected::Unchanged,
            drop: None,
        },
        Some(LbCounter::IcmpPassed),
    );
    let quoted = from_vip(&flow("192.0.2.57", "10.0.0.10", 40105, 80), 6, 0);
    push(
        Case {
            description: "error quoting only part of an IPv4 header",
            input: packet::icmp4(
                &to_lb(None),
                ip(ROUTER),
                ip("10.0.0.10"),
                &packet::icmp_message(3, 4, [0; 4], &quoted[..12]),
            ),
            action: XDP_DROP,
            output: Expected::Unchanged,
            drop: Some(DropReason::IcmpBadQuote),
        },
        None,
    );
    push(
        Case {
            description: "error quoting an IPv4 header but not the ports",
            input: icmp_error(3, 4, [0; 4], &quoted[..22], None),
            action: XDP_DROP,
            output: Expected::Unchanged,
            drop: Some(DropReason::IcmpBadQuote),
        },
        None,
    );
    let mut forged = quoted.clone();
    forged[12..16].copy_from_slice(&ip("10.0.0.99").octets());
    let forged_error = {
        let message = packet::icmp_message(3, 4, [0; 4], &forged);
        packet::icmp4(&to_lb(None), ip(ROUTER), ip("10.0.0.10"), &message)
    };
    push(
        Case {
            description: "error to a VIP quoting a packet another address sent",
            input: forged_error,
            action: XDP_DROP,
            output: Expected::Unchanged,
            drop: Some(DropReason::IcmpBadQuote),
        },
        None,
    );

    // --- Encapsulation past encap.mtu (1000).
    let f = flow("192.0.2.60", "10.0.0.20", 40110, 80);
    for (description, vlan) in [
        (
            "981-byte TCP with DF to an IPIP VIP: fragmentation needed back, MTU 980",
            None,
        ),
        (
            "VLAN-tagged 981-byte TCP with DF: fragmentation needed back with the tag",
            Some(3),
        ),
    ] {
        let input = tcp4_sized(&to_lb(vlan), &f, 981, true);
        let l3_off = if vlan.is_some() { 18 } else { 14 };
        let back = L2 {
            dst: CLIENT_MAC,
            src: IF_MAC,
            vlan,
        };
        push(
            Case {
                description,
                output: Expected::Bytes(packet::frag_needed(&back, f.dst, &input[l3_off..], 980)),
                input,
                action: XDP_TX,
                drop: None,
            },
            Some(LbCounter::IcmpTooBigSent),
        );
    }
    let input = tcp4_sized(&to_lb(None), &f, 980, true);
    let b = lab.predicted_backend(&web_ipip, &f, 6);
    let new_l2 = L2 {
        dst: lab.backend_mac("web-ipip", b),
        src: IF_MAC,
        vlan: None,
    };
    push(
        Case {
            description: "980-byte TCP with DF to an IPIP VIP: exactly the MTU encapsulated",
            output: Expected::Bytes(packet::ipip_encapsulated(
                &input,
                &new_l2,
                ipip_source(&f, 6),
                lab.backend_addr("web-ipip", b),
            )),
            input,
            action: XDP_TX,
            drop: None,
        },
        None,
    );
    push(
        Case {
            description: "981-byte TCP without DF to an IPIP VIP: dropped (XDP cannot fragment)",
            input: tcp4_sized(&to_lb(None), &f, 981, false),
            action: XDP_DROP,
            output: Expected::Unchanged,
            drop: Some(DropReason::EncapTooBig),
        },
        None,
    );
    let l2_flow = flow("192.0.2.61", "10.0.0.10", 40111, 80);
    let input = tcp4_sized(&to_lb(None), &l2_flow, 1400, true);
    let b = lab.predicted_backend(&web_l2, &l2_flow, 6);
    push(
        Case {
            description: "1400-byte TCP with DF to an L2 VIP: forwarded (L2 adds nothing)",
            output: Expected::Bytes(l2_rewritten(&input, lab.backend_mac("web-l2", b))),
            input,
            action: XDP_TX,
            drop: None,
        },
        None,
    );
    let big_error_flow = flow("192.0.2.62", "10.0.0.20", 40112, 80);
    push(
        Case {
            description: "error too big to encapsulate: dropped, never an error about an error",
            input: icmp_error(3, 4, [0; 4], &from_vip(&big_error_flow, 6, 1000), None),
            action: XDP_DROP,
            output: Expected::Unchanged,
            drop: Some(DropReason::EncapTooBig),
        },
        None,
    );
    cases
}

/// Runs ICMP fixtures through [`run_table`] one by one, and checks that exactly the expected
/// load-balancing counter moved, by one.
fn run_icmp_table(lab: &mut Lab, cases: Vec<IcmpCase>) {
    let mut failures = Vec::new();
    for IcmpCase { case, counter } in cases {
        let before = lab.dataplane.stats().unwrap();
        run_table(lab, std::slice::from_ref(&case));
        let after = lab.dataplane.stats().unwrap();
        for c in [
            LbCounter::IcmpEchoReplied,
            LbCounter::IcmpErrorForwarded,
            LbCounter::IcmpPassed,
            LbCounter::IcmpTooBigSent,
        ] {
            let moved = after.lb_count(c) - before.lb_count(c);
            let expected = u64::from(counter == Some(c));
            if moved != expected {
                failures.push(format!(
                    "{}: counter {} moved by {moved}, expected {expected}",
                    case.description,
                    c.name()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn icmp_table() {
    if !have_root() {
        return;
    }
    let mut lab = lab(&icmp_config());
    let flows_before = lab.dataplane.count_flows().unwrap();
    let cases = icmp_cases(&lab);
    let routed = cases
        .iter()
        .filter(|c| c.counter == Some(LbCounter::IcmpErrorForwarded))
        .count();
    assert!(routed >= 5, "the table lost routed errors");
    let reasons: Vec<DropReason> = cases.iter().filter_map(|c| c.case.drop).collect();
    run_icmp_table(&mut lab, cases);
    // The three packets of flows that were forwarded (980-byte IPIP, 1400-byte L2, and none
    // of the errors) are the only new entries: an error never adds one.
    assert_eq!(lab.dataplane.count_flows().unwrap() - flows_before, 2);

    // The settings that turn the defaults around: echo and other ICMP dropped, packets too
    // big dropped even with DF set.
    let strict = icmp_config().replace(
        "mtu = 1000\n",
        "mtu = 1000\non_too_big = \"drop\"\n\n[policy]\nicmp_echo = \"drop\"\nicmp_other = \"drop\"\n",
    );
    let mut lab = self::lab(&strict);
    let client = ip("192.0.2.70");
    let f = flow("192.0.2.71", "10.0.0.20", 40120, 80);
    let strict_cases = vec![
        IcmpCase {
            case: Case {
                description: "echo request with icmp_echo = drop",
                input: packet::icmp4(
                    &to_lb(None),
                    client,
                    ip("10.0.0.10"),
                    &packet::icmp_message(8, 0, [0, 1, 0, 1], b"ping"),
                ),
                action: XDP_DROP,
                output: Expected::Unchanged,
                drop: Some(DropReason::IcmpEcho),
            },
            counter: None,
        },
        IcmpCase {
            case: Case {
                description: "timestamp request with icmp_other = drop",
                input: packet::icmp4(
                    &to_lb(None),
                    client,
                    ip("10.0.0.10"),
                    &packet::icmp_message(13, 0, [0, 1, 0, 1], &[0; 12]),
                ),
                action: XDP_DROP,
                output: Expected::Unchanged,
                drop: Some(DropReason::IcmpUnhandled),
            },
            counter: None,
        },
        IcmpCase {
            case: Case {
                description: "981-byte TCP with DF and on_too_big = drop",
                input: tcp4_sized(&to_lb(None), &f, 981, true),
                action: XDP_DROP,
                output: Expected::Unchanged,
                drop: Some(DropReason::EncapTooBig),
            },
            counter: None,
        },
    ];
    let strict_reasons: Vec<DropReason> = strict_cases.iter().filter_map(|c| c.case.drop).collect();
    run_icmp_table(&mut lab, strict_cases);

    let passing = icmp_config().replace(
        "mtu = 1000\n",
        "mtu = 1000\n\n[policy]\nicmp_echo = \"pass\"\n",
    );
    let mut lab = self::lab(&passing);
    run_icmp_table(
        &mut lab,
        vec![IcmpCase {
            case: Case {
                description: "echo request with icmp_echo = pass",
                input: packet::icmp4(
                    &to_lb(None),
                    client,
                    ip("10.0.0.10"),
                    &packet::icmp_message(8, 0, [0, 1, 0, 1], b"ping"),
                ),
                action: XDP_PASS,
                output: Expected::Unchanged,
                drop: None,
            },
            counter: Some(LbCounter::IcmpPassed),
        }],
    );
    for reason in [
        DropReason::IcmpEcho,
        DropReason::IcmpUnhandled,
        DropReason::IcmpBadQuote,
        DropReason::EncapTooBig,
    ] {
        assert!(
            reasons.contains(&reason) || strict_reasons.contains(&reason),
            "no case for {}",
            reason.name()
        );
    }
}

/// An error about an established flow goes to the backend in the flow's entry, not to the one
/// the Maglev table names now; an error about a flow without an entry goes to the table's
/// choice, and adds no entry. Both modes.
#[test]
fn icmp_errors_follow_the_flow_table_then_the_maglev_table() {
    if !have_root() {
        return;
    }
    let add_backend = |text: String, after: &str, address: &str| {
        let backend = format!(
            "  [[vip.backend]]\n  address = \"{address}\"\n  mac = \"02:00:00:00:09:01\"\n"
        );
        text.replacen(after, &format!("{after}{backend}"), 1)
    };
    let grown_text = add_backend(
        icmp_config(),
        "  mac = \"02:00:00:00:01:23\"\n",
        "10.0.1.24",
    );
    let grown_text = add_backend(grown_text, "  mac = \"02:00:00:00:02:22\"\n", "10.0.2.23");
    let grown = self::lab(&grown_text);
    // The new backend is the fourth of web-l2, the third of web-ipip.
    for (vip_addr, name, new) in [("10.0.0.10", "web-l2", 3), ("10.0.0.20", "web-ipip", 2)] {
        let mut lab = self::lab(&icmp_config());
        let vip = vip_key(vip_addr, 80, 6);
        // Flows whose slot moves to the new backend once it is added.
        let moved: Vec<Flow> = (41000..60000u16)
            .map(|port| flow("198.51.100.20", vip_addr, port, 80))
            .filter(|f| grown.predicted_backend(&vip, f, 6) == new)
            .take(2)
            .collect();
        assert_eq!(moved.len(), 2, "some slots must move to the new backend");
        let (established, fresh) = (moved[0], moved[1]);
        let first = lab.predicted_backend(&vip, &established, 6);
        let (action, _) = lab.run(&packet::tcp4(&to_lb(None), &established, TCP_SYN, b""));
        assert_eq!(action, XDP_TX);
        lab.dataplane
            .apply(&DesiredState::from_config(&grown.config).unwrap())
            .unwrap();
        lab.config = grown.config.clone();

        let flows = lab.dataplane.count_flows().unwrap();
        for (f, backend) in [(established, first), (fresh, new)] {
            let input = icmp_error(3, 4, [0, 0, 2, 0x44], &from_vip(&f, 6, 500), None);
            let (action, out) = lab.run(&input);
            assert_eq!(action, XDP_TX, "{name}: {f:?}");
            let expected = if name == "web-l2" {
                l2_rewritten(&input, lab.backend_mac(name, backend))
            } else {
                let new_l2 = L2 {
                    dst: lab.backend_mac(name, backend),
                    src: IF_MAC,
                    vlan: None,
                };
                packet::ipip_encapsulated(
                    &input,
                    &new_l2,
                    ipip_source(&f, 6),
                    lab.backend_addr(name, backend),
                )
            };
            assert_eq!(hex(&out), hex(&expected), "{name}: error about {f:?}");
        }
        assert_eq!(
            lab.dataplane.count_flows().unwrap(),
            flows,
            "{name}: an error added a flow entry"
        );
    }
}

// ----- ICMPv6 to an IPv6 VIP address, and the MTU of IPv6 encapsulation -----

/// The IPv6 fixture config with `encap.mtu = 1400`: an IPv6 (or IPv4-in-IPv6) packet of more
/// than 1360 bytes is too big to encapsulate, and "packet too big" reports 1360.
fn icmp6_config() -> String {
    let next_hop = "next_hop_mac = \"02:00:00:00:fe:01\"\n";
    V6_CONFIG.replacen(next_hop, &format!("{next_hop}mtu = 1400\n"), 1)
}

/// A router on the IPv6 path between the backends and the clients.
const ROUTER6: &str = "2001:db8:ffff::1";

/// A unicast neighbour solicitation (RFC 4861 4.3) from `src` for `target`, sent to it, with
/// the source link-layer address option.
fn neighbour_solicitation(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut body = target.octets().to_vec();
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&CLIENT_MAC);
    let message = packet::icmp6_message(src, target, 135, 0, [0; 4], &body);
    let mut frame = packet::icmp6(&to_lb(None), src, target, &message);
    frame[14 + 7] = 255;
    frame
}

/// An IPv6 TCP frame of exactly `len` IP bytes (40-byte header, 20-byte TCP header, zeros).
fn tcp6_sized(l2: &L2, f: &Flow6, len: usize) -> Vec<u8> {
    packet::tcp6(l2, f, TCP_ACK, &vec![0u8; len - 60])
}

/// The packet a backend sends for `client_flow` (client -> VIP), reversed, as an IPv6 packet
/// (no Ethernet header) with `payload` bytes of data.
fn from_vip6(client_flow: &Flow6, proto: u8, payload: usize) -> Vec<u8> {
    let reply = Flow6 {
        src: client_flow.dst,
        dst: client_flow.src,
        sport: client_flow.dport,
        dport: client_flow.sport,
    };
    let l2 = to_lb(None);
    let frame = if proto == 6 {
        packet::tcp6(&l2, &reply, TCP_ACK, &vec![0u8; payload])
    } else {
        packet::udp6(&l2, &reply, &vec![0u8; payload])
    };
    frame[14..].to_vec()
}

/// An ICMPv6 error of `kind`/`code` from the router to the source of `quoted` (a VIP).
fn icmp6_error(kind: u8, code: u8, rest: [u8; 4], quoted: &[u8], vlan: Option<u16>) -> Vec<u8> {
    let vip = Ipv6Addr::from(<[u8; 16]>::try_from(&quoted[8..24]).unwrap());
    let message = packet::icmp6_message(ip6(ROUTER6), vip, kind, code, rest, quoted);
    packet::icmp6(&to_lb(vlan), ip6(ROUTER6), vip, &message)
}

fn icmp6_cases(lab: &Lab) -> Vec<IcmpCase> {
    let web6_l2 = vip_key6("2001:db8::10", 80, 6);
    let web6_ipip = vip_key6("2001:db8::20", 80, 6);
    let dns6_ipip = vip_key6("2001:db8::20", 53, 17);
    let client = ip6("2001:db8:c::50");
    let vip_l2 = ip6("2001:db8::10");
    let mut cases = Vec::new();
    let mut push = |case: Case, counter: Option<LbCounter>| cases.push(IcmpCase { case, counter });

    // --- Echo, neighbour discovery, other types.
    let rest = [0x12, 0x34, 0, 1];
    let data = b"abcdefghijklmnopqrstuvwxyz012345";
    for (description, vlan) in [
        (
            "ICMPv6 echo request to an IPv6 VIP: answered in place",
            None,
        ),
        (
            "VLAN-tagged ICMPv6 echo request: answered with its tag",
            Some(4),
        ),
    ] {
        let l2 = to_lb(vlan);
        let request = packet::icmp6_message(client, vip_l2, 128, 0, rest, data);
        let mut input = packet::icmp6(&l2, client, vip_l2, &request);
        // A hop limit the reply must not keep.
        input[if vlan.is_some() { 18 } else { 14 } + 7] = 57;
        let reply_l2 = L2 {
            dst: l2.src,
            src: l2.dst,
            vlan,
        };
        let reply = packet::icmp6_message(vip_l2, client, 129, 0, rest, data);
        push(
            Case {
                description,
                input,
                action: XDP_TX,
                output: Expected::Bytes(packet::icmp6(&reply_l2, vip_l2, client, &reply)),
                drop: None,
            },
            Some(LbCounter::IcmpEchoReplied),
        );
    }
    push(
        Case {
            description: "neighbour solicitation for an IPv6 VIP: passed, not counted",
            input: neighbour_solicitation(client, vip_l2),
            action: XDP_PASS,
            output: Expected::Unchanged,
            drop: None,
        },
        None,
    );
    let mut rest_with_dest = packet::ipv6_ext_header(58, 0, [1, 4]);
    rest_with_dest.extend(packet::icmp6_message(client, vip_l2, 128, 0, rest, data));
    let to_vip = flow6("2001:db8:c::50", "2001:db8::10", 0, 0);
    push(
        Case {
            description: "ICMPv6 echo request with destination options: passed to the kernel",
            input: packet::ipv6_frame(&to_lb(None), &to_vip, DEST, &rest_with_dest),
            action: XDP_PASS,
            output: Expected::Unchanged,
            drop: None,
        },
        Some(LbCounter::IcmpPassed),
    );
    push(
        Case {
            description: "ICMPv6 node information query to an IPv6 VIP: passed (icmp_other)",
            input: packet::icmp6(
                &to_lb(None),
                client,
                vip_l2,
                &packet::icmp6_message(client, vip_l2, 139, 0, [0; 4], &[0; 8]),
            ),
            action: XDP_PASS,
            output: Expected::Unchanged,
            drop: None,
        },
        Some(LbCounter::IcmpPassed),
    );
    let mut short = packet::ipv6_frame(&to_lb(None), &to_vip, 58, &[128, 0, 0, 0]);
    short.truncate(14 + 44);
    push(
        Case {
            description: "ICMPv6 to an IPv6 VIP shorter than an ICMPv6 header",
            input: short,
            action: XDP_DROP,
            output: Expected::Unchanged,
            drop: Some(DropReason::L4Truncated),
        },
        None,
    );

    // --- Errors about a VIP flow, to the flow's backend (no flow entry: Maglev).
    let f = flow6("2001:db8:c::51", "2001:db8::10", 40200, 80);
    let input = icmp6_error(2, 0, [0, 0, 0x05, 0x00], &from_vip6(&f, 6, 1300), None);
    let b = lab.predicted_by_hash(&web6_l2, hash::flow_hash6(&flow_key6(&f, 6)));
    push(
        Case {
            description: "packet too big about an IPv6 L2 VIP's flow: to the flow's backend MAC",
            output: Expected::Bytes(l2_rewritten(&input, lab.backend_mac("web6-l2", b))),
            input,
            action: XDP_TX,
            drop: None,
        },
        Some(LbCounter::IcmpErrorForwarded),
    );
    for (description, vlan, f, proto, vip, name, kind, code) in [
        (
            "packet too big about an IPv6 ipip VIP's flow: IPv6-in-IPv6 to the flow's backend",
            None,
            flow6("2001:db8:c::52", "2001:db8::20", 40201, 80),
            6u8,
            web6_ipip,
            "web6-ipip",
            2u8,
            0u8,
        ),
        (
            "VLAN-tagged packet too big about an IPv6 ipip VIP's flow keeps its tag",
            Some(6),
            flow6("2001:db8:c::53", "2001:db8::20", 40202, 80),
            6,
            web6_ipip,
            "web6-ipip",
            2,
            0,
        ),
        (
            "port unreachable about an IPv6 ipip VIP's UDP flow",
            None,
            flow6("2001:db8:c::54", "2001:db8::20", 5300, 53),
            17,
            dns6_ipip,
            "dns6-ipip",
            1,
            4,
        ),
        (
            "time exceeded about an IPv6 ipip VIP's flow",
            None,
            flow6("2001:db8:c::55", "2001:db8::20", 40203, 80),
            6,
            web6_ipip,
            "web6-ipip",
            3,
            0,
        ),
        (
            "parameter problem about an IPv6 ipip VIP's flow",
            None,
            flow6("2001:db8:c::56", "2001:db8::20", 40204, 80),
            6,
            web6_ipip,
            "web6-ipip",
            4,
            0,
        ),
    ] {
        let input = icmp6_error(
            kind,
            code,
            [0, 0, 0x05, 0x00],
            &from_vip6(&f, proto, 100),
            vlan,
        );
        let flow_hash = hash::flow_hash6(&flow_key6(&f, proto));
        let b = lab.predicted_by_hash(&vip, flow_hash);
        let new_l2 = L2 {
            dst: lab.backend_mac(name, b),
            src: IF_MAC,
            vlan,
        };
        push(
            Case {
                description,
                output: Expected::Bytes(packet::ip6_encapsulated(
                    &input,
                    &new_l2,
                    ip6_source(flow_hash),
                    lab.backend_addr6(name, b),
                    hash::flow_label(flow_hash),
                )),
                input,
                action: XDP_TX,
                drop: None,
            },
            Some(LbCounter::IcmpErrorForwarded),
        );
    }

    // --- Errors that no VIP flow explains, or that cannot be read.
    let unserved = flow6("2001:db8:c::57", "2001:db8::10", 40205, 8080);
    push(
        Case {
            description: "ICMPv6 error about a port no IPv6 VIP serves: passed (icmp_other)",
            input: icmp6_error(1, 4, [0; 4], &from_vip6(&unserved, 6, 100), None),
            action: XDP_PASS,
            output: Expected::Unchanged,
            drop: None,
        },
        Some(LbCounter::IcmpPassed),
    );
    let echo_reply_from_vip = {
        let message = packet::icmp6_message(vip_l2, client, 129, 0, rest, data);
        let mut p = packet::ipv6_header(vip_l2, client, 58, message.len());
        p.extend(message);
        p
    };
    push(
        Case {
            description: "ICMPv6 error about an ICMPv6 packet the VIP sent: passed (icmp_other)",
            input: icmp6_error(1, 3, [0; 4], &echo_reply_from_vip, None),
            action: XDP_PASS,
            output: Expected::Unchanged,
            drop: None,
        },
        Some(LbCounter::IcmpPassed),
    );
    let quoted = from_vip6(&flow6("2001:db8:c::58", "2001:db8::10", 40206, 80), 6, 0);
    push(
        Case {
            description: "ICMPv6 error quoting only part of an IPv6 header",
            input: {
                let message =
                    packet::icmp6_message(ip6(ROUTER6), vip_l2, 2, 0, [0; 4], &quoted[..30]);
                packet::icmp6(&to_lb(None), ip6(ROUTER6), vip_l2, &message)
            },
            action: XDP_DROP,
            output: Expected::Unchanged,
            drop: Some(DropReason::IcmpBadQuote),
        },
        None,
    );
    push(
        Case {
            description: "ICMPv6 error quoting an IPv6 header but not the ports",
            input: icmp6_error(2, 0, [0; 4], &quoted[..42], None),
            action: XDP_DROP,
            output: Expected::Unchanged,
            drop: Some(DropReason::IcmpBadQuote),
        },
        None,
    );
    let mut forged = quoted.clone();
    forged[8..24].copy_from_slice(&ip6("2001:db8::99").octets());
    push(
        Case {
            description: "ICMPv6 error to a VIP quoting a packet another address sent",
            input: {
                let message = packet::icmp6_message(ip6(ROUTER6), vip_l2, 2, 0, [0; 4], &forged);
                packet::icmp6(&to_lb(None), ip6(ROUTER6), vip_l2, &message)
            },
            action: XDP_DROP,
            output: Expected::Unchanged,
            drop: Some(DropReason::IcmpBadQuote),
        },
        None,
    );

    // --- Encapsulation past encap.mtu (1400): 1360 bytes of IPv6 fit.
    let f = flow6("2001:db8:c::60", "2001:db8::20", 40210, 80);
    for (description, vlan) in [
        (
            "1361-byte TCP to an IPv6 ipip VIP: packet too big back, MTU 1360",
            None,
        ),
        (
            "VLAN-tagged 1361-byte TCP to an IPv6 ipip VIP: packet too big with the tag",
            Some(3),
        ),
    ] {
        let input = tcp6_sized(&to_lb(vlan), &f, 1361);
        let l3_off = if vlan.is_some() { 18 } else { 14 };
        let back = L2 {
            dst: CLIENT_MAC,
            src: IF_MAC,
            vlan,
        };
        push(
            Case {
                description,
                output: Expected::Bytes(packet::packet_too_big(&back, &input[l3_off..], 1360)),
                input,
                action: XDP_TX,
                drop: None,
            },
            Some(LbCounter::IcmpTooBigSent),
        );
    }
    let input = tcp6_sized(&to_lb(None), &f, 1360);
    let flow_hash = hash::flow_hash6(&flow_key6(&f, 6));
    let b = lab.predicted_by_hash(&web6_ipip, flow_hash);
    push(
        Case {
            description: "1360-byte TCP to an IPv6 ipip VIP: exactly the MTU, encapsulated",
            output: Expected::Bytes(packet::ip6_encapsulated(
                &input,
                &L2 {
                    dst: lab.backend_mac("web6-ipip", b),
                    src: IF_MAC,
                    vlan: None,
                },
                ip6_source(flow_hash),
                lab.backend_addr6("web6-ipip", b),
                hash::flow_label(flow_hash),
            )),
            input,
            action: XDP_TX,
            drop: None,
        },
        None,
    );
    let l2_flow = flow6("2001:db8:c::61", "2001:db8::10", 40211, 80);
    let input = tcp6_sized(&to_lb(None), &l2_flow, 1500);
    let b = lab.predicted_by_hash(&web6_l2, hash::flow_hash6(&flow_key6(&l2_flow, 6)));
    push(
        Case {
            description: "1500-byte TCP to an IPv6 L2 VIP: forwarded (L2 adds nothing)",
            output: Expected::Bytes(l2_rewritten(&input, lab.backend_mac("web6-l2", b))),
            input,
            action: XDP_TX,
            drop: None,
        },
        None,
    );
    let big_error_flow = flow6("2001:db8:c::62", "2001:db8::20", 40212, 80);
    push(
        Case {
            description: "ICMPv6 error too big to encapsulate: dropped, never an error about it",
            input: icmp6_error(2, 0, [0; 4], &from_vip6(&big_error_flow, 6, 1300), None),
            action: XDP_DROP,
            output: Expected::Unchanged,
            drop: Some(DropReason::EncapTooBig),
        },
        None,
    );
    // IPv4-in-IPv6 adds 40 bytes too: fragmentation needed reports 1360.
    let f4 = flow("192.0.2.80", "10.0.0.50", 40213, 80);
    let input = tcp4_sized(&to_lb(None), &f4, 1361, true);
    let back = L2 {
        dst: CLIENT_MAC,
        src: IF_MAC,
        vlan: None,
    };
    push(
        Case {
            description: "1361-byte TCP with DF to an IPv4 VIP with IPv6 backends: MTU 1360 back",
            output: Expected::Bytes(packet::frag_needed(&back, f4.dst, &input[14..], 1360)),
            input,
            action: XDP_TX,
            drop: None,
        },
        Some(LbCounter::IcmpTooBigSent),
    );
    cases
}

#[test]
fn icmp6_table() {
    if !have_root() {
        return;
    }
    let mut lab = lab(&icmp6_config());
    let flows_before = lab.dataplane.count_flows6().unwrap();
    let cases = icmp6_cases(&lab);
    assert!(cases.len() >= 20, "the table lost cases");
    run_icmp_table(&mut lab, cases);
    // The 1360-byte and 1500-byte packets, and the 1361-byte ones (their flow is chosen, as
    // for IPv4, before the size is known to be too big): one flow each, none from an error.
    assert_eq!(lab.dataplane.count_flows6().unwrap() - flows_before, 2);

    // The settings that turn the defaults around; neighbour discovery passes regardless.
    let strict = icmp6_config().replace(
        "mtu = 1400\n",
        "mtu = 1400\non_too_big = \"drop\"\n\n[policy]\nicmp_echo = \"drop\"\nicmp_other = \"drop\"\n",
    );
    let mut lab = self::lab(&strict);
    let client = ip6("2001:db8:c::70");
    let vip = ip6("2001:db8::10");
    let echo = packet::icmp6(
        &to_lb(None),
        client,
        vip,
        &packet::icmp6_message(client, vip, 128, 0, [0, 1, 0, 1], b"ping"),
    );
    let f = flow6("2001:db8:c::71", "2001:db8::20", 40220, 80);
    let case = |description, input, action, drop| Case {
        description,
        input,
        action,
        output: Expected::Unchanged,
        drop,
    };
    let strict_cases = vec![
        IcmpCase {
            case: case(
                "ICMPv6 echo request with icmp_echo = drop",
                echo.clone(),
                XDP_DROP,
                Some(DropReason::IcmpEcho),
            ),
            counter: None,
        },
        IcmpCase {
            case: case(
                "ICMPv6 node information query with icmp_other = drop",
                packet::icmp6(
                    &to_lb(None),
                    client,
                    vip,
                    &packet::icmp6_message(client, vip, 139, 0, [0; 4], &[0; 8]),
                ),
                XDP_DROP,
                Some(DropReason::IcmpUnhandled),
            ),
            counter: None,
        },
        IcmpCase {
            case: case(
                "neighbour solicitation for a VIP with icmp_other = drop: still passed",
                neighbour_solicitation(client, vip),
                XDP_PASS,
                None,
            ),
            counter: None,
        },
        IcmpCase {
            case: case(
                "1361-byte IPv6 TCP with on_too_big = drop",
                tcp6_sized(&to_lb(None), &f, 1361),
                XDP_DROP,
                Some(DropReason::EncapTooBig),
            ),
            counter: None,
        },
    ];
    run_icmp_table(&mut lab, strict_cases);

    // encap.mtu 1300: 1260 bytes of IPv6 fit, but no packet too big may report less than
    // 1280: a counted drop.
    let small = icmp6_config().replace("mtu = 1400\n", "mtu = 1300\n");
    let mut lab = self::lab(&small);
    run_icmp_table(
        &mut lab,
        vec![IcmpCase {
            case: case(
                "1261-byte IPv6 TCP with encap.mtu 1300: dropped (MTU below 1280)",
                tcp6_sized(&to_lb(None), &f, 1261),
                XDP_DROP,
                Some(DropReason::EncapTooBig),
            ),
            counter: None,
        }],
    );

    let passing = icmp6_config().replace(
        "mtu = 1400\n",
        "mtu = 1400\n\n[policy]\nicmp_echo = \"pass\"\n",
    );
    let mut lab = self::lab(&passing);
    run_icmp_table(
        &mut lab,
        vec![IcmpCase {
            case: case(
                "ICMPv6 echo request with icmp_echo = pass",
                echo,
                XDP_PASS,
                None,
            ),
            counter: Some(LbCounter::IcmpPassed),
        }],
    );
}
