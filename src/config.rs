//! How a cache is opened: who the base is, the options, and the checks of
//! both against what a device holds.

use std::time::Duration;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::format::{
    self, Superblock, KSET_MAX_SIZE, MAX_SEGS, MAX_SEG_SIZE, META_BLOCK, MIN_SEGS, MIN_SEG_SIZE, SECTOR, SEG_START,
};
use crate::mode::CacheMode;
use crate::segment::Geometry;

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
    /// Which read misses are cached once the cache has filled (see promote.rs).
    pub promotion: crate::promote::Promotion,
    /// An open kset reaches media at the latest this long after its first key.
    pub kset_flush_interval: Duration,
    /// Cap of the dirty bytes writeback takes in one batch (see writeback.rs).
    pub writeback_batch_bytes: u64,
    /// How long the base may lag behind the cache: while GC needs room, live
    /// dirty data of the open epoch is kept in the cache rather than written
    /// back, as long as this (zero: never kept; see writeback.rs).
    pub base_lag: Duration,
    /// Dirty data (percent of the cache) writeback lets build up: past it
    /// nothing is kept and a busy front end's writeback runs at full speed
    /// (100: as much as space allows).
    pub max_dirty_percent: u32,
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
            promotion: Default::default(),
            kset_flush_interval: Duration::from_secs(1),
            writeback_batch_bytes: crate::writeback::DEFAULT_BATCH_BYTES,
            base_lag: crate::writeback::DEFAULT_BASE_LAG,
            max_dirty_percent: crate::writeback::MAX_DIRTY_PERCENT,
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
/// write.rs), so overlapping writes replay in the order they completed.
pub const MIN_KSETS: usize = 16;
/// Kset ids are a byte in the index (index::KsetTag).
pub const MAX_WORKERS: usize = 254;

/// How many open ksets a cache with `workers` workers has.
pub(crate) fn kset_count(workers: usize) -> usize {
    workers.max(MIN_KSETS)
}

/// Free segments kept back so that sealing every open kset always finds log room.
pub(crate) fn log_reserve(geo: &Geometry, workers: usize) -> u32 {
    let need = (kset_count(workers) + 2) * KSET_MAX_SIZE;
    (need as u32).div_ceil(geo.payload() - KSET_MAX_SIZE as u32) + 1
}

pub(crate) fn validate_config(cfg: &Config) -> Result<()> {
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
    if !(1..=crate::writeback::MAX_DIRTY_PERCENT).contains(&cfg.max_dirty_percent) {
        return Err(Error::InvalidArgument(format!(
            "max_dirty_percent {} is not between 1 and 100",
            cfg.max_dirty_percent
        )));
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

pub(crate) fn check_workers(geo: &Geometry, workers: usize) -> Result<()> {
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

pub(crate) fn check_identity(sb: &Superblock, cfg: &Config) -> Result<()> {
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
