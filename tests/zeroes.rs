//! WRITE_ZEROES / UNMAP: zero keys make a range read as zeros at once, survive
//! replay, reach the base device through writeback (in log order with the
//! writes around them), and are never mistaken for data by GC.

mod common;

use std::sync::Arc;

use common::*;
use pcache::format::SUBTREE_SIZE;
use pcache::pmem::{Media, MemMedia};
use pcache::WriteOutcome;

const BASE: u64 = 3 * SUBTREE_SIZE;

/// Who wrote each sector of `[off, off+len)`; `img` starts at base offset `img_at`.
fn sectors(img: &[u8], img_at: u64, off: u64, len: u64) -> Vec<Option<u64>> {
    (off / 512..(off + len) / 512)
        .map(|s| {
            let i = (s * 512 - img_at) as usize;
            who_wrote(&img[i..i + 512], s)
        })
        .collect()
}

#[test]
fn zeroed_ranges_read_as_zeros_through_replay_writeback_and_gc() {
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(400)));
    let base = base(BASE as usize);
    let cfg = config(BASE, 1);
    // Data over two subtrees, then zero a range that crosses the boundary
    // and cuts both extents.
    let (a, b) = (SUBTREE_SIZE - 64 * 1024, 128 * 1024);
    let cache = open(media.clone(), &cfg);
    write_all(&cache, &base, 0, a, &write_data(7, a / 512, b / 512));
    cache.flush().unwrap();
    let (z, zl) = (a + 4096, b - 8192);
    assert_eq!(cache.write_zeroes(z, zl).unwrap(), WriteOutcome::Done);
    let expect = |img: &[u8], img_at: u64| {
        let got = sectors(img, img_at, a, b);
        for (i, have) in got.iter().enumerate() {
            let off = a + i as u64 * 512;
            let want = if off >= z && off < z + zl { 0 } else { 7 };
            assert_eq!(*have, Some(want), "sector at {off}");
        }
    };
    expect(&read_through(&cache, &base, 0, a, b as usize), a);
    cache.flush().unwrap();
    drop(cache);

    // Replay keeps the zeros (the base still holds nothing).
    let cache = open(media.clone(), &cfg);
    expect(&read_through(&cache, &base, 0, a, b as usize), a);
    assert!(cache.stats().dirty_bytes >= zl, "zero keys count as dirty until written back");

    // Writeback writes the data, then the zeros over it, to the base.
    cache.writeback_all(&base).unwrap();
    assert!(cache.is_clean());
    expect(&base.durable_image(), 0);

    // GC drops every kset; zero keys hold no segment, and reads stay right.
    cache.set_gc_percent(0).unwrap();
    while cache.background_step(&base).unwrap().did_work() {}
    assert!(cache.stats().gc_ksets > 0, "GC ran");
    expect(&read_through(&cache, &base, 0, a, b as usize), a);
    drop(cache);
    let cache = open(media, &cfg);
    expect(&read_through(&cache, &base, 0, a, b as usize), a);
}

#[test]
fn writes_after_zeroes_win_and_replay_in_order() {
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(64)));
    let base = base(BASE as usize);
    let cfg = config(BASE, 1);
    let cache = open(media.clone(), &cfg);
    write_all(&cache, &base, 0, 0, &write_data(1, 0, 16));
    zero_all(&cache, &base, 0, 8192);
    write_all(&cache, &base, 0, 2048, &write_data(2, 4, 2));
    cache.flush().unwrap();
    let want = |img: &[u8]| {
        let got = sectors(img, 0, 0, 8192);
        let expect: Vec<Option<u64>> = (0..16).map(|s| Some(if s == 4 || s == 5 { 2 } else { 0 })).collect();
        assert_eq!(got, expect);
    };
    want(&read_through(&cache, &base, 0, 0, 8192));
    drop(cache);
    let cache = open(media, &cfg);
    want(&read_through(&cache, &base, 0, 0, 8192));
    cache.writeback_all(&base).unwrap();
    want(&base.durable_image());
}

#[test]
fn zeroes_are_checked_like_writes() {
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(16)));
    let cache = open(media, &config(BASE, 1));
    assert!(cache.write_zeroes(100, 512).is_err(), "unaligned offset");
    assert!(cache.write_zeroes(0, 100).is_err(), "unaligned length");
    assert!(cache.write_zeroes(BASE - 512, 1024).is_err(), "beyond the base");
    assert_eq!(cache.write_zeroes(0, 0).unwrap(), WriteOutcome::Done);
}

#[test]
fn repeated_zeroes_of_a_range_journal_one_key() {
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(16)));
    let base = base(BASE as usize);
    let cache = open(media.clone(), &config(BASE, 1));
    for _ in 0..1000 {
        zero_all(&cache, &base, 0, 1 << 20);
        zero_all(&cache, &base, 4096, 8192); // inside the first: covered too
    }
    assert_eq!(cache.stats().dirty_bytes, 1 << 20, "one dirty zero key, not 2000");
    // A write in between makes the next zero key count again.
    write_all(&cache, &base, 0, 4096, &write_data(3, 8, 1));
    zero_all(&cache, &base, 0, 1 << 20);
    assert_eq!(cache.stats().dirty_bytes, (2 << 20) + 512);
    cache.flush().unwrap();
    drop(cache);
    let cache = open(media, &config(BASE, 1));
    assert_eq!(cache.stats().dirty_bytes, (2 << 20) + 512, "replay sees the same keys");
    assert!(read_through(&cache, &base, 0, 0, 1 << 20).iter().all(|&b| b == 0));
}

/// Zeroes anywhere on a large base (many more subtrees than open ksets) go
/// in, read as zeros, and replay.
#[test]
fn zeroes_anywhere_on_a_large_base_go_in_and_replay() {
    const LARGE: u64 = 4 << 30;
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(64)));
    let cfg = config(LARGE, 1);
    let offsets = [0, SUBTREE_SIZE, 1 << 30, 3 << 30, LARGE - 8192];
    let reads_zeros = |cache: &pcache::Cache| {
        for &off in &offsets {
            let mut buf = vec![0xa5u8; 8192];
            let misses = cache.read(off, &mut [std::io::IoSliceMut::new(&mut buf)]).unwrap();
            assert!(misses.is_empty(), "zeroes at {off} are in the cache");
            assert!(buf.iter().all(|&b| b == 0), "zeroes at {off} read as zeros");
        }
    };
    let cache = open(media.clone(), &cfg);
    for &off in &offsets {
        assert_eq!(cache.write_zeroes(off, 8192).unwrap(), WriteOutcome::Done, "zeroes at {off}");
    }
    reads_zeros(&cache);
    cache.flush().unwrap();
    drop(cache);
    reads_zeros(&open(media, &cfg));
}

/// Zeroes are not journalled again only when the newest open key over their
/// range is a zero key covering it; keys beside the range (touching it or
/// not) do not change that, a newer data key over it does.
#[test]
fn zeroes_skip_only_what_the_newest_open_key_over_them_zeroes() {
    const K: u64 = 4096;
    // (what, zeroes at (offset, length), a write between, the dirty bytes
    // journalled once [2K, 3K) is zeroed again)
    type Case = (&'static str, (u64, u64), Option<(u64, u64)>, u64);
    let cases: [Case; 5] = [
        ("the same zeroes again", (2 * K, K), None, K),
        ("a write just after", (2 * K, K), Some((3 * K, K)), 2 * K),
        ("a write just before", (2 * K, K), Some((K, K)), 2 * K),
        ("a write elsewhere", (2 * K, K), Some((25 * K, K)), 2 * K),
        ("a write over part of the zeroes", (2 * K, 2 * K), Some((2 * K, K)), 4 * K),
    ];
    for (what, (zo, zl), write, dirty) in cases {
        let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(16)));
        let base = base(BASE as usize);
        let cache = open(media, &config(BASE, 1));
        zero_all(&cache, &base, zo, zl);
        if let Some((wo, wl)) = write {
            write_all(&cache, &base, 0, wo, &write_data(9, wo / 512, wl / 512));
        }
        zero_all(&cache, &base, 2 * K, K);
        assert_eq!(cache.stats().dirty_bytes, dirty, "{what}");
        assert!(read_through(&cache, &base, 0, 2 * K, K as usize).iter().all(|&b| b == 0), "{what}");
    }
}
