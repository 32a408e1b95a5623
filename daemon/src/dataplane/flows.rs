//! The flow tables as user space sees them: entries and capacity, and their upkeep by
//! [`FlowSweeper`].
//!
//! **IPv4: sets, kept by the datapath.** `XLB_FLOW_SETS` is an array of sets of
//! [`xlb_common::FLOW_WAYS`] slots, with [`xlb_common::FLOW_SLOTS_PER_FLOW`] slots per flow of
//! `limits.flow_table_size`. A flow's hash picks its set; a lookup compares the set's keys and
//! an insert takes the set's first free slot, or the one seen least recently
//! (`flow_displaced`), all within the set's two cache lines. Against the preallocated hash map
//! it replaces (a bucket, a chain of elements and a free-list pop under the bucket's lock per
//! new flow), a new flow costs 4.01 times the floor program instead of 5.51, and one
//! established flow 1.80 instead of 2.14 (`perf/results/2026-11-26`); 10,000 flows spread over
//! a large, nearly empty table cost more (each set on a page of its own). The price: a flow can lose its slot while the table is not full, when four newer
//! flows of its set are all more recent; its next packet is balanced again by the Maglev table
//! (the same backend unless the VIP's backends changed since) and remembered again. The map
//! is memory-mapped: `xlbd` counts and expires the slots reading the memory directly, a word
//! at a time with atomic loads and a compare-and-swap, as the datapath writes it.
//!
//! **IPv6: a hash map, kept by the daemon.** `XLB_FLOWS6` is a preallocated hash map (an
//! insert pops a per-CPU free list; an LRU map would rotate its lists and evict on the packet
//! path). Nothing evicts there: the sweeper does, in batches, off the packet path.
//!
//! The upkeep, by the sweeper thread:
//! - **Clock.** Every second the sweeper writes the seconds of `CLOCK_MONOTONIC` to
//!   `XLB_CLOCK`; the datapath stamps a flow's entry with it at each packet
//!   (`FlowValue::seen_s`, written only when it changed).
//! - **Expiry.** Every [`SWEEP_INTERVAL`] (or [`SWEEP_DUTY`] times the last sweep's duration,
//!   whichever is longer, so a huge table costs at most a twentieth of a CPU) the sweeper
//!   empties the IPv4 slots and deletes the IPv6 entries idle for longer than
//!   `limits.flow_idle_timeout`. The IPv6 table is read in batches, one batch in memory at a
//!   time.
//! - **Pressure (IPv6).** When more than [`HIGH_WATER_PERCENT`] of the IPv6 table is still in
//!   use, it also deletes the least recently seen entries down to [`LOW_WATER_PERCENT`]: the
//!   LRU's order, at a second's resolution, without its cost per packet. A table that fills up
//!   between two sweeps refuses new keys: those flows are still balanced by the Maglev table,
//!   just not remembered (`flow_insert_failed`), and established flows keep their entries.
//!
//! A flow removed while idle loses nothing unless its VIP's backends changed meanwhile: its
//! next packet asks the Maglev table again, which names the same backend for an unchanged
//! set. A packet racing with the removal of its entry (read as idle just before) is balanced
//! the same way. With no `xlbd` running nothing is removed, and the clock stands still.
//!
//! **Entries.** The IPv4 count is a pass over the mapped sets (about a millisecond for the
//! default table). The kernel keeps no count of a hash map's entries, so the IPv6 table is
//! counted by reading it in batches (`BPF_MAP_LOOKUP_BATCH`, [`BATCH`] entries a call; the
//! kernel reads a hash bucket whole, under its lock, and goes on bucket by bucket), or key by
//! key (`BPF_MAP_GET_NEXT_KEY`) on a kernel without batch reads. Neither count is a snapshot:
//! flows inserted or removed where the pass has not yet been are seen, the others are not. A
//! key-by-key walk may also count keys twice (the kernel starts again from the first bucket
//! when the key it stands on was removed), so that count is capped at the capacity. One count
//! is reused for [`MAX_AGE`].

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::{
    Pod,
    maps::{Array, HashMap, Map, MapData},
};
use tracing::{info, warn};
use xlb_common::{FlowKey, FlowKey6, FlowSet, FlowSlot, FlowValue, map_names};

use super::{DataplaneError, map_err, slots::Mapped};

/// How long a count's figures are reused before the table is counted again.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// Entries read per `BPF_MAP_LOOKUP_BATCH` call; more than any one hash bucket holds.
pub const BATCH: u32 = 8192;

/// How often the sweeper reads the tables to remove idle entries (and the oldest, when full).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// The sweeper waits at least this many times as long as its last sweep took before the next.
pub const SWEEP_DUTY: u32 = 20;

/// Share of the IPv6 table in use (after expiry) above which the oldest entries are removed.
pub const HIGH_WATER_PERCENT: u64 = 90;

/// Share of the IPv6 table in use that removing the oldest entries brings it down to.
pub const LOW_WATER_PERCENT: u64 = 80;

/// What is known of the flow table at one walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowTableView {
    /// Flows counted in the IPv4 table (slots in use).
    pub entries: u32,
    /// Entries counted in the IPv6 table (`XLB_FLOWS6`).
    pub entries_v6: u32,
    /// The flows each table is sized for (`limits.flow_table_size`): the IPv6 table's most
    /// entries.
    pub capacity: u32,
    /// Slots of the IPv4 table ([`xlb_common::FLOW_SLOTS_PER_FLOW`] per flow of the capacity).
    pub slots: u32,
    /// Entries of both tables removed for being idle longer than `limits.flow_idle_timeout`.
    pub expired: u64,
    /// IPv6 entries removed, oldest first, to make room in a table above
    /// [`HIGH_WATER_PERCENT`].
    pub evicted: u64,
}

/// What the sweeper found, shared with [`FlowTable::view`]: the entries it removed since the
/// tables were created by this process, and the entries its last sweep left.
#[derive(Debug, Default)]
pub struct SweepTotals {
    expired: AtomicU64,
    evicted: AtomicU64,
    /// When the last sweep ended, and the entries it left in each table: a count the view
    /// takes instead of reading the tables again.
    last: std::sync::Mutex<Option<(Instant, u32, u32)>>,
}

/// `XLB_FLOW_SETS`, memory-mapped. The datapath writes the same memory at any time, so every
/// access is an atomic load or compare-and-swap of a whole 8-byte word, never a reference to
/// a slot.
pub struct FlowSets {
    mapped: Mapped<FlowSet>,
}

/// 8-byte words of a slot.
const SLOT_WORDS: usize = size_of::<FlowSlot>() / 8;
/// The slot word holding the key's protocol (0: the slot is free), and its byte in the word.
const PROTO_WORD: usize = std::mem::offset_of!(FlowKey, proto) / 8;
const PROTO_BYTE: usize = std::mem::offset_of!(FlowKey, proto) % 8;

impl FlowSets {
    /// Maps the `sets` sets of the array behind `map`.
    pub fn new(map: MapData, sets: u32) -> Result<FlowSets, DataplaneError> {
        Ok(FlowSets {
            mapped: Mapped::new(map, map_names::FLOWS, sets)?,
        })
    }

    /// Slots in the table.
    pub fn slots(&self) -> u32 {
        (self.mapped.as_words().len() / SLOT_WORDS) as u32
    }

    /// Every slot, in order, to `each`: a copy of it, and its key word (the one holding the
    /// protocol) with the value read, for [`FlowSets::empty_if_unchanged`].
    fn for_each(&self, mut each: impl FnMut(&AtomicU64, u64, FlowSlot)) {
        for words in self.mapped.as_words().chunks_exact(SLOT_WORDS) {
            let read: [u64; SLOT_WORDS] = std::array::from_fn(|i| words[i].load(Ordering::Relaxed));
            let mut bytes = [0u8; size_of::<FlowSlot>()];
            for (chunk, word) in bytes.chunks_exact_mut(8).zip(read) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            // SAFETY: FlowSlot is Pod (repr(C), integers only, no padding) and `bytes` holds
            // exactly its size; read_unaligned has no alignment requirement.
            let slot = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowSlot>()) };
            each(&words[PROTO_WORD], read[PROTO_WORD], slot);
        }
    }

    /// Frees a slot by clearing its protocol byte in its key word, read as `read`, unless the
    /// datapath wrote that word since (a new flow took the slot): then the slot is left alone.
    fn empty_if_unchanged(word: &AtomicU64, read: u64) -> bool {
        let mut bytes = read.to_ne_bytes();
        bytes[PROTO_BYTE] = 0;
        word.compare_exchange(
            read,
            u64::from_ne_bytes(bytes),
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .is_ok()
    }

    /// Slots in use now.
    pub fn count(&self) -> u32 {
        let mut count = 0;
        self.for_each(|_, _, slot| count += u32::from(slot.key.proto != 0));
        count
    }

    /// Frees the slots idle at `now_s` for longer than `idle_timeout_s`: (slots left in use,
    /// slots freed).
    fn expire(&self, now_s: u32, idle_timeout_s: u32) -> (u32, u32) {
        let (mut kept, mut expired) = (0, 0);
        self.for_each(|key_word, read, slot| {
            if slot.key.proto == 0 {
                return;
            }
            if is_idle(slot.value.seen_s, now_s, idle_timeout_s)
                && Self::empty_if_unchanged(key_word, read)
            {
                expired += 1;
            } else {
                kept += 1;
            }
        });
        (kept, expired)
    }
}

/// The flow tables and their last walk.
pub struct FlowTable {
    /// `XLB_FLOW_SETS`, mapped.
    sets: FlowSets,
    /// `XLB_FLOWS6` (a hash map).
    map6: Map,
    /// `XLB_CLOCK` (an array of one `u32`).
    clock: Map,
    capacity: u32,
    totals: Arc<SweepTotals>,
    last: Option<(Instant, FlowTableView)>,
}

impl FlowTable {
    /// Wraps the loaded maps (the sets an array, mapped here; the IPv6 table a hash map of
    /// flow keys; the clock an array); `capacity` is `limits.flow_table_size`, the flows each
    /// table is sized for.
    pub fn new(
        sets: Map,
        map6: Map,
        clock: Map,
        capacity: u32,
    ) -> Result<FlowTable, DataplaneError> {
        let Map::Array(sets) = sets else {
            return Err(DataplaneError::Missing(map_names::FLOWS));
        };
        let sets = FlowSets::new(sets, xlb_common::flow_sets(capacity))?;
        HashMap::<&MapData, FlowKey6, FlowValue>::try_from(&map6)
            .map_err(map_err("open", map_names::FLOWS6))?;
        if !matches!(clock, Map::Array(_)) {
            return Err(DataplaneError::Missing(map_names::CLOCK));
        }
        Ok(FlowTable {
            sets,
            map6,
            clock,
            capacity,
            totals: Arc::default(),
            last: None,
        })
    }

    /// The table's figures, from a count at most [`MAX_AGE`] old: the sweeper's last pass when
    /// a sweeper runs (it reads the tables every [`SWEEP_INTERVAL`] anyway), else a count of
    /// its own.
    pub fn view(&mut self) -> Result<FlowTableView, DataplaneError> {
        if let Some((at, view)) = self.last
            && at.elapsed() < MAX_AGE
        {
            return Ok(view);
        }
        let swept = *self.totals.last.lock().unwrap_or_else(|e| e.into_inner());
        let (entries, entries_v6) = match swept {
            Some((at, entries, entries_v6)) if at.elapsed() < MAX_AGE => (entries, entries_v6),
            _ => (self.count()?, self.count6()?),
        };
        let view = FlowTableView {
            entries,
            entries_v6,
            capacity: self.capacity,
            slots: self.sets.slots(),
            expired: self.totals.expired.load(Ordering::Relaxed),
            evicted: self.totals.evicted.load(Ordering::Relaxed),
        };
        self.last = Some((Instant::now(), view));
        Ok(view)
    }

    /// Counts the IPv4 table's flows now (slots in use).
    pub fn count(&self) -> Result<u32, DataplaneError> {
        Ok(self.sets.count())
    }

    /// Counts the IPv6 table's entries now (at most the capacity): in batches, or key by key
    /// when the kernel cannot read this map in batches.
    pub fn count6(&self) -> Result<u32, DataplaneError> {
        count_table::<FlowKey6>(&self.map6, map_names::FLOWS6, self.capacity)
    }

    /// Counts the IPv6 table key by key (`BPF_MAP_GET_NEXT_KEY`), at most the capacity.
    pub fn count6_keys(&self) -> Result<u32, DataplaneError> {
        count_keys::<FlowKey6>(&self.map6, map_names::FLOWS6, self.capacity)
    }

    /// A sweeper of these tables (its own descriptors of the maps) that removes entries idle
    /// for more than `idle_timeout_s` seconds; its removals add to this table's figures.
    pub fn sweeper(&self, idle_timeout_s: u32) -> Result<FlowSweeper, DataplaneError> {
        let dup_data = |data: &MapData, name: &'static str| {
            data.fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| syscall_error("duplicate the descriptor of", name, source))
        };
        let dup = |map: &Map, name: &'static str| match map {
            Map::HashMap(data) | Map::LruHashMap(data) | Map::Array(data) => dup_data(data, name),
            _ => Err(DataplaneError::Missing(name)),
        };
        let sets = MapData::from_fd(dup_data(self.sets.mapped.map(), map_names::FLOWS)?)
            .map_err(map_err("open", map_names::FLOWS))?;
        Ok(FlowSweeper {
            v4: FlowSets::new(sets, xlb_common::flow_sets(self.capacity))?,
            v6: dup(&self.map6, map_names::FLOWS6)?,
            clock: Array::try_from(Map::Array(
                MapData::from_fd(dup(&self.clock, map_names::CLOCK)?)
                    .map_err(map_err("open", map_names::CLOCK))?,
            ))
            .map_err(map_err("open", map_names::CLOCK))?,
            capacity: self.capacity,
            idle_timeout_s,
            totals: Arc::clone(&self.totals),
        })
    }
}

/// Keeps the flow tables: the datapath clock, idle expiry, and room under pressure (see the
/// module's documentation). [`FlowSweeper::spawn`] runs it on a thread of its own; tests
/// drive it with a clock of their own.
pub struct FlowSweeper {
    v4: FlowSets,
    v6: OwnedFd,
    clock: Array<MapData, u32>,
    capacity: u32,
    idle_timeout_s: u32,
    totals: Arc<SweepTotals>,
}

/// What one sweep did, over both tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// IPv4 slots in use after the sweep.
    pub entries: u32,
    /// Entries in the IPv6 table after the sweep.
    pub entries_v6: u32,
    /// Entries (of both tables) removed for being idle.
    pub expired: u32,
    /// IPv6 entries removed, oldest first, to bring the table under the high-water mark.
    pub evicted: u32,
}

impl FlowSweeper {
    /// Writes the datapath clock (`XLB_CLOCK`): the time flow entries are stamped with.
    pub fn set_clock(&mut self, now_s: u32) -> Result<(), DataplaneError> {
        self.clock
            .set(0, now_s, 0)
            .map_err(map_err("update", map_names::CLOCK))
    }

    /// Removes, in both tables, the entries idle at `now_s` for longer than the idle timeout,
    /// and then the oldest entries of the IPv6 table if it is still above the high-water mark.
    pub fn sweep(&self, now_s: u32) -> Result<SweepReport, DataplaneError> {
        let (entries, expired) = self.v4.expire(now_s, self.idle_timeout_s);
        let (entries_v6, expired6, evicted) =
            self.sweep_table::<FlowKey6>(&self.v6, map_names::FLOWS6, now_s)?;
        let report = SweepReport {
            entries,
            entries_v6,
            expired: expired + expired6,
            evicted,
        };
        self.totals
            .expired
            .fetch_add(u64::from(report.expired), Ordering::Relaxed);
        self.totals
            .evicted
            .fetch_add(u64::from(report.evicted), Ordering::Relaxed);
        *self.totals.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), report.entries, report.entries_v6));
        Ok(report)
    }

    /// The IPv6 table: (entries left, expired, evicted). Streams the table batch by batch, so its
    /// memory does not grow with the table: a first pass deletes the idle entries of each batch
    /// as it is read and counts the rest by the second they were last seen; if more than the
    /// high-water mark remain, a second pass deletes the least recently seen, as the counts
    /// say, down to the low-water mark.
    fn sweep_table<K: Pod + Default>(
        &self,
        fd: &OwnedFd,
        name: &'static str,
        now_s: u32,
    ) -> Result<(u32, u32, u32), DataplaneError> {
        let fd = fd.as_raw_fd();
        let failed = |source| syscall_error("sweep (read and delete in batches)", name, source);
        let mut by_second: BTreeMap<u32, u64> = BTreeMap::new();
        let mut kept = 0u64;
        let expired = delete_where::<K>(fd, |value| {
            if is_idle(value.seen_s, now_s, self.idle_timeout_s) {
                return true;
            }
            kept += 1;
            *by_second.entry(value.seen_s).or_default() += 1;
            false
        })
        .map_err(failed)?;
        let Some(cutoff) = eviction_cutoff(&by_second, kept, self.capacity) else {
            return Ok((kept as u32, expired, 0));
        };
        let mut quota = cutoff.at_cutoff;
        let evicted = delete_where::<K>(fd, |value| {
            if value.seen_s == cutoff.seen_s && quota > 0 {
                quota -= 1;
                return true;
            }
            value.seen_s < cutoff.seen_s
        })
        .map_err(failed)?;
        Ok(((kept as u32).saturating_sub(evicted), expired, evicted))
    }

    /// Runs the sweeper on a thread of its own: the clock every second, a sweep every
    /// [`SWEEP_INTERVAL`] (or [`SWEEP_DUTY`] times as long as the last sweep took, for a huge
    /// table: at most one CPU in 20 goes to sweeping), until the returned handle is dropped.
    pub fn spawn(self) -> std::io::Result<SweeperThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("xlb-flow-sweep".to_owned())
            .spawn(move || {
                let mut sweeper = self;
                sweeper.run(&stopped);
            })?;
        Ok(SweeperThread {
            stop,
            handle: Some(handle),
        })
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut next_sweep = Instant::now();
        let mut failing = false;
        while !stop.load(Ordering::Relaxed) {
            let now_s = monotonic_seconds();
            let result = self.set_clock(now_s).and_then(|()| {
                if Instant::now() < next_sweep {
                    return Ok(None);
                }
                let started = Instant::now();
                let report = self.sweep(now_s);
                next_sweep = Instant::now() + SWEEP_INTERVAL.max(started.elapsed() * SWEEP_DUTY);
                report.map(Some)
            });
            match result {
                Ok(Some(report)) => {
                    failing = false;
                    if report.evicted > 0 {
                        info!(
                            evicted = report.evicted,
                            expired = report.expired,
                            entries = report.entries,
                            entries_v6 = report.entries_v6,
                            capacity = self.capacity,
                            "IPv6 flow table above {HIGH_WATER_PERCENT}%: removed the least recently \
                             seen flows (raise limits.flow_table_size if this recurs)"
                        );
                    }
                }
                Ok(None) => failing = false,
                // Said once per run of failures, not every second.
                Err(error) if !failing => {
                    failing = true;
                    warn!(%error, "flow table upkeep failed; flows are still balanced");
                }
                Err(_) => {}
            }
            std::thread::park_timeout(Duration::from_secs(1));
        }
    }
}

/// The sweeper's thread; dropping it stops the thread (at once) and waits for it.
pub struct SweeperThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for SweeperThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

/// Seconds of `CLOCK_MONOTONIC` (since boot, the same for every process, so a restarted
/// `xlbd` goes on with the stamps of the entries it adopts); never 0, which means "no clock".
pub fn monotonic_seconds() -> u32 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u32).max(1)
}

/// Whether an entry last seen at `seen_s` is idle at `now_s` for longer than `idle_timeout_s`.
/// An entry stamped later than `now_s` (the clock written by another process an instant
/// before) counts as seen now; one never stamped (0: no clock was running) is as old as the
/// clock.
pub fn is_idle(seen_s: u32, now_s: u32, idle_timeout_s: u32) -> bool {
    now_s.saturating_sub(seen_s) > idle_timeout_s
}

/// Which entries the pressure pass removes: every entry last seen before `seen_s`, and
/// `at_cutoff` of those last seen at `seen_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoff {
    /// The second before which every entry goes.
    pub seen_s: u32,
    /// How many of the entries last seen at `seen_s` go too (the first met).
    pub at_cutoff: u64,
}

/// The pressure pass for a table of `capacity` holding `kept` entries (after expiry), counted
/// by the second they were last seen in `by_second`: none while at most
/// [`HIGH_WATER_PERCENT`] of the capacity is in use, else the least recently seen down to
/// [`LOW_WATER_PERCENT`].
pub fn eviction_cutoff(by_second: &BTreeMap<u32, u64>, kept: u64, capacity: u32) -> Option<Cutoff> {
    let high = u64::from(capacity) * HIGH_WATER_PERCENT / 100;
    let low = u64::from(capacity) * LOW_WATER_PERCENT / 100;
    if kept <= high {
        return None;
    }
    let mut to_remove = kept - low;
    for (&seen_s, &count) in by_second {
        if count > to_remove {
            return Some(Cutoff {
                seen_s,
                at_cutoff: to_remove,
            });
        }
        to_remove -= count;
        if to_remove == 0 {
            return Some(Cutoff {
                seen_s: seen_s.saturating_add(1),
                at_cutoff: 0,
            });
        }
    }
    // The counts add up to less than `kept` (they cannot): remove everything counted.
    Some(Cutoff {
        seen_s: u32::MAX,
        at_cutoff: 0,
    })
}

fn syscall_error(op: &'static str, map: &'static str, source: std::io::Error) -> DataplaneError {
    DataplaneError::Map {
        op,
        map,
        source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf",
            io_error: source,
        })),
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

/// Counts with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6), stopping at `capacity`.
fn count_batched<K: Pod + Default>(map: &Map, capacity: u32) -> std::io::Result<u32> {
    let fd = match map {
        Map::LruHashMap(data) | Map::HashMap(data) => data.fd().as_fd().as_raw_fd(),
        _ => return Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let mut total = 0u32;
    read_batches::<K>(fd, |keys, _| {
        total = total.saturating_add(keys.len() as u32);
        total < capacity
    })?;
    Ok(total)
}

/// Reads a flow table with `BPF_MAP_LOOKUP_BATCH`, [`BATCH`] entries a call, handing each
/// batch to `each` until the table ends or `each` returns false.
fn read_batches<K: Pod + Default>(
    fd: libc::c_int,
    mut each: impl FnMut(&[K], &[FlowValue]) -> bool,
) -> std::io::Result<()> {
    let mut keys = vec![K::default(); BATCH as usize];
    let mut values = vec![FlowValue::default(); BATCH as usize];
    // The hash map's batch cursor is a bucket index (u32).
    let mut cursor: Option<u32> = None;
    let mut next = 0u32;
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
        // SAFETY: `attr` is the kernel's `bpf_attr.batch` layout (repr(C), no padding); the
        // key and value buffers hold `count` (BATCH) entries of the map's key and value
        // sizes, and the cursors are live u32s.
        let result = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        // On success and at the end (ENOENT) `count` is what was read.
        let at_end = match result {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        let read = (attr.count as usize).min(keys.len());
        if !each(&keys[..read], &values[..read]) || at_end {
            return Ok(());
        }
        cursor = Some(next);
    }
}

/// Reads a flow table in batches and deletes, batch by batch, the entries whose value `doomed`
/// picks (it sees every entry once, in the order read); returns how many were deleted.
fn delete_where<K: Pod + Default>(
    fd: libc::c_int,
    mut doomed: impl FnMut(&FlowValue) -> bool,
) -> std::io::Result<u32> {
    let mut batch: Vec<K> = Vec::new();
    let mut deleted = 0u32;
    let mut failure = None;
    read_batches::<K>(fd, |keys, values| {
        batch.clear();
        batch.extend(
            keys.iter()
                .zip(values)
                .filter(|(_, value)| doomed(value))
                .map(|(key, _)| *key),
        );
        match delete_keys(fd, &batch) {
            Ok(count) => {
                deleted += count;
                true
            }
            Err(error) => {
                failure = Some(error);
                false
            }
        }
    })?;
    failure.map_or(Ok(deleted), Err)
}

/// Deletes `keys` from a flow table (`BPF_MAP_DELETE_BATCH`, or key by key on a kernel
/// without it); returns how many were deleted. A key already gone (the datapath cannot delete,
/// but a second `xlbd` sweeping the same pins can) is skipped.
fn delete_keys<K: Pod>(fd: libc::c_int, keys: &[K]) -> std::io::Result<u32> {
    let mut deleted = 0u32;
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: rest.as_ptr() as u64,
            values: 0,
            count: rest.len().min(u32::MAX as usize) as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is the kernel's `bpf_attr.batch` layout; the key buffer holds
        // `count` keys of the map's key size and outlives the call, which only reads it.
        let result = unsafe { bpf(BPF_MAP_DELETE_BATCH, &mut attr) };
        // On an error `count` is the keys deleted before the one that failed.
        let done = (attr.count as usize).min(rest.len());
        deleted += done as u32;
        let Err(error) = result else {
            rest = &rest[done..];
            continue;
        };
        match error.raw_os_error() {
            Some(libc::ENOENT) => rest = &rest[done + 1..],
            // ENOTSUPP (524): the kernel's own code for an unsupported command.
            Some(libc::EINVAL | libc::EOPNOTSUPP | 524) if done == 0 => {
                return Ok(deleted + delete_one_by_one(fd, rest)?);
            }
            _ => return Err(error),
        }
    }
    Ok(deleted)
}

/// Deletes keys one `BPF_MAP_DELETE_ELEM` at a time; keys already gone are skipped.
fn delete_one_by_one<K: Pod>(fd: libc::c_int, keys: &[K]) -> std::io::Result<u32> {
    let mut deleted = 0;
    for key in keys {
        let mut attr = ElemAttr {
            map_fd: fd as u32,
            _pad: 0,
            key: std::ptr::from_ref(key) as u64,
            value: 0,
            flags: 0,
        };
        // SAFETY: `attr` is the kernel's `bpf_attr` layout for element commands; the key is
        // a live value of the map's key size.
        match unsafe { bpf(BPF_MAP_DELETE_ELEM, &mut attr) } {
            Ok(()) => deleted += 1,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(deleted)
}

/// Calls `bpf(cmd, attr, size_of(attr))`.
///
/// # Safety
/// `attr` must be the kernel's `union bpf_attr` member for `cmd`, and every address in it
/// must point at live memory of the sizes the map and the command ask for, writable where the
/// kernel writes.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<()> {
    // SAFETY: the caller's contract; the size passed is the attribute's own.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `BPF_MAP_DELETE_ELEM` (include/uapi/linux/bpf.h).
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
/// `BPF_MAP_DELETE_BATCH`.
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The element-command members of the kernel's `union bpf_attr` (`map_fd`, `key`, `value`,
/// `flags`; `key` is 8-byte aligned, hence the padding word).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
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
    fn idle_entries_expire_and_fresh_ones_stay() {
        // Timeout 300 s at 1000 s: seen at 699 is 301 s idle, 700 is exactly 300 (kept).
        assert!(is_idle(699, 1000, 300));
        assert!(!is_idle(700, 1000, 300));
        assert!(!is_idle(1000, 1000, 300));
        assert!(is_idle(0, 1000, 300), "never stamped: as old as the clock");
        assert!(
            !is_idle(2000, 1000, 300),
            "stamped ahead of the clock: seen now"
        );
    }

    fn counts(pairs: &[(u32, u64)]) -> BTreeMap<u32, u64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn a_table_at_or_below_high_water_loses_nothing() {
        // Capacity 20: high water 18.
        assert_eq!(eviction_cutoff(&counts(&[(100, 18)]), 18, 20), None);
        assert_eq!(eviction_cutoff(&BTreeMap::new(), 0, 20), None);
    }

    #[test]
    fn a_table_above_high_water_loses_its_oldest_down_to_low_water() {
        // Capacity 20: high water 18, low water 16. 19 entries: 3 must go. One seen at 100, two
        // at 101, the rest later: all before 102 go, none at 102.
        let by_second = counts(&[(100, 1), (101, 2), (102, 4), (110, 12)]);
        assert_eq!(
            eviction_cutoff(&by_second, 19, 20),
            Some(Cutoff {
                seen_s: 102,
                at_cutoff: 0
            })
        );
        // Ties: 19 entries, 10 seen at 100: 3 of those go, and nothing seen later.
        let by_second = counts(&[(100, 10), (101, 9)]);
        assert_eq!(
            eviction_cutoff(&by_second, 19, 20),
            Some(Cutoff {
                seen_s: 100,
                at_cutoff: 3
            })
        );
    }

    #[test]
    fn the_fixture_case_evicts_183_of_the_oldest() {
        // tests/tests/fixtures.rs: 1002 entries in a table of 1024 (high 921, low 819), 502
        // seen at 1200 and 500 at 1400: 183 of those seen at 1200 go.
        let by_second = counts(&[(1200, 502), (1400, 500)]);
        assert_eq!(
            eviction_cutoff(&by_second, 1002, 1024),
            Some(Cutoff {
                seen_s: 1200,
                at_cutoff: 183
            })
        );
    }

    #[test]
    fn the_clock_is_never_zero() {
        assert!(monotonic_seconds() >= 1);
    }
}
