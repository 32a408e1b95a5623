//! Allocation of datapath resources: ids (VIPs, backends) and regions of the flat Maglev slot
//! array. Freed resources are quarantined until the next change, so a packet that read an old
//! VIP entry just before a switch never finds its region or backend id reused under it.

use std::collections::{BTreeMap, VecDeque};

/// Hands out ids below a capacity; freed ids come back last-in-last-out after quarantine.
#[derive(Debug)]
pub struct IdAllocator {
    capacity: u32,
    next_fresh: u32,
    free: VecDeque<u32>,
    quarantine: Vec<u32>,
}

impl IdAllocator {
    /// Ids `0..capacity`.
    pub fn new(capacity: u32) -> Self {
        IdAllocator {
            capacity,
            next_fresh: 0,
            free: VecDeque::new(),
            quarantine: Vec::new(),
        }
    }

    /// Ids `0..capacity` of which `used` are taken (adopted from pinned maps): the gaps below
    /// the highest used id are free, in ascending order.
    pub fn with_used(capacity: u32, used: &std::collections::BTreeSet<u32>) -> Self {
        let next_fresh = used.last().map_or(0, |&max| max + 1).min(capacity);
        IdAllocator {
            capacity,
            next_fresh,
            free: (0..next_fresh).filter(|id| !used.contains(id)).collect(),
            quarantine: Vec::new(),
        }
    }

    /// Capacity given at creation.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// A free id, or `None` when all `capacity` are in use.
    pub fn alloc(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_front() {
            return Some(id);
        }
        (self.next_fresh < self.capacity).then(|| {
            self.next_fresh += 1;
            self.next_fresh - 1
        })
    }

    /// Returns an id; it becomes reusable after the next [`IdAllocator::end_change`].
    pub fn free(&mut self, id: u32) {
        self.quarantine.push(id);
    }

    /// Called once a change is fully applied: ids freed before it may now be reused.
    pub fn end_change(&mut self) {
        self.free.extend(self.quarantine.drain(..));
    }

    /// Ids that could still be allocated.
    pub fn available(&self) -> u32 {
        self.capacity - self.next_fresh + self.free.len() as u32
    }
}

/// First-fit allocator of contiguous regions in `0..capacity`, with coalescing.
#[derive(Debug, Clone)]
pub struct RegionAllocator {
    capacity: u32,
    /// Free regions: offset -> length.
    free: BTreeMap<u32, u32>,
    quarantine: Vec<(u32, u32)>,
}

impl RegionAllocator {
    /// One free region covering `0..capacity`.
    pub fn new(capacity: u32) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        RegionAllocator {
            capacity,
            free,
            quarantine: Vec::new(),
        }
    }

    /// Slots given at creation.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// `0..capacity` with the regions `used` (offset, length) taken (adopted from pinned maps).
    pub fn with_used(capacity: u32, used: &[(u32, u32)]) -> Self {
        let mut used = used.to_vec();
        used.sort_unstable();
        let mut free = BTreeMap::new();
        let mut at = 0u32;
        for (offset, len) in used {
            if offset > at {
                free.insert(at, offset - at);
            }
            at = at.max(offset.saturating_add(len));
        }
        if capacity > at {
            free.insert(at, capacity - at);
        }
        RegionAllocator {
            capacity,
            free,
            quarantine: Vec::new(),
        }
    }

    /// Offset of a free region of `len` slots, or `None` if no free region is that large.
    pub fn alloc(&mut self, len: u32) -> Option<u32> {
        let (&offset, &free_len) = self.free.iter().find(|&(_, &l)| l >= len)?;
        self.free.remove(&offset);
        if free_len > len {
            self.free.insert(offset + len, free_len - len);
        }
        Some(offset)
    }

    /// Returns a region; it becomes reusable after the next [`RegionAllocator::end_change`].
    pub fn free(&mut self, offset: u32, len: u32) {
        self.quarantine.push((offset, len));
    }

    /// Called once a change is fully applied: regions freed before it may now be reused.
    pub fn end_change(&mut self) {
        for (offset, len) in std::mem::take(&mut self.quarantine) {
            self.insert_free(offset, len);
        }
    }

    fn insert_free(&mut self, mut offset: u32, mut len: u32) {
        if let Some((&prev_off, &prev_len)) = self.free.range(..offset).next_back()
            && prev_off + prev_len == offset
        {
            self.free.remove(&prev_off);
            offset = prev_off;
            len += prev_len;
        }
        if let Some(&next_len) = self.free.get(&(offset + len)) {
            self.free.remove(&(offset + len));
            len += next_len;
        }
        self.free.insert(offset, len);
    }

    /// Total free slots (not counting quarantined regions).
    pub fn free_slots(&self) -> u64 {
        self.free.values().map(|&l| u64::from(l)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_until_capacity_and_reused_only_after_end_change() {
        let mut ids = IdAllocator::new(3);
        let a = ids.alloc().unwrap();
        let b = ids.alloc().unwrap();
        let c = ids.alloc().unwrap();
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(ids.alloc(), None);
        ids.free(b);
        assert_eq!(ids.alloc(), None, "a quarantined id must not be reused");
        ids.end_change();
        assert_eq!(ids.available(), 1);
        assert_eq!(ids.alloc(), Some(b));
    }

    #[test]
    fn adopted_ids_and_regions_are_never_handed_out() {
        let used = [0, 2, 5].into_iter().collect();
        let mut ids = IdAllocator::with_used(8, &used);
        let given: Vec<u32> = std::iter::from_fn(|| ids.alloc()).collect();
        assert_eq!(given, [1, 3, 4, 6, 7]);
        let mut regions = RegionAllocator::with_used(100, &[(40, 10), (0, 20)]);
        assert_eq!(regions.free_slots(), 70);
        assert_eq!(regions.alloc(25), Some(50), "the 20-slot gap is too small");
        assert_eq!(regions.alloc(20), Some(20));
        assert_eq!(regions.alloc(25), Some(75));
        assert_eq!(regions.alloc(1), None);
    }

    #[test]
    fn regions_are_first_fit_and_coalesce() {
        let mut regions = RegionAllocator::new(100);
        let a = regions.alloc(30).unwrap();
        let b = regions.alloc(30).unwrap();
        let c = regions.alloc(30).unwrap();
        assert_eq!((a, b, c), (0, 30, 60));
        assert_eq!(regions.alloc(11), None);
        regions.free(a, 30);
        regions.free(b, 30);
        assert_eq!(
            regions.alloc(30),
            None,
            "quarantined regions are not reused"
        );
        regions.end_change();
        assert_eq!(regions.alloc(60), Some(0), "adjacent freed regions merge");
        regions.free(c, 30);
        regions.end_change();
        assert_eq!(regions.free_slots(), 40);
        assert_eq!(regions.alloc(40), Some(60));
    }
}
