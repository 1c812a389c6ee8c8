//! GC (src/gc.rs): when it runs, how much one step does, what it reports,
//! and that freeing space ends the pressure that writes waiting for it set.

mod common;

use std::sync::Arc;

use common::*;
use pcache::pmem::{Media, MemMedia};
use pcache::{Cache, MemBase, WriteOutcome};

const BASE: u64 = 8 << 20;

fn setup(segs: u64, gc: u8) -> (MemBase, Cache) {
    let media = Arc::new(MemMedia::new(media_len(segs)));
    let mut cfg = config(BASE, 1);
    cfg.gc_percent = Some(gc);
    (base(BASE as usize), open(media as Arc<dyn Media>, &cfg))
}

/// `n` ksets of one small write each, all written back.
fn written_back_ksets(cache: &Cache, base: &MemBase, n: u64) {
    for i in 0..n {
        write_all(cache, base, 0, i * 4096 % BASE, &write_data(i + 1, i * 8 % (BASE / 512), 8));
        cache.flush().unwrap();
    }
    cache.writeback_all(base).unwrap();
}

#[test]
fn gc_waits_for_its_threshold() {
    let (base, cache) = setup(64, 90);
    written_back_ksets(&cache, &base, 20);
    assert!(cache.used_percent() < 90);
    assert_eq!(cache.gc_step().unwrap(), 0, "below gc_percent and without pressure GC keeps clean data");
    assert_eq!(cache.stats().gc_ksets, 0);
}

#[test]
fn a_step_reclaims_a_bounded_number_of_ksets_and_says_how_many() {
    let (base, cache) = setup(64, 0);
    written_back_ksets(&cache, &base, 300);
    let before = cache.stats().gc_ksets;
    let n = cache.gc_step().unwrap();
    assert!(n > 0 && n <= 64, "one step reclaims at most 64 ksets ({n})");
    assert_eq!(cache.stats().gc_ksets - before, n as u64, "the step reports what it reclaimed");
}

#[test]
fn freeing_space_ends_the_pressure_of_waiting_writes() {
    let (base, cache) = setup(12, 50);
    // Fill the cache until a write is deferred for lack of space.
    let mut i = 0;
    loop {
        let off = (i * 65536) % BASE;
        match cache.write_buf(0, off, &write_data(i + 1, off / 512, 128)).unwrap() {
            WriteOutcome::Done => i += 1,
            WriteOutcome::Deferred { .. } => break,
        }
        assert!(i < 10_000, "the cache never filled");
    }
    assert!(cache.under_pressure(), "a deferred write sets the pressure flag");
    assert_eq!(cache.gc_step().unwrap(), 0, "nothing is written back yet: nothing to reclaim");
    assert!(cache.under_pressure(), "GC that freed nothing leaves the pressure on");
    cache.flush().unwrap();
    cache.writeback_all(&base).unwrap();
    assert!(cache.gc_step().unwrap() > 0);
    assert!(!cache.under_pressure(), "GC that freed space ends the pressure");
}

/// Data reads hit is moved by GC, not dropped: a hot range read every round
/// stays cached however many times writes elsewhere cycle the log, while
/// data written once and never read leaves the cache (gc.rs).
#[test]
fn gc_keeps_what_reads_hit_and_drops_the_rest() {
    let (base, cache) = setup(64, 30);
    let (hot, hot_len) = (0u64, 256u64 << 10);
    let (cold, cold_len) = (512u64 << 10, 256u64 << 10);
    write_all(&cache, &base, 0, hot, &write_data(1, hot / 512, hot_len / 512));
    write_all(&cache, &base, 0, cold, &write_data(2, cold / 512, cold_len / 512));
    let churn_at = 1u64 << 20;
    for round in 0..24u64 {
        let misses = cache.stats().read_miss_ops;
        let got = read_through(&cache, &base, 0, hot, hot_len as usize);
        assert_eq!(got, write_data(1, hot / 512, hot_len / 512), "round {round}: the hot range reads back");
        if round > 0 {
            assert_eq!(cache.stats().read_miss_ops, misses, "round {round}: GC dropped read data");
        }
        // Writes elsewhere, written back, and GC over what they used.
        for j in 0..16 {
            let off = churn_at + (round * 16 + j) * 65536 % (BASE - churn_at);
            write_all(&cache, &base, 0, off, &write_data(100 + round * 16 + j, off / 512, 128));
        }
        cache.flush().unwrap();
        cache.writeback_all(&base).unwrap();
        while cache.gc_step().unwrap() > 0 {}
    }
    let st = cache.stats();
    // 24 MiB written through a 4 MiB cache: the hot range was moved round after round.
    assert!(st.gc_moved_bytes >= 16 * hot_len, "GC moved the hot range again and again: {st:?}");
    let mut buf = vec![0u8; cold_len as usize];
    let misses = cache.read(cold, &mut [std::io::IoSliceMut::new(&mut buf)]).unwrap();
    assert_eq!(misses.iter().map(|m| m.len).sum::<u64>(), cold_len, "data never read is not moved");
    assert_eq!(read_through(&cache, &base, 0, cold, cold_len as usize), write_data(2, cold / 512, cold_len / 512));
}

/// When few reads hit (a data set much larger than the cache), moving what
/// they hit does not pay: GC moves in proportion to the share of reads that
/// hit, and what it drops still reads back from the base.
#[test]
fn gc_moves_little_when_few_reads_hit() {
    let (base, cache) = setup(64, 30);
    let (hot, hot_len) = (0u64, 256u64 << 10);
    let (never, never_len) = (768u64 << 10, 256u64 << 10);
    write_all(&cache, &base, 0, hot, &write_data(1, hot / 512, hot_len / 512));
    let churn_at = 1u64 << 20;
    let mut buf = vec![0u8; 4096];
    for round in 0..24u64 {
        // 64 reads that hit (what is still cached of the hot range) and
        // 960 that miss, not filled: a 6 % hit share.
        for i in 0..hot_len / 4096 {
            cache.read(hot + i * 4096, &mut [std::io::IoSliceMut::new(&mut buf)]).unwrap();
        }
        for i in 0..960 {
            let m =
                cache.read(never + i % (never_len / 4096) * 4096, &mut [std::io::IoSliceMut::new(&mut buf)]).unwrap();
            assert_eq!(m.len(), 1, "round {round}: never written, never cached");
        }
        for j in 0..16 {
            let off = churn_at + (round * 16 + j) * 65536 % (BASE - churn_at);
            write_all(&cache, &base, 0, off, &write_data(100 + round * 16 + j, off / 512, 128));
        }
        cache.flush().unwrap();
        cache.writeback_all(&base).unwrap();
        while cache.gc_step().unwrap() > 0 {}
    }
    let st = cache.stats();
    // With every read hitting, the same churn moves the hot range each
    // round (24 times; gc_keeps_what_reads_hit_and_drops_the_rest). The
    // share is a moving average that starts at 100 %: the first rounds
    // still move much.
    assert!(st.gc_moved_bytes < 8 * hot_len, "GC moved {} bytes for a 6 % hit share", st.gc_moved_bytes);
    assert_eq!(read_through(&cache, &base, 0, hot, hot_len as usize), write_data(1, hot / 512, hot_len / 512));
}
