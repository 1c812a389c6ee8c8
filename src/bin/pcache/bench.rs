//! `pcache bench`: drives the engine the way bdevperf drives a bdev, over a
//! pmem file and a base file, and measures side by side in the same run the
//! ceiling of this machine: a plain copy into (or out of) the same pmem mapping.

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pcache::pmem::{Media, PmemFile};
use pcache::{BaseIdentity, Cache, Config, FileBase, Opened, WriteOutcome, WriteReq};
use std::io::IoSlice;

use crate::alloc_count::live_bytes;

/// The options of `pcache bench` (their help is in main.rs, on the command).
#[derive(clap::Args)]
#[command(after_help = "Run with PMEM_IS_PMEM_FORCE=1 when the pmem file is on /dev/shm.\n\
                        Note: the engine completes pmem reads and writes synchronously, so for cache\n\
                        hits the queue depth only bounds work in flight towards the base device.")]
pub struct Args {
    /// the workload
    #[arg(short = 'w', value_enum, default_value_t = Workload::RandWrite)]
    workload: Workload,
    /// block size
    #[arg(short = 'o', value_name = "SIZE", value_parser = crate::parse_size, default_value = "4K")]
    bs: u64,
    /// queue depth per worker (see the note below)
    #[arg(short = 'q', value_name = "DEPTH", value_parser = crate::parse_size, default_value = "32")]
    qd: u64,
    /// randwrite: writes handed to the engine at once (Cache::write_batch), 1
    /// to the queue depth; the default is the queue depth, which is how the
    /// SPDK module stages writes under bdevperf
    #[arg(long, value_name = "N", value_parser = crate::parse_size)]
    batch: Option<u64>,
    /// concurrent workers
    #[arg(short = 'j', value_name = "WORKERS", default_value_t = 1)]
    workers: usize,
    /// duration of each measured phase, in seconds
    #[arg(short = 't', value_name = "SECONDS", default_value_t = 5)]
    secs: u64,
    /// pmem file (recreated)
    #[arg(long, value_name = "PATH", default_value = "/dev/shm/pcache-bench.pmem")]
    pmem: PathBuf,
    /// size of the pmem file [default: 8G; 2G with less than 16 GiB of memory
    /// available]; a bigger cache measures write ingest over a longer time
    #[arg(long, value_name = "SIZE", value_parser = crate::parse_size)]
    pmem_size: Option<u64>,
    /// base file (recreated, sparse)
    #[arg(long, value_name = "PATH", default_value = "/var/tmp/pcache-bench.base")]
    base: PathBuf,
    /// size of the base file
    #[arg(long, value_name = "SIZE", value_parser = crate::parse_size, default_value = "1G")]
    base_size: u64,
    /// keys journalled for the replay/DRAM phase
    #[arg(long, value_name = "N", value_parser = crate::parse_size, default_value = "500000")]
    replay_keys: u64,
    /// keep and check data CRCs
    #[arg(long)]
    data_crc: bool,
    /// keep the pmem and base files afterwards
    #[arg(long)]
    keep: bool,
    /// keep writing after the cache reaches its GC threshold (then writeback
    /// to the base file sets the pace)
    #[arg(long)]
    sustained: bool,
    /// where background work (kset timer, writeback, GC) runs: inline = on
    /// worker 0 between I/Os, one step every 32 operations, as an SPDK poller
    /// on an I/O reactor; thread = on an extra thread of its own
    #[arg(long, value_name = "MODE", value_enum, default_value_t = Poller::Inline)]
    poller: Poller,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Workload {
    #[value(name = "randwrite")]
    RandWrite,
    #[value(name = "randread")]
    RandRead,
    #[value(alias = "randrw")]
    Rw,
    Verify,
}

struct Opts {
    workload: Workload,
    bs: u64,
    qd: u64,
    batch: u64,
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
    poller: Poller,
}

impl Args {
    /// The options with their defaults resolved, or why they do not make sense.
    fn into_opts(self) -> Result<Opts, String> {
        let o = Opts {
            workload: self.workload,
            bs: self.bs,
            qd: self.qd,
            batch: self.batch.unwrap_or(self.qd),
            workers: self.workers,
            secs: self.secs,
            pmem: self.pmem,
            pmem_size: self.pmem_size.unwrap_or_else(default_pmem_size),
            base: self.base,
            base_size: self.base_size,
            replay_keys: self.replay_keys,
            data_crc: self.data_crc,
            keep: self.keep,
            sustained: self.sustained,
            poller: self.poller,
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
        if o.batch == 0 || o.batch > o.qd {
            return Err(format!("batch {} must be between 1 and the queue depth ({})", o.batch, o.qd));
        }
        if o.secs == 0 {
            return Err("duration must be at least 1 second".into());
        }
        Ok(o)
    }
}

pub fn main(a: Args) -> Result<(), String> {
    let o = a.into_opts()?;
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
        "pcache bench: workload {:?}, block {} B, qd {}{}, {} worker(s), poller {:?}, {} s; pmem {} ({} MiB, is_pmem={}), base {} ({} MiB)",
        o.workload,
        o.bs,
        o.qd,
        if o.workload == Workload::RandWrite { format!(", batch {}", o.batch) } else { String::new() },
        o.workers,
        o.poller,
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
    let (write_ceiling, write_ceiling_cpu) = ceiling(&media, o, true);
    let (read_ceiling, read_ceiling_cpu) = ceiling(&media, o, false);
    println!(
        "ceiling   plain pmem copy: write {:>10.0} IOPS, read {:>10.0} IOPS ({} worker(s)); per CPU-second: write {:.0}, read {:.0}",
        write_ceiling, read_ceiling, o.workers, write_ceiling_cpu, read_ceiling_cpu
    );

    // 2. The workload through the engine.
    let cfg = config(o);
    let (cache, _) = Cache::open(media.clone() as Arc<dyn Media>, &cfg).map_err(|e| e.to_string())?;
    let cache = Arc::new(cache);
    if matches!(o.workload, Workload::RandRead | Workload::Rw) {
        prefill(&cache, o)?;
        // Write the prefill back first: the read phase measures hits, not the
        // writeback of the prefill (which the poller would otherwise do meanwhile).
        let t = Instant::now();
        cache.writeback_all(&*base).map_err(|e| e.to_string())?;
        println!("prefill   written back in {:.2} s", t.elapsed().as_secs_f64());
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
        r.lat.max() as f64 / 1e3
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
        Workload::RandWrite => Some((write_ceiling, write_ceiling_cpu)),
        Workload::RandRead => Some((read_ceiling, read_ceiling_cpu)),
        Workload::Rw => Some((
            2.0 / (1.0 / write_ceiling + 1.0 / read_ceiling),
            2.0 / (1.0 / write_ceiling_cpu + 1.0 / read_ceiling_cpu),
        )),
        Workload::Verify => None,
    };
    let per_cpu = r.ops as f64 / r.cpu_secs;
    match ceiling {
        Some((c, c_cpu)) => println!(
            "ratio     pcache / plain copy = {:.2} (target >= 0.70); per CPU-second of the I/O threads: {:.0} / {:.0} = {:.2}",
            iops / c,
            per_cpu,
            c_cpu,
            per_cpu / c_cpu
        ),
        None => println!("verify    every block read back matched its newest write"),
    }
    let cache = Arc::try_unwrap(cache).map_err(|_| "cache still shared".to_string())?;
    cache.close().map_err(|e| e.to_string())?;

    // 3. Replay speed and index DRAM per key.
    replay_phase(o, media)
}

fn config(o: &Opts) -> Config {
    let mut cfg = Config::new(BaseIdentity::named(o.base_size, 512, "bench"));
    cfg.workers = o.workers;
    cfg.data_crc = o.data_crc;
    cfg.force_format = true;
    cfg
}

/// The plain-copy ceiling: the same threads, the same per-operation loop
/// (stop flag, one latency sample per op) and the same block addresses as the
/// engine workers (random blocks of the base range, same seeds), each copied
/// into (and fenced) or out of the pmem mapping at the block's own address —
/// what a plain pmem bdev does.
/// Returns IOPS, and operations per CPU-second of the copying threads (which
/// leaves out time those threads spent preempted on a shared machine).
fn ceiling(media: &Arc<PmemFile>, o: &Opts, write: bool) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let blocks = o.base_size.min(media.len()) / o.bs;
    let threads: Vec<_> = (0..o.workers)
        .map(|w| {
            let (media, stop, bs) = (media.clone(), stop.clone(), o.bs);
            std::thread::spawn(move || ceiling_loop(&media, &stop, w, bs, blocks, write))
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(o.secs));
    stop.store(true, Ordering::Relaxed);
    let (ops, cpu) =
        threads.into_iter().map(|t| t.join().unwrap_or((0, 0.0))).fold((0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    (ops as f64 / t0.elapsed().as_secs_f64(), ops as f64 / cpu)
}

/// CPU time the calling thread has used, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer; CLOCK_THREAD_CPUTIME_ID is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[inline(never)]
fn ceiling_loop(media: &PmemFile, stop: &AtomicBool, w: usize, bs: u64, blocks: u64, write: bool) -> (u64, f64) {
    let cpu0 = thread_cpu();
    let mut buf = vec![0x5au8; bs as usize];
    let mut rng = SmallRng::seed_from_u64(w as u64 * 1000 + 1);
    let mut ops = 0u64;
    let mut lat = Hist::new();
    while !stop.load(Ordering::Relaxed) {
        let off = (rng.next_u64() % blocks) * bs;
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
    (ops, thread_cpu() - cpu0)
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

/// Latency in nanoseconds, to 3 significant digits (HdrHistogram).
#[derive(Clone)]
struct Hist(hdrhistogram::Histogram<u64>);

impl Hist {
    fn new() -> Self {
        // An auto-resizing histogram cannot fail to be created.
        Hist(hdrhistogram::Histogram::new(3).expect("3 significant digits is a valid precision"))
    }
    fn add(&mut self, v: u64) {
        // Auto-resizing: only a value past i64::MAX / 2 ns could fail.
        let _ = self.0.record(v);
    }
    fn merge(&mut self, o: &Hist) {
        // Both auto-resize, so adding one to the other cannot run out of range.
        let _ = self.0.add(&o.0);
    }
    fn pct(&self, p: f64) -> f64 {
        self.0.value_at_quantile(p / 100.0) as f64
    }
    fn max(&self) -> u64 {
        self.0.max()
    }
}

struct RunResult {
    ops: u64,
    /// CPU time of the workers (and of the poller thread, if any).
    cpu_secs: f64,
    secs: f64,
    lat: Hist,
    verify_errors: u64,
    /// The cache reached its GC threshold during the run.
    filled: bool,
}

/// 8 GiB where memory allows (so a write run lasts long enough to measure
/// steadily), else 2 GiB.
fn default_pmem_size() -> u64 {
    let avail_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    if avail_kib >= 16 << 20 {
        8 << 30
    } else {
        2 << 30
    }
}

/// How often (in operations) the polling worker runs one background step.
const POLL_EVERY: u64 = 32;

/// Where the background work (kset timer, writeback, GC) runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Poller {
    /// On worker 0, one step every POLL_EVERY operations, the way an SPDK
    /// poller shares its reactor with I/O.
    Inline,
    /// On a thread of its own.
    Thread,
}

/// The base file behind one I/O thread that stands in for the device: writes
/// and flushes complete asynchronously, as a bdev's would, so that a poller
/// running on a worker never blocks in pwrite or fdatasync.
struct AsyncBase {
    file: Arc<FileBase>,
    tx: Mutex<Option<std::sync::mpsc::Sender<BaseJob>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum BaseJob {
    Write(u64, Vec<u8>, pcache::base::Done),
    Flush(pcache::base::Done),
}

impl AsyncBase {
    fn new(file: Arc<FileBase>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<BaseJob>();
        let f = file.clone();
        let thread = std::thread::spawn(move || {
            use pcache::BaseDevice;
            for job in rx {
                match job {
                    BaseJob::Write(off, data, done) => f.write(off, data, done),
                    BaseJob::Flush(done) => f.flush(done),
                }
            }
        });
        AsyncBase { file, tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) }
    }

    fn submit(&self, job: BaseJob) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(job);
        }
    }

    /// Waits for every submitted job to complete.
    fn shutdown(&self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl pcache::BaseDevice for AsyncBase {
    fn size(&self) -> u64 {
        self.file.size()
    }
    fn block_size(&self) -> u32 {
        self.file.block_size()
    }
    fn write(&self, offset: u64, data: Vec<u8>, done: pcache::base::Done) {
        self.submit(BaseJob::Write(offset, data, done));
    }
    fn flush(&self, done: pcache::base::Done) {
        self.submit(BaseJob::Flush(done));
    }
    fn read(&self, offset: u64, buf: Vec<u8>, done: pcache::base::ReadDone) {
        self.file.read(offset, buf, done);
    }
}

/// What the workers share during the drive phase.
struct DriveState {
    cache: Arc<Cache>,
    base: Arc<AsyncBase>,
    /// Woken when segments are freed.
    space: (Mutex<()>, Condvar),
    stop: AtomicBool,
    /// The cache reached its GC threshold.
    full: AtomicBool,
    failed: AtomicU64,
    gc_percent: u32,
    pacer: Mutex<pcache::Pacer>,
}

impl DriveState {
    /// One background step, as the SPDK module's pollers run it: kset timer,
    /// writeback paced for a busy front end (Cache::writeback_pace), GC.
    fn poll(&self) -> bool {
        if self.cache.used_percent() >= self.gc_percent {
            self.full.store(true, Ordering::Relaxed);
        }
        let busy_front = !self.stop.load(Ordering::Relaxed);
        let mut pacer = self.pacer.lock().unwrap_or_else(|e| e.into_inner());
        match self.cache.background_step_paced(&*self.base, &mut pacer, busy_front) {
            Ok(t) => t.did_work() || t.writeback_busy,
            Err(e) => {
                eprintln!("background work failed: {e}");
                self.failed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

fn drive(cache: &Arc<Cache>, base: &Arc<FileBase>, o: &Opts) -> Result<RunResult, String> {
    let sh = Arc::new(DriveState {
        cache: cache.clone(),
        base: Arc::new(AsyncBase::new(base.clone())),
        space: (Mutex::new(()), Condvar::new()),
        stop: AtomicBool::new(false),
        full: AtomicBool::new(false),
        failed: AtomicU64::new(0),
        gc_percent: cache.stats().gc_percent as u32,
        pacer: Mutex::new(pcache::Pacer::default()),
    });
    {
        let sh = Arc::downgrade(&sh);
        cache.set_space_notifier(Some(Box::new(move || {
            if let Some(sh) = sh.upgrade() {
                let _g = sh.space.0.lock().unwrap_or_else(|e| e.into_inner());
                sh.space.1.notify_all();
            }
        })));
    }
    let poller = (o.poller == Poller::Thread).then(|| {
        let sh = sh.clone();
        std::thread::spawn(move || poller_loop(&sh))
    });
    let t0 = Instant::now();
    let workers: Vec<_> = (0..o.workers)
        .map(|w| {
            let sh = sh.clone();
            let p = WorkerParams {
                w,
                bs: o.bs,
                blocks: o.base_size / o.bs,
                workload: o.workload,
                batch: o.batch as usize,
                nw: o.workers as u64,
                until_full: !o.sustained,
                polls: o.poller == Poller::Inline && w == 0,
            };
            std::thread::spawn(move || {
                if p.workload == Workload::RandWrite && p.batch > 1 {
                    batch_write_loop(&sh, p)
                } else {
                    worker_loop(&sh, p)
                }
            })
        })
        .collect();
    // Like the ceiling: the workers run until told to stop (or the cache fills).
    let deadline = t0 + Duration::from_secs(o.secs);
    // Run to the deadline, or until the cache fills (unless --sustained).
    while Instant::now() < deadline && (o.sustained || !sh.full.load(Ordering::Relaxed)) {
        std::thread::sleep(Duration::from_millis(1));
    }
    sh.stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut cpu_secs = 0.0;
    let mut lat = Hist::new();
    let mut verify_errors = 0;
    let mut err = None;
    for w in workers {
        match w.join().map_err(|_| "worker panicked".to_string()).and_then(|r| r) {
            Ok((ops, h, v, cpu)) => {
                total += ops;
                cpu_secs += cpu;
                lat.merge(&h);
                verify_errors += v;
            }
            Err(e) => err = Some(e),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if let Some(p) = poller {
        cpu_secs += p.join().unwrap_or(0.0);
    }
    cache.set_space_notifier(None);
    sh.base.shutdown();
    if let Some(e) = err {
        return Err(e);
    }
    if sh.failed.load(Ordering::Relaxed) > 0 {
        return Err("background work reported errors".into());
    }
    Ok(RunResult { ops: total, cpu_secs, secs, lat, verify_errors, filled: sh.full.load(Ordering::Relaxed) })
}

#[inline(never)]
fn poller_loop(sh: &DriveState) -> f64 {
    let cpu0 = thread_cpu();
    while !sh.stop.load(Ordering::Relaxed) {
        if !sh.poll() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    thread_cpu() - cpu0
}

struct WorkerParams {
    w: usize,
    bs: u64,
    blocks: u64,
    workload: Workload,
    batch: usize,
    nw: u64,
    until_full: bool,
    /// This worker runs the background steps.
    polls: bool,
}

#[inline(never)]
fn worker_loop(sh: &DriveState, p: WorkerParams) -> Result<(u64, Hist, u64, f64), String> {
    let cpu0 = thread_cpu();
    let WorkerParams { w, bs, blocks, workload, nw, until_full, polls, .. } = p;
    let cache = &*sh.cache;
    let mut rng = SmallRng::seed_from_u64(w as u64 * 1000 + 1);
    let mut lat = Hist::new();
    let mut wbuf = vec![0u8; bs as usize];
    let mut rbuf = vec![0u8; bs as usize];
    let mut ops = 0u64;
    let mut verify_errors = 0;
    // verify: newest sequence written to each block, and the blocks in write order.
    let mut newest: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut written: Vec<u64> = Vec::new();
    let mut seq = 0u64;
    while !sh.stop.load(Ordering::Relaxed) && (!until_full || !sh.full.load(Ordering::Relaxed)) {
        if polls && ops % POLL_EVERY == 0 {
            sh.poll();
        }
        let is_write = match workload {
            Workload::RandWrite => true,
            Workload::RandRead => false,
            Workload::Rw => rng.next_u64() & 1 == 0,
            Workload::Verify => written.is_empty() || rng.next_u64() & 1 == 0,
        };
        // verify: worker w owns blocks with index % workers == w.
        let blk = if workload == Workload::Verify {
            (rng.next_u64() % (blocks / nw)) * nw + w as u64
        } else {
            rng.next_u64() % blocks
        };
        let t = Instant::now();
        if is_write {
            seq += 1;
            if workload == Workload::Verify {
                fill_pattern(&mut wbuf, w as u64, seq, blk);
            }
            write_waiting(sh, polls, w, blk * bs, &wbuf)?;
            if workload == Workload::Verify && newest.insert(blk, seq).is_none() {
                written.push(blk);
            }
        } else if workload == Workload::Verify {
            let vblk = written[(rng.next_u64() % written.len() as u64) as usize];
            read_block(cache, &sh.base.file, w, vblk * bs, &mut rbuf)?;
            // The newest write to that block is what must come back.
            fill_pattern(&mut wbuf, w as u64, newest[&vblk], vblk);
            if rbuf != wbuf {
                verify_errors += 1;
            }
        } else {
            read_block(cache, &sh.base.file, w, blk * bs, &mut rbuf)?;
        }
        lat.add(t.elapsed().as_nanos() as u64);
        ops += 1;
    }
    Ok((ops, lat, verify_errors, thread_cpu() - cpu0))
}

/// randwrite with --batch: `batch` random blocks handed to the engine at
/// once; each counts the batch's time as its latency (they were in flight
/// together).
#[inline(never)]
fn batch_write_loop(sh: &DriveState, p: WorkerParams) -> Result<(u64, Hist, u64, f64), String> {
    let cpu0 = thread_cpu();
    let WorkerParams { w, bs, blocks, batch, until_full, polls, .. } = p;
    let mut rng = SmallRng::seed_from_u64(w as u64 * 1000 + 1);
    let mut lat = Hist::new();
    let wbuf = vec![0u8; bs as usize];
    let iov = [IoSlice::new(&wbuf)];
    let mut offs = vec![0u64; batch];
    let mut reqs = Vec::with_capacity(batch);
    let mut out = Vec::with_capacity(batch);
    let mut ops = 0u64;
    while !sh.stop.load(Ordering::Relaxed) && (!until_full || !sh.full.load(Ordering::Relaxed)) {
        if polls && ops % POLL_EVERY < batch as u64 {
            sh.poll();
        }
        for o in offs.iter_mut() {
            *o = (rng.next_u64() % blocks) * bs;
        }
        let t = Instant::now();
        reqs.clear();
        reqs.extend(offs.iter().map(|&offset| WriteReq { offset, data: &iov }));
        sh.cache.write_batch(w, &reqs, &mut out);
        for (r, o) in out.iter().zip(&offs) {
            match r {
                Ok(WriteOutcome::Done) => {}
                Ok(WriteOutcome::Deferred { written }) => {
                    write_waiting(sh, polls, w, o + written, &wbuf[*written as usize..])?;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        let ns = t.elapsed().as_nanos() as u64;
        for _ in 0..batch {
            lat.add(ns);
        }
        ops += batch as u64;
    }
    Ok((ops, lat, 0, thread_cpu() - cpu0))
}

fn fill_pattern(buf: &mut [u8], w: u64, seq: u64, blk: u64) {
    let mut rng = SmallRng::seed_from_u64(w << 48 ^ seq << 8 ^ blk);
    for c in buf.chunks_mut(8) {
        let v = rng.next_u64().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// Writes, and when the cache defers (no space), waits for GC to free space:
/// the polling worker runs background steps itself meanwhile.
fn write_waiting(sh: &DriveState, polls: bool, w: usize, off: u64, data: &[u8]) -> Result<(), String> {
    let mut done = 0usize;
    loop {
        let epoch = sh.cache.space_epoch();
        match sh.cache.write_buf(w, off + done as u64, &data[done..]).map_err(|e| e.to_string())? {
            WriteOutcome::Done => return Ok(()),
            WriteOutcome::Deferred { written } => {
                done += written as usize;
                if sh.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                if polls {
                    if !sh.poll() {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                } else {
                    let g = sh.space.0.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = sh
                        .space
                        .1
                        .wait_timeout_while(g, Duration::from_millis(10), |_| sh.cache.space_epoch() == epoch);
                }
            }
        }
    }
}

fn read_block(cache: &Cache, base: &FileBase, w: usize, off: u64, buf: &mut [u8]) -> Result<(), String> {
    use pcache::BaseDevice;
    let misses = cache.read(off, &mut [std::io::IoSliceMut::new(buf)]).map_err(|e| e.to_string())?;
    for m in misses {
        let (tx, rx) = std::sync::mpsc::channel();
        base.read(
            m.off,
            vec![0u8; m.len as usize],
            Box::new(move |b, r| {
                let _ = tx.send((b, r));
            }),
        );
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
    let mut rng = SmallRng::seed_from_u64(4242);
    let buf = vec![0x3cu8; 4096];
    let mut n = 0;
    while n < o.replay_keys {
        match cache.write_buf(0, (rng.next_u64() % blocks) * 4096, &buf).map_err(|e| e.to_string())? {
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
