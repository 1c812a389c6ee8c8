//! A write that waits for space is retried only once the space epoch moves
//! (Cache::space_epoch), as the SPDK module retries its deferred writes.
//! So whatever background work runs while a write waits must either free
//! space for it or leave the cache marked short, so that GC goes on until
//! it does: work that relieves the cache without freeing anything a write
//! can use would leave it waiting forever. A hot set half the cache, with
//! GC thresholds up to the highest, with and without keeping.

mod common;

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pcache::pmem::{Media, MemMedia};
use pcache::WriteOutcome;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

const BASE: u64 = 8 << 20;

#[test]
fn a_write_waiting_for_space_is_always_woken() {
    // Segments of 1 MiB hold more keys than a GC step reclaims ksets.
    for (gc, seg) in [(60u8, SEG), (90, SEG), (60, 1 << 20), (90, 1 << 20)] {
        for lag in [Duration::ZERO, Duration::from_secs(3600)] {
            let media: Arc<dyn Media> = Arc::new(MemMedia::new((pcache::format::SEG_START + 16 * seg) as usize));
            let base = base(BASE as usize);
            let mut cfg = config(BASE, 1);
            cfg.seg_size = Some(seg);
            cfg.gc_percent = Some(gc);
            cfg.base_lag = lag;
            let cache = open(media, &cfg);
            let hot = 16 * seg / 2 / 4096; // blocks in half the cache
            let mut rng = SmallRng::seed_from_u64(gc as u64);
            let mut waits = 0;
            for id in 1..=20_000u64 {
                let off = rng.next_u64() % hot * 4096;
                let data = write_data(id, off / 512, 8);
                loop {
                    let epoch = cache.space_epoch();
                    match cache.write(0, off, &[IoSlice::new(&data)]).unwrap() {
                        WriteOutcome::Done => break,
                        WriteOutcome::Deferred { written } => {
                            assert_eq!(written, 0);
                            waits += 1;
                            // The pollers run until the epoch moves.
                            // (The base completes on threads of its own.)
                            let since = std::time::Instant::now();
                            while cache.space_epoch() == epoch {
                                cache.background_step(&base).unwrap();
                                std::thread::yield_now();
                                assert!(
                                    since.elapsed() < Duration::from_secs(10),
                                    "gc {gc}, seg {seg}, lag {lag:?}: write {id} waits for space and nothing wakes it: {:?}",
                                    cache.stats()
                                );
                            }
                        }
                    }
                }
            }
            assert!(waits > 0, "gc {gc}, lag {lag:?}: writes never waited: the test tests nothing");
            let st = cache.stats();
            assert!(st.gc_ksets > 0, "gc {gc}: {st:?}");
        }
    }
}

/// The case above, made certain: writes wait for space, everything is
/// written back, and a GC step reclaims ksets whose keys free no whole
/// segment (1 MiB segments, one key per kset). The cache must stay short
/// until a segment is freed: if GC said it was relieved, nothing would run
/// GC again (segments in use are below the threshold) and the waiting write
/// would never be retried.
#[test]
fn gc_that_frees_no_segment_leaves_the_cache_short() {
    let seg = 1u64 << 20;
    let media: Arc<dyn Media> = Arc::new(MemMedia::new((pcache::format::SEG_START + 16 * seg) as usize));
    let base = base(BASE as usize);
    let mut cfg = config(BASE, 1);
    cfg.seg_size = Some(seg);
    cfg.gc_percent = Some(90);
    cfg.base_lag = Duration::ZERO;
    let cache = open(media, &cfg);
    let mut id = 0u64;
    loop {
        id += 1;
        let off = id % (BASE / 4096) * 4096;
        let out = cache.write(0, off, &[IoSlice::new(&write_data(id, off / 512, 8))]).unwrap();
        if out != WriteOutcome::Done {
            break;
        }
        cache.flush().unwrap(); // one key per kset
    }
    cache.writeback_all(&base).unwrap();
    assert!(cache.under_pressure(), "a write waits: the cache is short");
    let epoch = cache.space_epoch();
    let mut steps = 0;
    while cache.space_epoch() == epoch {
        assert!(cache.gc_step().unwrap() > 0 || steps > 0, "GC reclaims");
        if cache.space_epoch() == epoch {
            assert!(cache.under_pressure(), "GC step {steps} freed no segment and yet relieved the cache");
        }
        steps += 1;
        assert!(steps < 10_000, "GC never freed a segment");
    }
}
