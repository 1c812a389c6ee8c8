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

/// What a segment is allocated for: data allocations must leave the log's
/// reserve, and writes leave a little more for moved data (relocate.rs):
/// moving is how GC frees space while writes wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Data,
    Moved,
    Log,
}

/// Free segments writes leave to moved data, in a cache with at least
/// [`MOVE_RESERVE_MIN_SEGS`] segments (a smaller one keeps them for writes).
const MOVE_RESERVE: u32 = 2;
const MOVE_RESERVE_MIN_SEGS: u32 = 32;

struct TableState {
    free: VecDeque<u32>,
    meta: Vec<Replica>,
    /// Segments whose metadata had lost a replica at load, each with whether
    /// it is held back from the free list until [`SegmentTable::repair`]
    /// gives it a new generation.
    degraded: Vec<(u32, bool)>,
}

pub struct SegmentTable {
    pub geo: Geometry,
    refs: Vec<AtomicU32>,
    gens: Vec<AtomicU64>,
    /// Segments whose metadata had lost a replica at load. The lost copy may
    /// have been the newer one, holding the next generation (bumped before
    /// the segment was handed out again); replay settles which by the first
    /// key that names the segment ([`SegmentTable::replay_gen`]).
    unsure: Vec<AtomicBool>,
    /// Records to rewrite ([`SegmentTable::repair`]).
    repair_due: AtomicBool,
    shared: Mutex<TableState>,
    /// Free segments kept back for the key log, so journalling never deadlocks.
    reserve: u32,
    /// Bumped whenever a segment is freed; lets hosts wake deferred writes.
    space_epoch: AtomicU64,
    /// Writes are waiting for space: set by whoever found none, cleared
    /// once a data segment could be had again or GC freed some.
    short: AtomicBool,
    /// `shared.free.len()`, stored whenever it changes (under the lock): every
    /// write asks how full the cache is, and the lock bounced between reactors.
    free_n: AtomicU32,
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
        let mut unsure = Vec::with_capacity(n);
        let mut degraded = Vec::new();
        for seg in 0..geo.seg_count {
            let what = format!("segment {seg} metadata");
            let (rep, rec, health) = Replica::load(media, geo.meta_offs(seg), REC_SEG_META, &what)?;
            let (id, gen) = format::seg_meta_from_body(&rec);
            if id != seg {
                return Err(Error::corrupt(what, format!("records segment id {id}")));
            }
            if gen >= format::MAX_COUNTER {
                return Err(Error::corrupt(what, format!("generation {gen} is impossibly large")));
            }
            meta.push(rep);
            gens.push(AtomicU64::new(gen));
            unsure.push(AtomicBool::new(health.degraded()));
            if health.degraded() {
                degraded.push((seg, false));
            }
        }
        Ok(SegmentTable {
            geo,
            refs: (0..n).map(|_| AtomicU32::new(0)).collect(),
            gens,
            unsure,
            repair_due: AtomicBool::new(false),
            shared: Mutex::new(TableState { free: VecDeque::new(), meta, degraded }),
            reserve,
            space_epoch: AtomicU64::new(0),
            short: AtomicBool::new(false),
            free_n: AtomicU32::new(0),
            notifier: Mutex::new(None),
        })
    }

    /// After replay: every segment nobody references is free, but one whose
    /// metadata lost a replica and that nothing references: the lost copy
    /// may have been one generation past the survivor, so it waits for
    /// [`SegmentTable::repair`] to move past both. (A referenced one no key
    /// settled is a key-log segment: no key may name it while it is.)
    pub fn finish_load(&self) {
        let mut sh = self.lock();
        for d in sh.degraded.iter_mut() {
            let i = d.0 as usize;
            let unsettled = self.unsure[i].swap(false, Ordering::AcqRel);
            d.1 = unsettled && self.refs[i].load(Ordering::Relaxed) == 0;
        }
        let held: Vec<u32> = sh.degraded.iter().filter(|d| d.1).map(|d| d.0).collect();
        sh.free = (0..self.geo.seg_count)
            .filter(|&s| self.refs[s as usize].load(Ordering::Relaxed) == 0 && !held.contains(&s))
            .collect();
        self.free_n.store(sh.free.len() as u32, Ordering::Release);
        self.repair_due.store(!sh.degraded.is_empty(), Ordering::Release);
    }

    /// Rewrites the records that had lost a replica at load, and frees the
    /// segments held back for it with a generation past either copy's.
    /// Not part of the load, which must not write (`pcache check` loads
    /// from a device that refuses stores): the first GC step does it.
    /// Returns how many records it rewrote.
    pub fn repair(&self, media: &dyn Media) -> Result<usize> {
        if !self.repair_due.load(Ordering::Acquire) {
            return Ok(0);
        }
        let mut freed = false;
        let mut n = 0;
        let done = {
            let mut sh = self.lock();
            let mut done = Ok(());
            while let Some(&(seg, held)) = sh.degraded.last() {
                let i = seg as usize;
                let gen = self.gens[i].load(Ordering::Acquire) + if held { 2 } else { 0 };
                // Writes the slot that is not current: the lost one.
                if let Err(e) = sh.meta[i].store(media, |r| format::seg_meta_body(r, seg, gen)) {
                    done = Err(e);
                    break;
                }
                self.gens[i].store(gen, Ordering::Release);
                sh.degraded.pop();
                if held {
                    sh.free.push_back(seg);
                    self.free_n.store(sh.free.len() as u32, Ordering::Release);
                    freed = true;
                }
                n += 1;
            }
            if sh.degraded.is_empty() {
                self.repair_due.store(false, Ordering::Release);
            }
            done
        };
        if freed {
            self.wake();
        }
        done.map(|()| n)
    }

    /// Takes a reference during replay (no free-list bookkeeping yet).
    pub fn replay_get(&self, seg: u32) {
        self.refs[seg as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// During replay: whether a key naming generation `key_gen` of `seg` is
    /// live (true) or stale (false); Err(the segment's generation) when the
    /// key names a newer one. The live log's keys all name their segment's
    /// current generation (a segment is freed only after GC passed every key
    /// naming it), so on a segment whose newer metadata replica was lost, a
    /// key naming the next generation is what that replica held: it is
    /// adopted. The first key naming either settles it. (Replay from an
    /// older key_tail, after a lost key_tail replica, can show stale keys
    /// first; with both records damaged the load then usually fails.)
    pub fn replay_gen(&self, seg: u32, key_gen: u64) -> std::result::Result<bool, u64> {
        let i = seg as usize;
        let gen = self.gens[i].load(Ordering::Acquire);
        if key_gen == gen + 1 && self.unsure[i].swap(false, Ordering::AcqRel) {
            self.gens[i].store(key_gen, Ordering::Release);
            return Ok(true);
        }
        if key_gen == gen {
            self.unsure[i].store(false, Ordering::Release);
        }
        if key_gen > gen {
            return Err(gen);
        }
        Ok(key_gen == gen)
    }

    pub fn gen(&self, seg: u32) -> u64 {
        self.gens[seg as usize].load(Ordering::Acquire)
    }

    /// Allocates a free segment holding one reference for the caller.
    /// Data allocations leave `reserve` segments for the key log (and writes
    /// a few more for moved data: see [`Use`]).
    pub fn alloc(&self, use_: Use) -> Option<u32> {
        let mut sh = self.lock();
        let moved = self.moved_reserve();
        let leave = match use_ {
            Use::Data => self.reserve + moved,
            Use::Moved => self.reserve,
            Use::Log => 0,
        };
        if use_ != Use::Log && sh.free.len() as u32 <= leave {
            return None;
        }
        let seg = sh.free.pop_front()?;
        self.free_n.store(sh.free.len() as u32, Ordering::Release);
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
            self.free_n.store(sh.free.len() as u32, Ordering::Release);
        }
        self.space_epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(n) = self.notifier.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            n();
        }
        Ok(())
    }

    pub fn free_count(&self) -> u32 {
        self.free_n.load(Ordering::Acquire)
    }

    /// Free segments data writes may still take: they leave the key log's
    /// reserve and moved data's (see [`SegmentTable::alloc`]).
    pub fn room_for_data(&self) -> u32 {
        self.free_count().saturating_sub(self.reserve + self.moved_reserve())
    }

    fn moved_reserve(&self) -> u32 {
        if self.geo.seg_count >= MOVE_RESERVE_MIN_SEGS {
            MOVE_RESERVE
        } else {
            0
        }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, TableState> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Record, REC_SIZE};
    use crate::pmem::MemMedia;
    use crate::replica::ReplicaHealth;

    const SEG: u64 = 1 << 16;
    const GEO: Geometry = Geometry { seg_start: 0, seg_size: SEG, seg_count: 2 };

    /// Two segments, segment 1 at generation 1 with its newer replica (the
    /// one saying 1) lost; the table loaded from that.
    fn table_with_a_lost_replica() -> (MemMedia, SegmentTable) {
        let media = MemMedia::new((2 * SEG) as usize);
        SegmentTable::format(&media, GEO).unwrap();
        let t = SegmentTable::load(&media, GEO, 0).unwrap();
        t.replay_get(1);
        t.finish_load();
        t.put(&media, 1).unwrap();
        assert_eq!(t.gen(1), 1);
        let newer = GEO.meta_offs(1).into_iter().find(|&o| {
            let mut b = [0u8; REC_SIZE];
            media.read(o, &mut b).unwrap();
            Record::decode(&b, REC_SEG_META).is_some_and(|r| format::seg_meta_from_body(&r).1 == 1)
        });
        media.write(newer.unwrap() + 9, &[0xff]).unwrap();
        let t = SegmentTable::load(&media, GEO, 0).unwrap();
        assert_eq!(t.gen(1), 0, "the survivor is the older replica");
        (media, t)
    }

    /// Segment 1's record loaded again: both replicas whole, and its generation.
    fn reloaded(media: &MemMedia) -> u64 {
        let health = ReplicaHealth::read(media, GEO.meta_offs(1), REC_SEG_META).unwrap();
        assert!(!health.degraded(), "the lost replica is rewritten: {health:?}");
        SegmentTable::load(media, GEO, 0).unwrap().gen(1)
    }

    #[test]
    fn a_key_naming_the_lost_replicas_generation_is_adopted() {
        let (media, t) = table_with_a_lost_replica();
        assert_eq!(t.replay_gen(1, 1), Ok(true), "the lost replica held generation 1");
        assert_eq!(t.gen(1), 1);
        assert_eq!(t.replay_gen(1, 0), Ok(false), "older keys are stale now");
        assert_eq!(t.replay_gen(1, 2), Err(1));
        // An intact record adopts nothing.
        assert_eq!(t.replay_gen(0, 1), Err(0));
        t.replay_get(1);
        t.finish_load();
        assert_eq!(t.repair(&media).unwrap(), 1);
        assert_eq!(t.gen(1), 1);
        assert_eq!(reloaded(&media), 1);
        assert_eq!(t.repair(&media).unwrap(), 0, "once");
    }

    #[test]
    fn a_key_naming_the_survivors_generation_settles_it() {
        let (media, t) = table_with_a_lost_replica();
        assert_eq!(t.replay_gen(1, 0), Ok(true));
        assert_eq!(t.replay_gen(1, 1), Err(0), "settled: a newer key is impossible");
        t.replay_get(1);
        t.finish_load();
        assert_eq!(t.repair(&media).unwrap(), 1);
        assert_eq!(reloaded(&media), 0);
    }

    #[test]
    fn a_segment_no_key_named_is_held_back_until_past_both_generations() {
        let (media, t) = table_with_a_lost_replica();
        t.finish_load();
        assert_eq!(t.replay_gen(1, 1), Err(0), "after replay nothing is adopted");
        assert_eq!(t.free_count(), 1, "held back: its next keys could name a generation the lost copy had");
        assert_eq!(t.repair(&media).unwrap(), 1);
        assert_eq!(t.gen(1), 2, "past 0 and 1, either of which the lost replica may have held");
        assert_eq!(t.free_count(), 2);
        assert_eq!(reloaded(&media), 2);
    }
}
