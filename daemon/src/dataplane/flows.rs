//! The flow table (`XLB_FLOWS`) as user space sees it: entries, capacity and evictions.
//!
//! **Entries.** The kernel keeps no count of an LRU hash map's entries, so they are counted by
//! walking the keys (one `BPF_MAP_GET_NEXT_KEY` call each). The walk is not atomic: flows
//! inserted or evicted during it may be missed, and when the key the walk stands on is evicted
//! the kernel starts again from the first bucket, so some keys may be counted twice; the count
//! is capped at the capacity. A walk of a full 262,144-entry table takes a fraction of a second
//! (docs/operations.md), so one is reused for [`MAX_AGE`].
//!
//! **Evictions.** Nor does the kernel count LRU evictions. Nothing but the LRU removes a flow
//! entry (the daemon never deletes one), so evictions are the new keys the datapath added less
//! the entries present. A new flow adds a key unless it was not stored (`flow_not_remembered`),
//! refused (`flow_insert_failed`) or overwrote a key already there (`flow_replaced`). The
//! counters are read just before the walk; flows added during the walk make the figure lag by
//! at most those flows until the next walk. It never decreases (it is a Prometheus counter).

use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData};
use xlb_common::{FlowKey, FlowValue, LbCounter, PolicyCounter, map_names};

use super::{DataplaneError, map_err, stats::Snapshot};

/// How long a walk's figures are reused before the table is walked again.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// What is known of the flow table at one walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowTableView {
    /// Entries counted.
    pub entries: u32,
    /// The most entries the table holds (`limits.flow_table_size`).
    pub capacity: u32,
    /// Entries the LRU evicted since the table was created.
    pub evictions: u64,
}

/// The flow table and its last walk.
pub struct FlowTable {
    map: HashMap<MapData, FlowKey, FlowValue>,
    capacity: u32,
    last: Option<(Instant, FlowTableView)>,
}

/// Keys the datapath added to the flow table, by its counters.
pub fn keys_added(counters: &Snapshot) -> u64 {
    counters
        .lb_count(LbCounter::FlowNew)
        .saturating_sub(counters.lb_count(LbCounter::FlowReplaced))
        .saturating_sub(counters.lb_count(LbCounter::FlowInsertFailed))
        .saturating_sub(counters.policy_count(PolicyCounter::FlowNotRemembered))
}

impl FlowTable {
    /// Wraps the loaded map; `capacity` is its `max_entries` (`limits.flow_table_size`).
    pub fn new(map: HashMap<MapData, FlowKey, FlowValue>, capacity: u32) -> FlowTable {
        FlowTable {
            map,
            capacity,
            last: None,
        }
    }

    /// The table's figures, from a walk at most [`MAX_AGE`] old; `counters` reads the
    /// datapath's counters (called only when the table is walked again).
    pub fn view(
        &mut self,
        counters: impl FnOnce() -> Result<Snapshot, DataplaneError>,
    ) -> Result<FlowTableView, DataplaneError> {
        if let Some((at, view)) = self.last
            && at.elapsed() < MAX_AGE
        {
            return Ok(view);
        }
        let added = keys_added(&counters()?);
        let entries = self.count()?;
        let previous = self.last.map_or(0, |(_, v)| v.evictions);
        let view = FlowTableView {
            entries,
            capacity: self.capacity,
            evictions: added.saturating_sub(u64::from(entries)).max(previous),
        };
        self.last = Some((Instant::now(), view));
        Ok(view)
    }

    /// Walks the table now and counts its keys (at most the capacity).
    pub fn count(&self) -> Result<u32, DataplaneError> {
        let mut count = 0u32;
        for key in self.map.keys().take(self.capacity as usize) {
            key.map_err(map_err("walk", map_names::FLOWS))?;
            count += 1;
        }
        Ok(count)
    }
}
