//! Reading the datapath back from the kernel maps, not from the daemon's bookkeeping, into a
//! value two dataplanes can be compared by. Ids and offsets are resolved away (a slot becomes
//! the backend's address and MAC), because a dataplane that went through many changes holds
//! the same services under other ids and in other regions than a fresh one.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use xlb_common::{
    Backend, Globals, VipKey, VipKey6, backend_flags, family, forward_mode,
    hash::{VIP_FILTER_WORDS, vip_filter_slot},
    map_names,
};

use super::{Dataplane, DataplaneError, map_err};
use crate::state::VipKeyOrd;

/// What the maps hold, as a canonical value: equal dumps mean packets are handled alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathDump {
    /// The `XLB_GLOBALS` entry (interface MAC, IPIP source prefix and mask, layout version).
    pub globals: Globals,
    /// Every entry of `XLB_VIPS`, by key (port in host byte order).
    pub vips: BTreeMap<VipKeyOrd, VipDump>,
    /// Every entry of `XLB_VIP_ADDRS`: address -> reference count.
    pub vip_addrs: BTreeMap<IpAddr, u32>,
    /// Everything found that the datapath would trip over; empty in a consistent dataplane.
    pub inconsistencies: Vec<Inconsistency>,
}

/// One VIP as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipDump {
    /// Forwarding mode ([`forward_mode`]).
    pub mode: u32,
    /// Slots in the live table; 0 when no backend has weight.
    pub table_size: u32,
    /// Backends with weight above zero, as `VipMeta` says.
    pub backend_count: u32,
    /// Slot -> (address, MAC) of the backend entry it names. An entry that cannot be read is
    /// shown as the unspecified address and a zero MAC (and listed as an inconsistency).
    pub table: Vec<(IpAddr, [u8; 6])>,
}

/// A state of the maps that breaks an invariant the datapath relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inconsistency {
    /// The VIP's region lies (partly) outside the slot array.
    RegionOutsideArray {
        /// The VIP.
        vip: VipKeyOrd,
    },
    /// Slots name a backend id beyond the backend array (counted as `table_miss`).
    UnreadableBackend {
        /// The VIP.
        vip: VipKeyOrd,
        /// How many slots.
        slots: usize,
    },
    /// Slots name a backend entry without the ACTIVE flag (counted as `table_miss`).
    InactiveBackend {
        /// The VIP.
        vip: VipKeyOrd,
        /// How many slots.
        slots: usize,
    },
    /// Slots name a backend entry of another VIP (counted as `table_miss`).
    ForeignBackend {
        /// The VIP.
        vip: VipKeyOrd,
        /// How many slots.
        slots: usize,
    },
    /// `backend_count` differs from the number of distinct backends in the table (every
    /// backend of weight above zero owns at least one slot).
    BackendCount {
        /// The VIP.
        vip: VipKeyOrd,
        /// What `VipMeta` says.
        meta: u32,
        /// Distinct backends found in the table.
        in_table: usize,
    },
    /// The mode is neither L2 nor IPIP (the datapath drops as `table_miss`).
    UnknownMode {
        /// The VIP.
        vip: VipKeyOrd,
        /// The stored mode.
        mode: u32,
    },
    /// Two VIPs share a VIP id, so their counters mix and each VIP's backends pass the
    /// other's ownership check.
    SharedVipId {
        /// One VIP.
        first: VipKeyOrd,
        /// The other.
        second: VipKeyOrd,
    },
    /// An address's reference count differs from the number of VIPs on it (0: no entry, so
    /// its packets pass; an entry without VIPs steers the host's own traffic into the VIP
    /// lookup).
    AddressCount {
        /// The address.
        addr: IpAddr,
        /// The stored count (0 when absent).
        count: u32,
        /// VIPs in `XLB_VIPS` on that address.
        vips: u32,
    },
    /// A word of the VIP address filter differs from the bits of the listed VIP addresses (a
    /// missing bit: that address's packets pass as if it were no VIP; an extra bit: other
    /// addresses pay needless lookups).
    FilterBits {
        /// The word's index.
        word: u32,
        /// The stored word.
        found: u64,
        /// The bits of the addresses in `XLB_VIP_ADDRS`.
        expected: u64,
    },
}

/// Address words as stored (network byte order) back to an address.
fn words_to_addr(words: [u32; 4], fam: u8) -> IpAddr {
    if fam == family::V4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(octets))
    }
}

/// The ordered form of a datapath VIP key (port back in host byte order).
pub(super) fn key_ord(key: VipKey) -> VipKeyOrd {
    VipKeyOrd {
        addr: [key.addr, 0, 0, 0],
        port: u16::from_be(key.port),
        proto: key.proto,
        family: family::V4,
    }
}

/// The ordered key of an IPv6 VIP entry.
pub(super) fn key_ord6(key: VipKey6) -> VipKeyOrd {
    VipKeyOrd {
        addr: key.addr,
        port: u16::from_be(key.port),
        proto: key.proto,
        family: family::V6,
    }
}

impl Dataplane {
    /// Reads the kernel maps into a [`DatapathDump`]: every VIP entry, its table through the
    /// slot mapping with each slot resolved to its backend's identity, and the address set.
    /// Reads only the maps (never the bookkeeping of applied changes), so it shows what
    /// packets would meet.
    pub fn dump(&self) -> Result<DatapathDump, DataplaneError> {
        let globals = self
            .globals
            .get(&0, 0)
            .map_err(map_err("lookup", map_names::GLOBALS))?;
        let mut inconsistencies = Vec::new();
        // A VIP has a handful of backends: read each entry once, not once per slot.
        let mut entries: HashMap<u32, Option<Backend>> = HashMap::new();
        let mut vip_ids: BTreeMap<u32, VipKeyOrd> = BTreeMap::new();
        let mut vips = BTreeMap::new();
        for (vip, meta) in self.live_vips()? {
            if let Some(&first) = vip_ids.get(&meta.vip_id) {
                let (first, second) = (first.min(vip), first.max(vip));
                inconsistencies.push(Inconsistency::SharedVipId { first, second });
            } else {
                vip_ids.insert(meta.vip_id, vip);
            }
            if meta.mode != forward_mode::L2 && meta.mode != forward_mode::IPIP {
                inconsistencies.push(Inconsistency::UnknownMode {
                    vip,
                    mode: meta.mode,
                });
            }
            let ids = if meta.table_size == 0 {
                Vec::new()
            } else {
                match self.slots.read(meta.table_offset, meta.table_size as usize) {
                    Ok(ids) => ids,
                    Err(DataplaneError::SlotRange { .. }) => {
                        inconsistencies.push(Inconsistency::RegionOutsideArray { vip });
                        Vec::new()
                    }
                    Err(other) => return Err(other),
                }
            };
            let (mut unreadable, mut inactive, mut foreign) = (0, 0, 0);
            let mut table = Vec::with_capacity(ids.len());
            for id in ids {
                let entry = match entries.get(&id) {
                    Some(entry) => *entry,
                    None => {
                        let entry = self.backends.get(&id, 0).ok();
                        entries.insert(id, entry);
                        entry
                    }
                };
                match entry {
                    Some(backend) => {
                        if backend.flags & backend_flags::ACTIVE == 0 {
                            inactive += 1;
                        } else if backend.vip_id != meta.vip_id {
                            foreign += 1;
                        }
                        table.push((words_to_addr(backend.addr, backend.family), backend.mac));
                    }
                    None => {
                        unreadable += 1;
                        table.push((IpAddr::V4(Ipv4Addr::UNSPECIFIED), [0; 6]));
                    }
                }
            }
            if unreadable > 0 {
                inconsistencies.push(Inconsistency::UnreadableBackend {
                    vip,
                    slots: unreadable,
                });
            }
            if inactive > 0 {
                inconsistencies.push(Inconsistency::InactiveBackend {
                    vip,
                    slots: inactive,
                });
            }
            if foreign > 0 {
                inconsistencies.push(Inconsistency::ForeignBackend {
                    vip,
                    slots: foreign,
                });
            }
            let distinct: BTreeSet<&(IpAddr, [u8; 6])> = table.iter().collect();
            if distinct.len() != meta.backend_count as usize {
                inconsistencies.push(Inconsistency::BackendCount {
                    vip,
                    meta: meta.backend_count,
                    in_table: distinct.len(),
                });
            }
            vips.insert(
                vip,
                VipDump {
                    mode: meta.mode,
                    table_size: meta.table_size,
                    backend_count: meta.backend_count,
                    table,
                },
            );
        }

        let mut vip_addrs = BTreeMap::new();
        for item in self.vip_addrs.iter() {
            let (key, value) = item.map_err(map_err("iterate", map_names::VIP_ADDRS))?;
            vip_addrs.insert(words_to_addr(key.addr, key.family), value.vip_count);
        }
        let mut per_addr: BTreeMap<IpAddr, u32> = BTreeMap::new();
        for vip in vips.keys() {
            *per_addr
                .entry(words_to_addr(vip.addr, vip.family))
                .or_default() += 1;
        }
        let addrs: BTreeSet<IpAddr> = vip_addrs.keys().chain(per_addr.keys()).copied().collect();
        for addr in addrs {
            let count = vip_addrs.get(&addr).copied().unwrap_or(0);
            let vips = per_addr.get(&addr).copied().unwrap_or(0);
            if count != vips {
                inconsistencies.push(Inconsistency::AddressCount { addr, count, vips });
            }
        }

        let mut expected_words: HashMap<u32, u64> = HashMap::new();
        for addr in vip_addrs.keys() {
            let (words, _) = crate::state::addr_words(*addr);
            let slot = vip_filter_slot(words);
            *expected_words.entry(slot / 64).or_default() |= 1u64 << (slot % 64);
        }
        for word in 0..VIP_FILTER_WORDS {
            let found = self
                .vip_filter
                .get(&word, 0)
                .map_err(map_err("lookup", map_names::VIP_FILTER))?;
            let expected = expected_words.get(&word).copied().unwrap_or(0);
            if found != expected {
                inconsistencies.push(Inconsistency::FilterBits {
                    word,
                    found,
                    expected,
                });
            }
        }

        Ok(DatapathDump {
            globals,
            vips,
            vip_addrs,
            inconsistencies,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::addr_words;

    #[test]
    fn addresses_round_trip_through_datapath_words() {
        for text in ["10.0.0.1", "192.0.2.255", "2001:db8::1", "::"] {
            let addr: IpAddr = text.parse().expect("test address");
            let (words, fam) = addr_words(addr);
            assert_eq!(words_to_addr(words, fam), addr);
        }
    }

    #[test]
    fn vip_keys_come_back_with_host_order_ports() {
        let ord = VipKeyOrd {
            addr: [1, 0, 0, 0],
            port: 8080,
            proto: 6,
            family: family::V4,
        };
        assert_eq!(key_ord(ord.to_key()), ord);
    }
}
