//! The cache-info record: the GC threshold and the cache mode, persisted
//! together in one dual-replicated record and read without a lock.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::format::{CacheInfo, MAX_GC_PERCENT};
use crate::mode::CacheMode;
use crate::pmem::Media;
use crate::replica::Replica;
use crate::shared::lock;

pub(crate) struct Settings {
    /// Held while the record is rewritten.
    record: Mutex<Replica>,
    gc_percent: AtomicU8,
    mode: AtomicU8,
}

impl Settings {
    pub fn new(record: Replica, info: CacheInfo) -> Self {
        Settings {
            record: Mutex::new(record),
            gc_percent: AtomicU8::new(info.gc_percent),
            mode: AtomicU8::new(info.mode),
        }
    }

    /// The GC threshold in force (percent of segments in use).
    pub fn gc_percent(&self) -> u8 {
        self.gc_percent.load(Ordering::Relaxed)
    }

    pub fn mode(&self) -> CacheMode {
        CacheMode::from_u8(self.mode.load(Ordering::Relaxed)).unwrap_or_default()
    }

    /// Changes the GC threshold and persists it.
    pub fn set_gc_percent(&self, media: &dyn Media, pct: u8) -> Result<()> {
        if pct > MAX_GC_PERCENT {
            return Err(Error::InvalidArgument(format!("gc_percent {pct} is above {MAX_GC_PERCENT}")));
        }
        let mut rec = lock(&self.record);
        let info = CacheInfo { gc_percent: pct, mode: self.mode() as u8 };
        rec.store(media, |r| info.to_body(r))?;
        self.gc_percent.store(pct, Ordering::Relaxed);
        Ok(())
    }

    /// Changes the mode and persists it; returns the mode before.
    pub fn set_mode(&self, media: &dyn Media, mode: CacheMode) -> Result<CacheMode> {
        let mut rec = lock(&self.record);
        let old = self.mode();
        if old != mode {
            let info = CacheInfo { gc_percent: self.gc_percent(), mode: mode as u8 };
            rec.store(media, |r| info.to_body(r))?;
            self.mode.store(mode as u8, Ordering::Relaxed);
        }
        Ok(old)
    }
}
