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

// The surface hosts use: the base device interface, errors, the on-media
// format and pmem access (the offline tools read both), and inspect.
pub mod base;
pub mod error;
pub mod format;
pub mod inspect;
pub mod pmem;
#[cfg(feature = "spdk")]
pub mod spdk;

// Only for tests and the fuzz harness.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "internals")]
pub mod membase;

// The inner modules are private, so that what no host uses shows up as dead
// code; the `internals` feature (tests, fuzzing) declares them public
// instead. The public declarations come from a macro so that tools which
// follow `mod` items (cargo-mutants) see each file once.
macro_rules! public_with_internals {
    ($($name:ident),*) => {$(
        #[cfg(feature = "internals")]
        pub mod $name;
    )*};
}
public_with_internals!(
    batch, bypass, cache, drain, gc, index, iov, keylog, mode, replay, replica, request, segment, spinlock, stats,
    tails, writeback
);
#[cfg(not(feature = "internals"))]
mod batch;
#[cfg(not(feature = "internals"))]
mod bypass;
#[cfg(not(feature = "internals"))]
mod cache;
#[cfg(not(feature = "internals"))]
mod drain;
#[cfg(not(feature = "internals"))]
mod gc;
#[cfg(not(feature = "internals"))]
mod index;
#[cfg(not(feature = "internals"))]
mod iov;
#[cfg(not(feature = "internals"))]
mod keylog;
#[cfg(not(feature = "internals"))]
mod mode;
#[cfg(not(feature = "internals"))]
mod replay;
#[cfg(not(feature = "internals"))]
mod replica;
#[cfg(not(feature = "internals"))]
mod request;
#[cfg(not(feature = "internals"))]
mod segment;
#[cfg(not(feature = "internals"))]
mod spinlock;
#[cfg(not(feature = "internals"))]
mod stats;
#[cfg(not(feature = "internals"))]
mod tails;
#[cfg(not(feature = "internals"))]
mod writeback;

pub use base::{BaseDevice, FileBase};
pub use batch::WriteReq;
pub use bypass::Bypass;
pub use cache::{sb_uuid, BaseIdentity, Cache, Config, Opened};
pub use drain::{DrainMeter, DrainRates};
pub use error::{Error, Result};
#[cfg(feature = "internals")]
pub use membase::{Faults, MemBase};
pub use mode::CacheMode;
pub use replay::ReplayReport;
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
