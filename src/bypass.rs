//! Bypass: writes that go straight to the base, past the cache.
//!
//! Two kinds of write gain nothing from waiting for the cache:
//! - **Sequential streams.** They are rarely read back soon, and writing
//!   them back costs the base the same bytes again, so once a worker's
//!   stream has run for `seq_cutoff` bytes, its writes of at least
//!   [`BYPASS_MIN_IO`] bytes may skip the cache.
//! - **Writes that find the cache full.** Writeback is what frees space, so
//!   once the cache is full a cached write costs a base write anyway, plus
//!   its trip through pmem and the writeback's own work. Full means writes
//!   wait for space, or dirty data has reached the level where writeback
//!   runs flat out (gc_percent - WB_FULL_MARGIN): a write that no cached
//!   data overlaps then goes to the base instead (
//!   bcache bypasses a congested cache the same way). Overwrites of cached
//!   blocks still go into the cache, so a hot set keeps being absorbed.
//!
//! A host asks [`crate::Cache::admit`] where each write goes (and
//! [`crate::Cache::admit_deferred`] again for one the cache deferred);
//! with a [`Bypass`] in hand it writes the caller's buffers to the base
//! itself and then calls [`crate::Cache::end_bypass`].
//!
//! What keeps this correct:
//! - **The base's guarantee** (doc/format.md, "Epochs"): a write may reach the
//!   base ahead of the cache's dirty data only if that dirty data is all in
//!   the open epoch. So a bypass needs every FLUSH mark, and everything
//!   replayed at open, behind dirty_tail: writeback has put every earlier
//!   epoch on the base.
//! - **Nothing cached over the range.** A bypass needs no key in the index
//!   over its bytes, so nothing can serve, replay or write back older data
//!   over them afterwards (keys of reclaimed segments are ignored by replay).
//!   Nor may a GC pass be running: it takes keys out of the index before the
//!   key_tail that keeps replay from finding them again is persisted.
//! - **Nothing enters the range meanwhile.** Until it ends, the range is
//!   registered in its subtrees: a cached write or zero key over it waits (it
//!   is deferred as if the cache were full, and retried when the bypass
//!   ends), and a read fill that started before the bypass ended is dropped
//!   (the subtree version moves at both ends).
//! - **Durability.** A bypassed write is on the base, not in pmem, so a FLUSH
//!   must also flush the base: [`crate::Cache::bypass_flush_target`] says
//!   whether one is needed and [`crate::Cache::bypass_flushed`] records it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::base::BaseDevice;
use crate::gc::Gc;
use crate::index::Index;
use crate::journal::Journal;
use crate::shared::Shared;
use crate::spinlock::{Padded, SpinLock};
use crate::writeback::WB_FULL_MARGIN;
use smallvec::SmallVec;

/// Sequential run after which a stream's writes bypass the cache (bcache's
/// sequential_cutoff; 0 turns bypass off).
pub const DEFAULT_SEQ_CUTOFF: u64 = 1 << 20;
/// Writeback that finds at least this share (percent) of a full cache's
/// dirty bytes overwritten keeps new writes in the cache (see is_full).
pub const ABSORBED_ENOUGH: u32 = 50;
/// Share (percent) of a full cache's writes with cached data under them at
/// which it takes new blocks again (see [`is_full`]).
pub const FULL_HITS_ENOUGH: u32 = 50;
/// Writes smaller than this never bypass: writeback merges them into runs of
/// up to 1 MiB, which costs the base fewer I/Os than passing each through.
pub const BYPASS_MIN_IO: u64 = 64 << 10;

/// Where a worker's current sequential stream stands.
#[derive(Debug, Default, Clone, Copy)]
struct Stream {
    /// Base offset the next write of the stream starts at.
    next: u64,
    /// Bytes written back to back so far.
    run: u64,
}

impl Stream {
    /// Counts a write of `len` at `off`; returns the run it extends.
    fn note(&mut self, off: u64, len: u64) -> u64 {
        self.run = if off == self.next { self.run + len } else { len };
        self.next = off + len;
        self.run
    }
}

/// How many bypassed writes (counted in the counters' bypass_writes, per
/// thread, so that reactors do not bounce one line) a completed base flush
/// covers.
#[derive(Debug, Default)]
struct Bypassed {
    flushed: AtomicU64,
    /// A base flush for them is in flight (see Bypasses::flush).
    flushing: AtomicBool,
    /// Such flushes that failed (reported as writeback errors).
    flush_errors: AtomicU64,
}

/// Where a host's write goes ([`crate::Cache::admit`]).
#[must_use = "a bypass holds its range until end_bypass"]
#[derive(Debug)]
pub enum Admit {
    /// Into the cache (which may still defer it for want of room).
    Cache,
    /// To the base, past the cache: the host writes it there itself.
    Base(Bypass),
}

impl Admit {
    /// The bypass, if the write goes to the base.
    pub fn base(self) -> Option<Bypass> {
        match self {
            Admit::Cache => None,
            Admit::Base(b) => Some(b),
        }
    }
}

/// A write on its way to the base past the cache. Hand it back to
/// [`crate::Cache::end_bypass`] once the base write completes or fails.
#[must_use = "a bypass holds its range until end_bypass"]
#[derive(Debug)]
pub struct Bypass {
    pub off: u64,
    pub len: u64,
    /// Granted because the cache was full (not a sequential stream).
    pub when_full: bool,
}

/// The bypass state: the cutoff, each worker's stream, and the bypassed
/// writes a FLUSH must have the base flush.
pub(crate) struct Bypasses {
    seq_cutoff: AtomicU64,
    streams: Vec<Padded<SpinLock<Stream>>>,
    done: Arc<Bypassed>,
}

impl Bypasses {
    pub fn new(workers: usize, seq_cutoff: u64) -> Self {
        Bypasses {
            seq_cutoff: AtomicU64::new(seq_cutoff),
            streams: (0..workers).map(|_| Padded::default()).collect(),
            done: Arc::default(),
        }
    }

    /// The sequential cutoff in force (bytes; 0: bypass is off).
    pub fn seq_cutoff(&self) -> u64 {
        self.seq_cutoff.load(Ordering::Relaxed)
    }

    pub fn set_seq_cutoff(&self, bytes: u64) {
        self.seq_cutoff.store(bytes, Ordering::Relaxed);
    }

    /// Notes `worker`'s write of `len` bytes at `off` in its stream; true if
    /// it may bypass as part of a sequential stream (see the module doc).
    pub fn is_sequential(&self, worker: usize, off: u64, len: u64) -> bool {
        let cutoff = self.seq_cutoff();
        if cutoff == 0 {
            return false;
        }
        let run = self.streams[worker % self.streams.len()].lock().note(off, len);
        len >= BYPASS_MIN_IO && run > cutoff
    }

    /// Registers `[off, off+len)` as on its way to the base if the
    /// guarantee allows it (see the module doc).
    pub fn register(
        &self,
        s: &Shared,
        journal: &Journal,
        gc: &Gc,
        off: u64,
        len: u64,
        when_full: bool,
    ) -> Option<Bypass> {
        if !earlier_epochs_on_base(journal) {
            return None;
        }
        // GC drops a kset's keys from the index before it persists key_tail
        // past the kset: in between, replay would bring them back over what
        // this write puts on the base. No bypass while a GC pass runs: none
        // may have begun before the index is checked nor ended after.
        let passes = gc.passes();
        if passes % 2 == 1 {
            return None;
        }
        // Register the range in every subtree it touches, all locked at once
        // (in ascending order, as everywhere), if none holds a key over it.
        let (first, last) = (Index::subtree_of(off), Index::subtree_of(off + len - 1));
        let mut locked: SmallVec<[_; 2]> = (first..=last).map(|i| s.index.lock(i)).collect();
        let mut at = off;
        for t in &locked {
            // A walk stays inside its subtree.
            let piece = Index::piece_len(at, off + len - at);
            let mut found = false;
            t.walk(at, at + piece, |_, _, _, _| found = true, |_, _| {});
            if found || t.bypassing(off, off + len) {
                return None;
            }
            at += piece;
        }
        if gc.passes() != passes {
            return None;
        }
        for t in &mut locked {
            t.bypass.push((off, off + len));
            t.version += 1;
        }
        Some(Bypass { off, len, when_full })
    }

    /// Ends a bypass: its range is open to cached writes again, and fills
    /// that read the base meanwhile are dropped. Wakes writes that waited.
    pub fn end(&self, s: &Shared, b: Bypass, ok: bool) {
        let (first, last) = (Index::subtree_of(b.off), Index::subtree_of(b.off + b.len - 1));
        let mut waited = false;
        for i in first..=last {
            let mut t = s.index.lock(i);
            if let Some(p) = t.bypass.iter().position(|&r| r == (b.off, b.off + b.len)) {
                t.bypass.swap_remove(p);
            }
            t.version += 1;
            waited |= std::mem::take(&mut t.bypass_waited);
        }
        if ok {
            let c = s.counters.local();
            c.add(|s| &s.bypass_writes, 1);
            c.add(|s| &s.bypass_bytes, b.len);
            if b.when_full {
                c.add(|s| &s.bypass_full_writes, 1);
            }
        }
        if waited {
            s.segs.wake();
        }
    }

    /// Bypassed writes completed and not yet covered by a base flush (see
    /// [`crate::Cache::bypass_flush_target`]).
    pub fn flush_target(&self, s: &Shared) -> Option<u64> {
        let done = s.counters.total(|c| &c.bypass_writes);
        (done > self.done.flushed.load(Ordering::Acquire)).then_some(done)
    }

    /// Records a completed base flush submitted after `target` bypassed
    /// writes had completed.
    pub fn flushed(&self, target: u64) {
        self.done.flushed.fetch_max(target, Ordering::AcqRel);
    }

    /// Base flushes for bypassed writes that failed.
    pub fn flush_errors(&self) -> u64 {
        self.done.flush_errors.load(Ordering::Relaxed)
    }

    /// Flushes the base for the bypassed writes completed so far, unless a
    /// flush for them is in flight (see [`crate::Cache::flush_bypassed`]).
    pub fn flush(&self, s: &Shared, base: &dyn BaseDevice) -> bool {
        let Some(target) = self.flush_target(s) else { return false };
        if self.done.flushing.swap(true, Ordering::AcqRel) {
            return true;
        }
        let state = Arc::clone(&self.done);
        base.flush(Box::new(move |r| {
            match r {
                Ok(()) => {
                    state.flushed.fetch_max(target, Ordering::AcqRel);
                }
                Err(e) => {
                    log::error!("base flush after bypassed writes: {e}");
                    state.flush_errors.fetch_add(1, Ordering::AcqRel);
                }
            }
            state.flushing.store(false, Ordering::Release);
        }));
        true
    }
}

/// Whether a write that no cached data overlaps is better sent to the base:
/// either writes wait for space, or writeback finds little overwritten
/// (below [`ABSORBED_ENOUGH`] percent of recent batches' dirty bytes, per
/// `absorbed`; None before the first batch counts as enough: a hot set keeps
/// its cache until writeback has shown otherwise), so caching the write would
/// cost a base write later all the same; and in both cases the cache's space
/// is used up to near the GC threshold (gc_percent - WB_FULL_MARGIN: GC keeps
/// it about there in steady state), so a burst into a cache with room stays
/// in it.
///
/// A full cache that finds cached data under most of its writes
/// (`full_hits`, full_hits.rs) holds the working set after all: it takes
/// new blocks again unless writes wait for space, whatever writeback found.
pub(crate) fn is_full(s: &Shared, absorbed: Option<u32>, full_hits: Option<u32>, gc_percent: u8) -> bool {
    let little_absorbed =
        absorbed.is_some_and(|p| p < ABSORBED_ENOUGH) && full_hits.is_none_or(|h| h < FULL_HITS_ENOUGH);
    (s.segs.is_short() || little_absorbed)
        && s.segs.used_percent() >= (gc_percent as u32).saturating_sub(WB_FULL_MARGIN)
}

/// Whether the base may take a write ahead of the cache's dirty data: every
/// epoch before the open one is written back.
fn earlier_epochs_on_base(journal: &Journal) -> bool {
    let dirty = journal.tails().dirty.seq;
    dirty > journal.last_mark() && dirty >= journal.replayed_open_epoch().end
}

#[cfg(test)]
mod tests {
    use super::Stream;

    #[test]
    fn a_stream_runs_while_writes_follow_each_other() {
        let mut s = Stream::default();
        assert_eq!(s.note(4096, 4096), 4096);
        assert_eq!(s.note(8192, 8192), 12288);
        assert_eq!(s.note(0, 4096), 4096, "a jump starts a new stream");
        assert_eq!(s.note(4096, 4096), 8192);
    }
}
