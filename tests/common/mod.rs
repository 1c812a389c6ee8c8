//! Helpers shared by the integration tests.
#![allow(dead_code)]

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::io::IoSliceMut;
use std::sync::Arc;
use std::time::Duration;

use pcache::pmem::Media;
use pcache::{BaseDevice, BaseIdentity, Cache, Config, MemBase};

pub const SEG: u64 = 64 << 10;
pub const SECTOR: usize = 512;

/// The base device the engine's tests run against: it completes I/O later,
/// in any order, from a thread of its own, as a real device does.
pub fn base(size: usize) -> MemBase {
    MemBase::device(size, 512, base_seed())
}

/// The same over existing contents.
pub fn base_from(image: Vec<u8>) -> MemBase {
    MemBase::device_from_image(image, 512, base_seed())
}

/// Seeds the device's choices of completion order: PCACHE_BASE_SEED, or a
/// new one per device (thread timing varies from run to run anyway).
fn base_seed() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match std::env::var("PCACHE_BASE_SEED").ok().and_then(|s| s.parse::<u64>().ok()) {
        Some(s) => s.wrapping_add(n),
        None => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
                ^ n
        }
    }
}

pub fn config(base_size: u64, workers: usize) -> Config {
    let mut cfg = Config::new(BaseIdentity::named(base_size, 512, "test-base"));
    cfg.seg_size = Some(SEG);
    cfg.workers = workers;
    cfg.kset_flush_interval = Duration::from_millis(5);
    cfg
}

/// Media bytes for `segs` segments of SEG bytes.
pub fn media_len(segs: u64) -> usize {
    (pcache::format::SEG_START + segs * SEG) as usize
}

pub fn open(media: Arc<dyn Media>, cfg: &Config) -> Cache {
    Cache::open(media, cfg).map(|(c, _)| c).unwrap_or_else(|e| panic!("open failed: {e}"))
}

/// Reads through the cache: hits from pmem, misses from the base (then
/// cached if read caching is on), the way a host does.
pub fn read_through(cache: &Cache, base: &dyn BaseDevice, worker: usize, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let misses = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        cache.read(off, &mut iov).unwrap_or_else(|e| panic!("read at {off}: {e}"))
    };
    for m in misses {
        let (tx, rx) = std::sync::mpsc::channel();
        base.read(m.off, vec![0u8; m.len as usize], Box::new(move |b, r| tx.send((b, r)).unwrap()));
        let (data, r) = rx.recv().unwrap();
        r.unwrap_or_else(|e| panic!("base read: {e}"));
        buf[m.buf_at as usize..m.buf_at as usize + m.len as usize].copy_from_slice(&data);
        cache.fill(worker, &m, &data).unwrap();
    }
    buf
}

/// A sector's worth of bytes that names the write that produced it.
pub fn pattern(write_id: u64, sector: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(write_id.wrapping_mul(0x1000_0000_01B3) ^ sector);
    let mut v = Vec::with_capacity(SECTOR);
    while v.len() < SECTOR {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v[..8].copy_from_slice(&write_id.to_le_bytes());
    v[8..16].copy_from_slice(&sector.to_le_bytes());
    v
}

/// Data for a write of `sectors` sectors starting at sector `first`.
pub fn write_data(write_id: u64, first: u64, sectors: u64) -> Vec<u8> {
    (first..first + sectors).flat_map(|s| pattern(write_id, s)).collect()
}

/// Which write produced this sector's bytes (0 = never written, all zeros).
pub fn who_wrote(sector_bytes: &[u8], sector: u64) -> Option<u64> {
    if sector_bytes.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let id = u64::from_le_bytes(sector_bytes[..8].try_into().unwrap());
    (pattern(id, sector) == sector_bytes).then_some(id)
}

/// Zeroes a range, retrying deferred parts after running background work.
pub fn zero_all(cache: &Cache, base: &dyn BaseDevice, off: u64, len: u64) {
    let mut done = 0u64;
    loop {
        match cache.write_zeroes(off + done, len - done).unwrap() {
            pcache::WriteOutcome::Done => return,
            pcache::WriteOutcome::Deferred { written } => {
                done += written;
                cache.background_step(base).unwrap();
            }
        }
    }
}

/// Runs a base I/O and waits for its completion.
pub fn wait_base(submit: impl FnOnce(pcache::base::Done)) -> pcache::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    submit(Box::new(move |r| tx.send(r).unwrap()));
    rx.recv().unwrap()
}

/// Writes as a host does: into the cache, or, when the cache defers the
/// whole write for lack of space and lets it, straight to the base
/// (`Cache::admit_deferred`). Returns whether it went to the base.
pub fn write_or_bypass(cache: &Cache, base: &dyn BaseDevice, worker: usize, off: u64, data: &[u8]) -> bool {
    match cache.write_buf(worker, off, data).unwrap() {
        pcache::WriteOutcome::Done => false,
        pcache::WriteOutcome::Deferred { written: 0 } => match cache.admit_deferred(off, data.len() as u64).base() {
            Some(b) => {
                let r = wait_base(|done| base.write(off, data.to_vec(), done));
                cache.end_bypass(b, r.is_ok());
                r.unwrap();
                true
            }
            None => {
                write_all(cache, base, worker, off, data);
                false
            }
        },
        pcache::WriteOutcome::Deferred { written } => {
            write_all(cache, base, worker, off + written, &data[written as usize..]);
            false
        }
    }
}

/// Writes, retrying deferred parts after running background work (a host's queue).
pub fn write_all(cache: &Cache, base: &dyn BaseDevice, worker: usize, off: u64, data: &[u8]) {
    let mut done = 0usize;
    loop {
        match cache.write_buf(worker, off + done as u64, &data[done..]).unwrap() {
            pcache::WriteOutcome::Done => return,
            pcache::WriteOutcome::Deferred { written } => {
                done += written as usize;
                cache.background_step(base).unwrap();
            }
        }
    }
}

/// Writes `writes` (offset, data) as one batch; parts the cache defers are
/// written afterwards, in order, with [`write_all`]. Returns each write's
/// result as the batch reported it.
pub fn write_batch_all(
    cache: &Cache,
    base: &dyn BaseDevice,
    worker: usize,
    writes: &[(u64, Vec<u8>)],
) -> Vec<pcache::Result<pcache::WriteOutcome>> {
    write_batch_with(cache, base, worker, writes, false)
}

/// The same, but a deferred write goes to the base instead where the cache
/// lets it, as the SPDK module does (see [`write_or_bypass`]).
pub fn write_batch_or_bypass(
    cache: &Cache,
    base: &dyn BaseDevice,
    worker: usize,
    writes: &[(u64, Vec<u8>)],
) -> Vec<pcache::Result<pcache::WriteOutcome>> {
    write_batch_with(cache, base, worker, writes, true)
}

fn write_batch_with(
    cache: &Cache,
    base: &dyn BaseDevice,
    worker: usize,
    writes: &[(u64, Vec<u8>)],
    bypass: bool,
) -> Vec<pcache::Result<pcache::WriteOutcome>> {
    let iovs: Vec<[std::io::IoSlice; 1]> = writes.iter().map(|(_, d)| [std::io::IoSlice::new(d)]).collect();
    let reqs: Vec<pcache::WriteReq> =
        writes.iter().zip(&iovs).map(|((off, _), iov)| pcache::WriteReq { offset: *off, data: iov }).collect();
    let mut out = Vec::new();
    cache.write_batch(worker, &reqs, &mut out);
    assert_eq!(out.len(), writes.len(), "one result per request");
    for ((off, data), r) in writes.iter().zip(&out) {
        match r {
            Ok(pcache::WriteOutcome::Deferred { written: 0 }) if bypass => {
                write_or_bypass(cache, base, worker, *off, data);
            }
            Ok(pcache::WriteOutcome::Deferred { written }) => {
                write_all(cache, base, worker, off + written, &data[*written as usize..]);
            }
            _ => {}
        }
    }
    out
}
