//! Model-based randomized test: concurrent workers issue random writes (alone
//! and in batches), reads and flushes against a reference map while a poller runs writeback and GC;
//! the cache is restarted (orderly) between rounds. Every read must match.

mod common;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use common::*;
use pcache::pmem::{Media, MemMedia};
use pcache::BaseDevice;

const WORKERS: usize = 3;
const BASE_SECTORS: u64 = 2048; // 1 MiB of base device
const ROUNDS: usize = 4;
const OPS: usize = 1500;

/// (sector, write id, clock when started, clock when acknowledged).
type WriteRecord = (u64, u64, u64, u64);

/// A thread running background work (kset timer, writeback, GC) as a host's poller does.
struct Poller {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Poller {
    fn start(cache: Arc<pcache::Cache>, base: Arc<pcache::MemBase>) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                cache.background_step(&*base).unwrap();
                std::thread::yield_now();
            }
        });
        Poller { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

fn run(seed: u64, data_crc: bool) {
    let base = Arc::new(base((BASE_SECTORS * 512) as usize));
    let image = MemMedia::new(media_len(16));
    let mut cfg = config(BASE_SECTORS * 512, WORKERS);
    cfg.data_crc = data_crc;
    cfg.gc_percent = Some(50);
    let mut image = image.snapshot();
    // Reference: sector -> id of the write that last wrote it.
    let model: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    for round in 0..ROUNDS {
        let media: Arc<dyn Media> = Arc::new(MemMedia::from_image(image));
        let cache = Arc::new(open(media.clone(), &cfg));
        let poller = Poller::start(cache.clone(), base.clone());
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (cache, base, model) = (cache.clone(), base.clone(), model.clone());
                std::thread::spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(seed ^ ((round as u64) << 32) ^ (w as u64) << 48);
                    for op in 0..OPS {
                        // Worker w owns sectors with (sector / 8) % WORKERS == w: interleaved
                        // 4 KiB stripes, so workers share subtrees, ksets and segments.
                        let stripe = (rng.next_u64() % (BASE_SECTORS / 8 / WORKERS as u64)) * WORKERS as u64 + w as u64;
                        let first = stripe * 8 + rng.next_u64() % 8;
                        let n = 1 + rng.next_u64() % (8 - first % 8);
                        match rng.next_u64() % 12 {
                            10..=11 => {
                                // A batch of writes over this worker's stripes, some
                                // overlapping each other: the later one must win.
                                let k = 1 + rng.next_u64() % 6;
                                let mut writes = Vec::new();
                                let mut ids = Vec::new();
                                for j in 0..k {
                                    let stripe = (rng.next_u64() % (BASE_SECTORS / 8 / WORKERS as u64))
                                        * WORKERS as u64
                                        + w as u64;
                                    let (f, n) = if j > 0 && rng.next_u64() % 3 == 0 {
                                        (first, n)
                                    } else {
                                        (stripe * 8 + rng.next_u64() % 4, 1 + rng.next_u64() % 4)
                                    };
                                    let id = (seed << 40)
                                        | ((round as u64) << 32)
                                        | ((w as u64) << 24)
                                        | (op as u64) << 3
                                        | j
                                        | 1 << 61;
                                    writes.push((f * 512, write_data(id, f, n)));
                                    ids.push((id, f, n));
                                }
                                for r in write_batch_all(&cache, &*base, w, &writes) {
                                    r.unwrap();
                                }
                                let mut m = model.lock().unwrap();
                                for (id, f, n) in ids {
                                    for s in f..f + n {
                                        m.insert(s, id);
                                    }
                                }
                            }
                            0..=4 => {
                                let id =
                                    (seed << 40) | ((round as u64) << 32) | ((w as u64) << 24) | op as u64 | 1 << 62;
                                write_all(&cache, &*base, w, first * 512, &write_data(id, first, n));
                                let mut m = model.lock().unwrap();
                                for s in first..first + n {
                                    m.insert(s, id);
                                }
                            }
                            5 => {
                                // WRITE_ZEROES / UNMAP: the range reads as zeros (id 0).
                                zero_all(&cache, &*base, first * 512, n * 512);
                                let mut m = model.lock().unwrap();
                                for s in first..first + n {
                                    m.insert(s, 0);
                                }
                            }
                            6..=8 => {
                                let got = read_through(&cache, &*base, w, first * 512, n as usize * 512);
                                let m = model.lock().unwrap();
                                for (i, s) in (first..first + n).enumerate() {
                                    let want = m.get(&s).copied().unwrap_or(0);
                                    let have = who_wrote(&got[i * 512..(i + 1) * 512], s);
                                    assert_eq!(have, Some(want), "seed {seed} round {round}: sector {s}");
                                }
                            }
                            _ => cache.flush().unwrap(),
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        poller.stop();
        let stats = cache.stats();
        // Restart: orderly close, reopen from the same pmem image.
        let cache = Arc::try_unwrap(cache).ok().expect("no other owners");
        cache.close().unwrap();
        image = (0..media.len())
            .step_by(1 << 16)
            .flat_map(|off| {
                let mut b = vec![0u8; (1usize << 16).min((media.len() - off) as usize)];
                media.read(off, &mut b).unwrap();
                b
            })
            .collect();
        assert!(stats.write_ops > 0, "round {round} wrote nothing");
        if round == ROUNDS - 1 {
            assert!(stats.gc_ksets > 0, "GC never ran: {stats:?}");
            assert!(stats.writeback_ksets > 0, "writeback never ran: {stats:?}");
        }
    }
    // Final check of every sector through a fresh open.
    let media: Arc<dyn Media> = Arc::new(MemMedia::from_image(image));
    let cache = open(media, &cfg);
    let got = read_through(&cache, &*base, 0, 0, (BASE_SECTORS * 512) as usize);
    let m = model.lock().unwrap();
    for s in 0..BASE_SECTORS {
        let want = m.get(&s).copied().unwrap_or(0);
        assert_eq!(who_wrote(&got[s as usize * 512..(s as usize + 1) * 512], s), Some(want), "final sector {s}");
    }
    // Write everything back: the base alone must then hold the model.
    cache.writeback_all(&*base).unwrap();
    let img = base.visible_image();
    for s in 0..BASE_SECTORS {
        let want = m.get(&s).copied().unwrap_or(0);
        assert_eq!(who_wrote(&img[s as usize * 512..(s as usize + 1) * 512], s), Some(want), "base sector {s}");
    }
}

#[test]
fn concurrent_workers_match_the_model() {
    for seed in 1..=3 {
        run(seed, false);
    }
}

#[test]
fn concurrent_workers_match_the_model_with_data_crc() {
    run(7, true);
}

/// Several workers overwrite the same few sectors while writeback (in
/// batches that skip overwritten data) and GC run. Whatever a sector holds
/// at the end must come from a write that no later-started write to that
/// sector could have followed: one acknowledged before it started overrides
/// it. The base, once everything is written back, and a restart must agree
/// with what the cache served.
#[test]
fn workers_overwriting_the_same_sectors_keep_the_newest_data() {
    use std::sync::atomic::AtomicU64;
    const HOT: u64 = 256;
    for seed in 1..=3u64 {
        let base = Arc::new(base((BASE_SECTORS * 512) as usize));
        let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(16)));
        let mut cfg = config(BASE_SECTORS * 512, WORKERS);
        cfg.gc_percent = Some(40);
        cfg.writeback_batch_bytes = 64 << 10;
        // Any write of 64 KiB or more may bypass the cache (bypass.rs).
        cfg.seq_cutoff = 1;
        let cache = Arc::new(open(media.clone(), &cfg));
        let clock = Arc::new(AtomicU64::new(1));
        // (sector, id, started, acknowledged) of every write.
        let history: Arc<Mutex<Vec<WriteRecord>>> = Arc::default();
        let poller = Poller::start(cache.clone(), base.clone());
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (cache, base, clock, history) = (cache.clone(), base.clone(), clock.clone(), history.clone());
                std::thread::spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(seed << 8 | w as u64);
                    for op in 0..2500u64 {
                        // Mostly small writes to the hot sectors; one in 16 is
                        // 64 KiB anywhere on the base, which may go straight
                        // to the base past the cache.
                        let large = rng.next_u64() % 16 == 0;
                        let (first, n) = if large {
                            (rng.next_u64() % (BASE_SECTORS - 128), 128)
                        } else {
                            let first = rng.next_u64() % HOT;
                            (first, 1 + rng.next_u64() % 8.min(HOT - first))
                        };
                        let id = seed << 40 | (w as u64) << 32 | (op + 1);
                        let data = write_data(id, first, n);
                        let started = clock.fetch_add(1, Ordering::SeqCst);
                        match cache.begin_bypass(w, first * 512, n * 512) {
                            Some(b) => {
                                let (tx, rx) = std::sync::mpsc::channel();
                                base.write(first * 512, data, Box::new(move |r| tx.send(r).unwrap()));
                                rx.recv().unwrap().unwrap();
                                cache.end_bypass(b, true);
                            }
                            None => write_all(&cache, &*base, w, first * 512, &data),
                        }
                        let acked = clock.fetch_add(1, Ordering::SeqCst);
                        let mut h = history.lock().unwrap();
                        h.extend((first..first + n).map(|s| (s, id, started, acked)));
                        drop(h);
                        if rng.next_u64() % 64 == 0 {
                            cache.flush().unwrap();
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        poller.stop();
        let h = history.lock().unwrap();
        let allowed = |s: u64, id: Option<u64>| {
            let writes: Vec<_> = h.iter().filter(|x| x.0 == s).collect();
            match id {
                Some(0) => writes.is_empty(),
                Some(id) => writes.iter().find(|x| x.1 == id).is_some_and(|x| !writes.iter().any(|y| y.2 > x.3)),
                None => false,
            }
        };
        let got = read_through(&cache, &*base, 0, 0, (BASE_SECTORS * 512) as usize);
        for s in 0..BASE_SECTORS {
            let who = who_wrote(&got[s as usize * 512..(s as usize + 1) * 512], s);
            assert!(allowed(s, who), "seed {seed}: sector {s} holds {who:?}, which a later write overrides");
        }
        let st = cache.stats();
        assert!(st.writeback_skipped_bytes > 0 && st.gc_ksets > 0, "seed {seed}: skipping and GC must run: {st:?}");
        assert!(st.bypass_writes > 0, "seed {seed}: some large writes must bypass: {st:?}");
        cache.writeback_all(&*base).unwrap();
        let img = base.visible_image();
        assert_eq!(&img[..], &got[..], "seed {seed}: the base after writeback");
        let cache = Arc::try_unwrap(cache).ok().expect("no other owners");
        drop(cache); // no close: the restart replays the log alone
        let again = open(media, &cfg);
        assert_eq!(
            read_through(&again, &*base, 0, 0, (BASE_SECTORS * 512) as usize),
            got,
            "seed {seed}: after a restart"
        );
    }
}

// --- one worker, a generated sequence of operations, shrunk on failure -----------

/// A step of the sequential model test. Ranges are in sectors of the base.
#[derive(Debug, Clone)]
enum Op {
    Write {
        first: u64,
        n: u64,
    },
    /// Writes handed to the engine at once; later ones win where they overlap.
    Batch(Vec<(u64, u64)>),
    Zero {
        first: u64,
        n: u64,
    },
    Read {
        first: u64,
        n: u64,
    },
    Flush,
    /// Steps of background work: kset timer, writeback, GC.
    Background(u8),
    /// Writeback of everything, then the base alone must hold the model.
    WritebackAll,
    /// Orderly close and reopen, or (after a FLUSH) a drop and a replay.
    Restart {
        orderly: bool,
    },
}

/// A range inside the first `SEQ_SECTORS` sectors, up to 64 KiB long.
fn range() -> impl proptest::strategy::Strategy<Value = (u64, u64)> {
    use proptest::prelude::*;
    (0..SEQ_SECTORS).prop_flat_map(|first| (Just(first), 1..=128u64.min(SEQ_SECTORS - first)))
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        8 => range().prop_map(|(first, n)| Op::Write { first, n }),
        2 => proptest::collection::vec(range(), 1..6).prop_map(Op::Batch),
        1 => range().prop_map(|(first, n)| Op::Zero { first, n }),
        4 => range().prop_map(|(first, n)| Op::Read { first, n }),
        1 => Just(Op::Flush),
        3 => (1..64u8).prop_map(Op::Background),
        1 => Just(Op::WritebackAll),
        1 => any::<bool>().prop_map(|orderly| Op::Restart { orderly }),
    ]
}

const SEQ_SECTORS: u64 = 2048;

/// Applies `ops` to a small cache (16 segments, so GC and writeback run) and
/// checks every read, the base after each full writeback, and every sector at
/// the end, against a map of which write last touched each sector.
fn run_ops(ops: &[Op]) -> Result<(), String> {
    let base = base((SEQ_SECTORS * 512) as usize);
    let mut cfg = config(SEQ_SECTORS * 512, 1);
    cfg.gc_percent = Some(50);
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(16)));
    let mut cache = open(media.clone(), &cfg);
    let mut model = vec![0u64; SEQ_SECTORS as usize];
    let touching = |s: u64| -> String {
        let mut v = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let hit = |f: u64, n: u64| f <= s && s < f + n;
            let t = match op {
                Op::Write { first, n } | Op::Zero { first, n } | Op::Read { first, n } => hit(*first, *n),
                Op::Batch(r) => r.iter().any(|&(f, n)| hit(f, n)),
                _ => true,
            };
            if t {
                v.push(format!("{} {:?}", i, op));
            }
        }
        v.join("\n")
    };
    let check = |cache: &pcache::Cache, model: &[u64], first: u64, n: u64, what: &str| -> Result<(), String> {
        let got = read_through(cache, &base, 0, first * 512, n as usize * 512);
        for (i, s) in (first..first + n).enumerate() {
            let have = who_wrote(&got[i * 512..(i + 1) * 512], s);
            if have != Some(model[s as usize]) {
                let b = base.visible_image();
                let on_base = who_wrote(&b[s as usize * 512..(s as usize + 1) * 512], s);
                return Err(format!(
                    "{what}: sector {s} holds {have:?}, wrote {} (the base holds {on_base:?}); the operations on it:\n{}",
                    model[s as usize],
                    touching(s)
                ));
            }
        }
        Ok(())
    };
    for (i, op) in ops.iter().enumerate() {
        let id = i as u64 + 1;
        match op {
            Op::Write { first, n } => {
                write_all(&cache, &base, 0, first * 512, &write_data(id, *first, *n));
                model[*first as usize..(first + n) as usize].fill(id);
            }
            Op::Batch(ranges) => {
                let ids: Vec<u64> = (0..ranges.len() as u64).map(|j| id << 8 | j).collect();
                let writes: Vec<_> =
                    ranges.iter().zip(&ids).map(|(&(f, n), &wid)| (f * 512, write_data(wid, f, n))).collect();
                for r in write_batch_all(&cache, &base, 0, &writes) {
                    r.map_err(|e| format!("op {i}: batch write failed: {e}"))?;
                }
                for (&(f, n), &wid) in ranges.iter().zip(&ids) {
                    model[f as usize..(f + n) as usize].fill(wid);
                }
            }
            Op::Zero { first, n } => {
                zero_all(&cache, &base, first * 512, n * 512);
                model[*first as usize..(first + n) as usize].fill(0);
            }
            Op::Read { first, n } => check(&cache, &model, *first, *n, &format!("op {i}: read"))?,
            Op::Flush => cache.flush().map_err(|e| format!("op {i}: flush: {e}"))?,
            Op::Background(steps) => {
                for _ in 0..*steps {
                    cache.background_step(&base).map_err(|e| format!("op {i}: background: {e}"))?;
                }
            }
            Op::WritebackAll => {
                cache.writeback_all(&base).map_err(|e| format!("op {i}: writeback: {e}"))?;
                let img = base.visible_image();
                for s in 0..SEQ_SECTORS {
                    let have = who_wrote(&img[s as usize * 512..(s as usize + 1) * 512], s);
                    if have != Some(model[s as usize]) {
                        return Err(format!(
                            "op {i}: base sector {s} holds {have:?} after writeback, wrote {}\n{}",
                            model[s as usize],
                            touching(s)
                        ));
                    }
                }
            }
            Op::Restart { orderly } => {
                if *orderly {
                    cache.close().map_err(|e| format!("op {i}: close: {e}"))?;
                } else {
                    // Everything acknowledged before a FLUSH survives a replay.
                    cache.flush().map_err(|e| format!("op {i}: flush: {e}"))?;
                    drop(cache);
                }
                // Writeback may still have writes in flight on the base. A
                // restarted cache writes to a device that has finished (or
                // dropped) what it was given before, never to one that lands
                // an old write over a new one later.
                let t = std::time::Instant::now();
                while base.in_flight() > 0 {
                    if t.elapsed() > std::time::Duration::from_secs(30) {
                        return Err(format!("op {i}: the base never finished its I/O"));
                    }
                    std::thread::yield_now();
                }
                cache = open(media.clone(), &cfg);
            }
        }
    }
    check(&cache, &model, 0, SEQ_SECTORS, "at the end")
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 64,
        // A failure prints the shrunk sequence; nothing is written to the tree.
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    #[test]
    fn operation_sequences_match_the_model(ops in proptest::collection::vec(op(), 1..400)) {
        if let Err(e) = run_ops(&ops) {
            return Err(proptest::test_runner::TestCaseError::fail(e));
        }
    }
}
