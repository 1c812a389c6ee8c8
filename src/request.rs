//! The I/O paths: write, read, fill (read caching) and flush.
//!
//! A write takes space from its worker's data head, locks its subtree and its
//! worker's open kset, copies the caller's data into pmem, enters the key in
//! the index and the kset, fences, and unlocks: nobody sees the key before its
//! data is durable. A key that overwrites a key still open in another worker's
//! kset has that kset journalled first (settle_overlaps), so log order equals
//! index order for overlapping writes and replay rebuilds exactly what readers
//! saw. A read copies hits from pmem under the subtree's lock, which also
//! keeps GC from reclaiming the segment mid-copy.

use std::io::{IoSlice, IoSliceMut};

use crate::error::{Error, Result};
use crate::format::{data_crc, KeyRecord, KEY_FLAG_CRC, KEY_FLAG_DIRTY, KEY_FLAG_ZERO};
use crate::heads::DataHeads;
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

/// The locks a key's insertion holds: its subtree, then the open kset it goes into.
struct KeySlot<'a> {
    t: SpinGuard<'a, Subtree>,
    ks: SpinGuard<'a, OpenKset>,
}

/// A range a read did not find in the cache. Read it from the base device,
/// then optionally hand it to [`crate::Cache::fill`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Miss {
    /// Absolute base-device offset.
    pub off: u64,
    pub len: u64,
    /// Byte position of this range inside the read's buffers.
    pub buf_at: u64,
    version: u64,
}

/// What the I/O paths touch: the shared parts, the journal and the data
/// heads. `Cache` hands one out per request.
#[derive(Clone, Copy)]
pub(crate) struct Front<'a> {
    pub s: &'a Shared,
    pub journal: &'a Journal,
    pub heads: &'a DataHeads,
}

impl<'a> Front<'a> {
    /// Writes `data` at base offset `offset` into the cache (dirty).
    pub fn write(&self, worker: usize, offset: u64, data: &[IoSlice]) -> Result<WriteOutcome> {
        let total = iov::total_len(data);
        self.s.check_io(offset, total)?;
        let h = self.heads.of(worker);
        let mut head = h.data.lock();
        let mut done = 0u64;
        while done < total {
            let off = offset + done;
            let want = Index::piece_len(off, total - done) as u32;
            let Some((seg, seg_off, got)) = DataHeads::alloc(self.s, &mut head, want)? else {
                return Ok(self.deferred(done));
            };
            // Lock and prepare first, copy second: see prepare_slot.
            let kset = worker % self.journal.kset_count();
            let slot = match self.key_slot(off, got, kset) {
                Ok(s) => s,
                Err(Error::NoSpace(_)) => {
                    self.s.segs.note_short();
                    return Ok(self.deferred(done));
                }
                Err(e) => return Err(e),
            };
            self.s.counters.local().add(|c| &c.dirty_bytes, got as u64);
            let key = self.data_key(off, seg, seg_off, got, data, done);
            let copied = iov::gather_to_media(&*self.s.media, self.s.geo.addr(seg, seg_off), data, done, got as u64);
            let mut slot = match copied.and_then(|_| self.settle_overlaps(slot, &key)) {
                Ok(s) => s,
                Err(e) => {
                    // The key never went in; its space stays unused.
                    self.s.counters.local().sub(|c| &c.dirty_bytes, got as u64);
                    if let Error::NoSpace(_) = e {
                        self.s.segs.note_short();
                        return Ok(self.deferred(done));
                    }
                    return Err(e);
                }
            };
            self.commit_key(&mut slot, key);
            self.s.media.fence();
            drop(slot);
            head.spare_refs -= 1;
            done += got as u64;
        }
        HeadCounters::add(&h.counters.write_ops, 1);
        HeadCounters::add(&h.counters.write_bytes, total);
        Ok(WriteOutcome::Done)
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
        let t = self.s.index.lock(Index::subtree_of(key.off));
        if expect_version.is_some_and(|v| v != t.version) {
            return Ok(false);
        }
        if t.bypassing(key.off, key.off + key.len as u64) {
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
        let t = self.s.index.lock(Index::subtree_of(off));
        if t.bypassing(off, off + len as u64) {
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

    /// Reads `[offset, offset+len(bufs))`: cached bytes are copied into `bufs`;
    /// the ranges returned are not cached and must be read from the base device.
    pub fn read(&self, offset: u64, bufs: &mut [IoSliceMut]) -> Result<Vec<Miss>> {
        let total = iov::total_len_mut(bufs);
        self.s.check_io(offset, total)?;
        let mut misses = Vec::new();
        let mut pos = 0u64;
        let mut hit_bytes = 0u64;
        while pos < total {
            let off = offset + pos;
            let chunk = Index::piece_len(off, total - pos);
            let t = self.s.index.lock(Index::subtree_of(off));
            let version = t.version;
            let mut result = Ok(());
            t.walk(
                off,
                off + chunk,
                |o, e, skip, n| {
                    if result.is_ok() {
                        result = self.copy_hit(e, skip, n, bufs, o - offset, o);
                        hit_bytes += n as u64;
                    }
                },
                |o, n| misses.push(Miss { off: o, len: n, buf_at: o - offset, version }),
            );
            drop(t);
            result?;
            pos += chunk;
        }
        let c = self.s.counters.local();
        c.add(|s| &s.read_hit_bytes, hit_bytes);
        c.add(|s| &s.read_miss_bytes, total - hit_bytes);
        c.add(|s| if misses.is_empty() { &s.read_hit_ops } else { &s.read_miss_ops }, 1);
        Ok(misses)
    }

    fn copy_hit(&self, e: &Extent, skip: u32, n: u32, bufs: &mut [IoSliceMut], at: u64, off: u64) -> Result<()> {
        if e.is_zero() {
            iov::zero(bufs, at, n as u64);
            return Ok(());
        }
        if e.gen != self.s.segs.gen(e.seg) as u32 {
            // Unreachable by construction; never return data from a reused segment.
            return Err(Error::corrupt("index", format!("stale extent at offset {off}")));
        }
        let src = self.s.geo.addr(e.seg, e.seg_off);
        if self.s.data_crc() {
            let mut whole = vec![0u8; e.len as usize];
            self.s.media.read(src, &mut whole)?;
            if data_crc(&[&whole]) != e.crc {
                self.s.counters.local().add(|c| &c.data_crc_errors, 1);
                return Err(Error::DataCrc { offset: off - skip as u64, len: e.len as u64 });
            }
            iov::scatter_from_slice(&whole[skip as usize..(skip + n) as usize], bufs, at);
            Ok(())
        } else {
            iov::scatter_from_media(&*self.s.media, src + skip as u64, bufs, at, n as u64)
        }
    }

    /// Caches data just read from the base device for a miss, unless the range
    /// changed since the read. Returns whether anything was cached.
    pub fn fill(&self, worker: usize, miss: &Miss, data: &[u8]) -> Result<bool> {
        if data.len() as u64 != miss.len {
            return Ok(false);
        }
        if self.s.index.lock(Index::subtree_of(miss.off)).version != miss.version {
            return Ok(false);
        }
        let mut head = self.heads.of(worker).data.lock();
        let Some((seg, seg_off, got)) = DataHeads::alloc(self.s, &mut head, miss.len as u32)? else { return Ok(false) };
        let piece = &data[..got as usize];
        self.s.media.write(self.s.geo.addr(seg, seg_off), piece)?;
        self.s.media.fence();
        let (flags, crc) = if self.s.data_crc() { (KEY_FLAG_CRC, data_crc(&[piece])) } else { (0, 0) };
        let key = KeyRecord { off: miss.off, len: got, flags, seg, seg_off, gen: self.s.segs.gen(seg), data_crc: crc };
        let inserted = match self.insert_key(key, Some(miss.version), worker % self.journal.kset_count()) {
            Ok(v) => {
                if v {
                    head.spare_refs -= 1;
                }
                v
            }
            Err(Error::NoSpace(_)) => false,
            Err(e) => return Err(e),
        };
        if inserted {
            self.s.counters.local().add(|c| &c.fill_bytes, got as u64);
        }
        Ok(inserted)
    }
}

/// A key over a range a sequential bypass is writing to the base waits for
/// it like a write waits for space: it is deferred, and end_bypass wakes it.
fn bypass_busy() -> Error {
    Error::NoSpace("a sequential bypass is writing this range to the base".into())
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
