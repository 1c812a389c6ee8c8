//! Writeback: dirty data to the base device, in log order.
//!
//! One kset at a time, from dirty_tail: write its dirty keys to the base,
//! wait, flush the base, then persist the advanced dirty_tail. The base device
//! therefore always holds a prefix of the journalled history, and a kset whose
//! writes fail is simply retried — nothing is dropped.
//!
//! The host calls [`Cache::writeback_step`] from a poller; completions may
//! arrive on any thread and only update counters.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::base::BaseDevice;
use crate::cache::{lock, Cache};
use crate::error::{Error, Result};
use crate::format::{data_crc, KeyRecord, LogPos, KEY_FLAG_CRC};
use crate::keylog::read_kset;
use crate::stats::Counters;

/// Bytes of dirty data in flight to the base at once.
const WAVE_BYTES: u64 = 8 << 20;

/// Below this share of segments in use (or gc_percent, if lower), writeback
/// yields to a busy front end: one step per [`TRICKLE`].
pub const WB_EASY_PERCENT: u32 = 50;
pub const TRICKLE: Duration = Duration::from_millis(10);

#[derive(Default)]
pub(crate) struct Inflight {
    pending: AtomicUsize,
    failed: AtomicBool,
}

#[derive(Default)]
pub(crate) enum WbState {
    #[default]
    Idle,
    /// Writing the kset at `pos`; `waves` are batches of non-overlapping keys.
    Writing { pos: LogPos, next: LogPos, waves: Vec<Vec<KeyRecord>>, wave: usize, io: Arc<Inflight>, bytes: u64 },
    Flushing { next: LogPos, io: Arc<Inflight>, bytes: u64 },
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WbProgress {
    /// Nothing dirty is journalled.
    Idle,
    /// I/O is in flight or was just submitted.
    Busy,
    /// A kset was completely written back.
    Advanced,
}

impl Cache {
    /// How long a host should leave between writeback steps while its front
    /// end is busy; None: no wait (step whenever the poller runs).
    ///
    /// A burst should get the CPU while the cache has room: writeback then
    /// trickles, one step per TRICKLE, until WB_EASY_PERCENT of the segments
    /// are in use. From there the wait shrinks in proportion to the room left
    /// before gc_percent, where it reaches zero — GC can only reclaim
    /// written-back segments, so writeback must be at full speed by then.
    /// No wait when the front end is idle, when writes wait for space or
    /// when `flush_waits` (someone waits for everything to reach the base).
    pub fn writeback_pace(&self, front_busy: bool, flush_waits: bool) -> Option<Duration> {
        if !front_busy || flush_waits || self.under_pressure() {
            return None;
        }
        pace(self.used_percent(), self.gc_percent() as u32)
    }

    /// Advances writeback by one step; never blocks.
    pub fn writeback_step(&self, base: &dyn BaseDevice) -> Result<WbProgress> {
        let mut st = lock(&self.wb);
        loop {
            match std::mem::take(&mut *st) {
                WbState::Idle => {
                    let head = lock(&self.log).head;
                    let pos = lock(&self.tails).dirty;
                    if pos.seq >= head.seq {
                        return Ok(WbProgress::Idle);
                    }
                    let k = read_kset(&*self.media, &self.segs, self.sb.nonce, pos)?
                        .ok_or_else(|| Error::corrupt("key log", format!("no kset at dirty_tail seq {}", pos.seq)))?;
                    let keys: Vec<KeyRecord> =
                        k.keys.into_iter().filter(|k| k.is_dirty() && (k.is_zero() || k.gen == self.segs.gen(k.seg))).collect();
                    let bytes = keys.iter().map(|k| k.len as u64).sum();
                    *st = WbState::Writing { pos, next: k.next, waves: waves(keys), wave: 0, io: Arc::default(), bytes };
                    // Submit the first wave right away.
                    if let WbState::Writing { waves, wave, io, .. } = &mut *st {
                        if let Some(w) = waves.first() {
                            self.submit_wave(base, w, io)?;
                            *wave = 1;
                            return Ok(WbProgress::Busy);
                        }
                    }
                }
                WbState::Writing { pos, next, waves, wave, io, bytes } => {
                    if io.pending.load(Ordering::Acquire) > 0 {
                        *st = WbState::Writing { pos, next, waves, wave, io, bytes };
                        return Ok(WbProgress::Busy);
                    }
                    if io.failed.load(Ordering::Acquire) {
                        // Start the kset over later; rewriting is idempotent.
                        Counters::add(&self.counters.local().writeback_errors, 1);
                        *st = WbState::Idle;
                        return Ok(WbProgress::Busy);
                    }
                    if wave < waves.len() {
                        self.submit_wave(base, &waves[wave], &io)?;
                        *st = WbState::Writing { pos, next, waves, wave: wave + 1, io, bytes };
                        return Ok(WbProgress::Busy);
                    }
                    let io = Arc::new(Inflight { pending: AtomicUsize::new(1), failed: AtomicBool::new(false) });
                    *st = WbState::Flushing { next, io: io.clone(), bytes };
                    base.flush(completion(io));
                }
                WbState::Flushing { next, io, bytes } => {
                    if io.pending.load(Ordering::Acquire) > 0 {
                        *st = WbState::Flushing { next, io, bytes };
                        return Ok(WbProgress::Busy);
                    }
                    if io.failed.load(Ordering::Acquire) {
                        Counters::add(&self.counters.local().writeback_errors, 1);
                        *st = WbState::Idle;
                        return Ok(WbProgress::Busy);
                    }
                    lock(&self.tails).set_dirty(&*self.media, next)?;
                    Counters::sub(&self.counters.local().dirty_bytes, bytes);
                    Counters::add(&self.counters.local().writeback_bytes, bytes);
                    Counters::add(&self.counters.local().writeback_ksets, 1);
                    return Ok(WbProgress::Advanced);
                }
            }
        }
    }

    fn submit_wave(&self, base: &dyn BaseDevice, wave: &[KeyRecord], io: &Arc<Inflight>) -> Result<()> {
        // Read everything first, so a bad data CRC stops the wave before any write.
        let mut bufs = Vec::with_capacity(wave.len());
        for k in wave {
            if k.is_zero() {
                bufs.push(Vec::new());
                continue;
            }
            let mut buf = vec![0u8; k.len as usize];
            self.media.read(self.geo.addr(k.seg, k.seg_off), &mut buf)?;
            if k.flags & KEY_FLAG_CRC != 0 && data_crc(&[&buf]) != k.data_crc {
                Counters::add(&self.counters.local().data_crc_errors, 1);
                return Err(Error::DataCrc { offset: k.off, len: k.len as u64 });
            }
            bufs.push(buf);
        }
        io.pending.fetch_add(wave.len(), Ordering::AcqRel);
        for (k, buf) in wave.iter().zip(bufs) {
            if k.is_zero() {
                base.write_zeroes(k.off, k.len as u64, completion(io.clone()));
            } else {
                base.write(k.off, buf, completion(io.clone()));
            }
        }
        Ok(())
    }

    /// Journals open ksets, then drives writeback until every dirty byte is on
    /// the base device. For tools and tests, with a base that completes inline
    /// or on other threads.
    pub fn writeback_all(&self, base: &dyn BaseDevice) -> Result<()> {
        self.flush()?;
        let mut idle_spins = 0u32;
        loop {
            match self.writeback_step(base)? {
                WbProgress::Idle => return Ok(()),
                WbProgress::Advanced => idle_spins = 0,
                WbProgress::Busy => {
                    idle_spins += 1;
                    if idle_spins > 1000 {
                        std::thread::yield_now();
                    }
                    if self.counters.total(|c| &c.writeback_errors) > 0 && idle_spins > 1_000_000 {
                        return Err(Error::Io("writeback keeps failing".into()));
                    }
                }
            }
        }
    }
}

fn completion(io: Arc<Inflight>) -> crate::base::Done {
    Box::new(move |r: Result<()>| {
        if r.is_err() {
            io.failed.store(true, Ordering::Release);
        }
        io.pending.fetch_sub(1, Ordering::AcqRel);
    })
}

/// Splits keys into batches that can be written concurrently: a key that
/// overlaps an earlier key of the batch (or would exceed the byte budget)
/// starts a new batch, so overlapping writes reach the base in log order.
fn waves(keys: Vec<KeyRecord>) -> Vec<Vec<KeyRecord>> {
    let mut out: Vec<Vec<KeyRecord>> = Vec::new();
    let mut bytes = 0u64;
    for k in keys {
        let start_new = match out.last() {
            None => true,
            Some(w) => {
                bytes + k.len as u64 > WAVE_BYTES
                    || w.iter().any(|o| o.off < k.off + k.len as u64 && k.off < o.off + o.len as u64)
            }
        };
        if start_new {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += k.len as u64;
        out.last_mut().expect("a wave exists").push(k);
    }
    out
}

/// Remembers when writeback last stepped, to apply [`Cache::writeback_pace`].
#[derive(Debug, Default)]
pub struct Pacer {
    last: Option<Instant>,
}

impl Pacer {
    /// Whether a host's poller should take a writeback step now (and if so,
    /// notes that it does).
    pub fn ready(&mut self, cache: &Cache, front_busy: bool, flush_waits: bool) -> bool {
        if let Some(wait) = cache.writeback_pace(front_busy, flush_waits) {
            if self.last.is_some_and(|t| t.elapsed() < wait) {
                return false;
            }
        }
        self.last = Some(Instant::now());
        true
    }
}

/// The wait between writeback steps under a busy front end at `used` percent
/// of segments in use (see [`Cache::writeback_pace`]).
fn pace(used: u32, gc: u32) -> Option<Duration> {
    let easy = WB_EASY_PERCENT.min(gc);
    if used >= gc {
        return None;
    }
    if used < easy {
        return Some(TRICKLE);
    }
    let wait = TRICKLE * (gc - used) / (gc - easy).max(1);
    (!wait.is_zero()).then_some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_trickles_then_speeds_up_towards_the_gc_threshold() {
        assert_eq!(pace(0, 70), Some(TRICKLE));
        assert_eq!(pace(49, 70), Some(TRICKLE));
        assert_eq!(pace(50, 70), Some(TRICKLE));
        assert_eq!(pace(60, 70), Some(TRICKLE / 2));
        assert_eq!(pace(69, 70), Some(TRICKLE / 20));
        assert_eq!(pace(70, 70), None);
        assert_eq!(pace(95, 70), None);
        // A GC threshold below the easy share: full speed from there.
        assert_eq!(pace(29, 30), Some(TRICKLE));
        assert_eq!(pace(30, 30), None);
        assert_eq!(pace(0, 0), None);
    }
}
