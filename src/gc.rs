//! Garbage collection: reclaiming segments, oldest ksets first.
//!
//! When the share of used segments reaches gc_percent (or writes are waiting
//! for space), GC takes the kset at key_tail — never at or past dirty_tail —
//! drops the index extents its keys still back, persists the advanced
//! key_tail, and only then releases the keys' segment references. A segment
//! whose last reference goes gets its generation bumped and persisted before
//! it can be reused.

use std::sync::atomic::Ordering;

use crate::cache::{lock, Cache};
use crate::error::{Error, Result};
use crate::index::Index;
use crate::keylog::read_kset;

/// Ksets reclaimed per step at most, to keep a poller's step short.
const KSETS_PER_STEP: usize = 64;

impl Cache {
    fn gc_wanted(&self) -> bool {
        self.segs.is_short() || self.segs.used_percent() >= self.gc_percent.load(Ordering::Relaxed) as u32
    }

    /// Holds off GC passes while the guard lives, as a running pass does (tests).
    #[doc(hidden)]
    pub fn gc_pass_for_tests(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.gc)
    }

    /// Reclaims up to a bounded number of ksets. Returns how many.
    pub fn gc_step(&self) -> Result<usize> {
        // Two passes over the same kset would drop its references twice.
        let Ok(_pass) = self.gc.try_lock() else { return Ok(0) };
        let mut n = 0;
        while n < KSETS_PER_STEP && self.gc_wanted() {
            let (pos, dirty) = {
                let t = lock(&self.tails);
                (t.key, t.dirty)
            };
            if pos.seq >= dirty.seq {
                break;
            }
            let k = read_kset(&*self.media, &self.segs, self.sb.nonce, pos)?
                .ok_or_else(|| Error::corrupt("key log", format!("no kset at key_tail seq {}", pos.seq)))?;
            let mut release = Vec::with_capacity(k.keys.len() + 1);
            for key in &k.keys {
                if key.is_zero() {
                    continue; // no data: its range stays zero in the index and on the base
                }
                if key.gen != self.segs.gen(key.seg) {
                    continue; // stale since replay: holds no reference
                }
                self.index.lock(Index::subtree_of(key.off)).remove_backed_by(key.off, key.len, key.seg, key.seg_off);
                release.push(key.seg);
            }
            if k.hdr.is_last() {
                release.push(pos.seg);
            }
            lock(&self.tails).set_key(&*self.media, k.next)?;
            for seg in release {
                self.release_seg(seg)?;
            }
            self.counters.local().add(|c| &c.gc_ksets, 1);
            self.counters.local().add(|c| &c.gc_keys, k.keys.len() as u64);
            n += 1;
        }
        if n > 0 {
            // Space was freed: writes that still find none set it again.
            // (Writes that bypass a full cache allocate nothing, so they
            // would never clear it, and GC would empty the cache.)
            self.segs.note_relieved();
        }
        Ok(n)
    }
}
