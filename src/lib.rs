//! pcache: a crash-consistent, log-structured write-back cache over persistent memory.
//!
//! This crate is the cache engine. It knows nothing of SPDK: hosts (the SPDK
//! bdev module, the offline tools, the bench and the tests) call it from their
//! own workers and pollers. It never blocks and starts no threads.
//!
//! - [`format`]: the on-media layout; [`replica`]: dual-replicated records
//! - [`pmem`]: pmem access (libpmem, DRAM, crash simulation)
//! - [`segment`]: space allocation and reclaim; [`index`]: the sharded DRAM index
//! - [`keylog`]: the key log of ksets; [`tails`]: key_tail and dirty_tail
//! - [`replay`]: rebuilding state at open
//! - [`request`]: write, read, fill, flush; [`batch`]: batched writes; [`writeback`]; [`gc`]
//! - [`bypass`]: large sequential writes straight to the base
//! - [`mode`]: cache modes (writeback, writethrough, writearound, passthrough)
//! - [`drain`]: writeback rates and the time left to drain
//! - [`base`]: the base device interface; [`membase`]: a DRAM base device for tests; [`stats`]
//! - [`inspect`]: a read-only walk of the on-media state, for the offline tools
//! - `spdk` (feature `spdk`): the SPDK bdev module built into libpcache.so

pub mod base;
pub mod batch;
pub mod bypass;
pub mod cache;
pub mod drain;
pub mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod gc;
pub mod index;
pub mod inspect;
pub mod iov;
pub mod keylog;
pub mod membase;
pub mod mode;
pub mod pmem;
pub mod replay;
pub mod replica;
pub mod request;
pub mod segment;
#[cfg(feature = "spdk")]
pub mod spdk;
pub mod spinlock;
pub mod stats;
pub mod tails;
pub mod writeback;

pub use base::{BaseDevice, FileBase};
pub use batch::WriteReq;
pub use bypass::Bypass;
pub use cache::{BaseIdentity, Cache, Config, Opened};
pub use drain::{DrainMeter, DrainRates};
pub use error::{Error, Result};
pub use membase::{Faults, MemBase};
pub use mode::CacheMode;
pub use request::{Miss, WriteOutcome};
pub use stats::Stats;
pub use writeback::{Pacer, WbProgress};

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

impl Cache {
    /// One round of background work: kset timer, writeback, GC.
    pub fn background_step(&self, base: &dyn BaseDevice) -> Result<Tick> {
        self.round(base, true)
    }

    /// The same round with writeback paced as a host paces it for a front end
    /// that is busy or not (see [`Cache::writeback_pace`]).
    pub fn background_step_paced(&self, base: &dyn BaseDevice, pacer: &mut Pacer, front_busy: bool) -> Result<Tick> {
        let write_back = pacer.ready(self, front_busy, false);
        self.round(base, write_back)
    }

    fn round(&self, base: &dyn BaseDevice, write_back: bool) -> Result<Tick> {
        let ksets_sealed = self.flush_expired_ksets()?;
        let wb = if write_back { self.writeback_step(base)? } else { WbProgress::Idle };
        let gc_ksets = self.gc_step()?;
        Ok(Tick {
            ksets_sealed,
            writeback_advanced: wb == WbProgress::Advanced,
            writeback_busy: wb == WbProgress::Busy,
            gc_ksets,
        })
    }
}
