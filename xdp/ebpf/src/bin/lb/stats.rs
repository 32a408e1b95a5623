//! Per-CPU counters. No atomics are needed: each CPU writes only its own copy.

use aya_ebpf::maps::PerCpuArray;
use xlb_common::{Counter, DropReason, LbCounter};

use crate::maps::{STATS_ACTIONS, STATS_BACKENDS, STATS_DROPS, STATS_LB, STATS_VIPS};

#[inline(always)]
fn add(map: &PerCpuArray<Counter>, index: u32, bytes: usize) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful lookup of this CPU's slot, which only this
        // program on this CPU writes.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes as u64;
        }
    }
}

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(count) = map.get_ptr_mut(index) {
        // SAFETY: as in `add`: this CPU's own slot.
        unsafe { *count += 1 };
    }
}

/// Counts a packet under the XDP action it ended with.
#[inline(always)]
pub fn action(action: u32, bytes: usize) {
    add(&STATS_ACTIONS, action, bytes);
}

/// Counts a dropped packet under its reason.
#[inline(always)]
pub fn drop(reason: DropReason) {
    bump(&STATS_DROPS, reason as u32);
}

/// Counts a load-balancing event.
#[inline(always)]
pub fn lb(event: LbCounter) {
    bump(&STATS_LB, event as u32);
}

/// Counts a packet forwarded for a VIP to a backend.
#[inline(always)]
pub fn forwarded(vip_id: u32, backend_id: u32, bytes: usize) {
    add(&STATS_VIPS, vip_id, bytes);
    add(&STATS_BACKENDS, backend_id, bytes);
}
