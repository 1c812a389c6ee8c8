//! The kset timer: an open kset is journalled once its interval has passed
//! since its first key, not before, and a poller tick that finds nothing due
//! journals nothing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pcache::pmem::{Media, MemMedia};

#[test]
fn open_kset_is_sealed_when_due_and_not_before() {
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(16)));
    let mut cfg = config(8 << 20, 2);
    cfg.kset_flush_interval = Duration::from_millis(500);
    let cache = open(media, &cfg);
    assert_eq!(cache.flush_expired_ksets().unwrap(), 0, "nothing open");
    cache.write_buf(0, 0, &[1u8; 4096]).unwrap();
    assert_eq!(cache.flush_expired_ksets().unwrap(), 0, "not due yet");
    std::thread::sleep(Duration::from_millis(550));
    // A second kset (another worker's) opened later is not due when the first one is.
    cache.write_buf(1, 4 << 20, &[2u8; 4096]).unwrap();
    assert_eq!(cache.flush_expired_ksets().unwrap(), 1, "the first kset is due");
    assert_eq!(cache.flush_expired_ksets().unwrap(), 0, "the second is not due yet");
    std::thread::sleep(Duration::from_millis(550));
    assert_eq!(cache.flush_expired_ksets().unwrap(), 1, "the second kset is due");
    assert_eq!(cache.flush_expired_ksets().unwrap(), 0, "nothing open any more");
    assert_eq!(cache.stats().kset_flushes, 2);
}

/// Batched writes and read fills go to their worker's own kset too: a
/// second worker's key, added after the first worker's kset is due, is not
/// journalled with it.
#[test]
fn batched_writes_and_fills_go_to_their_workers_kset() {
    for path in ["batch", "fill"] {
        let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(16)));
        let mut cfg = config(8 << 20, 2);
        cfg.kset_flush_interval = Duration::from_millis(500);
        let cache = open(media, &cfg);
        cache.write_buf(0, 0, &[1u8; 4096]).unwrap();
        std::thread::sleep(Duration::from_millis(550));
        let data = [2u8; 4096];
        match path {
            "batch" => {
                // Two requests: one alone takes the single-write path.
                let iov = [std::io::IoSlice::new(&data)];
                let reqs = [
                    pcache::WriteReq { offset: 4 << 20, data: &iov },
                    pcache::WriteReq { offset: 5 << 20, data: &iov },
                ];
                let mut out = Vec::new();
                cache.write_batch(1, &reqs, &mut out);
                assert!(matches!(out[..], [Ok(pcache::WriteOutcome::Done), Ok(pcache::WriteOutcome::Done)]), "{out:?}");
            }
            _ => {
                let mut buf = [0u8; 4096];
                let misses = cache.read(4 << 20, &mut [std::io::IoSliceMut::new(&mut buf)]).unwrap();
                assert!(cache.fill(1, &misses[0], &data).unwrap(), "the fill went in");
            }
        }
        assert_eq!(cache.flush_expired_ksets().unwrap(), 1, "{path}: only the first kset is due");
        assert_eq!(cache.flush_expired_ksets().unwrap(), 0, "{path}: the second is not due yet");
        std::thread::sleep(Duration::from_millis(550));
        assert_eq!(cache.flush_expired_ksets().unwrap(), 1, "{path}: the second kset is due");
    }
}

/// While writes wait for space, a tick journals every open kset, due or not:
/// GC can reclaim nothing an open kset still points into.
#[test]
fn writes_waiting_for_space_have_every_open_kset_sealed_at_once() {
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(24)));
    let mut cfg = config(64 << 20, 2);
    cfg.kset_flush_interval = Duration::from_secs(3600);
    let cache = open(media, &cfg);
    let data = [7u8; 4096];
    let mut off = 0;
    let full = loop {
        let worker = (off / 4096 % 2) as usize;
        match cache.write_buf(worker, off, &data).unwrap() {
            pcache::WriteOutcome::Done => off += 4096,
            pcache::WriteOutcome::Deferred { .. } => break off,
        }
        assert!(off < 64 << 20, "the cache never filled");
    };
    assert!(full > 0);
    assert!(cache.under_pressure(), "a write waits for space");
    let open_before = cache.stats().kset_flushes;
    let sealed = cache.flush_expired_ksets().unwrap();
    assert!(sealed >= 1, "no open kset was journalled though writes wait for space");
    assert_eq!(cache.stats().kset_flushes, open_before + sealed as u64);
    assert_eq!(cache.flush_expired_ksets().unwrap(), 0, "nothing left open");
}
