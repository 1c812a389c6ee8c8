//! The write path: writes, zero keys, the keys of read fills, and FLUSH.
//!
//! A write's data goes to pmem with non-temporal stores; its key goes into
//! the index and its worker's open kset, each under its lock, and the data
//! is fenced before the locks are released: nobody sees a key before its
//! data is durable. A key that overwrites a key still open in another
//! worker's kset has that kset journalled first (settle_overlaps), so log
//! order equals index order for overlapping writes and replay rebuilds
//! exactly what readers saw.
//!
//! Every write is a batch ([`Front::write_batch`]; a single write is a batch
//! of one). How its pieces reach pmem depends on how many requests there are,
//! because an atomic instruction (taking a lock) waits until every earlier
//! non-temporal store has reached memory:
//! - several requests: all copies first, back to back, holding only the
//!   worker's data head, so their drains overlap the way a plain pmem copy
//!   loop's do; one fence covers them all; then the keys go in, in request
//!   order. The result is the same as writing the requests one after
//!   another: a later request over the same bytes wins.
//! - one request alone: each piece's locks are taken before its copy and its
//!   key enters the index while the copy drains (see prepare_slot); with no
//!   other copy to overlap, that is where the drain is hidden.

use std::io::IoSlice;

use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::format::{KeyRecord, KEY_FLAG_CRC, KEY_FLAG_DIRTY, KEY_FLAG_ZERO};
use crate::heads::{DataHead, DataHeads, Staged, Taken};
use crate::index::{Extent, Index, KsetTag, PieceCrc, Subtree};
use crate::iov;
use crate::journal::{Journal, OpenKset};
use crate::shared::Shared;
use crate::spinlock::SpinGuard;
use crate::stats::HeadCounters;

/// Result of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// All bytes are in the cache.
    Done,
    /// The cache is full: the first `written` bytes are in; resubmit the rest
    /// once space is freed (see [`crate::Cache::set_space_notifier`]).
    Deferred { written: u64 },
}

/// One write of a batch: `data` goes to base offset `offset`.
#[derive(Debug, Clone, Copy)]
pub struct WriteReq<'a> {
    pub offset: u64,
    pub data: &'a [IoSlice<'a>],
}

/// What the I/O paths touch: the shared parts, the journal and the data
/// heads. `Cache` hands one out per request.
#[derive(Clone, Copy)]
pub(crate) struct Front<'a> {
    pub s: &'a Shared,
    pub journal: &'a Journal,
    pub heads: &'a DataHeads,
}

/// The locks a key's insertion holds: its subtree, then the open kset it goes into.
struct KeySlot<'a> {
    t: SpinGuard<'a, Subtree>,
    ks: SpinGuard<'a, OpenKset>,
}

/// Where one request of a batch stands.
#[derive(Debug, Default)]
struct Progress {
    total: u64,
    /// Bytes whose keys went in.
    written: u64,
    /// Ran out of space (or log room) before the end: the rest defers.
    short: bool,
    err: Option<Error>,
}

/// Progress of a batch's requests (inline up to the SPDK module's usual batch).
type Batch = SmallVec<[Progress; 32]>;

impl<'a> Front<'a> {
    /// Writes `data` at base offset `offset` into the cache (dirty): a batch
    /// of one.
    pub fn write(&self, worker: usize, offset: u64, data: &[IoSlice]) -> Result<WriteOutcome> {
        let mut batch = Batch::new();
        self.write_reqs(worker, &[WriteReq { offset, data }], &mut batch);
        match batch.pop() {
            Some(p) => self.outcome(p),
            None => Ok(WriteOutcome::Done),
        }
    }

    /// Writes every request of `reqs` into the cache (dirty), as if by
    /// [`Front::write`] one after another, and puts one result per request in
    /// `out` (cleared first). Once one request defers for lack of space, the
    /// ones after it defer too, whole: the caller resubmits them when space
    /// is freed, as it does a single deferred write.
    pub fn write_batch(&self, worker: usize, reqs: &[WriteReq], out: &mut Vec<Result<WriteOutcome>>) {
        out.clear();
        let mut batch = Batch::new();
        self.write_reqs(worker, reqs, &mut batch);
        out.extend(batch.into_iter().map(|p| self.outcome(p)));
    }

    /// What a request's progress means to its caller.
    fn outcome(&self, p: Progress) -> Result<WriteOutcome> {
        match p {
            Progress { err: Some(e), .. } => Err(e),
            Progress { short: true, written, .. } => Ok(self.deferred(written)),
            _ => Ok(WriteOutcome::Done),
        }
    }

    /// Writes `reqs` in order under the worker's data head (see the module
    /// doc), one entry of `batch` per request.
    fn write_reqs(&self, worker: usize, reqs: &[WriteReq], batch: &mut Batch) {
        let h = self.heads.of(worker);
        let mut head = h.data.lock();
        let alone = reqs.len() == 1;
        let mut staged = std::mem::take(&mut head.staged);
        let mut space = true;
        for (i, r) in reqs.iter().enumerate() {
            let total = iov::total_len(r.data);
            batch.push(Progress { total, ..Progress::default() });
            let p = &mut batch[i];
            if let Err(e) = self.s.check_io(r.offset, total) {
                p.err = Some(e);
                continue;
            }
            let mut done = 0u64;
            while done < total {
                if !space {
                    p.short = true;
                    break;
                }
                match self.write_piece(worker, (i, r), done, total - done, alone, &mut head, &mut staged) {
                    Ok(Some(got)) => done += got as u64,
                    Ok(None) => {
                        space = false;
                        p.short = true;
                        break;
                    }
                    Err(e) => {
                        p.err = Some(e);
                        break;
                    }
                }
                if alone {
                    p.written = done;
                }
            }
        }
        if !alone {
            // Every copy is durable before any of their keys can be seen.
            self.s.media.fence();
            self.enter_staged(worker, &mut staged, batch);
        }
        head.staged = staged;

        let (mut ops, mut bytes) = (0u64, 0u64);
        for p in batch.iter().filter(|p| p.err.is_none() && !p.short) {
            ops += 1;
            bytes += p.total;
        }
        HeadCounters::add(&h.counters.write_ops, ops);
        HeadCounters::add(&h.counters.write_bytes, bytes);
    }

    /// Takes space for the next piece of request `req` (`left` bytes from
    /// byte `at` on), copies it and enters or stages its key. Ok(None): no
    /// space, or no log room, or its range is held by a bypass: the rest
    /// of the batch defers.
    #[allow(clippy::too_many_arguments)]
    fn write_piece(
        &self,
        worker: usize,
        (req, r): (usize, &WriteReq),
        at: u64,
        left: u64,
        alone: bool,
        head: &mut DataHead,
        staged: &mut Vec<Staged>,
    ) -> Result<Option<u32>> {
        let off = r.offset + at;
        let want = Index::piece_len(off, left) as u32;
        let Some(Taken { seg, off: seg_off, len: got }) = DataHeads::alloc(self.s, head, want)? else {
            return Ok(None);
        };
        let key = self.data_key(off, seg, seg_off, got, r.data, at);
        let copied = if alone {
            self.enter_piece(worker, key, r.data, at, head)
        } else {
            self.stage_piece(key, r.data, at, head, staged, req)
        };
        match copied {
            Ok(()) => Ok(Some(got)),
            Err(Error::NoSpace(_)) => {
                self.s.segs.note_short();
                Ok(None)
            }
            // Waits for the bypass to end (which wakes deferred writes);
            // marking the cache short would hurry writeback and GC for nothing.
            Err(Error::Busy(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A request alone: locks and prepares the key's slot, copies the data,
    /// enters the key and fences before unlocking (see prepare_slot for the
    /// order). On failure the key never went in and its space stays unused.
    fn enter_piece(&self, worker: usize, key: KeyRecord, data: &[IoSlice], at: u64, head: &mut DataHead) -> Result<()> {
        let slot = self.key_slot(key.off, key.len, worker % self.journal.kset_count())?;
        let addr = self.s.geo.addr(key.seg, key.seg_off);
        iov::gather_to_media(&*self.s.media, addr, data, at, key.len as u64)?;
        let mut slot = self.settle_overlaps(slot, &key)?;
        self.s.counters.local().add(|c| &c.dirty_bytes, key.len as u64);
        self.commit_key(&mut slot, key);
        self.s.media.fence();
        drop(slot);
        head.spare_refs -= 1;
        Ok(())
    }

    /// One of several requests: copies the piece and stages its key, which
    /// takes its own reference on the segment.
    fn stage_piece(
        &self,
        key: KeyRecord,
        data: &[IoSlice],
        at: u64,
        head: &mut DataHead,
        staged: &mut Vec<Staged>,
        req: usize,
    ) -> Result<()> {
        iov::gather_to_media(&*self.s.media, self.s.geo.addr(key.seg, key.seg_off), data, at, key.len as u64)?;
        head.spare_refs -= 1;
        staged.push(Staged { req, key });
        Ok(())
    }

    /// Enters the staged keys, whose data is durable, in request order.
    fn enter_staged(&self, worker: usize, staged: &mut Vec<Staged>, batch: &mut Batch) {
        // Once one key cannot go in (no log room, or a bypass holds its range),
        // the later ones wait too: a batch goes in in order.
        let mut go_on = true;
        for s in staged.drain(..) {
            let p = &mut batch[s.req];
            let ok = go_on && !p.short && p.err.is_none() && {
                // Its data is durable: the key goes in as a fill's or a zero key's does.
                match self.insert_key(s.key, None, worker % self.journal.kset_count()) {
                    Ok(_) => true,
                    Err(e @ (Error::NoSpace(_) | Error::Busy(_))) => {
                        if matches!(e, Error::NoSpace(_)) {
                            self.s.segs.note_short();
                        }
                        go_on = false;
                        false
                    }
                    Err(e) => {
                        p.err = Some(e);
                        false
                    }
                }
            };
            if ok {
                p.written += s.key.len as u64;
            } else {
                if p.err.is_none() {
                    p.short = true;
                }
                // The piece's space stays unused; drop the reference it held.
                if let Err(e) = self.s.release_seg(s.key.seg) {
                    p.err = Some(e);
                }
            }
        }
    }

    /// The key of a dirty piece: `len` bytes from byte `at` of `data`, stored
    /// at `seg`/`seg_off`, for base offset `off`.
    pub(crate) fn data_key(&self, off: u64, seg: u32, seg_off: u32, len: u32, data: &[IoSlice], at: u64) -> KeyRecord {
        let crc = if self.s.data_crc() { iov::crc_of(data, at, len as u64) } else { 0 };
        let flags = if self.s.data_crc() { KEY_FLAG_DIRTY | KEY_FLAG_CRC } else { KEY_FLAG_DIRTY };
        KeyRecord { off, len, flags, seg, seg_off, gen: self.s.segs.gen(seg), data_crc: crc }
    }

    /// Makes `[offset, offset+len)` read as zeros (WRITE_ZEROES and UNMAP):
    /// journals zero keys, one per subtree piece, that writeback turns into
    /// write_zeroes on the base. Takes no data space.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<WriteOutcome> {
        self.s.check_io(offset, len)?;
        let mut done = 0u64;
        while done < len {
            let off = offset + done;
            let n = Index::piece_len(off, len - done) as u32;
            let key = KeyRecord {
                off,
                len: n,
                flags: KEY_FLAG_DIRTY | KEY_FLAG_ZERO,
                seg: 0,
                seg_off: 0,
                gen: 0,
                data_crc: 0,
            };
            // No worker here: any kset will do (see settle_overlaps).
            let kset = Index::subtree_of(off) % self.journal.kset_count();
            match self.insert_key(key, None, kset) {
                Ok(_) => {}
                Err(Error::NoSpace(_)) => {
                    self.s.segs.note_short();
                    return Ok(self.deferred(done));
                }
                Err(Error::Busy(_)) => return Ok(self.deferred(done)),
                Err(e) => return Err(e),
            }
            done += n as u64;
        }
        Ok(WriteOutcome::Done)
    }

    /// A write that found no space after its first `written` bytes.
    pub(crate) fn deferred(&self, written: u64) -> WriteOutcome {
        self.s.counters.local().add(|c| &c.deferred_writes, 1);
        WriteOutcome::Deferred { written }
    }

    /// Enters a key whose data is durable (a fill, a zero key, a batched
    /// write) in the index and open kset `kset`. With `expect_version`,
    /// only if the subtree has not changed since (read fills). Returns whether
    /// the key went in.
    pub(crate) fn insert_key(&self, key: KeyRecord, expect_version: Option<u64>, kset: usize) -> Result<bool> {
        let mut t = self.s.index.lock(Index::subtree_of(key.off));
        if expect_version.is_some_and(|v| v != t.version) {
            return Ok(false);
        }
        if t.bypass_blocks(key.off, key.off + key.len as u64) {
            return Err(bypass_busy());
        }
        let slot = self.prepare_slot(t, self.journal.kset(kset))?;
        let mut slot = self.settle_overlaps(slot, &key)?;
        if key.is_zero() && covered_by_open_zero_key(&slot.ks.keys, &key) {
            // The newest key over this range, not yet journalled, already
            // zeroes it: another would only add writeback work.
            return Ok(true);
        }
        if key.is_dirty() {
            self.s.counters.local().add(|c| &c.dirty_bytes, key.len as u64);
        }
        self.commit_key(&mut slot, key);
        Ok(true)
    }

    /// Locks the subtree of a key at `off` and open kset `kset`, and prepares
    /// the kset (see prepare_slot). The caller counts the key's dirty bytes.
    fn key_slot(&self, off: u64, len: u32, kset: usize) -> Result<KeySlot<'a>> {
        let mut t = self.s.index.lock(Index::subtree_of(off));
        if t.bypass_blocks(off, off + len as u64) {
            return Err(bypass_busy());
        }
        self.prepare_slot(t, self.journal.kset(kset))
    }

    /// Makes the slot's kset the only open kset holding keys over `key`'s
    /// range, journalling any other first.
    ///
    /// Keys of one kset replay in the order they were added, but ksets are
    /// journalled in whatever order they fill or time out. A key that
    /// overwrites a key still open in another kset must therefore not reach
    /// the log before that kset does: sealing it now puts the older key first.
    /// The zero-key shortcut relies on the result too. Runs under the subtree
    /// lock, so no key can enter the range meanwhile; the slot's own kset is
    /// let go while others are sealed (kset locks are taken one at a time) and
    /// prepared again. A write calls this after its data copy, when the
    /// subtree's lines it reads are wanted anyway (see prepare_slot).
    fn settle_overlaps(&self, slot: KeySlot<'a>, key: &KeyRecord) -> Result<KeySlot<'a>> {
        let mine = slot.ks.id;
        let mut open: Vec<KsetTag> = Vec::new();
        slot.t.walk(
            key.off,
            key.off + key.len as u64,
            |_, e, _, _| {
                let k = e.kset();
                if k.id != mine && self.journal.is_open(k) && !open.contains(&k) {
                    open.push(k);
                }
            },
            |_, _| {},
        );
        if open.is_empty() {
            return Ok(slot);
        }
        let KeySlot { t, ks } = slot;
        drop(ks);
        for k in open {
            let mut other = self.journal.kset(k.id as usize);
            // Journalled meanwhile if the epoch moved on.
            if other.epoch == k.epoch {
                self.journal.seal(self.s, &mut other)?;
            }
        }
        self.prepare_slot(t, self.journal.kset(mine as usize))
    }

    /// Everything a key's insertion needs that takes an atomic instruction —
    /// sealing a full kset, starting the kset timer (Journal::prepare) — so
    /// that [`Front::commit_key`] is plain stores. A write runs this before
    /// its data copy, and looks at the index after it: measured side by side,
    /// taking the index's cache misses before the copy, or the atomics after
    /// it, both cost more than this order.
    fn prepare_slot(&self, t: SpinGuard<'a, Subtree>, mut ks: SpinGuard<'a, OpenKset>) -> Result<KeySlot<'a>> {
        self.journal.prepare(self.s, &mut ks)?;
        Ok(KeySlot { t, ks })
    }

    /// Enters the key in the index and the open kset of a prepared slot.
    fn commit_key(&self, slot: &mut KeySlot, key: KeyRecord) {
        let e = Extent::of_key(&key, KsetTag { id: slot.ks.id, epoch: slot.ks.epoch });
        let pieces = PieceCrc::new(&*self.s.media, &self.s.geo);
        let recrc = |whole: &Extent, piece: &Extent| pieces.crc(whole, piece);
        slot.t.insert(key.off, e, if self.s.data_crc() { Some(&recrc) } else { None });
        slot.ks.keys.push(key);
    }

    /// Makes every write completed so far durable (FLUSH, and FUA after a write).
    pub fn flush(&self) -> Result<()> {
        self.journal.flush(self.s)?;
        self.s.counters.local().add(|c| &c.flush_ops, 1);
        Ok(())
    }
}

/// A key over a range a sequential bypass is writing to the base waits for
/// it like a write waits for space: it is deferred, and end_bypass wakes it.
fn bypass_busy() -> Error {
    Error::Busy("a bypass is writing this range to the base".into())
}

/// True when the newest open key overlapping `key` is a zero key covering it
/// (every open key over the range is in `open`: see settle_overlaps).
fn covered_by_open_zero_key(open: &[KeyRecord], key: &KeyRecord) -> bool {
    let (start, end) = (key.off, key.off + key.len as u64);
    open.iter()
        .rev()
        .find(|k| k.off < end && start < k.off + k.len as u64)
        .is_some_and(|k| k.is_zero() && k.off <= start && k.off + k.len as u64 >= end)
}
