//! The read path: hits copied from pmem, misses handed back to the host,
//! and read fills (misses the host read from the base, cached clean).
//!
//! A read copies its hits under each subtree's lock, which also keeps GC
//! from reclaiming the segment mid-copy. A fill goes in only if the subtree
//! has not changed since the read found the miss (its version), so a fill
//! never covers a write that completed meanwhile.

use std::io::IoSliceMut;

use crate::error::{Error, Result};
use crate::format::{data_crc, KeyRecord, KEY_FLAG_CRC};
use crate::heads::{DataHeads, Taken};
use crate::index::{Extent, Index};
use crate::iov;
use crate::shared::Shared;
use crate::write::Front;

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

/// The misses of one read: a read usually misses in one piece or two, and
/// those stay off the heap (a host may serve millions of misses a second).
pub type Misses = smallvec::SmallVec<[Miss; 2]>;

/// Reads `[offset, offset+len(bufs))`: cached bytes are copied into `bufs`;
/// the ranges returned are not cached and must be read from the base device.
pub(crate) fn read(s: &Shared, offset: u64, bufs: &mut [IoSliceMut]) -> Result<Misses> {
    let total = iov::total_len_mut(bufs);
    s.check_io(offset, total)?;
    let mut misses = Misses::new();
    let mut pos = 0u64;
    let mut hit_bytes = 0u64;
    while pos < total {
        let off = offset + pos;
        let chunk = Index::piece_len(off, total - pos);
        let mut t = s.index.lock(Index::subtree_of(off));
        let version = t.version;
        let mut result = Ok(());
        let mut first_hit = false;
        t.walk(
            off,
            off + chunk,
            |o, e, skip, n| {
                if result.is_ok() {
                    result = copy_hit(s, e, skip, n, bufs, o - offset, o);
                    hit_bytes += n as u64;
                    first_hit |= !e.is_zero() && !e.is_referenced();
                }
            },
            |o, n| misses.push(Miss { off: o, len: n, buf_at: o - offset, version }),
        );
        if first_hit && result.is_ok() {
            // GC keeps data that is read (index::REFERENCED).
            t.mark_referenced(off, off + chunk);
        }
        drop(t);
        result?;
        pos += chunk;
    }
    let c = s.counters.local();
    c.add(|k| &k.read_hit_bytes, hit_bytes);
    c.add(|k| &k.read_miss_bytes, total - hit_bytes);
    c.add(|k| if misses.is_empty() { &k.read_hit_ops } else { &k.read_miss_ops }, 1);
    Ok(misses)
}

/// Looks `[offset, offset+len)` up for a read that follows soon (a host
/// serving several reads at once looks them all up first, so that their
/// first misses on pmem overlap). When nothing of the range is cached,
/// returns its misses: the read is then done with the cache, and counted.
/// Otherwise hints the media to fetch the cached bytes and returns None;
/// [`read`] then copies them, and what it finds decides what it returns.
/// A range [`read`] would refuse returns None too, for [`read`] to refuse.
pub(crate) fn lookup(s: &Shared, offset: u64, len: u64) -> Option<Misses> {
    s.check_io(offset, len).ok()?;
    let end = offset + len;
    let mut misses = Misses::new();
    let mut cached = false;
    let mut off = offset;
    while off < end {
        let chunk = Index::piece_len(off, end - off);
        let t = s.index.lock(Index::subtree_of(off));
        let version = t.version;
        t.walk(
            off,
            off + chunk,
            |_, e, skip, n| {
                cached = true;
                if !e.is_zero() {
                    // With data CRC the read checks the whole extent first.
                    let (at, n) = if s.data_crc() { (0, e.len) } else { (skip, n) };
                    s.media.prefetch(s.geo.addr(e.seg, e.seg_off) + at as u64, n as u64);
                }
            },
            |o, n| misses.push(Miss { off: o, len: n, buf_at: o - offset, version }),
        );
        drop(t);
        off += chunk;
    }
    if cached || len == 0 {
        return None;
    }
    let c = s.counters.local();
    c.add(|k| &k.read_miss_bytes, len);
    c.add(|k| &k.read_miss_ops, 1);
    Some(misses)
}

fn copy_hit(s: &Shared, e: &Extent, skip: u32, n: u32, bufs: &mut [IoSliceMut], at: u64, off: u64) -> Result<()> {
    if e.is_zero() {
        iov::zero(bufs, at, n as u64);
        return Ok(());
    }
    if e.gen != s.segs.gen(e.seg) as u32 {
        // Unreachable by construction; never return data from a reused segment.
        return Err(Error::corrupt("index", format!("stale extent at offset {off}")));
    }
    let src = s.geo.addr(e.seg, e.seg_off);
    if s.data_crc() {
        let mut whole = vec![0u8; e.len as usize];
        s.media.read(src, &mut whole)?;
        if data_crc(&[&whole]) != e.crc {
            s.counters.local().add(|c| &c.data_crc_errors, 1);
            return Err(Error::DataCrc { offset: off - skip as u64, len: e.len as u64 });
        }
        iov::scatter_from_slice(&whole[skip as usize..(skip + n) as usize], bufs, at);
        Ok(())
    } else {
        iov::scatter_from_media(&*s.media, src + skip as u64, bufs, at, n as u64)
    }
}

/// Caches data just read from the base device for a miss, unless the range
/// changed since the read. Returns whether anything was cached.
pub(crate) fn fill(f: &Front, worker: usize, miss: &Miss, data: &[u8]) -> Result<bool> {
    let s = f.s;
    if data.len() as u64 != miss.len {
        return Ok(false);
    }
    if s.index.lock(Index::subtree_of(miss.off)).version != miss.version {
        return Ok(false);
    }
    let mut head = f.heads.of(worker).data.lock();
    let Some(Taken { seg, off: seg_off, len: got }) = DataHeads::alloc(s, &mut head, miss.len as u32)? else {
        return Ok(false);
    };
    let piece = &data[..got as usize];
    s.media.write(s.geo.addr(seg, seg_off), piece)?;
    s.media.fence();
    let (flags, crc) = if s.data_crc() { (KEY_FLAG_CRC, data_crc(&[piece])) } else { (0, 0) };
    let key = KeyRecord { off: miss.off, len: got, flags, seg, seg_off, gen: s.segs.gen(seg), data_crc: crc };
    let inserted = match f.insert_key(key, Some(miss.version), worker % f.journal.kset_count()) {
        Ok(v) => {
            if v {
                head.spare_refs -= 1;
            }
            v
        }
        Err(Error::NoSpace(_) | Error::Busy(_)) => false,
        Err(e) => return Err(e),
    };
    if inserted {
        s.counters.local().add(|c| &c.fill_bytes, got as u64);
    }
    Ok(inserted)
}
