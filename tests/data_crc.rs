//! Data CRC and a damaged data block: reads of it fail, writeback never
//! writes it to the base and stops there with a clear error, and an
//! overwrite of the damaged bytes lets writeback past them.

mod common;

use std::io::IoSliceMut;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pcache::pmem::{Media, MemMedia};
use pcache::{Error, WbProgress};

#[test]
fn a_damaged_block_stops_writeback_until_it_is_overwritten() {
    let media = Arc::new(MemMedia::new(media_len(16)));
    let base = base(1 << 20);
    let mut cfg = config(1 << 20, 1);
    cfg.data_crc = true;
    cfg.kset_flush_interval = Duration::ZERO;
    let cache = open(media.clone() as Arc<dyn Media>, &cfg);
    let a = write_data(1, 0, 8);
    let b = write_data(2, 128, 8);
    write_all(&cache, &base, 0, 0, &a);
    write_all(&cache, &base, 0, 128 * 512, &b);
    cache.flush_expired_ksets().unwrap();

    damage(&media, &a);

    // Reads of A fail; B reads fine.
    let mut buf = vec![0u8; 4096];
    assert!(matches!(cache.read(0, &mut [IoSliceMut::new(&mut buf)]), Err(Error::DataCrc { offset: 0, .. })));
    // A read of its middle names the whole damaged extent.
    let r = cache.read(1024, &mut [IoSliceMut::new(&mut buf[..1024])]);
    assert!(matches!(r, Err(Error::DataCrc { offset: 0, len: 4096 })), "{r:?}");
    assert_eq!(read_through(&cache, &base, 0, 128 * 512, 4096), b);

    // Writeback stops at A with the error, again and again; A never reaches the base.
    let mut errors = 0;
    for _ in 0..200 {
        match cache.writeback_step(&base) {
            Err(Error::DataCrc { offset: 0, .. }) => errors += 1,
            Err(e) => panic!("unexpected writeback error {e}"),
            Ok(WbProgress::Advanced) => panic!("writeback went past a damaged block"),
            Ok(_) => {}
        }
    }
    assert!(errors >= 2, "the error is reported each time writeback reaches A ({errors})");
    assert!(cache.stats().data_crc_errors >= 2);
    assert!(!cache.is_clean());
    assert!(base.visible_image()[..4096].iter().all(|&x| x == 0), "no damaged data on the base");

    // Overwriting A (same epoch) makes its damaged bytes unneeded: writeback
    // gets past them and puts everything on the base.
    let a2 = write_data(3, 0, 8);
    write_all(&cache, &base, 0, 0, &a2);
    cache.writeback_all(&base).unwrap();
    assert!(cache.is_clean());
    let img = base.visible_image();
    assert_eq!(&img[..4096], &a2[..]);
    assert_eq!(&img[128 * 512..128 * 512 + 4096], &b[..]);
}

/// Writes `data` at `off` into a new data-CRC cache on `media`, journals it,
/// and damages one byte of it on the media.
fn cache_with_damage(media: &Arc<MemMedia>, off: u64, data: &[u8]) -> pcache::Cache {
    let base = base(1 << 20);
    let mut cfg = config(1 << 20, 1);
    cfg.data_crc = true;
    let cache = open(media.clone() as Arc<dyn Media>, &cfg);
    write_all(&cache, &base, 0, off, data);
    cache.flush().unwrap();
    damage(media, data);
    cache
}

/// Finds `data` on the media and flips one bit of it.
fn damage(media: &MemMedia, data: &[u8]) {
    let mut img = vec![0u8; media.len() as usize];
    media.read(0, &mut img).unwrap();
    let at = img.windows(64).position(|w| w == &data[..64]).expect("the data is on the media") as u64;
    media.write(at + 100, &[img[at as usize + 100] ^ 0x40]).unwrap();
    media.fence();
}

fn read_fails(cache: &pcache::Cache, off: u64, len: usize) -> bool {
    let mut buf = vec![0u8; len];
    matches!(cache.read(off, &mut [IoSliceMut::new(&mut buf)]), Err(Error::DataCrc { .. }))
}

#[test]
fn cutting_a_damaged_extent_keeps_its_reads_failing() {
    // An overwrite of the undamaged second half trims the extent: the CRC
    // of what is left must not be taken from the damaged bytes as they are.
    let media = Arc::new(MemMedia::new(media_len(16)));
    let a = write_data(1, 0, 16);
    let cache = cache_with_damage(&media, 0, &a);
    assert!(read_fails(&cache, 0, 4096));
    let base = base(1 << 20);
    write_all(&cache, &base, 0, 4096, &write_data(2, 8, 8));
    assert!(read_fails(&cache, 0, 4096), "the damaged first half must still fail its CRC after the cut");
    assert_eq!(read_through(&cache, &base, 0, 4096, 4096), write_data(2, 8, 8));
}

#[test]
fn a_damaged_key_split_at_replay_still_fails_its_reads() {
    // A key across a 64 KiB bucket boundary is split into two extents when
    // replayed: neither piece may get a CRC computed from damaged data.
    let media = Arc::new(MemMedia::new(media_len(16)));
    let off = (64 << 10) - 8192;
    let a = write_data(1, off / 512, 32);
    drop(cache_with_damage(&media, off, &a));
    let mut cfg = config(1 << 20, 1);
    cfg.data_crc = true;
    let cache = open(media as Arc<dyn Media>, &cfg);
    assert!(read_fails(&cache, off, 4096), "the damaged piece");
    assert!(read_fails(&cache, off + 8192, 4096), "the other piece of the damaged key");
}

/// Writeback stopping at a damaged block late in a batch leaves the batch's
/// earlier writes in flight: it starts over only once they completed (a
/// write submitted again over one in flight could land first).
#[test]
fn writeback_stopped_by_a_damaged_block_waits_for_the_writes_it_had_out() {
    // Fewer than writeback keeps in flight (writeback.rs, WINDOW_RUNS), so
    // that all of them are out when it reaches the damaged block.
    const OUT: u64 = 40;
    let media = Arc::new(MemMedia::new(media_len(16)));
    let base = base(1 << 20);
    let mut cfg = config(1 << 20, 1);
    cfg.data_crc = true;
    let cache = open(media.clone() as Arc<dyn Media>, &cfg);
    for i in 0..OUT {
        write_all(&cache, &base, 0, i * 16 * 512, &write_data(i + 1, i * 16, 8));
    }
    let d = write_data(99, 1600, 8);
    write_all(&cache, &base, 0, 1600 * 512, &d);
    cache.flush().unwrap();
    damage(&media, &d);
    base.hold_completions(true);
    let mut stopped = false;
    for _ in 0..100 {
        if let Err(e) = cache.writeback_step(&base) {
            assert!(matches!(e, Error::DataCrc { .. }), "unexpected writeback error {e}");
            stopped = true;
            break;
        }
    }
    assert!(stopped, "writeback did not reach the damaged block");
    assert_eq!(base.in_flight(), OUT as usize, "the writes before the damaged block are out");
    for _ in 0..50 {
        let _ = cache.writeback_step(&base);
    }
    assert_eq!(base.in_flight(), OUT as usize, "writeback started over while its writes were in flight");
    base.hold_completions(false);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while cache.writeback_step(&base).is_ok() {
        assert!(std::time::Instant::now() < until, "writeback never stopped at the damaged block again");
    }
    assert!(!cache.is_clean());
    let img = base.visible_image();
    assert!((0..OUT).all(|i| who_wrote(&img[i as usize * 16 * 512..][..512], i * 16) == Some(i + 1)));
    assert!(img[1600 * 512..1608 * 512].iter().all(|&x| x == 0), "no damaged data on the base");
}
