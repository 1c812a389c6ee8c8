//! Counters the engine keeps, and the snapshot it reports.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Counter shards. Each of the first `SHARDS - 1` threads that count owns a
/// shard and adds to it with a plain load and store: no locked instruction
/// per I/O (a locked add costs a read hit about 4 % of its time, and after
/// a write's flushing stores it waits for them). Later threads share the
/// last shard and add atomically.
const SHARDS: usize = 16;
const SHARED: usize = SHARDS - 1;

/// Counters, sharded by thread; a snapshot sums the shards.
pub struct Counters {
    shards: Box<[CounterSet]>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters { shards: (0..SHARDS).map(|_| CounterSet::default()).collect() }
    }
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, the same in every `Counters`.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Relaxed).min(SHARED);
}

/// One shard; aligned so that two shards never share a cache line (or the
/// adjacent line the prefetcher pairs with it).
#[derive(Default)]
#[repr(align(128))]
pub struct CounterSet {
    pub read_hit_ops: AtomicU64,
    pub read_miss_ops: AtomicU64,
    pub read_hit_bytes: AtomicU64,
    pub read_miss_bytes: AtomicU64,
    pub deferred_writes: AtomicU64,
    pub fill_bytes: AtomicU64,
    pub dirty_bytes: AtomicU64,
    pub kset_flushes: AtomicU64,
    pub flush_ops: AtomicU64,
    pub writeback_ksets: AtomicU64,
    pub writeback_bytes: AtomicU64,
    pub writeback_errors: AtomicU64,
    pub writeback_batches: AtomicU64,
    pub writeback_epochs: AtomicU64,
    pub writeback_skipped_bytes: AtomicU64,
    pub base_writes: AtomicU64,
    pub base_flushes: AtomicU64,
    pub bypass_writes: AtomicU64,
    pub bypass_bytes: AtomicU64,
    pub bypass_full_writes: AtomicU64,
    pub gc_ksets: AtomicU64,
    pub gc_keys: AtomicU64,
    pub data_crc_errors: AtomicU64,
    pub base_read_errors: AtomicU64,
}

impl Counters {
    /// The calling thread's shard, to add to.
    #[inline]
    pub fn local(&self) -> Local<'_> {
        let i = SHARD.with(|s| *s);
        Local { set: &self.shards[i], owned: i != SHARED }
    }

    /// The sum of one counter over all shards.
    pub fn total(&self, f: impl Fn(&CounterSet) -> &AtomicU64) -> u64 {
        self.shards.iter().fold(0u64, |a, c| a.wrapping_add(f(c).load(Relaxed)))
    }
}

/// The calling thread's shard of a [`Counters`].
pub struct Local<'a> {
    set: &'a CounterSet,
    /// Only this thread adds to the shard.
    owned: bool,
}

impl Local<'_> {
    #[inline]
    pub fn add(&self, field: impl FnOnce(&CounterSet) -> &AtomicU64, v: u64) {
        let c = field(self.set);
        if self.owned {
            c.store(c.load(Relaxed).wrapping_add(v), Relaxed);
        } else {
            c.fetch_add(v, Relaxed);
        }
    }

    #[inline]
    pub fn sub(&self, field: impl FnOnce(&CounterSet) -> &AtomicU64, v: u64) {
        self.add(field, v.wrapping_neg());
    }
}

/// Counters of one data head, added to only by the holder of the head's
/// lock: an add is a plain load and store, because an atomic read-modify-write
/// at the end of a write would wait for the write's data to reach media (see
/// spinlock.rs). Readers load them without the lock.
#[derive(Default)]
pub struct HeadCounters {
    pub write_ops: AtomicU64,
    pub write_bytes: AtomicU64,
}

impl HeadCounters {
    /// Adds `v`; the caller holds the head's lock.
    #[inline]
    pub fn add(c: &AtomicU64, v: u64) {
        c.store(c.load(Relaxed).wrapping_add(v), Relaxed);
    }

    pub fn add_into(&self, s: &mut Stats) {
        s.write_ops = s.write_ops.wrapping_add(self.write_ops.load(Relaxed));
        s.write_bytes = s.write_bytes.wrapping_add(self.write_bytes.load(Relaxed));
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
    /// Batches written back, and how many of them ended an epoch.
    pub writeback_batches: u64,
    pub writeback_epochs: u64,
    /// Dirty bytes never written because a later key overwrote them.
    pub writeback_skipped_bytes: u64,
    pub base_writes: u64,
    pub base_flushes: u64,
    /// Writes sent straight to the base (see bypass.rs).
    pub bypass_writes: u64,
    pub bypass_bytes: u64,
    /// Of those, the ones that found the cache full.
    pub bypass_full_writes: u64,
    pub gc_ksets: u64,
    pub gc_keys: u64,
    pub data_crc_errors: u64,
    /// Read misses the base failed (the read failed; nothing was cached).
    pub base_read_errors: u64,
    pub segs_total: u32,
    pub segs_used: u32,
    pub gc_percent: u8,
    pub key_head: (u32, u32, u64),
    pub key_tail: (u32, u32, u64),
    pub dirty_tail: (u32, u32, u64),
}

impl Counters {
    pub fn snapshot_into(&self, s: &mut Stats) {
        s.read_hit_ops = self.total(|c| &c.read_hit_ops);
        s.read_miss_ops = self.total(|c| &c.read_miss_ops);
        s.read_hit_bytes = self.total(|c| &c.read_hit_bytes);
        s.read_miss_bytes = self.total(|c| &c.read_miss_bytes);
        s.deferred_writes = self.total(|c| &c.deferred_writes);
        s.fill_bytes = self.total(|c| &c.fill_bytes);
        s.dirty_bytes = self.total(|c| &c.dirty_bytes);
        s.kset_flushes = self.total(|c| &c.kset_flushes);
        s.flush_ops = self.total(|c| &c.flush_ops);
        s.writeback_ksets = self.total(|c| &c.writeback_ksets);
        s.writeback_bytes = self.total(|c| &c.writeback_bytes);
        s.writeback_errors = self.total(|c| &c.writeback_errors);
        s.writeback_batches = self.total(|c| &c.writeback_batches);
        s.writeback_epochs = self.total(|c| &c.writeback_epochs);
        s.writeback_skipped_bytes = self.total(|c| &c.writeback_skipped_bytes);
        s.base_writes = self.total(|c| &c.base_writes);
        s.base_flushes = self.total(|c| &c.base_flushes);
        s.bypass_writes = self.total(|c| &c.bypass_writes);
        s.bypass_bytes = self.total(|c| &c.bypass_bytes);
        s.bypass_full_writes = self.total(|c| &c.bypass_full_writes);
        s.gc_ksets = self.total(|c| &c.gc_ksets);
        s.gc_keys = self.total(|c| &c.gc_keys);
        s.data_crc_errors = self.total(|c| &c.data_crc_errors);
        s.base_read_errors = self.total(|c| &c.base_read_errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More threads than shards, adding and subtracting at once: the shared
    /// shard must not lose an update, nor an owned one see another thread.
    #[test]
    fn no_update_is_lost_with_more_threads_than_shards() {
        let c = Counters::default();
        let (threads, adds) = (3 * SHARDS, 20_000u64);
        std::thread::scope(|s| {
            for t in 0..threads {
                let c = &c;
                s.spawn(move || {
                    for _ in 0..adds {
                        c.local().add(|s| &s.dirty_bytes, 3);
                        c.local().sub(|s| &s.dirty_bytes, 1);
                        if t % 2 == 0 {
                            c.local().add(|s| &s.read_hit_ops, 1);
                        }
                    }
                });
            }
        });
        assert_eq!(c.total(|s| &s.dirty_bytes), threads as u64 * adds * 2);
        assert_eq!(c.total(|s| &s.read_hit_ops), (threads as u64 / 2) * adds);
    }
}
