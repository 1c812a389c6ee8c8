//! Power failures under several workers and a background thread.
//!
//! Three workers write (alone and in batches, over each other's sectors),
//! zero ranges, read (read misses are cached: fills) and FLUSH, while a
//! background thread runs the kset timer, writeback and GC, on a pmem
//! stand-in whose fences are per thread (one thread's stores are not made
//! durable by another's fence). Odd seeds keep data CRCs. At random media
//! operations the image a power cut would leave is captured, with the base
//! device's image at that instant and the history of every operation so far
//! (a global clock stamps when each was issued and acknowledged).
//!
//! The oracle, per sector, with F the last FLUSH completed at the crash:
//! - the cache after replay serves, for every sector, a write issued before
//!   the crash that no write acknowledged before F started had overwritten
//!   after it completed (zeros: a zero write so allowed, or none acknowledged
//!   before F); reads during the run obey the same rule against the read's start;
//! - the base alone, as the crash left it, is a state of some completed FLUSH
//!   k plus writes issued before FLUSH k+1 completed (every sector alike);
//! - a second power failure during recovery (replay, then writeback) leaves
//!   a cache and a base that obey the same rules.
//!
//! Failures print the seed; PCACHE_CRASH_SEED=<n> reruns one (the threads'
//! interleaving differs from run to run, so a rerun explores the same seed,
//! not necessarily the same crash).

mod common;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use pcache::pmem::{CrashSim, Media, MemMedia};
use pcache::Cache;

const WORKERS: usize = 3;
const SECTORS: u64 = 1024; // 512 KiB of base
const SEGS: u64 = 12;
const OPS_PER_WORKER: usize = 60;
const POINTS_PER_SEED: usize = 25;
const SEEDS: u64 = 60;

/// One write (or zeroing) as the history records it.
#[derive(Clone, Debug)]
struct Write {
    id: u64,
    zero: bool,
    issued: u64,
    acked: Option<u64>,
}

/// Everything issued so far, stamped by one clock.
#[derive(Clone, Default)]
struct History {
    writes: Vec<Write>,
    /// Per sector, the writes that cover it.
    by_sector: HashMap<u64, Vec<usize>>,
    /// FLUSHes: (started, completed).
    flushes: Vec<(u64, Option<u64>)>,
}

impl History {
    /// Whether sector `s` may hold `who` (a write id; `Some(0)` is zeros)
    /// given that every write acknowledged before `floor` is there (unless a
    /// later one overwrote it) and only writes issued before `until` exist.
    fn allowed(&self, s: u64, who: Option<u64>, floor: u64, until: u64) -> bool {
        let Some(who) = who else { return false };
        let ws: Vec<&Write> =
            self.by_sector.get(&s).map_or(Vec::new(), |v| v.iter().map(|&i| &self.writes[i]).collect());
        // `w` is out if a write acknowledged before the floor started after `w` completed.
        let overwritten = |w: &Write| {
            w.acked.is_some_and(|a| ws.iter().any(|o| o.acked.is_some_and(|oa| oa < floor) && o.issued > a))
        };
        let live = |w: &&&Write| w.issued < until && !overwritten(w);
        if who == 0 {
            let initial = !ws.iter().any(|w| w.acked.is_some_and(|a| a < floor));
            initial || ws.iter().filter(|w| w.zero).any(|w| live(&w))
        } else {
            ws.iter().filter(|w| !w.zero && w.id == who).any(|w| live(&w))
        }
    }

    /// The start of the last FLUSH completed before `t` (0: none).
    fn floor_at(&self, t: u64) -> u64 {
        self.flushes.iter().filter(|f| f.1.is_some_and(|e| e < t)).map(|f| f.0).max().unwrap_or(0)
    }

    /// Whether the base image `img` is a state of some completed FLUSH plus
    /// writes issued before the next one completed (see the module doc).
    fn base_ok(&self, img: &[u8], t: u64) -> Result<(), String> {
        let mut done: Vec<(u64, u64)> =
            self.flushes.iter().filter_map(|&(s, e)| e.filter(|&e| e < t).map(|e| (s, e))).collect();
        done.sort_unstable();
        let who: Vec<Option<u64>> =
            (0..SECTORS).map(|s| who_wrote(&img[s as usize * 512..(s as usize + 1) * 512], s)).collect();
        for k in (0..=done.len()).rev() {
            let floor = if k == 0 { 0 } else { done[k - 1].0 };
            let until = done.get(k).map_or(t, |f| f.1);
            if (0..SECTORS).all(|s| self.allowed(s, who[s as usize], floor, until)) {
                return Ok(());
            }
        }
        let bad = (0..SECTORS).find(|&s| !self.allowed(s, who[s as usize], 0, t));
        Err(format!("no FLUSH state fits the base (first sector no state allows: {bad:?})"))
    }
}

struct Shared {
    clock: AtomicU64,
    history: Mutex<History>,
}

impl Shared {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
    fn issue(&self, id: u64, first: u64, n: u64, zero: bool) -> usize {
        let mut h = self.history.lock().unwrap();
        let issued = self.tick();
        h.writes.push(Write { id, zero, issued, acked: None });
        let i = h.writes.len() - 1;
        for s in first..first + n {
            h.by_sector.entry(s).or_default().push(i);
        }
        i
    }
    fn ack(&self, i: usize) {
        let mut h = self.history.lock().unwrap();
        h.writes[i].acked = Some(self.tick());
    }
}

/// What a crash left, and the history up to it.
struct Capture {
    op: u64,
    at: u64,
    pmem: Vec<u8>,
    base: Vec<u8>,
    history: History,
}

static POINTS: AtomicU64 = AtomicU64::new(0);
static SECOND: AtomicU64 = AtomicU64::new(0);
static READS: AtomicU64 = AtomicU64::new(0);
static WB: AtomicU64 = AtomicU64::new(0);
static GC: AtomicU64 = AtomicU64::new(0);

fn cfg(data_crc: bool) -> pcache::Config {
    let mut cfg = config(SECTORS * 512, WORKERS);
    cfg.gc_percent = Some(30);
    cfg.data_crc = data_crc;
    cfg.kset_flush_interval = std::time::Duration::from_micros(200);
    cfg
}

fn worker(seed: u64, w: usize, cache: &Cache, base: &pcache::MemBase, sh: &Shared) {
    let mut rng = SmallRng::seed_from_u64(seed ^ (w as u64 + 1) << 40);
    for op in 0..OPS_PER_WORKER {
        let first = rng.next_u64() % SECTORS;
        let n = 1 + rng.next_u64() % 16.min(SECTORS - first);
        let id = |j: u64| (seed << 32) | (w as u64) << 24 | (op as u64) << 8 | j | 1 << 60;
        match rng.next_u64() % 10 {
            0..=3 => {
                let i = sh.issue(id(0), first, n, false);
                write_all(cache, base, w, first * 512, &write_data(id(0), first, n));
                sh.ack(i);
            }
            4 => {
                let mut writes = Vec::new();
                let mut idx = Vec::new();
                for j in 0..2 + rng.next_u64() % 3 {
                    let f = rng.next_u64() % SECTORS;
                    let k = 1 + rng.next_u64() % 8.min(SECTORS - f);
                    idx.push(sh.issue(id(j + 1), f, k, false));
                    writes.push((f * 512, write_data(id(j + 1), f, k)));
                }
                for r in write_batch_all(cache, base, w, &writes) {
                    r.unwrap();
                }
                for i in idx {
                    sh.ack(i);
                }
            }
            5 => {
                let i = sh.issue(id(0), first, n, true);
                zero_all(cache, base, first * 512, n * 512);
                sh.ack(i);
            }
            6..=8 => {
                let start = sh.tick();
                let got = read_through(cache, base, w, first * 512, n as usize * 512);
                let end = sh.tick();
                let h = sh.history.lock().unwrap();
                for (k, s) in (first..first + n).enumerate() {
                    let who = who_wrote(&got[k * 512..(k + 1) * 512], s);
                    assert!(
                        h.allowed(s, who, start, end),
                        "seed {seed}: worker {w} read sector {s} as {who:?}, which no write allows"
                    );
                }
                READS.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                let start = sh.tick();
                let i = {
                    let mut h = sh.history.lock().unwrap();
                    h.flushes.push((start, None));
                    h.flushes.len() - 1
                };
                cache.flush().unwrap();
                let end = sh.tick();
                sh.history.lock().unwrap().flushes[i].1 = Some(end);
            }
        }
    }
}

/// Runs the workload; returns the media operations after format and in all,
/// and the captures taken at `points`.
fn workload(seed: u64, points: Vec<u64>) -> (u64, u64, Vec<Capture>) {
    let media = Arc::new(CrashSim::new(media_len(SEGS)));
    let base = Arc::new(base((SECTORS * 512) as usize));
    if seed % 2 == 0 {
        // Half the seeds write back straight from the media (no copy).
        base.read_media_from(media.clone() as Arc<dyn Media>);
    }
    let sh = Arc::new(Shared { clock: AtomicU64::new(1), history: Mutex::default() });
    let caps = Arc::new(Mutex::new(Vec::new()));
    {
        let (base, sh, caps) = (base.clone(), sh.clone(), caps.clone());
        media.set_crash_points(
            points,
            seed,
            Box::new(move |op, pmem| {
                let b = base.crash_image(seed ^ op);
                let history = sh.history.lock().unwrap().clone();
                let at = sh.tick();
                caps.lock().unwrap().push(Capture { op, at, pmem, base: b, history });
            }),
        );
    }
    let cache = Arc::new(open(media.clone() as Arc<dyn Media>, &cfg(seed % 2 == 1)));
    let formatted_at = media.ops();
    let stop = Arc::new(AtomicBool::new(false));
    let bg = {
        let (cache, base, stop) = (cache.clone(), base.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                cache.background_step(&*base).unwrap();
                std::thread::yield_now();
            }
        })
    };
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (cache, base, sh) = (&cache, &base, &sh);
            s.spawn(move || worker(seed, w, cache, base, sh));
        }
    });
    stop.store(true, Ordering::Relaxed);
    bg.join().unwrap();
    let st = cache.stats();
    WB.fetch_add(st.writeback_ksets, Ordering::Relaxed);
    GC.fetch_add(st.gc_ksets, Ordering::Relaxed);
    let ops = media.ops();
    drop(cache);
    let caps = std::mem::take(&mut *caps.lock().unwrap());
    (formatted_at, ops, caps)
}

/// Checks a cache image and a base image against the history at `at`:
/// reopens the cache (replay), reads every sector through it, and writes
/// everything back (the base must then agree with what was read).
fn check(seed: u64, what: &str, pmem: Vec<u8>, base_img: Vec<u8>, h: &History, at: u64, data_crc: bool) {
    if let Err(e) = h.base_ok(&base_img, at) {
        panic!("seed {seed} {what}: the base alone: {e}");
    }
    let media: Arc<dyn Media> = Arc::new(MemMedia::from_image(pmem));
    let base = base_from(base_img);
    let cache = Cache::open(media, &cfg(data_crc))
        .map(|(c, _)| c)
        .unwrap_or_else(|e| panic!("seed {seed} {what}: reopen failed: {e}"));
    let floor = h.floor_at(at);
    let got = read_through(&cache, &base, 0, 0, (SECTORS * 512) as usize);
    for s in 0..SECTORS {
        let who = who_wrote(&got[s as usize * 512..(s as usize + 1) * 512], s);
        assert!(h.allowed(s, who, floor, at), "seed {seed} {what}: sector {s} holds {who:?}, which no write allows");
    }
    cache.writeback_all(&base).unwrap();
    let img = base.visible_image();
    for s in 0..SECTORS {
        let who = who_wrote(&img[s as usize * 512..(s as usize + 1) * 512], s);
        let served = who_wrote(&got[s as usize * 512..(s as usize + 1) * 512], s);
        assert_eq!(who, served, "seed {seed} {what}: base sector {s} after writeback differs from what was served");
    }
}

/// A second power failure while recovering from `c`: the image is reopened
/// on a crash stand-in and cut at a random operation of replay or of the
/// writeback after it; what that leaves must obey the same history.
fn second_crash(seed: u64, c: &Capture, data_crc: bool) {
    let sim = Arc::new(CrashSim::from_image(c.pmem.clone()));
    let base = Arc::new(base_from(c.base.clone()));
    // A first pass counts the operations of recovery.
    let total = {
        let probe = Arc::new(CrashSim::from_image(c.pmem.clone()));
        let pbase = base_from(c.base.clone());
        let cache = open(probe.clone() as Arc<dyn Media>, &cfg(data_crc));
        cache.writeback_all(&pbase).unwrap();
        probe.ops()
    };
    let point = SmallRng::seed_from_u64(seed ^ c.op).next_u64() % total.max(1);
    let got = Arc::new(Mutex::new(None));
    {
        let (got, base) = (got.clone(), base.clone());
        sim.set_crash_points(
            vec![point],
            seed ^ 0x2c,
            Box::new(move |_, pmem| {
                *got.lock().unwrap() = Some((pmem, base.crash_image(seed ^ 0x2c)));
            }),
        );
    }
    if let Ok((cache, _)) = Cache::open(sim.clone() as Arc<dyn Media>, &cfg(data_crc)) {
        let _ = cache.writeback_all(&*base);
    }
    let Some((pmem, base_img)) = got.lock().unwrap().take() else { return };
    SECOND.fetch_add(1, Ordering::Relaxed);
    check(
        seed,
        &format!("second crash at recovery op {point} after op {}", c.op),
        pmem,
        base_img,
        &c.history,
        c.at,
        data_crc,
    );
}

fn run_seed(seed: u64) -> usize {
    let (start, total, _) = workload(seed, Vec::new());
    let mut rng = SmallRng::seed_from_u64(!seed);
    let points: Vec<u64> = (0..POINTS_PER_SEED).map(|_| start + rng.next_u64() % (total - start).max(1)).collect();
    let (_, _, caps) = workload(seed, points);
    let data_crc = seed % 2 == 1;
    for (i, c) in caps.iter().enumerate() {
        check(seed, &format!("crash at media op {}", c.op), c.pmem.clone(), c.base.clone(), &c.history, c.at, data_crc);
        if i % 3 == 0 {
            second_crash(seed, c, data_crc);
        }
    }
    POINTS.fetch_add(caps.len() as u64, Ordering::Relaxed);
    caps.len()
}

#[test]
fn power_failures_under_concurrent_workers() {
    if let Ok(s) = std::env::var("PCACHE_CRASH_SEED") {
        let seed: u64 = s.parse().expect("PCACHE_CRASH_SEED is a number");
        eprintln!("seed {seed}: {} crash points verified", run_seed(seed));
        return;
    }
    let seeds = std::env::var("PCACHE_CRASH_WORKER_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(SEEDS);
    for seed in 1..=seeds {
        run_seed(seed);
    }
    let (points, second, reads) =
        (POINTS.load(Ordering::Relaxed), SECOND.load(Ordering::Relaxed), READS.load(Ordering::Relaxed));
    let (wb, gc) = (WB.load(Ordering::Relaxed), GC.load(Ordering::Relaxed));
    eprintln!(
        "{points} crash points and {second} second crashes in recovery verified over {seeds} seeds \
         ({reads} reads checked; {wb} ksets written back, {gc} reclaimed)"
    );
    assert!(points >= seeds * POINTS_PER_SEED as u64 / 2, "too few crash points fired: {points}");
    assert!(second > 0 && wb > 0 && gc > 0, "the workload must crash recovery and run writeback and GC");
}
