//! Reads: the lookup a host makes before a batch of reads (see
//! src/read.rs) accepts any range, on a real pmem mapping too, changes
//! nothing a read then returns, and names exactly the cached bytes asked for.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use pcache::format::SUBTREE_SIZE;
use pcache::pmem::{Media, MemMedia, PmemFile};

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
        cache.lookup(off, n);
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

/// A lookup answers a read with nothing cached by itself: the misses a read
/// would return, counted once; any cached byte leaves the read to Cache::read.
#[test]
fn a_lookup_of_uncached_data_is_the_read() {
    let media: Arc<dyn Media> = Arc::new(pcache::pmem::MemMedia::new(media_len(16)));
    let cache = open(media, &config(BASE, 1));
    cache.write_buf(0, 64 * 1024, &[5u8; 4096]).unwrap();
    cache.write_zeroes(96 * 1024, 4096).unwrap();
    // A hole across a subtree boundary: two misses, one read.
    let at = SUBTREE_SIZE - 8192;
    let mut buf = vec![0u8; 16384];
    let want = cache.read(at, &mut [std::io::IoSliceMut::new(&mut buf)]).unwrap();
    assert_eq!(want.len(), 2);
    let st0 = cache.stats();
    let got = cache.lookup(at, 16384).expect("nothing cached: the lookup is the read");
    assert_eq!(got[..], want[..]);
    let st = cache.stats();
    assert_eq!((st.read_miss_ops - st0.read_miss_ops, st.read_miss_bytes - st0.read_miss_bytes), (1, 16384));
    assert_eq!(st.read_hit_ops, st0.read_hit_ops);
    // Data, or zeros, anywhere in the range: the read copies it.
    for (off, len) in [(60 * 1024, 8192), (64 * 1024 + 4095, 1), (92 * 1024, 8192), (BASE, 4096), (0, 0)] {
        assert!(cache.lookup(off, len).is_none(), "{off}+{len}");
    }
    assert_eq!(cache.stats().read_miss_ops, st.read_miss_ops, "a lookup that leaves the read counts nothing");
}

/// A media that records the prefetch hints it is given.
struct Hinted {
    mem: MemMedia,
    hints: Mutex<Vec<(u64, u64)>>,
}

impl Hinted {
    /// The bytes the hints name, in order.
    fn hinted_bytes(&self, hints: &[(u64, u64)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &(off, len) in hints {
            let mut b = vec![0u8; len as usize];
            self.mem.read(off, &mut b).unwrap();
            bytes.extend(b);
        }
        bytes
    }
}

impl Media for Hinted {
    fn len(&self) -> u64 {
        self.mem.len()
    }
    fn read(&self, off: u64, buf: &mut [u8]) -> pcache::Result<()> {
        self.mem.read(off, buf)
    }
    fn write(&self, off: u64, data: &[u8]) -> pcache::Result<()> {
        self.mem.write(off, data)
    }
    fn fence(&self) {
        self.mem.fence()
    }
    fn prefetch(&self, off: u64, len: u64) {
        self.hints.lock().unwrap().push((off, len));
    }
}

/// The prefetch hint names exactly the cached bytes of the range, in order:
/// not the zero extents, the holes or the data beside it (with data CRC on,
/// each extent it touches whole, as the read checks it).
#[test]
fn lookup_hints_the_cached_bytes_of_the_range_only() {
    const K: u64 = 1024;
    for crc in [false, true] {
        let media = Arc::new(Hinted { mem: MemMedia::new(media_len(40)), hints: Mutex::new(Vec::new()) });
        let base = base(BASE as usize);
        let mut cfg = config(BASE, 1);
        cfg.data_crc = crc;
        let cache = open(media.clone() as Arc<dyn Media>, &cfg);
        let x = write_data(1, 64 * K / 512, 32);
        write_all(&cache, &base, 0, 64 * K, &x); // [64K, 80K)
        cache.write_zeroes(96 * K, 4 * K).unwrap();
        let y = write_data(2, 128 * K / 512, 8);
        write_all(&cache, &base, 0, 128 * K, &y); // [128K, 132K)
        write_all(&cache, &base, 0, 140 * K, &write_data(3, 140 * K / 512, 8)); // beside the range
        media.hints.lock().unwrap().clear();
        cache.lookup(68 * K, 68 * K); // [68K, 136K)
        let hints = std::mem::take(&mut *media.hints.lock().unwrap());
        let hinted = media.hinted_bytes(&hints);
        let want: Vec<u8> = if crc { [&x[..], &y[..]].concat() } else { [&x[4 * K as usize..], &y[..]].concat() };
        assert_eq!(hints.len(), 2, "crc {crc}: one hint per cached extent: {hints:?}");
        assert!(hinted == want, "crc {crc}: the hints name other bytes: {hints:?}");
        // Data across a subtree boundary is two extents, hinted in order.
        let z = write_data(4, SUBTREE_SIZE / 512 - 8, 16);
        write_all(&cache, &base, 0, SUBTREE_SIZE - 4 * K, &z);
        media.hints.lock().unwrap().clear();
        cache.lookup(SUBTREE_SIZE - 4 * K, 8 * K);
        let hints = std::mem::take(&mut *media.hints.lock().unwrap());
        let hinted = media.hinted_bytes(&hints);
        assert!(hinted == z, "crc {crc}: across the subtree boundary: {hints:?}");
        // A range past the end hints nothing.
        cache.lookup(BASE, 4096);
        assert!(media.hints.lock().unwrap().is_empty());
    }
}
