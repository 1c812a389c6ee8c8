//! Counters the engine keeps, and the snapshot it reports.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::format::LogPos;

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

/// Declares the engine's sharded counters once: the shard ([`CounterSet`]),
/// their fields in [`Stats`], the snapshot that sums them, and the list of
/// event counters hosts report ([`Stats::events`]).
macro_rules! counters {
    (
        gauges { $($(#[$gdoc:meta])* $gauge:ident,)* }
        events { $($(#[$edoc:meta])* $event:ident,)* }
    ) => {
        /// One shard; aligned so that two shards never share a cache line (or
        /// the adjacent line the prefetcher pairs with it).
        #[derive(Default)]
        #[repr(align(128))]
        pub struct CounterSet {
            $(pub $gauge: AtomicU64,)*
            $(pub $event: AtomicU64,)*
        }

        /// A point-in-time view of the cache.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Stats {
            /// Writes completed and their bytes (counted per data head).
            pub write_ops: u64,
            pub write_bytes: u64,
            $($(#[$gdoc])* pub $gauge: u64,)*
            $($(#[$edoc])* pub $event: u64,)*
            pub segs_total: u32,
            pub segs_used: u32,
            pub gc_percent: u8,
            pub key_head: LogPos,
            pub key_tail: LogPos,
            pub dirty_tail: LogPos,
        }

        impl Counters {
            pub fn snapshot_into(&self, s: &mut Stats) {
                $(s.$gauge = self.total(|c| &c.$gauge);)*
                $(s.$event = self.total(|c| &c.$event);)*
            }
        }

        impl Stats {
            /// Every event counter by name, in a fixed order: what hosts
            /// report (bdev_pcache_get_stats). Levels such as dirty_bytes and
            /// the log positions are reported with the cache's state instead.
            pub fn events(&self) -> Vec<(&'static str, u64)> {
                vec![
                    ("write_ops", self.write_ops),
                    ("write_bytes", self.write_bytes),
                    $((stringify!($event), self.$event),)*
                ]
            }
        }
    };
}

counters! {
    gauges {
        /// Bytes written into the cache and not yet written back.
        dirty_bytes,
    }
    events {
        read_hit_ops,
        read_miss_ops,
        read_hit_bytes,
        read_miss_bytes,
        deferred_writes,
        fill_bytes,
        /// Read misses the promotion policy did not cache, and their bytes (promote.rs).
        promotion_declined_ops,
        promotion_declined_bytes,
        kset_flushes,
        flush_ops,
        writeback_ksets,
        writeback_bytes,
        writeback_errors,
        /// Batches written back, and how many of them ended an epoch.
        writeback_batches,
        writeback_epochs,
        /// Dirty bytes never written because a later key overwrote them.
        writeback_skipped_bytes,
        /// Dirty bytes kept in the cache (moved to the log head) rather than
        /// written, while the base may lag (writeback.rs).
        writeback_kept_bytes,
        base_writes,
        base_flushes,
        /// Writes sent straight to the base (see bypass.rs).
        bypass_writes,
        bypass_bytes,
        /// Of those, the ones that found the cache full.
        bypass_full_writes,
        gc_ksets,
        gc_keys,
        /// Bytes GC kept cached because reads hit them: moved to the log
        /// head rather than dropped (gc.rs).
        gc_moved_bytes,
        data_crc_errors,
        /// Read misses the base failed (the read failed; nothing was cached).
        base_read_errors,
    }
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
