//! Applying changes: for many shapes of change, one long-lived dataplane that went through every
//! step must hold exactly what a fresh dataplane holds after applying only the final state.
//! Both are read back from the kernel maps with `Dataplane::dump` (ids and offsets resolved
//! away), and the fresh one is also checked against the desired state itself. A change that does
//! not fit must be refused whole, leaving the maps as they were.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
};

use xlb::dataplane::pin::PinDir;
use xlb::{
    config::{Config, MacAddr},
    dataplane::{ApplyReport, DatapathDump, Dataplane, DataplaneError},
    state::DesiredState,
};
use xlb_common::forward_mode;
use xlb_tests::{
    have_root,
    packet::{self, Flow, L2, TCP_SYN},
    pins::TestPins,
};

const IF_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xaa];

/// The limits every dataplane of these tests is loaded with (small, so a load is quick).
const LIMITS: Limits = Limits {
    max_vips: 512,
    max_backends: 4096,
    maglev_slots: 2_097_152,
};

/// `[limits]` of a config.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_vips: u32,
    max_backends: u32,
    maglev_slots: u32,
}

/// One backend of the model.
#[derive(Debug, Clone, PartialEq)]
struct Be {
    address: Ipv4Addr,
    mac: [u8; 6],
    weight: u32,
}

/// One VIP of the model.
#[derive(Debug, Clone, PartialEq)]
struct Vip {
    name: String,
    address: Ipv4Addr,
    port: u16,
    udp: bool,
    ipip: bool,
    table_size: u32,
    backends: Vec<Be>,
}

/// A config, as data that tests change and render to TOML.
#[derive(Debug, Clone)]
struct Model {
    limits: Limits,
    vips: Vec<Vip>,
}

fn be(address: Ipv4Addr, weight: u32) -> Be {
    let o = address.octets();
    Be {
        address,
        mac: [0x02, 0x00, o[0], o[1], o[2], o[3]],
        weight,
    }
}

/// VIP number `n`: address 10.0.(n/200).(n%200), backends 10.1.(n/200).(n%200 + k), weight 100.
fn vip(n: u32, port: u16, backends: u32, table_size: u32) -> Vip {
    let (hi, lo) = ((n / 200) as u8, (n % 200) as u8);
    Vip {
        name: format!("vip{n}-{port}"),
        address: Ipv4Addr::new(10, 0, hi, lo),
        port,
        udp: false,
        ipip: false,
        table_size,
        backends: (0..backends)
            .map(|k| be(Ipv4Addr::new(10, 1 + k as u8, hi, lo), 100))
            .collect(),
    }
}

impl Model {
    fn new(vips: Vec<Vip>) -> Model {
        Model {
            limits: LIMITS,
            vips,
        }
    }

    fn toml(&self) -> String {
        let l = self.limits;
        let mut text = format!(
            "[interface]\nname = \"apply0\"\n\n[limits]\nflow_table_size = 1024\n\
             max_vips = {}\nmax_backends = {}\nmaglev_slots = {}\n\n\
             [encap]\nsource_prefix = \"172.16.0.0/16\"\n",
            l.max_vips, l.max_backends, l.maglev_slots
        );
        for v in &self.vips {
            let protocol = if v.udp { "udp" } else { "tcp" };
            let mode = if v.ipip { "ipip" } else { "l2" };
            write!(
                text,
                "\n[[vip]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\nprotocol = \"{protocol}\"\n\
                 mode = \"{mode}\"\ntable_size = {}\n",
                v.name, v.address, v.port, v.table_size
            )
            .unwrap();
            for b in &v.backends {
                let m = b.mac;
                write!(
                    text,
                    "  [[vip.backend]]\n  address = \"{}\"\n  \
                     mac = \"{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}\"\n  weight = {}\n",
                    b.address, m[0], m[1], m[2], m[3], m[4], m[5], b.weight
                )
                .unwrap();
            }
        }
        text
    }

    fn config(&self) -> Config {
        Config::parse(&self.toml(), "apply.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn state(&self) -> DesiredState {
        DesiredState::from_config(&self.config()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn vip_mut(&mut self, name: &str) -> &mut Vip {
        self.vips
            .iter_mut()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no VIP {name}"))
    }
}

fn config_limits(limits: Limits) -> xlb::config::Limits {
    xlb::config::Limits {
        flow_table_size: 1024,
        max_vips: limits.max_vips,
        max_backends: limits.max_backends,
        maglev_slots: limits.maglev_slots,
        ..xlb::config::Limits::default()
    }
}

fn load(limits: Limits) -> Dataplane {
    Dataplane::load(&config_limits(limits), MacAddr(IF_MAC))
        .unwrap_or_else(|e| panic!("loading: {e}"))
}

fn load_pinned(limits: Limits, pins: &PinDir) -> Result<Dataplane, DataplaneError> {
    Dataplane::load_pinned(&config_limits(limits), MacAddr(IF_MAC), pins.clone())
}

fn dump(dataplane: &Dataplane) -> DatapathDump {
    dataplane.dump().unwrap_or_else(|e| panic!("dump: {e}"))
}

/// What a dump of `state` must say, built from the desired state alone.
fn assert_dump_is(dump: &DatapathDump, state: &DesiredState, what: &str) {
    assert!(
        dump.inconsistencies.is_empty(),
        "{what}: {:?}",
        dump.inconsistencies
    );
    let keys: Vec<_> = dump.vips.keys().collect();
    let wanted: Vec<_> = state.vips.keys().collect();
    assert_eq!(keys, wanted, "{what}: VIP keys");
    for (key, vip) in &state.vips {
        let got = &dump.vips[key];
        let backend_count = vip.backends.iter().filter(|b| b.weight > 0).count() as u32;
        assert_eq!(
            (got.mode, got.table_size, got.backend_count),
            (vip.mode, vip.table.len() as u32, backend_count),
            "{what}: VIP {} mode, table size, backend count",
            vip.name
        );
        let moved = vip
            .table
            .iter()
            .zip(&got.table)
            .filter(|&(&i, slot)| {
                let b = &vip.backends[i as usize];
                *slot != (b.address, b.mac.0)
            })
            .count();
        assert_eq!(
            moved, 0,
            "{what}: VIP {}: slots naming the wrong backend",
            vip.name
        );
    }
    let mut addrs = BTreeMap::new();
    for vip in state.vips.values() {
        *addrs.entry(vip.config.address).or_insert(0u32) += 1;
    }
    assert_eq!(dump.vip_addrs, addrs, "{what}: VIP address set");
}

/// Describes, briefly, every way two dumps differ, or `None` when they are equal.
fn difference(live: &DatapathDump, fresh: &DatapathDump) -> Option<String> {
    if live == fresh {
        return None;
    }
    let mut out = String::new();
    if live.globals != fresh.globals {
        writeln!(out, "globals {:?} != {:?}", live.globals, fresh.globals).unwrap();
    }
    if live.vip_addrs != fresh.vip_addrs {
        writeln!(
            out,
            "addresses {:?} != {:?}",
            live.vip_addrs, fresh.vip_addrs
        )
        .unwrap();
    }
    if live.inconsistencies != fresh.inconsistencies {
        writeln!(
            out,
            "inconsistencies {:?} != {:?}",
            live.inconsistencies, fresh.inconsistencies
        )
        .unwrap();
    }
    let keys: BTreeSet<_> = live.vips.keys().chain(fresh.vips.keys()).collect();
    for key in keys {
        match (live.vips.get(key), fresh.vips.get(key)) {
            (Some(a), Some(b)) if a != b => {
                let slots = a.table.iter().zip(&b.table).enumerate();
                let first = slots.clone().find(|(_, (x, y))| x != y);
                let count = slots.filter(|(_, (x, y))| x != y).count();
                writeln!(
                    out,
                    "{key:?}: (mode, size, count) {:?} != {:?}, {count} slots differ, first {first:?}",
                    (a.mode, a.table_size, a.backend_count),
                    (b.mode, b.table_size, b.backend_count),
                )
                .unwrap();
            }
            (Some(_), None) => writeln!(out, "{key:?} only in the long-lived dataplane").unwrap(),
            (None, Some(_)) => writeln!(out, "{key:?} only in the fresh dataplane").unwrap(),
            _ => {}
        }
    }
    Some(out)
}

/// A long-lived dataplane, loaded with the limits of the first model it was given.
struct Harness {
    live: Dataplane,
    limits: Limits,
    steps: usize,
    pins: Option<PinDir>,
}

impl Harness {
    fn new(model: &Model) -> Harness {
        let mut harness = Harness {
            live: load(model.limits),
            limits: model.limits,
            steps: 0,
            pins: None,
        };
        harness.step(model, "initial state");
        harness
    }

    /// A long-lived dataplane whose maps are pinned in `pins`.
    fn pinned(model: &Model, pins: PinDir) -> Harness {
        let live = load_pinned(model.limits, &pins).unwrap_or_else(|e| panic!("loading: {e}"));
        assert!(!live.adopting(), "nothing was pinned yet");
        let mut harness = Harness {
            live,
            limits: model.limits,
            steps: 0,
            pins: Some(pins),
        };
        harness.step(model, "initial state");
        harness
    }

    /// A daemon restart: the dataplane is dropped (its maps stay pinned) and a new one adopts
    /// them.
    fn restart(&mut self) {
        let pins = self.pins.as_ref().expect("a pinned harness");
        let placeholder = load(self.limits);
        drop(std::mem::replace(&mut self.live, placeholder));
        self.live = load_pinned(self.limits, pins).unwrap_or_else(|e| panic!("adopting: {e}"));
        assert!(self.live.adopting(), "the pinned maps were not adopted");
    }

    /// Applies `model` to the long-lived dataplane and checks it against a fresh one.
    fn step(&mut self, model: &Model, what: &str) -> ApplyReport {
        self.steps += 1;
        let what = format!("step {} ({what})", self.steps);
        let state = model.state();
        let report = self
            .live
            .apply(&state)
            .unwrap_or_else(|e| panic!("{what}: apply: {e}"));
        let live = dump(&self.live);

        let mut fresh_dataplane = load(self.limits);
        fresh_dataplane
            .apply(&state)
            .unwrap_or_else(|e| panic!("{what}: fresh apply: {e}"));
        let fresh = dump(&fresh_dataplane);
        assert_dump_is(&fresh, &state, &format!("{what}, fresh dataplane"));
        if let Some(diff) = difference(&live, &fresh) {
            panic!("{what}: the long-lived dataplane differs from a fresh one:\n{diff}");
        }
        report
    }
}

fn report(added: usize, changed: usize, removed: usize, unchanged: usize) -> ApplyReport {
    ApplyReport {
        added,
        changed,
        removed,
        unchanged,
    }
}

/// Three VIPs: two on 10.0.0.1 (tcp 80, udp 53), one on 10.0.0.2.
fn three_vips() -> Model {
    let web = vip(1, 80, 3, 251);
    let mut dns = vip(1, 53, 2, 251);
    dns.udp = true;
    let other = vip(2, 443, 4, 1021);
    Model::new(vec![web, dns, other])
}

#[test]
fn adding_and_removing_vips() {
    if !have_root() {
        return;
    }
    let mut model = three_vips();
    let mut h = Harness::new(&model);
    assert_eq!(h.step(&model, "same again"), report(0, 0, 0, 3));

    model.vips.push(vip(3, 80, 2, 251));
    assert_eq!(h.step(&model, "add a VIP"), report(1, 0, 0, 3));

    model.vips.remove(0);
    assert_eq!(h.step(&model, "remove a VIP"), report(0, 0, 1, 3));

    model.vips.clear();
    model.vips.push(vip(9, 80, 1, 251));
    assert_eq!(h.step(&model, "replace all"), report(1, 0, 3, 0));
}

#[test]
fn adding_removing_and_reweighting_backends() {
    if !have_root() {
        return;
    }
    let mut model = three_vips();
    let mut h = Harness::new(&model);

    let extra = be(Ipv4Addr::new(10, 9, 0, 1), 100);
    model.vip_mut("vip1-80").backends.push(extra);
    assert_eq!(h.step(&model, "add a backend"), report(0, 1, 0, 2));

    model.vip_mut("vip1-80").backends.remove(0);
    assert_eq!(h.step(&model, "remove a backend"), report(0, 1, 0, 2));

    model.vip_mut("vip2-443").backends[1].weight = 300;
    assert_eq!(h.step(&model, "change a weight"), report(0, 1, 0, 2));

    model.vip_mut("vip2-443").backends[2].weight = 0;
    assert_eq!(h.step(&model, "drain a backend"), report(0, 1, 0, 2));
    model.vip_mut("vip2-443").backends[2].weight = 100;
    assert_eq!(h.step(&model, "undrain it"), report(0, 1, 0, 2));

    // Reordering backends in the file changes nothing a packet can see.
    model.vip_mut("vip2-443").backends.reverse();
    h.step(&model, "reorder backends");
}

#[test]
fn draining_every_backend_empties_the_table() {
    if !have_root() {
        return;
    }
    let mut model = three_vips();
    let mut h = Harness::new(&model);
    for b in &mut model.vip_mut("vip1-53").backends {
        b.weight = 0;
    }
    assert_eq!(h.step(&model, "drain all"), report(0, 1, 0, 2));
    let state = model.state();
    let key = state.vips.iter().find(|(_, v)| v.name == "vip1-53");
    let drained = &dump(&h.live).vips[key.expect("vip1-53").0];
    assert_eq!(
        (
            drained.table_size,
            drained.backend_count,
            drained.table.len()
        ),
        (0, 0, 0)
    );

    for b in &mut model.vip_mut("vip1-53").backends {
        b.weight = 100;
    }
    assert_eq!(h.step(&model, "undrain all"), report(0, 1, 0, 2));
}

#[test]
fn changing_mode_and_table_size() {
    if !have_root() {
        return;
    }
    let mut model = three_vips();
    let mut h = Harness::new(&model);

    model.vip_mut("vip1-80").ipip = true;
    assert_eq!(h.step(&model, "l2 to ipip"), report(0, 1, 0, 2));
    let modes: Vec<u32> = dump(&h.live).vips.values().map(|v| v.mode).collect();
    assert!(modes.contains(&forward_mode::IPIP), "{modes:?}");
    model.vip_mut("vip1-80").ipip = false;
    assert_eq!(h.step(&model, "ipip to l2"), report(0, 1, 0, 2));

    model.vip_mut("vip1-80").table_size = 1021;
    assert_eq!(h.step(&model, "grow the table"), report(0, 1, 0, 2));
    model.vip_mut("vip2-443").table_size = 251;
    assert_eq!(h.step(&model, "shrink a table"), report(0, 1, 0, 2));
}

#[test]
fn changing_a_backend_mac_gives_it_a_new_identity() {
    if !have_root() {
        return;
    }
    let mut model = three_vips();
    let mut h = Harness::new(&model);
    // Same address and weight, so the Maglev table (as backend indices) is the same; the slots
    // must still name the entry with the new MAC.
    model.vip_mut("vip1-80").backends[1].mac[5] ^= 0x80;
    assert_eq!(h.step(&model, "change a MAC"), report(0, 1, 0, 2));
}

#[test]
fn changing_the_address_of_a_single_backend() {
    if !have_root() {
        return;
    }
    let mut model = Model::new(vec![vip(1, 80, 1, 251)]);
    let mut h = Harness::new(&model);
    // A one-backend table is all zeros whatever the backend: the same table, a new backend.
    model.vips[0].backends[0] = be(Ipv4Addr::new(10, 7, 0, 1), 100);
    assert_eq!(h.step(&model, "change the address"), report(0, 1, 0, 0));
}

#[test]
fn changing_port_or_protocol_is_another_vip() {
    if !have_root() {
        return;
    }
    let mut model = three_vips();
    let mut h = Harness::new(&model);

    model.vip_mut("vip2-443").port = 8443;
    assert_eq!(h.step(&model, "change the port"), report(1, 0, 1, 2));
    model.vip_mut("vip2-443").udp = true;
    assert_eq!(h.step(&model, "change the protocol"), report(1, 0, 1, 2));
    model.vip_mut("vip2-443").port = 0;
    assert_eq!(h.step(&model, "every port"), report(1, 0, 1, 2));
}

#[test]
fn addresses_are_reference_counted() {
    if !have_root() {
        return;
    }
    let mut model = three_vips();
    let mut h = Harness::new(&model);
    let shared = Ipv4Addr::new(10, 0, 0, 1).into();
    assert_eq!(dump(&h.live).vip_addrs.get(&shared), Some(&2));

    model.vips.retain(|v| v.name != "vip1-53");
    assert_eq!(h.step(&model, "remove one of two"), report(0, 0, 1, 2));
    assert_eq!(dump(&h.live).vip_addrs.get(&shared), Some(&1));

    model.vips.retain(|v| v.name != "vip1-80");
    assert_eq!(h.step(&model, "remove the other"), report(0, 0, 1, 1));
    assert_eq!(dump(&h.live).vip_addrs.get(&shared), None);

    // The same address, and the same key, back in one change.
    let mut dns = vip(1, 53, 2, 251);
    dns.udp = true;
    model.vips.push(dns);
    model.vips.push(vip(1, 80, 3, 251));
    assert_eq!(h.step(&model, "both back"), report(2, 0, 0, 1));
}

#[test]
fn two_hundred_vips_at_once() {
    if !have_root() {
        return;
    }
    let mut model = Model::new((0..200).map(|n| vip(n, 80, 3, 251)).collect());
    let mut h = Harness::new(&model);

    for v in &mut model.vips {
        v.backends[0].weight = 250;
    }
    assert_eq!(h.step(&model, "reweight all"), report(0, 200, 0, 0));

    for v in &mut model.vips {
        v.backends.push(be(v.address, 100));
        v.ipip = true;
    }
    assert_eq!(h.step(&model, "a backend more, ipip"), report(0, 200, 0, 0));

    for v in &mut model.vips {
        v.port = 8080;
        v.name.push_str("-moved");
    }
    assert_eq!(h.step(&model, "every key changed"), report(200, 0, 200, 0));
}

/// Xorshift64: seeded, the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One random change to `model`; returns what it did.
fn random_change(model: &mut Model, rng: &mut XorShift, serial: &mut u32) -> String {
    const SIZES: [u32; 3] = [251, 509, 1021];
    let pick = rng.below(model.vips.len().max(1));
    match rng.below(10) {
        // Add a VIP, on one of a few addresses so addresses are shared.
        0 | 1 => {
            *serial += 1;
            let mut v = vip(rng.below(4) as u32, 1000 + *serial as u16, 1, 251);
            v.name = format!("r{serial}");
            v.udp = rng.below(2) == 0;
            v.ipip = rng.below(2) == 0;
            v.table_size = SIZES[rng.below(SIZES.len())];
            v.backends = (0..1 + rng.below(4))
                .map(|k| be(Ipv4Addr::new(10, 2, *serial as u8, k as u8), 100))
                .collect();
            let text = format!("add {}", v.name);
            model.vips.push(v);
            text
        }
        2 if model.vips.len() > 1 => {
            let v = model.vips.remove(pick);
            format!("remove {}", v.name)
        }
        3 => {
            *serial += 1;
            let v = &mut model.vips[pick];
            let b = be(Ipv4Addr::new(10, 3, *serial as u8, 1), 50);
            v.backends.push(b);
            format!("add a backend to {}", v.name)
        }
        4 if model.vips[pick].backends.len() > 1 => {
            let v = &mut model.vips[pick];
            let i = rng.below(v.backends.len());
            v.backends.remove(i);
            format!("remove backend {i} of {}", v.name)
        }
        5 | 6 => {
            let v = &mut model.vips[pick];
            let i = rng.below(v.backends.len());
            v.backends[i].weight = [0, 1, 100, 250][rng.below(4)];
            format!("weight of backend {i} of {}", v.name)
        }
        7 => {
            let v = &mut model.vips[pick];
            v.ipip = !v.ipip;
            v.table_size = SIZES[rng.below(SIZES.len())];
            format!("mode and table size of {}", v.name)
        }
        8 => {
            let v = &mut model.vips[pick];
            let i = rng.below(v.backends.len());
            v.backends[i].mac[0] ^= 0x04;
            format!("MAC of backend {i} of {}", v.name)
        }
        _ => {
            *serial += 1;
            let v = &mut model.vips[pick];
            v.port = 20000 + *serial as u16;
            format!("port of {}", v.name)
        }
    }
}

#[test]
fn thirty_random_changes() {
    if !have_root() {
        return;
    }
    let mut model = three_vips();
    let mut h = Harness::new(&model);
    let mut rng = XorShift(0x786c_6261_7070_6c79);
    let mut serial = 0;
    for _ in 0..30 {
        let changes: Vec<String> = (0..1 + rng.below(3))
            .map(|_| random_change(&mut model, &mut rng, &mut serial))
            .collect();
        h.step(&model, &changes.join(", "));
    }
}

/// Applies a change the loaded dataplane cannot hold: it must fail with a capacity error on
/// `limit` and leave the maps exactly as they were.
fn assert_refused(h: &mut Harness, model: &Model, limit: &str) {
    let before = dump(&h.live);
    match h.live.apply(&model.state()) {
        Err(DataplaneError::Capacity { limit: l, .. }) if l == limit => {}
        other => panic!("expected a capacity error on limits.{limit}, got {other:?}"),
    }
    if let Some(diff) = difference(&dump(&h.live), &before) {
        panic!("a refused change modified the maps:\n{diff}");
    }
}

#[test]
fn a_change_that_does_not_fit_changes_nothing() {
    if !have_root() {
        return;
    }
    let base = three_vips();
    let mut h = Harness::new(&base);

    // Limits raised in the file take effect only at restart: the loaded maps stay small.
    let mut model = base.clone();
    model.limits.max_vips = 1024;
    model.limits.max_backends = 8192;
    model.vips[0].backends[0].weight = 7;
    model
        .vips
        .extend((100..100 + LIMITS.max_vips).map(|n| vip(n, 80, 1, 7)));
    assert_refused(&mut h, &model, "max_vips");

    let mut model = base.clone();
    model.limits.max_backends = 8192;
    model.vips[0].backends[0].weight = 7;
    model.vips.push(vip(5, 80, 1, 7));
    model.vips[3].backends = (0..LIMITS.max_backends)
        .map(|k| be(Ipv4Addr::from(0x0b00_0000 + k), 1))
        .collect();
    model.vips[3].table_size = 16381;
    assert_refused(&mut h, &model, "max_backends");

    let mut model = base.clone();
    model.limits.maglev_slots = 16_777_216;
    model.vips[0].backends[0].weight = 7;
    // More slots than the whole loaded array (2^21), so no region can hold it.
    model.vips.push(vip(5, 80, 1, 2_097_143));
    assert_refused(&mut h, &model, "maglev_slots");

    // After the refusals, the dataplane still applies changes correctly.
    let mut model = base;
    model.vips[0].backends[0].weight = 7;
    assert_eq!(h.step(&model, "after refusals"), report(0, 1, 0, 2));
}

#[test]
fn replacing_a_vip_at_full_capacity_is_refused_cleanly() {
    if !have_root() {
        return;
    }
    // Every VIP id in use. A change that removes one VIP and adds another is valid for the
    // limits, but the removed VIP's id stays quarantined until the next change, so it cannot
    // be given to the new one: the change is refused, whole.
    let mut model = Model::new(
        (0..LIMITS.max_vips)
            .map(|n| vip(n, 80, 1, 7))
            .collect::<Vec<_>>(),
    );
    let mut h = Harness::new(&model);
    model.vips[0].port = 81;
    assert_refused(&mut h, &model, "max_vips");
    // Done in two changes, it goes through.
    let replacement = model.vips.remove(0);
    assert_eq!(h.step(&model, "remove"), report(0, 0, 1, 511));
    model.vips.push(replacement);
    assert_eq!(h.step(&model, "add"), report(1, 0, 0, 511));
}

#[test]
fn replacing_tables_in_a_fragmented_array_is_refused_cleanly() {
    if !have_root() {
        return;
    }
    // Known limitation, pinned here so that a fix shows up as a test to update. Validation
    // promises room for a second copy of every table (2 x the sum of table sizes fits in
    // maglev_slots), but apply needs one contiguous region per new table while the regions of
    // VIPs being removed are still in use, and first fit leaves holes.
    let mut model = Model::new((1..=4).map(|n| vip(n, 80, 2, 251)).collect());
    model.limits.maglev_slots = 2048;
    let mut h = Harness::new(&model);
    // 0..1004 holds four tables; two of them move to 1004..1506, leaving holes of 251 slots.
    for n in [1, 3] {
        model.vips[n].backends[0].weight = 50;
    }
    assert_eq!(h.step(&model, "move two tables"), report(0, 2, 0, 2));

    // Everything replaced by one VIP of 1021 slots: valid (2 x 1021 <= 2048), but the largest
    // hole is 542 slots while the four old tables are live.
    let old = std::mem::replace(&mut model.vips, vec![vip(9, 80, 2, 1021)]);
    assert_eq!(model.config().vips.len(), 1, "the config is valid");
    assert_refused(&mut h, &model, "maglev_slots");

    // The same change in two steps goes through.
    let new = std::mem::replace(&mut model.vips, old);
    model.vips.clear();
    assert_eq!(h.step(&model, "remove everything"), report(0, 0, 4, 0));
    model.vips = new;
    assert_eq!(h.step(&model, "add the big VIP"), report(1, 0, 0, 0));
}

#[test]
fn adopting_pinned_maps_keeps_everything_and_reuses_no_live_id() {
    if !have_root() {
        return;
    }
    let pins = TestPins::new("adopt");
    let dir = PinDir::new(pins.root(), "adopt0");
    let mut model = three_vips();
    for n in 3..8 {
        model.vips.push(vip(n, 80, 3, 251));
    }
    let mut h = Harness::pinned(&model, dir.clone());
    // Leave gaps in ids and regions, so adoption must find the live ones among free ones.
    model.vips.remove(4);
    model.vips.remove(1);
    model.vip_mut("vip5-80").backends.remove(0);
    h.step(&model, "make gaps");
    let before = dump(&h.live);

    h.restart();
    let count = model.vips.len();
    assert_eq!(
        h.step(&model, "same state after adoption"),
        report(0, 0, 0, count),
        "every VIP must be taken over as it is"
    );
    assert_eq!(dump(&h.live), before, "adoption changed the maps");

    // New ids and regions after adoption must not collide with live ones (the dump would list
    // foreign or inactive backends in a table otherwise).
    model.vips.push(vip(20, 80, 4, 1021));
    model
        .vip_mut("vip3-80")
        .backends
        .push(be(Ipv4Addr::new(10, 9, 9, 9), 100));
    h.step(&model, "add and change after adoption");
    let mut rng = XorShift(0x5eed_ad0b);
    let mut serial = 100;
    for _ in 0..5 {
        let what = random_change(&mut model, &mut rng, &mut serial);
        h.step(&model, &format!("after adoption: {what}"));
    }

    // The config changed while no daemon ran: adoption rewrites what differs.
    let changed = model.vips[0].name.clone();
    model.vip_mut(&changed).backends[0].weight = 7;
    model.vips.pop();
    model.vips.push(vip(30, 8080, 2, 251));
    h.restart();
    h.step(&model, "changed while the daemon was down");
    for _ in 0..5 {
        let what = random_change(&mut model, &mut rng, &mut serial);
        h.step(&model, &format!("after the second adoption: {what}"));
    }
}

#[test]
fn pinned_maps_of_another_layout_or_size_are_refused() {
    if !have_root() {
        return;
    }
    let pins = TestPins::new("layout");
    let dir = PinDir::new(pins.root(), "layout0");
    let model = three_vips();
    drop(Harness::pinned(&model, dir.clone()));

    let mut smaller = model.limits;
    smaller.max_backends /= 2;
    let Err(error) = load_pinned(smaller, &dir) else {
        panic!("maps pinned with other limits were adopted");
    };
    let text = error.to_string();
    assert!(
        text.contains("XLB_BACKENDS") && text.contains("xlbd detach"),
        "{text}"
    );

    // A daemon of another layout wrote the maps.
    let data = aya::maps::MapData::from_pin(dir.map(xlb_common::map_names::GLOBALS)).unwrap();
    let mut globals: aya::maps::Array<_, xlb_common::Globals> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
    let mut value = globals.get(&0, 0).unwrap();
    value.layout_version = xlb_common::LAYOUT_VERSION + 1;
    globals.set(0, value, 0).unwrap();
    let Err(error) = load_pinned(model.limits, &dir) else {
        panic!("maps of another layout were adopted");
    };
    let text = error.to_string();
    assert!(
        text.contains(&format!(
            "layout version {}",
            xlb_common::LAYOUT_VERSION + 1
        )),
        "{text}"
    );

    dir.remove().unwrap();
    assert!(pins.pinned().is_empty(), "left pinned: {:?}", pins.pinned());
}

/// The policy maps are adopted with the rest: a restart with another deny list changes the
/// lists by difference, so the old list's prefixes do not linger and the new ones hold.
#[test]
fn adopted_policy_lists_change_by_difference() {
    if !have_root() {
        return;
    }
    let pins = TestPins::new("policy");
    let dir = PinDir::new(pins.root(), "policy0");
    let model = three_vips();
    let web = &model.vips[0];
    let state = |deny: &str| {
        let text = format!("{}\n[policy]\ndeny = [{deny}]\n", model.toml());
        let config = Config::parse(&text, "policy.toml").unwrap_or_else(|e| panic!("{e}"));
        DesiredState::from_config(&config).unwrap_or_else(|e| panic!("{e}"))
    };
    let syn_from = |src: [u8; 4]| {
        let l2 = L2 {
            dst: IF_MAC,
            src: [0x02, 0, 0, 0, 0, 0xcc],
            vlan: None,
        };
        let flow = Flow {
            src: Ipv4Addr::from(src),
            dst: web.address,
            sport: 40000,
            dport: web.port,
        };
        packet::tcp4(&l2, &flow, TCP_SYN, b"")
    };
    let action = |dataplane: &mut Dataplane, src: [u8; 4]| {
        let mut out = [0u8; 256];
        dataplane
            .test_run(&syn_from(src), &mut out)
            .unwrap_or_else(|e| panic!("test run: {e}"))
            .0
    };
    const XDP_DROP: u32 = 1;
    const XDP_TX: u32 = 3;

    let mut first = load_pinned(model.limits, &dir).unwrap_or_else(|e| panic!("loading: {e}"));
    // 203.0.113.0/24 is mixed: its table is adopted with the /24 entry that names it.
    first
        .apply(&state(
            r#""192.0.2.0/24", "203.0.113.7", "203.0.113.64/26""#,
        ))
        .expect("first apply");
    assert_eq!(
        action(&mut first, [192, 0, 2, 5]),
        XDP_DROP,
        "denied before"
    );
    assert_eq!(
        action(&mut first, [198, 51, 100, 5]),
        XDP_TX,
        "allowed before"
    );
    drop(first);

    let mut second = load_pinned(model.limits, &dir).unwrap_or_else(|e| panic!("adopting: {e}"));
    assert!(second.adopting(), "the pinned maps were not adopted");
    assert_eq!(
        action(&mut second, [203, 0, 113, 70]),
        XDP_DROP,
        "the adopted mixed /24"
    );
    // The mixed /24's table changes: a fresh table, not the adopted one rewritten.
    second
        .apply(&state(r#""198.51.100.0/24", "203.0.113.7", "203.0.113.9""#))
        .expect("apply after adoption");
    for (src, expected, what) in [
        ([203, 0, 113, 7], XDP_DROP, "a /32 in both lists"),
        ([203, 0, 113, 9], XDP_DROP, "a new /32 in the mixed /24"),
        ([203, 0, 113, 70], XDP_TX, "the removed /26"),
        (
            [203, 0, 113, 8],
            XDP_TX,
            "an unlisted address of the mixed /24",
        ),
    ] {
        assert_eq!(action(&mut second, src), expected, "{what}");
    }
    assert_eq!(
        action(&mut second, [192, 0, 2, 5]),
        XDP_TX,
        "the old deny prefix lingered after the restart"
    );
    assert_eq!(
        action(&mut second, [198, 51, 100, 5]),
        XDP_DROP,
        "new deny prefix"
    );
}

/// IPv6 VIPs (their entries in `XLB_VIPS6`), an IPv4 VIP with IPv6 backends, and the IPv6
/// outer source in the globals: applied, removed and adopted after a restart like IPv4 ones,
/// with an IPv6 flow kept on its backend across the restart.
#[test]
fn ipv6_vips_apply_by_difference_and_are_adopted_with_their_flows() {
    if !have_root() {
        return;
    }
    let vip6 = |name: &str, address: &str, port: u16, mode: &str, backends: &[&str]| {
        let mut text = format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\n\
             protocol = \"tcp\"\nmode = \"{mode}\"\ntable_size = 251\n  [vip.health]\n  \
             via = \"direct\"\n"
        );
        for (i, b) in backends.iter().enumerate() {
            write!(
                text,
                "  [[vip.backend]]\n  address = \"{b}\"\n  mac = \"02:00:00:00:06:{i:02x}\"\n"
            )
            .unwrap();
        }
        text
    };
    let head = "[interface]\nname = \"apply6\"\n\n[limits]\nflow_table_size = 1024\n\
                max_vips = 512\nmax_backends = 4096\nmaglev_slots = 2097152\n\n\
                [encap]\nsource_prefix = \"172.16.0.0/16\"\nsource_prefix_v6 = \"fd00:16::/64\"\n";
    let web = vip6(
        "web6",
        "2001:db8::10",
        80,
        "l2",
        &["2001:db8:1::1", "2001:db8:1::2"],
    );
    let tunnel = vip6("tunnel6", "2001:db8::20", 443, "ipip", &["2001:db8:2::1"]);
    let mixed = vip6(
        "mixed",
        "10.0.0.50",
        80,
        "ipip",
        &["2001:db8:3::1", "2001:db8:3::2"],
    );
    let state = |text: &str| {
        let config = Config::parse(text, "ipv6.toml").unwrap_or_else(|e| panic!("{e}"));
        DesiredState::from_config(&config).unwrap_or_else(|e| panic!("{e}"))
    };
    let all = state(&format!("{head}{web}{tunnel}{mixed}"));
    let two = state(&format!("{head}{web}{mixed}"));

    let pins = TestPins::new("apply6");
    let dir = PinDir::new(pins.root(), "apply6");
    let limits = LIMITS;
    let mut live = load_pinned(limits, &dir).unwrap_or_else(|e| panic!("loading: {e}"));
    assert_eq!(live.apply(&all).unwrap(), report(3, 0, 0, 0));
    assert_dump_is(&dump(&live), &all, "three VIPs, two IPv6");
    assert_eq!(live.apply(&two).unwrap(), report(0, 0, 1, 2));
    assert_dump_is(&dump(&live), &two, "the IPv6 ipip VIP removed");
    assert_eq!(live.apply(&all).unwrap(), report(1, 0, 0, 2));
    let before = dump(&live);

    // An IPv6 connection starts on some backend.
    let to_lb = L2 {
        dst: IF_MAC,
        src: [0x02, 0, 0, 0, 0, 0xcc],
        vlan: None,
    };
    let flow = packet::Flow6 {
        src: "2001:db8:c::1".parse().unwrap(),
        dst: "2001:db8::10".parse().unwrap(),
        sport: 40000,
        dport: 80,
    };
    let run = |dataplane: &mut Dataplane, flags: u8| {
        let input = packet::tcp6(&to_lb, &flow, flags, b"");
        let mut out = vec![0u8; input.len() + 64];
        let (action, len) = dataplane.test_run(&input, &mut out).unwrap();
        assert_eq!(action, 3, "XDP_TX");
        out[..len][0..6].to_vec()
    };
    let first = run(&mut live, TCP_SYN);
    assert_eq!(
        live.count_flows6().unwrap(),
        1,
        "the flow is in the IPv6 table"
    );

    // A restart adopts everything as it is, the flow included.
    drop(live);
    let mut live = load_pinned(limits, &dir).unwrap_or_else(|e| panic!("adopting: {e}"));
    assert!(live.adopting(), "the pinned maps were not adopted");
    assert_eq!(live.apply(&all).unwrap(), report(0, 0, 0, 3));
    assert_eq!(dump(&live), before, "adoption changed the maps");
    assert_eq!(live.count_flows6().unwrap(), 1, "the IPv6 flow survived");
    assert_eq!(run(&mut live, 0x10), first, "the flow stays on its backend");
}

/// Source ranges of IPv6 VIPs (`XLB_POL_VIP6`) are adopted with the rest: after a restart a
/// changed range replaces the old one by difference (the old one does not linger), a VIP
/// without ranges holds ::/0, and a removed VIP's entries are cleared.
#[test]
fn adopted_ipv6_source_ranges_change_by_difference() {
    if !have_root() {
        return;
    }
    let head = "[interface]\nname = \"ranges6\"\n\n[limits]\nflow_table_size = 1024\n\
                max_vips = 512\nmax_backends = 4096\nmaglev_slots = 2097152\n";
    let vip = |name: &str, port: u16, ranges: Option<&str>| {
        let ranges = ranges.map_or(String::new(), |r| format!("source_ranges = [\"{r}\"]\n"));
        format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"2001:db8::10\"\nport = {port}\n\
             protocol = \"tcp\"\nmode = \"l2\"\ntable_size = 251\n{ranges}  [vip.health]\n  \
             via = \"direct\"\n  [[vip.backend]]\n  address = \"2001:db8:1::{port}\"\n  \
             mac = \"02:00:00:00:06:01\"\n"
        )
    };
    let state = |text: &str| {
        let config = Config::parse(text, "ranges6.toml").unwrap_or_else(|e| panic!("{e}"));
        DesiredState::from_config(&config).unwrap_or_else(|e| panic!("{e}"))
    };
    let web = vip("web6", 80, None);
    let first = state(&format!(
        "{head}{web}{}",
        vip("admin6", 22, Some("2001:db8:c::/48"))
    ));
    let moved = state(&format!(
        "{head}{web}{}",
        vip("admin6", 22, Some("2001:db8:d::/48"))
    ));
    let web_only = state(&format!("{head}{web}"));
    let to_lb = L2 {
        dst: IF_MAC,
        src: [0x02, 0, 0, 0, 0, 0xcc],
        vlan: None,
    };
    let action = |dataplane: &mut Dataplane, src: &str, dport: u16| {
        let flow = packet::Flow6 {
            src: src.parse().unwrap(),
            dst: "2001:db8::10".parse().unwrap(),
            sport: 40000,
            dport,
        };
        let input = packet::tcp6(&to_lb, &flow, TCP_SYN, b"");
        let mut out = vec![0u8; input.len() + 64];
        dataplane
            .test_run(&input, &mut out)
            .unwrap_or_else(|e| panic!("test run: {e}"))
            .0
    };
    const XDP_DROP: u32 = 1;
    const XDP_TX: u32 = 3;
    let pins = TestPins::new("ranges6");
    let dir = PinDir::new(pins.root(), "ranges6");
    let trie_entries = || {
        let data = aya::maps::MapData::from_pin(dir.map(xlb_common::map_names::POLICY_VIP6))
            .unwrap_or_else(|e| panic!("opening the pinned trie: {e}"));
        let trie: aya::maps::lpm_trie::LpmTrie<_, xlb_common::VipSourceKey6, u32> =
            aya::maps::Map::LpmTrie(data).try_into().unwrap();
        trie.keys().count()
    };

    let mut live = load_pinned(LIMITS, &dir).unwrap_or_else(|e| panic!("loading: {e}"));
    live.apply(&first).expect("first apply");
    assert_eq!(action(&mut live, "2001:db8:c::1", 22), XDP_TX, "in range");
    assert_eq!(
        action(&mut live, "2001:db8:d::1", 22),
        XDP_DROP,
        "out of range"
    );
    assert_eq!(action(&mut live, "2001:db8:d::1", 80), XDP_TX, "no ranges");
    assert_eq!(trie_entries(), 2, "web6's ::/0 and admin6's range");
    drop(live);

    let mut live = load_pinned(LIMITS, &dir).unwrap_or_else(|e| panic!("adopting: {e}"));
    assert!(live.adopting(), "the pinned maps were not adopted");
    live.apply(&moved).expect("apply after adoption");
    assert_eq!(
        action(&mut live, "2001:db8:c::2", 22),
        XDP_DROP,
        "the old range lingered after the restart"
    );
    assert_eq!(action(&mut live, "2001:db8:d::2", 22), XDP_TX, "new range");
    assert_eq!(
        trie_entries(),
        2,
        "the old range was replaced, not added to"
    );
    drop(live);

    let mut live = load_pinned(LIMITS, &dir).unwrap_or_else(|e| panic!("adopting: {e}"));
    assert!(live.adopting(), "the pinned maps were not adopted");
    live.apply(&web_only).expect("removing admin6");
    assert_eq!(
        action(&mut live, "2001:db8:e::1", 80),
        XDP_TX,
        "web6 serves"
    );
    assert_eq!(trie_entries(), 1, "admin6's range left behind");
}
