//! `pcache bench`: drives the engine the way bdevperf drives a bdev, over a
//! pmem file and a base file, and measures side by side in the same run the
//! ceiling of this machine: a plain copy into (or out of) the same pmem mapping.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pcache::pmem::{Media, PmemFile, SplitMix64};
use pcache::{BaseIdentity, Cache, Config, FileBase, Opened, WriteOutcome};

use crate::alloc_count::live_bytes;
use crate::args::Args;

const HELP: &str = "usage: pcache bench [options]

Drives the cache engine over a pmem file and a base file like bdevperf drives
a bdev, and measures in the same run a plain copy into the same pmem mapping.

  -w WORKLOAD      randwrite | randread | rw | verify        (randwrite)
  -o SIZE          block size                                 (4K)
  -q DEPTH         queue depth per worker (see note)          (32)
  -j WORKERS       concurrent workers                         (1)
  -t SECONDS       duration of each measured phase            (5)
  --pmem PATH      pmem file (recreated)             (/dev/shm/pcache-bench.pmem)
  --pmem-size SIZE                                            (2G)
  --base PATH      base file (recreated, sparse)     (/var/tmp/pcache-bench.base)
  --base-size SIZE                                            (1G)
  --replay-keys N  keys journalled for the replay/DRAM phase  (500000)
  --data-crc       keep and check data CRCs
  --keep           keep the pmem and base files afterwards
  --sustained      keep writing after the cache reaches its GC threshold
                   (then writeback to the base file sets the pace)

Run with PMEM_IS_PMEM_FORCE=1 when the pmem file is on /dev/shm.
Note: the engine completes pmem reads and writes synchronously, so for cache
hits the queue depth only bounds work in flight towards the base device.";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    RandWrite,
    RandRead,
    Rw,
    Verify,
}

struct Opts {
    workload: Workload,
    bs: u64,
    qd: u64,
    workers: usize,
    secs: u64,
    pmem: PathBuf,
    pmem_size: u64,
    base: PathBuf,
    base_size: u64,
    replay_keys: u64,
    data_crc: bool,
    keep: bool,
    sustained: bool,
}

fn parse(raw: &[String]) -> Result<Option<Opts>, String> {
    let a = Args::parse(
        raw,
        &["w", "o", "q", "j", "t", "pmem", "pmem-size", "base", "base-size", "replay-keys"],
        &["data-crc", "keep", "sustained", "help", "h"],
    )?;
    if a.flag("help") || a.flag("h") {
        println!("{HELP}");
        return Ok(None);
    }
    let workload = match a.str_or("w", "randwrite").as_str() {
        "randwrite" => Workload::RandWrite,
        "randread" => Workload::RandRead,
        "rw" | "randrw" => Workload::Rw,
        "verify" => Workload::Verify,
        w => return Err(format!("unknown workload {w:?} (randwrite, randread, rw, verify)")),
    };
    let o = Opts {
        workload,
        bs: a.num_or("o", 4096)?,
        qd: a.num_or("q", 32)?,
        workers: a.num_or("j", 1)? as usize,
        secs: a.num_or("t", 5)?,
        pmem: a.str_or("pmem", "/dev/shm/pcache-bench.pmem").into(),
        pmem_size: a.num_or("pmem-size", 2 << 30)?,
        base: a.str_or("base", "/var/tmp/pcache-bench.base").into(),
        base_size: a.num_or("base-size", 1 << 30)?,
        replay_keys: a.num_or("replay-keys", 500_000)?,
        data_crc: a.flag("data-crc"),
        keep: a.flag("keep"),
        sustained: a.flag("sustained"),
    };
    if o.bs == 0 || o.bs % 512 != 0 || o.bs > 4 << 20 {
        return Err(format!("block size {} must be a multiple of 512 up to 4M", o.bs));
    }
    if o.workers == 0 || o.workers > 64 {
        return Err("workers must be between 1 and 64".into());
    }
    if o.base_size < o.bs * o.workers as u64 * 16 {
        return Err("base size is too small for this block size and worker count".into());
    }
    if o.secs == 0 {
        return Err("duration must be at least 1 second".into());
    }
    Ok(Some(o))
}

pub fn main(raw: &[String]) -> Result<(), String> {
    let Some(o) = parse(raw)? else { return Ok(()) };
    let _ = std::fs::remove_file(&o.pmem);
    let media = Arc::new(PmemFile::create(&o.pmem, o.pmem_size).map_err(|e| e.to_string())?);
    if !media.is_pmem() {
        eprintln!("warning: {} is not pmem to libpmem; set PMEM_IS_PMEM_FORCE=1 for a DRAM stand-in", o.pmem.display());
    }
    let base_file = std::fs::File::create(&o.base).map_err(|e| format!("cannot create {}: {e}", o.base.display()))?;
    base_file.set_len(o.base_size).map_err(|e| format!("cannot size {}: {e}", o.base.display()))?;
    drop(base_file);
    let base = Arc::new(FileBase::open(&o.base, 512).map_err(|e| e.to_string())?);
    println!(
        "pcache bench: workload {:?}, block {} B, qd {}, {} worker(s), {} s; pmem {} ({} MiB, is_pmem={}), base {} ({} MiB)",
        o.workload,
        o.bs,
        o.qd,
        o.workers,
        o.secs,
        o.pmem.display(),
        o.pmem_size >> 20,
        media.is_pmem(),
        o.base.display(),
        o.base_size >> 20
    );
    let result = run(&o, media.clone(), base);
    if !o.keep {
        let _ = std::fs::remove_file(&o.pmem);
        let _ = std::fs::remove_file(&o.base);
    }
    result
}

fn run(o: &Opts, media: Arc<PmemFile>, base: Arc<FileBase>) -> Result<(), String> {
    // 0. Touch every page first: a DRAM stand-in pays a page fault on first
    //    touch that real pmem does not, and it would swamp both measurements.
    let t = Instant::now();
    media.zero(0, media.len()).map_err(|e| e.to_string())?;
    media.fence();
    println!("prefault  {} MiB in {:.2} s", media.len() >> 20, t.elapsed().as_secs_f64());
    // 1. The ceiling: plain copies into / out of the same mapping.
    let write_ceiling = ceiling(&media, o, true);
    let read_ceiling = ceiling(&media, o, false);
    println!(
        "ceiling   plain pmem copy: write {:>10.0} IOPS, read {:>10.0} IOPS ({} worker(s))",
        write_ceiling, read_ceiling, o.workers
    );

    // 2. The workload through the engine.
    let cfg = config(o);
    let (cache, _) = Cache::open(media.clone() as Arc<dyn Media>, &cfg).map_err(|e| e.to_string())?;
    let cache = Arc::new(cache);
    if matches!(o.workload, Workload::RandRead | Workload::Rw) {
        prefill(&cache, o)?;
    }
    let r = drive(&cache, &base, o)?;
    let mib = r.ops as f64 * o.bs as f64 / (1 << 20) as f64 / r.secs;
    let iops = r.ops as f64 / r.secs;
    println!(
        "pcache    {:?}: {:>10.0} IOPS {:>8.1} MiB/s  latency us: p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        o.workload,
        iops,
        mib,
        r.lat.pct(50.0) / 1e3,
        r.lat.pct(99.0) / 1e3,
        r.lat.pct(99.9) / 1e3,
        r.lat.max as f64 / 1e3
    );
    println!(
        "          measured over {:.2} s{}",
        r.secs,
        if r.filled && !o.sustained {
            " (stopped when the cache reached its GC threshold: ingest speed; --sustained runs on, bounded by writeback)"
        } else {
            ""
        }
    );
    let st = cache.stats();
    println!(
        "          hits {} / misses {} ops, deferred writes {}, ksets journalled {}, written back {} MiB, GC ksets {}, segments {}/{}",
        st.read_hit_ops,
        st.read_miss_ops,
        st.deferred_writes,
        st.kset_flushes,
        st.writeback_bytes >> 20,
        st.gc_ksets,
        st.segs_used,
        st.segs_total
    );
    if r.verify_errors > 0 {
        return Err(format!("verify: {} blocks read back wrong", r.verify_errors));
    }
    // verify generates and compares patterns in the harness: no ratio for it.
    let ceiling = match o.workload {
        Workload::RandWrite => Some(write_ceiling),
        Workload::RandRead => Some(read_ceiling),
        Workload::Rw => Some(2.0 / (1.0 / write_ceiling + 1.0 / read_ceiling)),
        Workload::Verify => None,
    };
    match ceiling {
        Some(c) => println!("ratio     pcache / plain copy = {:.2} (target >= 0.70)", iops / c),
        None => println!("verify    every block read back matched its newest write"),
    }
    let cache = Arc::try_unwrap(cache).map_err(|_| "cache still shared".to_string())?;
    cache.close().map_err(|e| e.to_string())?;

    // 3. Replay speed and index DRAM per key.
    replay_phase(o, media)
}

fn config(o: &Opts) -> Config {
    let mut cfg = Config::new(BaseIdentity { size: o.base_size, block_size: 512, id: "bench".into() });
    cfg.workers = o.workers;
    cfg.data_crc = o.data_crc;
    cfg.force_format = true;
    cfg
}

fn ceiling(media: &Arc<PmemFile>, o: &Opts, write: bool) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let region = media.len() / o.workers as u64;
    let blocks = region / o.bs;
    let threads: Vec<_> = (0..o.workers)
        .map(|w| {
            let (media, stop, bs) = (media.clone(), stop.clone(), o.bs as usize);
            std::thread::spawn(move || {
                let mut buf = vec![0x5au8; bs];
                let mut rng = SplitMix64(w as u64 + 77);
                let mut ops = 0u64;
                // Same loop shape and per-op timing as the engine workers.
                let mut lat = Hist::new();
                while !stop.load(Ordering::Relaxed) {
                    let off = w as u64 * region + (rng.next() % blocks) * bs as u64;
                    let t = Instant::now();
                    if write {
                        media.write(off, &buf).expect("in range");
                        media.fence();
                    } else {
                        media.read(off, &mut buf).expect("in range");
                    }
                    lat.add(t.elapsed().as_nanos() as u64);
                    ops += 1;
                }
                std::hint::black_box(&buf);
                std::hint::black_box(&lat);
                ops
            })
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(o.secs));
    stop.store(true, Ordering::Relaxed);
    let ops: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    ops as f64 / t0.elapsed().as_secs_f64()
}

fn prefill(cache: &Cache, o: &Opts) -> Result<(), String> {
    let buf = vec![0xa5u8; 1 << 20];
    let mut off = 0;
    while off < o.base_size {
        let n = (o.base_size - off).min(buf.len() as u64);
        match cache.write_buf(0, off, &buf[..n as usize]).map_err(|e| e.to_string())? {
            WriteOutcome::Done => {}
            WriteOutcome::Deferred { .. } => return Err("the pmem file is too small to hold the base range".into()),
        }
        off += n;
    }
    cache.flush().map_err(|e| e.to_string())
}

/// Log-linear latency histogram in nanoseconds.
#[derive(Clone)]
struct Hist {
    b: Vec<u64>,
    n: u64,
    max: u64,
}

impl Hist {
    fn new() -> Self {
        Hist { b: vec![0; 64 * 16], n: 0, max: 0 }
    }
    fn bucket(v: u64) -> usize {
        if v < 16 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize; // >= 4
        let m = ((v >> (e - 4)) & 15) as usize;
        (e - 3) * 16 + m
    }
    fn lower(i: usize) -> f64 {
        if i < 16 {
            return i as f64;
        }
        let e = i / 16 + 3;
        let m = i % 16;
        ((16 + m) as f64) * (1u64 << (e - 4)) as f64
    }
    fn add(&mut self, v: u64) {
        let i = Self::bucket(v).min(self.b.len() - 1);
        self.b[i] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }
    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.b.iter_mut().zip(&o.b) {
            *a += b;
        }
        self.n += o.n;
        self.max = self.max.max(o.max);
    }
    fn pct(&self, p: f64) -> f64 {
        let want = ((self.n as f64) * p / 100.0).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.b.iter().enumerate() {
            seen += c;
            if seen >= want.max(1) {
                return Self::lower(i);
            }
        }
        self.max as f64
    }
}

struct RunResult {
    ops: u64,
    secs: f64,
    lat: Hist,
    verify_errors: u64,
    /// The cache reached its GC threshold during the run.
    filled: bool,
}

fn drive(cache: &Arc<Cache>, base: &Arc<FileBase>, o: &Opts) -> Result<RunResult, String> {
    let space = Arc::new((Mutex::new(0u64), Condvar::new()));
    {
        let space = space.clone();
        cache.set_space_notifier(Some(Box::new(move || {
            *space.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            space.1.notify_all();
        })));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let full = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let gc_percent = cache.stats().gc_percent as u32;
    let poller = {
        let (cache, base, stop, failed, full) = (cache.clone(), base.clone(), stop.clone(), failed.clone(), full.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if cache.used_percent() >= gc_percent {
                    full.store(true, Ordering::Relaxed);
                }
                match cache.background_step(&*base) {
                    Ok(t) if t.did_work() || t.writeback_busy => {}
                    Ok(_) => std::thread::sleep(Duration::from_micros(200)),
                    Err(e) => {
                        eprintln!("background work failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        })
    };
    let blocks = o.base_size / o.bs;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(o.secs);
    let workers: Vec<_> = (0..o.workers)
        .map(|w| {
            let (cache, base, space, full) = (cache.clone(), base.clone(), space.clone(), full.clone());
            let (bs, workload, nw, until_full) = (o.bs, o.workload, o.workers as u64, !o.sustained);
            std::thread::spawn(move || -> Result<(u64, Hist, u64), String> {
                let mut rng = SplitMix64(w as u64 * 1000 + 1);
                let mut lat = Hist::new();
                let mut wbuf = vec![0u8; bs as usize];
                let mut rbuf = vec![0u8; bs as usize];
                let mut ops = 0u64;
                let mut verify_errors = 0;
                // verify: newest sequence written to each block, and the blocks in write order.
                let mut newest: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
                let mut written: Vec<u64> = Vec::new();
                let mut seq = 0u64;
                while Instant::now() < deadline && !(until_full && full.load(Ordering::Relaxed)) {
                    let is_write = match workload {
                        Workload::RandWrite => true,
                        Workload::RandRead => false,
                        Workload::Rw => rng.next() & 1 == 0,
                        Workload::Verify => written.is_empty() || rng.next() & 1 == 0,
                    };
                    // verify: worker w owns blocks with index % workers == w.
                    let blk = if workload == Workload::Verify {
                        (rng.next() % (blocks / nw)) * nw + w as u64
                    } else {
                        rng.next() % blocks
                    };
                    let t = Instant::now();
                    if is_write {
                        seq += 1;
                        if workload == Workload::Verify {
                            fill_pattern(&mut wbuf, w as u64, seq, blk);
                        }
                        write_waiting(&cache, &space, w, blk * bs, &wbuf)?;
                        if workload == Workload::Verify && newest.insert(blk, seq).is_none() {
                            written.push(blk);
                        }
                    } else if workload == Workload::Verify {
                        let vblk = written[(rng.next() % written.len() as u64) as usize];
                        read_block(&cache, &*base, w, vblk * bs, &mut rbuf)?;
                        // The newest write to that block is what must come back.
                        fill_pattern(&mut wbuf, w as u64, newest[&vblk], vblk);
                        if rbuf != wbuf {
                            verify_errors += 1;
                        }
                    } else {
                        read_block(&cache, &*base, w, blk * bs, &mut rbuf)?;
                    }
                    lat.add(t.elapsed().as_nanos() as u64);
                    ops += 1;
                }
                Ok((ops, lat, verify_errors))
            })
        })
        .collect();
    let mut total = 0;
    let mut lat = Hist::new();
    let mut verify_errors = 0;
    let mut err = None;
    for w in workers {
        match w.join().map_err(|_| "worker panicked".to_string()).and_then(|r| r) {
            Ok((ops, h, v)) => {
                total += ops;
                lat.merge(&h);
                verify_errors += v;
            }
            Err(e) => err = Some(e),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    cache.set_space_notifier(None);
    if let Some(e) = err {
        return Err(e);
    }
    if failed.load(Ordering::Relaxed) > 0 {
        return Err("background work reported errors".into());
    }
    Ok(RunResult { ops: total, secs, lat, verify_errors, filled: full.load(Ordering::Relaxed) })
}

fn fill_pattern(buf: &mut [u8], w: u64, seq: u64, blk: u64) {
    let mut rng = SplitMix64(w << 48 ^ seq << 8 ^ blk);
    for c in buf.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

fn write_waiting(cache: &Cache, space: &(Mutex<u64>, Condvar), w: usize, off: u64, data: &[u8]) -> Result<(), String> {
    let mut done = 0usize;
    loop {
        let epoch = *space.0.lock().unwrap_or_else(|e| e.into_inner());
        match cache.write_buf(w, off + done as u64, &data[done..]).map_err(|e| e.to_string())? {
            WriteOutcome::Done => return Ok(()),
            WriteOutcome::Deferred { written } => {
                done += written as usize;
                let g = space.0.lock().unwrap_or_else(|e| e.into_inner());
                let _ = space.1.wait_timeout_while(g, Duration::from_millis(100), |e| *e == epoch);
            }
        }
    }
}

fn read_block(cache: &Cache, base: &FileBase, w: usize, off: u64, buf: &mut [u8]) -> Result<(), String> {
    use pcache::BaseDevice;
    let misses = cache.read(off, &mut [std::io::IoSliceMut::new(buf)]).map_err(|e| e.to_string())?;
    for m in misses {
        let (tx, rx) = std::sync::mpsc::channel();
        base.read(m.off, vec![0u8; m.len as usize], Box::new(move |b, r| {
            let _ = tx.send((b, r));
        }));
        let (data, r) = rx.recv().map_err(|e| e.to_string())?;
        r.map_err(|e| e.to_string())?;
        buf[m.buf_at as usize..(m.buf_at + m.len) as usize].copy_from_slice(&data);
        cache.fill(w, &m, &data).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn replay_phase(o: &Opts, media: Arc<PmemFile>) -> Result<(), String> {
    let mut cfg = config(o);
    cfg.workers = 1;
    let (cache, _) = Cache::open(media.clone() as Arc<dyn Media>, &cfg).map_err(|e| e.to_string())?;
    let blocks = o.base_size / 4096;
    let mut rng = SplitMix64(4242);
    let buf = vec![0x3cu8; 4096];
    let mut n = 0;
    while n < o.replay_keys {
        match cache.write_buf(0, (rng.next() % blocks) * 4096, &buf).map_err(|e| e.to_string())? {
            WriteOutcome::Done => n += 1,
            WriteOutcome::Deferred { .. } => break,
        }
    }
    cache.close().map_err(|e| e.to_string())?;
    cfg.force_format = false;
    let before = live_bytes();
    let t = Instant::now();
    let (cache, opened) = Cache::open(media as Arc<dyn Media>, &cfg).map_err(|e| e.to_string())?;
    let secs = t.elapsed().as_secs_f64();
    let after = live_bytes();
    let Opened::Loaded(rep) = opened else { return Err("reopen formatted the device".into()) };
    let extents = cache.index_extents();
    let per_key = (after - before) as f64 / extents.max(1) as f64;
    println!(
        "replay    {} keys in {} ksets in {:.3} s = {:.2} M keys/s (target >= 2)",
        rep.keys,
        rep.ksets,
        secs,
        rep.keys as f64 / secs / 1e6
    );
    println!(
        "dram      {} index extents, {:.1} bytes of heap per cached key (all engine DRAM after open; target <= 64)",
        extents, per_key
    );
    drop(cache);
    Ok(())
}
