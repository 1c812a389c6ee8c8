//! Damaged and crafted cache images: load uses the good replica or fails with
//! an error — never a panic, never wrong data. Covers bit flips, torn replicas
//! and truncations in every metadata structure, and each class from the
//! upstream hardening (crafted metadata with valid CRCs).

mod common;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use common::*;
use pcache::format::{
    self, encode_kset, KeyRecord, KsetHeader, LogPos, Record, Superblock, CACHE_INFO_OFF, DIRTY_TAIL_OFF,
    KEY_FLAG_DIRTY, KEY_TAIL_OFF, KSET_FLAG_LAST, KSET_MAX_KEYS, REC_DIRTY_TAIL, REC_KEY_TAIL, REC_SIZE, SEG_META_OFF,
};
use pcache::pmem::{Media, MemMedia};
use pcache::{Cache, Error, MemBase, Opened};

const BASE_SECTORS: u64 = 1024;
const SEGS: u64 = 16;

struct Image {
    bytes: Vec<u8>,
    base: Vec<u8>,
    /// sector -> id of its last write.
    model: Vec<u64>,
    head: LogPos,
    nonce: u64,
}

/// A cache with flushed dirty data, some of it written back.
fn build() -> Image {
    build_with(Plan { seed: 99, writes: 300, max_sectors: 8, gc_percent: 90, clean_every: 150, last_clean: 150 })
}

/// Like [`build`], but every segment goes round several times (written,
/// written back, reclaimed, handed out again) before the last writes, which
/// stay dirty: their keys name segments' newer generations.
fn build_reused() -> Image {
    build_with(Plan { seed: 1, writes: 3000, max_sectors: 64, gc_percent: 10, clean_every: 100, last_clean: 2900 })
}

struct Plan {
    seed: u64,
    writes: u64,
    max_sectors: u64,
    gc_percent: u8,
    /// Every this many writes up to `last_clean`: flush, write everything
    /// back, and let GC reclaim what it wants.
    clean_every: u64,
    last_clean: u64,
}

fn build_with(plan: Plan) -> Image {
    let media = Arc::new(MemMedia::new(media_len(SEGS)));
    let base = base((BASE_SECTORS * 512) as usize);
    let mut cfg = config(BASE_SECTORS * 512, 1);
    cfg.gc_percent = Some(plan.gc_percent);
    let cache = open(media.clone() as Arc<dyn Media>, &cfg);
    let mut model = vec![0u64; BASE_SECTORS as usize];
    let mut rng = SmallRng::seed_from_u64(plan.seed);
    for i in 1..=plan.writes {
        random_write(&cache, &base, &mut model, &mut rng, i, plan.max_sectors);
        if i % plan.clean_every == 0 && i <= plan.last_clean {
            cache.flush().unwrap();
            cache.writeback_all(&base).unwrap();
            while cache.gc_step().unwrap() > 0 {}
        }
    }
    cache.flush().unwrap();
    let pcache::format::LogPos { seg, off, seq } = cache.stats().key_head;
    let nonce = cache.superblock().nonce;
    cache.close().unwrap();
    Image { bytes: media.snapshot(), base: base.visible_image(), model, head: LogPos { seg, off, seq }, nonce }
}

/// Write `id`: 1 to `max_sectors` sectors somewhere, recorded in `model`.
fn random_write(cache: &Cache, base: &MemBase, model: &mut [u64], rng: &mut SmallRng, id: u64, max_sectors: u64) {
    let first = rng.next_u64() % BASE_SECTORS;
    let n = 1 + rng.next_u64() % max_sectors.min(BASE_SECTORS - first);
    write_all(cache, base, 0, first * 512, &write_data(id, first, n));
    for s in first..first + n {
        model[s as usize] = id;
    }
}

fn try_open(img: &[u8]) -> Result<Cache, Error> {
    let media: Arc<dyn Media> = Arc::new(MemMedia::from_image(img.to_vec()));
    Cache::open(media, &config(BASE_SECTORS * 512, 1)).map(|(c, _)| c)
}

/// Opens without panicking; returns the result.
fn open_no_panic(img: &[u8], what: &str) -> Result<Cache, Error> {
    catch_unwind(AssertUnwindSafe(|| try_open(img))).unwrap_or_else(|_| panic!("open panicked: {what}"))
}

fn assert_exact(c: &Cache, im: &Image, what: &str) {
    assert_model(c, &base_from(im.base.clone()), &im.model, what);
}

/// Every sector reads as its last write in `model`.
fn assert_model(c: &Cache, base: &MemBase, model: &[u64], what: &str) {
    let got = read_through(c, base, 0, 0, (BASE_SECTORS * 512) as usize);
    for s in 0..BASE_SECTORS {
        let who = who_wrote(&got[s as usize * 512..(s as usize + 1) * 512], s);
        assert_eq!(who, Some(model[s as usize]), "{what}: sector {s}");
    }
}

/// Every sector holds something that was written there at some time.
fn assert_plausible(c: &Cache, im: &Image, what: &str) {
    let base = base_from(im.base.clone());
    let got = read_through(c, &base, 0, 0, (BASE_SECTORS * 512) as usize);
    for s in 0..BASE_SECTORS {
        let who = who_wrote(&got[s as usize * 512..(s as usize + 1) * 512], s);
        assert!(who.is_some(), "{what}: sector {s} holds bytes never written there");
    }
}

fn is_corrupt_or_not_pcache(e: &Error) -> bool {
    matches!(e, Error::Corrupt { .. } | Error::NotPcache(_) | Error::Mismatch(_) | Error::InvalidArgument(_))
}

#[test]
fn intact_image_loads_exactly() {
    let im = build();
    let c = try_open(&im.bytes).unwrap();
    assert_exact(&c, &im, "intact");
}

/// Which slot of a replicated pair holds the newest valid record, and it.
fn newest_slot(img: &[u8], offs: [u64; 2], kind: u32) -> (usize, Record) {
    let rec = |i: usize| Record::decode(&img[offs[i] as usize..offs[i] as usize + REC_SIZE], kind);
    match (rec(0), rec(1)) {
        (Some(a), Some(b)) if b.seq.wrapping_sub(a.seq) as i32 > 0 => (1, b),
        (Some(a), _) => (0, a),
        (None, Some(b)) => (1, b),
        (None, None) => panic!("no valid record at {offs:x?}"),
    }
}

/// The newest valid record of a replicated pair, and the other slot's record.
fn replicas(img: &[u8], offs: [u64; 2], kind: u32) -> (LogPos, LogPos) {
    let (new, rec) = newest_slot(img, offs, kind);
    let at = offs[1 - new] as usize;
    let old = Record::decode(&img[at..at + REC_SIZE], kind).expect("an intact image has valid replicas");
    (LogPos::from_body(&rec), LogPos::from_body(&old))
}

/// Where segment `seg`'s metadata replicas are.
fn seg_meta_offs(seg: u64) -> [u64; 2] {
    let at = pcache::format::SEG_START + seg * SEG;
    [at + SEG_META_OFF[0], at + SEG_META_OFF[1]]
}

/// GC moved key_tail past the dirty_tail value before its last update; then
/// the newest dirty_tail replica is damaged. The survivor is behind key_tail,
/// which an intact image never shows: the cache still loads, exactly.
#[test]
fn a_lost_dirty_tail_replica_with_its_survivor_behind_key_tail_is_survived() {
    let im = build();
    let (key, _) = replicas(&im.bytes, KEY_TAIL_OFF, REC_KEY_TAIL);
    let (dirty_new, dirty_old) = replicas(&im.bytes, DIRTY_TAIL_OFF, REC_DIRTY_TAIL);
    assert!(
        dirty_old.seq < key.seq && key.seq <= dirty_new.seq,
        "build() leaves the older dirty_tail replica (seq {}) behind key_tail (seq {})",
        dirty_old.seq,
        key.seq
    );
    for &off in &DIRTY_TAIL_OFF {
        let at = off as usize;
        let rec = Record::decode(&im.bytes[at..at + REC_SIZE], REC_DIRTY_TAIL).unwrap();
        if LogPos::from_body(&rec) != dirty_new {
            continue;
        }
        let mut b = im.bytes.clone();
        b[at + 9] ^= 0x04;
        let c = open_no_panic(&b, "newest dirty_tail replica flipped").expect("loads from the other replica");
        assert_exact(&c, &im, "newest dirty_tail replica flipped");
        assert!(c.stats().dirty_tail.seq >= key.seq, "writeback starts at or after key_tail");
    }
}

/// GC moved key_tail on twice, and the segment the older value points into
/// was reused (for data: its kset is gone); then the newest key_tail replica
/// is damaged. The log from the survivor does not lead to dirty_tail: the
/// cache still loads, from dirty_tail, and serves every sector exactly (what
/// it drops before dirty_tail is on the base).
#[test]
fn a_lost_key_tail_replica_whose_survivor_points_into_a_reused_segment_is_survived() {
    let im = build();
    let (key_new, key_old) = replicas(&im.bytes, KEY_TAIL_OFF, REC_KEY_TAIL);
    assert!(key_old.seq < key_new.seq, "build() moves key_tail at least twice");
    let mut b = im.bytes.clone();
    let kset_at = (pcache::format::SEG_START + key_old.seg as u64 * SEG + format::SEG_PAYLOAD_OFF) as usize
        + key_old.off as usize;
    // Still the old kset (a dead one, behind key_tail)? Then its bytes are
    // taken by something else now (its header is enough: the kset after it
    // may be live); otherwise they were reused already.
    if u64::from_le_bytes(b[kset_at + 8..kset_at + 16].try_into().unwrap()) == key_old.seq {
        b[kset_at..kset_at + format::KSET_HDR_SIZE].fill(0x5a);
    }
    for &off in &KEY_TAIL_OFF {
        let at = off as usize;
        let rec = Record::decode(&im.bytes[at..at + REC_SIZE], REC_KEY_TAIL).unwrap();
        if LogPos::from_body(&rec) == key_new {
            b[at + 9] ^= 0x04;
        }
    }
    let c = open_no_panic(&b, "newest key_tail replica flipped, old key_tail's kset overwritten")
        .expect("loads from dirty_tail");
    assert_exact(&c, &im, "key_tail fallback");
    let (dirty, _) = replicas(&im.bytes, DIRTY_TAIL_OFF, REC_DIRTY_TAIL);
    assert_eq!(c.stats().key_tail.seq, dirty.seq, "the live log starts at dirty_tail");
    // pcache check agrees: damaged, loadable, and says why.
    let media: Arc<dyn Media> = Arc::new(MemMedia::from_image(b.clone()));
    let ins = pcache::inspect::inspect(media, pcache::inspect::InspectOptions::default()).unwrap();
    assert!(ins.usable(), "inspect calls it loadable: {:?}", ins.problems);
    assert!(
        ins.problems.iter().any(|p| p.location == "key_tail" && p.detail.contains("does not lead to dirty_tail")),
        "{:?}",
        ins.problems
    );
}

#[test]
fn one_bad_replica_of_each_record_is_survived() {
    let im = build();
    let mut records: Vec<(&str, [u64; 2])> =
        vec![("cache_info", CACHE_INFO_OFF), ("key_tail", KEY_TAIL_OFF), ("dirty_tail", DIRTY_TAIL_OFF)];
    for seg in [0u64, 1, 5, SEGS - 1] {
        records.push(("seg meta", seg_meta_offs(seg)));
    }
    for (name, offs) in records {
        for (slot, &off) in offs.iter().enumerate() {
            for damage in ["flip", "zero", "torn"] {
                let mut b = im.bytes.clone();
                let at = off as usize;
                match damage {
                    "flip" => b[at + 9] ^= 0x04,
                    "zero" => b[at..at + REC_SIZE].fill(0),
                    _ => b[at + 32..at + REC_SIZE].fill(0xa5),
                }
                let what = format!("{name} slot {slot} {damage}");
                let c = open_no_panic(&b, &what).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_exact(&c, &im, &what);
            }
        }
        // Both replicas gone: a clear error.
        let mut b = im.bytes.clone();
        b[offs[0] as usize + 20] ^= 1;
        b[offs[1] as usize + 20] ^= 1;
        let e = open_no_panic(&b, name).err().unwrap_or_else(|| panic!("{name}: both replicas bad but open succeeded"));
        assert!(matches!(e, Error::Corrupt { .. }), "{name}: {e}");
    }
}

/// On a cache whose segments went round many times, the newest key_tail
/// replica is damaged: replay starts at the older key_tail, before the last
/// kset GC reclaimed, whose keys name segments freed and handed out again
/// since. Those keys are stale (an older generation) and are skipped: every
/// sector still reads exactly.
#[test]
fn replay_from_before_a_segments_reuse_skips_its_older_keys() {
    let im = build_reused();
    let (key_new, key_old) = replicas(&im.bytes, KEY_TAIL_OFF, REC_KEY_TAIL);
    let mut b = im.bytes.clone();
    for &off in &KEY_TAIL_OFF {
        let at = off as usize;
        let rec = Record::decode(&im.bytes[at..at + REC_SIZE], REC_KEY_TAIL).unwrap();
        if LogPos::from_body(&rec) == key_new {
            b[at + 9] ^= 0x04;
        }
    }
    let media: Arc<dyn Media> = Arc::new(MemMedia::from_image(b));
    let (c, opened) = Cache::open(media, &config(BASE_SECTORS * 512, 1)).expect("loads from the older key_tail");
    let Opened::Loaded(report) = opened else { panic!("formatted a loaded cache") };
    assert_eq!(c.stats().key_tail.seq, key_old.seq, "replay starts at the older key_tail");
    assert!(report.stale_keys > 0, "no key of an older generation was read: {report:?}");
    assert_exact(&c, &im, "replay from the older key_tail");
}

/// A segment GC reclaimed and that was handed out again has a newer
/// generation than format gave it, and the keys of its new data name that
/// generation. The newest replica of a segment's metadata is damaged (of
/// every segment in turn: reused or not, data or key log): for a reused one
/// the survivor is one generation behind the keys. Load still serves every
/// sector exactly (the keys prove which generation the lost replica held);
/// the first GC step rewrites the lost replica; and the cache goes on
/// through many times its size of writes and a reopen without losing any.
#[test]
fn a_lost_generation_replica_of_a_segment_is_survived() {
    let im = build_reused();
    let mut reused = 0;
    for seg in 0..SEGS {
        let (slot, rec) = newest_slot(&im.bytes, seg_meta_offs(seg), format::REC_SEG_META);
        let gen = format::seg_meta_from_body(&rec).1;
        reused += u32::from(gen > 0);
        let mut b = im.bytes.clone();
        b[seg_meta_offs(seg)[slot] as usize + 9] ^= 0x04;
        let what = format!("segment {seg} (generation {gen}) newest metadata replica flipped");
        let media = Arc::new(MemMedia::from_image(b.clone()));
        let reopen = || {
            catch_unwind(AssertUnwindSafe(|| Cache::open(media.clone(), &config(BASE_SECTORS * 512, 1))))
                .unwrap_or_else(|_| panic!("open panicked: {what}"))
                .unwrap_or_else(|e| panic!("{what}: {e}"))
                .0
        };
        let c = reopen();
        assert_exact(&c, &im, &what);
        // The first GC step rewrites the lost replica.
        c.gc_step().unwrap();
        let repaired = media.snapshot();
        for at in seg_meta_offs(seg) {
            let rec = Record::decode(&repaired[at as usize..at as usize + REC_SIZE], format::REC_SEG_META);
            assert!(rec.is_some(), "{what}: the replica at {at:#x} is still lost after a GC step");
        }
        // Every segment is handed out again, several times.
        let base = base_from(im.base.clone());
        let mut model = im.model.clone();
        let mut rng = SmallRng::seed_from_u64(seg);
        for id in 10_000..10_300 {
            random_write(&c, &base, &mut model, &mut rng, id, 64);
        }
        c.flush().unwrap();
        assert_model(&c, &base, &model, &what);
        c.close().unwrap();
        assert_model(&reopen(), &base, &model, &format!("{what}, reopened"));
        // pcache check walks the log the same way: loadable, the replica reported.
        let media: Arc<dyn Media> = Arc::new(MemMedia::from_image(b));
        let ins = pcache::inspect::inspect(media, pcache::inspect::InspectOptions::default()).unwrap();
        assert!(ins.usable(), "{what}: inspect calls it unloadable: {:?}", ins.problems);
        assert!(
            ins.problems.iter().any(|p| p.location.contains(&format!("of segment {seg} metadata"))),
            "{what}: the lost replica is not reported: {:?}",
            ins.problems
        );
    }
    assert!(reused > 0, "build_reused() reuses segments");
}

#[test]
fn superblock_bit_flips_are_refused() {
    let im = build();
    for byte in 0..format::SB_SIZE {
        for bit in [0, 3, 7] {
            let mut b = im.bytes.clone();
            b[byte] ^= 1 << bit;
            let what = format!("superblock byte {byte} bit {bit}");
            let e = open_no_panic(&b, &what).err().unwrap_or_else(|| panic!("{what}: accepted"));
            assert!(is_corrupt_or_not_pcache(&e), "{what}: {e}");
        }
    }
}

#[test]
fn kset_bit_flips_never_panic_or_invent_data() {
    let im = build();
    let start = pcache::format::SEG_START as usize + format::SEG_PAYLOAD_OFF as usize;
    let mut rng = SmallRng::seed_from_u64(5);
    let mut loaded = 0;
    for i in 0..400 {
        let mut b = im.bytes.clone();
        let at = start + (rng.next_u64() % (im.head.off as u64 + 64)) as usize;
        b[at] ^= 1 << (rng.next_u64() % 8);
        let what = format!("kset flip {i} at {at}");
        if let Ok(c) = open_no_panic(&b, &what) {
            assert_plausible(&c, &im, &what);
            loaded += 1;
        }
    }
    assert!(loaded > 0, "some flips must leave a loadable (shorter) log");
}

#[test]
fn truncated_devices_are_refused() {
    let im = build();
    for len in [0usize, 100, 4096, 30000, 65536, 65536 + 4096, im.bytes.len() / 2, im.bytes.len() - 4096] {
        let b = im.bytes[..len].to_vec();
        let r = open_no_panic(&b, &format!("truncated to {len}"));
        assert!(r.is_err(), "truncated to {len}: accepted");
    }
}

/// Writes a crafted kset (valid CRC) at the log head, so replay reads it.
fn with_kset(im: &Image, hdr: KsetHeader, keys: &[KeyRecord]) -> Vec<u8> {
    let mut b = im.bytes.clone();
    let mut buf = Vec::new();
    let n = encode_kset(&mut buf, &hdr, keys);
    let at = (pcache::format::SEG_START + im.head.seg as u64 * SEG + format::SEG_PAYLOAD_OFF) as usize
        + im.head.off as usize;
    b[at..at + n].copy_from_slice(&buf[..n]);
    b
}

fn with_record(im: &Image, offs: [u64; 2], kind: u32, fill: impl Fn(&mut Record)) -> Vec<u8> {
    let mut b = im.bytes.clone();
    for (i, off) in offs.iter().enumerate() {
        let mut r = Record::new(kind, 1000 + i as u32);
        fill(&mut r);
        b[*off as usize..*off as usize + REC_SIZE].copy_from_slice(&r.encode());
    }
    b
}

#[test]
fn crafted_metadata_is_rejected() {
    let im = build();
    let hdr = |n: u16, flags: u16, next: u32| KsetHeader {
        seq: im.head.seq,
        nonce: im.nonce,
        key_num: n,
        flags,
        next_seg: next,
    };
    let key = |f: &dyn Fn(&mut KeyRecord)| {
        let mut k = KeyRecord { off: 0, len: 4096, flags: KEY_FLAG_DIRTY, seg: 3, seg_off: 0, gen: 0, data_crc: 0 };
        f(&mut k);
        k
    };
    let payload = (SEG - format::SEG_PAYLOAD_OFF) as u32;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("key segment id out of range", with_kset(&im, hdr(1, 0, 0), &[key(&|k| k.seg = 9999)])),
        ("key beyond the base device", with_kset(&im, hdr(1, 0, 0), &[key(&|k| k.off = BASE_SECTORS * 512)])),
        ("key offset+length overflows", with_kset(&im, hdr(1, 0, 0), &[key(&|k| k.off = u64::MAX - 511)])),
        ("key overruns its segment", with_kset(&im, hdr(1, 0, 0), &[key(&|k| k.seg_off = payload - 512)])),
        ("key crosses a subtree", with_kset(&im, hdr(1, 0, 0), &[key(&|k| k.off = (4 << 20) - 512)])),
        ("key into the key log", with_kset(&im, hdr(1, 0, 0), &[key(&|k| k.seg = im.head.seg)])),
        ("key from a future generation", with_kset(&im, hdr(1, 0, 0), &[key(&|k| k.gen = 77)])),
        ("key with unknown flags", with_kset(&im, hdr(1, 0, 0), &[key(&|k| k.flags = 0x80)])),
        ("kset chain cycle", with_kset(&im, hdr(0, KSET_FLAG_LAST, 0), &[])),
        ("next segment out of range", with_kset(&im, hdr(0, KSET_FLAG_LAST, 4000), &[])),
        (
            "key_tail offset out of bounds",
            with_record(&im, KEY_TAIL_OFF, REC_KEY_TAIL, |r| LogPos { seg: 0, off: payload + 64, seq: 1 }.to_body(r)),
        ),
        (
            "key_tail offset unaligned",
            with_record(&im, KEY_TAIL_OFF, REC_KEY_TAIL, |r| LogPos { seg: 0, off: 100, seq: 1 }.to_body(r)),
        ),
        (
            "key_tail segment out of range",
            with_record(&im, KEY_TAIL_OFF, REC_KEY_TAIL, |r| LogPos { seg: 5000, off: 0, seq: 1 }.to_body(r)),
        ),
        (
            "dirty_tail not on the chain",
            with_record(&im, DIRTY_TAIL_OFF, REC_DIRTY_TAIL, |r| LogPos { seg: 0, off: 64, seq: 999_999 }.to_body(r)),
        ),
        (
            "dirty_tail behind key_tail",
            with_record(&im, DIRTY_TAIL_OFF, REC_DIRTY_TAIL, |r| LogPos { seg: 0, off: 0, seq: 0 }.to_body(r)),
        ),
    ];
    // The generation segment `seg` has in the image (for keys that must be live).
    let gen_of = |seg: u64| {
        let off = (pcache::format::SEG_START + seg * SEG) as usize;
        [off, off + 4096]
            .iter()
            .filter_map(|&o| Record::decode(&im.bytes[o..o + REC_SIZE], format::REC_SEG_META))
            .max_by_key(|r| r.seq)
            .map(|r| format::seg_meta_from_body(&r).1)
            .expect("a valid segment record")
    };
    let data_seg = (0..SEGS).find(|&s| s != im.head.seg as u64 && s > 2).unwrap();
    let live = |f: &dyn Fn(&mut KeyRecord)| {
        key(&|k| {
            k.seg = data_seg as u32;
            k.gen = gen_of(data_seg);
            f(k)
        })
    };
    cases.extend([
        ("unaligned key", with_kset(&im, hdr(1, 0, 0), &[key(&|k| k.off = 100)])),
        ("empty key", with_kset(&im, hdr(1, 0, 0), &[key(&|k| k.len = 0)])),
        (
            "zero key with data fields",
            with_kset(&im, hdr(1, 0, 0), &[key(&|k| k.flags = KEY_FLAG_DIRTY | format::KEY_FLAG_ZERO)]),
        ),
    ]);
    // A zero key with any one data field set.
    let zero = |f: &dyn Fn(&mut KeyRecord)| {
        key(&|k| {
            k.flags = KEY_FLAG_DIRTY | format::KEY_FLAG_ZERO;
            k.seg = 0;
            f(k)
        })
    };
    cases.extend([
        ("zero key with a CRC flag", with_kset(&im, hdr(1, 0, 0), &[zero(&|k| k.flags |= format::KEY_FLAG_CRC)])),
        ("zero key with a segment offset", with_kset(&im, hdr(1, 0, 0), &[zero(&|k| k.seg_off = 4096)])),
        ("zero key with a generation", with_kset(&im, hdr(1, 0, 0), &[zero(&|k| k.gen = 1)])),
        ("zero key with a data CRC", with_kset(&im, hdr(1, 0, 0), &[zero(&|k| k.data_crc = 7)])),
    ]);
    cases.extend([
        (
            "data CRC flag on a cache without data CRC",
            with_kset(&im, hdr(1, 0, 0), &[live(&|k| k.flags = KEY_FLAG_DIRTY | format::KEY_FLAG_CRC)]),
        ),
        ("last kset carrying keys", with_kset(&im, hdr(1, KSET_FLAG_LAST, data_seg as u32), &[live(&|_| {})])),
        (
            "two keys naming the same pmem bytes",
            with_kset(&im, hdr(2, 0, 0), &[live(&|k| k.off = 0), live(&|k| k.off = 8192)]),
        ),
        (
            "gc_percent above 90",
            with_record(&im, CACHE_INFO_OFF, format::REC_CACHE_INFO, |r| {
                format::CacheInfo { gc_percent: 95, mode: 0 }.to_body(r)
            }),
        ),
        (
            "unknown cache mode",
            with_record(&im, CACHE_INFO_OFF, format::REC_CACHE_INFO, |r| {
                format::CacheInfo { gc_percent: 70, mode: 4 }.to_body(r)
            }),
        ),
        (
            "key_tail sequence number at u64::MAX",
            with_record(&im, KEY_TAIL_OFF, REC_KEY_TAIL, |r| LogPos { seg: 0, off: 0, seq: u64::MAX }.to_body(r)),
        ),
    ]);
    {
        let off = pcache::format::SEG_START + 2 * SEG;
        let b = with_record(&im, [off, off + 4096], format::REC_SEG_META, |r| format::seg_meta_body(r, 2, u64::MAX));
        cases.push(("segment generation at u64::MAX", b));
    }
    // The same two keys in separate ksets name the same bytes too.
    {
        let mut b = with_kset(&im, hdr(1, 0, 0), &[live(&|k| k.off = 0)]);
        let next = LogPos { seg: im.head.seg, off: im.head.off + format::kset_size(1) as u32, seq: im.head.seq + 1 };
        let mut buf = Vec::new();
        let h = KsetHeader { seq: next.seq, ..hdr(1, 0, 0) };
        let n = encode_kset(&mut buf, &h, &[live(&|k| k.off = 16384)]);
        let at =
            (pcache::format::SEG_START + next.seg as u64 * SEG + format::SEG_PAYLOAD_OFF) as usize + next.off as usize;
        b[at..at + n].copy_from_slice(&buf[..n]);
        cases.push(("two ksets' keys naming the same pmem bytes", b));
    }
    // key_num above 128 with a valid CRC.
    {
        let keys: Vec<KeyRecord> = (0..129).map(|i| key(&|k| k.off = i * 4096)).collect();
        let mut b = with_kset(&im, hdr(0, 0, 0), &[]);
        let mut buf = Vec::new();
        let n = encode_kset(&mut buf, &hdr(129, 0, 0), &keys);
        let at = (pcache::format::SEG_START + im.head.seg as u64 * SEG + format::SEG_PAYLOAD_OFF) as usize
            + im.head.off as usize;
        let n = n.min(b.len() - at);
        b[at..at + n].copy_from_slice(&buf[..n]);
        cases.push(("kset with 129 keys", b));
    }
    // Empty ksets up to near the end of the head's segment, then one whose
    // 128 keys would run past it (its bytes cut at the segment's end).
    {
        let mut b = im.bytes.clone();
        let seg_at = (pcache::format::SEG_START + im.head.seg as u64 * SEG + format::SEG_PAYLOAD_OFF) as usize;
        let mut pos = im.head;
        let mut buf = Vec::new();
        let flags = format::KSET_FLAG_MARKS | format::KSET_FLAG_FLUSH;
        while (payload - pos.off) as usize >= format::kset_size(KSET_MAX_KEYS) {
            let n = encode_kset(&mut buf, &KsetHeader { seq: pos.seq, ..hdr(0, flags, 0) }, &[]);
            b[seg_at + pos.off as usize..seg_at + pos.off as usize + n].copy_from_slice(&buf[..n]);
            pos.off += n as u32;
            pos.seq += 1;
        }
        let keys: Vec<KeyRecord> = (0..KSET_MAX_KEYS as u64).map(|i| key(&|k| k.off = i * 4096)).collect();
        encode_kset(&mut buf, &KsetHeader { seq: pos.seq, ..hdr(0, 0, 0) }, &keys);
        let n = (payload - pos.off) as usize;
        b[seg_at + pos.off as usize..seg_at + pos.off as usize + n].copy_from_slice(&buf[..n]);
        cases.push(("kset overrunning its segment", b));
    }
    // A superblock claiming more segments than the device holds.
    {
        let mut b = im.bytes.clone();
        let mut sb = Superblock::decode(&b[..format::SB_SIZE], b.len() as u64).unwrap();
        sb.seg_count = 4096;
        b[..format::SB_SIZE].copy_from_slice(&sb.encode());
        cases.push(("segment count beyond the device", b));
    }
    // A segment metadata record that names another segment.
    {
        let off = pcache::format::SEG_START + 2 * SEG;
        let b = with_record(&im, [off, off + 4096], format::REC_SEG_META, |r| format::seg_meta_body(r, 7, 0));
        cases.push(("segment metadata for another segment", b));
    }
    // What the refusal must say, where one check alone must catch the case.
    let says = [
        ("unaligned key", "unaligned or empty"),
        ("empty key", "unaligned or empty"),
        ("zero key with data fields", "zero key with data fields"),
        ("zero key with a CRC flag", "zero key with data fields"),
        ("zero key with a segment offset", "zero key with data fields"),
        ("zero key with a generation", "zero key with data fields"),
        ("zero key with a data CRC", "zero key with data fields"),
        ("data CRC flag on a cache without data CRC", "data CRC flag disagrees"),
        ("last kset carrying keys", "last kset carries keys"),
        ("two keys naming the same pmem bytes", "two keys name the same bytes"),
        ("two ksets' keys naming the same pmem bytes", "two keys name the same bytes"),
        ("gc_percent above 90", "gc_percent 95 > 90"),
        ("unknown cache mode", "unknown cache mode 4"),
        ("key_tail sequence number at u64::MAX", "impossibly large"),
        ("key_tail offset out of bounds", "out of range"),
        ("key_tail offset unaligned", "offset 100 out of range"),
        ("kset overrunning its segment", "overruns its segment"),
        ("segment generation at u64::MAX", "impossibly large"),
    ];
    // A refusal of a kset says where the kset is.
    let at = format!("kset seq {} at segment {} offset {:#x}", im.head.seq, im.head.seg, im.head.off);
    for what in ["kset chain cycle", "next segment out of range", "kset with 129 keys"] {
        let b = &cases.iter().find(|c| c.0 == what).expect("a case of that name").1;
        match open_no_panic(b, what) {
            Err(e) => assert!(e.to_string().contains(&at), "{what}: {e} does not say {at}"),
            Ok(_) => panic!("{what}: crafted image was accepted"),
        }
    }
    for (what, b) in cases {
        match open_no_panic(&b, what) {
            Err(e) => {
                assert!(matches!(e, Error::Corrupt { .. }), "{what}: unexpected error kind: {e}");
                if let Some((_, want)) = says.iter().find(|(w, _)| *w == what) {
                    assert!(e.to_string().contains(want), "{what}: refused for another reason: {e}");
                }
            }
            Ok(_) => panic!("{what}: crafted image was accepted"),
        }
    }
}

#[test]
fn random_metadata_mutations_never_panic() {
    let im = build();
    let mut rng = SmallRng::seed_from_u64(1234);
    let meta_end = (pcache::format::SEG_START + format::SEG_PAYLOAD_OFF + im.head.off as u64 + 256) as usize;
    for i in 0..1500 {
        let mut b = im.bytes.clone();
        for _ in 0..1 + rng.next_u64() % 8 {
            let at = (rng.next_u64() % meta_end as u64) as usize;
            b[at] = rng.next_u64() as u8;
        }
        let what = format!("mutation {i}");
        if let Ok(c) = open_no_panic(&b, &what) {
            assert_plausible(&c, &im, &what);
        }
    }
}

#[test]
fn fuzz_harness_survives_random_inputs() {
    // The same harness the cargo-fuzz target runs, over seeded random inputs.
    let mut rng = SmallRng::seed_from_u64(77);
    for i in 0..800 {
        let len = 4 + (rng.next_u64() % 300) as usize;
        let input: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        catch_unwind(|| pcache::fuzzing::load_image(&input))
            .unwrap_or_else(|_| panic!("fuzz input {i} panicked: {input:?}"));
    }
}

/// What replay reports having read (the figures `pcache bench` divides by
/// its time): every kset and key from key_tail, the dirty bytes among them.
#[test]
fn replay_reports_the_ksets_keys_and_dirty_bytes_it_read() {
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(SEGS)));
    let base = base((BASE_SECTORS * 512) as usize);
    let mut cfg = config(BASE_SECTORS * 512, 1);
    cfg.kset_flush_interval = std::time::Duration::ZERO;
    let cache = open(media.clone(), &cfg);
    for i in 0..5u64 {
        write_all(&cache, &base, 0, i * 8192, &write_data(i + 1, i * 16, 8));
        cache.flush_expired_ksets().unwrap();
    }
    cache.write_zeroes(100 * 512, 8192).unwrap();
    cache.flush().unwrap();
    drop(cache);
    let (_c, opened) = Cache::open(media, &cfg).unwrap();
    let pcache::Opened::Loaded(rep) = opened else { panic!("the cache was formatted again") };
    assert_eq!((rep.keys, rep.stale_keys), (6, 0), "{rep:?}");
    assert_eq!(rep.dirty_bytes, 5 * 4096 + 8192, "{rep:?}");
    assert!(rep.ksets >= 6, "{rep:?}");
}

/// A key naming an older generation of its segment (the segment was freed
/// and handed out again since) is stale: replay skips it, and its range
/// reads as it would without it.
#[test]
fn a_key_of_an_older_generation_of_its_segment_is_skipped() {
    let im = build();
    let seg = (0..SEGS).find(|&s| s != im.head.seg as u64 && s > 2).unwrap();
    let off = pcache::format::SEG_START + seg * SEG;
    // The segment is at generation 2 now.
    let bumped = with_record(&im, [off, off + 4096], format::REC_SEG_META, |r| format::seg_meta_body(r, seg as u32, 2));
    let bumped_im =
        Image { bytes: bumped, base: im.base.clone(), model: im.model.clone(), head: im.head, nonce: im.nonce };
    let key = KeyRecord { off: 0, len: 4096, flags: KEY_FLAG_DIRTY, seg: seg as u32, seg_off: 0, gen: 1, data_crc: 0 };
    let hdr = KsetHeader { seq: im.head.seq, nonce: im.nonce, key_num: 1, flags: format::KSET_FLAG_MARKS, next_seg: 0 };
    let with_stale = with_kset(&bumped_im, hdr, &[key]);
    let read = |img: &[u8]| {
        let c = try_open(img).expect("the image loads");
        read_through(&c, &base_from(im.base.clone()), 0, 0, 4096)
    };
    assert_eq!(read(&with_stale), read(&bumped_im.bytes), "the stale key was replayed");
}
