//! The parts every component of the cache reads: the media and its layout,
//! the segment table, the index and the counters.
//!
//! Each of them guards its own state (the segment table its counts and
//! generations, the index its subtree locks, the counters their shards), so
//! the components share them by reference; what a component owns beyond
//! them is its own type (journal.rs, heads.rs, writeback.rs, gc.rs,
//! bypass.rs, settings.rs), which `Cache` (cache.rs) composes.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::format::{Superblock, SECTOR};
use crate::index::Index;
use crate::pmem::Media;
use crate::segment::{Geometry, SegmentTable};
use crate::stats::Counters;

pub(crate) struct Shared {
    pub media: Arc<dyn Media>,
    pub sb: Superblock,
    pub geo: Geometry,
    pub segs: SegmentTable,
    pub index: Index,
    pub counters: Counters,
}

impl Shared {
    /// Whether every key carries a crc32c of its data (fixed at format).
    #[inline]
    pub fn data_crc(&self) -> bool {
        self.sb.data_crc()
    }

    /// Refuses an I/O that is not sector-aligned or reaches past the base.
    #[inline]
    pub fn check_io(&self, offset: u64, len: u64) -> Result<()> {
        if offset % SECTOR != 0 || len % SECTOR != 0 {
            return Err(Error::InvalidArgument(format!("I/O at {offset} of {len} bytes is not 512-byte aligned")));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.sb.base_size => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "I/O at {offset} of {len} bytes goes beyond the base device ({} bytes)",
                self.sb.base_size
            ))),
        }
    }

    /// Drops one reference on `seg` (freed with its last).
    #[inline]
    pub fn release_seg(&self, seg: u32) -> Result<()> {
        self.segs.put(&*self.media, seg)
    }
}

/// Locks a std mutex, ignoring poisoning.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Locks a std mutex if no one holds it, ignoring poisoning.
pub(crate) fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}
