//! A tiny cache (a few segments) under sustained concurrent writes: writes
//! wait for space (deferred, resumed by the space notifier — no polling loop in
//! the writers), GC and writeback keep up, nothing deadlocks, nothing is lost.

mod common;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use pcache::pmem::{Media, MemMedia};
use pcache::WriteOutcome;

const BASE_SECTORS: u64 = 8192; // 4 MiB
const WORKERS: usize = 2;

#[test]
fn sustained_writes_through_a_tiny_cache() {
    let secs: u64 = std::env::var("PCACHE_TINY_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(10)));
    let base = Arc::new(base((BASE_SECTORS * 512) as usize));
    let mut cfg = config(BASE_SECTORS * 512, WORKERS);
    cfg.gc_percent = Some(60);
    let cache = Arc::new(open(media.clone(), &cfg));
    // Writers sleep on this until segments are freed.
    let space = Arc::new((Mutex::new(0u64), Condvar::new()));
    {
        let space = space.clone();
        cache.set_space_notifier(Some(Box::new(move || {
            *space.0.lock().unwrap() += 1;
            space.1.notify_all();
        })));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (cache, base, stop) = (cache.clone(), base.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if !cache.background_step(&*base).unwrap().did_work() {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (cache, space) = (cache.clone(), space.clone());
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(w as u64 + 1);
                let mut last = vec![0u64; BASE_SECTORS as usize];
                let mut id = ((w as u64) + 1) << 40;
                let mut bytes = 0u64;
                while Instant::now() < deadline {
                    // Worker w owns the sectors of its half of the device.
                    let half = BASE_SECTORS / WORKERS as u64;
                    let n = 1 + rng.next_u64() % 64;
                    let first = w as u64 * half + rng.next_u64() % (half - n);
                    id += 1;
                    let data = write_data(id, first, n);
                    let mut done = 0usize;
                    loop {
                        let epoch = *space.0.lock().unwrap();
                        match cache.write_buf(w, first * 512 + done as u64, &data[done..]).unwrap() {
                            WriteOutcome::Done => break,
                            WriteOutcome::Deferred { written } => {
                                done += written as usize;
                                // Wait for the notifier (bounded so a lost wakeup shows as slowness, not a hang).
                                let g = space.0.lock().unwrap();
                                let (_g, t) =
                                    space.1.wait_timeout_while(g, Duration::from_secs(10), |e| *e == epoch).unwrap();
                                assert!(!t.timed_out(), "worker {w}: no space freed for 10 s (deadlock)");
                            }
                        }
                    }
                    for s in first..first + n {
                        last[s as usize] = id;
                    }
                    bytes += n * 512;
                    if rng.next_u64() % 20 == 0 {
                        cache.flush().unwrap();
                    }
                }
                (last, bytes)
            })
        })
        .collect();
    let mut model = vec![0u64; BASE_SECTORS as usize];
    let mut total = 0;
    for w in workers {
        let (last, bytes) = w.join().unwrap();
        total += bytes;
        for (s, id) in last.into_iter().enumerate() {
            if id != 0 {
                model[s] = id;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    let st = cache.stats();
    let cache_bytes = 10 * SEG;
    eprintln!("wrote {} MiB through a {} KiB cache: {st:?}", total >> 20, cache_bytes >> 10);
    assert!(total > 8 * cache_bytes, "the run must write many times the cache size");
    assert!(st.deferred_writes > 0, "the cache must have filled up");
    let got = read_through(&cache, &*base, 0, 0, (BASE_SECTORS * 512) as usize);
    for s in 0..BASE_SECTORS {
        assert_eq!(who_wrote(&got[s as usize * 512..(s as usize + 1) * 512], s), Some(model[s as usize]), "sector {s}");
    }
    cache.writeback_all(&*base).unwrap();
    let img = base.visible_image();
    for s in 0..BASE_SECTORS {
        assert_eq!(
            who_wrote(&img[s as usize * 512..(s as usize + 1) * 512], s),
            Some(model[s as usize]),
            "base sector {s}"
        );
    }
}

/// The index's DRAM follows what is cached, not the base's size: a 64 TiB
/// base costs well under 4 MiB per TiB before anything is written.
#[test]
fn a_huge_base_costs_the_index_little() {
    use std::sync::Arc;
    let base_size: u64 = 64 << 40;
    let media = Arc::new(pcache::pmem::MemMedia::new(common::media_len(16)));
    let cfg = common::config(base_size, 1);
    let cache = common::open(media as Arc<dyn pcache::pmem::Media>, &cfg);
    let empty = cache.index_dram_bytes();
    assert!(empty <= 64 * (4 << 20), "{empty} bytes for an empty index over 64 TiB");
    // Writes at both ends and the middle allocate only where they land.
    for off in [0, base_size / 2, base_size - 4096] {
        assert_eq!(cache.write_buf(0, off, &[7u8; 4096]).unwrap(), pcache::WriteOutcome::Done);
    }
    let used = cache.index_dram_bytes();
    assert!(used > empty, "writing allocated subtrees");
    assert!(used - empty < 3 * 64 * 1024, "three writes cost {} bytes", used - empty);
}
