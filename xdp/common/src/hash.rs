//! The flow hash: the same function picks a Maglev slot in the kernel and predicts it in tests.
//!
//! Murmur3's 32-bit mixing over the key's words with a fixed seed: cheap in eBPF (no loops
//! that the verifier has to walk more than ten times, no tables) and deterministic everywhere.

use crate::FlowKey;

/// Fixed seed: every node of a tier must pick the same slot for the same flow.
pub const FLOW_HASH_SEED: u32 = 0x786c_6221;

#[inline(always)]
const fn mix(mut h: u32, mut k: u32) -> u32 {
    k = k.wrapping_mul(0xcc9e_2d51);
    k = k.rotate_left(15);
    k = k.wrapping_mul(0x1b87_3593);
    h ^= k;
    h = h.rotate_left(13);
    h.wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a flow's 5-tuple. Ports and addresses are taken as the raw words the packet carries.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = FLOW_HASH_SEED;
    h = mix(h, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    h = mix(h, key.dst[0]);
    h = mix(h, key.dst[1]);
    h = mix(h, key.dst[2]);
    h = mix(h, key.dst[3]);
    h = mix(h, ((key.sport as u32) << 16) | key.dport as u32);
    h = mix(h, ((key.proto as u32) << 8) | key.family as u32);
    finish(h)
}

/// Outer IPv4 source of an IPIP packet: the configured prefix with its host bits taken from the
/// flow hash, so a backend NIC's RSS spreads encapsulated flows over its queues while every
/// packet of one flow keeps one source. All values are raw network-order words.
#[inline(always)]
pub const fn ipip_source(prefix: u32, host_mask: u32, hash: u32) -> u32 {
    prefix | (hash & host_mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fixed_for_a_known_key() {
        const PINNED: u32 = 1_761_492_948;
        // Pinned value: if this changes, every deployed node would move flows on upgrade.
        let key = FlowKey {
            src: [0x0100_000a, 0, 0, 0],
            dst: [0x0a00_000a, 0, 0, 0],
            sport: 0x3930,
            dport: 0x5000,
            proto: 6,
            family: 4,
            _pad: [0; 2],
        };
        assert_eq!(flow_hash(&key), PINNED);
        let mut other = key;
        other.sport = 0x3931;
        assert_ne!(flow_hash(&key), flow_hash(&other));
    }
}
