//! Garbage collection: reclaiming segments, oldest ksets first.
//!
//! When the share of used segments reaches gc_percent (or writes are waiting
//! for space), GC takes the kset at key_tail — never at or past dirty_tail —
//! drops the index extents its keys still back, persists the advanced
//! key_tail, and only then releases the keys' segment references. A segment
//! whose last reference goes gets its generation bumped and persisted before
//! it can be reused.
//!
//! Data that reads hit since it was written (index::REFERENCED) is not
//! dropped but moved (relocate.rs): copied to the relocation head and keyed
//! again, clean, as a read fill would be. A hot set smaller than the cache then stays
//! cached however often writes cycle the log, where dropping it would send
//! its next reads to the base. Every key GC takes is behind dirty_tail, so
//! what it moves is on the base already: a moved key lost in a crash only
//! costs a miss. Moving is bounded so that GC always frees space: at most
//! 75 % of the bytes GC reclaims (relocate::MoveCredit (with a little credit
//! carried between steps), times the share of recent reads that hit (a few
//! hits do not pay for copying most of the cache; see HitShare), none while
//! writes wait for space, and none once the relocation head finds no free
//! segment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::format::KeyRecord;
use crate::index::Index;
use crate::keylog::read_kset;
use crate::relocate::{move_piece, next_live_piece, MoveCredit, Moved};
use crate::shared::{lock, Shared};
use crate::write::Front;

/// Ksets reclaimed per step at most, to keep a poller's step short.
const KSETS_PER_STEP: usize = 64;

#[derive(Default)]
pub(crate) struct Gc {
    /// Held by the one GC pass that may run at a time.
    pass: Mutex<()>,
    /// Odd while a pass runs: moved at both ends of every pass, so that a
    /// bypass can see that none ran while it checked the index without
    /// taking `pass` (a lock every reactor's bypasses would bounce).
    passes: AtomicU64,
    /// Bytes passes may still move (relocate::MoveCredit), carried from
    /// pass to pass.
    /// Changed only by the pass holding `pass`.
    credit: AtomicU64,
    /// How often reads hit lately, and the read counts it was taken at
    /// (changed only by the pass holding `pass`).
    hits: HitShare,
}

/// The share of recent reads that hit, in percent: a moving average,
/// updated once enough reads happened, 100 before any. Moving read data
/// pays back in proportion to it: over a data set much larger than the
/// cache, what reads hit once is mostly not read again before GC comes
/// round, and moving all of it would copy most of the cache for a few hits.
#[derive(Default)]
struct HitShare {
    /// 100 - the share (so that the default, 0, means "all hit").
    missed_pct: AtomicU64,
    /// read_hit_ops and read_miss_ops when it was last updated.
    hit_ops: AtomicU64,
    miss_ops: AtomicU64,
}

/// Reads a share is taken over at least.
const HIT_SHARE_READS: u64 = 1024;

impl HitShare {
    /// The share in percent, updated from the read counters.
    fn update(&self, s: &Shared) -> u64 {
        let (hit, miss) = (s.counters.total(|c| &c.read_hit_ops), s.counters.total(|c| &c.read_miss_ops));
        let dh = hit.wrapping_sub(self.hit_ops.load(Ordering::Relaxed));
        let dm = miss.wrapping_sub(self.miss_ops.load(Ordering::Relaxed));
        let mut missed = self.missed_pct.load(Ordering::Relaxed);
        if dh + dm >= HIT_SHARE_READS {
            // Half the weight to the newest share.
            missed = (missed + dm * 100 / (dh + dm)) / 2;
            self.missed_pct.store(missed, Ordering::Relaxed);
            self.hit_ops.store(hit, Ordering::Relaxed);
            self.miss_ops.store(miss, Ordering::Relaxed);
        }
        100 - missed
    }
}

impl Gc {
    /// Holds off GC passes while the guard lives, as a running pass does
    /// (bypass.rs sees it in [`Gc::passes`]). None: a pass runs.
    pub fn try_hold(&self) -> Option<Pass<'_>> {
        self.pass.try_lock().ok().map(|g| Pass::new(g, &self.passes))
    }

    /// Waits for a running pass to end and holds off the next ones.
    pub fn hold(&self) -> Pass<'_> {
        Pass::new(lock(&self.pass), &self.passes)
    }

    /// A count of passes begun and ended: odd while one runs. Read it
    /// before and after a check under the index's locks; the same even
    /// value both times means no pass ran in between (see [`Pass`]).
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Acquire)
    }

    /// Reclaims up to a bounded number of ksets while segments in use reach
    /// `gc_percent` (or writes wait for space). Returns how many.
    /// With `keep_read`, data reads hit is moved rather than dropped (see
    /// the module doc).
    pub fn step(&self, f: &Front, gc_percent: u8, keep_read: bool) -> Result<usize> {
        let (s, journal) = (f.s, f.journal);
        // Two passes over the same kset would drop its references twice.
        let Some(_pass) = self.try_hold() else { return Ok(0) };
        let credit = MoveCredit::new(self.credit.load(Ordering::Relaxed));
        let mut moves = Moves { allowed: keep_read, credit, moved: 0 };
        let hit_pct = if keep_read { self.hits.update(s) } else { 0 };
        let wanted = || s.segs.is_short() || s.segs.used_percent() >= gc_percent as u32;
        let epoch = s.segs.space_epoch();
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
            // Keys with data that still hold a reference: zero keys have no
            // data (their range stays zero in the index and on the base), and
            // keys of an older generation of their segment are stale since replay.
            let live = |key: &&KeyRecord| !key.is_zero() && key.gen == s.segs.gen(key.seg);
            let reclaimed: u64 = k.keys.iter().filter(live).map(|key| key.len as u64).sum();
            moves.credit.earn(reclaimed * hit_pct / 100, MoveCredit::cap(s));
            let mut release = Vec::with_capacity(k.keys.len() + 1);
            for key in k.keys.iter().filter(live) {
                if moves.allowed {
                    move_read_data(f, key, &mut moves)?;
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
        self.credit.store(moves.credit.bytes(), Ordering::Relaxed);
        s.counters.local().add(|c| &c.gc_moved_bytes, moves.moved);
        if s.segs.space_epoch() != epoch {
            // A segment was freed, and writes waiting for space are retried
            // (they wait for the epoch to move): those that still find none
            // set the flag again. (Writes that bypass a full cache allocate
            // nothing, so they would never clear it, and GC would empty the
            // cache.) Ksets reclaimed without freeing a segment leave it set:
            // cleared then, with segments in use below the threshold, nothing
            // would run GC again and waiting writes would never be retried.
            s.segs.note_relieved();
        }
        Ok(n)
    }
}

/// A running GC pass (or a hold on passes). `passes` is moved before the
/// pass touches the index and again after it persisted key_tail; as the
/// pass changes the index under its subtree locks, whoever takes such a
/// lock after the pass took keys out sees `passes` moved.
pub(crate) struct Pass<'a> {
    _lock: MutexGuard<'a, ()>,
    passes: &'a AtomicU64,
}

impl<'a> Pass<'a> {
    fn new(lock: MutexGuard<'a, ()>, passes: &'a AtomicU64) -> Self {
        passes.fetch_add(1, Ordering::AcqRel);
        Pass { _lock: lock, passes }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.passes.fetch_add(1, Ordering::AcqRel);
    }
}

/// What a GC step may still move, and has moved.
struct Moves {
    /// Moving goes on (it stops for good in a step once it cannot).
    allowed: bool,
    credit: MoveCredit,
    moved: u64,
}

impl Moves {
    /// Whether there is credit to move `n` bytes.
    fn may(&self, n: u64) -> bool {
        self.allowed && self.credit.covers(n)
    }

    /// `n` bytes were moved.
    fn took(&mut self, n: u64) {
        self.credit.spend(n);
        self.moved += n;
    }
}

/// Moves the read pieces of `key` (a key GC is about to drop), each keyed
/// again, clean (relocate.rs).
fn move_read_data(f: &Front, key: &KeyRecord, moves: &mut Moves) -> Result<()> {
    let end = key.off + key.len as u64;
    let mut at = key.off;
    while let Some(p) = next_live_piece(f, key, at, end, true) {
        // Unless only part of it moves (below), the piece is done with.
        at = p.off + p.len as u64;
        if f.s.segs.is_short() {
            moves.allowed = false;
            return Ok(());
        }
        if !moves.may(p.len as u64) {
            continue; // over the share GC may move: dropped
        }
        match move_piece(f, &p, false)? {
            Moved::Bytes(n) => {
                moves.took(n as u64);
                // The head's segment ended inside the piece: the rest is
                // found again, from the index as it is now.
                at = p.off + n as u64;
            }
            Moved::NoRoom => {
                moves.allowed = false;
                return Ok(());
            }
            // Dropped: a later write wins, and the base holds damaged data's value.
            Moved::Changed | Moved::Damaged => {}
        }
    }
    Ok(())
}
