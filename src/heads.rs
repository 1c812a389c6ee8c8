//! Data heads: each worker's place to put data.
//!
//! A worker copies its writes' data into its own head's segment, so workers
//! never share a line of pmem or a lock on the write path. A head takes a
//! whole segment at a time, with one reference in advance for every key the
//! segment can hold; each key keeps one, and the head gives back the ones
//! it did not use when it leaves the segment.

use crate::error::Result;
use crate::format::{KeyRecord, SECTOR};
use crate::segment::Use;
use crate::shared::Shared;
use crate::spinlock::{Padded, SpinLock};
use crate::stats::{HeadCounters, Stats};

/// A worker's current place to put data.
#[derive(Default)]
pub(crate) struct DataHead {
    pub seg: Option<u32>,
    pub off: u32,
    /// References taken on `seg` in advance for keys not yet written into it;
    /// returned with the head's own when the head leaves the segment.
    pub spare_refs: u32,
    /// A batch's pieces copied into this head's space, waiting for their keys
    /// (kept to reuse the allocation; see write.rs).
    pub staged: Vec<Staged>,
}

/// A piece of batch request `req` copied into pmem, waiting for its key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Staged {
    pub req: usize,
    pub key: KeyRecord,
}

/// A data head and the counters of the writes through it (on one cache
/// line, which its worker owns).
#[derive(Default)]
pub(crate) struct Head {
    pub data: SpinLock<DataHead>,
    pub counters: HeadCounters,
}

/// Room taken from a data head: `len` bytes at byte `off` of segment `seg`'s payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    pub seg: u32,
    pub off: u32,
    pub len: u32,
}

pub(crate) struct DataHeads {
    heads: Vec<Padded<Head>>,
    /// Where moved data goes (relocate.rs): not a worker's, so that GC and
    /// writeback never wait behind a worker's batch.
    relocation: Padded<Head>,
}

impl DataHeads {
    pub fn new(workers: usize) -> Self {
        DataHeads {
            heads: (0..workers).map(|_| Padded(Head::default())).collect(),
            relocation: Padded(Head::default()),
        }
    }

    /// The head moved data goes to.
    pub fn relocation(&self) -> &Head {
        &self.relocation
    }

    pub fn count(&self) -> usize {
        self.heads.len()
    }

    /// Worker `worker`'s head.
    #[inline]
    pub fn of(&self, worker: usize) -> &Head {
        &self.heads[worker % self.heads.len()]
    }

    /// Takes up to `want` bytes from `head` (never crossing a segment). None
    /// when no segment can be had: the caller defers.
    #[inline]
    pub fn alloc(s: &Shared, head: &mut DataHead, want: u32) -> Result<Option<Taken>> {
        Self::alloc_for(s, head, want, Use::Data)
    }

    /// As [`DataHeads::alloc`], for data of `use_` (moved data may take
    /// segments writes leave: see [`Use`]).
    #[inline]
    pub fn alloc_for(s: &Shared, head: &mut DataHead, want: u32, use_: Use) -> Result<Option<Taken>> {
        loop {
            if let Some(seg) = head.seg {
                let room = s.geo.payload() - head.off;
                if room >= SECTOR as u32 {
                    let got = want.min(room);
                    let at = head.off;
                    head.off += got;
                    return Ok(Some(Taken { seg, off: at, len: got }));
                }
                head.seg = None;
                s.segs.put_n(&*s.media, seg, 1 + std::mem::take(&mut head.spare_refs))?;
            }
            match s.segs.alloc(use_) {
                Some(seg) => {
                    // Moved data may take segments writes may not (Use):
                    // its getting one says nothing of writes waiting.
                    if use_ == Use::Data {
                        s.segs.note_relieved();
                    }
                    // One reference for every key this segment can hold (each
                    // takes at least a sector): see DataHead::spare_refs.
                    let keys = s.geo.payload() / SECTOR as u32;
                    s.segs.get_n(seg, keys);
                    head.seg = Some(seg);
                    head.off = 0;
                    head.spare_refs = keys;
                }
                None => {
                    s.segs.note_short();
                    return Ok(None);
                }
            }
        }
    }

    /// Gives back every head's segment and unused references (at close).
    pub fn release_all(&self, s: &Shared) -> Result<()> {
        for h in self.heads.iter().chain([&self.relocation]) {
            let mut h = h.data.lock();
            if let Some(seg) = h.seg.take() {
                s.segs.put_n(&*s.media, seg, 1 + std::mem::take(&mut h.spare_refs))?;
            }
        }
        Ok(())
    }

    /// Writes completed through every head (cheap: no locks).
    pub fn write_ops(&self) -> u64 {
        self.heads.iter().map(|h| h.counters.write_ops.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    pub fn add_into(&self, s: &mut Stats) {
        for h in &self.heads {
            h.counters.add_into(s);
        }
    }
}
