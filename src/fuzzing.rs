//! The image-loading fuzz harness, shared by `fuzz/fuzz_targets/load_image.rs`
//! and the test suite: damage a valid cache image with arbitrary bytes, then
//! open it and drive reads, writeback and GC. Any panic is a bug.

use std::io::IoSliceMut;
use std::sync::Arc;

use once_cell::sync::Lazy;

use crate::cache::Cache;
use crate::config::{BaseIdentity, Config};
use crate::format::{SEG_PAYLOAD_OFF, SEG_START};
use crate::membase::MemBase;
use crate::pmem::{Media, MemMedia};

const SEG: u64 = 64 << 10;
const SEGS: u64 = 12;
const BASE: u64 = 1 << 20;

fn config() -> Config {
    let mut cfg = Config::new(BaseIdentity::named(BASE, 512, "fuzz"));
    cfg.seg_size = Some(SEG);
    cfg
}

/// A small cache image with dirty data in a few ksets.
static TEMPLATE: Lazy<Vec<u8>> = Lazy::new(|| {
    let media = Arc::new(MemMedia::new((SEG_START + SEGS * SEG) as usize));
    let (cache, _) = Cache::open(media.clone() as Arc<dyn Media>, &config()).expect("format");
    for i in 0..300u64 {
        let data = vec![i as u8; 512 * (1 + (i % 4) as usize)];
        let _ = cache.write_buf(0, (i * 7919 % 2000) * 512, &data);
        if i % 50 == 0 {
            let _ = cache.flush();
        }
    }
    let _ = cache.close();
    media.snapshot()
});

/// Overlays `data` on the template and exercises the result. The first 4
/// bytes choose where the overlay goes: with the low bit clear, somewhere in
/// the metadata and the start of the key log (where most of the checks
/// are); with it set, anywhere in the image (every key-log segment, and
/// the data the keys point to).
pub fn load_image(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let mut img = TEMPLATE.clone();
    let pick = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let span = if pick & 1 == 0 { (SEG_START + SEG_PAYLOAD_OFF + (16 << 10)) as usize } else { img.len() };
    let at = (pick >> 1) % span;
    let body = &data[4..];
    let n = body.len().min(img.len() - at);
    img[at..at + n].copy_from_slice(&body[..n]);
    let media: Arc<dyn Media> = Arc::new(MemMedia::from_image(img));
    let Ok((cache, _)) = Cache::open(media, &config()) else { return };
    let base = MemBase::new(BASE as usize, 512);
    let mut buf = vec![0u8; BASE as usize];
    let _ = cache.read(0, &mut [IoSliceMut::new(&mut buf)]);
    let _ = cache.write_buf(0, 4096, &[1u8; 4096]);
    for _ in 0..64 {
        if cache.background_step(&base).is_err() {
            break;
        }
    }
}
