//! Writeback: dirty data to the base device, a batch of the log at a time.
//!
//! The base must stay what a disk with a volatile write cache would be: at
//! any instant it holds every write acknowledged before some completed FLUSH
//! of the front end, plus any subset of the writes after it. FLUSHes are
//! marked in the key log (format::KSET_FLAG_FLUSH), which cuts it into
//! epochs. Writeback takes a batch of ksets from dirty_tail that never
//! crosses the end of an epoch (and is capped by size):
//! - within the batch a later key wins over an earlier one for the bytes
//!   they share, so superseded data is never written;
//! - while the batch is in the epoch still open (no FLUSH mark after it),
//!   bytes a later *journalled* key has overwritten are skipped too: that key
//!   is in the same epoch and will be written back itself, and replay finds
//!   it over the skipped one. The same holds in the epoch that was open when
//!   the log was replayed, for bytes a later key *from the replayed log*
//!   overwrote (a restart ends that epoch, so keys written since are not in it);
//! - what is left is written sorted by base offset, contiguous pieces merged
//!   into runs, many runs in flight at once;
//! - one base flush ends the batch, and only once it completed is the
//!   advanced dirty_tail persisted. A failed write or flush starts the
//!   batch's writes over (rewriting is idempotent); nothing is dropped.
//!
//!
//! Keeping (relocate.rs): once data writes are about to run out of free
//! segments ([`keep_room`]) or wait for space, a host's writeback tick may
//! move the live dirty data of a batch in the open epoch to the log head
//! instead of writing it, so that a hot set stays dirty in the cache the way
//! it would in place, and the base gets only what outlives the lag. The
//! moved keys are journalled before dirty_tail passes their originals, in
//! the same epoch as them (a FLUSH mark written meanwhile makes the batch
//! be written after all), so the base stays a prefix of FLUSH epochs. What
//! someone waits to see on the base (a flush request, a write in a mode that
//! completes once written back, a mode switch) raises a floor before which
//! nothing is kept ([`Writeback::drain_to`]). Data older than the lag is
//! written when writeback reaches it, moved or not (keep.rs tracks ages).
//!
//! The host calls [`crate::Cache::writeback_tick`] from a poller (tools and
//! tests that must see everything on the base call
//! [`crate::Cache::writeback_step`], which never keeps); completions may
//! arrive on any thread and only update counters. Planning a batch (reading
//! its ksets, dropping what was overwritten, keeping live data) needs no
//! base device and costs a host more than writing it: a host with threads
//! beside the poller's lets them plan ([`crate::WritebackHelper`]), and the
//! poller then only starts batches and writes them. A step finds writeback
//! busy, rather than waits, while another thread steps it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::base::{BaseDevice, MediaRange};
use crate::error::{Error, Result};
use crate::format::{data_crc, KeyRecord, LogPos, KEY_FLAG_CRC};
use crate::index::{Index, KsetTag};
use crate::journal::Journal;
use crate::keep::Keep;
use crate::keylog::read_kset;
use crate::relocate::{move_piece, next_live_piece, MoveCredit, Moved, MOVE_KSET, MOVE_MAX_PERCENT};
use crate::segment::Geometry;
use crate::shared::{lock, try_lock, Shared};
use crate::write::Front;

/// Bytes of writes in flight to the base at once.
const WINDOW_BYTES: u64 = 16 << 20;
/// Base writes in flight at once. The front end's own base I/Os (misses,
/// bypassed writes) queue behind writeback's at the base: a slow base (an
/// RBD image answers in milliseconds) with thousands of writeback writes
/// queued made a front-end write wait seconds. This many cover a base's
/// latency as well as an application's queue depth does.
const WINDOW_RUNS: usize = 64;
/// Bytes and base writes submitted per step at most, so one step stays short
/// on a reactor (each base write costs the host a submission; a trickling
/// writeback must not take a burst's reactor time in large bites).
const STEP_BYTES: u64 = 4 << 20;
const STEP_RUNS: usize = 64;
/// Longest single base write a run of contiguous pieces becomes.
const RUN_BYTES: u64 = 1 << 20;
/// Ksets read into a batch per step at most.
const KSETS_PER_STEP: usize = 32;
/// Default cap of a batch's dirty bytes (before superseded bytes are dropped).
pub const DEFAULT_BATCH_BYTES: u64 = 32 << 20;
/// How long a batch should take at most, its writes sent at full speed:
/// GC frees nothing of a batch until it ends, so writes waiting for space
/// wait for a whole batch. Over a base that answers in milliseconds (an RBD
/// image) a batch of DEFAULT_BATCH_BYTES took seconds.
const BATCH_TIME: Duration = Duration::from_millis(100);
/// The smallest cap that time sets.
const MIN_BATCH_BYTES: u64 = 1 << 20;
/// A batch is kept only if later writes overwrote at least this share (in
/// percent) of its dirty bytes: the sign of a hot set.
const KEEP_MIN_OVERWRITTEN: u64 = 40;
/// Free segments left to data writes at which writeback starts keeping dirty
/// data (moving it to the log head) rather than let it wait: room for what
/// a batch of `batch_bytes` may move (relocate::MOVE_MAX_PERCENT of it)
/// before GC frees its segments, and at least 2 % of the cache. GC never
/// passes dirty_tail, so until then a hot set that is rewritten faster than
/// the base lags simply stays where it is and the log grows over the space
/// above gc_percent; each kset GC reaches later holds less live data (a hot
/// set half a 1 GiB cache moved 1.1 bytes per byte written when keeping
/// began at gc_percent 70, 0.5 when it began with the cache nearly full).
pub fn keep_room(geo: &Geometry, batch_bytes: u64) -> u32 {
    let moves = (batch_bytes * MOVE_MAX_PERCENT / 100).div_ceil(geo.payload() as u64) as u32;
    (moves + 1).max(geo.seg_count / 50).max(KEEP_ROOM_MIN_SEGS)
}
const KEEP_ROOM_MIN_SEGS: u32 = 2;
/// How long the base may lag behind the cache by default (see Keep).
pub const DEFAULT_BASE_LAG: Duration = Duration::from_secs(30);
/// The default (and highest) cap of dirty data: none but space.
pub const MAX_DIRTY_PERCENT: u32 = 100;

/// Writeback under a busy front end runs at full speed once dirty data
/// fills this many percent less of the cache than gc_percent, and trickles
/// (one step per [`TRICKLE`]) while it fills [`WB_EASY_MARGIN`] percent less.
pub const WB_FULL_MARGIN: u32 = 10;
pub const WB_EASY_MARGIN: u32 = 20;
pub const TRICKLE: Duration = Duration::from_millis(100);
/// No batch planned yet (see [`Writeback::absorbed_percent`]).
const ABSORBED_UNKNOWN: u32 = u32::MAX;

#[derive(Default)]
struct Inflight {
    pending: AtomicUsize,
    bytes: AtomicU64,
    failed: AtomicBool,
    /// Base writes completed, and their latencies summed (microseconds).
    done: AtomicU64,
    latency_us: AtomicU64,
}

/// Where a piece of a batch's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    /// Zeros (a zero key).
    Zero,
    /// `key`'s data from byte `skip` of it on.
    Key { key: KeyRecord, skip: u32 },
}

/// A piece of the base to write: `len` bytes from `src`.
#[derive(Debug, Clone, Copy)]
struct Piece {
    len: u32,
    src: Src,
}

/// Ksets taken from the log for one round of writeback.
#[derive(Default)]
struct Batch {
    /// Where the batch starts (dirty_tail) and the position after its last kset.
    start: LogPos,
    end: LogPos,
    ksets: u64,
    /// Dirty bytes of every key taken (what dirty_bytes counted for them).
    dirty: u64,
    /// Base offset -> piece; pieces never overlap (later keys won).
    pieces: BTreeMap<u64, Piece>,
    /// The batch ends an epoch (its last kset carries a FLUSH mark).
    epoch_end: bool,
    done_reading: bool,
}

/// Consecutive pieces merged into one base write.
struct Run {
    off: u64,
    len: u64,
    zero: bool,
    parts: Vec<(u32, Src)>,
}

#[derive(Default)]
enum WbState {
    #[default]
    Idle,
    Collecting(Batch),
    Writing {
        batch: Batch,
        runs: Vec<Run>,
        next: usize,
        io: Arc<Inflight>,
    },
    Flushing {
        batch: Batch,
        runs: Vec<Run>,
        io: Arc<Inflight>,
    },
    /// A run could not be sent (its data failed its CRC): the batch is
    /// dropped once what was sent has completed, and planned again from
    /// dirty_tail, so that a later overwrite of the damaged bytes lets
    /// writeback past them.
    Abandoning(Arc<Inflight>),
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WbProgress {
    /// Nothing dirty is journalled.
    Idle,
    /// I/O is in flight or was just submitted.
    Busy,
    /// A batch was completely written back.
    Advanced,
}

/// Writeback's state: the batch in progress, the cap of the next one, and
/// how much of recent batches later keys had overwritten.
pub(crate) struct Writeback {
    state: Mutex<WbState>,
    keep: Mutex<Keep>,
    batch_bytes: AtomicU64,
    /// Bytes per second a batch writes when its writes go at full speed,
    /// from recent batches (see [`Writeback::batch_cap`]); 0 before any.
    full_speed_rate: AtomicU64,
    /// Dirty data (percent of the cache) past which writeback keeps nothing
    /// and runs at full speed under a busy front end (100: no cap).
    max_dirty_pct: AtomicU32,
    /// Share of the dirty bytes of recent batches that later keys had
    /// overwritten, in percent (a moving average), or ABSORBED_UNKNOWN
    /// before the first batch.
    absorbed_pct: AtomicU32,
    /// Who hears of batches starting and ending (a host's tracing), if anyone.
    events: std::sync::OnceLock<Arc<dyn WritebackEvents>>,
    /// Helpers that plan batches (WritebackHelper): while there are any, the
    /// host's poller leaves planning to them, unless the last batch kept
    /// data.
    helpers: AtomicUsize,
    /// The last batch planned kept data (see `plans`).
    last_kept: AtomicBool,
    /// A helper's planning failed: the poller's next step returns the error,
    /// so that the host sees it where it sees every writeback error.
    plan_error: Mutex<Option<Error>>,
}

/// Who takes a writeback step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stepper {
    /// A tool or a test: every state.
    All,
    /// The host's poller: every state, but planning is left to helpers
    /// while there are any, unless the last batch kept data.
    Poller,
    /// A helper: only a batch being planned.
    Helper,
}

/// What a host hears of writeback's batches as they happen, to trace them
/// (see Cache::observe_writeback). Called from inside a writeback step.
pub trait WritebackEvents: Send + Sync {
    /// A batch is planned: `bytes` go to the base in `writes` writes.
    fn batch_start(&self, bytes: u64, writes: usize);
    /// A batch is durable on the base and dirty_tail has passed it; it had
    /// `dirty` bytes of dirty keys.
    fn batch_done(&self, dirty: u64);
}

/// Dirty bytes as a percentage of the cache's data capacity.
pub(crate) fn dirty_percent(s: &Shared) -> u32 {
    let cap = s.geo.seg_count as u64 * s.geo.payload() as u64;
    (s.counters.total(|c| &c.dirty_bytes).min(cap) * 100 / cap.max(1)) as u32
}

impl Writeback {
    pub fn new(batch_bytes: u64, lag: Duration, max_dirty_pct: u32) -> Self {
        Writeback {
            state: Mutex::default(),
            keep: Mutex::new(Keep::new(lag)),
            batch_bytes: AtomicU64::new(batch_bytes),
            full_speed_rate: AtomicU64::new(0),
            max_dirty_pct: AtomicU32::new(max_dirty_pct.clamp(1, MAX_DIRTY_PERCENT)),
            absorbed_pct: AtomicU32::new(ABSORBED_UNKNOWN),
            events: Default::default(),
            helpers: AtomicUsize::new(0),
            last_kept: AtomicBool::new(false),
            plan_error: Mutex::new(None),
        }
    }

    /// The cap of a batch's dirty bytes. Any cap no larger than one kset's
    /// data makes every kset a batch of its own.
    pub fn batch_bytes(&self) -> u64 {
        self.batch_bytes.load(Ordering::Relaxed)
    }

    pub fn set_batch_bytes(&self, bytes: u64) {
        self.batch_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The cap of the next batch: batch_bytes, or less where the base is
    /// slow enough that a batch would take longer than [`BATCH_TIME`] at
    /// full speed (never below [`MIN_BATCH_BYTES`]).
    pub fn batch_cap(&self) -> u64 {
        let cap = self.batch_bytes();
        let rate = self.full_speed_rate.load(Ordering::Relaxed);
        if rate == 0 {
            return cap;
        }
        // The rate is of bytes written; what later writes overwrote costs
        // no base write, so a batch of dirty bytes writes only the rest.
        let absorbed = self.absorbed_percent().unwrap_or(0).min(95) as u128;
        let written = rate as u128 * BATCH_TIME.as_micros() / 1_000_000;
        let dirty = (written * 100 / (100 - absorbed)).min(u64::MAX as u128) as u64;
        cap.min(dirty).max(MIN_BATCH_BYTES.min(cap))
    }

    /// Folds a written batch into the full-speed rate: its `written` bytes,
    /// `runs` base writes and their mean latency, as long as it would have
    /// taken with WINDOW_RUNS of them in flight at once, its base flush
    /// aside. Measured from latencies, not the clock, as a paced writeback
    /// spaces its steps out.
    fn note_batch(&self, written: u64, runs: usize, io: &Inflight) {
        let n = io.done.load(Ordering::Acquire);
        if n == 0 || runs == 0 {
            return;
        }
        let mean_us = (io.latency_us.load(Ordering::Acquire) / n).max(1);
        let took_us = runs.div_ceil(WINDOW_RUNS) as u64 * mean_us;
        let rate = written.saturating_mul(1_000_000) / took_us;
        let old = self.full_speed_rate.load(Ordering::Relaxed);
        // Half the weight to the newest batch.
        self.full_speed_rate.store(if old == 0 { rate } else { old / 2 + rate / 2 }, Ordering::Relaxed);
    }

    /// Dirty data, in percent of the cache, that writeback lets build up
    /// (100: as much as space allows).
    pub fn max_dirty_percent(&self) -> u32 {
        self.max_dirty_pct.load(Ordering::Relaxed)
    }

    pub fn set_max_dirty_percent(&self, pct: u32) {
        self.max_dirty_pct.store(pct.clamp(1, MAX_DIRTY_PERCENT), Ordering::Relaxed);
    }

    /// How long ago the oldest data not yet on the base was written (an
    /// estimate never shorter than the truth; zero when clean).
    pub fn base_behind(&self, s: &Shared, journal: &Journal) -> Duration {
        if s.counters.total(|c| &c.dirty_bytes) == 0 {
            return Duration::ZERO;
        }
        let tail = journal.tails().dirty.seq;
        let k = lock(&self.keep);
        Instant::now().saturating_duration_since(k.written_at(tail, tail + 1))
    }

    /// How long the base may lag behind the cache (zero: nothing is kept).
    pub fn lag(&self) -> Duration {
        lock(&self.keep).lag
    }

    pub fn set_lag(&self, lag: Duration) {
        lock(&self.keep).lag = lag;
    }

    /// Journals every open kset and makes sure nothing journalled so far is
    /// kept: it all reaches the base once dirty_tail passes the sequence
    /// returned. (Under the keep lock, so no batch moves data past it.)
    pub fn drain_to(&self, s: &Shared, journal: &Journal) -> Result<u64> {
        let mut k = lock(&self.keep);
        let to = journal.seal_all(s)?;
        k.raise_floor(to);
        Ok(to)
    }

    /// Whether a batch starting at dirty_tail now could be kept, as far as
    /// the lag and the floor tell.
    pub fn may_keep_at(&self, seq: u64) -> bool {
        lock(&self.keep).allows(seq)
    }

    /// The share (percent) of recent batches' dirty bytes that later keys
    /// had overwritten; None before the first batch.
    pub fn absorbed_percent(&self) -> Option<u32> {
        let p = self.absorbed_pct.load(Ordering::Relaxed);
        (p != ABSORBED_UNKNOWN).then_some(p)
    }

    /// Records a planned batch: of its `dirty` bytes, `written` go to the
    /// base, the rest were overwritten.
    fn note_absorbed(&self, dirty: u64, written: u64) {
        let Some(pct) = (dirty.saturating_sub(written) * 100).checked_div(dirty) else { return };
        let pct = pct as u32;
        let old = self.absorbed_pct.load(Ordering::Relaxed);
        let avg = if old == ABSORBED_UNKNOWN { pct } else { (old * 3 + pct) / 4 };
        self.absorbed_pct.store(avg, Ordering::Relaxed);
    }

    /// Advances writeback by one step; never blocks. With `may_keep`, a
    /// batch planned now may be kept rather than written (module doc). With
    /// `settled` (the cache has filled up to near its GC threshold), a batch
    /// planned now counts in absorbed_percent: while a cache fills, what
    /// writeback finds overwritten says nothing of the steady state.
    pub fn step(&self, f: &Front, base: &dyn BaseDevice, may_keep: bool, settled: bool) -> Result<WbProgress> {
        self.step_as(f, Some(base), may_keep, settled, Stepper::All)
    }

    /// Planning helpers come and go (see [`crate::WritebackHelper`]).
    pub fn add_helper(&self) {
        self.helpers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn remove_helper(&self) {
        self.helpers.fetch_sub(1, Ordering::Relaxed);
    }

    /// A step by `who` (see [`Stepper`]; a helper passes no base device):
    /// Busy, without doing anything, while another thread is stepping or
    /// while a batch waits for a helper to plan it.
    pub fn step_as(
        &self,
        f: &Front,
        base: Option<&dyn BaseDevice>,
        may_keep: bool,
        settled: bool,
        who: Stepper,
    ) -> Result<WbProgress> {
        let Some(mut st) = try_lock(&self.state) else { return Ok(WbProgress::Busy) };
        if who != Stepper::Helper {
            if let Some(e) = lock(&self.plan_error).take() {
                return Err(e);
            }
        }
        lock(&self.keep).note_head(f.journal.head().seq, f.journal.tails().dirty.seq, Instant::now());
        match (std::mem::take(&mut *st), base) {
            (WbState::Collecting(batch), _) => {
                // Keeping moves data in bites of a whole batch: on a helper's
                // core they stalled the reads it served (randrw 70/30 on 2
                // cores ran 17 % slower), so a hot set's batches are planned
                // by the poller, as before helpers.
                let kept = self.last_kept.load(Ordering::Relaxed);
                let plans = match who {
                    Stepper::All => true,
                    Stepper::Helper => !kept,
                    Stepper::Poller => kept || self.helpers.load(Ordering::Relaxed) == 0,
                };
                if !plans {
                    *st = WbState::Collecting(batch);
                    return Ok(WbProgress::Busy);
                }
                // On an error the batch is dropped (the state stays Idle):
                // the next one starts again at dirty_tail.
                match self.plan_step(f, batch, may_keep, settled) {
                    Ok(next) => *st = next,
                    Err(e) if who == Stepper::Helper => *lock(&self.plan_error) = Some(e),
                    Err(e) => return Err(e),
                }
                Ok(WbProgress::Busy)
            }
            (other, Some(base)) => self.io_step(f, base, &mut st, other),
            // A helper plans; it neither starts batches nor writes them.
            (other, None) => {
                *st = other;
                Ok(WbProgress::Idle)
            }
        }
    }

    /// Reads a batch's ksets, some at a time, then plans it (see
    /// [`Writeback::plan`]); returns the state that follows.
    fn plan_step(&self, f: &Front, mut batch: Batch, may_keep: bool, settled: bool) -> Result<WbState> {
        self.collect(f.s, f.journal, &mut batch)?;
        if !batch.done_reading {
            return Ok(WbState::Collecting(batch));
        }
        let runs = self.plan(f, &mut batch, may_keep, settled)?;
        if let Some(ev) = self.events.get() {
            ev.batch_start(runs.iter().map(|r| r.len).sum(), runs.len());
        }
        Ok(WbState::Writing { batch, runs, next: 0, io: Arc::default() })
    }

    /// A step of every state but planning: starts a batch, writes it, flushes
    /// the base and ends it. `state` was taken out of `st`, which gets the next.
    fn io_step(&self, f: &Front, base: &dyn BaseDevice, st: &mut WbState, state: WbState) -> Result<WbProgress> {
        let (s, journal) = (f.s, f.journal);
        match state {
            WbState::Idle => {
                let pos = journal.tails().dirty;
                if pos.seq >= journal.head().seq {
                    return Ok(WbProgress::Idle);
                }
                *st = WbState::Collecting(Batch { start: pos, end: pos, ..Batch::default() });
                Ok(WbProgress::Busy)
            }
            WbState::Collecting(batch) => {
                *st = WbState::Collecting(batch);
                Ok(WbProgress::Busy)
            }
            WbState::Writing { batch, runs, mut next, io } => {
                if io.failed.load(Ordering::Acquire) {
                    if io.pending.load(Ordering::Acquire) > 0 {
                        *st = WbState::Writing { batch, runs, next, io };
                        return Ok(WbProgress::Busy);
                    }
                    // Start the batch's writes over; rewriting is idempotent.
                    s.counters.local().add(|c| &c.writeback_errors, 1);
                    *st = WbState::Writing { batch, runs, next: 0, io: Arc::default() };
                    return Ok(WbProgress::Busy);
                }
                let (mut sent, first) = (0u64, next);
                while next < runs.len()
                    && sent < STEP_BYTES
                    && next - first < STEP_RUNS
                    && io.bytes.load(Ordering::Acquire) < WINDOW_BYTES
                    && io.pending.load(Ordering::Acquire) < WINDOW_RUNS
                {
                    if let Err(e) = submit_run(s, base, &runs[next], &io) {
                        *st = WbState::Abandoning(io);
                        return Err(e);
                    }
                    sent += runs[next].len;
                    next += 1;
                }
                if next < runs.len() || io.pending.load(Ordering::Acquire) > 0 {
                    *st = WbState::Writing { batch, runs, next, io };
                    return Ok(WbProgress::Busy);
                }
                if runs.is_empty() {
                    // Nothing reached the base: nothing to make durable.
                    return self.finish(s, journal, batch);
                }
                self.note_batch(runs.iter().map(|r| r.len).sum(), runs.len(), &io);
                let io = Arc::new(Inflight { pending: AtomicUsize::new(1), ..Inflight::default() });
                s.counters.local().add(|c| &c.base_flushes, 1);
                base.flush(completion(io.clone(), 0));
                *st = WbState::Flushing { batch, runs, io };
                Ok(WbProgress::Busy)
            }
            WbState::Abandoning(io) => {
                if io.pending.load(Ordering::Acquire) > 0 {
                    *st = WbState::Abandoning(io);
                }
                Ok(WbProgress::Busy)
            }
            WbState::Flushing { batch, runs, io } => {
                if io.pending.load(Ordering::Acquire) > 0 {
                    *st = WbState::Flushing { batch, runs, io };
                    return Ok(WbProgress::Busy);
                }
                if io.failed.load(Ordering::Acquire) {
                    // The device may have dropped what it held: write it all again.
                    s.counters.local().add(|c| &c.writeback_errors, 1);
                    *st = WbState::Writing { batch, runs, next: 0, io: Arc::default() };
                    return Ok(WbProgress::Busy);
                }
                self.finish(s, journal, batch)
            }
        }
    }

    /// Ends a batch that is durable on the base (see [`finish`]).
    fn finish(&self, s: &Shared, journal: &Journal, batch: Batch) -> Result<WbProgress> {
        let dirty = batch.dirty;
        finish(s, journal, batch)?;
        if let Some(ev) = self.events.get() {
            ev.batch_done(dirty);
        }
        Ok(WbProgress::Advanced)
    }

    /// Sets who hears of batches (once; a second call is refused).
    pub fn observe(&self, events: Arc<dyn WritebackEvents>) -> bool {
        self.events.set(events).is_ok()
    }

    /// Reads up to KSETS_PER_STEP more ksets into `batch`, up to the end of an
    /// epoch, the cap, or the log head.
    fn collect(&self, s: &Shared, journal: &Journal, batch: &mut Batch) -> Result<()> {
        let head = journal.head();
        let cap = self.batch_cap();
        for _ in 0..KSETS_PER_STEP {
            let pos = batch.end;
            if pos.seq >= head.seq {
                batch.done_reading = true;
                return Ok(());
            }
            let k = read_kset(&*s.media, &s.segs, s.sb.nonce, pos)?
                .ok_or_else(|| Error::corrupt("key log", format!("no kset at seq {} for writeback", pos.seq)))?;
            if k.hdr.ends_epoch() && !k.hdr.is_flush() && batch.ksets > 0 {
                // A kset from before epochs were marked is a batch of its own.
                batch.done_reading = true;
                return Ok(());
            }
            for key in k.keys {
                if !key.is_dirty() || (!key.is_zero() && key.gen != s.segs.gen(key.seg)) {
                    continue;
                }
                batch.dirty += key.len as u64;
                let src = if key.is_zero() { Src::Zero } else { Src::Key { key, skip: 0 } };
                put_piece(&mut batch.pieces, key.off, Piece { len: key.len, src });
            }
            batch.end = k.next;
            batch.ksets += 1;
            if k.hdr.ends_epoch() {
                batch.epoch_end = true;
                batch.done_reading = true;
                return Ok(());
            }
            if batch.dirty >= cap {
                batch.done_reading = true;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Drops the bytes later journalled keys of the same epoch overwrote
    /// (when the batch is in the open epoch), then merges what is left into
    /// runs in base order.
    fn plan(&self, f: &Front, batch: &mut Batch, may_keep: bool, settled: bool) -> Result<Vec<Run>> {
        let (s, journal) = (f.s, f.journal);
        let mut held = 0;
        if journal.replayed_open_epoch().contains(&batch.start.seq) {
            batch.pieces = drop_overwritten(s, journal, &batch.pieces, true);
        } else if !batch.epoch_end {
            if may_keep {
                // Keys over the batch still open would make it write what
                // they overwrote (drop_overwritten skips only for journalled
                // ones): journal them now, so that only live data is left.
                journal.seal_all(s)?;
            }
            let kept = drop_overwritten(s, journal, &batch.pieces, false);
            // Decided only now: any FLUSH mark written meanwhile at or after
            // the batch's start puts the overwriting keys in a later epoch.
            if journal.last_mark() < batch.start.seq {
                batch.pieces = kept;
                if may_keep {
                    held = self.keep_pieces(f, batch)?;
                }
            }
        }
        self.last_kept.store(held > 0, Ordering::Relaxed);
        let written: u64 = batch.pieces.values().map(|p| p.len as u64).sum();
        s.counters.local().add(|c| &c.writeback_skipped_bytes, batch.dirty.saturating_sub(written + held));
        s.counters.local().add(|c| &c.writeback_kept_bytes, held);
        if settled {
            // Kept bytes count as absorbed: the base does not get them now,
            // and a batch is kept only where much of it was overwritten.
            self.note_absorbed(batch.dirty, written);
        }
        let mut runs: Vec<Run> = Vec::new();
        for (&off, p) in &batch.pieces {
            let zero = p.src == Src::Zero;
            match runs.last_mut() {
                Some(r) if r.off + r.len == off && r.zero == zero && (zero || r.len + p.len as u64 <= RUN_BYTES) => {
                    r.len += p.len as u64;
                    r.parts.push((p.len, p.src));
                }
                _ => runs.push(Run { off, len: p.len as u64, zero, parts: vec![(p.len, p.src)] }),
            }
        }
        Ok(runs)
    }

    /// Moves what it can of a batch of the open epoch to the log head, dirty,
    /// instead of writing it; what could not move stays in the batch.
    /// Returns the bytes kept.
    fn keep_pieces(&self, f: &Front, batch: &mut Batch) -> Result<u64> {
        let (s, journal) = (f.s, f.journal);
        // Held until the moved keys are journalled: drain_to waits for it.
        let mut k = lock(&self.keep);
        if !k.allows(batch.start.seq) {
            return Ok(0);
        }
        // Only where later writes overwrite much of what is taken (a hot
        // set): a working set larger than the cache would be moved round
        // and round to no end, where writing it costs the base no more.
        let live: u64 = batch.pieces.values().map(|p| p.len as u64).sum();
        if batch.dirty.saturating_sub(live) * 100 < batch.dirty * KEEP_MIN_OVERWRITTEN {
            return Ok(0);
        }
        // Data older than the lag goes to the base now.
        let born = k.written_at(batch.start.seq, batch.end.seq);
        if k.due(batch.start.seq, born, Instant::now()) {
            return Ok(0);
        }
        k.credit.earn(batch.dirty, MoveCredit::cap(s));
        // Ksets appended from here on may carry this batch's data.
        let moved_from = journal.head().seq;
        let mut write = BTreeMap::new();
        let (mut kept, mut room) = (0u64, true);
        for (&off, p) in &batch.pieces {
            let end = off + p.len as u64;
            let mut at = off;
            if let Src::Key { key, .. } = p.src {
                while room && at < end {
                    // Bytes no longer the key's (a later write, open or not)
                    // are written with the rest, as planned.
                    let Some(lp) = next_live_piece(f, &key, at, end, false).filter(|lp| lp.off == at) else { break };
                    if !k.credit.take(lp.len as u64) {
                        room = false;
                        break;
                    }
                    match move_piece(f, &lp, true)? {
                        Moved::Bytes(n) => {
                            at += n as u64;
                            kept += n as u64;
                        }
                        Moved::NoRoom => room = false,
                        Moved::Changed | Moved::Damaged => break,
                    }
                }
            }
            if at < end {
                write.insert(at, Piece { len: (end - at) as u32, src: advance(p.src, (at - off) as u32) });
            }
        }
        if kept == 0 {
            return Ok(0);
        }
        // The moved keys reach the log before dirty_tail passes their
        // originals, and in the same epoch: a FLUSH mark written since the
        // batch was planned may have come first, and then the batch is
        // written whole (the moved keys are later copies of the same data).
        journal.seal(s, &mut journal.kset(MOVE_KSET))?;
        k.inherit(moved_from, journal.head().seq, born);
        if journal.last_mark() >= batch.start.seq {
            return Ok(0);
        }
        batch.pieces = write;
        Ok(kept)
    }
}

/// The pieces with every byte removed whose newest value, per the index,
/// comes from a journalled key other than the piece's own (with
/// `replayed_only`, from a key of the replayed log).
fn drop_overwritten(
    s: &Shared,
    journal: &Journal,
    pieces: &BTreeMap<u64, Piece>,
    replayed_only: bool,
) -> BTreeMap<u64, Piece> {
    let mut kept = BTreeMap::new();
    for (&off, p) in pieces {
        let Src::Key { key, skip } = p.src else {
            kept.insert(off, *p);
            continue;
        };
        let end = off + p.len as u64;
        let keep: std::cell::RefCell<Vec<(u64, u64)>> = Default::default();
        let push = |from: u64, to: u64| {
            let mut k = keep.borrow_mut();
            match k.last_mut() {
                Some(last) if last.1 == from => last.1 = to,
                _ => k.push((from, to)),
            }
        };
        let mut at = off;
        while at < end {
            let n = Index::piece_len(at, end - at);
            let t = s.index.lock(Index::subtree_of(at));
            t.walk(
                at,
                at + n,
                |o, e, eskip, len| {
                    let mine = !e.is_zero()
                        && e.seg == key.seg
                        && e.gen == key.gen as u32
                        && e.seg_off as u64 + eskip as u64 == key.seg_off as u64 + skip as u64 + (o - off);
                    let tag = e.kset();
                    let replayed = tag == KsetTag::NONE;
                    let journalled = !journal.is_open(tag);
                    if mine || !journalled || (replayed_only && !replayed) {
                        push(o, o + len as u64);
                    }
                },
                |o, len| push(o, o + len),
            );
            drop(t);
            at += n;
        }
        for (from, to) in keep.into_inner() {
            let src = Src::Key { key, skip: skip + (from - off) as u32 };
            kept.insert(from, Piece { len: (to - from) as u32, src });
        }
    }
    kept
}

fn submit_run(s: &Shared, base: &dyn BaseDevice, run: &Run, io: &Arc<Inflight>) -> Result<()> {
    io.pending.fetch_add(1, Ordering::AcqRel);
    io.bytes.fetch_add(run.len, Ordering::AcqRel);
    s.counters.local().add(|c| &c.base_writes, 1);
    if run.zero {
        base.write_zeroes(run.off, run.len, completion(io.clone(), run.len));
        return Ok(());
    }
    let mut done = completion(io.clone(), run.len);
    // Without data CRCs to check first, the base takes the data straight
    // from pmem where it can: the log does not reuse these bytes before
    // the batch is finished.
    let ranges: Option<Vec<MediaRange>> = run
        .parts
        .iter()
        .map(|&(len, src)| match src {
            Src::Key { key, skip } if key.flags & KEY_FLAG_CRC == 0 => {
                Some(MediaRange { off: s.geo.addr(key.seg, key.seg_off + skip), len })
            }
            _ => None,
        })
        .collect();
    if let Some(ranges) = ranges {
        match base.write_media(run.off, &ranges, done) {
            Ok(()) => return Ok(()),
            Err(d) => done = d,
        }
    }
    // Otherwise the data is copied from pmem into the base's write buffer.
    let mut fill = |buf: &mut [u8]| {
        let mut at = 0usize;
        for &(len, src) in &run.parts {
            let Src::Key { key, skip } = src else { unreachable!("a data run holds only key pieces") };
            read_checked(s, &key, skip, &mut buf[at..at + len as usize])?;
            at += len as usize;
        }
        Ok(())
    };
    let r = base.write_from(run.off, run.len as usize, &mut fill, done);
    if r.is_err() {
        io.pending.fetch_sub(1, Ordering::AcqRel);
        io.bytes.fetch_sub(run.len, Ordering::AcqRel);
    }
    r
}

/// Reads bytes `skip..skip+dst.len()` of `key`'s data, checking the
/// key's data CRC (over the whole key) when it has one.
fn read_checked(s: &Shared, key: &KeyRecord, skip: u32, dst: &mut [u8]) -> Result<()> {
    if key.flags & KEY_FLAG_CRC == 0 {
        return s.media.read(s.geo.addr(key.seg, key.seg_off + skip), dst);
    }
    let mut whole = vec![0u8; key.len as usize];
    s.media.read(s.geo.addr(key.seg, key.seg_off), &mut whole)?;
    if data_crc(&[&whole]) != key.data_crc {
        s.counters.local().add(|c| &c.data_crc_errors, 1);
        return Err(Error::DataCrc { offset: key.off, len: key.len as u64 });
    }
    dst.copy_from_slice(&whole[skip as usize..skip as usize + dst.len()]);
    Ok(())
}

/// Persists dirty_tail past a batch whose writes are durable on the base.
fn finish(s: &Shared, journal: &Journal, batch: Batch) -> Result<()> {
    journal.tails().set_dirty(&*s.media, batch.end)?;
    let c = s.counters.local();
    c.sub(|s| &s.dirty_bytes, batch.dirty);
    c.add(|s| &s.writeback_bytes, batch.dirty);
    c.add(|s| &s.writeback_ksets, batch.ksets);
    c.add(|s| &s.writeback_batches, 1);
    if batch.epoch_end {
        c.add(|s| &s.writeback_epochs, 1);
    }
    Ok(())
}

/// Enters `p` at `off`, cutting away what it overlaps of earlier pieces.
fn put_piece(pieces: &mut BTreeMap<u64, Piece>, off: u64, p: Piece) {
    let end = off + p.len as u64;
    // The piece starting before `off` that reaches into it, if any.
    if let Some((&s, &q)) = pieces.range(..off).next_back() {
        let qend = s + q.len as u64;
        if qend > off {
            pieces.insert(s, Piece { len: (off - s) as u32, src: q.src });
            if qend > end {
                pieces.insert(end, Piece { len: (qend - end) as u32, src: advance(q.src, (end - s) as u32) });
            }
        }
    }
    // Pieces starting inside [off, end).
    let inside: Vec<u64> = pieces.range(off..end).map(|(&s, _)| s).collect();
    for s in inside {
        let q = pieces.remove(&s).expect("listed just now");
        let qend = s + q.len as u64;
        if qend > end {
            pieces.insert(end, Piece { len: (qend - end) as u32, src: advance(q.src, (end - s) as u32) });
        }
    }
    pieces.insert(off, p);
}

fn advance(src: Src, by: u32) -> Src {
    match src {
        Src::Zero => Src::Zero,
        Src::Key { key, skip } => Src::Key { key, skip: skip + by },
    }
}

fn completion(io: Arc<Inflight>, bytes: u64) -> crate::base::Done {
    let sent = Instant::now();
    Box::new(move |r: Result<()>| {
        if r.is_err() {
            io.failed.store(true, Ordering::Release);
        } else if bytes > 0 {
            io.latency_us.fetch_add(sent.elapsed().as_micros() as u64, Ordering::AcqRel);
            io.done.fetch_add(1, Ordering::AcqRel);
        }
        io.bytes.fetch_sub(bytes, Ordering::AcqRel);
        io.pending.fetch_sub(1, Ordering::AcqRel);
    })
}

/// Remembers when writeback last stepped, to apply
/// [`crate::Cache::writeback_pace`].
#[derive(Debug, Default)]
pub struct Pacer {
    last: Option<Instant>,
}

impl Pacer {
    /// Whether a host's poller should take a writeback step now, given the
    /// wait [`crate::Cache::writeback_pace`] asks for (and if so, notes that
    /// it does).
    pub fn ready(&mut self, pace: Option<Duration>) -> bool {
        if let Some(wait) = pace {
            if self.last.is_some_and(|t| t.elapsed() < wait) {
                return false;
            }
        }
        self.last = Some(Instant::now());
        true
    }
}

/// The wait between writeback steps under a busy front end with `dirty`
/// percent of the cache dirty (see [`crate::Cache::writeback_pace`]).
pub(crate) fn pace(dirty: u32, gc: u32) -> Option<Duration> {
    let full = gc.saturating_sub(WB_FULL_MARGIN);
    let easy = gc.saturating_sub(WB_EASY_MARGIN);
    if dirty >= full {
        return None;
    }
    if dirty < easy {
        return Some(TRICKLE);
    }
    let wait = TRICKLE * (full - dirty) / (full - easy).max(1);
    (!wait.is_zero()).then_some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(off: u64, len: u32, seg_off: u32) -> Src {
        let k = KeyRecord { off, len, flags: 1, seg: 3, seg_off, gen: 1, data_crc: 0 };
        Src::Key { key: k, skip: 0 }
    }

    #[test]
    fn later_pieces_cut_earlier_ones() {
        let mut m = BTreeMap::new();
        put_piece(&mut m, 0, Piece { len: 4096, src: key(0, 4096, 0) });
        put_piece(&mut m, 1024, Piece { len: 1024, src: key(1024, 1024, 8192) });
        put_piece(&mut m, 3072, Piece { len: 2048, src: Src::Zero });
        let got: Vec<(u64, u32, Src)> = m.iter().map(|(&o, p)| (o, p.len, p.src)).collect();
        let first = |skip| match key(0, 4096, 0) {
            Src::Key { key, .. } => Src::Key { key, skip },
            z => z,
        };
        assert_eq!(
            got,
            vec![
                (0, 1024, first(0)),
                (1024, 1024, key(1024, 1024, 8192)),
                (2048, 1024, first(2048)),
                (3072, 2048, Src::Zero)
            ]
        );
        // A piece covering several replaces them all.
        put_piece(&mut m, 512, Piece { len: 4096, src: Src::Zero });
        let got: Vec<(u64, u32)> = m.iter().map(|(&o, p)| (o, p.len)).collect();
        assert_eq!(got, vec![(0, 512), (512, 4096), (4608, 512)]);
    }

    #[test]
    fn pace_trickles_then_speeds_up_as_dirty_data_nears_the_gc_threshold() {
        assert_eq!(pace(0, 70), Some(TRICKLE));
        assert_eq!(pace(49, 70), Some(TRICKLE));
        assert_eq!(pace(50, 70), Some(TRICKLE));
        assert_eq!(pace(55, 70), Some(TRICKLE / 2));
        assert_eq!(pace(59, 70), Some(TRICKLE / 10));
        assert_eq!(pace(60, 70), None);
        assert_eq!(pace(95, 70), None);
        // A low GC threshold: full speed early.
        assert_eq!(pace(5, 20), Some(TRICKLE / 2));
        assert_eq!(pace(10, 20), None);
        assert_eq!(pace(0, 5), None);
    }

    #[test]
    fn a_piece_ending_where_an_earlier_one_ends_leaves_no_empty_piece() {
        let mut m = BTreeMap::new();
        put_piece(&mut m, 0, Piece { len: 4096, src: key(0, 4096, 0) });
        put_piece(&mut m, 1024, Piece { len: 3072, src: Src::Zero });
        let got: Vec<(u64, u32)> = m.iter().map(|(&o, p)| (o, p.len)).collect();
        assert_eq!(got, vec![(0, 1024), (1024, 3072)]);
    }

    #[test]
    fn the_pacer_waits_between_steps_only_when_asked() {
        let mut p = Pacer::default();
        assert!(p.ready(Some(Duration::from_secs(60))), "the first step goes at once");
        assert!(!p.ready(Some(Duration::from_secs(60))), "the next one waits");
        assert!(p.ready(None), "no wait asked");
        assert!(!p.ready(Some(Duration::from_secs(60))), "a step without a wait counts as the last one");
        std::thread::sleep(Duration::from_millis(20));
        assert!(p.ready(Some(Duration::from_millis(10))), "the wait has passed");
    }
}
