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
//! dropped but moved: copied to GC's own data head and keyed again, clean,
//! as a read fill would be. A hot set smaller than the cache then stays
//! cached however often writes cycle the log, where dropping it would send
//! its next reads to the base. Every key GC takes is behind dirty_tail, so
//! what it moves is on the base already: a moved key lost in a crash only
//! costs a miss. Moving is bounded so that GC always frees space: at most
//! [`MOVE_MAX_PERCENT`] of the bytes GC reclaims (with a little credit
//! carried between steps), none while writes wait for space, and none once
//! GC's head finds no free segment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::format::{data_crc, KeyRecord, KEY_FLAG_CRC};
use crate::heads::DataHeads;
use crate::index::{Extent, Index};
use crate::keylog::read_kset;
use crate::shared::lock;
use crate::write::Front;

/// Ksets reclaimed per step at most, to keep a poller's step short.
const KSETS_PER_STEP: usize = 64;
/// Bytes a step may move, as a share of the key bytes it reclaims: each
/// step frees at least the rest, however much of the data is read.
pub(crate) const MOVE_MAX_PERCENT: u64 = 75;
/// The most move credit kept from one pass to the next, as a fraction
/// (1/n) of the cache's data space.
const MOVE_CREDIT_SHARE: u64 = 8;

#[derive(Default)]
pub(crate) struct Gc {
    /// Held by the one GC pass that may run at a time.
    pass: Mutex<()>,
    /// Bytes passes may still move: [`MOVE_MAX_PERCENT`] of what they
    /// reclaimed, less what they moved, carried from pass to pass (a kset
    /// may hold nothing but read data) up to 1/[`MOVE_CREDIT_SHARE`] of the cache.
    /// Changed only by the pass holding `pass`.
    credit: AtomicU64,
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
    /// With `keep_read`, data reads hit is moved rather than dropped (see
    /// the module doc).
    pub fn step(&self, f: &Front, gc_percent: u8, keep_read: bool) -> Result<usize> {
        let (s, journal) = (f.s, f.journal);
        // Two passes over the same kset would drop its references twice.
        let Some(_pass) = self.try_hold() else { return Ok(0) };
        let cap = s.geo.seg_count as u64 * s.geo.payload() as u64 / MOVE_CREDIT_SHARE;
        let mut moves = Moves { allowed: keep_read, credit: self.credit.load(Ordering::Relaxed).min(cap), moved: 0 };
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
            // Keys with data that still hold a reference: zero keys have no
            // data (their range stays zero in the index and on the base), and
            // keys of an older generation of their segment are stale since replay.
            let live = |key: &&KeyRecord| !key.is_zero() && key.gen == s.segs.gen(key.seg);
            let reclaimed: u64 = k.keys.iter().filter(live).map(|key| key.len as u64).sum();
            moves.credit = (moves.credit + reclaimed * MOVE_MAX_PERCENT / 100).min(cap);
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
        self.credit.store(moves.credit, Ordering::Relaxed);
        s.counters.local().add(|c| &c.gc_moved_bytes, moves.moved);
        if n > 0 {
            // Space was freed: writes that still find none set it again.
            // (Writes that bypass a full cache allocate nothing, so they
            // would never clear it, and GC would empty the cache.)
            s.segs.note_relieved();
        }
        Ok(n)
    }
}

/// What a GC step may still move, and has moved.
struct Moves {
    /// Moving goes on (it stops for good in a step once it cannot).
    allowed: bool,
    /// Bytes that may still be moved (see Gc::credit).
    credit: u64,
    moved: u64,
}

impl Moves {
    /// Whether there is credit to move `n` bytes.
    fn may(&self, n: u64) -> bool {
        self.allowed && n <= self.credit
    }

    /// `n` bytes were moved.
    fn took(&mut self, n: u64) {
        self.credit = self.credit.saturating_sub(n);
        self.moved += n;
    }
}

/// A piece of a reclaimed key that is still in the index and was read.
struct ReadPiece {
    off: u64,
    len: u32,
    /// Where its bytes are, and the whole extent they belong to (its CRC
    /// covers exactly the extent).
    src: u64,
    whole: Extent,
    skip: u32,
    /// The subtree's version when the piece was seen.
    version: u64,
}

/// The first piece of `key` at or after `from` that the index still maps to
/// the key's own data and that reads hit.
fn next_read_piece(f: &Front, key: &KeyRecord, from: u64) -> Option<ReadPiece> {
    let s = f.s;
    let t = s.index.lock(Index::subtree_of(key.off));
    let mut found = None;
    t.walk(
        from,
        key.off + key.len as u64,
        |o, e, skip, n| {
            let mine = !e.is_zero()
                && e.seg == key.seg
                && e.gen == key.gen as u32
                && e.seg_off as u64 + skip as u64 == key.seg_off as u64 + (o - key.off);
            if found.is_none() && mine && e.is_referenced() {
                let src = s.geo.addr(e.seg, e.seg_off) + skip as u64;
                found = Some(ReadPiece { off: o, len: n, src, whole: *e, skip, version: t.version });
            }
        },
        |_, _| {},
    );
    found
}

/// Moves the read pieces of `key` (a key GC is about to drop) to GC's data
/// head, each keyed again, clean, unless the range changed meanwhile.
fn move_read_data(f: &Front, key: &KeyRecord, moves: &mut Moves) -> Result<()> {
    let s = f.s;
    let mut at = key.off;
    while let Some(p) = next_read_piece(f, key, at) {
        // Unless only part of it moves (below), the piece is done with.
        at = p.off + p.len as u64;
        if s.segs.is_short() {
            moves.allowed = false;
            return Ok(());
        }
        if !moves.may(p.len as u64) {
            continue; // over the share GC may move: dropped
        }
        let Some(data) = piece_data(f, &p) else {
            continue; // fails its CRC: left to be dropped, the base has it
        };
        let mut head = f.heads.gc().data.lock();
        let Some((seg, seg_off, got)) = DataHeads::alloc(s, &mut head, p.len)? else {
            moves.allowed = false;
            return Ok(());
        };
        let piece = &data[..got as usize];
        s.media.write(s.geo.addr(seg, seg_off), piece)?;
        s.media.fence();
        let (flags, crc) = if s.data_crc() { (KEY_FLAG_CRC, data_crc(&[piece])) } else { (0, 0) };
        let moved = KeyRecord { off: p.off, len: got, flags, seg, seg_off, gen: s.segs.gen(seg), data_crc: crc };
        match f.insert_key(moved, Some(p.version), 0) {
            Ok(true) => {
                head.spare_refs -= 1;
                moves.took(got as u64);
                // The head's segment ended inside the piece: the rest is
                // found again, from the index as it is now.
                at = p.off + got as u64;
            }
            // The range changed since: what is there now wins.
            Ok(false) | Err(Error::NoSpace(_) | Error::Busy(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The bytes of a read piece, checked against the extent's CRC when data
/// CRC is on (a damaged extent is not moved: it stays on the base).
fn piece_data(f: &Front, p: &ReadPiece) -> Option<Vec<u8>> {
    let s = f.s;
    if !s.data_crc() {
        let mut d = vec![0u8; p.len as usize];
        s.media.read(p.src, &mut d).ok()?;
        return Some(d);
    }
    let mut whole = vec![0u8; p.whole.len as usize];
    s.media.read(s.geo.addr(p.whole.seg, p.whole.seg_off), &mut whole).ok()?;
    if data_crc(&[&whole]) != p.whole.crc {
        return None;
    }
    Some(whole[p.skip as usize..(p.skip + p.len) as usize].to_vec())
}
