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

    // Damage A's data on the media: find its bytes and flip one.
    let mut img = vec![0u8; media.len() as usize];
    media.read(0, &mut img).unwrap();
    let at = img.windows(64).position(|w| w == &a[..64]).expect("A's data is on the media") as u64;
    media.write(at + 100, &[img[at as usize + 100] ^ 0x40]).unwrap();
    media.fence();

    // Reads of A fail; B reads fine.
    let mut buf = vec![0u8; 4096];
    assert!(matches!(cache.read(0, &mut [IoSliceMut::new(&mut buf)]), Err(Error::DataCrc { offset: 0, .. })));
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
