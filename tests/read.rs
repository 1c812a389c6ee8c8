//! Reads: the prefetch hint a host gives before a batch of reads (see
//! src/read.rs) accepts any range, on a real pmem mapping too, and changes
//! nothing a read then returns.

mod common;

use std::sync::Arc;

use common::*;
use pcache::format::SUBTREE_SIZE;
use pcache::pmem::{Media, PmemFile};

const BASE: u64 = 2 * SUBTREE_SIZE;

#[test]
fn prefetch_of_any_range_changes_nothing_and_never_panics() {
    let file = Scratch(std::env::temp_dir().join(format!("pcache-read-{}.pmem", std::process::id())));
    let file = &file.0;
    let media: Arc<dyn Media> = Arc::new(PmemFile::create(file, media_len(40) as u64).unwrap());
    let base = base(BASE as usize);
    let cache = open(media, &config(BASE, 1));
    // Cached data over a subtree boundary, a zeroed range in it, holes around.
    let (a, len) = (SUBTREE_SIZE - 16 * 1024, 64 * 1024);
    write_all(&cache, &base, 0, a, &write_data(3, a / 512, len / 512));
    cache.write_zeroes(a + 8192, 4096).unwrap();
    let before = read_through(&cache, &base, 0, 0, BASE as usize);

    for (off, n) in [
        (a, len),              // hits across two subtrees
        (a + 8192, 4096),      // a zero extent
        (0, 4096),             // a hole
        (0, BASE),             // the whole device
        (BASE - 512, 512),     // the last sector
        (BASE, 4096),          // past the end
        (BASE - 512, 4096),    // across the end
        (a, 0),                // nothing
        (u64::MAX - 511, 512), // an offset that overflows
        (a + 1, 100),          // unaligned
    ] {
        cache.prefetch(off, n);
    }
    // The mapping itself, past its end as well.
    for (off, n) in [(0, 0), (0, u64::MAX), (u64::MAX, 1), (media_len(40) as u64 - 1, 4096)] {
        PmemFile::open(file).unwrap().prefetch(off, n);
    }
    assert_eq!(read_through(&cache, &base, 0, 0, BASE as usize), before);
}

/// A file removed on drop.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A read's hit and miss counters: what pcache_get_stats reports as the hit
/// ratio.
#[test]
fn a_read_counts_its_hit_and_missed_bytes() {
    let media: Arc<dyn Media> = Arc::new(pcache::pmem::MemMedia::new(media_len(16)));
    let cache = open(media, &config(BASE, 1));
    cache.write_buf(0, 8192, &[5u8; 8192]).unwrap();
    let mut buf = vec![0u8; 16384];
    let misses = cache.read(4096, &mut [std::io::IoSliceMut::new(&mut buf)]).unwrap();
    assert_eq!(misses.iter().map(|m| m.len).sum::<u64>(), 8192);
    let st = cache.stats();
    assert_eq!((st.read_hit_bytes, st.read_miss_bytes), (8192, 8192));
    assert_eq!((st.read_hit_ops, st.read_miss_ops), (0, 1));
    cache.read(8192, &mut [std::io::IoSliceMut::new(&mut buf[..8192])]).unwrap();
    let st = cache.stats();
    assert_eq!((st.read_hit_bytes, st.read_miss_bytes), (16384, 8192));
    assert_eq!((st.read_hit_ops, st.read_miss_ops), (1, 1));
}
