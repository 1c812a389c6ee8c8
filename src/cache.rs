//! The cache: opening (format or load + replay), options, and shared state.
//!
//! The request paths (request.rs), writeback (writeback.rs) and GC (gc.rs) are
//! `impl Cache` blocks over the state defined here.

use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::format::{
    self, CacheInfo, KeyRecord, LogPos, Superblock, CACHE_INFO_OFF, FORMAT_VERSION, KSET_MAX_SIZE, MAX_SEGS,
    MAX_SEG_SIZE, META_BLOCK, MIN_SEGS, MIN_SEG_SIZE, REC_CACHE_INFO, SB_FLAG_DATA_CRC, SB_OFF, SB_SIZE, SECTOR,
    SEG_START,
};
use crate::index::Index;
use crate::keylog::KeyLog;
use crate::mode::CacheMode;
use crate::pmem::Media;
use crate::replay::{replay, ReplayReport};
use crate::replica::Replica;
use crate::segment::{Geometry, SegmentTable};
use crate::spinlock::SpinLock;
use crate::stats::{Counters, HeadCounters, Stats};
use crate::tails::Tails;
use crate::writeback::WbState;
use uuid::Uuid;

/// Who the cache is in front of; recorded at format and checked at every open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseIdentity {
    pub size: u64,
    pub block_size: u32,
    /// Caller-chosen name (a bdev name or UUID, a path); at most 64 bytes.
    pub id: String,
    /// The device's UUID, if it has one. When both it and the one recorded
    /// at format are known and equal, a different `id` is accepted (the
    /// device was renamed).
    pub uuid: Option<Uuid>,
    /// The UUID is the device's own and lasts (an NVMe namespace's, say),
    /// not one made up at every start: a different one means a different
    /// device even under the same `id`.
    pub uuid_is_stable: bool,
}

impl BaseIdentity {
    /// The identity a superblock records (what the tools open a cache with).
    pub fn recorded(sb: &Superblock) -> Self {
        let uuid = sb.base_uuid();
        BaseIdentity {
            size: sb.base_size,
            block_size: sb.base_block_size,
            id: sb.base_id.clone(),
            uuid,
            uuid_is_stable: false,
        }
    }

    /// How this device differs from the base `sb` was formatted for; empty
    /// when it is that base. The one identity check: `Cache::open` refuses a
    /// device with differences, `pcache flush` names them.
    pub fn differences(&self, sb: &Superblock) -> Vec<String> {
        let mut diffs = Vec::new();
        let recorded = Uuid::from_bytes(sb.base_uuid);
        match self.uuid.filter(|u| !u.is_nil() && !recorded.is_nil()) {
            Some(u) if u == recorded => {
                if sb.base_id != self.id {
                    log::info!(
                        "base {:?} is the device formatted as {:?} (same uuid {u}): renamed",
                        self.id,
                        sb.base_id
                    );
                }
            }
            Some(u) if self.uuid_is_stable || sb.base_id != self.id => diffs.push(format!(
                "it is {:?} with uuid {u}, the cache was formatted for {:?} with uuid {recorded}",
                self.id, sb.base_id
            )),
            // Same name, a uuid that may be made up at every start: the name decides.
            _ => {
                if sb.base_id != self.id {
                    diffs.push(format!("the cache was formatted for base id {:?}, not {:?}", sb.base_id, self.id));
                }
            }
        }
        if sb.base_size != self.size {
            diffs.push(format!("its size is {} bytes, the cache was formatted for {}", self.size, sb.base_size));
        }
        if sb.base_block_size != self.block_size {
            diffs.push(format!(
                "its block size is {}, the cache was formatted for {}",
                self.block_size, sb.base_block_size
            ));
        }
        diffs
    }

    /// A device known by name only.
    pub fn named(size: u64, block_size: u32, id: impl Into<String>) -> Self {
        BaseIdentity { size, block_size, id: id.into(), uuid: None, uuid_is_stable: false }
    }
}

/// How to open a cache device.
#[derive(Debug, Clone)]
pub struct Config {
    pub base: BaseIdentity,
    /// Keep a crc32c of every key's data and check it on every read hit.
    pub data_crc: bool,
    /// Start GC when this percentage of segments is in use (0–90). None keeps
    /// what the device has (70 on a new one).
    pub gc_percent: Option<u8>,
    /// Segment size for a new format; None picks one (see [`auto_seg_size`]).
    /// On open, if given, it must be the size recorded.
    pub seg_size: Option<u64>,
    /// How many workers will call the engine (one data head each).
    pub workers: usize,
    /// Format even if the device holds a pcache (dirty data is lost).
    pub force_format: bool,
    /// Insert read misses into the cache as clean keys.
    pub read_cache: bool,
    /// An open kset reaches media at the latest this long after its first key.
    pub kset_flush_interval: Duration,
    /// Cap of the dirty bytes writeback takes in one batch (see writeback.rs).
    pub writeback_batch_bytes: u64,
    /// The cache's identity: recorded at format (a new random one if None);
    /// on open, if given, it must be the one recorded.
    pub uuid: Option<Uuid>,
    /// Sequential run after which large writes bypass the cache (0: never; see bypass.rs).
    pub seq_cutoff: u64,
    /// Cache mode (see mode.rs). None keeps what the device has (writeback on a new one).
    pub cache_mode: Option<CacheMode>,
}

impl Config {
    pub fn new(base: BaseIdentity) -> Self {
        Config {
            base,
            data_crc: false,
            gc_percent: None,
            seg_size: None,
            workers: 1,
            force_format: false,
            read_cache: true,
            kset_flush_interval: Duration::from_secs(1),
            writeback_batch_bytes: crate::writeback::DEFAULT_BATCH_BYTES,
            seq_cutoff: crate::bypass::DEFAULT_SEQ_CUTOFF,
            uuid: None,
            cache_mode: None,
        }
    }
}

pub const DEFAULT_GC_PERCENT: u8 = 70;
/// Open ksets: one per worker, at least this many. A write's key goes into
/// its worker's kset, so workers do not share one; a key overlapping a key
/// still open in another kset first has that kset journalled (see
/// request.rs), so overlapping writes replay in the order they completed.
pub const MIN_KSETS: usize = 16;
/// Kset ids are a byte in the index (index::KsetTag).
pub const MAX_WORKERS: usize = 254;

/// What open() did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    Formatted,
    Loaded(ReplayReport),
}

/// A worker's current place to put data.
#[derive(Default)]
pub struct DataHead {
    pub seg: Option<u32>,
    pub off: u32,
    /// References taken on `seg` in advance for keys not yet written into it;
    /// returned with the head's own when the head leaves the segment.
    pub spare_refs: u32,
    /// A batch's copied pieces (kept to reuse the allocation; see batch.rs).
    pub(crate) staged: Vec<crate::batch::Staged>,
    /// The worker's current sequential stream (see bypass.rs).
    pub(crate) stream: crate::bypass::Stream,
}

/// A data head and the counters of the writes through it (on one cache
/// line, which its worker owns).
#[derive(Default)]
pub struct Head {
    pub data: SpinLock<DataHead>,
    pub counters: HeadCounters,
}

/// Keys not yet journalled.
#[derive(Default)]
pub struct OpenKset {
    /// Position in Cache::ksets.
    pub id: u8,
    /// Bumped each time this kset is journalled (mirrored in Cache::kset_epochs).
    pub epoch: u16,
    pub keys: Vec<KeyRecord>,
    pub since: Option<Instant>,
}

/// Keeps a value on cache lines of its own (and off the neighbouring line the
/// prefetcher pairs with it), so that workers locking different ones do not
/// move a shared line between cores.
#[repr(align(128))]
#[derive(Default)]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

pub struct Cache {
    pub(crate) media: Arc<dyn Media>,
    pub(crate) sb: Superblock,
    pub(crate) geo: Geometry,
    pub(crate) segs: SegmentTable,
    pub(crate) index: Index,
    pub(crate) ksets: Vec<Padded<SpinLock<OpenKset>>>,
    /// Each kset's epoch, readable without its lock (apart from the locks,
    /// which its worker takes on every write, so that other workers checking
    /// an epoch do not pull that line away).
    pub(crate) kset_epochs: Vec<AtomicU16>,
    pub(crate) log: Mutex<KeyLog>,
    pub(crate) tails: Mutex<Tails>,
    pub(crate) info: Mutex<Replica>,
    pub(crate) gc_percent: AtomicU8,
    /// The cache mode (mode.rs), as stored in the cache-info record.
    pub(crate) mode: AtomicU8,
    /// After leaving writeback: the log sequence writeback must reach before
    /// what was dirty then is all on the base (0: no such transition).
    pub(crate) leaving_until: AtomicU64,
    pub(crate) heads: Vec<Padded<Head>>,
    pub(crate) wb: Mutex<WbState>,
    pub(crate) wb_batch_bytes: AtomicU64,
    pub(crate) seq_cutoff: AtomicU64,
    /// Bypassed writes completed, and how many of them a base flush covers.
    pub(crate) bypassed: Arc<crate::bypass::Bypassed>,
    /// The epoch that was open when the log was replayed: ksets with seq in
    /// this range (see writeback.rs).
    pub(crate) replayed_open_epoch: std::ops::Range<u64>,
    /// Held by the one GC pass that may run at a time.
    pub(crate) gc: Mutex<()>,
    pub(crate) counters: Counters,
    /// Share of the dirty bytes of recent writeback batches that later keys
    /// had overwritten, in percent (a moving average; see bypass.rs), or
    /// ABSORBED_UNKNOWN before the first batch.
    pub(crate) absorbed_pct: std::sync::atomic::AtomicU32,
    pub(crate) read_cache: bool,
    pub(crate) kset_interval: Duration,
    /// Time origin for `kset_due`.
    pub(crate) epoch: Instant,
    /// Nanoseconds after `epoch` when the oldest open kset falls due (u64::MAX:
    /// none is open), so that the kset timer need not lock every kset per tick.
    /// Never later than the truth; it may be earlier (a kset sealed since).
    pub(crate) kset_due: AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many open ksets a cache with `workers` workers has.
fn kset_count(workers: usize) -> usize {
    workers.max(MIN_KSETS)
}

/// Free segments kept back so that sealing every open kset always finds log room.
fn log_reserve(geo: &Geometry, workers: usize) -> u32 {
    let need = (kset_count(workers) + 2) * KSET_MAX_SIZE;
    (need as u32).div_ceil(geo.payload() - KSET_MAX_SIZE as u32) + 1
}

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
        let seg_size = cfg.seg_size.unwrap_or_else(|| auto_seg_size(media.len(), cfg.workers));
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
        let geo = geometry(&sb);
        check_workers(&geo, cfg.workers)?;
        // Invalidate the old superblock first: a crash mid-format leaves a
        // device that is refused, never a mix of two formats.
        media.zero(SB_OFF, META_BLOCK)?;
        media.fence();
        SegmentTable::format(&*media, geo)?;
        let gc = cfg.gc_percent.unwrap_or(DEFAULT_GC_PERCENT);
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
        let geo = geometry(&sb);
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
        let cache = Cache {
            log: Mutex::new(KeyLog::new(replayed.head, sb.nonce)),
            media,
            geo,
            segs,
            index,
            ksets: (0..kset_count(cfg.workers))
                .map(|id| Padded(SpinLock::new(OpenKset { id: id as u8, ..OpenKset::default() })))
                .collect(),
            kset_epochs: (0..kset_count(cfg.workers)).map(|_| AtomicU16::new(0)).collect(),
            tails: Mutex::new(tails),
            info: Mutex::new(info_rep),
            gc_percent: AtomicU8::new(info.gc_percent),
            mode: AtomicU8::new(info.mode),
            leaving_until: AtomicU64::new(0),
            heads: (0..cfg.workers).map(|_| Padded(Head::default())).collect(),
            wb: Mutex::new(WbState::default()),
            wb_batch_bytes: AtomicU64::new(cfg.writeback_batch_bytes),
            seq_cutoff: AtomicU64::new(cfg.seq_cutoff),
            bypassed: Arc::default(),
            replayed_open_epoch: replayed.last_epoch_end + 1..replayed.head.seq,
            gc: Mutex::new(()),
            counters,
            absorbed_pct: crate::bypass::ABSORBED_UNKNOWN.into(),
            read_cache: cfg.read_cache,
            kset_interval: cfg.kset_flush_interval,
            epoch: Instant::now(),
            kset_due: AtomicU64::new(u64::MAX),
            sb,
        };
        // What was journalled before this open is an epoch of its own: writes
        // from now on must not reach the base ahead of it. The mark goes in
        // with the first kset appended (a read-only open appends none).
        if lock(&cache.tails).dirty.seq < replayed.head.seq {
            lock(&cache.log).mark_before_next_append();
        }
        Ok((cache, replayed.report))
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The cache's identity (see [`sb_uuid`]).
    pub fn uuid(&self) -> Uuid {
        sb_uuid(&self.sb)
    }

    pub fn data_crc(&self) -> bool {
        self.sb.data_crc()
    }

    pub fn workers(&self) -> usize {
        self.heads.len()
    }

    /// The GC threshold in force (percent of segments in use).
    pub fn gc_percent(&self) -> u8 {
        self.gc_percent.load(Ordering::Relaxed)
    }

    /// Changes the GC threshold and persists it.
    pub fn set_gc_percent(&self, pct: u8) -> Result<()> {
        if pct > format::MAX_GC_PERCENT {
            return Err(Error::InvalidArgument(format!("gc_percent {pct} is above {}", format::MAX_GC_PERCENT)));
        }
        let rec = CacheInfo { gc_percent: pct, mode: self.cache_mode() as u8 };
        lock(&self.info).store(&*self.media, |r| rec.to_body(r))?;
        self.gc_percent.store(pct, Ordering::Relaxed);
        Ok(())
    }

    /// Called whenever segments are freed, from whatever thread freed them;
    /// hosts use it to resume writes that were deferred for lack of space.
    pub fn set_space_notifier(&self, f: Option<Box<dyn Fn() + Send + Sync>>) {
        self.segs.set_notifier(f);
    }

    /// Changes each time segments are freed.
    pub fn space_epoch(&self) -> u64 {
        self.segs.space_epoch()
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        self.counters.snapshot_into(&mut s);
        s.writeback_errors = self.writeback_errors();
        for h in &self.heads {
            h.counters.add_into(&mut s);
        }
        s.segs_total = self.geo.seg_count;
        s.segs_used = self.segs.used_count();
        s.gc_percent = self.gc_percent.load(Ordering::Relaxed);
        let head = lock(&self.log).head;
        let t = lock(&self.tails);
        s.key_head = (head.seg, head.off, head.seq);
        s.key_tail = (t.key.seg, t.key.off, t.key.seq);
        s.dirty_tail = (t.dirty.seg, t.dirty.off, t.dirty.seq);
        s
    }

    /// Reads and writes served so far (cheap: no locks), so a host can tell
    /// whether the front end is busy when it paces background work.
    pub fn io_ops(&self) -> u64 {
        let c = &self.counters;
        let writes: u64 = self.heads.iter().map(|h| h.counters.write_ops.load(Ordering::Relaxed)).sum();
        // Writes that went past the cache are the front end's work too.
        writes + c.total(|s| &s.bypass_writes) + c.total(|s| &s.read_hit_ops) + c.total(|s| &s.read_miss_ops)
    }

    /// Writeback errors so far (failed base writes and flushes).
    pub fn writeback_errors(&self) -> u64 {
        self.counters.total(|c| &c.writeback_errors) + self.bypassed.flush_errors.load(Ordering::Relaxed)
    }

    /// True while writes wait for space (GC and writeback should hurry).
    pub fn under_pressure(&self) -> bool {
        self.segs.is_short()
    }

    /// Share of segments in use, in percent.
    pub fn used_percent(&self) -> u32 {
        self.segs.used_percent()
    }

    /// Extents in the DRAM index.
    pub fn index_extents(&self) -> usize {
        self.index.extents()
    }

    /// DRAM the index holds (it grows with what is cached, not the base's size).
    pub fn index_dram_bytes(&self) -> u64 {
        self.index.dram_bytes()
    }

    /// True when nothing is dirty: every journalled key has been written back
    /// and no open kset holds a dirty key.
    pub fn is_clean(&self) -> bool {
        let head = lock(&self.log).head;
        let dirty_in_open = self.ksets.iter().any(|k| k.lock().keys.iter().any(|k| k.is_dirty()));
        lock(&self.tails).dirty.seq == head.seq && !dirty_in_open
    }

    /// Orderly shutdown: journals every open kset and releases the data heads.
    /// The host lets the base finish writeback's writes in flight first: a
    /// cache opened later must not see an old write land over its own.
    pub fn close(self) -> Result<()> {
        self.flush()?;
        for h in &self.heads {
            let mut h = h.data.lock();
            if let Some(seg) = h.seg.take() {
                self.segs.put_n(&*self.media, seg, 1 + std::mem::take(&mut h.spare_refs))?;
            }
        }
        Ok(())
    }

    /// Nanoseconds from `epoch` to `t` (saturating below u64::MAX).
    pub(crate) fn nanos(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.epoch);
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1).min(u64::MAX - 1)
    }

    /// When a kset opened at `since` falls due, in nanoseconds after `epoch`.
    pub(crate) fn due_nanos(&self, since: Instant) -> u64 {
        match since.checked_add(self.kset_interval) {
            Some(t) => self.nanos(t),
            None => u64::MAX - 1,
        }
    }

    pub(crate) fn release_seg(&self, seg: u32) -> Result<()> {
        self.segs.put(&*self.media, seg)
    }
}

pub(crate) fn geometry(sb: &Superblock) -> Geometry {
    Geometry { seg_start: sb.seg_start, seg_size: sb.seg_size as u64, seg_count: sb.seg_count }
}

fn validate_config(cfg: &Config) -> Result<()> {
    let b = &cfg.base;
    if b.block_size == 0 || b.block_size as u64 % SECTOR != 0 || !b.block_size.is_power_of_two() {
        return Err(Error::InvalidArgument(format!(
            "base block size {} is not a power-of-two multiple of 512",
            b.block_size
        )));
    }
    if b.size == 0 || b.size % b.block_size as u64 != 0 {
        return Err(Error::InvalidArgument(format!("base size {} is not a multiple of its block size", b.size)));
    }
    if b.id.len() > format::BASE_ID_LEN {
        return Err(Error::InvalidArgument(format!("base id is longer than {} bytes", format::BASE_ID_LEN)));
    }
    if let Some(s) = cfg.seg_size {
        if !(MIN_SEG_SIZE..=MAX_SEG_SIZE).contains(&s) || s % META_BLOCK != 0 {
            return Err(Error::InvalidArgument(format!(
                "segment size {s} must be a multiple of 4096 between {MIN_SEG_SIZE} and {MAX_SEG_SIZE}"
            )));
        }
    }
    if let Some(gc) = cfg.gc_percent {
        if gc > format::MAX_GC_PERCENT {
            return Err(Error::InvalidArgument(format!("gc_percent {gc} is above {}", format::MAX_GC_PERCENT)));
        }
    }
    if cfg.workers == 0 || cfg.workers > MAX_WORKERS {
        return Err(Error::InvalidArgument(format!(
            "{} workers: between 1 and {MAX_WORKERS} are supported",
            cfg.workers
        )));
    }
    Ok(())
}

/// The segment size a new format gets unless one is asked for: the default
/// (16 MiB), halved down to the minimum (64 KiB) until the device holds
/// enough segments for `workers` (at least MIN_SEGS). Small pmem devices
/// thus format without choosing a size.
pub fn auto_seg_size(len: u64, workers: usize) -> u64 {
    let mut s = format::DEFAULT_SEG_SIZE;
    while s > MIN_SEG_SIZE {
        let seg_count = (len.saturating_sub(SEG_START) / s).min(MAX_SEGS);
        let geo = Geometry { seg_start: SEG_START, seg_size: s, seg_count: seg_count as u32 };
        if seg_count >= MIN_SEGS && check_workers(&geo, workers).is_ok() {
            break;
        }
        s /= 2;
    }
    s
}

fn check_workers(geo: &Geometry, workers: usize) -> Result<()> {
    // Every worker may pin a half-filled segment; the log needs its reserve and
    // one segment of its own; GC needs at least one more to make progress.
    let need = workers as u64 + log_reserve(geo, workers) as u64 + 2;
    if (geo.seg_count as u64) < need {
        return Err(Error::InvalidArgument(format!(
            "{} segments are too few for {workers} workers (need {need})",
            geo.seg_count
        )));
    }
    Ok(())
}

fn check_identity(sb: &Superblock, cfg: &Config) -> Result<()> {
    let b = &cfg.base;
    let mut diffs = Vec::new();
    if let Some(s) = cfg.seg_size {
        if s != sb.seg_size as u64 {
            diffs.push(format!("segment size {s} was asked for, the cache was formatted with {}", sb.seg_size));
        }
    }
    if let Some(u) = cfg.uuid {
        let have = sb_uuid(sb);
        if u != have {
            diffs.push(format!("uuid {u} was asked for, the device holds the cache {have}"));
        }
    }
    diffs.extend(b.differences(sb).into_iter().map(|d| format!("base: {d}")));
    if sb.data_crc() != cfg.data_crc {
        diffs.push(format!("data_crc requested {}, device has {}", cfg.data_crc, sb.data_crc()));
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(Error::Mismatch(format!("{} (use force_format to discard the cache)", diffs.join("; "))))
    }
}

/// A cache's identity: the one recorded at format, or for an image formatted
/// before identities were recorded, one derived from its nonce, so that it
/// stays the same across opens without rewriting the superblock.
pub fn sb_uuid(sb: &Superblock) -> Uuid {
    let u = Uuid::from_bytes(sb.uuid);
    if !u.is_nil() {
        return u;
    }
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&sb.nonce.to_le_bytes());
    b[8..].copy_from_slice(&(!sb.nonce).to_le_bytes());
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

fn new_nonce() -> u64 {
    // A v4 UUID is 122 bits from the OS's random source (getrandom).
    let (a, b) = Uuid::new_v4().as_u64_pair();
    a ^ b.rotate_left(32)
}
