//! One pcache: what it was created with, the engine it serves, its bdev and
//! the bdevs it holds. pcache_bdev.rs creates and frees nodes and keeps the
//! registry; pcache_io.rs serves I/O given a node; the node's pollers are
//! pollers.rs's.

use std::ffi::CString;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use spdk_sys as sys;

use super::claim::Claimed;
use super::json::Writer;
use super::pollers::Background;
use crate::pmem::PmemFile;
use crate::Cache;

/// What a pcache was created with; kept for save_config and for pcaches
/// waiting for their bdevs.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateOpts {
    pub name: String,
    pub cache_bdev: String,
    pub base_bdev: String,
    pub data_crc: Option<bool>,
    pub gc_percent: Option<u8>,
    pub writeback_batch_bytes: Option<u64>,
    pub seq_cutoff_bytes: Option<u64>,
    /// Seconds the base may lag behind the cache (writeback.rs, keeping).
    pub base_lag_secs: Option<u64>,
    /// Dirty data (percent of the cache) writeback lets build up.
    pub max_dirty_percent: Option<u32>,
    /// Which read misses are cached (promote.rs).
    pub promotion: Option<crate::Promotion>,
    /// None keeps the mode the device holds (writeback on a new one).
    pub cache_mode: Option<crate::CacheMode>,
    /// The pcache bdev's UUID (recorded at format; must match after).
    pub uuid: Option<uuid::Uuid>,
    /// Segment size for a new format (None: the engine picks; must match after).
    pub seg_size: Option<u64>,
    pub force_format: bool,
}

impl CreateOpts {
    /// The pcache's name and its two bdevs, as every JSON view of it starts.
    pub fn write_names(&self, w: &mut Writer) {
        w.named_str("name", &self.name);
        w.named_str("cache_bdev", &self.cache_bdev);
        w.named_str("base_bdev", &self.base_bdev);
    }
}

/// One registered pcache. Boxed and never moved: SPDK holds pointers to it
/// (as the bdev's ctxt and as the io_device) and so do its pollers.
pub struct PcacheNode {
    pub bdev: sys::spdk_bdev,
    /// The bdev's name, which `bdev` points into.
    pub name_c: CString,
    pub opts: CreateOpts,
    pub cache: Arc<Cache>,
    /// The pmem mapping (the cache holds it too, as a Media).
    pub _media: Arc<PmemFile>,
    /// The base bdev's descriptor (owned by `claims`), for the I/O path.
    pub base_desc: *mut sys::spdk_bdev_desc,
    /// Whether the base takes FLUSH (writes that bypassed the cache need one).
    pub base_can_flush: bool,
    /// The claimed cache and base bdevs; given back once the node is drained.
    pub claims: Option<Claims>,
    pub bg: Background,
    /// Set once unregistering starts: deferred writes are failed, not retried.
    pub removing: AtomicBool,
    /// The RBD image the base is and the owner key this pcache wrote on it
    /// (rbd_owner.rs), released when the pcache goes away clean.
    pub rbd: Option<(super::rbd_owner::RbdImage, super::rbd_owner::Owner)>,
}

// SAFETY: the raw SPDK handles are used only on the creating thread (descriptors, pollers)
// or are thread-safe by SPDK's contract (getting channels from a descriptor);
// everything else is Sync Rust.
unsafe impl Send for PcacheNode {}
// SAFETY: as above.
unsafe impl Sync for PcacheNode {}

impl PcacheNode {
    pub fn name(&self) -> &str {
        self.opts.name.as_str()
    }

    /// Writeback rates (zero once the background work has stopped).
    pub fn drain_rates(&self) -> crate::DrainRates {
        self.bg.drain_rates()
    }

    /// Flushes (flush RPCs, deletes with flush) waiting for writeback.
    pub fn flushes_waiting(&self) -> usize {
        self.bg.flushes_waiting()
    }
}

/// The two claimed bdevs of a pcache.
pub struct Claims {
    pub cache: Claimed,
    pub base: Claimed,
}
