//! Segments: the unit of pmem space allocation and reclaim.
//!
//! A segment is referenced by the data head filling it (a pin), by every
//! journalled key that points into it, and — for key-log segments — by the log
//! until GC passes it. A data head takes the references of the keys it will
//! write in advance, one per sector of payload, and returns the unused ones
//! with its pin, so that writes do not touch the shared count. When the last reference goes, its generation is bumped
//! and persisted, and only then is it returned to the free list: keys that
//! still name the old generation are stale and are rejected.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::format::{self, Superblock, REC_SEG_META, SEG_META_OFF, SEG_PAYLOAD_OFF};
use crate::pmem::Media;
use crate::replica::Replica;

/// Where segments sit on the cache device.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub seg_start: u64,
    pub seg_size: u64,
    pub seg_count: u32,
}

impl Geometry {
    /// Bytes of payload (data or ksets) in one segment.
    /// The layout a superblock records.
    pub fn of(sb: &Superblock) -> Geometry {
        Geometry { seg_start: sb.seg_start, seg_size: sb.seg_size as u64, seg_count: sb.seg_count }
    }
    pub fn payload(&self) -> u32 {
        (self.seg_size - SEG_PAYLOAD_OFF) as u32
    }
    /// Device offset of a byte in a segment's payload.
    pub fn addr(&self, seg: u32, off: u32) -> u64 {
        self.seg_start + seg as u64 * self.seg_size + SEG_PAYLOAD_OFF + off as u64
    }
    pub fn meta_offs(&self, seg: u32) -> [u64; 2] {
        let base = self.seg_start + seg as u64 * self.seg_size;
        [base + SEG_META_OFF[0], base + SEG_META_OFF[1]]
    }
}

/// What a segment is allocated for: data allocations must leave the log's reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Data,
    Log,
}

struct Shared {
    free: VecDeque<u32>,
    meta: Vec<Replica>,
}

pub struct SegmentTable {
    pub geo: Geometry,
    refs: Vec<AtomicU32>,
    gens: Vec<AtomicU64>,
    shared: Mutex<Shared>,
    /// Free segments kept back for the key log, so journalling never deadlocks.
    reserve: u32,
    /// Bumped whenever a segment is freed; lets hosts wake deferred writes.
    space_epoch: AtomicU64,
    /// Writes are waiting for space: set by whoever found none, cleared
    /// once a data segment could be had again or GC freed some.
    short: AtomicBool,
    notifier: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl SegmentTable {
    /// Writes generation 0 into both replicas of every segment (format time).
    pub fn format(media: &dyn Media, geo: Geometry) -> Result<()> {
        for seg in 0..geo.seg_count {
            Replica::init(media, geo.meta_offs(seg), REC_SEG_META, |r| format::seg_meta_body(r, seg, 0))?;
        }
        Ok(())
    }

    /// Loads every segment's generation. All segments start free; replay then
    /// takes references on the ones in use and calls [`SegmentTable::finish_load`].
    pub fn load(media: &dyn Media, geo: Geometry, reserve: u32) -> Result<Self> {
        let n = geo.seg_count as usize;
        let mut meta = Vec::with_capacity(n);
        let mut gens = Vec::with_capacity(n);
        for seg in 0..geo.seg_count {
            let what = format!("segment {seg} metadata");
            let (rep, rec, _) = Replica::load(media, geo.meta_offs(seg), REC_SEG_META, &what)?;
            let (id, gen) = format::seg_meta_from_body(&rec);
            if id != seg {
                return Err(Error::corrupt(what, format!("records segment id {id}")));
            }
            if gen >= format::MAX_COUNTER {
                return Err(Error::corrupt(what, format!("generation {gen} is impossibly large")));
            }
            meta.push(rep);
            gens.push(AtomicU64::new(gen));
        }
        Ok(SegmentTable {
            geo,
            refs: (0..n).map(|_| AtomicU32::new(0)).collect(),
            gens,
            shared: Mutex::new(Shared { free: VecDeque::new(), meta }),
            reserve,
            space_epoch: AtomicU64::new(0),
            short: AtomicBool::new(false),
            notifier: Mutex::new(None),
        })
    }

    /// After replay: every segment nobody references is free.
    pub fn finish_load(&self) {
        let mut sh = self.lock();
        sh.free = (0..self.geo.seg_count).filter(|&s| self.refs[s as usize].load(Ordering::Relaxed) == 0).collect();
    }

    /// Takes a reference during replay (no free-list bookkeeping yet).
    pub fn replay_get(&self, seg: u32) {
        self.refs[seg as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn gen(&self, seg: u32) -> u64 {
        self.gens[seg as usize].load(Ordering::Acquire)
    }

    /// Allocates a free segment holding one reference for the caller.
    /// Data allocations leave `reserve` segments for the key log.
    pub fn alloc(&self, use_: Use) -> Option<u32> {
        let mut sh = self.lock();
        if use_ == Use::Data && sh.free.len() as u32 <= self.reserve {
            return None;
        }
        let seg = sh.free.pop_front()?;
        self.refs[seg as usize].store(1, Ordering::Release);
        Some(seg)
    }

    /// Takes `n` more references on a segment the caller already holds one on.
    /// A data head takes, when it starts a segment, one for every key the
    /// segment could hold, so that a write does not touch the (shared) count.
    pub fn get_n(&self, seg: u32, n: u32) {
        self.refs[seg as usize].fetch_add(n, Ordering::AcqRel);
    }

    /// Drops a reference; the last one bumps the generation and frees the segment.
    pub fn put(&self, media: &dyn Media, seg: u32) -> Result<()> {
        self.put_n(media, seg, 1)
    }

    /// Drops `n` references at once (a data head returning the ones its
    /// segment's keys did not use, with its own).
    pub fn put_n(&self, media: &dyn Media, seg: u32, n: u32) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let prev = self.refs[seg as usize].fetch_sub(n, Ordering::AcqRel);
        if prev != n {
            debug_assert!(prev > n, "segment {seg} reference underflow");
            return Ok(());
        }
        let gen = self.gens[seg as usize].load(Ordering::Acquire) + 1;
        {
            let mut sh = self.lock();
            sh.meta[seg as usize].store(media, |r| format::seg_meta_body(r, seg, gen))?;
            self.gens[seg as usize].store(gen, Ordering::Release);
            sh.free.push_back(seg);
        }
        self.space_epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(n) = self.notifier.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            n();
        }
        Ok(())
    }

    pub fn free_count(&self) -> u32 {
        self.lock().free.len() as u32
    }

    pub fn used_count(&self) -> u32 {
        self.geo.seg_count - self.free_count()
    }

    pub fn used_percent(&self) -> u32 {
        self.used_count() * 100 / self.geo.seg_count
    }

    /// Moves the space epoch and calls the notifier without freeing anything:
    /// writes deferred for another reason than space are retried.
    pub fn wake(&self) {
        self.space_epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(n) = self.notifier.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            n();
        }
    }

    /// A write found no space (no data segment, or no room in the key log).
    pub fn note_short(&self) {
        self.short.store(true, Ordering::Relaxed);
    }

    /// Space was had or freed again.
    pub fn note_relieved(&self) {
        self.short.store(false, Ordering::Relaxed);
    }

    /// True while writes wait for space (GC and writeback should hurry).
    pub fn is_short(&self) -> bool {
        self.short.load(Ordering::Relaxed)
    }

    pub fn space_epoch(&self) -> u64 {
        self.space_epoch.load(Ordering::Acquire)
    }

    pub fn set_notifier(&self, f: Option<Box<dyn Fn() + Send + Sync>>) {
        *self.notifier.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}
