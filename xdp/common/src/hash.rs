//! The flow hash: the same function picks a Maglev slot in the kernel and predicts it in tests.
//!
//! Murmur3's 32-bit mixing over the key's words with a fixed seed: cheap in eBPF (no loops
//! that the verifier has to walk more than ten times, no tables) and deterministic everywhere.

use crate::{FlowKey, FlowKey6};

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
    h = mix(h, key.src);
    h = mix(h, key.dst);
    h = mix(h, ((key.sport as u32) << 16) | key.dport as u32);
    h = mix(h, key.proto as u32);
    finish(h)
}

/// Hash of an IPv6 flow's 5-tuple: the same mixing over the eight address words.
#[inline(always)]
pub const fn flow_hash6(key: &FlowKey6) -> u32 {
    let mut h = FLOW_HASH_SEED;
    let mut i = 0;
    while i < 4 {
        h = mix(h, key.src[i]);
        i += 1;
    }
    let mut i = 0;
    while i < 4 {
        h = mix(h, key.dst[i]);
        i += 1;
    }
    h = mix(h, ((key.sport as u32) << 16) | key.dport as u32);
    h = mix(h, key.proto as u32);
    finish(h)
}

/// Outer IPv6 source of an IPv6 encapsulation: as [`ipip_source`] word by word (the host
/// bits of every word are taken from the same hash).
#[inline(always)]
pub const fn ip6_source(prefix: [u32; 4], host_mask: [u32; 4], hash: u32) -> [u32; 4] {
    [
        prefix[0] | (hash & host_mask[0]),
        prefix[1] | (hash & host_mask[1]),
        prefix[2] | (hash & host_mask[2]),
        prefix[3] | (hash & host_mask[3]),
    ]
}

/// The 20-bit IPv6 flow label of an encapsulated flow, from its hash: routers and NICs that
/// hash on (source, destination, flow label) spread the flows of one outer address pair.
#[inline(always)]
pub const fn flow_label(hash: u32) -> u32 {
    hash & 0x000f_ffff
}

/// Outer IPv4 source of an IPIP packet: the configured prefix with its host bits taken from the
/// flow hash, so a backend NIC's RSS spreads encapsulated flows over its queues while every
/// packet of one flow keeps one source. All values are raw network-order words.
/// Number of bits in the VIP address filter (`XLB_VIP_FILTER`): a power of two. 2^21 bits
/// (256 KiB) keep false positives near 5% with 100,000 VIP addresses.
pub const VIP_FILTER_SLOTS: u32 = 1 << 21;

/// The VIP address filter's 64-bit words (`XLB_VIP_FILTER` entries).
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_SLOTS / 64;

/// The VIP address filter's bit for a destination address (network byte order words):
/// Fibonacci hashing of the folded words, a multiply and a shift, so that every packet can
/// afford it before any hash map lookup. Bit `slot % 64` of word `slot / 64`.
#[inline(always)]
pub const fn vip_filter_slot(addr: [u32; 4]) -> u32 {
    let folded = addr[0] ^ addr[1] ^ addr[2] ^ addr[3];
    folded.wrapping_mul(0x9e37_79b1) >> (32 - VIP_FILTER_SLOTS.trailing_zeros())
}

#[inline(always)]
pub const fn ipip_source(prefix: u32, host_mask: u32, hash: u32) -> u32 {
    prefix | (hash & host_mask)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn hash_is_fixed_for_a_known_key() {
        const PINNED: u32 = 3_887_300_555;
        // Pinned value: if this changes, every deployed node would move flows on upgrade. It
        // last changed with LAYOUT_VERSION 2 (IPv4-sized flow keys), a layout change that
        // cannot adopt the old flow table anyway.
        let key = FlowKey {
            src: 0x0100_000a,
            dst: 0x0a00_000a,
            sport: 0x3930,
            dport: 0x5000,
            proto: 6,
            _pad: 0,
            _pad2: 0,
        };
        assert_eq!(flow_hash(&key), PINNED);
        let mut other = key;
        other.sport = 0x3931;
        assert_ne!(flow_hash(&key), flow_hash(&other));
    }

    #[test]
    fn hash6_covers_every_word() {
        let key = FlowKey6 {
            src: [1, 2, 3, 4],
            dst: [5, 6, 7, 8],
            sport: 0x3930,
            dport: 0x5000,
            proto: 6,
            _pad: 0,
            _pad2: 0,
        };
        for word in 0..4 {
            let mut other = key;
            other.src[word] ^= 1;
            assert_ne!(flow_hash6(&key), flow_hash6(&other));
            let mut other = key;
            other.dst[word] ^= 1;
            assert_ne!(flow_hash6(&key), flow_hash6(&other));
        }
        assert!(flow_label(flow_hash6(&key)) <= 0xf_ffff);
    }

    #[test]
    fn filter_slots_are_in_range_and_spread() {
        let mut hit = std::vec![false; VIP_FILTER_SLOTS as usize];
        for host in 0..4096u32 {
            // 10.0.x.y in network byte order, as the packet carries it.
            let addr = u32::from_ne_bytes([10, 0, (host >> 8) as u8, host as u8]);
            let slot = vip_filter_slot([addr, 0, 0, 0]);
            assert!(slot < VIP_FILTER_SLOTS);
            hit[slot as usize] = true;
        }
        // 4,096 consecutive addresses over 2^21 bits: nearly all distinct.
        assert!(hit.iter().filter(|&&h| h).count() > 4_000);
    }
}
