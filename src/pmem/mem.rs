//! DRAM-backed media for tests: stores land immediately, fences are no-ops.

use std::sync::RwLock;

use super::{check_range, Media};
use crate::error::Result;

/// A byte vector behind a lock; simple and safe, not fast.
pub struct MemMedia {
    bytes: RwLock<Vec<u8>>,
}

impl MemMedia {
    pub fn new(len: usize) -> Self {
        MemMedia { bytes: RwLock::new(vec![0; len]) }
    }

    /// A copy of the whole contents (for corrupting and reloading images in tests).
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn from_image(image: Vec<u8>) -> Self {
        MemMedia { bytes: RwLock::new(image) }
    }
}

impl Media for MemMedia {
    fn len(&self) -> u64 {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let b = self.bytes.read().unwrap_or_else(|e| e.into_inner());
        check_range(b.len() as u64, off, buf.len())?;
        buf.copy_from_slice(&b[off as usize..off as usize + buf.len()]);
        Ok(())
    }

    fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        let mut b = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        check_range(b.len() as u64, off, data.len())?;
        b[off as usize..off as usize + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn fence(&self) {}
}
