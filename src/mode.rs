//! Cache modes: where a write goes, and when it may complete.
//!
//! - **writeback** (the default): a write completes once it is in pmem;
//!   writeback puts it on the base later, paced to absorb overwrites.
//! - **writethrough**: a write goes into the cache and completes only once
//!   writeback has put it on the base and flushed the base
//!   ([`crate::Cache::through_ticket`], [`crate::Cache::written_back`]);
//!   what is cached is then clean. Reads are cached.
//! - **writearound**: a write goes straight to the base, past the cache, when
//!   the guarantee allows it ([`crate::Cache::admit`]: no cached data
//!   over its range, every earlier epoch on the base, no GC pass; see
//!   bypass.rs), so
//!   writes do not take cache space. Otherwise (it overwrites cached data, or
//!   dirty data of an earlier epoch is still being written back) it updates
//!   the cache as in writethrough and completes once written back: the
//!   cache never holds older data than the base, and nothing is invalidated
//!   on media. Reads are cached.
//! - **passthrough**: writes as in writearound; read misses are not cached.
//!   Cached data is still served and dirty data still written back.
//!
//! In every mode but writeback, writeback runs unpaced, so what is dirty
//! leaves the cache as fast as the base takes it. Leaving writeback writes
//! back everything that was dirty ([`crate::Cache::mode_transition`] says
//! while), and new writes follow the new mode at once. The mode is kept in the
//! cache-info record (doc/format.md), so it survives a restart.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum CacheMode {
    #[default]
    Writeback = 0,
    Writethrough = 1,
    Writearound = 2,
    Passthrough = 3,
}

impl CacheMode {
    pub const ALL: [CacheMode; 4] =
        [CacheMode::Writeback, CacheMode::Writethrough, CacheMode::Writearound, CacheMode::Passthrough];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Writeback => "writeback",
            CacheMode::Writethrough => "writethrough",
            CacheMode::Writearound => "writearound",
            CacheMode::Passthrough => "passthrough",
        }
    }

    /// The mode stored as `v` in the cache-info record.
    pub fn from_u8(v: u8) -> Option<CacheMode> {
        CacheMode::ALL.get(v as usize).copied()
    }

    /// A write may complete once it is in the cache (else only once written back).
    pub fn completes_in_cache(self) -> bool {
        self == CacheMode::Writeback
    }

    /// Writes go to the base past the cache where the guarantee allows it.
    pub fn writes_around(self) -> bool {
        matches!(self, CacheMode::Writearound | CacheMode::Passthrough)
    }

    /// Read misses are cached.
    pub fn caches_reads(self) -> bool {
        self != CacheMode::Passthrough
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CacheMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        CacheMode::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "cache_mode '{s}' is not one of writeback, writethrough, writearound, passthrough"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::CacheMode;

    #[test]
    fn names_and_stored_values_round_trip() {
        for m in CacheMode::ALL {
            assert_eq!(m.as_str().parse::<CacheMode>().unwrap(), m);
            assert_eq!(CacheMode::from_u8(m as u8), Some(m));
        }
        assert!("write-back".parse::<CacheMode>().is_err());
        assert_eq!(CacheMode::from_u8(4), None);
    }
}
