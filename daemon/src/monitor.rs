//! The health of the configured backends, between the health checker and the controller: which
//! backend is checked how, what each one's health is, and what that does to the desired state.
//!
//! **What health changes.** A backend that is down leaves its VIP's Maglev table exactly as a
//! drained one does (weight 0 in the state the controller builds): only its slots move, through
//! the controller's one change path. Its entry stays ACTIVE in the datapath, so flows already
//! pinned to it in the flow table stay with it: a backend that is really dead loses them
//! anyway, and one that only fails its checks (an overloaded server, a broken probe path) keeps
//! serving the connections it has. Katran does the same (a real leaves the ring, its LRU
//! entries stay); Maglev keeps a flow on its backend while that backend is healthy.
//!
//! **Every backend down.** What a VIP does then is its `on_all_down` policy: `keep` serves
//! with the backends of the state in force when the last one went down (the state applied
//! before this change; all weighted backends if that state had none), `drop` empties the table
//! (new flows are dropped and counted as `no_backend`; established flows continue).
//!
//! **Probe paths.** A backend of an `ipip` VIP with `via = "encap"` is probed at the VIP's
//! address with a socket mark that `xlb_hc_encap` (tc egress on the balancer's interface) turns
//! into IPv4-in-IPv4 towards that backend, as the datapath sends client traffic: a backend
//! that answers on its own address but does not serve the VIP fails. Marks are
//! [`PROBE_MARK_BASE`] plus the backend's target id.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    num::NonZeroU32,
};

use crossbeam_channel::Receiver;
use tracing::{error, info, warn};

use crate::{
    api::types::{BackendHealthView, HealthStatusView},
    config::{AllDown, Config, MacAddr, ProbeVia, VipConfig},
    dataplane::hc_encap::{self, HealthEncap},
    health::{Checker, Health, Target, TargetId, Transition},
    state::DesiredState,
};

/// Socket marks of encapsulated probes are this plus the target's slot (below 2^24): marks
/// 0x7800_0001 to 0x78ff_ffff must be free on the balancer host.
pub const PROBE_MARK_BASE: NonZeroU32 = NonZeroU32::new(0x7800_0000).expect("not zero");

/// A backend of a VIP: the VIP's name and the backend's address.
type BackendKey = (String, IpAddr);

struct Known {
    health: Health,
    reason: String,
    since_unix: u64,
    went_down: u64,
    came_up: u64,
}

/// Where one encapsulated probe target goes: backend, next-hop MAC, outer source.
type EncapTarget = (Ipv4Addr, MacAddr, Ipv4Addr);

/// The health checker and what its results mean for the configured VIPs.
pub struct Monitor {
    checker: Checker,
    transitions: Receiver<Transition>,
    interface: String,
    encap: Option<HealthEncap>,
    encap_error: Option<String>,
    encap_targets: HashMap<NonZeroU32, EncapTarget>,
    ids: HashMap<BackendKey, TargetId>,
    by_id: HashMap<TargetId, BackendKey>,
    /// Slots (the low 24 bits of an id, which the probe mark carries) of forgotten backends.
    free_slots: Vec<u64>,
    next_slot: u64,
    /// Ids handed out so far: the high bits of the next id, so that a recycled slot never
    /// makes an id seen before, and a transition the checker sent about a forgotten backend
    /// (still in the channel when its slot was given to another) matches nothing.
    allocations: u64,
    known: HashMap<BackendKey, Known>,
    went_down: u64,
    came_up: u64,
}

impl Monitor {
    /// Starts the checker (no targets yet). Encapsulated probes leave through `interface`.
    pub fn start(interface: &str) -> std::io::Result<Monitor> {
        let (sender, transitions) = crossbeam_channel::unbounded();
        Ok(Monitor {
            checker: Checker::start(sender)?,
            transitions,
            interface: interface.to_owned(),
            encap: None,
            encap_error: None,
            encap_targets: HashMap::new(),
            ids: HashMap::new(),
            by_id: HashMap::new(),
            free_slots: Vec::new(),
            next_slot: 1,
            allocations: 0,
            known: HashMap::new(),
            went_down: 0,
            came_up: 0,
        })
    }

    /// Where transitions arrive; hand each to [`Monitor::record`].
    pub fn transitions(&self) -> &Receiver<Transition> {
        &self.transitions
    }

    /// Takes one transition in and logs it; true if it changed the health of a backend still
    /// configured (the desired state must then be rebuilt).
    pub fn record(&mut self, transition: Transition) -> bool {
        let Some(key) = self.by_id.get(&transition.id) else {
            return false;
        };
        let Some(known) = self.known.get_mut(key) else {
            return false;
        };
        if known.health == transition.health {
            return false;
        }
        known.health = transition.health;
        known.since_unix = crate::controller::unix_now();
        known.reason.clone_from(&transition.reason);
        let (vip, backend) = key;
        match transition.health {
            Health::Down => {
                known.went_down += 1;
                self.went_down += 1;
                warn!(vip, %backend, reason = %transition.reason, "backend down");
            }
            Health::Up => {
                known.came_up += 1;
                self.came_up += 1;
                info!(vip, %backend, reason = %transition.reason, "backend up");
            }
        }
        true
    }

    /// Whether a backend of a VIP is down (an unchecked backend never is).
    pub fn is_down(&self, vip: &str, backend: IpAddr) -> bool {
        self.known
            .get(&(vip.to_owned(), backend))
            .is_some_and(|k| k.health == Health::Down)
    }

    /// What is known of a backend's health; `None` when it is not checked.
    pub fn backend(&self, vip: &str, backend: IpAddr) -> Option<BackendHealthView> {
        self.known
            .get(&(vip.to_owned(), backend))
            .map(|k| BackendHealthView {
                health: k.health.to_string(),
                reason: k.reason.clone(),
                since_unix: k.since_unix,
                went_down: k.went_down,
                came_up: k.came_up,
            })
    }

    /// Takes down backends out of `config` (weight 0, as a drain does) and applies each VIP's
    /// all-down policy; `applied` is the state in force, whose weights `keep` holds on to.
    /// `config` must already carry the runtime overrides.
    pub fn apply(&self, config: &mut Config, applied: &DesiredState) {
        let mut previous: Option<HashMap<&str, &crate::state::DesiredVip>> = None;
        for vip in &mut config.vips {
            let weighted = vip.backends.iter().filter(|b| b.weight > 0).count();
            let down: Vec<bool> = vip
                .backends
                .iter()
                .map(|b| b.weight > 0 && self.is_down(&vip.name, b.address))
                .collect();
            let down_count = down.iter().filter(|&&d| d).count();
            if down_count == 0 {
                continue;
            }
            if down_count < weighted || vip.on_all_down == AllDown::Drop {
                for (backend, down) in vip.backends.iter_mut().zip(down) {
                    if down {
                        backend.weight = 0;
                    }
                }
                continue;
            }
            // Every weighted backend is down and the policy is `keep`: the weights in force.
            let previous = previous.get_or_insert_with(|| {
                applied
                    .vips
                    .values()
                    .map(|v| (v.name.as_str(), v.as_ref()))
                    .collect()
            });
            let kept: Option<HashMap<IpAddr, u32>> = previous.get(vip.name.as_str()).map(|v| {
                v.backends
                    .iter()
                    .filter(|b| b.weight > 0)
                    .map(|b| (b.address, b.weight))
                    .collect()
            });
            let kept_any = kept.as_ref().is_some_and(|kept| {
                vip.backends
                    .iter()
                    .any(|b| b.weight > 0 && kept.contains_key(&b.address))
            });
            if let (Some(kept), true) = (kept, kept_any) {
                for backend in &mut vip.backends {
                    if !kept.contains_key(&backend.address) {
                        backend.weight = 0;
                    }
                }
            }
        }
    }

    /// Checks the backends of `config` from now on (call after a change is applied). Backends
    /// whose check is unchanged keep their health and schedule; others start up.
    pub fn update(&mut self, config: &Config) {
        let mut targets = Vec::new();
        let mut wanted: HashMap<BackendKey, TargetId> = HashMap::new();
        let mut encap_wanted: HashMap<NonZeroU32, (Ipv4Addr, MacAddr)> = HashMap::new();
        let mut neighbours = BTreeSet::new();
        for vip in &config.vips {
            for backend in &vip.backends {
                let health = vip.health_of(backend);
                let Some(settings) = health.settings() else {
                    continue;
                };
                let key = (vip.name.clone(), backend.address);
                let id = match self.ids.get(&key) {
                    Some(&id) => id,
                    None => {
                        let slot = self.free_slots.pop().unwrap_or_else(|| {
                            self.next_slot += 1;
                            self.next_slot - 1
                        });
                        self.allocations += 1;
                        (self.allocations << SLOT_BITS) | slot
                    }
                };
                self.ids.insert(key.clone(), id);
                wanted.insert(key, id);
                let mut target = Target {
                    id,
                    address: SocketAddr::new(backend.address, health.port),
                    settings,
                    bind: None,
                    mark: None,
                };
                if health.via == ProbeVia::Encap
                    && let (IpAddr::V4(vip_addr), IpAddr::V4(backend_addr)) =
                        (vip.address, backend.address)
                {
                    let mark = probe_mark(id);
                    target.address = SocketAddr::new(vip.address, health.port);
                    target.mark = Some(mark.get());
                    encap_wanted.insert(mark, (backend_addr, backend.mac));
                    neighbours.insert(vip_addr);
                }
                targets.push(target);
            }
        }
        // Forget backends no longer checked, and recycle their slots.
        let gone: Vec<BackendKey> = self
            .ids
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(id) = self.ids.remove(&key) {
                self.free_slots.push(id & SLOT_MASK);
            }
            self.known.remove(&key);
        }
        self.by_id = wanted.iter().map(|(k, &id)| (id, k.clone())).collect();
        for key in wanted.keys() {
            self.known.entry(key.clone()).or_insert_with(|| Known {
                health: Health::Up,
                reason: "starting".to_owned(),
                since_unix: 0,
                went_down: 0,
                came_up: 0,
            });
        }
        self.update_encap(&encap_wanted, &neighbours);
        self.checker.set_targets(targets);
    }

    /// Makes the probe encapsulator's targets and neighbour entries match what is wanted,
    /// attaching it the first time it is needed. A failure is logged and shown in status; the
    /// probes concerned then fail, so their backends go down, which is visible too.
    fn update_encap(
        &mut self,
        wanted: &HashMap<NonZeroU32, (Ipv4Addr, MacAddr)>,
        neighbours: &BTreeSet<Ipv4Addr>,
    ) {
        if wanted.is_empty() && self.encap.is_none() {
            return;
        }
        let result = (|| -> Result<(), String> {
            if self.encap.is_none() {
                let encap = HealthEncap::attach(&self.interface).map_err(|e| e.to_string())?;
                info!(interface = %self.interface, "probe encapsulation attached (tc egress)");
                self.encap = Some(encap);
            }
            let encap = self.encap.as_mut().expect("attached above");
            let outer_src = hc_encap::interface_ipv4(&self.interface)
                .map_err(|e| format!("outer source of probes: {e}"))?;
            let stale: Vec<NonZeroU32> = self
                .encap_targets
                .keys()
                .filter(|m| !wanted.contains_key(*m))
                .copied()
                .collect();
            for mark in stale {
                encap.remove_target(mark).map_err(|e| e.to_string())?;
                self.encap_targets.remove(&mark);
            }
            for (&mark, &(backend, mac)) in wanted {
                let target = (backend, mac, outer_src);
                if self.encap_targets.get(&mark) != Some(&target) {
                    encap
                        .set_target(mark, backend, mac, outer_src)
                        .map_err(|e| e.to_string())?;
                    self.encap_targets.insert(mark, target);
                }
            }
            encap.set_neighbours(neighbours).map_err(|e| e.to_string())
        })();
        match result {
            Ok(()) => self.encap_error = None,
            Err(message) => {
                error!(error = %message, "encapsulated health probes cannot be sent; their backends will be marked down");
                self.encap_error = Some(message);
            }
        }
    }

    /// Totals for status.
    pub fn summary(&self) -> HealthStatusView {
        let stats = self.checker.stats();
        let down = self
            .known
            .values()
            .filter(|k| k.health == Health::Down)
            .count() as u64;
        HealthStatusView {
            checked: self.known.len() as u64,
            up: self.known.len() as u64 - down,
            down,
            went_down: self.went_down,
            came_up: self.came_up,
            probes_started: stats.probes_started,
            probes_succeeded: stats.probes_succeeded,
            probes_failed: stats.probes_failed,
            local_errors: stats.local_errors,
            encap_error: self.encap_error.clone(),
            encap_packets: self
                .encap
                .as_ref()
                .and_then(|e| e.counters().ok())
                .unwrap_or_default()
                .into_iter()
                .map(|(name, n)| (name.to_owned(), n))
                .collect(),
        }
    }
}

/// The health summary of a VIP for `xlb vip list`: `"unchecked"`, `"up"`, `"degraded"`,
/// `"all down (keep)"` or `"all down (drop)"`, given the health of each of its backends that
/// has weight (`None` for an unchecked one).
pub fn vip_state(vip: &VipConfig, weighted_health: &[Option<bool>]) -> String {
    if weighted_health.iter().all(Option::is_none) {
        return "unchecked".to_owned();
    }
    let down = weighted_health
        .iter()
        .filter(|h| **h == Some(false))
        .count();
    match down {
        0 => "up".to_owned(),
        n if n == weighted_health.len() => format!("all down ({})", vip.on_all_down),
        _ => "degraded".to_owned(),
    }
}

/// Bits of a target id that name its slot (and its probe mark).
const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;

fn probe_mark(id: TargetId) -> NonZeroU32 {
    PROBE_MARK_BASE.saturating_add((id & SLOT_MASK) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One VIP, three loopback backends (never probed within a test: the interval is an hour).
    fn config(policy: &str) -> Config {
        let mut text = String::from(
            "[interface]\nname = \"lo\"\n[[vip]]\nname = \"web\"\naddress = \"10.0.0.1\"\n\
             port = 80\nprotocol = \"tcp\"\nmode = \"l2\"\n[vip.health]\ninterval_ms = 3600000\n",
        );
        text.push_str(&format!("on_all_down = \"{policy}\"\n"));
        for i in 1..=3 {
            text.push_str(&format!(
                "[[vip.backend]]\naddress = \"127.0.0.1{i}\"\nmac = \"02:00:00:00:00:0{i}\"\n"
            ));
        }
        Config::parse(&text, "t").unwrap()
    }

    fn set(monitor: &mut Monitor, backend: u8, health: Health) -> bool {
        let key = ("web".to_owned(), IpAddr::from([127, 0, 0, 10 + backend]));
        let id = monitor.ids[&key];
        monitor.record(Transition {
            id,
            health,
            reason: "test".into(),
        })
    }

    fn weights(monitor: &Monitor, config: &Config, applied: &DesiredState) -> Vec<u32> {
        let mut serving = config.clone();
        monitor.apply(&mut serving, applied);
        serving.vips[0].backends.iter().map(|b| b.weight).collect()
    }

    #[test]
    fn down_backends_leave_and_the_all_down_policy_applies() {
        for policy in ["keep", "drop"] {
            let config = config(policy);
            let mut monitor = Monitor::start("lo").unwrap();
            monitor.update(&config);
            let mut applied = DesiredState::from_config(&config).unwrap();
            assert_eq!(weights(&monitor, &config, &applied), [100, 100, 100]);

            assert!(set(&mut monitor, 1, Health::Down));
            assert!(!set(&mut monitor, 1, Health::Down), "no change, no rebuild");
            assert!(set(&mut monitor, 2, Health::Down));
            assert_eq!(weights(&monitor, &config, &applied), [0, 0, 100]);
            let mut serving = config.clone();
            monitor.apply(&mut serving, &applied);
            applied = DesiredState::from_config(&serving).unwrap();

            assert!(set(&mut monitor, 3, Health::Down));
            let expected = if policy == "keep" {
                [0, 0, 100]
            } else {
                [0, 0, 0]
            };
            assert_eq!(weights(&monitor, &config, &applied), expected, "{policy}");
            // `keep` with nothing in force to keep: every weighted backend.
            let none_kept = DesiredState::from_config(&Config {
                vips: vec![],
                ..config.clone()
            })
            .unwrap();
            if policy == "keep" {
                assert_eq!(weights(&monitor, &config, &none_kept), [100, 100, 100]);
            }

            assert!(set(&mut monitor, 2, Health::Up));
            assert_eq!(weights(&monitor, &config, &applied), [0, 100, 0]);
            let summary = monitor.summary();
            assert_eq!(
                (
                    summary.checked,
                    summary.down,
                    summary.went_down,
                    summary.came_up
                ),
                (3, 2, 3, 1)
            );
            let be2 = monitor
                .backend("web", IpAddr::from([127, 0, 0, 12]))
                .unwrap();
            assert_eq!(
                (be2.health.as_str(), be2.went_down, be2.came_up),
                ("up", 1, 1)
            );
        }
    }

    #[test]
    fn a_late_transition_of_a_forgotten_backend_does_not_hit_the_one_reusing_its_slot() {
        let mut config = config("drop");
        let mut monitor = Monitor::start("lo").unwrap();
        monitor.update(&config);
        let key = |host: u8| ("web".to_owned(), IpAddr::from([127, 0, 0, host]));
        let old = monitor.ids[&key(11)];
        config.vips[0].backends[0].address = IpAddr::from([127, 0, 0, 14]);
        monitor.update(&config);
        // A slot is free for the update after the one that forgot its backend.
        config.vips[0].backends[0].address = IpAddr::from([127, 0, 0, 15]);
        monitor.update(&config);
        let new = monitor.ids[&key(15)];
        assert_eq!(probe_mark(new), probe_mark(old), "the slot is reused");
        assert_ne!(new, old);
        let stale = Transition {
            id: old,
            health: Health::Down,
            reason: "sent before the change".into(),
        };
        assert!(!monitor.record(stale));
        assert!(!monitor.is_down("web", IpAddr::from([127, 0, 0, 15])));
    }

    #[test]
    fn a_drained_backend_is_not_counted_and_removed_backends_are_forgotten() {
        let mut config = config("drop");
        let mut monitor = Monitor::start("lo").unwrap();
        monitor.update(&config);
        let applied = DesiredState::from_config(&config).unwrap();
        config.vips[0].backends[0].weight = 0; // drained
        assert!(set(&mut monitor, 2, Health::Down));
        assert!(set(&mut monitor, 3, Health::Down));
        // Every backend with weight is down: the policy applies (drop).
        assert_eq!(weights(&monitor, &config, &applied), [0, 0, 0]);
        assert_eq!(
            vip_state(&config.vips[0], &[Some(false), Some(false)]),
            "all down (drop)"
        );

        config.vips[0].backends.truncate(1);
        monitor.update(&config);
        assert!(!monitor.is_down("web", IpAddr::from([127, 0, 0, 12])));
        assert_eq!(monitor.summary().checked, 1);
        config.vips[0].health.check = None;
        monitor.update(&config);
        assert_eq!(monitor.summary().checked, 0);
        assert_eq!(vip_state(&config.vips[0], &[None]), "unchecked");
    }
}
