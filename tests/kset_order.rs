//! Keys go into their worker's open kset, and ksets are journalled in the
//! order they fill or time out, not the order their keys were written. A key
//! that overwrites a key still open in another kset must therefore have that
//! kset journalled first, or replay would let the older key win.

mod common;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::sync::Arc;

use common::*;
use pcache::format::{KSET_MAX_KEYS, SUBTREE_SIZE};
use pcache::pmem::{Media, MemMedia};
use pcache::{MemBase, WriteOutcome};

const BASE: u64 = 4 * SUBTREE_SIZE;

fn write(cache: &pcache::Cache, worker: usize, id: u64, off: u64, len: u64) {
    let data = write_data(id, off / 512, len / 512);
    assert_eq!(cache.write_buf(worker, off, &data).unwrap(), WriteOutcome::Done);
}

fn who(cache: &pcache::Cache, base: &MemBase, off: u64, len: u64) -> Vec<Option<u64>> {
    let img = read_through(cache, base, 0, off, len as usize);
    (0..len / 512).map(|i| who_wrote(&img[i as usize * 512..(i as usize + 1) * 512], off / 512 + i)).collect()
}

/// Worker 1's kset fills and is journalled while worker 0's, holding an
/// older key over the same bytes, is still open; it is journalled later.
fn fill_worker_1_kset(cache: &pcache::Cache) {
    for i in 0..KSET_MAX_KEYS as u64 + 1 {
        write(cache, 1, 1000 + i, 3 * SUBTREE_SIZE + i * 4096, 4096);
    }
}

#[test]
fn an_overwrite_from_another_worker_replays_after_the_key_it_replaced() {
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(300)));
    let base = base(BASE as usize);
    let cfg = config(BASE, 2);
    let x = SUBTREE_SIZE + 8192;
    let cache = open(media.clone(), &cfg);
    write(&cache, 0, 1, x, 16384); // worker 0's kset
    write(&cache, 1, 2, x + 4096, 4096); // worker 1's kset, over the middle
    fill_worker_1_kset(&cache);
    cache.flush().unwrap(); // worker 0's kset reaches the log last
    let want: Vec<Option<u64>> = (0..32).map(|i| Some(if (8..16).contains(&i) { 2 } else { 1 })).collect();
    assert_eq!(who(&cache, &base, x, 16384), want, "before restart");
    drop(cache); // no close: replay from the log alone
    let cache = open(media, &cfg);
    assert_eq!(who(&cache, &base, x, 16384), want, "after replay");
}

#[test]
fn zeroes_over_another_workers_open_key_replay_after_it() {
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(300)));
    let base = base(BASE as usize);
    let cfg = config(BASE, 2);
    // Zero keys of subtree 1 go to kset 1 (worker 1's).
    let x = SUBTREE_SIZE + 8192;
    let cache = open(media.clone(), &cfg);
    write(&cache, 0, 1, x, 8192);
    assert_eq!(cache.write_zeroes(x, 8192).unwrap(), WriteOutcome::Done);
    fill_worker_1_kset(&cache);
    cache.flush().unwrap();
    drop(cache);
    let cache = open(media, &cfg);
    assert_eq!(who(&cache, &base, x, 8192), vec![Some(0); 16], "zeros after replay");
}

#[test]
fn workers_overwriting_each_other_in_turn_replay_to_the_last_write() {
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(1600)));
    let base = base(BASE as usize);
    let cfg = config(BASE, 3);
    let cache = open(media.clone(), &cfg);
    // Three workers take turns over overlapping ranges; each also writes
    // elsewhere so that the ksets fill, and so journal, at different times.
    let mut rng = SmallRng::seed_from_u64(9);
    let mut last = vec![0u64; (SUBTREE_SIZE / 512) as usize];
    for id in 1..=3000u64 {
        let w = (rng.next_u64() % 3) as usize;
        let first = rng.next_u64() % 64;
        let n = 1 + rng.next_u64() % 16;
        write(&cache, w, id, SUBTREE_SIZE + first * 512, n * 512);
        for s in first..first + n {
            last[s as usize] = id;
        }
        let spare = rng.next_u64() % 4;
        for j in 0..spare * w as u64 {
            write(&cache, w, 100_000 + id * 100 + j, 2 * SUBTREE_SIZE + (rng.next_u64() % 1000) * 4096, 4096);
        }
    }
    cache.flush().unwrap();
    drop(cache);
    let cache = open(media, &cfg);
    let got = who(&cache, &base, SUBTREE_SIZE, 80 * 512);
    let want: Vec<Option<u64>> = last[..80].iter().map(|&id| Some(id)).collect();
    assert_eq!(got, want);
}

#[test]
fn concurrent_workers_overwriting_a_shared_range_replay_to_the_last_write() {
    use std::sync::Mutex;
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(3000)));
    let base = Arc::new(base(BASE as usize));
    let cfg = config(BASE, 3);
    let cache = Arc::new(open(media.clone(), &cfg));
    // Writes to the shared range are made one at a time under this lock, so
    // their order is known; the other writes run concurrently and fill each
    // worker's kset at its own pace.
    let last = Arc::new(Mutex::new(vec![0u64; 64]));
    let threads: Vec<_> = (0..3u64)
        .map(|w| {
            let (cache, base, last) = (cache.clone(), base.clone(), last.clone());
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(w + 77);
                for op in 0..1500u64 {
                    let id = (w + 1) << 32 | op;
                    if rng.next_u64() % 3 == 0 {
                        let first = rng.next_u64() % 56;
                        let n = 1 + rng.next_u64() % 8;
                        let mut l = last.lock().unwrap();
                        write_all(
                            &cache,
                            &*base,
                            w as usize,
                            SUBTREE_SIZE + first * 512,
                            &write_data(id, SUBTREE_SIZE / 512 + first, n),
                        );
                        for s in first..first + n {
                            l[s as usize] = id;
                        }
                    } else {
                        let blk = 2 * SUBTREE_SIZE / 4096 + w * 300 + rng.next_u64() % 300;
                        write_all(&cache, &*base, w as usize, blk * 4096, &write_data(id, blk * 8, 8));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let want: Vec<Option<u64>> = last.lock().unwrap().iter().map(|&id| Some(id)).collect();
    assert_eq!(who(&cache, &base, SUBTREE_SIZE, 64 * 512), want, "before restart");
    cache.flush().unwrap();
    drop(cache);
    let cache = open(media, &cfg);
    assert_eq!(who(&cache, &base, SUBTREE_SIZE, 64 * 512), want, "after replay");
}
