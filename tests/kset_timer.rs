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
