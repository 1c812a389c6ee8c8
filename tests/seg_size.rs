//! Segment size: chosen for small devices, recorded at format, checked on open.

mod common;

use std::sync::Arc;

use common::*;
use pcache::config::auto_seg_size;
use pcache::format::{DEFAULT_SEG_SIZE, MIN_SEG_SIZE, SEG_START};
use pcache::pmem::{Media, MemMedia};
use pcache::{Cache, Error};

fn open_len(len: u64, seg_size: Option<u64>, workers: usize) -> pcache::Result<Cache> {
    let media = Arc::new(MemMedia::new(len as usize));
    let mut cfg = config(1 << 20, workers);
    cfg.seg_size = seg_size;
    Cache::open(media as Arc<dyn Media>, &cfg).map(|(c, _)| c)
}

#[test]
fn a_small_device_gets_smaller_segments() {
    // 128 MiB holds 7 segments of 16 MiB: too few.
    let c = open_len(128 << 20, None, 2).expect("a 128 MiB cache formats without a segment size");
    assert_eq!(c.superblock().seg_size as u64, 8 << 20);
    assert!(c.superblock().seg_count >= 8);
    // A large one keeps the default.
    assert_eq!(auto_seg_size(SEG_START + 64 * DEFAULT_SEG_SIZE, 2), DEFAULT_SEG_SIZE);
    // More workers need more segments.
    assert!(auto_seg_size(128 << 20, 64) < 8 << 20);
    // Nothing fits: the smallest size, and format says why.
    assert_eq!(auto_seg_size(SEG_START + 4 * MIN_SEG_SIZE, 1), MIN_SEG_SIZE);
    match open_len(SEG_START + 4 * MIN_SEG_SIZE, None, 1) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("at least 8"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("4 segments formatted"),
    }
}

#[test]
fn an_asked_for_size_is_recorded_and_checked() {
    let media = Arc::new(MemMedia::new(64 << 20));
    let mut cfg = config(1 << 20, 1);
    cfg.seg_size = Some(1 << 20);
    let c = open(media.clone() as Arc<dyn Media>, &cfg);
    assert_eq!(c.superblock().seg_size, 1 << 20);
    drop(c);
    cfg.seg_size = None;
    assert_eq!(open(media.clone() as Arc<dyn Media>, &cfg).superblock().seg_size, 1 << 20, "loaded as recorded");
    cfg.seg_size = Some(2 << 20);
    match Cache::open(media as Arc<dyn Media>, &cfg) {
        Err(Error::Mismatch(m)) => assert!(m.contains("segment size 2097152"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened with another segment size"),
    }
}
