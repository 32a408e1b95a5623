//! The IPv4 global lists resolved ahead of time into what the datapath reads instead of walking
//! a trie: a bit per /16 that some prefix touches, a 2-bit [`v4_code`] per /24 (none, allow,
//! deny, or mixed), and for each mixed /24 (one with a prefix longer than /24 inside) a 2-bit
//! code per address. A source costs at most three reads, whatever the lists hold, and gets the
//! exact verdict of the most specific matching prefix.

use std::collections::BTreeMap;

use xlb_common::policy::{
    MixedSlash24, POLICY_V4_24_WORDS, POLICY_V4_B16_WORDS, POLICY_V4_MIX_WORDS, code_slot, v4_code,
};

/// Every 2-bit field of a word set to 01.
const LOW_BITS: u64 = 0x5555_5555_5555_5555;

/// The resolved IPv4 lists: the contents of `XLB_POL_V4_B16`, `XLB_POL_V4_24` and
/// `XLB_POL_V4_MIX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V4Verdicts {
    /// A bit per /16 holding a /24 whose code is not `NONE`.
    pub b16: Vec<u64>,
    /// A code per /24.
    pub codes: Vec<u64>,
    /// The tables of the /24s whose code is `MIXED`, by /24 number.
    pub mixed: BTreeMap<u32, MixedSlash24>,
}

impl Default for V4Verdicts {
    fn default() -> Self {
        V4Verdicts {
            b16: vec![0; POLICY_V4_B16_WORDS as usize],
            codes: vec![0; POLICY_V4_24_WORDS as usize],
            mixed: BTreeMap::new(),
        }
    }
}

/// Reads the 2-bit code of entry `index`.
fn get(words: &[u64], index: u32) -> u64 {
    let (word, shift) = code_slot(index);
    (words[word as usize] >> shift) & v4_code::MASK
}

/// Sets the codes of entries `first .. first + count` to `code`, whole words at a time where it
/// can (a /8 is 2^16 /24s).
fn paint(words: &mut [u64], first: u32, count: u32, code: u64) {
    let (mut index, end) = (u64::from(first), u64::from(first) + u64::from(count));
    while index < end {
        let (word, shift) = code_slot(index as u32);
        if shift == 0 && end - index >= 32 {
            words[word as usize] = code * LOW_BITS;
            index += 32;
        } else {
            let w = &mut words[word as usize];
            *w = (*w & !(v4_code::MASK << shift)) | (code << shift);
            index += 1;
        }
    }
}

/// Per 2-bit field: `new` where it is not `NONE`, else `old`.
fn fill_none(new: u64, old: u64) -> u64 {
    let set = (new | (new >> 1)) & LOW_BITS;
    new | (old & !(set | (set << 1)))
}

impl V4Verdicts {
    /// Resolves a list of IPv4 prefixes: (address as a number, prefix length, verdict). The
    /// most specific matching prefix decides; prefixes are distinct.
    pub fn compute(prefixes: impl IntoIterator<Item = (u32, u8, u32)>) -> V4Verdicts {
        let mut prefixes: Vec<(u32, u8, u32)> = prefixes.into_iter().collect();
        prefixes.sort_by_key(|&(addr, len, _)| (len, addr));
        let mut out = V4Verdicts::default();
        // Shortest first: a longer prefix paints over the shorter ones it lies in.
        let mut longer: BTreeMap<u32, Vec<(u32, u8, u32)>> = BTreeMap::new();
        for &(addr, len, verdict) in &prefixes {
            if len <= 24 {
                let count = 1u32 << (24 - len);
                paint(&mut out.codes, addr >> 8, count, u64::from(verdict));
            } else {
                longer
                    .entry(addr >> 8)
                    .or_default()
                    .push((addr, len, verdict));
            }
        }
        for (net, inside) in longer {
            let base = get(&out.codes, net);
            let mut table = [base * LOW_BITS; POLICY_V4_MIX_WORDS];
            for (addr, len, verdict) in inside {
                paint(&mut table, addr & 0xff, 1 << (32 - len), u64::from(verdict));
            }
            let first = table[0] & v4_code::MASK;
            let code = if table.iter().all(|&w| w == first * LOW_BITS) {
                first
            } else {
                out.mixed.insert(net, table);
                v4_code::MIXED
            };
            paint(&mut out.codes, net, 1, code);
        }
        out.mark_b16();
        out
    }

    /// Sets the /16 bits from the /24 codes (a /16's 256 codes are 8 words).
    fn mark_b16(&mut self) {
        self.b16.fill(0);
        for (slash16, words) in self.codes.chunks_exact(8).enumerate() {
            if words.iter().any(|&w| w != 0) {
                self.b16[slash16 >> 6] |= 1 << (slash16 & 63);
            }
        }
    }

    /// The code of /24 number `net`.
    pub fn code_of_net(&self, net: u32) -> u64 {
        get(&self.codes, net)
    }

    /// Sets the code of /24 number `net` (the /16 bits are not touched).
    pub fn set_code_of_net(&mut self, net: u32, code: u64) {
        paint(&mut self.codes, net, 1, code);
    }

    /// The code the datapath reads for an address (a number): `NONE`, `ALLOW` or `DENY`.
    #[cfg(test)]
    pub fn code(&self, addr: u32) -> u64 {
        let slash16 = addr >> 16;
        if self.b16[(slash16 >> 6) as usize] & (1 << (slash16 & 63)) == 0 {
            return v4_code::NONE;
        }
        match get(&self.codes, addr >> 8) {
            v4_code::MIXED => self
                .mixed
                .get(&(addr >> 8))
                .map_or(v4_code::NONE, |table| get(table, addr & 0xff)),
            code => code,
        }
    }

    /// The table of a /24 as it stands (a uniform /24 as a table of its one code).
    fn table(&self, net: u32) -> MixedSlash24 {
        match self.mixed.get(&net) {
            Some(table) => *table,
            None => [get(&self.codes, net) * LOW_BITS; POLICY_V4_MIX_WORDS],
        }
    }

    /// What to write while the allow-list flag changes, before the settings switch: `new`,
    /// except that an address `new` leaves unmatched keeps its `old` code. Under either flag
    /// value, every address then gets its old or its new verdict: an unmatched address means
    /// "not allowed" with the flag and "pass" without it, so it may only be unmatched where it
    /// is unmatched in the list of the flag in force.
    pub fn transition(old: &V4Verdicts, new: &V4Verdicts) -> V4Verdicts {
        let mut out = V4Verdicts {
            b16: vec![0; new.b16.len()],
            codes: new
                .codes
                .iter()
                .zip(&old.codes)
                .map(|(&n, &o)| fill_none(n, o))
                .collect(),
            mixed: BTreeMap::new(),
        };
        for (index, &word) in out.codes.iter().enumerate() {
            let mut mixed = word & (word >> 1) & LOW_BITS;
            while mixed != 0 {
                let net = ((index as u32) << 5) | (mixed.trailing_zeros() / 2);
                mixed &= mixed - 1;
                let table = match new.mixed.get(&net) {
                    Some(n) => {
                        let o = old.table(net);
                        std::array::from_fn(|i| fill_none(n[i], o[i]))
                    }
                    None => old.table(net),
                };
                out.mixed.insert(net, table);
            }
        }
        out.mark_b16();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    /// The reference: the verdict of the longest prefix holding `addr`, found by trying them all.
    fn reference(prefixes: &[(u32, u8, u32)], addr: u32) -> u64 {
        prefixes
            .iter()
            .filter(|&&(net, len, _)| len == 0 || addr >> (32 - len) == net >> (32 - len))
            .max_by_key(|&&(_, len, _)| len)
            .map_or(v4_code::NONE, |&(_, _, verdict)| u64::from(verdict))
    }

    /// Random distinct prefixes of every length, crowded into 10.0.0.0/14 so they nest and
    /// overlap, plus a few short ones across the space.
    fn random_list(rng: &mut Rng, count: usize) -> Vec<(u32, u8, u32)> {
        let mut seen = BTreeMap::new();
        while seen.len() < count {
            let len = [8, 12, 16, 20, 22, 23, 24, 24, 25, 26, 28, 30, 31, 32, 32]
                [rng.u32() as usize % 15];
            let addr = if len < 14 {
                rng.u32()
            } else {
                0x0a00_0000 | (rng.u32() & 0x0003_ffff)
            };
            let addr = addr & (u32::MAX << (32 - len));
            let verdict = 1 + rng.u32() % 2;
            seen.insert((addr, len as u8), verdict);
        }
        seen.into_iter().map(|((a, l), v)| (a, l, v)).collect()
    }

    /// Addresses worth checking: every address of a few /24s the prefixes touch, the first and
    /// last address and neighbours of every prefix, and random ones.
    fn probes(rng: &mut Rng, prefixes: &[(u32, u8, u32)]) -> Vec<u32> {
        let mut out = Vec::new();
        for &(addr, len, _) in prefixes {
            let last = addr | u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            out.extend([addr, last, addr.wrapping_sub(1), last.wrapping_add(1)]);
        }
        for &(addr, _, _) in prefixes.iter().take(20) {
            out.extend((addr & !0xff)..=(addr | 0xff));
        }
        out.extend((0..20_000).map(|_| 0x0a00_0000 | (rng.u32() & 0x0003_ffff)));
        out.extend((0..2_000).map(|_| rng.u32()));
        out
    }

    #[test]
    fn verdicts_match_a_brute_force_reference() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for round in 0..6 {
            let list = random_list(&mut rng, 50 + round * 150);
            let verdicts = V4Verdicts::compute(list.iter().copied());
            for addr in probes(&mut rng, &list) {
                assert_eq!(
                    verdicts.code(addr),
                    reference(&list, addr),
                    "round {round}, {}",
                    std::net::Ipv4Addr::from(addr)
                );
            }
            // A /24 is mixed only when its addresses differ, and has a table exactly then; a /16
            // bit is set exactly when one of its /24 codes is not NONE.
            let nets = list.iter().filter(|p| p.1 >= 20).take(40).map(|p| p.0 >> 8);
            for net in nets.chain((0..40).map(|_| 0x000a_0000 | (rng.u32() & 0x3ff))) {
                let codes: Vec<u64> = (0..256).map(|i| reference(&list, net << 8 | i)).collect();
                let uniform = codes.iter().all(|&c| c == codes[0]);
                let code = get(&verdicts.codes, net);
                assert_eq!(code == v4_code::MIXED, !uniform, "/24 {net:#x}");
                assert_eq!(verdicts.mixed.contains_key(&net), !uniform);
                if uniform {
                    assert_eq!(code, codes[0]);
                }
            }
            let some = (0..200).map(|_| rng.u32() >> 16);
            for slash16 in (0x0a00..0x0a04).chain(some) {
                let bit = verdicts.b16[(slash16 >> 6) as usize] & (1 << (slash16 & 63)) != 0;
                let any = (slash16 << 8..(slash16 + 1) << 8).any(|n| get(&verdicts.codes, n) != 0);
                assert_eq!(bit, any, "/16 {slash16:#x}");
            }
        }
    }

    #[test]
    fn a_slash0_and_slash32s_resolve() {
        let list = [(0, 0, 2), (0x0a00_0001, 32, 1), (0x0a00_0100, 24, 1)];
        let v = V4Verdicts::compute(list);
        assert!(v.b16.iter().all(|&w| w == u64::MAX));
        assert_eq!(v.code(0x0808_0808), v4_code::DENY);
        assert_eq!(v.code(0x0a00_0001), v4_code::ALLOW);
        assert_eq!(v.code(0x0a00_0002), v4_code::DENY);
        assert_eq!(v.code(0x0a00_01ff), v4_code::ALLOW);
        assert_eq!(v.mixed.len(), 1);
        assert_eq!(V4Verdicts::compute([]), V4Verdicts::default());
    }

    /// What the datapath decides for a code under the allow-list flag: 0 pass, 1 denied, 2 not
    /// allowed.
    fn decision(code: u64, allow_list: bool) -> u8 {
        match code {
            v4_code::DENY => 1,
            v4_code::NONE if allow_list => 2,
            _ => 0,
        }
    }

    #[test]
    fn the_transition_gives_old_or_new_verdicts_under_both_flags() {
        let mut rng = Rng(77);
        for round in 0..8 {
            let old_list = random_list(&mut rng, 200);
            let new_list = random_list(&mut rng, 200);
            let (old, new) = (
                V4Verdicts::compute(old_list.iter().copied()),
                V4Verdicts::compute(new_list.iter().copied()),
            );
            let (old_allow, new_allow) = (round % 2 == 0, round % 4 < 2);
            let between = V4Verdicts::transition(&old, &new);
            let mut addrs = probes(&mut rng, &old_list);
            addrs.extend(probes(&mut rng, &new_list));
            for addr in addrs {
                let t = between.code(addr);
                let allowed = [
                    decision(old.code(addr), old_allow),
                    decision(new.code(addr), new_allow),
                ];
                for flag in [old_allow, new_allow] {
                    assert!(
                        allowed.contains(&decision(t, flag)),
                        "round {round}, {}: {t} under {flag} is neither {allowed:?}",
                        std::net::Ipv4Addr::from(addr)
                    );
                }
            }
        }
    }
}
