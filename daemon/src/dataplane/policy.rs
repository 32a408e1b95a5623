//! Writing the policy into the datapath: the settings word, the global CIDR tries and every
//! VIP's source ranges, each changed by difference so traffic is never judged by a half-written
//! policy (new entries go in before the flags that make them count, flags go off before the
//! entries they guard are removed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use aya::maps::{
    Array, MapData,
    lpm_trie::{Key, LpmTrie},
};
use xlb_common::{PolicyConfig as DatapathPolicy, VipSourceKey, map_names, policy_flags, verdict};

use super::{DataplaneError, map_err};
use crate::config::{Action, Cidr, EventsConfig, PolicyConfig};
use crate::state::addr_words;

/// The policy maps of the loaded program, and what they hold.
pub struct PolicyMaps {
    pub(super) settings: Array<MapData, DatapathPolicy>,
    pub(super) v4: LpmTrie<MapData, u32, u32>,
    pub(super) v6: LpmTrie<MapData, [u32; 4], u32>,
    pub(super) vip: LpmTrie<MapData, VipSourceKey, u32>,
    /// Global entries written: prefix -> verdict.
    global: BTreeMap<Cidr, u32>,
    /// Source-range entries written per VIP id.
    vip_ranges: BTreeMap<u32, BTreeSet<Cidr>>,
    written: Option<DatapathPolicy>,
}

/// Every source: what a VIP without `source_ranges` holds in the per-VIP trie.
const ANY_V4: Cidr = Cidr {
    addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    prefix_len: 0,
};

/// The global entries a policy asks for: prefix -> verdict.
fn global_entries(policy: &PolicyConfig) -> BTreeMap<Cidr, u32> {
    let deny = policy.deny.iter().map(|c| (*c, verdict::DENY));
    let allow = policy.allow.iter().map(|c| (*c, verdict::ALLOW));
    deny.chain(allow).collect()
}

/// The settings word for a policy and event config.
pub fn datapath_settings(
    policy: &PolicyConfig,
    events: &EventsConfig,
    vip_ranges: bool,
) -> DatapathPolicy {
    let has = |list: &[Cidr], v4: bool| list.iter().any(|c| c.addr.is_ipv4() == v4);
    let mut flags = 0;
    let mut set = |on: bool, flag: u32| {
        if on {
            flags |= flag;
        }
    };
    set(
        has(&policy.deny, true) || has(&policy.allow, true),
        policy_flags::LISTS_V4,
    );
    set(has(&policy.allow, true), policy_flags::ALLOW_V4);
    set(
        has(&policy.deny, false) || has(&policy.allow, false),
        policy_flags::LISTS_V6,
    );
    set(has(&policy.allow, false), policy_flags::ALLOW_V6);
    set(vip_ranges, policy_flags::VIP_RANGES);
    set(policy.unserved == Action::Drop, policy_flags::DROP_UNSERVED);
    set(
        policy.ipv4_options == Action::Drop,
        policy_flags::DROP_OPTIONS,
    );
    set(
        policy.fragments == Action::Pass,
        policy_flags::PASS_FRAGMENTS,
    );
    DatapathPolicy {
        flags,
        source_rate: policy.rate_limit.map_or(0, |r| r.per_second),
        source_burst: policy.rate_limit.map_or(0, |r| r.burst),
        flow_insert_rate: policy.flow_insert_rate.unwrap_or(0),
        drop_events_rate: events.drops_per_second,
        forward_sample: events.forward_sample,
    }
}

impl PolicyMaps {
    /// Wraps the maps of a freshly loaded program (all empty).
    pub(super) fn new(
        settings: Array<MapData, DatapathPolicy>,
        v4: LpmTrie<MapData, u32, u32>,
        v6: LpmTrie<MapData, [u32; 4], u32>,
        vip: LpmTrie<MapData, VipSourceKey, u32>,
    ) -> Self {
        PolicyMaps {
            settings,
            v4,
            v6,
            vip,
            global: BTreeMap::new(),
            vip_ranges: BTreeMap::new(),
            written: None,
        }
    }

    fn write_global(&mut self, cidr: Cidr, value: u32) -> Result<(), DataplaneError> {
        let (words, _) = addr_words(cidr.addr);
        let len = u32::from(cidr.prefix_len);
        match cidr.addr {
            IpAddr::V4(_) => self
                .v4
                .insert(&Key::new(len, words[0]), value, 0)
                .map_err(map_err("update", map_names::POLICY_V4)),
            IpAddr::V6(_) => self
                .v6
                .insert(&Key::new(len, words), value, 0)
                .map_err(map_err("update", map_names::POLICY_V6)),
        }
    }

    fn remove_global(&mut self, cidr: Cidr) -> Result<(), DataplaneError> {
        let (words, _) = addr_words(cidr.addr);
        let len = u32::from(cidr.prefix_len);
        match cidr.addr {
            IpAddr::V4(_) => self
                .v4
                .remove(&Key::new(len, words[0]))
                .map_err(map_err("delete", map_names::POLICY_V4)),
            IpAddr::V6(_) => self
                .v6
                .remove(&Key::new(len, words))
                .map_err(map_err("delete", map_names::POLICY_V6)),
        }
    }

    /// Step 1 of a change: writes every new or changed global entry. Old entries stay until
    /// [`PolicyMaps::finish`], so a source is never judged by a list half way through.
    pub(super) fn add_global(&mut self, policy: &PolicyConfig) -> Result<(), DataplaneError> {
        for (cidr, value) in global_entries(policy) {
            if self.global.get(&cidr) != Some(&value) {
                self.write_global(cidr, value)?;
                self.global.insert(cidr, value);
            }
        }
        Ok(())
    }

    /// Step 2: the settings word; then the global entries no longer wanted are removed.
    pub(super) fn finish(
        &mut self,
        policy: &PolicyConfig,
        settings: DatapathPolicy,
    ) -> Result<(), DataplaneError> {
        if self.written != Some(settings) {
            self.settings
                .set(0, settings, 0)
                .map_err(map_err("update", map_names::POLICY))?;
            self.written = Some(settings);
        }
        let wanted = global_entries(policy);
        let stale: Vec<Cidr> = self
            .global
            .keys()
            .filter(|c| !wanted.contains_key(c))
            .copied()
            .collect();
        for cidr in stale {
            self.remove_global(cidr)?;
            self.global.remove(&cidr);
        }
        Ok(())
    }

    /// Makes the per-VIP trie hold `ranges` for `vip_id` (every source when `None`): new
    /// entries first, then the ones no longer wanted, so the VIP never refuses a source that
    /// both the old and the new ranges allow.
    pub(super) fn set_vip_ranges(
        &mut self,
        vip_id: u32,
        ranges: Option<&[Cidr]>,
    ) -> Result<(), DataplaneError> {
        let wanted: BTreeSet<Cidr> = match ranges {
            Some(ranges) => ranges.iter().copied().collect(),
            None => BTreeSet::from([ANY_V4]),
        };
        let held = self.vip_ranges.remove(&vip_id).unwrap_or_default();
        for cidr in wanted.difference(&held) {
            self.vip
                .insert(&vip_key(vip_id, cidr), verdict::ALLOW, 0)
                .map_err(map_err("update", map_names::POLICY_VIP))?;
        }
        for cidr in held.difference(&wanted) {
            self.vip
                .remove(&vip_key(vip_id, cidr))
                .map_err(map_err("delete", map_names::POLICY_VIP))?;
        }
        self.vip_ranges.insert(vip_id, wanted);
        Ok(())
    }

    /// Removes a VIP's entries after the VIP itself is gone.
    pub(super) fn clear_vip_ranges(&mut self, vip_id: u32) -> Result<(), DataplaneError> {
        for cidr in self.vip_ranges.remove(&vip_id).unwrap_or_default() {
            self.vip
                .remove(&vip_key(vip_id, &cidr))
                .map_err(map_err("delete", map_names::POLICY_VIP))?;
        }
        Ok(())
    }
}

fn vip_key(vip_id: u32, cidr: &Cidr) -> Key<VipSourceKey> {
    let (words, _) = addr_words(cidr.addr);
    Key::new(
        32 + u32::from(cidr.prefix_len),
        VipSourceKey {
            vip_id,
            addr: words[0],
        },
    )
}
