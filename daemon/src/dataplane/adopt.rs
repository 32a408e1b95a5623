//! Taking over maps pinned by a previous daemon. The maps are the truth: the VIP map names each
//! live VIP's id and table region, the backend array the live (ACTIVE) backend ids and the VIP
//! each belongs to. From them the allocators are rebuilt so no live id or region is ever handed
//! out again, and each live VIP is matched to the desired state:
//!
//! - a VIP whose maps hold exactly what the desired state would write (mode, backends by
//!   address and MAC, table slot by slot) is taken over as it is: same ids, same region, same
//!   counters, and flows pinned to its backends keep them;
//! - a VIP whose desired state differs is rewritten like any changed VIP (new table region,
//!   new entries for new backends), then its old resources are freed;
//! - a VIP that is no longer desired is removed.
//!
//! Afterwards the maps hold what a fresh load would write for the same state (compared by
//! `Dataplane::dump`, which resolves ids away), and the next change starts from exact
//! bookkeeping.

use std::collections::{BTreeMap, BTreeSet};

use tracing::info;
use xlb_common::{Backend, VipMeta, backend_flags, map_names};

use super::{
    AppliedVip, Dataplane, DataplaneError,
    alloc::{IdAllocator, RegionAllocator},
    map_err,
};
use crate::state::{DesiredState, DesiredVip, addr_words};

/// A live VIP that does not match the desired state.
struct Stale {
    vip_id: u32,
    backend_ids: Vec<u32>,
    region: Option<(u32, u32)>,
}

impl Dataplane {
    /// The settings entry the pinned globals hold.
    pub(super) fn read_globals(&self) -> Result<xlb_common::Globals, DataplaneError> {
        self.globals
            .get(&0, 0)
            .map_err(map_err("lookup", map_names::GLOBALS))
    }

    /// Matches the adopted maps to `desired` (see the module comment). Returns how many VIPs
    /// had to be rewritten or removed.
    pub(super) fn adopt(&mut self, desired: &DesiredState) -> Result<usize, DataplaneError> {
        self.policy.adopt_live()?;
        self.adopt_filter()?;
        let live = self.live_vips()?;
        let mut active: BTreeMap<u32, Backend> = BTreeMap::new();
        for id in 0..self.backend_ids.capacity() {
            let entry = self
                .backends
                .get(&id, 0)
                .map_err(map_err("lookup", map_names::BACKENDS))?;
            if entry.flags & backend_flags::ACTIVE != 0 {
                active.insert(id, entry);
            }
        }

        // Each VIP's entries, found in one pass (a scan of every entry per VIP was quadratic).
        let mut by_vip: BTreeMap<u32, Vec<(u32, Backend)>> = BTreeMap::new();
        for (&id, backend) in &active {
            by_vip
                .entry(backend.vip_id)
                .or_default()
                .push((id, *backend));
        }

        let mut used_vips = BTreeSet::new();
        let mut used_regions = Vec::new();
        let mut stale = BTreeMap::new();
        for (key, meta) in &live {
            let key = *key;
            used_vips.insert(meta.vip_id);
            let region = (meta.table_size > 0).then_some((meta.table_offset, meta.table_size));
            used_regions.extend(region);
            let owned = by_vip.get(&meta.vip_id).cloned().unwrap_or_default();
            let matched = match desired.vips.get(&key) {
                Some(vip) => self.matching_ids(meta, &owned, vip)?,
                None => None,
            };
            match (matched, desired.vips.get(&key)) {
                (Some(backend_ids), Some(vip)) => {
                    // The VIP is kept as it is, but its source ranges may have changed while
                    // no daemon ran (they are not part of the match above): written by
                    // difference against what the previous daemon left.
                    self.policy.set_vip_ranges(
                        meta.vip_id,
                        vip.config.address.is_ipv6(),
                        vip.config.source_ranges.as_deref(),
                    )?;
                    // Entries of this VIP the desired state does not name (left by a change
                    // cut short) are retired below with the other leftovers.
                    self.applied.insert(
                        key,
                        AppliedVip {
                            vip_id: meta.vip_id,
                            desired: vip.clone(),
                            backend_ids,
                            region,
                        },
                    );
                }
                _ => {
                    stale.insert(
                        key,
                        Stale {
                            vip_id: meta.vip_id,
                            backend_ids: owned.iter().map(|(id, _)| *id).collect(),
                            region,
                        },
                    );
                }
            }
        }
        let used_backends: BTreeSet<u32> = active.keys().copied().collect();
        self.vip_ids = IdAllocator::with_used(self.vip_ids.capacity(), &used_vips);
        self.backend_ids = IdAllocator::with_used(self.backend_ids.capacity(), &used_backends);
        self.regions = RegionAllocator::with_used(self.regions.capacity(), &used_regions);

        // Active entries no adopted VIP uses: retire them.
        let in_use: BTreeSet<u32> = self
            .applied
            .values()
            .flat_map(|a| a.backend_ids.iter().copied())
            .chain(stale.values().flat_map(|s| s.backend_ids.iter().copied()))
            .collect();
        for id in used_backends.difference(&in_use) {
            self.retire_backend(*id)?;
        }

        let rewritten = stale.len();
        let kept = self.applied.len();
        for (key, old) in stale {
            match desired.vips.get(&key) {
                Some(vip) => {
                    // Written like a new VIP (fresh id, entries and region), switched by the
                    // one update of its VIP entry; the address was counted already.
                    self.apply_vip(key, vip)?;
                    // The VIP moved to a new id: the old id's mirror must not serve it.
                    self.clear_vip_by_id(key, old.vip_id)?;
                    self.release_vip_addr(&key)?;
                    info!(
                        vip = vip.name,
                        "adopted VIP differs from the config: rewritten"
                    );
                }
                None => {
                    self.remove_vip_entry(key, old.vip_id)?;
                    self.release_vip_addr(&key)?;
                    info!(?key, "adopted VIP no longer configured: removed");
                }
            }
            if let Some((offset, len)) = old.region {
                self.regions.free(offset, len);
            }
            for id in old.backend_ids {
                self.retire_backend(id)?;
            }
            self.vip_ids.free(old.vip_id);
        }
        // Source ranges of VIP ids no adopted VIP holds any more (the rewritten VIPs got fresh
        // ids and wrote their ranges under them).
        let live_ids: BTreeSet<u32> = self.applied.values().map(|a| a.vip_id).collect();
        for vip_id in self.policy.vips_with_ranges() {
            if !live_ids.contains(&vip_id) {
                self.policy.clear_vip_ranges(vip_id)?;
            }
        }
        info!(kept, rewritten, "pinned state adopted");
        Ok(rewritten)
    }

    /// The adopted backend ids of `vip`, parallel to its backends, if the maps hold exactly
    /// what applying `vip` would write.
    fn matching_ids(
        &self,
        meta: &VipMeta,
        owned: &[(u32, Backend)],
        vip: &DesiredVip,
    ) -> Result<Option<Vec<u32>>, DataplaneError> {
        let weighted = vip.backends.iter().filter(|b| b.weight > 0).count() as u32;
        if meta.mode != vip.mode
            || meta.backend_count != weighted
            || meta.table_size as usize != vip.table.len()
        {
            return Ok(None);
        }
        let mut ids = Vec::with_capacity(vip.backends.len());
        for backend in &vip.backends {
            let (addr, family) = addr_words(backend.address);
            let found = owned.iter().find(|(id, b)| {
                b.addr == addr && b.family == family && b.mac == backend.mac.0 && !ids.contains(id)
            });
            match found {
                Some((id, _)) => ids.push(*id),
                None => return Ok(None),
            }
        }
        if !vip.table.is_empty() {
            let slots = self
                .slots
                .read(meta.table_offset, meta.table_size as usize)?;
            let expected = vip.table.iter().map(|&i| ids[i as usize]);
            if !slots.iter().copied().eq(expected) {
                return Ok(None);
            }
        }
        Ok(Some(ids))
    }
}
