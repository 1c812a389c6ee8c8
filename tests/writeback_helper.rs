//! Planning helpers (src/writeback.rs, Cache::writeback_helper): another
//! thread plans writeback's batches, the poller starts and writes them.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pcache::pmem::{Media, MemMedia};
use pcache::{Cache, MemBase, WbProgress};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

const BASE: u64 = 8 << 20;
const HOT: u64 = 1 << 20;

fn setup() -> (MemBase, Arc<Cache>) {
    let media = Arc::new(MemMedia::new(media_len(64)));
    let mut cfg = config(BASE, 1);
    cfg.gc_percent = Some(70);
    cfg.base_lag = Duration::from_secs(60);
    (base(BASE as usize), Arc::new(open(media as Arc<dyn Media>, &cfg)))
}

/// Writes every block of the first `blocks` once (ids from `id`) and
/// journals them.
fn write_blocks(cache: &Cache, base: &MemBase, id: u64, blocks: u64) {
    for b in 0..blocks {
        write_all(cache, base, 0, b * 4096, &write_data(id + b, b * 8, 8));
    }
    cache.flush().unwrap();
}

fn check_base(base: &MemBase, id: u64, blocks: u64) {
    let img = base.durable_image();
    for s in 0..blocks * 8 {
        let got = who_wrote(&img[s as usize * 512..(s as usize + 1) * 512], s);
        assert_eq!(got, Some(id + s / 8), "sector {s} on the base");
    }
}

/// Steps until writeback is idle; fails after 20 s (the base completes
/// writes on a thread of its own).
fn until_idle(cache: &Cache, mut step: impl FnMut() -> WbProgress) {
    let t = std::time::Instant::now();
    while step() != WbProgress::Idle {
        assert!(t.elapsed() < Duration::from_secs(20), "writeback never ended: {:?}", cache.stats());
        std::thread::yield_now();
    }
}

#[test]
fn the_poller_leaves_planning_to_a_helper() {
    let (base, cache) = setup();
    write_blocks(&cache, &base, 1, 256);
    let helper = cache.writeback_helper();
    // The poller starts a batch, and then waits for the helper to plan it.
    for _ in 0..100 {
        assert_eq!(cache.writeback_tick(&base).unwrap(), WbProgress::Busy);
    }
    assert_eq!(cache.stats().base_writes, 0, "nothing is written before the batch is planned");
    assert!(cache.dirty_percent() > 0);
    // Planned by the helper, written by the poller.
    until_idle(&cache, || {
        helper.tick().unwrap();
        cache.writeback_tick(&base).unwrap()
    });
    assert_eq!(cache.stats().dirty_bytes, 0);
    check_base(&base, 1, 256);
    // A helper with no batch to plan does nothing.
    assert!(!helper.tick().unwrap());
    // Without a helper, the poller plans again.
    drop(helper);
    write_blocks(&cache, &base, 1000, 256);
    until_idle(&cache, || cache.writeback_tick(&base).unwrap());
    check_base(&base, 1000, 256);
}

/// A helper thread ticking while the poller's thread writes a hot set, runs
/// background work and asks for writeback's pace (which reads the keep and
/// tails locks, as a step does): nothing deadlocks, and every write reads
/// back and reaches the base.
#[test]
fn a_helper_on_another_thread_neither_blocks_nor_loses_writes() {
    let (base, cache) = setup();
    let base = Arc::new(base);
    let stop = Arc::new(AtomicBool::new(false));
    let helper = {
        let (cache, stop) = (cache.clone(), stop.clone());
        std::thread::spawn(move || {
            let h = cache.writeback_helper();
            while !stop.load(Ordering::Relaxed) {
                h.tick().unwrap();
            }
        })
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let host = {
        let (cache, base) = (cache.clone(), base.clone());
        std::thread::spawn(move || {
            let mut last = vec![0u64; (HOT / 4096) as usize];
            let mut rng = SmallRng::seed_from_u64(11);
            let mut id = 0;
            for round in 0..40_000u64 {
                let b = rng.next_u64() % last.len() as u64;
                id += 1;
                write_or_bypass(&cache, &*base, 0, b * 4096, &write_data(id, b * 8, 8));
                last[b as usize] = id;
                let _ = cache.writeback_pace(true, false);
                if round % 4 == 0 {
                    cache.background_step(&*base).unwrap();
                }
            }
            tx.send(last).unwrap();
        })
    };
    let last = rx.recv_timeout(Duration::from_secs(60)).expect("the host thread hung (a lock-order deadlock?)");
    host.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    helper.join().unwrap();
    for (b, &id) in last.iter().enumerate() {
        let off = b as u64 * 4096;
        if id != 0 {
            assert!(read_through(&cache, &*base, 0, off, 4096) == write_data(id, off / 512, 8), "block {b}");
        }
    }
    cache.flush().unwrap();
    while cache.writeback_step(&*base).unwrap() != WbProgress::Idle {}
    let img = base.durable_image();
    for (b, &id) in last.iter().enumerate() {
        if id != 0 {
            let s = b as u64 * 8;
            assert_eq!(who_wrote(&img[s as usize * 512..(s as usize + 1) * 512], s), Some(id), "block {b} on the base");
        }
    }
}
