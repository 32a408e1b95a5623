//! Reading the per-CPU counters into one labelled snapshot (summed over CPUs).

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use serde::Serialize;
use xlb_common::{Counter, DropReason, LbCounter, PolicyCounter, XDP_ACTION_COUNT, map_names};

use super::{DataplaneError, map_err};
use crate::state::DesiredVip;

/// The per-CPU counter maps.
pub struct StatsMaps {
    /// Per XDP action.
    pub actions: PerCpuArray<MapData, Counter>,
    /// Per drop reason.
    pub drops: PerCpuArray<MapData, u64>,
    /// Per load-balancing event.
    pub lb: PerCpuArray<MapData, u64>,
    /// Per VIP id.
    pub vips: PerCpuArray<MapData, Counter>,
    /// Per backend id.
    pub backends: PerCpuArray<MapData, Counter>,
    /// Per policy/event counter.
    pub policy: PerCpuArray<MapData, u64>,
}

/// Names of XDP actions by code.
pub const ACTION_NAMES: [&str; XDP_ACTION_COUNT as usize] =
    ["aborted", "drop", "pass", "tx", "redirect"];

/// Labels of one applied VIP, to name its counters.
pub struct VipLabels<'a> {
    /// VIP id (counter index).
    pub vip_id: u32,
    /// The VIP.
    pub vip: &'a DesiredVip,
    /// Backend ids, parallel to `vip.backends`.
    pub backend_ids: &'a [u32],
}

/// Every counter, summed over CPUs.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    /// (action name, counter) for every XDP action.
    pub actions: Vec<(String, Counter)>,
    /// (reason name, packets) for every drop reason.
    pub drops: Vec<(String, u64)>,
    /// (event name, count) for every load-balancing event.
    pub lb: Vec<(String, u64)>,
    /// (counter name, count) for every policy and event counter.
    pub policy: Vec<(String, u64)>,
    /// Every VIP with its backends.
    pub vips: Vec<VipStats>,
}

/// One VIP's counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct VipStats {
    /// VIP name.
    pub name: String,
    /// "address:port/protocol".
    pub service: String,
    /// Forwarding mode.
    pub mode: String,
    /// Packets and bytes forwarded.
    pub counter: Counter,
    /// Per backend.
    pub backends: Vec<BackendStats>,
}

/// One backend's counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct BackendStats {
    /// Backend label.
    pub name: String,
    /// Backend address.
    pub address: String,
    /// Configured weight.
    pub weight: u32,
    /// Slots it owns in the VIP's Maglev table.
    pub slots: u32,
    /// Packets and bytes forwarded to it.
    pub counter: Counter,
}

impl Snapshot {
    /// Packets counted under an XDP action name ("tx", "pass", ...).
    pub fn action_packets(&self, name: &str) -> u64 {
        self.actions
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| c.packets)
    }

    /// Packets dropped for a reason.
    pub fn drop_packets(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|(n, _)| n == reason.name())
            .map_or(0, |(_, c)| *c)
    }

    /// Count of a policy or event counter.
    pub fn policy_count(&self, counter: PolicyCounter) -> u64 {
        self.policy
            .iter()
            .find(|(n, _)| n == counter.name())
            .map_or(0, |(_, c)| *c)
    }

    /// Count of a load-balancing event.
    pub fn lb_count(&self, event: LbCounter) -> u64 {
        self.lb
            .iter()
            .find(|(n, _)| n == event.name())
            .map_or(0, |(_, c)| *c)
    }
}

fn sum_counter(
    map: &PerCpuArray<MapData, Counter>,
    index: u32,
    name: &'static str,
) -> Result<Counter, DataplaneError> {
    let values = map.get(&index, 0).map_err(map_err("lookup", name))?;
    Ok(values.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    }))
}

fn sum_u64(
    map: &PerCpuArray<MapData, u64>,
    index: u32,
    name: &'static str,
) -> Result<u64, DataplaneError> {
    let values = map.get(&index, 0).map_err(map_err("lookup", name))?;
    Ok(values.iter().sum())
}

/// The number of possible CPUs (per-CPU map values have one slot each), read from sysfs once:
/// a change that adds 10,000 VIPs zeroes 10,000 counters.
fn possible_cpus() -> Result<usize, DataplaneError> {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if let Some(&cpus) = CPUS.get() {
        return Ok(cpus);
    }
    let cpus =
        aya::util::nr_cpus().map_err(|(what, source)| DataplaneError::Cpus { what, source })?;
    Ok(*CPUS.get_or_init(|| cpus))
}

fn zero(
    map: &mut PerCpuArray<MapData, Counter>,
    index: u32,
    name: &'static str,
) -> Result<(), DataplaneError> {
    let cpus = possible_cpus()?;
    let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(|source| {
        DataplaneError::Cpus {
            what: "per-CPU values",
            source,
        }
    })?;
    map.set(index, zeros, 0).map_err(map_err("update", name))
}

impl StatsMaps {
    /// Zeroes a VIP id's counters before the id is given to a new VIP.
    pub fn reset_vip(&mut self, vip_id: u32) -> Result<(), DataplaneError> {
        zero(&mut self.vips, vip_id, map_names::STATS_VIPS)
    }

    /// Zeroes a backend id's counters before the id is given to a new backend.
    pub fn reset_backend(&mut self, backend_id: u32) -> Result<(), DataplaneError> {
        zero(&mut self.backends, backend_id, map_names::STATS_BACKENDS)
    }

    /// Reads every counter.
    pub fn snapshot(&self, vips: &[VipLabels<'_>]) -> Result<Snapshot, DataplaneError> {
        let mut snapshot = Snapshot::default();
        for (code, name) in ACTION_NAMES.iter().enumerate() {
            let counter = sum_counter(&self.actions, code as u32, map_names::STATS_ACTIONS)?;
            snapshot.actions.push(((*name).to_owned(), counter));
        }
        for reason in DropReason::ALL {
            let count = sum_u64(&self.drops, reason as u32, map_names::STATS_DROPS)?;
            snapshot.drops.push((reason.name().to_owned(), count));
        }
        for event in LbCounter::ALL {
            let count = sum_u64(&self.lb, event as u32, map_names::STATS_LB)?;
            snapshot.lb.push((event.name().to_owned(), count));
        }
        for counter in PolicyCounter::ALL {
            let count = sum_u64(&self.policy, counter as u32, map_names::STATS_POLICY)?;
            snapshot.policy.push((counter.name().to_owned(), count));
        }
        for labels in vips {
            let vip = labels.vip;
            let slot_counts = crate::maglev::slot_counts(&vip.table, vip.backends.len());
            let mut backends = Vec::with_capacity(vip.backends.len());
            for (i, backend) in vip.backends.iter().enumerate() {
                backends.push(BackendStats {
                    name: backend.name.clone(),
                    address: backend.address.to_string(),
                    weight: backend.weight,
                    slots: slot_counts.get(i).copied().unwrap_or(0),
                    counter: sum_counter(
                        &self.backends,
                        labels.backend_ids[i],
                        map_names::STATS_BACKENDS,
                    )?,
                });
            }
            snapshot.vips.push(VipStats {
                name: vip.name.clone(),
                service: crate::config::service_label(
                    &vip.config.address.to_string(),
                    vip.config.port,
                    &vip.config.protocol.to_string(),
                ),
                mode: vip.config.mode.to_string(),
                counter: sum_counter(&self.vips, labels.vip_id, map_names::STATS_VIPS)?,
                backends,
            });
        }
        Ok(snapshot)
    }
}
