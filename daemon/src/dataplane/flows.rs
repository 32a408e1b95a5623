//! The flow tables (`XLB_FLOWS`, and `XLB_FLOWS6` for IPv6, each of `limits.flow_table_size`)
//! as user space sees them: entries, capacity and evictions.
//!
//! **Entries.** The kernel keeps no count of an LRU hash map's entries, so they are counted by
//! reading the table in batches (`BPF_MAP_LOOKUP_BATCH`, [`BATCH`] entries a call; the kernel
//! reads a hash bucket whole, under its lock, and goes on bucket by bucket), or key by key
//! (`BPF_MAP_GET_NEXT_KEY`) on a kernel without batch reads. The count is not a snapshot:
//! flows inserted or evicted in buckets not yet read are seen, those in buckets already read
//! are not. A key-by-key walk may also count keys twice (the kernel starts again from the
//! first bucket when the key it stands on was evicted), so the count is capped at the
//! capacity. Counting a full 262,144-entry table costs tens of milliseconds in batches and
//! about half a second key by key (docs/operations.md), so one count is reused for [`MAX_AGE`].
//!
//! **Evictions.** Nor does the kernel count LRU evictions. Nothing but the LRU removes a flow
//! entry (the daemon never deletes one), so evictions are the new keys the datapath added less
//! the entries present. A new flow adds a key unless it was not stored (`flow_not_remembered`),
//! refused (`flow_insert_failed`) or overwrote a key already there (`flow_replaced`). The
//! counters are read just before the walk; flows added during the walk make the figure lag by
//! at most those flows until the next walk. It never decreases (it is a Prometheus counter).

use std::{
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use aya::{
    Pod,
    maps::{HashMap, Map, MapData},
};
use xlb_common::{FlowKey, FlowKey6, FlowValue, LbCounter, PolicyCounter, map_names};

use super::{DataplaneError, map_err, stats::Snapshot};

/// How long a count's figures are reused before the table is counted again.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// Entries read per `BPF_MAP_LOOKUP_BATCH` call; more than any one hash bucket holds.
pub const BATCH: u32 = 8192;

/// What is known of the flow table at one walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowTableView {
    /// Entries counted in the IPv4 table.
    pub entries: u32,
    /// Entries counted in the IPv6 table (`XLB_FLOWS6`, of the same capacity).
    pub entries_v6: u32,
    /// The most entries each table holds (`limits.flow_table_size`).
    pub capacity: u32,
    /// Entries the LRU evicted from both tables since they were created (the datapath's flow
    /// counters do not tell the families apart).
    pub evictions: u64,
}

/// The flow tables and their last walk.
pub struct FlowTable {
    /// `XLB_FLOWS` (an LRU hash map).
    map: Map,
    /// `XLB_FLOWS6` (an LRU hash map).
    map6: Map,
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
    /// Wraps the loaded map (checked to be a hash map of flow keys); `capacity` is its
    /// `max_entries` (`limits.flow_table_size`).
    pub fn new(map: Map, map6: Map, capacity: u32) -> Result<FlowTable, DataplaneError> {
        HashMap::<&MapData, FlowKey, FlowValue>::try_from(&map)
            .map_err(map_err("open", map_names::FLOWS))?;
        HashMap::<&MapData, FlowKey6, FlowValue>::try_from(&map6)
            .map_err(map_err("open", map_names::FLOWS6))?;
        Ok(FlowTable {
            map,
            map6,
            capacity,
            last: None,
        })
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
        let entries_v6 = self.count6()?;
        let previous = self.last.map_or(0, |(_, v)| v.evictions);
        let present = u64::from(entries) + u64::from(entries_v6);
        let view = FlowTableView {
            entries,
            entries_v6,
            capacity: self.capacity,
            evictions: added.saturating_sub(present).max(previous),
        };
        self.last = Some((Instant::now(), view));
        Ok(view)
    }

    /// Counts the IPv4 table's entries now (at most the capacity): in batches, or key by key
    /// when the kernel cannot read this map in batches.
    pub fn count(&self) -> Result<u32, DataplaneError> {
        count_table::<FlowKey>(&self.map, map_names::FLOWS, self.capacity)
    }

    /// Counts the IPv6 table's entries now, as [`FlowTable::count`].
    pub fn count6(&self) -> Result<u32, DataplaneError> {
        count_table::<FlowKey6>(&self.map6, map_names::FLOWS6, self.capacity)
    }

    /// Counts the IPv4 table key by key (`BPF_MAP_GET_NEXT_KEY`), at most the capacity.
    pub fn count_keys(&self) -> Result<u32, DataplaneError> {
        count_keys::<FlowKey>(&self.map, map_names::FLOWS, self.capacity)
    }
}

/// Counts a flow table's entries (at most `capacity`): in batches, or key by key when the
/// kernel cannot read this map in batches.
fn count_table<K: Pod + Default>(
    map: &Map,
    name: &'static str,
    capacity: u32,
) -> Result<u32, DataplaneError> {
    let count = match count_batched::<K>(map, capacity) {
        Ok(count) => count,
        Err(error)
            if matches!(
                error.raw_os_error(),
                // ENOTSUPP (524): the kernel's own code for an unsupported command.
                Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
            ) =>
        {
            count_keys::<K>(map, name, capacity)?
        }
        Err(source) => {
            return Err(DataplaneError::Map {
                op: "read in batches",
                map: name,
                source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error: source,
                })),
            });
        }
    };
    Ok(count.min(capacity))
}

/// Counts key by key (`BPF_MAP_GET_NEXT_KEY`), at most `capacity`.
fn count_keys<K: Pod>(map: &Map, name: &'static str, capacity: u32) -> Result<u32, DataplaneError> {
    let map = HashMap::<&MapData, K, FlowValue>::try_from(map).map_err(map_err("open", name))?;
    let mut count = 0u32;
    for key in map.keys().take(capacity as usize) {
        key.map_err(map_err("walk", name))?;
        count += 1;
    }
    Ok(count)
}

/// Counts with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6): keys and values land in buffers that are
/// only counted, [`BATCH`] at a time.
fn count_batched<K: Pod + Default>(map: &Map, capacity: u32) -> std::io::Result<u32> {
    let fd = match map {
        Map::LruHashMap(data) | Map::HashMap(data) => data.fd().as_fd().as_raw_fd(),
        _ => return Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let mut keys = vec![K::default(); BATCH as usize];
    let mut values = vec![FlowValue::default(); BATCH as usize];
    // The hash map's batch cursor is a bucket index (u32).
    let mut cursor: Option<u32> = None;
    let mut next = 0u32;
    let mut total = 0u32;
    loop {
        let mut attr = BatchAttr {
            // No cursor: from the first bucket.
            in_batch: cursor.as_ref().map_or(0, |c| std::ptr::from_ref(c) as u64),
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is the kernel's `bpf_attr.batch` layout (repr(C), zero padding
        // none), passed with its size; the key and value buffers hold `count` (BATCH)
        // entries of the map's key and value sizes, and the cursors are live u32s.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let error = (result < 0).then(std::io::Error::last_os_error);
        // On success and at the end (ENOENT) `count` is what was read.
        match &error {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Some(_) => return Err(error.expect("an error")),
        }
        total = total.saturating_add(attr.count);
        if error.is_some() || total >= capacity {
            return Ok(total);
        }
        cursor = Some(next);
    }
}

/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of the kernel's `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_added_leave_out_replaced_refused_and_unremembered_flows() {
        let counters = Snapshot {
            lb: vec![
                ("flow_new".into(), 100),
                ("flow_replaced".into(), 10),
                ("flow_insert_failed".into(), 2),
            ],
            policy: vec![("flow_not_remembered".into(), 3)],
            ..Snapshot::default()
        };
        assert_eq!(keys_added(&counters), 85);
        // Counters read mid-update never make it wrap.
        let odd = Snapshot {
            lb: vec![("flow_new".into(), 1), ("flow_replaced".into(), 2)],
            ..Snapshot::default()
        };
        assert_eq!(keys_added(&odd), 0);
    }
}
