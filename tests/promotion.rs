//! Promotion (src/promote.rs): once the cache has filled, a read miss is
//! cached only when its block has missed `hits` times; while it has room,
//! every miss is; `always` caches every miss. What the read returns never
//! depends on it.

mod common;

use std::sync::Arc;

use common::*;
use pcache::pmem::{Media, MemMedia};
use pcache::Promotion;

const BASE: u64 = 8 << 20;

/// A cache over a base whose first 64 KiB hold a known pattern; `full`
/// makes it count as filled from the start (GC threshold 0).
fn setup(p: Promotion, full: bool) -> (pcache::Cache, pcache::MemBase, Vec<u8>) {
    let data = write_data(7, 0, 128);
    let mut image = vec![0u8; BASE as usize];
    image[..data.len()].copy_from_slice(&data);
    let mut cfg = config(BASE, 1);
    cfg.promotion = p;
    if full {
        cfg.gc_percent = Some(0);
    }
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(16)));
    (open(media, &cfg), base_from(image), data)
}

/// Reads 4 KiB at `off` through the cache; returns whether it was a hit.
fn read_4k(cache: &pcache::Cache, base: &pcache::MemBase, data: &[u8], off: u64) -> bool {
    let hits = cache.stats().read_hit_ops;
    let got = read_through(cache, base, 0, off, 4096);
    assert!(got == data[off as usize..off as usize + 4096], "read at {off} returned other bytes");
    cache.stats().read_hit_ops > hits
}

#[test]
fn nhit_caches_a_block_on_its_third_miss_once_the_cache_is_full() {
    let (cache, base, data) = setup(Promotion::Nhit { hits: 3 }, true);
    assert!(!read_4k(&cache, &base, &data, 8192));
    assert!(!read_4k(&cache, &base, &data, 8192));
    let st = cache.stats();
    assert_eq!((st.promotion_declined_ops, st.promotion_declined_bytes, st.fill_bytes), (2, 8192, 0));
    assert!(!read_4k(&cache, &base, &data, 8192), "the third read still misses, and is cached");
    assert_eq!(cache.stats().fill_bytes, 4096);
    assert!(read_4k(&cache, &base, &data, 8192), "then it hits");
    // Another block starts its own count.
    assert!(!read_4k(&cache, &base, &data, 16384));
    assert_eq!(cache.stats().promotion_declined_ops, 3);
}

#[test]
fn a_cache_with_room_caches_every_miss_and_always_does_when_full() {
    for (p, full) in [(Promotion::Nhit { hits: 3 }, false), (Promotion::Always, true)] {
        let (cache, base, data) = setup(p, full);
        assert!(!read_4k(&cache, &base, &data, 4096));
        assert!(read_4k(&cache, &base, &data, 4096), "{p:?}, full {full}: the second read hits");
        assert_eq!(cache.stats().promotion_declined_ops, 0);
    }
}

#[test]
fn the_policy_changes_on_a_live_cache() {
    let (cache, base, data) = setup(Promotion::Always, true);
    assert_eq!(cache.promotion(), Promotion::Always);
    cache.set_promotion(Promotion::Nhit { hits: 2 });
    assert_eq!(cache.promotion(), Promotion::Nhit { hits: 2 });
    assert!(!read_4k(&cache, &base, &data, 0));
    assert!(!read_4k(&cache, &base, &data, 0));
    assert!(read_4k(&cache, &base, &data, 0), "cached on the second miss");
    cache.set_promotion(Promotion::Always);
    assert!(!read_4k(&cache, &base, &data, 32768));
    assert!(read_4k(&cache, &base, &data, 32768));
}
