//! Power-failure simulation.
//!
//! A deterministic single-worker workload (writes, reads, flushes, background
//! work: kset sealing, writeback, GC, which moves data reads hit) runs on a pmem stand-in that can capture, at
//! any store or fence, the image a power cut would leave: durable lines plus a
//! random subset of unfenced ones. The base device likewise keeps a random
//! subset of its unflushed writes. Each captured pair is reopened and every
//! sector read back must be
//! - the value of the last write acknowledged before the last completed flush, or
//! - the value of a write issued after that flush (unflushed writes may or may not survive),
//!
//! and nothing else. Large writes bypass the cache when it allows (bypass.rs); a flush then
//! flushes the base too. Odd seeds switch the cache mode now and then (mode.rs): in writearound
//! and passthrough, writes go around the cache where it allows; in every mode but writeback, a
//! write completes only once written back, and from then on the base image a crash leaves must
//! hold it or a later write in each of its sectors. Failures print the seed;
//! PCACHE_CRASH_SEED=<n> reruns one.

mod common;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::*;
use pcache::pmem::{CrashSim, Media, MemMedia};
use pcache::{BaseDevice, CacheMode};

const BASE_SECTORS: u64 = 512; // 256 KiB
/// Every fourth seed writes over a base eight times larger, in writes of up
/// to 32 KiB, so that the cache fills with data nothing overwrites and writes
/// that find it full go to the base (bypass.rs).
const WIDE_SECTORS: u64 = 8 * BASE_SECTORS;

/// The base's size in sectors, and the longest small write, for a seed.
fn shape(seed: u64) -> (u64, u64) {
    if seed % 4 == 0 {
        (WIDE_SECTORS, 64)
    } else {
        (BASE_SECTORS, 16)
    }
}
const SEGS: u64 = 12;
const OPS: usize = 120;
const POINTS_PER_SEED: usize = 25;

/// What a sector may legally hold after a crash.
#[derive(Clone, Default)]
struct Model {
    flushed: HashMap<u64, u64>,
    since: HashMap<u64, Vec<u64>>,
    /// What every sector held at each completed FLUSH, oldest first (the
    /// state before the first is all zeros), and for every write the number
    /// of FLUSHes completed before it was issued: what the base alone may
    /// hold (see base_consistent_at).
    at_flush: Vec<HashMap<u64, u64>>,
    epoch_of: HashMap<u64, usize>,
    /// Each write's place in issue order.
    order: HashMap<u64, u64>,
    /// Per sector, the last write that completed only once written back
    /// (mode.rs): the base must hold it or a later write there.
    on_base: HashMap<u64, u64>,
}

impl Model {
    fn allowed(&self, s: u64, id: u64) -> bool {
        self.flushed.get(&s).copied().unwrap_or(0) == id || self.since.get(&s).is_some_and(|v| v.contains(&id))
    }
    fn writing(&mut self, id: u64, first: u64, n: u64) {
        for s in first..first + n {
            self.since.entry(s).or_default().push(id);
        }
        self.epoch_of.insert(id, self.at_flush.len());
        let n = self.order.len() as u64;
        self.order.insert(id, n);
    }
    fn acked(&mut self, _id: u64) {}
    fn written_back(&mut self, id: u64, first: u64, n: u64) {
        for s in first..first + n {
            self.on_base.insert(s, id);
        }
    }

    /// The first sector of the base `img` that holds neither a write that
    /// completed once written back nor a later one.
    fn base_lost_written_back(&self, img: &[u8]) -> Option<(u64, u64, Option<u64>)> {
        self.on_base.iter().map(|(&s, &id)| (s, id)).find_map(|(s, id)| {
            let who = who_wrote(&img[s as usize * 512..(s as usize + 1) * 512], s);
            let later = who.is_some_and(|w| self.order.get(&w) >= self.order.get(&id));
            (!later).then_some((s, id, who))
        })
    }
    fn flushed(&mut self, last: &HashMap<u64, u64>) {
        self.flushed = last.clone();
        self.since.clear();
        self.at_flush.push(last.clone());
    }

    /// The FLUSH (0: none yet, k: the k-th) up to which the base `img` holds
    /// every acknowledged write, with every other sector holding a write
    /// issued after it and before the next FLUSH — the guarantee the base
    /// gives at any instant (doc/format.md, "Epochs"). None if no FLUSH fits.
    fn base_consistent_at(&self, img: &[u8]) -> Option<usize> {
        let who: Vec<Option<u64>> =
            (0..img.len() / 512).map(|s| who_wrote(&img[s * 512..(s + 1) * 512], s as u64)).collect();
        // A sector's pattern names the sector, so a write's id found there
        // means the write covered it.
        (0..=self.at_flush.len()).rev().find(|&k| {
            let at = |s: u64| if k == 0 { 0 } else { self.at_flush[k - 1].get(&s).copied().unwrap_or(0) };
            who.iter()
                .enumerate()
                .all(|(s, w)| w.is_some_and(|id| id == at(s as u64) || self.epoch_of.get(&id) == Some(&k)))
        })
    }
}

static GC_KSETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static GC_MOVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static KEPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static WB_KSETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static BYPASSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static BYPASSED_FULL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static MODE_SWITCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static THROUGH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static AROUND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct Capture {
    op: u64,
    pmem: Vec<u8>,
    base: Vec<u8>,
    model: Model,
}

/// Runs the workload; returns the number of media operations, and the captures
/// taken at `points`.
fn workload(seed: u64, points: Vec<u64>) -> (u64, u64, Vec<Capture>) {
    let (sectors, max_io) = shape(seed);
    let media = Arc::new(CrashSim::new(media_len(SEGS)));
    let base = Arc::new(base((sectors * 512) as usize));
    if seed % 2 == 0 {
        // Half the seeds write back straight from the media (no copy).
        base.read_media_from(media.clone() as Arc<dyn Media>);
    }
    let model = Arc::new(Mutex::new(Model::default()));
    let captures = Arc::new(Mutex::new(Vec::new()));
    {
        let (base, model, captures) = (base.clone(), model.clone(), captures.clone());
        media.set_crash_points(
            points,
            seed,
            Box::new(move |op, pmem| {
                let b = base.crash_image(seed ^ op);
                let m = model.lock().unwrap().clone();
                captures.lock().unwrap().push(Capture { op, pmem, base: b, model: m });
            }),
        );
    }
    let mut cfg = config(sectors * 512, 1);
    cfg.gc_percent = Some(20);
    cfg.kset_flush_interval = std::time::Duration::ZERO;
    // Any write of 64 KiB or more may bypass (see bypass.rs), stream or not.
    cfg.seq_cutoff = 1;
    let cache = open(media.clone() as Arc<dyn Media>, &cfg);
    // A crash before format completes leaves a device that is refused: not a case here.
    let formatted_at = media.ops();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut last: HashMap<u64, u64> = HashMap::new();
    for op in 0..OPS {
        match rng.next_u64() % 18 {
            0..=2 => {
                // A batch: 2 to 4 writes, possibly overlapping one another.
                let mut writes = Vec::new();
                for j in 0..2 + rng.next_u64() % 3 {
                    let first = rng.next_u64() % sectors;
                    let n = 1 + rng.next_u64() % 16.min(sectors - first);
                    let id = (seed << 20) | (op as u64 + 1) << 2 | j | 1 << 19;
                    model.lock().unwrap().writing(id, first, n);
                    writes.push((first * 512, write_data(id, first, n)));
                    for s in first..first + n {
                        last.insert(s, id);
                    }
                }
                for r in write_batch_or_bypass(&cache, &*base, 0, &writes) {
                    r.unwrap();
                }
            }
            3..=8 => {
                let first = rng.next_u64() % sectors;
                let n = 1 + rng.next_u64() % max_io.min(sectors - first);
                let id = (seed << 20) | (op as u64 + 1);
                model.lock().unwrap().writing(id, first, n);
                let data = write_data(id, first, n);
                if let Some(b) = cache.begin_around(first * 512, n * 512) {
                    // writearound, passthrough: past the cache where it allows.
                    wait_base(|done| base.write(first * 512, data, done)).unwrap();
                    cache.end_bypass(b, true);
                    AROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    // Straight to the base if the cache is full and allows it.
                    let bypassed = write_or_bypass(&cache, &*base, 0, first * 512, &data);
                    if !bypassed && !cache.cache_mode().completes_in_cache() {
                        // It completes once written back, as the SPDK module does it.
                        let ticket = cache.through_ticket().unwrap();
                        while !cache.written_back(ticket) {
                            cache.background_step(&*base).unwrap();
                            std::thread::yield_now(); // the base completes on its own thread
                        }
                        model.lock().unwrap().written_back(id, first, n);
                        THROUGH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                for s in first..first + n {
                    last.insert(s, id);
                }
                model.lock().unwrap().acked(id);
            }
            16..=17 => {
                // A large write: straight to the base when the cache allows it.
                let first = rng.next_u64() % (sectors - 128);
                let n = 128 + rng.next_u64() % 128.min(sectors - first - 127);
                let id = (seed << 20) | (op as u64 + 1) | 1 << 18;
                model.lock().unwrap().writing(id, first, n);
                let data = write_data(id, first, n);
                match cache.begin_bypass(0, first * 512, n * 512) {
                    Some(b) => {
                        wait_base(|done| base.write(first * 512, data, done)).unwrap();
                        cache.end_bypass(b, true);
                    }
                    None => {
                        write_or_bypass(&cache, &*base, 0, first * 512, &data);
                    }
                }
                for s in first..first + n {
                    last.insert(s, id);
                }
            }
            // Wide seeds flush a sixth as often: a bypass needs the epochs
            // before the open one written back.
            9..=10 if sectors == BASE_SECTORS || rng.next_u64() % 20 == 0 => {
                // A FLUSH, as a host serves it: the cache, then the base for
                // writes that bypassed the cache.
                cache.flush().unwrap();
                if let Some(t) = cache.bypass_flush_target() {
                    wait_base(|done| base.flush(done)).unwrap();
                    cache.bypass_flushed(t);
                }
                model.lock().unwrap().flushed(&last);
            }
            11 if seed % 2 == 1 && rng.next_u64() % 2 == 0 => {
                let mode = CacheMode::ALL[(rng.next_u64() % 4) as usize];
                cache.set_cache_mode(mode).unwrap();
                MODE_SWITCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            12 => {
                // A read, misses filled as a host fills them: what reads hit,
                // GC moves to the log head rather than drops (gc.rs).
                let first = rng.next_u64() % sectors;
                let n = 1 + rng.next_u64() % max_io.min(sectors - first);
                let got = read_through(&cache, &*base, 0, first * 512, (n * 512) as usize);
                for s in first..first + n {
                    let i = ((s - first) * 512) as usize;
                    let want = last.get(&s).copied().unwrap_or(0);
                    assert_eq!(who_wrote(&got[i..i + 512], s), Some(want), "seed {seed} op {op}: read of sector {s}");
                }
            }
            _ => {
                cache.background_step(&*base).unwrap();
            }
        }
    }
    let ops = media.ops();
    let st = cache.stats();
    GC_KSETS.fetch_add(st.gc_ksets, std::sync::atomic::Ordering::Relaxed);
    GC_MOVED.fetch_add(st.gc_moved_bytes, std::sync::atomic::Ordering::Relaxed);
    KEPT.fetch_add(st.writeback_kept_bytes, std::sync::atomic::Ordering::Relaxed);
    WB_KSETS.fetch_add(st.writeback_ksets, std::sync::atomic::Ordering::Relaxed);
    BYPASSED.fetch_add(st.bypass_writes, std::sync::atomic::Ordering::Relaxed);
    BYPASSED_FULL.fetch_add(st.bypass_full_writes, std::sync::atomic::Ordering::Relaxed);
    drop(cache);
    let caps = std::mem::take(&mut *captures.lock().unwrap());
    (formatted_at, ops, caps)
}

fn verify(seed: u64, c: &Capture) {
    let media: Arc<dyn Media> = Arc::new(MemMedia::from_image(c.pmem.clone()));
    let sectors = c.base.len() as u64 / 512;
    let base = base_from(c.base.clone());
    let cfg = config(sectors * 512, 1);
    // The base as the crash left it, before any recovery, must hold the
    // guarantee on its own (the cache device may be the one that is lost).
    assert!(
        c.model.base_consistent_at(&c.base).is_some(),
        "seed {seed} crash at media op {}: the base alone holds no state of some FLUSH plus later writes",
        c.op
    );
    if let Some((s, id, who)) = c.model.base_lost_written_back(&c.base) {
        panic!("seed {seed} crash at media op {}: base sector {s} holds {who:?}, not write {id:#x} that completed once written back, nor a later one", c.op);
    }
    let cache = match pcache::Cache::open(media, &cfg) {
        Ok((c, _)) => c,
        Err(e) => panic!("seed {seed} crash at media op {}: reopen failed: {e}", c.op),
    };
    let got = read_through(&cache, &base, 0, 0, (sectors * 512) as usize);
    for s in 0..sectors {
        let bytes = &got[s as usize * 512..(s as usize + 1) * 512];
        let who = who_wrote(bytes, s);
        assert!(
            who.is_some_and(|id| c.model.allowed(s, id)),
            "seed {seed} crash at media op {}: sector {s} holds {:?}, flushed value {:?}, unflushed {:?}",
            c.op,
            who,
            c.model.flushed.get(&s),
            c.model.since.get(&s)
        );
    }
    // And after writing everything back, the base alone must agree.
    cache.writeback_all(&base).unwrap();
    let img = base.visible_image();
    for s in 0..sectors {
        let who = who_wrote(&img[s as usize * 512..(s as usize + 1) * 512], s);
        assert!(
            who.is_some_and(|id| c.model.allowed(s, id)),
            "seed {seed} crash at op {}: base sector {s} after writeback",
            c.op
        );
    }
}

fn run_seed(seed: u64) -> usize {
    let (start, total, _) = workload(seed, Vec::new());
    let mut rng = SmallRng::seed_from_u64(!seed);
    let points: Vec<u64> = (0..POINTS_PER_SEED).map(|_| start + rng.next_u64() % (total - start).max(1)).collect();
    // The base completes I/O on a thread of its own, so the second run's
    // media operations need not line up with the first's: each point is a
    // crash somewhere in the same workload, and points past its end do not fire.
    let (_, _, caps) = workload(seed, points);
    for c in &caps {
        verify(seed, c);
    }
    caps.len()
}

#[test]
fn power_failure_at_random_media_operations() {
    if let Ok(s) = std::env::var("PCACHE_CRASH_SEED") {
        let seed: u64 = s.parse().expect("PCACHE_CRASH_SEED is a number");
        let n = run_seed(seed);
        eprintln!("seed {seed}: {n} crash points verified");
        return;
    }
    let seeds: u64 = std::env::var("PCACHE_CRASH_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(420);
    let mut points = 0;
    for seed in 1..=seeds {
        points += run_seed(seed);
    }
    let (gc, wb) =
        (GC_KSETS.load(std::sync::atomic::Ordering::Relaxed), WB_KSETS.load(std::sync::atomic::Ordering::Relaxed));
    let bypassed = BYPASSED.load(std::sync::atomic::Ordering::Relaxed);
    let full = BYPASSED_FULL.load(std::sync::atomic::Ordering::Relaxed);
    let (switches, through, around) = (
        MODE_SWITCHES.load(std::sync::atomic::Ordering::Relaxed),
        THROUGH.load(std::sync::atomic::Ordering::Relaxed),
        AROUND.load(std::sync::atomic::Ordering::Relaxed),
    );
    eprintln!(
        "{points} crash points verified over {seeds} seeds ({wb} ksets written back, {gc} reclaimed, {bypassed} writes bypassed, {full} of them on a full cache; {switches} mode switches, {through} writes waited for writeback, {around} went around the cache)"
    );
    assert!(seeds < 10 || (switches > 0 && through > 0 && around > 0), "the workload must exercise the cache modes");
    assert!(points >= seeds as usize * POINTS_PER_SEED / 2);
    assert!(
        gc > 0 && wb > 0 && bypassed > full && full > 0,
        "the workload must exercise writeback, GC and both bypasses"
    );
    let moved = GC_MOVED.load(std::sync::atomic::Ordering::Relaxed);
    let kept = KEPT.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{moved} bytes of read data moved by GC, {kept} dirty bytes kept rather than written back");
    assert!(
        seeds < 10 || (moved > 0 && kept > 0),
        "the workload must exercise GC moving read data and keeping dirty data"
    );
}
