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
//! - [`cache`]: the `Cache` composed of the components below, and every call a host makes;
//!   [`config`]: how it opens; [`shared`]: the parts every component reads
//! - [`journal`]: open ksets, the key log and its tails; [`heads`]: per-worker data heads;
//!   [`settings`]: the persisted GC threshold and cache mode
//! - [`write`]: writes (a single write is a batch of one), zero keys, FLUSH; [`read`]: reads and
//!   read fills; [`writeback`]; [`gc`]
//! - [`bypass`]: large sequential writes straight to the base; [`promote`]: which read misses are cached
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
    bypass, cache, config, drain, full_hits, gc, heads, index, iov, journal, keep, keylog, mode, promote, read,
    relocate, replay, replica, segment, settings, shared, spinlock, stats, tails, write, writeback
);
#[cfg(not(feature = "internals"))]
mod bypass;
#[cfg(not(feature = "internals"))]
mod cache;
#[cfg(not(feature = "internals"))]
mod config;
#[cfg(not(feature = "internals"))]
mod drain;
#[cfg(not(feature = "internals"))]
mod full_hits;
#[cfg(not(feature = "internals"))]
mod gc;
#[cfg(not(feature = "internals"))]
mod heads;
#[cfg(not(feature = "internals"))]
mod index;
#[cfg(not(feature = "internals"))]
mod iov;
#[cfg(not(feature = "internals"))]
mod journal;
#[cfg(not(feature = "internals"))]
mod keep;
#[cfg(not(feature = "internals"))]
mod keylog;
#[cfg(not(feature = "internals"))]
mod mode;
#[cfg(not(feature = "internals"))]
mod promote;
#[cfg(not(feature = "internals"))]
mod read;
#[cfg(not(feature = "internals"))]
mod relocate;
#[cfg(not(feature = "internals"))]
mod replay;
#[cfg(not(feature = "internals"))]
mod replica;
#[cfg(not(feature = "internals"))]
mod segment;
#[cfg(not(feature = "internals"))]
mod settings;
#[cfg(not(feature = "internals"))]
mod shared;
#[cfg(not(feature = "internals"))]
mod spinlock;
#[cfg(not(feature = "internals"))]
mod stats;
#[cfg(not(feature = "internals"))]
mod tails;
#[cfg(not(feature = "internals"))]
mod write;
#[cfg(not(feature = "internals"))]
mod writeback;

pub use base::{BaseDevice, FileBase};
pub use bypass::{Admit, Bypass};
pub use cache::{Cache, Opened, Tick, WritebackHelper};
pub use config::{sb_uuid, BaseIdentity, Config};
pub use drain::{DrainMeter, DrainRates};
pub use error::{Error, Result};
#[cfg(feature = "internals")]
pub use membase::{Faults, MemBase};
pub use mode::CacheMode;
pub use promote::Promotion;
pub use read::{Miss, Misses};
pub use replay::ReplayReport;
pub use stats::Stats;
pub use write::{WriteOutcome, WriteReq};
pub use writeback::{Pacer, WbProgress, WritebackEvents};
