//! Moving live data to the log head: a key's bytes that the index still maps
//! to it are copied to the relocation data head (DataHeads::relocation) and
//! keyed again, so that the key's segment and kset can be reclaimed while the
//! data stays cached. GC moves clean data that reads hit (gc.rs); writeback
//! keeps dirty data of the open epoch instead of writing it (writeback.rs).
//!
//! A move is a write into the cache whose data comes from pmem: the copy is
//! fenced before its key goes in, and the key goes in only if the subtree is
//! unchanged since the piece was found (a later write there wins), under
//! the same locks and overlap rules as any key (write.rs, insert_key).

use crate::error::{Error, Result};
use crate::format::{data_crc, KeyRecord, KEY_FLAG_CRC, KEY_FLAG_DIRTY};
use crate::heads::{DataHeads, Taken};
use crate::index::{Extent, Index};
use crate::segment::Use;
use crate::shared::Shared;
use crate::write::Front;

/// The open kset moved keys go into (any will do: see write.rs, settle_overlaps).
pub(crate) const MOVE_KSET: usize = 0;
/// Bytes moving may cost, as a share (percent) of the bytes GC or writeback
/// took: each of their steps frees at least the rest.
pub(crate) const MOVE_MAX_PERCENT: u64 = 75;
/// The most credit carried from one step to the next, as a fraction (1/n)
/// of the cache's data space.
const MOVE_CREDIT_SHARE: u64 = 8;

/// What moving may still cost: [`MOVE_MAX_PERCENT`] of the bytes taken,
/// less what was moved, carried from step to step (a kset may hold nothing
/// but live data) up to 1/[`MOVE_CREDIT_SHARE`] of the cache. GC's moves and
/// writeback's keeping each have one, so that both always free space.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MoveCredit(u64);

impl MoveCredit {
    pub fn new(bytes: u64) -> Self {
        MoveCredit(bytes)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// The most credit a cache carries.
    pub fn cap(s: &Shared) -> u64 {
        s.geo.seg_count as u64 * s.geo.payload() as u64 / MOVE_CREDIT_SHARE
    }

    /// `taken` bytes were taken (reclaimed, or planned for writeback).
    pub fn earn(&mut self, taken: u64, cap: u64) {
        self.0 = (self.0.min(cap) + taken * MOVE_MAX_PERCENT / 100).min(cap);
    }

    /// Takes credit for moving `n` bytes, if there is enough.
    pub fn take(&mut self, n: u64) -> bool {
        let ok = self.covers(n);
        if ok {
            self.spend(n);
        }
        ok
    }

    /// Whether there is credit to move `n` bytes.
    pub fn covers(self, n: u64) -> bool {
        n <= self.0
    }

    /// `n` bytes were moved (or set aside for moving).
    pub fn spend(&mut self, n: u64) {
        self.0 = self.0.saturating_sub(n);
    }
}

/// A piece of a key that the index still maps to the key's own data.
pub(crate) struct LivePiece {
    pub off: u64,
    pub len: u32,
    /// The index extent the bytes belong to (its CRC covers exactly it), and
    /// where in it the piece starts.
    whole: Extent,
    skip: u32,
    /// The subtree's version when the piece was seen.
    version: u64,
}

/// The first piece of `key` in `[from, to)` that the index still maps to
/// the key's own data (with `read_only`, only one that reads hit).
pub(crate) fn next_live_piece(f: &Front, key: &KeyRecord, from: u64, to: u64, read_only: bool) -> Option<LivePiece> {
    let t = f.s.index.lock(Index::subtree_of(key.off));
    let mut found = None;
    t.walk(
        from,
        to.min(key.off + key.len as u64),
        |o, e, skip, n| {
            let mine = !e.is_zero()
                && e.seg == key.seg
                && e.gen == key.gen as u32
                && e.seg_off as u64 + skip as u64 == key.seg_off as u64 + (o - key.off);
            if found.is_none() && mine && (!read_only || e.is_referenced()) {
                found = Some(LivePiece { off: o, len: n, whole: *e, skip, version: t.version });
            }
        },
        |_, _| {},
    );
    found
}

/// How a move went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moved {
    /// The first `n` bytes of the piece were moved (the head's segment may
    /// end inside it: find the rest again).
    Bytes(u32),
    /// The range changed since the piece was found: nothing moved.
    Changed,
    /// No free segment for the relocation head: nothing moved.
    NoRoom,
    /// The data fails its CRC: nothing moved.
    Damaged,
}

/// Moves `p` (or its first part, up to the end of the head's segment),
/// keyed dirty or clean.
pub(crate) fn move_piece(f: &Front, p: &LivePiece, dirty: bool) -> Result<Moved> {
    let s = f.s;
    let Some(data) = piece_data(f, p)? else { return Ok(Moved::Damaged) };
    let mut head = f.heads.relocation().data.lock();
    let Some(Taken { seg, off: seg_off, len: got }) = DataHeads::alloc_for(s, &mut head, p.len, Use::Moved)? else {
        return Ok(Moved::NoRoom);
    };
    let piece = &data[..got as usize];
    s.media.write(s.geo.addr(seg, seg_off), piece)?;
    s.media.fence();
    let (crc_flag, crc) = if s.data_crc() { (KEY_FLAG_CRC, data_crc(&[piece])) } else { (0, 0) };
    let flags = crc_flag | if dirty { KEY_FLAG_DIRTY } else { 0 };
    let key = KeyRecord { off: p.off, len: got, flags, seg, seg_off, gen: s.segs.gen(seg), data_crc: crc };
    match f.insert_key(key, Some(p.version), MOVE_KSET) {
        Ok(true) => {
            head.spare_refs -= 1;
            Ok(Moved::Bytes(got))
        }
        // The copy's space stays unused (its reference is returned with the head's).
        Ok(false) | Err(Error::NoSpace(_) | Error::Busy(_)) => Ok(Moved::Changed),
        Err(e) => Err(e),
    }
}

/// The bytes of a piece, checked against their extent's CRC when data CRC
/// is on (None: they fail it).
fn piece_data(f: &Front, p: &LivePiece) -> Result<Option<Vec<u8>>> {
    let s = f.s;
    let at = s.geo.addr(p.whole.seg, p.whole.seg_off);
    if !s.data_crc() {
        let mut d = vec![0u8; p.len as usize];
        s.media.read(at + p.skip as u64, &mut d)?;
        return Ok(Some(d));
    }
    let mut whole = vec![0u8; p.whole.len as usize];
    s.media.read(at, &mut whole)?;
    if data_crc(&[&whole]) != p.whole.crc {
        s.counters.local().add(|c| &c.data_crc_errors, 1);
        return Ok(None);
    }
    Ok(Some(whole[p.skip as usize..(p.skip + p.len) as usize].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::MoveCredit;

    #[test]
    fn credit_bounds_what_is_kept() {
        let mut k = MoveCredit::default();
        k.earn(1000, 10_000);
        assert!(k.take(700) && !k.take(51) && k.take(50));
        k.earn(1_000_000, 10_000);
        assert!(!k.take(10_001), "credit is capped");
    }
}
