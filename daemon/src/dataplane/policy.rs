//! Writing the policy into the datapath: the settings word, the global CIDR tries, the IPv4
//! lists resolved per /24 ([`V4Verdicts`]) and every VIP's source ranges, each changed by
//! difference so traffic is never judged by a half-written policy (new entries go in before the
//! flags that make them count, flags go off before the entries they guard are removed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use aya::maps::{
    Array, HashMap, MapData,
    lpm_trie::{Key, LpmTrie},
};
use xlb_common::{
    PolicyConfig as DatapathPolicy, VipSourceKey, VipSourceKey6, map_names, policy::MixedSlash24,
    policy_flags, verdict,
};

use super::verdicts::V4Verdicts;
use super::{DataplaneError, map_err};
use crate::config::{Action, Cidr, EventsConfig, IcmpEcho, PolicyConfig};
use crate::state::addr_words;

/// The policy maps of the loaded program, and what they hold.
pub struct PolicyMaps {
    pub(super) settings: Array<MapData, DatapathPolicy>,
    pub(super) v4: LpmTrie<MapData, u32, u32>,
    pub(super) v6: LpmTrie<MapData, [u32; 4], u32>,
    pub(super) vip: LpmTrie<MapData, VipSourceKey, u32>,
    /// Source ranges of IPv6 VIPs.
    pub(super) vip6: LpmTrie<MapData, VipSourceKey6, u32>,
    /// The resolved IPv4 lists, and what they hold.
    resolved: Resolved,
    /// Global entries written: prefix -> verdict.
    global: BTreeMap<Cidr, u32>,
    /// Source-range entries written per VIP id (in `vip` for an IPv4 VIP, `vip6` for an IPv6
    /// one: each entry is of its VIP's family).
    vip_ranges: BTreeMap<u32, BTreeSet<Cidr>>,
    written: Option<DatapathPolicy>,
    /// Whether global entries or resolved lists were written since the last settings word.
    lists_changed: bool,
}

/// Every source: what a VIP without `source_ranges` holds in the per-VIP trie.
const ANY_V4: Cidr = Cidr {
    addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    prefix_len: 0,
};

/// Every IPv6 source: what an IPv6 VIP without `source_ranges` holds in `XLB_POL_VIP6`.
const ANY_V6: Cidr = Cidr {
    addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
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
    set(
        policy.icmp_echo == IcmpEcho::Pass,
        policy_flags::ICMP_ECHO_PASS,
    );
    set(
        policy.icmp_echo == IcmpEcho::Drop,
        policy_flags::ICMP_ECHO_DROP,
    );
    set(
        policy.icmp_other == Action::Drop,
        policy_flags::ICMP_OTHER_DROP,
    );
    DatapathPolicy {
        flags,
        source_rate: policy.rate_limit.map_or(0, |r| r.per_second),
        source_burst: policy.rate_limit.map_or(0, |r| r.burst),
        flow_insert_rate: policy.flow_insert_rate.unwrap_or(0),
        drop_events_rate: events.drops_per_second,
        forward_sample: events.forward_sample,
        // Set by `PolicyMaps::finish`, which knows whether the lists changed.
        lists_gen: 0,
        _pad: 0,
    }
}

/// The per-VIP source-range tries, one per family, as [`PolicyMaps::new`] takes them.
pub(super) struct VipRangeTries {
    /// `XLB_POL_VIP`: ranges of IPv4 VIPs.
    pub(super) v4: LpmTrie<MapData, VipSourceKey, u32>,
    /// `XLB_POL_VIP6`: ranges of IPv6 VIPs.
    pub(super) v6: LpmTrie<MapData, VipSourceKey6, u32>,
}

/// The flags that say which global lists are in force.
const LIST_FLAGS: u32 = policy_flags::LISTS_V4
    | policy_flags::ALLOW_V4
    | policy_flags::LISTS_V6
    | policy_flags::ALLOW_V6;

impl PolicyMaps {
    /// Wraps the maps of a freshly loaded program (all empty).
    pub(super) fn new(
        settings: Array<MapData, DatapathPolicy>,
        v4: LpmTrie<MapData, u32, u32>,
        v6: LpmTrie<MapData, [u32; 4], u32>,
        vip: VipRangeTries,
        b16: Array<MapData, u64>,
        codes: Array<MapData, u64>,
        mixed: HashMap<MapData, u32, MixedSlash24>,
    ) -> Self {
        PolicyMaps {
            settings,
            v4,
            v6,
            vip: vip.v4,
            vip6: vip.v6,
            resolved: Resolved {
                b16,
                codes,
                mixed,
                written: V4Verdicts::default(),
                list: Some(Vec::new()),
                pending: None,
            },
            global: BTreeMap::new(),
            vip_ranges: BTreeMap::new(),
            written: None,
            lists_changed: false,
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

    /// Step 1 of a change: writes every new or changed global entry, and the resolved IPv4
    /// lists. Old entries stay until [`PolicyMaps::finish`], so a source is never judged by a
    /// list half way through; while the allow-list flag is about to change, the resolved lists
    /// written here are [`V4Verdicts::transition`], right under both the old and the new flag.
    pub(super) fn add_global(&mut self, policy: &PolicyConfig) -> Result<(), DataplaneError> {
        let wanted = global_entries(policy);
        let list = v4_list(&wanted);
        if self.resolved.list.as_ref() != Some(&list) {
            let new = V4Verdicts::compute(list.iter().copied());
            let old_allow = self
                .written
                .is_some_and(|s| s.flags & policy_flags::ALLOW_V4 != 0);
            let new_allow = policy.allow.iter().any(|c| c.addr.is_ipv4());
            let now = if old_allow == new_allow {
                new.clone()
            } else {
                V4Verdicts::transition(&self.resolved.written, &new)
            };
            self.resolved.list = None;
            self.lists_changed = true;
            self.resolved.write(&now)?;
            self.resolved.pending = Some((list, new));
        }
        for (cidr, value) in wanted {
            if self.global.get(&cidr) != Some(&value) {
                self.lists_changed = true;
                self.write_global(cidr, value)?;
                self.global.insert(cidr, value);
            }
        }
        Ok(())
    }

    /// Step 2: the settings word; then the global entries no longer wanted are removed.
    ///
    /// The settings word carries the lists' generation: it moves on whenever the lists or
    /// their flags changed, which sends every established flow through the lists once more
    /// (flows skip them while their entry holds the current generation), and once more after
    /// the last entry of the change is written, so no flow keeps a verdict taken half way.
    pub(super) fn finish(
        &mut self,
        policy: &PolicyConfig,
        mut settings: DatapathPolicy,
    ) -> Result<(), DataplaneError> {
        let generation = self.written.map_or(0, |w| w.lists_gen);
        let flags_changed =
            self.written.map(|w| w.flags & LIST_FLAGS) != Some(settings.flags & LIST_FLAGS);
        settings.lists_gen = if self.lists_changed || flags_changed {
            generation.wrapping_add(1)
        } else {
            generation
        };
        self.lists_changed = false;
        self.write_settings(settings)?;
        let wanted = global_entries(policy);
        let stale: Vec<Cidr> = self
            .global
            .keys()
            .filter(|c| !wanted.contains_key(c))
            .copied()
            .collect();
        let mut written_after = !stale.is_empty();
        for cidr in stale {
            self.remove_global(cidr)?;
            self.global.remove(&cidr);
        }
        // The new lists resolved, now that the flags are the new ones.
        if let Some((list, new)) = self.resolved.pending.take() {
            self.resolved.write(&new)?;
            self.resolved.list = Some(list);
            written_after = true;
        }
        if written_after {
            settings.lists_gen = settings.lists_gen.wrapping_add(1);
            self.write_settings(settings)?;
        }
        Ok(())
    }

    /// Writes the settings word unless it already holds `settings`.
    fn write_settings(&mut self, settings: DatapathPolicy) -> Result<(), DataplaneError> {
        if self.written != Some(settings) {
            self.settings
                .set(0, settings, 0)
                .map_err(map_err("update", map_names::POLICY))?;
            self.written = Some(settings);
        }
        Ok(())
    }

    /// Makes the per-VIP trie of the VIP's family (`v6`) hold `ranges` for `vip_id` (every
    /// source when `None`): new entries first, then the ones no longer wanted, so the VIP never
    /// refuses a source that both the old and the new ranges allow. The config gives a VIP
    /// ranges of its own family only.
    pub(super) fn set_vip_ranges(
        &mut self,
        vip_id: u32,
        v6: bool,
        ranges: Option<&[Cidr]>,
    ) -> Result<(), DataplaneError> {
        let wanted: BTreeSet<Cidr> = match ranges {
            Some(ranges) => ranges.iter().copied().collect(),
            None if v6 => BTreeSet::from([ANY_V6]),
            None => BTreeSet::from([ANY_V4]),
        };
        let held = self.vip_ranges.remove(&vip_id).unwrap_or_default();
        for cidr in wanted.difference(&held) {
            self.insert_vip_range(vip_id, cidr)?;
        }
        for cidr in held.difference(&wanted) {
            self.remove_vip_range(vip_id, cidr)?;
        }
        self.vip_ranges.insert(vip_id, wanted);
        Ok(())
    }

    /// Writes one source range of a VIP, in the trie of the range's family.
    fn insert_vip_range(&mut self, vip_id: u32, cidr: &Cidr) -> Result<(), DataplaneError> {
        match vip_key(vip_id, cidr) {
            VipRangeKey::V4(key) => self
                .vip
                .insert(&key, verdict::ALLOW, 0)
                .map_err(map_err("update", map_names::POLICY_VIP)),
            VipRangeKey::V6(key) => self
                .vip6
                .insert(&key, verdict::ALLOW, 0)
                .map_err(map_err("update", map_names::POLICY_VIP6)),
        }
    }

    /// Removes one source range of a VIP from the trie of the range's family.
    fn remove_vip_range(&mut self, vip_id: u32, cidr: &Cidr) -> Result<(), DataplaneError> {
        match vip_key(vip_id, cidr) {
            VipRangeKey::V4(key) => self
                .vip
                .remove(&key)
                .map_err(map_err("delete", map_names::POLICY_VIP)),
            VipRangeKey::V6(key) => self
                .vip6
                .remove(&key)
                .map_err(map_err("delete", map_names::POLICY_VIP6)),
        }
    }

    /// Takes what pinned maps already hold as written, so that the next apply changes them by
    /// difference (a daemon adopting a running datapath must neither duplicate nor forget the
    /// previous daemon's entries, and never empty a list that is in force).
    pub(super) fn adopt_live(&mut self) -> Result<(), DataplaneError> {
        let cidr = |addr: IpAddr, len: u32| Cidr {
            addr,
            prefix_len: len as u8,
        };
        for item in self.v4.iter() {
            let (key, value) = item.map_err(map_err("iterate", map_names::POLICY_V4))?;
            let addr = IpAddr::from(key.data().to_ne_bytes());
            self.global.insert(cidr(addr, key.prefix_len()), value);
        }
        for item in self.v6.iter() {
            let (key, value) = item.map_err(map_err("iterate", map_names::POLICY_V6))?;
            self.global
                .insert(cidr(v6_addr(key.data()), key.prefix_len()), value);
        }
        for item in self.vip.keys() {
            let key = item.map_err(map_err("iterate", map_names::POLICY_VIP))?;
            let data = key.data();
            let addr = IpAddr::from(data.addr.to_ne_bytes());
            self.vip_ranges
                .entry(data.vip_id)
                .or_default()
                .insert(cidr(addr, key.prefix_len().saturating_sub(32)));
        }
        for item in self.vip6.keys() {
            let key = item.map_err(map_err("iterate", map_names::POLICY_VIP6))?;
            let data = key.data();
            self.vip_ranges.entry(data.vip_id).or_default().insert(cidr(
                v6_addr(data.addr),
                key.prefix_len().saturating_sub(32),
            ));
        }
        self.resolved.adopt_live()?;
        self.written = Some(
            self.settings
                .get(&0, 0)
                .map_err(map_err("lookup", map_names::POLICY))?,
        );
        Ok(())
    }

    /// The VIP ids that have source-range entries.
    pub(super) fn vips_with_ranges(&self) -> Vec<u32> {
        self.vip_ranges.keys().copied().collect()
    }

    /// Removes a VIP's entries after the VIP itself is gone.
    pub(super) fn clear_vip_ranges(&mut self, vip_id: u32) -> Result<(), DataplaneError> {
        for cidr in self.vip_ranges.remove(&vip_id).unwrap_or_default() {
            self.remove_vip_range(vip_id, &cidr)?;
        }
        Ok(())
    }
}

/// IPv4 prefixes: (address as a number, length, verdict).
type V4List = Vec<(u32, u8, u32)>;

/// The IPv4 prefixes of the global entries.
fn v4_list(entries: &BTreeMap<Cidr, u32>) -> V4List {
    entries
        .iter()
        .filter_map(|(cidr, &value)| match cidr.addr {
            IpAddr::V4(addr) => Some((addr.to_bits(), cidr.prefix_len, value)),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// The maps of the resolved IPv4 lists (`XLB_POL_V4_B16`, `XLB_POL_V4_24`, `XLB_POL_V4_MIX`)
/// and what they hold.
struct Resolved {
    b16: Array<MapData, u64>,
    codes: Array<MapData, u64>,
    mixed: HashMap<MapData, u32, MixedSlash24>,
    /// What the maps hold, kept up to date entry by entry.
    written: V4Verdicts,
    /// The list `written` resolves, once written whole; `None` while a change is under way or
    /// after an adoption (the next change then compares with what the maps hold).
    list: Option<V4List>,
    /// The new lists resolved, to write after the settings switch.
    pending: Option<(V4List, V4Verdicts)>,
}

impl Resolved {
    /// Makes the maps hold `target`, writing only what differs, in an order that gives every
    /// source its verdict in `written` or in `target` at any moment: a mixed /24's table before
    /// the code that sends readers to it, a /16 bit before the codes under it; stale tables and
    /// /16 bits after.
    fn write(&mut self, target: &V4Verdicts) -> Result<(), DataplaneError> {
        let written = &mut self.written;
        for (&net, table) in &target.mixed {
            if written.mixed.get(&net) != Some(table) {
                self.mixed
                    .insert(net, table, 0)
                    .map_err(map_err("update", map_names::POLICY_V4_MIX))?;
                written.mixed.insert(net, *table);
            }
        }
        let write_words = |map: &mut Array<MapData, u64>,
                           held: &mut [u64],
                           wanted: &mut dyn Iterator<Item = u64>,
                           name| {
            for (index, (old, new)) in held.iter_mut().zip(wanted).enumerate() {
                if *old != new {
                    map.set(index as u32, new, 0)
                        .map_err(map_err("update", name))?;
                    *old = new;
                }
            }
            Ok::<(), DataplaneError>(())
        };
        let union: Vec<u64> = written
            .b16
            .iter()
            .zip(&target.b16)
            .map(|(a, b)| a | b)
            .collect();
        let b16 = map_names::POLICY_V4_B16;
        write_words(&mut self.b16, &mut written.b16, &mut union.into_iter(), b16)?;
        write_words(
            &mut self.codes,
            &mut written.codes,
            &mut target.codes.iter().copied(),
            map_names::POLICY_V4_24,
        )?;
        let stale: Vec<u32> = written
            .mixed
            .keys()
            .filter(|net| !target.mixed.contains_key(net))
            .copied()
            .collect();
        for net in stale {
            self.mixed
                .remove(&net)
                .map_err(map_err("delete", map_names::POLICY_V4_MIX))?;
            written.mixed.remove(&net);
        }
        write_words(
            &mut self.b16,
            &mut written.b16,
            &mut target.b16.iter().copied(),
            b16,
        )
    }

    /// Takes what the pinned maps hold as written.
    fn adopt_live(&mut self) -> Result<(), DataplaneError> {
        let read = |map: &Array<MapData, u64>, words: &mut [u64], name| {
            for (index, word) in words.iter_mut().enumerate() {
                *word = map
                    .get(&(index as u32), 0)
                    .map_err(map_err("lookup", name))?;
            }
            Ok::<(), DataplaneError>(())
        };
        read(&self.b16, &mut self.written.b16, map_names::POLICY_V4_B16)?;
        read(
            &self.codes,
            &mut self.written.codes,
            map_names::POLICY_V4_24,
        )?;
        self.written.mixed.clear();
        for item in self.mixed.iter() {
            let (net, table) = item.map_err(map_err("iterate", map_names::POLICY_V4_MIX))?;
            self.written.mixed.insert(net, table);
        }
        self.list = None;
        Ok(())
    }
}

/// The key of a VIP's source range, in the trie of the range's family.
enum VipRangeKey {
    V4(Key<VipSourceKey>),
    V6(Key<VipSourceKey6>),
}

fn vip_key(vip_id: u32, cidr: &Cidr) -> VipRangeKey {
    let (words, _) = addr_words(cidr.addr);
    let len = 32 + u32::from(cidr.prefix_len);
    match cidr.addr {
        IpAddr::V4(_) => VipRangeKey::V4(Key::new(
            len,
            VipSourceKey {
                vip_id,
                addr: words[0],
            },
        )),
        IpAddr::V6(_) => VipRangeKey::V6(Key::new(
            len,
            VipSourceKey6 {
                vip_id,
                addr: words,
            },
        )),
    }
}

/// An IPv6 address from its words as a key holds them (network byte order in memory).
fn v6_addr(words: [u32; 4]) -> IpAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    IpAddr::from(octets)
}
