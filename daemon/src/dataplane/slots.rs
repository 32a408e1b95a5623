//! The Maglev slot array, memory-mapped: a new table is written with one copy instead of one
//! syscall per slot (65,537 syscalls would take tens of milliseconds). The kernel lays array
//! values out at 8-byte strides; the map's values are pairs of u32 slots, so the mapping is a
//! dense array of slots.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::maps::MapData;

use super::DataplaneError;

/// Shared, writable mapping of the `XLB_MAGLEV` array (created with BPF_F_MMAPABLE).
pub struct SlotArray {
    /// Keeps the map (and so the mapping's backing memory) alive.
    _map: MapData,
    base: NonNull<u32>,
    len: usize,
    mapped_bytes: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; access goes through &mut self.
unsafe impl Send for SlotArray {}

impl SlotArray {
    /// Maps `len` slots (twice the map's entries) of the array behind `map`.
    pub fn new(map: MapData, len: u32) -> Result<SlotArray, DataplaneError> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len as usize * 4).div_ceil(page) * page;
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
        if addr == libc::MAP_FAILED {
            return Err(DataplaneError::Mmap(std::io::Error::last_os_error()));
        }
        let base = NonNull::new(addr.cast::<u32>()).ok_or_else(|| {
            DataplaneError::Mmap(std::io::Error::other("mmap returned a null pointer"))
        })?;
        Ok(SlotArray {
            _map: map,
            base,
            len: len as usize,
            mapped_bytes: bytes,
        })
    }

    /// Writes `slots` starting at `offset`. Callers write only regions no VIP entry points to
    /// yet, then publish them with one VIP map update (a syscall, hence a full barrier).
    pub fn write(&mut self, offset: u32, slots: &[u32]) -> Result<(), DataplaneError> {
        let start = offset as usize;
        let end = start + slots.len();
        if end > self.len {
            return Err(DataplaneError::SlotRange {
                offset,
                len: slots.len(),
                capacity: self.len,
            });
        }
        // SAFETY: start..end lies inside the mapping (checked above), which is valid for
        // writes of u32 for the whole life of self.
        let region =
            unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), slots.len()) };
        region.copy_from_slice(slots);
        Ok(())
    }

    /// Reads `len` slots starting at `offset`.
    pub fn read(&self, offset: u32, len: usize) -> Result<Vec<u32>, DataplaneError> {
        let start = offset as usize;
        if start + len > self.len {
            return Err(DataplaneError::SlotRange {
                offset,
                len,
                capacity: self.len,
            });
        }
        // SAFETY: start..start+len lies inside the mapping (checked above).
        let region = unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), len) };
        Ok(region.to_vec())
    }
}

impl Drop for SlotArray {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; nothing refers to it afterwards.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.mapped_bytes);
        }
    }
}
