//! Garbage collection: reclaiming segments, oldest ksets first.
//!
//! When the share of used segments reaches gc_percent (or writes are waiting
//! for space), GC takes the kset at key_tail — never at or past dirty_tail —
//! drops the index extents its keys still back, persists the advanced
//! key_tail, and only then releases the keys' segment references. A segment
//! whose last reference goes gets its generation bumped and persisted before
//! it can be reused.

use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::index::Index;
use crate::journal::Journal;
use crate::keylog::read_kset;
use crate::shared::{lock, Shared};

/// Ksets reclaimed per step at most, to keep a poller's step short.
const KSETS_PER_STEP: usize = 64;

#[derive(Default)]
pub(crate) struct Gc {
    /// Held by the one GC pass that may run at a time.
    pass: Mutex<()>,
}

impl Gc {
    /// Holds off GC passes while the guard lives, as a running pass does
    /// (tests; and bypass.rs, which must not run beside a pass). None: a
    /// pass runs.
    pub fn try_hold(&self) -> Option<MutexGuard<'_, ()>> {
        self.pass.try_lock().ok()
    }

    /// Waits for a running pass to end and holds off the next ones.
    pub fn hold(&self) -> MutexGuard<'_, ()> {
        lock(&self.pass)
    }

    /// Reclaims up to a bounded number of ksets while segments in use reach
    /// `gc_percent` (or writes wait for space). Returns how many.
    pub fn step(&self, s: &Shared, journal: &Journal, gc_percent: u8) -> Result<usize> {
        // Two passes over the same kset would drop its references twice.
        let Some(_pass) = self.try_hold() else { return Ok(0) };
        let wanted = || s.segs.is_short() || s.segs.used_percent() >= gc_percent as u32;
        let mut n = 0;
        while n < KSETS_PER_STEP && wanted() {
            let (pos, dirty) = {
                let t = journal.tails();
                (t.key, t.dirty)
            };
            if pos.seq >= dirty.seq {
                break;
            }
            let k = read_kset(&*s.media, &s.segs, s.sb.nonce, pos)?
                .ok_or_else(|| Error::corrupt("key log", format!("no kset at key_tail seq {}", pos.seq)))?;
            let mut release = Vec::with_capacity(k.keys.len() + 1);
            for key in &k.keys {
                if key.is_zero() {
                    continue; // no data: its range stays zero in the index and on the base
                }
                if key.gen != s.segs.gen(key.seg) {
                    continue; // stale since replay: holds no reference
                }
                s.index.lock(Index::subtree_of(key.off)).remove_backed_by(key.off, key.len, key.seg, key.seg_off);
                release.push(key.seg);
            }
            if k.hdr.is_last() {
                release.push(pos.seg);
            }
            journal.tails().set_key(&*s.media, k.next)?;
            for seg in release {
                s.release_seg(seg)?;
            }
            s.counters.local().add(|c| &c.gc_ksets, 1);
            s.counters.local().add(|c| &c.gc_keys, k.keys.len() as u64);
            n += 1;
        }
        if n > 0 {
            // Space was freed: writes that still find none set it again.
            // (Writes that bypass a full cache allocate nothing, so they
            // would never clear it, and GC would empty the cache.)
            s.segs.note_relieved();
        }
        Ok(n)
    }
}
