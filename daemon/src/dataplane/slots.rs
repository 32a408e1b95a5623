//! Memory-mapped BPF arrays (created with BPF_F_MMAPABLE): the Maglev slot array, the IPv4
//! /24 entries and the mixed /24 tables of the policy. A table is written with one copy
//! instead of one syscall per element (65,537 syscalls for the slots, or 2^22 to read the /24
//! entries back at adoption, would take tens of milliseconds to seconds). The kernel lays array
//! values out at 8-byte strides, so a mapping is a dense array of its elements (the Maglev
//! map's values are pairs of u32 slots: a dense array of slots).

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::MapData;

use super::DataplaneError;

/// Shared, writable mapping of a BPF array of `len` elements of `T`.
pub struct Mapped<T> {
    /// Keeps the map (and so the mapping's backing memory) alive.
    map: MapData,
    base: NonNull<T>,
    len: usize,
    mapped_bytes: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; writes go through &mut self.
unsafe impl<T: Send> Send for Mapped<T> {}

impl<T: Copy> Mapped<T> {
    /// Maps `len` elements of the array behind `map` (named `name` in errors).
    pub fn new(map: MapData, name: &'static str, len: u32) -> Result<Mapped<T>, DataplaneError> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len as usize * size_of::<T>()).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of a BPF map fd; the kernel checks size and flags and
        // returns MAP_FAILED on error, which is handled below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        let mmap_err = |source| DataplaneError::Mmap { map: name, source };
        if addr == libc::MAP_FAILED {
            return Err(mmap_err(std::io::Error::last_os_error()));
        }
        let base = NonNull::new(addr.cast::<T>())
            .ok_or_else(|| mmap_err(std::io::Error::other("mmap returned a null pointer")))?;
        Ok(Mapped {
            map,
            base,
            len: len as usize,
            mapped_bytes: bytes,
        })
    }

    /// The map behind the mapping.
    pub fn map(&self) -> &MapData {
        &self.map
    }

    /// The elements (the datapath only reads these maps).
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: the mapping holds `len` elements, valid for reads for the life of self.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }

    /// The elements, to write.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, and valid for writes; &mut self makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) }
    }
}

impl<T> Mapped<T> {
    /// The elements as 8-byte words, each accessed atomically: for an array the datapath
    /// writes while this process reads (the flow sets), where a plain reference to an
    /// element would be a data race. `T` must be a whole number of 8-byte words.
    pub fn as_words(&self) -> &[AtomicU64] {
        const { assert!(size_of::<T>().is_multiple_of(8)) };
        // SAFETY: the mapping is page-aligned and holds `len` elements of a size that is a
        // multiple of 8, so it is exactly this many aligned words, valid for the life of self;
        // AtomicU64 has u64's layout, and atomics are how memory shared with another writer
        // (the kernel) may be accessed.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().cast::<AtomicU64>(),
                self.len * size_of::<T>() / 8,
            )
        }
    }
}

impl Mapped<u64> {
    /// Stores `value` at `index` in one 8-byte store, after every write made before it (a
    /// release store): a reader sees the old word or the new one whole, and whatever the new
    /// word points at is written before it. Returns false if `index` is out of range.
    pub fn publish(&mut self, index: usize, value: u64) -> bool {
        if index >= self.len {
            return false;
        }
        // SAFETY: index is in range; the element is 8-byte aligned (the mapping is
        // page-aligned) and only accessed atomically by this process while the store runs.
        let word = unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(index)) };
        word.store(value, Ordering::Release);
        true
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; nothing refers to it afterwards.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.mapped_bytes);
        }
    }
}

/// The Maglev slot array `XLB_MAGLEV`, memory-mapped.
pub struct SlotArray(Mapped<u32>);

impl SlotArray {
    /// Maps `len` slots (twice the map's entries) of the array behind `map`.
    pub fn new(map: MapData, len: u32) -> Result<SlotArray, DataplaneError> {
        Mapped::new(map, xlb_common::map_names::MAGLEV, len).map(SlotArray)
    }

    /// Checks that `offset .. offset + len` lies in the array.
    fn range(&self, offset: u32, len: usize) -> Result<std::ops::Range<usize>, DataplaneError> {
        let start = offset as usize;
        if start + len > self.0.len {
            return Err(DataplaneError::SlotRange {
                offset,
                len,
                capacity: self.0.len,
            });
        }
        Ok(start..start + len)
    }

    /// Writes `slots` starting at `offset`. Callers write only regions no VIP entry points to
    /// yet, then publish them with one VIP map update (a syscall, hence a full barrier).
    pub fn write(&mut self, offset: u32, slots: &[u32]) -> Result<(), DataplaneError> {
        let range = self.range(offset, slots.len())?;
        self.0.as_mut_slice()[range].copy_from_slice(slots);
        Ok(())
    }

    /// Reads `len` slots starting at `offset`.
    pub fn read(&self, offset: u32, len: usize) -> Result<Vec<u32>, DataplaneError> {
        let range = self.range(offset, len)?;
        Ok(self.0.as_slice()[range].to_vec())
    }
}
