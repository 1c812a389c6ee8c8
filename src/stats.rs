//! Counters the engine keeps, and the snapshot it reports.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Counters {
    pub read_hit_ops: AtomicU64,
    pub read_miss_ops: AtomicU64,
    pub read_hit_bytes: AtomicU64,
    pub read_miss_bytes: AtomicU64,
    pub write_ops: AtomicU64,
    pub write_bytes: AtomicU64,
    pub deferred_writes: AtomicU64,
    pub fill_bytes: AtomicU64,
    pub dirty_bytes: AtomicU64,
    pub kset_flushes: AtomicU64,
    pub flush_ops: AtomicU64,
    pub writeback_ksets: AtomicU64,
    pub writeback_bytes: AtomicU64,
    pub writeback_errors: AtomicU64,
    pub gc_ksets: AtomicU64,
    pub gc_keys: AtomicU64,
    pub data_crc_errors: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, v: u64) {
        c.fetch_add(v, Relaxed);
    }
    pub fn sub(c: &AtomicU64, v: u64) {
        c.fetch_sub(v, Relaxed);
    }
}

/// A point-in-time view of the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub read_hit_ops: u64,
    pub read_miss_ops: u64,
    pub read_hit_bytes: u64,
    pub read_miss_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
    pub deferred_writes: u64,
    pub fill_bytes: u64,
    pub dirty_bytes: u64,
    pub kset_flushes: u64,
    pub flush_ops: u64,
    pub writeback_ksets: u64,
    pub writeback_bytes: u64,
    pub writeback_errors: u64,
    pub gc_ksets: u64,
    pub gc_keys: u64,
    pub data_crc_errors: u64,
    pub segs_total: u32,
    pub segs_used: u32,
    pub gc_percent: u8,
    pub key_head: (u32, u32, u64),
    pub key_tail: (u32, u32, u64),
    pub dirty_tail: (u32, u32, u64),
}

impl Counters {
    pub fn snapshot_into(&self, s: &mut Stats) {
        s.read_hit_ops = self.read_hit_ops.load(Relaxed);
        s.read_miss_ops = self.read_miss_ops.load(Relaxed);
        s.read_hit_bytes = self.read_hit_bytes.load(Relaxed);
        s.read_miss_bytes = self.read_miss_bytes.load(Relaxed);
        s.write_ops = self.write_ops.load(Relaxed);
        s.write_bytes = self.write_bytes.load(Relaxed);
        s.deferred_writes = self.deferred_writes.load(Relaxed);
        s.fill_bytes = self.fill_bytes.load(Relaxed);
        s.dirty_bytes = self.dirty_bytes.load(Relaxed);
        s.kset_flushes = self.kset_flushes.load(Relaxed);
        s.flush_ops = self.flush_ops.load(Relaxed);
        s.writeback_ksets = self.writeback_ksets.load(Relaxed);
        s.writeback_bytes = self.writeback_bytes.load(Relaxed);
        s.writeback_errors = self.writeback_errors.load(Relaxed);
        s.gc_ksets = self.gc_ksets.load(Relaxed);
        s.gc_keys = self.gc_keys.load(Relaxed);
        s.data_crc_errors = self.data_crc_errors.load(Relaxed);
    }
}
