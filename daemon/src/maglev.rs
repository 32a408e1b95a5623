//! Maglev consistent hashing: which backend owns each slot of a service's lookup table.
//!
//! The XDP program sends a flow to `table[flow_hash % M]`; this module builds that table. Three
//! properties matter, and each one shaped the code:
//!
//! - **Determinism.** Every node of a tier must build the same table from the same backend set,
//!   whatever its version, machine or start order, or a flow that ECMP moves from one node to
//!   another lands on a different backend. So a backend's preference list comes from xxHash64
//!   with fixed seeds, written out here (`DefaultHasher` promises no stable algorithm and
//!   `RandomState` is random on purpose), and the backends are sorted by key before the build
//!   so the order the caller lists them in changes nothing.
//! - **Little disruption.** Adding or removing one of N backends should move about 1/N of the
//!   slots, not reshuffle the table, so flows that have no flow-table entry (after a failover,
//!   or on another node) mostly keep their backend. Maglev (Eisenbud et al., NSDI'16) gets
//!   close: each backend walks its own pseudo-random permutation of the slots, and the backends
//!   take turns claiming the next free slot of their permutation, so a slot mostly goes to a
//!   backend that prefers it, whoever else is in the set.
//! - **Weights.** A backend's share of slots is its share of new flows. Each backend's slot
//!   count is fixed before the build by largest-remainder apportionment of M by weight, so it is
//!   within one slot of its exact share M·w/W. Turns come in proportion to weight, as in
//!   Envoy's weighted Maglev: a backend of weight w takes its k-th turn at time k·W/w, so every
//!   backend claims its slots spread over the whole build, near the head of its permutation,
//!   which is what keeps disruption low (handing out the counts round-robin instead would leave
//!   heavy backends the leftovers at the end). With equal weights this is exactly classic
//!   Maglev round robin, and the counts are what plain Maglev gives.
//!
//! Changing the hash, the seeds or the turn order moves flows on every node that upgrades, so
//! the unit tests pin a fingerprint of a known table.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Default table size, the one the Maglev paper uses: prime, and 100 slots per backend for up to
/// 655 backends, which keeps each one's share of flows within 1% of its weight share.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Seed of the hash that picks where a backend's permutation starts ("xlb_offs").
const OFFSET_SEED: u64 = 0x786c_625f_6f66_6673;
/// Seed of the hash that picks a backend's permutation step ("xlb_skip").
const SKIP_SEED: u64 = 0x786c_625f_736b_6970;

/// Marks a slot nobody has claimed yet; never a valid index because indices are < `u32::MAX`.
const EMPTY: u32 = u32::MAX;

/// One backend as the table builder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// Stable identity bytes (e.g. the backend's address as text, "10.0.0.21"); the hash of this
    /// decides the backend's preference list, so the same backend gets the same slots everywhere.
    pub key: &'a [u8],
    /// Relative weight; 0 = no slots (drained).
    pub weight: u32,
}

/// Why a Maglev table cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size is not prime, so some backends' permutations would not visit every slot.
    #[error("Maglev table size {size} is not prime (the default, {DEFAULT_TABLE_SIZE}, is)")]
    NotPrime {
        /// The table size asked for.
        size: u32,
    },
    /// More backends have a weight above zero than the table has slots.
    #[error(
        "Maglev table size {size} is smaller than the {backends} backends with weight > 0; \
         use a prime of at least 100 slots per backend"
    )]
    TooSmall {
        /// The table size asked for.
        size: u32,
        /// How many backends have a weight above zero.
        backends: usize,
    },
    /// No backend has a weight above zero, so there is nobody to send traffic to.
    #[error("no backend has a weight above zero")]
    NoBackends,
    /// Two backends have the same key, so they would have the same preference list.
    #[error("backends {first} and {second} have the same key {key:?}")]
    DuplicateKey {
        /// Index of the first backend with this key.
        first: usize,
        /// Index of the second backend with this key.
        second: usize,
        /// The key, as text (invalid UTF-8 replaced).
        key: String,
    },
    /// More backends than a table entry (a `u32` index) can address.
    #[error("{backends} backends are more than a Maglev table entry can address")]
    TooManyBackends {
        /// How many backends were given.
        backends: usize,
    },
}

/// Builds a table of `table_size` slots; each slot holds an index into `backends`.
///
/// Backends with weight 0 get no slot; every other backend gets at least one, and otherwise its
/// exact share `table_size * weight / total_weight` rounded up or down. (The one exception: when
/// backends whose share is below one slot outnumber the slots that rounding leaves over, each
/// still gets one, taken from the backends most above their share.) Which backend owns a slot
/// depends only on the set of (key, weight) pairs, not on their order in `backends`.
pub fn build_table(
    backends: &[MaglevBackend<'_>],
    table_size: u32,
) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(table_size) {
        return Err(MaglevError::NotPrime { size: table_size });
    }
    if u32::try_from(backends.len()).is_err() {
        return Err(MaglevError::TooManyBackends {
            backends: backends.len(),
        });
    }

    // Key order, not the caller's order, decides who claims first in each round. A stable sort
    // keeps equal keys in index order, so a duplicate is reported by the first two indices that
    // share the key.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by(|&a, &b| backends[a].key.cmp(backends[b].key));
    if let Some(pair) = order
        .windows(2)
        .find(|pair| backends[pair[0]].key == backends[pair[1]].key)
    {
        return Err(MaglevError::DuplicateKey {
            first: pair[0],
            second: pair[1],
            key: String::from_utf8_lossy(backends[pair[0]].key).into_owned(),
        });
    }
    order.retain(|&index| backends[index].weight > 0);
    if order.is_empty() {
        return Err(MaglevError::NoBackends);
    }
    if order.len() > table_size as usize {
        return Err(MaglevError::TooSmall {
            size: table_size,
            backends: order.len(),
        });
    }

    let weights: Vec<u32> = order.iter().map(|&index| backends[index].weight).collect();
    let targets = apportion(&weights, table_size);
    let mut walks: Vec<Walk> = order
        .iter()
        // Fits: the length was checked against u32 above.
        .map(|&index| Walk::new(backends[index].key, index as u32, table_size))
        .collect();

    let mut table = vec![EMPTY; table_size as usize];
    // Walks probe slots at random, most of them taken once the table fills up: a byte per slot
    // (a quarter of the table's size) keeps those probes in the L1 cache.
    let mut taken = vec![false; table_size as usize];
    // The targets add up to the table size, so every turn finds a free slot and the last one
    // fills the table.
    for pos in turn_order(&weights, &targets, table_size) {
        let slot = walks[pos as usize].claim(&mut taken, table_size);
        table[slot as usize] = walks[pos as usize].index;
    }
    Ok(table)
}

/// How many slots of `table` each of `backends` backends owns; entries `>= backends` are not
/// counted (a table from [`build_table`] has none).
pub fn slot_counts(table: &[u32], backends: usize) -> Vec<u32> {
    let mut counts = vec![0u32; backends];
    for &index in table {
        if let Some(count) = counts.get_mut(index as usize) {
            *count += 1;
        }
    }
    counts
}

/// Primality test usable by config validation: deterministic Miller-Rabin over the whole `u32`
/// range (bases 2, 7 and 61 are enough below 4,759,123,141), a handful of modular
/// multiplications per call.
pub fn is_prime(n: u32) -> bool {
    const SMALL_PRIMES: [u32; 18] = [
        2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61,
    ];
    if n < 2 {
        return false;
    }
    for p in SMALL_PRIMES {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    // n is odd and above 61 here, so no base is a multiple of it.
    let n = u64::from(n);
    let s = (n - 1).trailing_zeros();
    let d = (n - 1) >> s;
    [2, 7, 61].into_iter().all(|base| {
        let mut x = pow_mod(base, d, n);
        if x == 1 || x == n - 1 {
            return true;
        }
        for _ in 1..s {
            x = x * x % n;
            if x == n - 1 {
                return true;
            }
        }
        false
    })
}

/// `base^exp mod m` for `m < 2^32`, so every product fits in a `u64`.
fn pow_mod(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut result = 1;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            result = result * base % m;
        }
        base = base * base % m;
        exp >>= 1;
    }
    result
}

/// Slot counts for backends of these weights (all > 0, in key order) that add up to `m`: each
/// backend's exact share `m * w / W` rounded down, then the slots left over go one each to the
/// backends that would otherwise get none, then to the largest remainders, ties in key order.
fn apportion(weights: &[u32], m: u32) -> Vec<u32> {
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let quota = |w: u32| u128::from(m) * u128::from(w);
    // Each floor is at most m, so it fits.
    let mut targets: Vec<u32> = weights.iter().map(|&w| (quota(w) / total) as u32).collect();
    let assigned: u64 = targets.iter().map(|&t| u64::from(t)).sum();
    // Fewer slots are left over than there are backends (each remainder is below one slot).
    let left = (u64::from(m) - assigned) as usize;

    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_unstable_by_key(|&pos| {
        (targets[pos] != 0, Reverse(quota(weights[pos]) % total), pos)
    });
    for &pos in order.iter().take(left) {
        targets[pos] += 1;
    }

    // Only when backends with a share below one slot outnumber the leftover slots (weights that
    // differ by a factor near the table size): a weight above zero must still mean some traffic, so each
    // such backend gets one slot from whoever is most above its exact share.
    let starved: Vec<usize> = (0..targets.len()).filter(|&p| targets[p] == 0).collect();
    if !starved.is_empty() {
        // Distance above the exact share, in units of 1/total of a slot.
        let excess = |pos: usize, target: u32| {
            (u128::from(target) * total) as i128 - quota(weights[pos]) as i128
        };
        let mut donors: BinaryHeap<(i128, Reverse<usize>)> = (0..targets.len())
            .filter(|&pos| targets[pos] >= 2)
            .map(|pos| (excess(pos, targets[pos]), Reverse(pos)))
            .collect();
        for pos in starved {
            // There is always a donor: the targets add up to m >= the number of backends.
            let Some((_, Reverse(donor))) = donors.pop() else {
                break;
            };
            targets[donor] -= 1;
            targets[pos] = 1;
            if targets[donor] >= 2 {
                donors.push((excess(donor, targets[donor]), Reverse(donor)));
            }
        }
    }
    targets
}

/// A backend's walk along its permutation of the slots.
struct Walk {
    /// The next slot of the permutation to try.
    next: u32,
    /// The permutation's step, in `1..m`; with `m` prime the walk visits every slot once.
    skip: u32,
    /// The backend's index in the caller's slice, which is what the table holds.
    index: u32,
}

impl Walk {
    /// Starts the walk of the backend with this key; `m` is prime.
    fn new(key: &[u8], index: u32, m: u32) -> Self {
        let m = u64::from(m);
        Self {
            next: (xxh64(key, OFFSET_SEED) % m) as u32,
            skip: (xxh64(key, SKIP_SEED) % (m - 1)) as u32 + 1,
            index,
        }
    }

    /// Claims the next free slot of the permutation, marks it taken and returns it; there must
    /// be one.
    fn claim(&mut self, taken: &mut [bool], m: u32) -> u32 {
        loop {
            let slot = self.next;
            // (slot + skip) mod m without overflow or a division.
            self.next = if slot >= m - self.skip {
                slot - (m - self.skip)
            } else {
                slot + self.skip
            };
            let entry = &mut taken[slot as usize];
            if !*entry {
                *entry = true;
                return slot;
            }
        }
    }
}

/// The order in which the backends (positions in key order) take their turns: one turn per slot
/// of their targets, which add up to `m`.
///
/// A backend's k-th turn is due at time k·W/w (W the total weight), so a backend of twice the
/// weight takes turns twice as often and every backend's last turn falls before m. Turns due in
/// the same whole unit of time go in key order: with equal weights that is exactly classic
/// Maglev round robin. A counting sort over the m possible due times keeps this O(m + n).
fn turn_order(weights: &[u32], targets: &[u32], m: u32) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let last = u64::from(m) - 1;
    // Every (position, due time) pair, in key order. The due time is below m because a
    // backend's target is at most its exact share m·w/W rounded up, so k·W/w < m; the `min`
    // only keeps a mistake in that reasoning from becoming an out-of-bounds index.
    let turns = || {
        weights
            .iter()
            .zip(targets)
            .enumerate()
            .flat_map(move |(pos, (&weight, &target))| {
                let weight = u64::from(weight);
                let (step, fraction) = (total / weight, total % weight);
                (0..target).scan((0u64, 0u64), move |(time, carry), _| {
                    let due = (*time).min(last) as usize;
                    *time = time.saturating_add(step);
                    *carry += fraction;
                    if *carry >= weight {
                        *carry -= weight;
                        *time = time.saturating_add(1);
                    }
                    // Fits: there are at most m <= u32::MAX backends.
                    Some((pos as u32, due))
                })
            })
    };

    // starts[t] = how many turns are due before time t, then the next free place for time t.
    let mut starts = vec![0u32; m as usize + 1];
    for (_, due) in turns() {
        starts[due + 1] += 1;
    }
    for t in 1..starts.len() {
        starts[t] += starts[t - 1];
    }
    let mut order = vec![0u32; m as usize];
    for (pos, due) in turns() {
        order[starts[due] as usize] = pos;
        starts[due] += 1;
    }
    order
}

const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;
const PRIME64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const PRIME64_3: u64 = 0x1656_67B1_9E37_79F9;
const PRIME64_4: u64 = 0x85EB_CA77_C2B2_AE63;
const PRIME64_5: u64 = 0x27D4_EB2F_1656_67C5;

/// xxHash64 of `input` (the reference algorithm, little-endian), written out so that the
/// result never depends on a dependency's version.
fn xxh64(input: &[u8], seed: u64) -> u64 {
    let mut hash;
    let mut rest = input;
    if input.len() >= 32 {
        let mut acc = [
            seed.wrapping_add(PRIME64_1).wrapping_add(PRIME64_2),
            seed.wrapping_add(PRIME64_2),
            seed,
            seed.wrapping_sub(PRIME64_1),
        ];
        let mut stripes = input.chunks_exact(32);
        for stripe in &mut stripes {
            for (lane, word) in acc.iter_mut().zip(stripe.chunks_exact(8)) {
                *lane = xxh64_round(*lane, read_u64(word));
            }
        }
        rest = stripes.remainder();
        hash = acc[0]
            .rotate_left(1)
            .wrapping_add(acc[1].rotate_left(7))
            .wrapping_add(acc[2].rotate_left(12))
            .wrapping_add(acc[3].rotate_left(18));
        for lane in acc {
            hash = (hash ^ xxh64_round(0, lane))
                .wrapping_mul(PRIME64_1)
                .wrapping_add(PRIME64_4);
        }
    } else {
        hash = seed.wrapping_add(PRIME64_5);
    }
    hash = hash.wrapping_add(input.len() as u64);

    let mut words = rest.chunks_exact(8);
    for word in &mut words {
        hash ^= xxh64_round(0, read_u64(word));
        hash = hash
            .rotate_left(27)
            .wrapping_mul(PRIME64_1)
            .wrapping_add(PRIME64_4);
    }
    rest = words.remainder();
    if rest.len() >= 4 {
        let mut half = [0u8; 4];
        half.copy_from_slice(&rest[..4]);
        hash ^= u64::from(u32::from_le_bytes(half)).wrapping_mul(PRIME64_1);
        hash = hash
            .rotate_left(23)
            .wrapping_mul(PRIME64_2)
            .wrapping_add(PRIME64_3);
        rest = &rest[4..];
    }
    for &byte in rest {
        hash ^= u64::from(byte).wrapping_mul(PRIME64_5);
        hash = hash.rotate_left(11).wrapping_mul(PRIME64_1);
    }

    hash ^= hash >> 33;
    hash = hash.wrapping_mul(PRIME64_2);
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(PRIME64_3);
    hash ^ (hash >> 32)
}

/// One xxHash64 accumulator round.
fn xxh64_round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(PRIME64_2))
        .rotate_left(31)
        .wrapping_mul(PRIME64_1)
}

/// The little-endian `u64` in the first 8 bytes of `bytes`.
fn read_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    const M: u32 = DEFAULT_TABLE_SIZE;

    /// Distinct backend keys, as addresses in text like a config would give them.
    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256))
            .collect()
    }

    fn backends<'a>(keys: &'a [String], weights: &[u32]) -> Vec<MaglevBackend<'a>> {
        keys.iter()
            .zip(weights)
            .map(|(key, &weight)| MaglevBackend {
                key: key.as_bytes(),
                weight,
            })
            .collect()
    }

    fn build(backends: &[MaglevBackend<'_>]) -> Vec<u32> {
        build_table(backends, M).expect("valid backends build a table")
    }

    /// The key owning each slot: what a flow sees, whatever the backends' indices.
    fn owners<'a>(table: &[u32], backends: &[MaglevBackend<'a>]) -> Vec<&'a [u8]> {
        table.iter().map(|&i| backends[i as usize].key).collect()
    }

    fn cycling_weights(n: usize) -> Vec<u32> {
        [1, 2, 3, 5].into_iter().cycle().take(n).collect()
    }

    fn seeded_weights(n: usize, seed: u64) -> Vec<u32> {
        let mut rng = Rng(seed);
        (0..n).map(|_| 1 + rng.below(10) as u32).collect()
    }

    /// Checks every backend's slot count against its exact share: within 1%, or within one slot
    /// where one slot is more than 1%.
    fn assert_shares(table: &[u32], weights: &[u32]) {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let counts = slot_counts(table, weights.len());
        for (i, (&count, &weight)) in counts.iter().zip(weights).enumerate() {
            let expected = f64::from(M) * f64::from(weight) / total as f64;
            let error = (f64::from(count) - expected).abs();
            if expected >= 100.0 {
                let relative = error / expected;
                assert!(
                    relative <= 0.01,
                    "backend {i} of {}: {count} slots, expected {expected:.1}",
                    weights.len()
                );
            } else {
                // Below 100 expected slots one slot is more than 1%, and no table can do
                // better than rounding the exact share; apportionment guarantees that much.
                assert!(
                    error <= 1.0,
                    "backend {i} of {}: {count} slots, expected {expected:.1}",
                    weights.len()
                );
            }
        }
    }

    /// Fraction of slots whose owner (by key) differs between two tables.
    fn moved(before: &[&[u8]], after: &[&[u8]]) -> f64 {
        let changed = before.iter().zip(after).filter(|(a, b)| a != b).count();
        changed as f64 / before.len() as f64
    }

    #[test]
    fn every_slot_holds_a_valid_index() {
        for n in [3, 10, 100, 1000] {
            let keys = keys(n);
            for weights in [vec![1; n], cycling_weights(n)] {
                let table = build(&backends(&keys, &weights));
                assert_eq!(table.len(), M as usize);
                assert!(
                    table.iter().all(|&i| (i as usize) < n),
                    "{n} backends: a slot is empty or out of range"
                );
            }
        }
    }

    #[test]
    fn equal_weights_share_slots_equally() {
        for n in [3, 10, 100, 1000] {
            let keys = keys(n);
            let weights = vec![7; n];
            let table = build(&backends(&keys, &weights));
            assert_shares(&table, &weights);
            // Round robin: counts differ by at most one.
            let counts = slot_counts(&table, n);
            let most = counts.iter().max().expect("n > 0");
            let least = counts.iter().min().expect("n > 0");
            assert!(most - least <= 1, "{n} backends: {least} to {most} slots");
        }
    }

    #[test]
    fn unequal_weights_share_slots_by_weight() {
        for n in [3, 4, 5, 7, 10, 17, 33, 50, 64, 100] {
            let keys = keys(n);
            let weights = cycling_weights(n);
            assert_shares(&build(&backends(&keys, &weights)), &weights);
            let weights = seeded_weights(n, n as u64);
            assert_shares(&build(&backends(&keys, &weights)), &weights);
        }
    }

    #[test]
    fn extreme_weights_still_give_every_backend_a_slot() {
        let four = keys(4);
        // Shares of far below one slot: rounding alone would give these backends nothing.
        let weights = [u32::MAX, 1, 2, u32::MAX / 3];
        let table = build(&backends(&four, &weights));
        let counts = slot_counts(&table, 4);
        assert_eq!(counts.iter().sum::<u32>(), M);
        assert_eq!((counts[1], counts[2]), (1, 1));
        assert_shares(&table, &weights);

        // More starved backends than leftover slots: each still gets one.
        let five = keys(5);
        let weights = [u32::MAX, 1, 1, 1, 1];
        let table = build_table(&backends(&five, &weights), 5).expect("5 slots for 5 backends");
        assert_eq!(slot_counts(&table, 5), [1, 1, 1, 1, 1]);
    }

    #[test]
    fn drained_backends_get_no_slots_and_change_nothing() {
        let keys = keys(10);
        let mut weights = cycling_weights(10);
        weights[0] = 0;
        weights[4] = 0;
        weights[9] = 0;
        let all = backends(&keys, &weights);
        let table = build(&all);
        let counts = slot_counts(&table, 10);
        assert_eq!((counts[0], counts[4], counts[9]), (0, 0, 0));

        let active: Vec<_> = all.iter().copied().filter(|b| b.weight > 0).collect();
        assert_eq!(owners(&table, &all), owners(&build(&active), &active));
    }

    /// Fractions of the slots that change owner when the last of `weights` joins the others, and
    /// when the middle one in key order (so the turn order shifts too) leaves them.
    fn disruption(weights: &[u32]) -> (f64, f64) {
        let n = weights.len() - 1;
        let keys = keys(n + 1);
        let base = backends(&keys[..n], &weights[..n]);
        let before_table = build(&base);
        let before = owners(&before_table, &base);

        let grown = backends(&keys, weights);
        let added = moved(&before, &owners(&build(&grown), &grown));

        let mut shrunk = base.clone();
        shrunk.remove(n / 2);
        let removed = moved(&before, &owners(&build(&shrunk), &shrunk));
        (added, removed)
    }

    #[test]
    fn adding_or_removing_a_backend_moves_few_slots() {
        for n in [3, 10, 100, 1000] {
            let (added, removed) = disruption(&vec![1; n + 1]);
            let bound = 1.0 / n as f64 + 0.01;
            assert!(added <= bound, "adding 1 to {n}: {added:.4} moved");
            assert!(removed <= bound, "removing 1 of {n}: {removed:.4} moved");
        }
    }

    #[test]
    fn adding_or_removing_a_weighted_backend_moves_about_its_share() {
        // At least the backend's own share of the slots has to move; allow 1% on top, as for
        // equal weights.
        for n in [3, 10, 100] {
            let weights = cycling_weights(n + 1);
            let (added, removed) = disruption(&weights);
            let share = |w: u32, total: u32| f64::from(w) / f64::from(total);
            let total: u32 = weights[..n].iter().sum();
            let bound = share(weights[n], total + weights[n]) + 0.01;
            assert!(added <= bound, "adding 1 to {n}: {added:.4} moved");
            let bound = share(weights[n / 2], total) + 0.01;
            assert!(removed <= bound, "removing 1 of {n}: {removed:.4} moved");
        }
    }

    #[test]
    fn table_is_pinned_across_versions_and_machines() {
        let keys = ["10.0.0.21", "10.0.0.22", "10.0.0.23"].map(String::from);
        let three = backends(&keys, &[1, 1, 1]);
        let table = build(&three);
        assert_eq!(table, build(&three));

        // Pinned values: if these change, every node that upgrades moves flows to other
        // backends. Change them only together with a deliberate, announced algorithm change.
        assert_eq!(
            table[..16],
            [2, 0, 0, 2, 1, 0, 1, 2, 2, 0, 0, 1, 1, 0, 1, 2],
            "first 16 slots"
        );
        assert_eq!(
            fnv1a(&table),
            0x4ea0_4872_bb26_2f77,
            "whole-table fingerprint"
        );

        let weighted = build(&backends(&keys, &[1, 2, 3]));
        assert_eq!(slot_counts(&weighted, 3), [10923, 21846, 32768]);
        assert_eq!(
            fnv1a(&weighted),
            0x27b1_b7fc_5b06_f875,
            "weighted-table fingerprint"
        );
    }

    /// FNV-1a over the table's entries as little-endian bytes.
    fn fnv1a(table: &[u32]) -> u64 {
        table
            .iter()
            .flat_map(|entry| entry.to_le_bytes())
            .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
            })
    }

    #[test]
    fn xxh64_matches_the_reference() {
        // Vectors from the reference implementation, covering every tail path and the
        // 32-byte stripes (IPv6 addresses as text are up to 39 bytes).
        let ipv6 = b"2001:0db8:0000:0000:0000:ff00:0042:8329";
        assert_eq!(xxh64(b"", 0), 0xef46_db37_51d8_e999);
        assert_eq!(xxh64(b"a", 0), 0xd24e_c4f1_a98c_6e5b);
        assert_eq!(xxh64(b"10.0.0.21", 0), 0x625a_bb91_e45d_e92b);
        assert_eq!(xxh64(b"2001:db8::1", 0), 0x26c3_3ef1_c67e_1031);
        assert_eq!(xxh64(ipv6, 0), 0x6b12_3c84_9470_4bf2);
        assert_eq!(xxh64(b"10.0.0.21", OFFSET_SEED), 0x6e3a_a9d9_644a_dd27);
        assert_eq!(xxh64(ipv6, SKIP_SEED), 0x2f29_d2bc_8dff_e227);
    }

    #[test]
    fn backend_order_does_not_matter() {
        let mut rng = Rng(42);
        for n in [3, 10, 100] {
            let keys = keys(n);
            for weights in [vec![1; n], seeded_weights(n, 7)] {
                let given = backends(&keys, &weights);
                let reference = owners(&build(&given), &given);

                let mut reversed = given.clone();
                reversed.reverse();
                assert_eq!(owners(&build(&reversed), &reversed), reference);

                let mut shuffled = given.clone();
                for i in (1..n).rev() {
                    shuffled.swap(i, rng.below(i + 1));
                }
                assert_eq!(owners(&build(&shuffled), &shuffled), reference);
            }
        }
    }

    #[test]
    fn invalid_inputs_are_errors() {
        let keys = keys(4);
        let four = backends(&keys, &[1, 1, 1, 1]);
        assert_eq!(
            build_table(&four, 65536),
            Err(MaglevError::NotPrime { size: 65536 })
        );
        assert_eq!(
            build_table(&four, 1),
            Err(MaglevError::NotPrime { size: 1 })
        );
        assert_eq!(build_table(&[], M), Err(MaglevError::NoBackends));
        assert_eq!(
            build_table(&backends(&keys, &[0, 0, 0, 0]), M),
            Err(MaglevError::NoBackends)
        );
        assert_eq!(
            build_table(&four, 3),
            Err(MaglevError::TooSmall {
                size: 3,
                backends: 4
            })
        );
        // Drained backends need no slot.
        assert!(build_table(&backends(&keys, &[1, 0, 1, 1]), 3).is_ok());

        let mut twice = four.clone();
        twice[3].key = twice[1].key;
        assert_eq!(
            build_table(&twice, M),
            Err(MaglevError::DuplicateKey {
                first: 1,
                second: 3,
                key: "10.0.0.1".to_owned()
            })
        );
    }

    #[test]
    fn is_prime_agrees_with_trial_division() {
        fn reference(n: u32) -> bool {
            n >= 2
                && (2..n)
                    .take_while(|d| d * d <= n)
                    .all(|d| !n.is_multiple_of(d))
        }
        for n in 0..10_000 {
            assert_eq!(is_prime(n), reference(n), "{n}");
        }
        for prime in [
            65537,
            16381,
            131071,
            16_777_213,
            2_147_483_647,
            4_294_967_291,
        ] {
            assert!(is_prime(prime), "{prime} is prime");
        }
        // Strong pseudoprimes to some of the bases, Carmichael numbers, squares of primes.
        for composite in [
            65536,
            65535,
            561,
            1_373_653,
            25_326_001,
            3_215_031_751,
            4_294_967_295,
            65521 * 65521,
            65537 * 65521,
        ] {
            assert!(!is_prime(composite), "{composite} is composite");
        }
    }
}
