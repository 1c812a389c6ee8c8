//! Batched writes: copy a run of writes into pmem first, then index them.
//!
//! A write's data goes to pmem with non-temporal stores, and the first atomic
//! instruction after them (taking a lock) waits until they have all reached
//! memory. One write at a time, every write pays for the drain of the copy
//! before it. A batch copies all its writes back to back, holding only its
//! worker's data head, so their drains overlap the way a plain pmem copy
//! loop's do; one fence then covers them all, and the keys go into the index
//! and the open kset in request order, each under its subtree's lock as in
//! [`Front::write`]. The result is the same as writing the requests one
//! after another: a later request over the same bytes wins.

use std::io::IoSlice;

use crate::error::{Error, Result};
use crate::format::KeyRecord;
use crate::heads::{DataHead, DataHeads, Staged};
use crate::index::Index;
use crate::iov;
use crate::request::{Front, WriteOutcome};
use crate::stats::HeadCounters;

/// One write of a batch: `data` goes to base offset `offset`.
#[derive(Debug, Clone, Copy)]
pub struct WriteReq<'a> {
    pub offset: u64,
    pub data: &'a [IoSlice<'a>],
}

/// Where one request of a batch stands.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    total: u64,
    /// Bytes whose keys went in.
    written: u64,
    /// Ran out of space (or log room) before the end: the rest defers.
    short: bool,
}

/// Writes every request of `reqs` into the cache (dirty), as if by
/// [`Front::write`] one after another, and puts one result per request in
/// `out` (cleared first). Once one request defers for lack of space, the
/// ones after it defer too, whole: the caller resubmits them when space
/// is freed, as it does a single deferred write.
pub(crate) fn write_batch(f: &Front, worker: usize, reqs: &[WriteReq], out: &mut Vec<Result<WriteOutcome>>) {
    out.clear();
    let h = f.heads.of(worker);
    let mut head = h.data.lock();
    let mut staged = std::mem::take(&mut head.staged);
    let mut progress = vec![Progress::default(); reqs.len()];

    // Copy first: no lock is taken and no atomic runs between the copies.
    let mut space = true;
    for (i, r) in reqs.iter().enumerate() {
        let total = iov::total_len(r.data);
        progress[i].total = total;
        if let Err(e) = f.s.check_io(r.offset, total) {
            out.push(Err(e));
            continue;
        }
        out.push(Ok(WriteOutcome::Done));
        let mut done = 0u64;
        while done < total {
            if !space {
                progress[i].short = true;
                break;
            }
            match stage_piece(f, &mut head, r.offset + done, r.data, done, total - done) {
                Ok(Some(key)) => {
                    done += key.len as u64;
                    staged.push(Staged { req: i, key });
                }
                Ok(None) => {
                    space = false;
                    progress[i].short = true;
                    break;
                }
                Err(e) => {
                    out[i] = Err(e);
                    break;
                }
            }
        }
    }
    // Every copy is durable before any of their keys can be seen.
    f.s.media.fence();

    // Then the keys, in request order.
    let mut log_room = true;
    for s in staged.drain(..) {
        let p = &mut progress[s.req];
        let ok = log_room && !p.short && out[s.req].is_ok() && {
            // Its data is durable: the key goes in as a fill's or a zero key's does.
            match f.insert_key(s.key, None, worker % f.journal.kset_count()) {
                Ok(_) => true,
                Err(Error::NoSpace(_)) => {
                    f.s.segs.note_short();
                    log_room = false;
                    false
                }
                Err(e) => {
                    out[s.req] = Err(e);
                    false
                }
            }
        };
        if ok {
            p.written += s.key.len as u64;
        } else {
            if out[s.req].is_ok() {
                p.short = true;
            }
            // The piece's space stays unused; drop the reference it held.
            if let Err(e) = f.s.release_seg(s.key.seg) {
                out[s.req] = Err(e);
            }
        }
    }
    head.staged = staged;

    let mut ops = 0u64;
    let mut bytes = 0u64;
    for (i, p) in progress.iter().enumerate() {
        if let Ok(o) = &mut out[i] {
            if p.short {
                *o = f.deferred(p.written);
            } else {
                ops += 1;
                bytes += p.total;
            }
        }
    }
    HeadCounters::add(&h.counters.write_ops, ops);
    HeadCounters::add(&h.counters.write_bytes, bytes);
}

/// Takes space for up to `left` bytes at `off` from the head (never past
/// a subtree or segment end) and copies bytes `at..` of `data` there; the
/// key returned holds its own reference on its segment. None: no space.
fn stage_piece(
    f: &Front,
    head: &mut DataHead,
    off: u64,
    data: &[IoSlice],
    at: u64,
    left: u64,
) -> Result<Option<KeyRecord>> {
    let want = Index::piece_len(off, left) as u32;
    let Some((seg, seg_off, got)) = DataHeads::alloc(f.s, head, want)? else {
        return Ok(None);
    };
    let key = f.data_key(off, seg, seg_off, got, data, at);
    iov::gather_to_media(&*f.s.media, f.s.geo.addr(seg, seg_off), data, at, got as u64)?;
    head.spare_refs -= 1;
    Ok(Some(key))
}
