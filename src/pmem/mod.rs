//! Persistent-memory access.
//!
//! The engine sees pmem through [`Media`]: byte-addressed stores that are
//! flushed towards the persistence domain as they are written, and an explicit
//! [`Media::fence`] that waits until every flushed store of the calling thread
//! is durable. This is the PMDK model of `pmem_memcpy_nodrain` + `pmem_drain`.
//!
//! Implementations:
//! - [`PmemFile`]: a libpmem mapping of a file or devdax device (the real thing,
//!   or a file on /dev/shm with `PMEM_IS_PMEM_FORCE=1` standing in for pmem);
//! - [`MemMedia`]: plain DRAM, for tests that do not model crashes;
//! - [`CrashSim`]: DRAM that remembers which cache lines were made durable and,
//!   at a simulated power failure, keeps an arbitrary subset of the others;
//! - [`ReadOnlyFile`], [`ReadOnly`]: read-only access for the offline tools.

mod crashsim;
mod file;
mod mem;
mod readonly;

pub use crashsim::CrashSim;
pub use file::PmemFile;
pub use mem::MemMedia;
pub use readonly::{ReadOnly, ReadOnlyFile};

use crate::error::{Error, Result};

/// Size of a CPU cache line: the unit in which stores reach the persistence domain.
pub const CACHE_LINE: u64 = 64;

/// Byte-addressed persistent memory.
///
/// All methods take `&self`: several workers store to disjoint ranges at once.
/// Callers guarantee that a range is not read while another thread stores to it.
pub trait Media: Send + Sync {
    /// Capacity in bytes.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `buf.len()` bytes at `off` into `buf`.
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()>;

    /// Stores `data` at `off` with flushing stores. Not durable until [`fence`](Media::fence).
    fn write(&self, off: u64, data: &[u8]) -> Result<()>;

    /// Waits until every store this thread flushed is durable.
    fn fence(&self);

    /// Hints that `[off, off+len)` is about to be read, so that its first
    /// miss overlaps other work. Never faults, never changes anything.
    fn prefetch(&self, _off: u64, _len: u64) {}

    /// Stores `len` zero bytes at `off` (flushed, not fenced).
    fn zero(&self, off: u64, len: u64) -> Result<()> {
        const Z: [u8; 4096] = [0; 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(Z.len() as u64);
            self.write(off + done, &Z[..n as usize])?;
            done += n;
        }
        Ok(())
    }
}

/// Checks that `[off, off+len)` lies inside a media of `cap` bytes.
pub(crate) fn check_range(cap: u64, off: u64, len: usize) -> Result<()> {
    match off.checked_add(len as u64) {
        Some(end) if end <= cap => Ok(()),
        _ => Err(Error::OutOfBounds { off, len: len as u64, cap }),
    }
}
