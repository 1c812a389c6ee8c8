//! The cache: its parts, how it opens, and everything a host calls.
//!
//! `Cache` composes components that each own their state — the journal
//! (open ksets, key log, tails: journal.rs), the data heads (heads.rs),
//! writeback (writeback.rs), GC (gc.rs), bypass (bypass.rs) and the
//! cache-info settings (settings.rs) — over the parts they share (shared.rs).
//! The I/O paths (write.rs, read.rs) run over a [`Front`] view of them.
//! This file is where the components meet: every method a host calls is
//! here, and decides which components take part.

use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::base::BaseDevice;
use crate::bypass::{self, Admit, Bypass, Bypasses};
use crate::config::{check_identity, check_workers, kset_count, log_reserve, sb_uuid, validate_config, Config};
use crate::error::{Error, Result};
use crate::format::{
    CacheInfo, LogPos, Superblock, CACHE_INFO_OFF, FORMAT_VERSION, MAX_SEGS, META_BLOCK, MIN_SEGS, REC_CACHE_INFO,
    SB_FLAG_DATA_CRC, SB_OFF, SB_SIZE, SEG_START,
};
use crate::full_hits::FullHits;
use crate::gc::Gc;
use crate::heads::DataHeads;
use crate::index::Index;
use crate::journal::Journal;
use crate::keylog::KeyLog;
use crate::mode::CacheMode;
use crate::pmem::Media;
use crate::promote::{Promoter, Promotion};
use crate::read::{self, Miss, Misses};
use crate::replay::{replay, ReplayReport};
use crate::replica::Replica;
use crate::segment::{Geometry, SegmentTable};
use crate::settings::Settings;
use crate::shared::Shared;
use crate::stats::{Counters, Stats};
use crate::tails::Tails;
use crate::write::{Front, WriteOutcome, WriteReq};
use crate::writeback::{self, Pacer, Stepper, WbProgress, Writeback};

/// What open() did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    Formatted,
    Loaded(ReplayReport),
}

/// What a host poller tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tick {
    pub ksets_sealed: usize,
    pub writeback_advanced: bool,
    pub writeback_busy: bool,
    pub gc_ksets: usize,
}

impl Tick {
    pub fn did_work(&self) -> bool {
        self.ksets_sealed > 0 || self.writeback_advanced || self.gc_ksets > 0
    }
}

pub struct Cache {
    s: Shared,
    journal: Journal,
    heads: DataHeads,
    wb: Writeback,
    gc: Gc,
    bypass: Bypasses,
    /// How many of a full cache's writes found cached data (full_hits.rs).
    full_hits: FullHits,
    settings: Settings,
    /// After leaving writeback: the log sequence writeback must reach before
    /// what was dirty then is all on the base (0: no such transition).
    leaving_until: AtomicU64,
    read_cache: bool,
    promote: Promoter,
}

// Opening.
impl Cache {
    /// Opens the cache on `media`: formats a blank device, loads and replays a
    /// pcache, refuses anything else unless `cfg.force_format`.
    pub fn open(media: Arc<dyn Media>, cfg: &Config) -> Result<(Cache, Opened)> {
        validate_config(cfg)?;
        let mut head = vec![0u8; META_BLOCK as usize];
        if media.len() < SEG_START {
            return Err(Error::InvalidArgument(format!("cache device of {} bytes is too small", media.len())));
        }
        media.read(SB_OFF, &mut head)?;
        if cfg.force_format || head.iter().all(|&b| b == 0) {
            let cache = Self::format(media, cfg)?;
            return Ok((cache, Opened::Formatted));
        }
        let sb = Superblock::decode(&head, media.len())?;
        check_identity(&sb, cfg)?;
        let (cache, report) = Self::load(media, sb, cfg)?;
        Ok((cache, Opened::Loaded(report)))
    }

    /// Reads a superblock without opening (for tools).
    pub fn read_superblock(media: &dyn Media) -> Result<Superblock> {
        let mut head = vec![0u8; SB_SIZE];
        media.read(SB_OFF, &mut head)?;
        if head.iter().all(|&b| b == 0) {
            return Err(Error::NotPcache("device is blank".into()));
        }
        Superblock::decode(&head, media.len())
    }

    fn format(media: Arc<dyn Media>, cfg: &Config) -> Result<Cache> {
        let seg_size = cfg.seg_size.unwrap_or_else(|| crate::config::auto_seg_size(media.len(), cfg.workers));
        let seg_count = ((media.len() - SEG_START) / seg_size).min(MAX_SEGS);
        if seg_count < MIN_SEGS {
            return Err(Error::InvalidArgument(format!(
                "cache device of {} bytes holds {seg_count} segments of {seg_size} bytes; at least {MIN_SEGS} are needed",
                media.len(),
            )));
        }
        let sb = Superblock {
            version: FORMAT_VERSION,
            flags: if cfg.data_crc { SB_FLAG_DATA_CRC } else { 0 },
            nonce: new_nonce(),
            seg_size: seg_size as u32,
            seg_count: seg_count as u32,
            seg_start: SEG_START,
            base_size: cfg.base.size,
            base_block_size: cfg.base.block_size,
            base_id: cfg.base.id.clone(),
            cache_size: media.len(),
            uuid: *cfg.uuid.unwrap_or_else(Uuid::new_v4).as_bytes(),
            base_uuid: *cfg.base.uuid.unwrap_or(Uuid::nil()).as_bytes(),
        };
        let geo = Geometry::of(&sb);
        check_workers(&geo, cfg.workers)?;
        // Invalidate the old superblock first: a crash mid-format leaves a
        // device that is refused, never a mix of two formats.
        media.zero(SB_OFF, META_BLOCK)?;
        media.fence();
        SegmentTable::format(&*media, geo)?;
        let gc = cfg.gc_percent.unwrap_or(crate::config::DEFAULT_GC_PERCENT);
        let info = CacheInfo { gc_percent: gc, mode: cfg.cache_mode.unwrap_or_default() as u8 };
        Replica::init(&*media, CACHE_INFO_OFF, REC_CACHE_INFO, |r| info.to_body(r))?;
        // The key log starts in segment 0.
        Tails::format(&*media, LogPos { seg: 0, off: 0, seq: 1 })?;
        media.write(SB_OFF, &sb.encode())?;
        media.fence();
        log::info!("formatted cache: {seg_count} segments of {seg_size} bytes");
        let (cache, _) = Self::load(media, sb, cfg)?;
        Ok(cache)
    }

    fn load(media: Arc<dyn Media>, sb: Superblock, cfg: &Config) -> Result<(Cache, ReplayReport)> {
        let geo = Geometry::of(&sb);
        check_workers(&geo, cfg.workers)?;
        let (mut info_rep, info_rec, _) = Replica::load(&*media, CACHE_INFO_OFF, REC_CACHE_INFO, "cache info")?;
        let mut info = CacheInfo::from_body(&info_rec)?;
        let wanted = CacheInfo {
            gc_percent: cfg.gc_percent.unwrap_or(info.gc_percent),
            mode: cfg.cache_mode.map_or(info.mode, |m| m as u8),
        };
        if wanted != info {
            info = wanted;
            info_rep.store(&*media, |r| info.to_body(r))?;
        }
        let segs = SegmentTable::load(&*media, geo, log_reserve(&geo, cfg.workers))?;
        let mut tails = Tails::load(&*media)?;
        let index = Index::new(sb.base_size);
        let replayed = replay(&*media, &sb, &segs, &index, &mut tails)?;
        segs.finish_load();
        let counters = Counters::default();
        counters.local().add(|c| &c.dirty_bytes, replayed.report.dirty_bytes);
        let journal = Journal::new(
            kset_count(cfg.workers),
            KeyLog::new(replayed.head, sb.nonce),
            tails,
            replayed.last_epoch_end + 1..replayed.head.seq,
            cfg.kset_flush_interval,
        );
        let cache = Cache {
            s: Shared { media, sb, geo, segs, index, counters },
            journal,
            heads: DataHeads::new(cfg.workers),
            wb: Writeback::new(cfg.writeback_batch_bytes, cfg.base_lag, cfg.max_dirty_percent),
            gc: Gc::default(),
            bypass: Bypasses::new(cfg.workers, cfg.seq_cutoff),
            full_hits: FullHits::new(),
            settings: Settings::new(info_rep, info),
            leaving_until: AtomicU64::new(0),
            read_cache: cfg.read_cache,
            promote: Promoter::new(cfg.promotion, geo.seg_count as u64 * geo.payload() as u64),
        };
        Ok((cache, replayed.report))
    }

    /// Orderly shutdown: journals every open kset and releases the data heads.
    /// The host lets the base finish writeback's writes in flight first: a
    /// cache opened later must not see an old write land over its own.
    pub fn close(self) -> Result<()> {
        self.flush()?;
        self.heads.release_all(&self.s)
    }
}

// What the cache is.
impl Cache {
    pub fn superblock(&self) -> &Superblock {
        &self.s.sb
    }

    /// The cache's identity (see [`sb_uuid`]).
    pub fn uuid(&self) -> Uuid {
        sb_uuid(&self.s.sb)
    }

    pub fn data_crc(&self) -> bool {
        self.s.data_crc()
    }

    pub fn workers(&self) -> usize {
        self.heads.count()
    }
}

// The I/O paths (write.rs, read.rs).
impl Cache {
    fn front(&self) -> Front<'_> {
        Front { s: &self.s, journal: &self.journal, heads: &self.heads }
    }

    /// Writes `data` at base offset `offset` into the cache (dirty).
    pub fn write(&self, worker: usize, offset: u64, data: &[IoSlice]) -> Result<WriteOutcome> {
        self.front().write(worker, offset, data)
    }

    /// Convenience for a single contiguous buffer.
    pub fn write_buf(&self, worker: usize, offset: u64, data: &[u8]) -> Result<WriteOutcome> {
        self.write(worker, offset, &[IoSlice::new(data)])
    }

    /// Writes every request of `reqs` into the cache (dirty), as if by
    /// [`Cache::write`] one after another, and puts one result per request in
    /// `out` (cleared first). Once one request defers for lack of space, the
    /// ones after it defer too, whole: the caller resubmits them when space
    /// is freed, as it does a single deferred write.
    pub fn write_batch(&self, worker: usize, reqs: &[WriteReq], out: &mut Vec<Result<WriteOutcome>>) {
        self.front().write_batch(worker, reqs, out)
    }

    /// Makes `[offset, offset+len)` read as zeros (WRITE_ZEROES and UNMAP):
    /// journals zero keys that writeback turns into write_zeroes on the base.
    /// Takes no data space.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<WriteOutcome> {
        self.front().write_zeroes(offset, len)
    }

    /// Reads `[offset, offset+len(bufs))`: cached bytes are copied into `bufs`;
    /// the ranges returned are not cached and must be read from the base device.
    pub fn read(&self, offset: u64, bufs: &mut [IoSliceMut]) -> Result<Misses> {
        read::read(&self.s, offset, bufs)
    }

    /// Looks up `[offset, offset+len)` for a read that follows: its misses
    /// when nothing of it is cached (the read is then done with the cache),
    /// else None after hinting the media to fetch the cached bytes, and the
    /// host calls [`Cache::read`] (see read::lookup).
    pub fn lookup(&self, offset: u64, len: u64) -> Option<Misses> {
        let misses = read::lookup(&self.s, offset, len)?;
        for m in &misses {
            self.promote.hint(m.off);
        }
        Some(misses)
    }

    /// Caches data just read from the base device for a miss, unless the range
    /// changed since the read (or read caching is off). Returns whether
    /// anything was cached.
    pub fn fill(&self, worker: usize, miss: &Miss, data: &[u8]) -> Result<bool> {
        if !self.read_cache || !self.cache_mode().caches_reads() {
            return Ok(false);
        }
        if !self.promote.admit(miss.off, self.settled()) {
            let c = self.s.counters.local();
            c.add(|k| &k.promotion_declined_ops, 1);
            c.add(|k| &k.promotion_declined_bytes, miss.len);
            return Ok(false);
        }
        read::fill(&self.front(), worker, miss, data)
    }

    /// Which read misses are cached (see promote.rs).
    pub fn promotion(&self) -> Promotion {
        self.promote.policy()
    }

    pub fn set_promotion(&self, p: Promotion) {
        self.promote.set_policy(p)
    }

    /// Counts a read miss the base device failed (hosts fail the read).
    pub fn note_base_read_error(&self) {
        self.s.counters.local().add(|c| &c.base_read_errors, 1);
    }

    /// Makes every write completed so far durable (FLUSH, and FUA after a write).
    pub fn flush(&self) -> Result<()> {
        self.front().flush()
    }

    /// Journals open ksets older than the flush interval (or all of them when
    /// writes wait for space). Returns how many were sealed.
    pub fn flush_expired_ksets(&self) -> Result<usize> {
        self.journal.seal_expired(&self.s, self.s.segs.is_short())
    }
}

// Background work: the kset timer, writeback and GC, as a host's pollers run them.
impl Cache {
    /// One round of background work: kset timer, writeback, GC.
    pub fn background_step(&self, base: &dyn BaseDevice) -> Result<Tick> {
        self.round(base, true)
    }

    /// The same round with writeback paced as a host paces it for a front end
    /// that is busy or not (see [`Cache::writeback_pace`]).
    pub fn background_step_paced(&self, base: &dyn BaseDevice, pacer: &mut Pacer, front_busy: bool) -> Result<Tick> {
        let write_back = pacer.ready(self.writeback_pace(front_busy, false));
        self.round(base, write_back)
    }

    fn round(&self, base: &dyn BaseDevice, write_back: bool) -> Result<Tick> {
        self.sample_full_hits(std::time::Instant::now());
        let ksets_sealed = self.flush_expired_ksets()?;
        let wb = if write_back { self.writeback_tick(base)? } else { WbProgress::Idle };
        let gc_ksets = self.gc_step()?;
        Ok(Tick {
            ksets_sealed,
            writeback_advanced: wb == WbProgress::Advanced,
            writeback_busy: wb == WbProgress::Busy,
            gc_ksets,
        })
    }

    /// Advances writeback by one step; never blocks. Writes everything it
    /// takes to the base (what tools and drains want).
    pub fn writeback_step(&self, base: &dyn BaseDevice) -> Result<WbProgress> {
        self.wb.step(&self.front(), base, false, self.settled())
    }

    /// Has `events` told of every writeback batch as it starts and ends (a
    /// host's tracing). Only one observer: false if one is set already.
    pub fn observe_writeback(&self, events: std::sync::Arc<dyn crate::WritebackEvents>) -> bool {
        self.wb.observe(events)
    }

    /// A host poller's writeback step: as writeback_step, but while GC needs
    /// room, live dirty data of the open epoch may be kept in the cache rather
    /// than written, as long as the base may lag ([`Cache::base_lag`];
    /// writeback.rs). Flushes a host waits for go through
    /// [`Cache::drain_ticket`], which nothing is kept past.
    /// While helpers exist ([`Cache::writeback_helper`]), it leaves the
    /// planning of batches to them.
    pub fn writeback_tick(&self, base: &dyn BaseDevice) -> Result<WbProgress> {
        self.wb.step_as(&self.front(), Some(base), self.may_keep(), self.settled(), Stepper::Poller)
    }

    /// A helper that plans writeback's batches from another thread than the
    /// one calling [`Cache::writeback_tick`] (writeback.rs): planning needs
    /// no base device, and it is most of writeback's work on a host's
    /// thread. While any helper lives, writeback_tick leaves planning to it,
    /// so a helper must be ticked.
    pub fn writeback_helper(self: &Arc<Self>) -> WritebackHelper {
        self.wb.add_helper();
        WritebackHelper { cache: self.clone() }
    }

    /// Whether a writeback step may keep live dirty data rather than write it.
    fn may_keep(&self) -> bool {
        self.keep_needs_room() && self.cache_mode().completes_in_cache() && !self.over_dirty_cap()
    }

    /// Whether the cache has filled up to about where GC keeps it (see
    /// bypass::is_full): before that, writes are a burst into free space.
    fn settled(&self) -> bool {
        self.s.segs.used_percent() >= (self.gc_percent() as u32).saturating_sub(writeback::WB_FULL_MARGIN)
    }

    /// Whether dirty data of the open epoch must move to make room (see
    /// [`writeback::keep_room`]): segments in use at gc_percent and data
    /// writes about to run out of free segments, or writes waiting.
    fn keep_needs_room(&self) -> bool {
        let segs = &self.s.segs;
        segs.is_short()
            || (segs.used_percent() >= self.gc_percent() as u32
                && segs.room_for_data() <= writeback::keep_room(&segs.geo, self.wb.batch_bytes()))
    }

    /// Journals every open kset (a FLUSH) and returns a ticket for
    /// [`Cache::written_back`]: everything written before it is on the base
    /// once that says so. Nothing before it is kept off the base meanwhile.
    pub fn drain_ticket(&self) -> Result<u64> {
        self.flush()?;
        self.wb.drain_to(&self.s, &self.journal)
    }

    /// Whether dirty data is at the cap a user set (max_dirty_percent).
    fn over_dirty_cap(&self) -> bool {
        self.dirty_percent() >= self.wb.max_dirty_percent()
    }

    /// Dirty data, in percent of the cache's data capacity, that writeback
    /// lets build up: at it nothing is kept and a busy front end's writeback
    /// runs at full speed (100, the default: as much as space allows).
    pub fn max_dirty_percent(&self) -> u32 {
        self.wb.max_dirty_percent()
    }

    /// Sets the dirty-data cap (1 to 100 percent).
    pub fn set_max_dirty_percent(&self, pct: u32) -> Result<()> {
        if !(1..=writeback::MAX_DIRTY_PERCENT).contains(&pct) {
            return Err(Error::InvalidArgument(format!("max_dirty_percent {pct} is not between 1 and 100")));
        }
        self.wb.set_max_dirty_percent(pct);
        Ok(())
    }

    /// How far the base lags behind the cache: how long ago the oldest data
    /// not yet on it was written (zero when the cache is clean; measured
    /// from the open for data replayed at open).
    pub fn base_behind(&self) -> Duration {
        self.wb.base_behind(&self.s, &self.journal)
    }

    /// How long the base may lag behind the cache (zero: dirty data is
    /// never kept; see [`Cache::writeback_tick`]).
    pub fn base_lag(&self) -> Duration {
        self.wb.lag()
    }

    pub fn set_base_lag(&self, lag: Duration) {
        self.wb.set_lag(lag)
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
                    if self.s.counters.total(|c| &c.writeback_errors) > 0 && idle_spins > 1_000_000 {
                        return Err(Error::Io("writeback keeps failing".into()));
                    }
                }
            }
        }
    }

    /// How long a host should leave between writeback steps while its front
    /// end is busy; None: no wait (step whenever the poller runs).
    ///
    /// Dirty data left in the cache is what absorbs overwrites: the longer a
    /// key waits, the likelier a later key makes writing it unnecessary, and
    /// every base write costs the host CPU time the front end could use. So
    /// under a busy front end writeback trickles, one step per TRICKLE, until
    /// dirty data fills gc_percent - WB_EASY_MARGIN percent of the cache; the
    /// wait then shrinks in proportion, to zero at gc_percent - WB_FULL_MARGIN,
    /// leaving GC written-back segments to reclaim before writes run out of
    /// room (writeback.rs). No wait when the front end is idle, when writes
    /// wait for space or when `flush_waits` (someone waits for everything to
    /// reach the base), nor in a mode where writes complete only once written
    /// back (mode.rs).
    pub fn writeback_pace(&self, front_busy: bool, flush_waits: bool) -> Option<Duration> {
        if !front_busy || flush_waits || self.under_pressure() || !self.cache_mode().completes_in_cache() {
            return None;
        }
        if self.over_dirty_cap() {
            return None;
        }
        // A dirty cap below the GC threshold moves the pace's marks down.
        let ceiling = (self.gc_percent() as u32).min(self.max_dirty_percent() + writeback::WB_FULL_MARGIN);
        let dirty = self.dirty_percent();
        // New blocks are going to the base for want of room (bypass.rs), and
        // dirty data holds much of it: only writeback makes room, and a
        // trickle would leave the dirty data there for good, the base lag
        // growing while the base takes bypasses. Not while little is dirty:
        // the room is then clean data that GC reclaims, and writing back at
        // once would leave later writes nothing to overwrite, so that
        // absorbed_percent (what makes is_full hold) stayed low for good (a
        // hot set of mixed reads and writes was caught so, at a tenth of
        // its speed).
        if dirty >= ceiling.saturating_sub(writeback::WB_EASY_MARGIN) && self.is_full() {
            return None;
        }
        // Writeback takes its keep lock before the tails lock: the tails
        // guard must be gone before may_keep_at (a helper steps writeback
        // on another thread).
        let dirty_seq = self.journal.tails().dirty.seq;
        if self.wb.may_keep_at(dirty_seq) {
            // Dirty data may stay: step when the hot set needs room (the
            // step keeps what is live, a copy in pmem), else trickle to the base.
            return (!self.keep_needs_room()).then_some(writeback::TRICKLE);
        }
        writeback::pace(dirty, ceiling)
    }

    /// Dirty bytes as a percentage of the cache's data capacity.
    pub fn dirty_percent(&self) -> u32 {
        writeback::dirty_percent(&self.s)
    }

    /// The cap of a writeback batch's dirty bytes. Any cap no larger than one
    /// kset's data makes every kset a batch of its own.
    pub fn writeback_batch_bytes(&self) -> u64 {
        self.wb.batch_bytes()
    }

    pub fn set_writeback_batch_bytes(&self, bytes: u64) {
        self.wb.set_batch_bytes(bytes);
    }

    /// Reclaims up to a bounded number of ksets. Returns how many.
    pub fn gc_step(&self) -> Result<usize> {
        self.s.segs.repair(&*self.s.media)?;
        let keep_read = self.read_cache && self.cache_mode().caches_reads();
        self.gc.step(&self.front(), self.gc_percent(), keep_read)
    }

    /// Holds off GC passes while the guard lives, as a running pass does (tests).
    #[doc(hidden)]
    pub fn gc_pass_for_tests(&self) -> impl Drop + '_ {
        self.gc.hold()
    }

    /// The GC threshold in force (percent of segments in use).
    pub fn gc_percent(&self) -> u8 {
        self.settings.gc_percent()
    }

    /// Changes the GC threshold and persists it.
    pub fn set_gc_percent(&self, pct: u8) -> Result<()> {
        self.settings.set_gc_percent(&*self.s.media, pct)
    }
}

// Bypass (bypass.rs).
impl Cache {
    /// The sequential cutoff in force (bytes; 0: bypass is off).
    pub fn seq_cutoff(&self) -> u64 {
        self.bypass.seq_cutoff()
    }

    pub fn set_seq_cutoff(&self, bytes: u64) {
        self.bypass.set_seq_cutoff(bytes);
    }

    /// Where `worker`'s write of `len` bytes at `off` goes: to the base
    /// when the cache mode writes around the cache (mode.rs), when it
    /// continues a sequential stream, or when the cache is full and nothing
    /// cached overlaps it (bypass.rs); else into the cache. Every write of
    /// the worker should be asked about, so that its streams are seen. A
    /// range outside the cache's bounds goes to the cache, whose write
    /// refuses it.
    pub fn admit(&self, worker: usize, off: u64, len: u64) -> Admit {
        if self.s.check_io(off, len).is_err() {
            return Admit::Cache;
        }
        self.around(off, len)
            .or_else(|| self.stream(worker, off, len))
            .or_else(|| self.when_full(off, len))
            .map_or(Admit::Cache, Admit::Base)
    }

    /// Where a write the cache deferred for want of room goes
    /// (`WriteOutcome::Deferred { written: 0 }`): to the base if the cache
    /// is full and nothing cached overlaps it, else it waits for space.
    pub fn admit_deferred(&self, off: u64, len: u64) -> Admit {
        if self.s.check_io(off, len).is_err() {
            return Admit::Cache;
        }
        self.when_full(off, len).map_or(Admit::Cache, Admit::Base)
    }

    /// Only the sequential-stream part of [`Cache::admit`] (tests).
    #[doc(hidden)]
    pub fn begin_bypass(&self, worker: usize, off: u64, len: u64) -> Option<Bypass> {
        self.s.check_io(off, len).ok()?;
        self.stream(worker, off, len)
    }

    /// Only the full-cache part of [`Cache::admit`] (tests).
    #[doc(hidden)]
    pub fn bypass_when_full(&self, off: u64, len: u64) -> Option<Bypass> {
        self.admit_deferred(off, len).base()
    }

    /// Only the cache-mode part of [`Cache::admit`] (tests).
    #[doc(hidden)]
    pub fn begin_around(&self, off: u64, len: u64) -> Option<Bypass> {
        self.s.check_io(off, len).ok()?;
        self.around(off, len)
    }

    /// A write of a sequential stream past the cutoff (bypass.rs).
    fn stream(&self, worker: usize, off: u64, len: u64) -> Option<Bypass> {
        if self.bypass.seq_cutoff() == 0 {
            return None;
        }
        if !self.bypass.is_sequential(worker, off, len) {
            return None;
        }
        self.bypass.register(&self.s, &self.journal, &self.gc, off, len, false)
    }

    /// A write to the base because the cache is full (bypass.rs); None
    /// while the cache has room, or when cached data overlaps the range.
    fn when_full(&self, off: u64, len: u64) -> Option<Bypass> {
        if !self.is_full() {
            return None;
        }
        self.bypass.register(&self.s, &self.journal, &self.gc, off, len, true)
    }

    /// Whether a write that no cached data overlaps is better sent to the
    /// base (see [`bypass::is_full`]).
    pub fn is_full(&self) -> bool {
        bypass::is_full(&self.s, self.wb.absorbed_percent(), self.full_hits.percent(), self.gc_percent())
    }

    /// Notes how many writes the cache took and how many it sent to the
    /// base for want of room, while it is full (full_hits.rs). Each round
    /// of background work does; so may a host's tick.
    pub fn sample_full_hits(&self, now: std::time::Instant) {
        self.full_hits
            .sample(now, self.is_full(), || (self.heads.write_ops(), self.s.counters.total(|c| &c.bypass_full_writes)));
    }

    /// Share (percent) of a full cache's recent writes that found cached
    /// data under them; None before a full cache saw enough writes.
    pub fn full_hits_percent(&self) -> Option<u32> {
        self.full_hits.percent()
    }

    /// The share (percent) of recent writeback batches' dirty bytes that
    /// later keys had overwritten; None before the first batch.
    pub fn absorbed_percent(&self) -> Option<u32> {
        self.wb.absorbed_percent()
    }

    /// Ends a bypass: its range is open to cached writes again, and fills
    /// that read the base meanwhile are dropped. Wakes writes that waited.
    pub fn end_bypass(&self, b: Bypass, ok: bool) {
        self.bypass.end(&self.s, b, ok)
    }

    /// Bypassed writes completed and not yet covered by a base flush: a
    /// FLUSH of the cache must flush the base too, then call
    /// [`Cache::bypass_flushed`] with the value returned. None: no need.
    pub fn bypass_flush_target(&self) -> Option<u64> {
        self.bypass.flush_target(&self.s)
    }

    /// Records a completed base flush submitted after `target` bypassed
    /// writes had completed.
    pub fn bypass_flushed(&self, target: u64) {
        self.bypass.flushed(target)
    }

    /// Flushes the base for the bypassed writes completed so far, unless a
    /// flush for them is in flight. For hosts answering a flush request on
    /// the thread that drives writeback. Returns whether the caller must
    /// wait (a flush is needed or in flight); a failed flush counts as a
    /// writeback error.
    pub fn flush_bypassed(&self, base: &dyn BaseDevice) -> bool {
        self.bypass.flush(&self.s, base)
    }
}

// Cache modes (mode.rs).
impl Cache {
    pub fn cache_mode(&self) -> CacheMode {
        self.settings.mode()
    }

    /// Switches the mode of a live cache and persists it. Leaving writeback
    /// journals what is open and writes back everything dirty up to there.
    pub fn set_cache_mode(&self, mode: CacheMode) -> Result<()> {
        let old = self.settings.set_mode(&*self.s.media, mode)?;
        if old == mode {
            return Ok(());
        }
        if mode == CacheMode::Writeback {
            self.leaving_until.store(0, Ordering::Relaxed);
        } else if old == CacheMode::Writeback {
            let until = self.wb.drain_to(&self.s, &self.journal)?;
            self.leaving_until.store(until, Ordering::Relaxed);
        }
        log::info!("cache mode {old} -> {mode}");
        Ok(())
    }

    /// True while what was dirty when the cache left writeback is still
    /// being written back.
    pub fn mode_transition(&self) -> bool {
        let until = self.leaving_until.load(Ordering::Relaxed);
        until != 0 && self.journal.tails().dirty.seq < until
    }

    /// In writearound and passthrough: registers a write of `[off, off+len)`
    /// to go straight to the base, if the guarantee allows it (see bypass.rs);
    /// None: it goes into the cache and completes once written back.
    fn around(&self, off: u64, len: u64) -> Option<Bypass> {
        if !self.cache_mode().writes_around() {
            return None;
        }
        self.bypass.register(&self.s, &self.journal, &self.gc, off, len, false)
    }

    /// For a write that has just gone into the cache and must not complete
    /// before it is on the base (every mode but writeback): journals the open
    /// ksets and returns the ticket to pass to [`Cache::written_back`].
    pub fn through_ticket(&self) -> Result<u64> {
        self.wb.drain_to(&self.s, &self.journal)
    }

    /// Whether writeback has put on the base, and flushed there, everything
    /// journalled before `ticket` was taken.
    pub fn written_back(&self, ticket: u64) -> bool {
        self.journal.tails().dirty.seq >= ticket
    }
}

// State, for hosts' pacing and stats.
impl Cache {
    /// Called whenever segments are freed, from whatever thread freed them;
    /// hosts use it to resume writes that were deferred for lack of space.
    pub fn set_space_notifier(&self, f: Option<Box<dyn Fn() + Send + Sync>>) {
        self.s.segs.set_notifier(f);
    }

    /// Changes each time segments are freed.
    pub fn space_epoch(&self) -> u64 {
        self.s.segs.space_epoch()
    }

    pub fn stats(&self) -> Stats {
        let mut st = Stats::default();
        self.s.counters.snapshot_into(&mut st);
        st.writeback_errors = self.writeback_errors();
        self.heads.add_into(&mut st);
        st.segs_total = self.s.geo.seg_count;
        st.segs_used = self.s.segs.used_count();
        st.gc_percent = self.gc_percent();
        let head = self.journal.head();
        let t = self.journal.tails();
        st.key_head = head;
        st.key_tail = t.key;
        st.dirty_tail = t.dirty;
        st
    }

    /// Reads and writes served so far (cheap: no locks), so a host can tell
    /// whether the front end is busy when it paces background work.
    pub fn io_ops(&self) -> u64 {
        let c = &self.s.counters;
        // Writes that went past the cache are the front end's work too.
        self.heads.write_ops()
            + c.total(|s| &s.bypass_writes)
            + c.total(|s| &s.read_hit_ops)
            + c.total(|s| &s.read_miss_ops)
    }

    /// Writeback errors so far (failed base writes and flushes).
    pub fn writeback_errors(&self) -> u64 {
        self.s.counters.total(|c| &c.writeback_errors) + self.bypass.flush_errors()
    }

    /// True while writes wait for space (GC and writeback should hurry).
    pub fn under_pressure(&self) -> bool {
        self.s.segs.is_short()
    }

    /// Share of segments in use, in percent.
    pub fn used_percent(&self) -> u32 {
        self.s.segs.used_percent()
    }

    /// Extents in the DRAM index.
    pub fn index_extents(&self) -> usize {
        self.s.index.extents()
    }

    /// DRAM the index holds (it grows with what is cached, not the base's size).
    pub fn index_dram_bytes(&self) -> u64 {
        self.s.index.dram_bytes()
    }

    /// True when nothing is dirty: every journalled key has been written back
    /// and no open kset holds a dirty key.
    pub fn is_clean(&self) -> bool {
        let head = self.journal.head();
        let dirty_in_open = self.journal.holds_dirty();
        self.journal.tails().dirty.seq == head.seq && !dirty_in_open
    }
}

fn new_nonce() -> u64 {
    // A v4 UUID is 122 bits from the OS's random source (getrandom).
    let (a, b) = Uuid::new_v4().as_u64_pair();
    a ^ b.rotate_left(32)
}

/// Plans writeback's batches beside the host's writeback poller (see
/// [`Cache::writeback_helper`]). Dropping it hands planning back.
pub struct WritebackHelper {
    cache: Arc<Cache>,
}

impl WritebackHelper {
    /// Plans some of a batch the poller started, if one waits and no other
    /// thread is stepping writeback; whether there was such work.
    pub fn tick(&self) -> Result<bool> {
        let c = &self.cache;
        let p = c.wb.step_as(&c.front(), None, c.may_keep(), c.settled(), Stepper::Helper)?;
        Ok(p != WbProgress::Idle)
    }
}

impl Drop for WritebackHelper {
    fn drop(&mut self) {
        self.cache.wb.remove_helper();
    }
}
