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
use xlb_common::{
    PolicyConfig as DatapathPolicy, VipSourceKey, map_names,
    policy::{POLICY_V4_B16_WORDS, POLICY_V4_BITS_WORDS, v4_bit},
    policy_flags, verdict,
};

use super::{DataplaneError, map_err};
use crate::config::{Action, Cidr, EventsConfig, PolicyConfig};
use crate::state::addr_words;

/// The policy maps of the loaded program, and what they hold.
pub struct PolicyMaps {
    pub(super) settings: Array<MapData, DatapathPolicy>,
    pub(super) v4: LpmTrie<MapData, u32, u32>,
    pub(super) v6: LpmTrie<MapData, [u32; 4], u32>,
    pub(super) vip: LpmTrie<MapData, VipSourceKey, u32>,
    /// The /16 and /24 bitmaps, and what each holds (the maps start all zero).
    bitmaps: [Bitmap; 2],
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
        b16: Array<MapData, u64>,
        b24: Array<MapData, u64>,
    ) -> Self {
        PolicyMaps {
            settings,
            v4,
            v6,
            vip,
            bitmaps: [
                Bitmap::new(b16, 16, POLICY_V4_B16_WORDS, map_names::POLICY_V4_B16),
                Bitmap::new(b24, 24, POLICY_V4_BITS_WORDS, map_names::POLICY_V4_BITS),
            ],
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

    /// Step 1 of a change: writes every new or changed global entry, and marks their /24s
    /// before the entries exist (a marked /24 only costs a trie walk; an unmarked one with an
    /// entry would skip it). Old entries stay until [`PolicyMaps::finish`], so a source is
    /// never judged by a list half way through.
    pub(super) fn add_global(&mut self, policy: &PolicyConfig) -> Result<(), DataplaneError> {
        let wanted = global_entries(policy);
        for bitmap in &mut self.bitmaps {
            let mut bits = bitmap.written.clone();
            for cidr in wanted.keys() {
                mark(&mut bits, cidr, bitmap.len);
            }
            bitmap.write(bits)?;
        }
        for (cidr, value) in wanted {
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
        // Unmark the networks no entry touches any more, now that their entries are gone.
        for bitmap in &mut self.bitmaps {
            let mut bits = vec![0; bitmap.written.len()];
            for cidr in self.global.keys() {
                mark(&mut bits, cidr, bitmap.len);
            }
            bitmap.write(bits)?;
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
            let words = key.data();
            let mut octets = [0u8; 16];
            for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            self.global
                .insert(cidr(IpAddr::from(octets), key.prefix_len()), value);
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
        for bitmap in &mut self.bitmaps {
            for (index, word) in bitmap.written.iter_mut().enumerate() {
                *word = bitmap
                    .map
                    .get(&(index as u32), 0)
                    .map_err(map_err("lookup", bitmap.name))?;
            }
        }
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
            self.vip
                .remove(&vip_key(vip_id, &cidr))
                .map_err(map_err("delete", map_names::POLICY_VIP))?;
        }
        Ok(())
    }
}

/// One of the IPv4 filter bitmaps: a bit per `/len` network that some global prefix touches.
struct Bitmap {
    map: Array<MapData, u64>,
    len: u32,
    name: &'static str,
    written: Vec<u64>,
}

impl Bitmap {
    fn new(map: Array<MapData, u64>, len: u32, words: u32, name: &'static str) -> Bitmap {
        Bitmap {
            map,
            len,
            name,
            written: vec![0; words as usize],
        }
    }

    /// Writes the words that differ from what the map holds.
    fn write(&mut self, bits: Vec<u64>) -> Result<(), DataplaneError> {
        for (index, (&new, old)) in bits.iter().zip(&self.written).enumerate() {
            if new != *old {
                self.map
                    .set(index as u32, new, 0)
                    .map_err(map_err("update", self.name))?;
            }
        }
        self.written = bits;
        Ok(())
    }
}

/// Sets the bit of every `/len` network an IPv4 prefix touches (its own one for prefixes of
/// `len` bits and longer).
fn mark(bits: &mut [u64], cidr: &Cidr, len: u32) {
    let IpAddr::V4(addr) = cidr.addr else {
        return;
    };
    let shift = 32 - len;
    let first = addr.to_bits() >> shift;
    let count = 1u32 << (len - u32::from(cidr.prefix_len).min(len));
    for network in first..first + count {
        let (word, bit) = v4_bit(network << shift, len);
        bits[word as usize] |= bit;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_cover_exactly_the_touched_slash24s() {
        let mut bits = vec![0u64; POLICY_V4_BITS_WORDS as usize];
        let mut b16 = vec![0u64; POLICY_V4_B16_WORDS as usize];
        for cidr in ["192.0.2.7", "198.51.100.0/23"] {
            mark(&mut bits, &cidr.parse().unwrap(), 24);
            mark(&mut b16, &cidr.parse().unwrap(), 16);
        }
        let count = |bits: &[u64]| bits.iter().map(|w| w.count_ones()).sum::<u32>();
        assert_eq!((count(&bits), count(&b16)), (3, 2));
        let is_set = |bits: &[u64], a: &str, len| {
            let (word, bit) = v4_bit(a.parse::<std::net::Ipv4Addr>().unwrap().to_bits(), len);
            bits[word as usize] & bit != 0
        };
        assert!(is_set(&bits, "192.0.2.200", 24));
        assert!(is_set(&bits, "198.51.101.9", 24));
        assert!(!is_set(&bits, "198.51.102.1", 24));
        assert!(is_set(&b16, "198.51.102.1", 16));
        assert!(!is_set(&b16, "198.52.0.1", 16));
        let mut all = vec![0u64; POLICY_V4_B16_WORDS as usize];
        mark(&mut all, &"0.0.0.0/0".parse().unwrap(), 16);
        assert!(all.iter().all(|&w| w == u64::MAX));
        mark(&mut all, &"2001:db8::/32".parse().unwrap(), 16);
    }
}
