//! Writing the policy into the datapath: the settings word, the global CIDR tries, the IPv4
//! lists resolved per /24 ([`V4Verdicts`]) and every VIP's source ranges, each changed by
//! difference so traffic is never judged by a half-written policy (new entries go in before the
//! flags that make them count, flags go off before the entries they guard are removed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use aya::maps::{
    Array, MapData,
    lpm_trie::{Key, LpmTrie},
};
use xlb_common::{
    PolicyConfig as DatapathPolicy, VipSourceKey, VipSourceKey6, map_names,
    policy::{MixedSlash24, POLICY_V4_24_WORDS, entry_slot, v4_code, v4_entry},
    policy_flags, verdict,
};

use super::slots::Mapped;
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
        icmp_rate: policy.icmp_rate_limit,
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
        resolved: Resolved,
    ) -> Self {
        PolicyMaps {
            settings,
            v4,
            v6,
            vip: vip.v4,
            vip6: vip.v6,
            resolved,
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
            self.resolved.begin_change(&now, &new)?;
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
///
/// A mixed /24's table lives at an index of `XLB_POL_V4_MIX` that its /24's entry names. A
/// table is never rewritten in place: a changed or new table goes to a free index before the
/// entry that names it is written, and the index a change frees (the old table) becomes free
/// only at the next change. A reader that read the old entry a moment ago therefore still finds
/// the old table there: an XDP program run lasts microseconds, and a change is itself many
/// syscalls plus the settings word, and the next one comes after it.
pub(super) struct Resolved {
    b16: Array<MapData, u64>,
    entries: Mapped<u64>,
    tables: Mapped<MixedSlash24>,
    /// What the maps hold, kept up to date entry by entry.
    written: V4Verdicts,
    /// Where the tables of `written` are, and which indices are free.
    indices: TableIndices,
    /// The list `written` resolves, once written whole; `None` while a change is under way or
    /// after an adoption (the next change then compares with what the maps hold).
    list: Option<V4List>,
    /// The new lists resolved, to write after the settings switch.
    pending: Option<(V4List, V4Verdicts)>,
}

/// Tables `to` holds that `from` does not hold for the same /24: each needs a fresh index.
fn tables_needed(from: &V4Verdicts, to: &V4Verdicts) -> usize {
    to.mixed
        .iter()
        .filter(|&(net, table)| from.mixed.get(net) != Some(table))
        .count()
}

/// The error of a change that needs more fresh table indices than are free.
fn out_of_tables(needed: usize, available: usize) -> DataplaneError {
    DataplaneError::Capacity {
        what: "mixed IPv4 /24 tables (XLB_POL_V4_MIX, at most min(3 x limits.policy_prefixes, \
               65533); each /24 holding a prefix longer than /24 needs one, and a change \
               holds the old ones and the new ones)",
        needed: needed as u64,
        available: available as u64,
        limit: "policy_prefixes",
    }
}

/// The indices of `XLB_POL_V4_MIX`: which /24's table is where, and which are free. A changed
/// or new table always gets a fresh index (a table is never rewritten in place), and an index
/// freed by a change is handed out again no earlier than the next change
/// ([`TableIndices::begin_change`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TableIndices {
    /// The table index of each mixed /24 written.
    of: BTreeMap<u32, u32>,
    /// Free for this change (taken from the end, lowest first).
    free: Vec<u32>,
    /// Freed during this change: free from the next one on.
    freed: Vec<u32>,
}

impl TableIndices {
    /// All of `capacity` indices free.
    fn new(capacity: u32) -> TableIndices {
        TableIndices::adopted(capacity, BTreeMap::new())
    }

    /// The indices as found in pinned maps: `of` in use, every other one free.
    fn adopted(capacity: u32, of: BTreeMap<u32, u32>) -> TableIndices {
        let used: BTreeSet<u32> = of.values().copied().collect();
        TableIndices {
            free: (0..capacity).rev().filter(|i| !used.contains(i)).collect(),
            of,
            freed: Vec::new(),
        }
    }

    /// A new change begins: what the previous one freed may be handed out again.
    fn begin_change(&mut self) {
        self.free.append(&mut self.freed);
    }

    /// Moves from the tables of `written` to those of `target`: a fresh index for every table
    /// of `target` that `written` does not hold for the same /24, returned as (/24, index) to
    /// be written before any entry names it; the indices of replaced and removed tables are
    /// freed for the next change. When too few indices are free nothing changes.
    fn assign(
        &mut self,
        written: &V4Verdicts,
        target: &V4Verdicts,
    ) -> Result<Vec<(u32, u32)>, DataplaneError> {
        let needed = tables_needed(written, target);
        if needed > self.free.len() {
            return Err(out_of_tables(needed, self.free.len()));
        }
        let mut fresh = Vec::with_capacity(needed);
        for (&net, table) in &target.mixed {
            if written.mixed.get(&net) != Some(table) {
                let at = self.free.pop().expect("counted above");
                fresh.push((net, at));
                self.freed.extend(self.of.insert(net, at));
            }
        }
        for net in written.mixed.keys() {
            if !target.mixed.contains_key(net) {
                self.freed.extend(self.of.remove(net));
            }
        }
        Ok(fresh)
    }

    /// The 16-bit entry of /24 `net` in lists whose tables this holds.
    fn entry(&self, lists: &V4Verdicts, net: u32) -> u64 {
        match lists.code_of_net(net) {
            v4_code::MIXED => u64::from(v4_entry::FIRST_TABLE + self.of[&net]),
            code => code,
        }
    }
}

impl Resolved {
    /// Wraps the maps (mapped) of a freshly loaded program, or of pinned ones before
    /// [`Resolved::adopt_live`].
    pub(super) fn new(
        b16: Array<MapData, u64>,
        entries: MapData,
        tables: MapData,
        capacity: u32,
    ) -> Result<Resolved, DataplaneError> {
        Ok(Resolved {
            b16,
            entries: Mapped::new(entries, map_names::POLICY_V4_24, POLICY_V4_24_WORDS)?,
            tables: Mapped::new(tables, map_names::POLICY_V4_MIX, capacity)?,
            written: V4Verdicts::default(),
            indices: TableIndices::new(capacity),
            list: Some(Vec::new()),
            pending: None,
        })
    }

    /// Starts a change: the indices the previous change freed become free, and the change
    /// (`now`, then `then` if it differs: the two steps of a change of the allow-list flag)
    /// must find enough of them, or nothing is written and the old lists keep serving.
    fn begin_change(&mut self, now: &V4Verdicts, then: &V4Verdicts) -> Result<(), DataplaneError> {
        self.indices.begin_change();
        let mut needed = tables_needed(&self.written, now);
        if then != now {
            needed += tables_needed(now, then);
        }
        let available = self.indices.free.len();
        if needed > available {
            return Err(out_of_tables(needed, available));
        }
        Ok(())
    }

    /// Makes the maps hold `target`, writing only what differs, in an order that gives every
    /// source its verdict in `written` or in `target` at any moment: new tables at fresh
    /// indices before the entries that name them (release stores), a /16 bit before the
    /// entries under it; stale /16 bits after; replaced tables' indices free at the next change.
    fn write(&mut self, target: &V4Verdicts) -> Result<(), DataplaneError> {
        let fresh = self.indices.assign(&self.written, target)?;
        let tables = self.tables.as_mut_slice();
        for &(net, at) in &fresh {
            tables[at as usize] = target.mixed[&net];
        }
        let written = &mut self.written;
        let union: Vec<u64> = written
            .b16
            .iter()
            .zip(&target.b16)
            .map(|(a, b)| a | b)
            .collect();
        write_words(&mut self.b16, &mut written.b16, &union)?;
        // The entries that change: those of the /24s whose code or table changed. A word of
        // codes covers 32 /24s, eight words of entries.
        let mut dirty: BTreeSet<usize> = fresh.iter().map(|&(net, _)| net as usize >> 5).collect();
        dirty.extend(
            (0..target.codes.len()).filter(|&word| written.codes[word] != target.codes[word]),
        );
        for word in dirty {
            for part in 0..8 {
                let first = ((word << 5) | (part << 2)) as u32;
                let value = (0..4).fold(0, |acc, k| {
                    acc | self.indices.entry(target, first + k) << (16 * k)
                });
                let at = entry_slot(first).0 as usize;
                if self.entries.as_slice()[at] != value {
                    self.entries.publish(at, value);
                }
            }
            written.codes[word] = target.codes[word];
        }
        written.mixed.clone_from(&target.mixed);
        write_words(&mut self.b16, &mut written.b16, &target.b16)
    }

    /// Takes what the pinned maps hold as written: the /24 entries and tables are read through
    /// the mappings (32 MiB, mostly zero words skipped), the /16 bitmap by syscalls (1,024
    /// words). An entry naming an index past the tables is refused.
    fn adopt_live(&mut self) -> Result<(), DataplaneError> {
        let started = std::time::Instant::now();
        for (index, word) in self.written.b16.iter_mut().enumerate() {
            *word = self
                .b16
                .get(&(index as u32), 0)
                .map_err(map_err("lookup", map_names::POLICY_V4_B16))?;
        }
        let mut written = V4Verdicts {
            b16: std::mem::take(&mut self.written.b16),
            ..V4Verdicts::default()
        };
        let tables = self.tables.as_slice();
        let mut index = BTreeMap::new();
        for (at, &word) in self.entries.as_slice().iter().enumerate() {
            if word == 0 {
                continue;
            }
            for k in 0..4 {
                let net = (at << 2 | k) as u32;
                let entry = ((word >> (16 * k)) & v4_entry::MASK) as u32;
                let code =
                    match entry.checked_sub(v4_entry::FIRST_TABLE) {
                        None => u64::from(entry),
                        Some(at) => {
                            let table = tables.get(at as usize).ok_or(DataplaneError::Inconsistent {
                            map: map_names::POLICY_V4_24,
                            what: format!(
                                "an entry naming table {at} of {} (a daemon with other limits)",
                                tables.len()
                            ),
                        })?;
                            index.insert(net, at);
                            written.mixed.insert(net, *table);
                            v4_code::MIXED
                        }
                    };
                written.set_code_of_net(net, code);
            }
        }
        let mixed = index.len();
        self.indices = TableIndices::adopted(tables.len() as u32, index);
        self.written = written;
        self.list = None;
        tracing::debug!(
            mixed,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "adopted the resolved IPv4 lists"
        );
        Ok(())
    }
}

/// Writes the words of `XLB_POL_V4_B16` that differ from `held`, one syscall each.
fn write_words(
    map: &mut Array<MapData, u64>,
    held: &mut [u64],
    wanted: &[u64],
) -> Result<(), DataplaneError> {
    for (index, (old, &new)) in held.iter_mut().zip(wanted).enumerate() {
        if *old != new {
            map.set(index as u32, new, 0)
                .map_err(map_err("update", map_names::POLICY_V4_B16))?;
            *old = new;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    /// Lists of /32s (allow or deny) in random /24s of 10.0.0.0/20 (16 /24s), so that changes
    /// keep some mixed /24s, change some tables, and add and remove others.
    fn random_lists(rng: &mut Rng) -> V4Verdicts {
        let count = 1 + rng.u32() % 12;
        let prefixes: BTreeMap<u32, u32> = (0..count)
            .map(|_| (0x0a00_0000 | (rng.u32() & 0x0fff), 1 + rng.u32() % 2))
            .collect();
        V4Verdicts::compute(prefixes.into_iter().map(|(a, v)| (a, 32, v)))
    }

    /// Every mixed /24 has an index of its own, and free, freed and used indices are disjoint
    /// and together all of them.
    fn check_whole(indices: &TableIndices, lists: &V4Verdicts, capacity: u32) {
        let nets: Vec<u32> = indices.of.keys().copied().collect();
        let mixed: Vec<u32> = lists.mixed.keys().copied().collect();
        assert_eq!(nets, mixed);
        let mut all: Vec<u32> = indices.of.values().copied().collect();
        all.extend(&indices.free);
        all.extend(&indices.freed);
        all.sort_unstable();
        assert_eq!(all, (0..capacity).collect::<Vec<_>>());
    }

    #[test]
    fn a_freed_table_index_is_reused_no_earlier_than_the_next_change() {
        let mut rng = Rng(0x5eed);
        let capacity = 64;
        let mut indices = TableIndices::new(capacity);
        let mut written = V4Verdicts::default();
        for change in 0..80 {
            indices.begin_change();
            // One or two writes per change (the second as for a change of the allow-list flag).
            let mut freed_in_change: BTreeSet<u32> = BTreeSet::new();
            for _ in 0..1 + change % 2 {
                let target = random_lists(&mut rng);
                let in_use: BTreeSet<u32> = indices.of.values().copied().collect();
                let fresh = indices.assign(&written, &target).expect("capacity");
                for &(net, at) in &fresh {
                    // A fresh table never lands where a reader may still look: not on a table
                    // in use, nor on one freed earlier in this change.
                    assert!(!in_use.contains(&at), "change {change}: {at} in use");
                    assert!(
                        !freed_in_change.contains(&at),
                        "change {change}: {at} reused"
                    );
                    assert_eq!(indices.of[&net], at);
                }
                // Unchanged tables keep their index; changed ones got a fresh one.
                for (net, table) in &target.mixed {
                    let moved = fresh.iter().any(|&(n, _)| n == *net);
                    assert_eq!(moved, written.mixed.get(net) != Some(table));
                }
                freed_in_change.extend(&indices.freed);
                check_whole(&indices, &target, capacity);
                written = target;
            }
        }
    }

    #[test]
    fn too_few_table_indices_change_nothing() {
        let lists = |base: u32, count: u32| {
            V4Verdicts::compute((0..count).map(|i| (base + (i << 8) + 1, 32, verdict::DENY)))
        };
        let mut indices = TableIndices::new(5);
        let first = lists(0x0a00_0000, 3);
        assert_eq!(
            indices
                .assign(&V4Verdicts::default(), &first)
                .unwrap()
                .len(),
            3
        );
        indices.begin_change();
        // Three other /24s: only two indices are free (the first three are still in use).
        let before = indices.clone();
        let error = indices.assign(&first, &lists(0x0b00_0000, 3)).unwrap_err();
        assert!(
            matches!(
                error,
                DataplaneError::Capacity {
                    needed: 3,
                    available: 2,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(indices, before);
        // Two fit; the three freed become free at the next change, and then three more fit.
        let second = lists(0x0b00_0000, 2);
        indices.assign(&first, &second).unwrap();
        assert!(indices.free.is_empty());
        indices.begin_change();
        indices.assign(&second, &lists(0x0c00_0000, 3)).unwrap();
        check_whole(&indices, &lists(0x0c00_0000, 3), 5);
    }

    #[test]
    fn the_table_capacity_is_three_lists_and_fits_a_16_bit_entry() {
        assert_eq!(super::super::mixed_tables(1000), 3000);
        assert_eq!(super::super::mixed_tables(65_536), 65_533);
        assert_eq!(
            u32::from(u16::MAX),
            v4_entry::FIRST_TABLE + super::super::mixed_tables(u32::MAX) - 1
        );
    }
}
