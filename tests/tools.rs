//! The offline tools (`pcache inspect`, `check`, `flush`, `format`), run as
//! the real binary on image files built with the engine: good, dirty,
//! damaged, crafted and power-failed images.

mod common;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use pcache::format::{
    self, encode_kset, KeyRecord, KsetHeader, LogPos, CACHE_INFO_OFF, DIRTY_TAIL_OFF, KEY_FLAG_DIRTY, KEY_TAIL_OFF,
    SEG_START,
};
use pcache::pmem::{CrashSim, Media, MemMedia};
use pcache::replay::ReplayReport;
use pcache::{Cache, Opened, Stats, WbProgress};
use serde_json::Value as Json;

const BASE_SECTORS: u64 = 1024;
const BASE_BYTES: u64 = BASE_SECTORS * 512;
const SEGS: u64 = 16;

// --- running the binary -------------------------------------------------------

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn pcache(args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_pcache"))
        .args(args)
        .env("PMEM_IS_PMEM_FORCE", "1")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run pcache");
    Out {
        code: o.status.code().expect("pcache exited by a signal"),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn show(o: &Out) -> String {
    format!("exit {}\n--- stdout\n{}--- stderr\n{}", o.code, o.stdout, o.stderr)
}

/// Asserts the exit status; returns the output for further checks.
fn expect(args: &[&str], code: i32) -> Out {
    let o = pcache(args);
    assert_eq!(o.code, code, "pcache {args:?}\n{}", show(&o));
    o
}

/// Stderr is exactly one line of the form "pcache: <what>: <why>".
fn assert_one_line_error(o: &Out) {
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line\n{}", show(o));
    assert!(lines[0].starts_with("pcache: ") && lines[0][8..].contains(": "), "{}", show(o));
    assert!(!o.stderr.contains("panicked") && !o.stderr.contains("internal error"), "{}", show(o));
}

/// A scratch directory (on /dev/shm when there is one), removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let root = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let d = root.join(format!("pcache-tools-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(p: &str) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

// --- images built with the engine ---------------------------------------------

struct Image {
    pmem: Vec<u8>,
    base: Vec<u8>,
    /// sector -> id of its newest write.
    model: Vec<u64>,
    head: LogPos,
    nonce: u64,
}

/// 300 writes (every 25th a WRITE_ZEROES); half written back; all journalled. `clean` writes the rest back too.
fn build(data_crc: bool, clean: bool) -> Image {
    let media = Arc::new(MemMedia::new(media_len(SEGS)));
    let base = base(BASE_BYTES as usize);
    let mut cfg = config(BASE_BYTES, 1);
    cfg.gc_percent = Some(90);
    cfg.data_crc = data_crc;
    let cache = open(media.clone() as Arc<dyn Media>, &cfg);
    let mut model = vec![0u64; BASE_SECTORS as usize];
    let mut rng = SmallRng::seed_from_u64(99);
    for i in 1..=300u64 {
        let first = rng.next_u64() % BASE_SECTORS;
        let n = 1 + rng.next_u64() % 8.min(BASE_SECTORS - first);
        if i % 25 == 0 {
            // Some WRITE_ZEROES too: zero keys go through every tool.
            zero_all(&cache, &base, first * 512, n * 512);
            for s in first..first + n {
                model[s as usize] = 0;
            }
        } else {
            write_all(&cache, &base, 0, first * 512, &write_data(i, first, n));
            for s in first..first + n {
                model[s as usize] = i;
            }
        }
        if i == 150 {
            cache.writeback_all(&base).unwrap();
        }
    }
    cache.flush().unwrap();
    if clean {
        cache.writeback_all(&base).unwrap();
    }
    let pcache::format::LogPos { seg, off, seq } = cache.stats().key_head;
    let nonce = cache.superblock().nonce;
    cache.close().unwrap();
    Image { pmem: media.snapshot(), base: base.visible_image(), model, head: LogPos { seg, off, seq }, nonce }
}

/// What the engine finds in an image.
fn engine_view(img: &[u8], data_crc: bool) -> Result<(ReplayReport, Stats, Cache), pcache::Error> {
    let media: Arc<dyn Media> = Arc::new(MemMedia::from_image(img.to_vec()));
    let mut cfg = config(BASE_BYTES, 1);
    cfg.data_crc = data_crc;
    let (c, opened) = Cache::open(media, &cfg)?;
    let Opened::Loaded(rep) = opened else { panic!("image was formatted, not loaded") };
    let st = c.stats();
    Ok((rep, st, c))
}

/// A crafted kset with a valid CRC written at the log head, so replay reads it.
fn with_kset(im: &Image, keys: &[KeyRecord]) -> Vec<u8> {
    let mut b = im.pmem.clone();
    let hdr = KsetHeader { seq: im.head.seq, nonce: im.nonce, key_num: keys.len() as u16, flags: 0, next_seg: 0 };
    let mut buf = Vec::new();
    let n = encode_kset(&mut buf, &hdr, keys);
    let at = (SEG_START + im.head.seg as u64 * SEG + format::SEG_PAYLOAD_OFF) as usize + im.head.off as usize;
    b[at..at + n].copy_from_slice(&buf[..n]);
    b
}

fn seg_meta_offs(seg: u64) -> [u64; 2] {
    let b = SEG_START + seg * SEG;
    [b, b + 4096]
}

/// Every sector of `base` holds the newest write of the model.
fn assert_base_is_model(base: &[u8], model: &[u64], what: &str) {
    for s in 0..BASE_SECTORS {
        let who = who_wrote(&base[s as usize * 512..(s as usize + 1) * 512], s);
        assert_eq!(who, Some(model[s as usize]), "{what}: base sector {s}");
    }
}

// --- reading the --json outputs ---------------------------------------------------

/// Dotted-path access to a report, failing the test with the path on a
/// missing field or a wrong type.
trait Report {
    fn at(&self, path: &str) -> &Json;
    fn u(&self, path: &str) -> u64;
    fn s(&self, path: &str) -> &str;
    fn arr(&self, path: &str) -> &[Json];
}

impl Report for Json {
    fn at(&self, path: &str) -> &Json {
        let pointer = format!("/{}", path.replace('.', "/"));
        self.pointer(&pointer).unwrap_or_else(|| panic!("no field {path} in {self}"))
    }
    fn u(&self, path: &str) -> u64 {
        let v = self.at(path);
        v.as_u64().unwrap_or_else(|| panic!("{path} is {v}, not a number"))
    }
    fn s(&self, path: &str) -> &str {
        let v = self.at(path);
        v.as_str().unwrap_or_else(|| panic!("{path} is {v}, not a string"))
    }
    fn arr(&self, path: &str) -> &[Json] {
        let v = self.at(path);
        v.as_array().map(Vec::as_slice).unwrap_or_else(|| panic!("{path} is {v}, not an array"))
    }
}

fn json_of(o: &Out) -> Json {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("output is not JSON: {e}\n{}", show(o)))
}

// --- inspect -------------------------------------------------------------------

#[test]
fn inspect_reports_a_dirty_image_as_the_engine_sees_it() {
    let dir = Dir::new("inspect");
    let im = build(false, false);
    let pmem = dir.file("pmem", &im.pmem);
    let (rep, st, c) = engine_view(&im.pmem, false).unwrap();
    assert!(rep.dirty_bytes > 0, "the image must hold dirty data");

    let o = expect(&["inspect", &pmem], 0);
    for want in [
        &format!("uuid         {}", c.uuid()),
        "uuid none",
        "data_crc off",
        "gc_percent 90",
        "segment size 65536",
        &format!("size {BASE_BYTES}"),
        "block size 512",
        "id \"test-base\"",
        &format!("segments     {SEGS} total, {} used", st.segs_used),
        &format!("dirty        {} bytes", rep.dirty_bytes),
        &format!("key_head     segment {} offset {:#x} seq {}", st.key_head.seg, st.key_head.off, st.key_head.seq),
        &format!(
            "dirty_tail   segment {} offset {:#x} seq {}",
            st.dirty_tail.seg, st.dirty_tail.off, st.dirty_tail.seq
        ),
        &format!("key_tail     segment {} offset {:#x} seq {}", st.key_tail.seg, st.key_tail.off, st.key_tail.seq),
        &format!("ksets        {} ", rep.ksets),
        "state        dirty",
    ] {
        assert!(o.stdout.contains(want), "inspect output lacks {want:?}\n{}", show(&o));
    }

    let j = json_of(&expect(&["inspect", "--json", &pmem], 0));
    assert_eq!(j.u("dirty_bytes"), rep.dirty_bytes);
    assert_eq!(j.u("ksets"), rep.ksets);
    assert_eq!(j.u("keys"), rep.keys);
    assert_eq!(j.u("stale_keys"), rep.stale_keys);
    assert_eq!(j.u("segments.total"), SEGS);
    assert_eq!(j.u("segments.used"), st.segs_used as u64);
    assert_eq!(j.u("segments.log"), rep.log_segments as u64);
    for (name, p) in [("key_head", st.key_head), ("dirty_tail", st.dirty_tail), ("key_tail", st.key_tail)] {
        assert_eq!(
            (j.u(&format!("{name}.seg")), j.u(&format!("{name}.off")), j.u(&format!("{name}.seq"))),
            (p.seg as u64, p.off as u64, p.seq),
            "{name}"
        );
    }
    assert_eq!(j.u("base.size"), BASE_BYTES);
    assert_eq!(j.u("base.block_size"), 512);
    assert_eq!(j.s("base.id"), "test-base");
    assert_eq!(j.at("base.uuid"), &Json::Null, "the test base has no uuid");
    assert_eq!(j.s("superblock.uuid"), c.uuid().to_string());
    assert_eq!(j.at("options.data_crc"), &Json::Bool(false));
    assert_eq!(j.u("options.gc_percent"), 90);
    assert_eq!(j.u("options.seg_size"), SEG);
    assert_eq!(j.s("superblock.nonce"), format!("{:#018x}", im.nonce));
    assert_eq!(j.at("usable"), &Json::Bool(true));
    assert!(j.arr("problems").is_empty());
    assert_eq!(j.arr("replicas").len(), 3);
    assert_eq!(read(&pmem), im.pmem, "inspect changed the device");
}

#[test]
fn inspect_escapes_an_awkward_base_id_in_json() {
    let dir = Dir::new("escape");
    let pmem = dir.file("pmem", &vec![0u8; media_len(SEGS)]);
    let id = "a\"b\\c\td\u{1}é";
    expect(&["format", &pmem, "--base-size", "512K", "--seg-size", "64K", "--base-id", id], 0);
    let j = json_of(&expect(&["inspect", "--json", &pmem], 0));
    assert_eq!(j.s("base.id"), id);
    assert_eq!(j.s("device.path"), pmem);
}

// --- check -----------------------------------------------------------------------

#[test]
fn check_passes_good_images_and_does_not_change_them() {
    let dir = Dir::new("check-good");
    for (data_crc, clean) in [(false, true), (false, false), (true, false)] {
        let im = build(data_crc, clean);
        let pmem = dir.file("pmem", &im.pmem);
        let o = expect(&["check", &pmem], 0);
        assert!(o.stdout.contains(": clean ("), "{}", show(&o));
        let j = json_of(&expect(&["check", "--json", &pmem], 0));
        assert_eq!(j.s("status"), "clean");
        assert!(j.arr("problems").is_empty());
        if data_crc {
            assert!(j.u("data_checked") > 100, "every live key's data is verified");
        } else {
            assert_eq!(j.u("data_checked"), 0);
        }
        assert_eq!(read(&pmem), im.pmem, "check changed the device");
    }
}

#[test]
fn check_names_a_bad_replica_and_the_one_used() {
    let dir = Dir::new("check-replica");
    let im = build(false, false);
    let records: Vec<(String, [u64; 2])> = vec![
        ("cache_info".into(), CACHE_INFO_OFF),
        ("key_tail".into(), KEY_TAIL_OFF),
        ("dirty_tail".into(), DIRTY_TAIL_OFF),
        ("segment 5 metadata".into(), seg_meta_offs(5)),
    ];
    for (name, offs) in &records {
        for slot in 0..2 {
            let mut b = im.pmem.clone();
            b[offs[slot] as usize + 9] ^= 0x04;
            let pmem = dir.file("pmem", &b);
            let o = expect(&["check", &pmem], 1);
            let (bad, good) = if slot == 0 { ('A', 'B') } else { ('B', 'A') };
            let want = format!(
                "replica {bad} of {name} at offset {:#x} is corrupt (CRC mismatch); replica {good} is used",
                offs[slot]
            );
            assert!(o.stdout.contains(&want), "{name} slot {slot}: wanted {want:?}\n{}", show(&o));
            assert!(o.stdout.contains("the cache can be loaded"), "{}", show(&o));
            assert_eq!(read(&pmem), b, "check changed the device");
            engine_view(&b, false).unwrap_or_else(|e| panic!("{name} slot {slot}: engine cannot load: {e}"));
        }
    }
    // inspect shows the same in its replica table.
    let mut b = im.pmem.clone();
    b[KEY_TAIL_OFF[1] as usize + 20] ^= 1;
    let pmem = dir.file("pmem", &b);
    let j = json_of(&expect(&["inspect", "--json", &pmem], 0));
    let kt = &j.arr("replicas")[1];
    assert_eq!(kt.s("record"), "key_tail");
    assert_eq!(kt.s("used"), "A");
    assert_eq!(kt.arr("slots")[1].at("valid"), &Json::Bool(false));
    assert_eq!(j.arr("problems").len(), 1);
}

#[test]
fn check_calls_a_record_with_two_bad_replicas_unusable() {
    let dir = Dir::new("check-both");
    let im = build(false, false);
    for (name, offs) in
        [("key_tail", KEY_TAIL_OFF), ("cache_info", CACHE_INFO_OFF), ("segment 3 metadata", seg_meta_offs(3))]
    {
        let mut b = im.pmem.clone();
        b[offs[0] as usize + 20] ^= 1;
        b[offs[1] as usize + 20] ^= 1;
        let pmem = dir.file("pmem", &b);
        let o = expect(&["check", &pmem], 2);
        assert!(o.stdout.contains(&format!("fatal: {name}: both replicas are unusable")), "{name}\n{}", show(&o));
        assert!(o.stdout.contains("cannot be loaded"), "{}", show(&o));
        assert!(engine_view(&b, false).is_err(), "{name}: the engine loads what check calls unusable");
        assert_eq!(read(&pmem), b);
    }
}

#[test]
fn check_locates_crafted_keys_with_valid_crcs() {
    let dir = Dir::new("check-crafted");
    let im = build(false, false);
    let key = |f: &dyn Fn(&mut KeyRecord)| {
        let mut k = KeyRecord { off: 0, len: 4096, flags: KEY_FLAG_DIRTY, seg: 3, seg_off: 0, gen: 0, data_crc: 0 };
        f(&mut k);
        k
    };
    let good = key(&|_| {});
    let kset_at = SEG_START + im.head.seg as u64 * SEG + format::SEG_PAYLOAD_OFF + im.head.off as u64;
    for (what, keys, want) in [
        ("segment out of range", vec![key(&|k| k.seg = 9999)], "segment 9999 out of range"),
        ("future generation", vec![good, key(&|k| k.gen = 77)], "generation 77 is newer"),
        ("beyond the base", vec![key(&|k| k.off = BASE_BYTES)], "beyond the base device"),
    ] {
        let b = with_kset(&im, &keys);
        let pmem = dir.file("pmem", &b);
        let o = expect(&["check", &pmem], 2);
        let j = keys.len() - 1;
        let loc = format!("key {j} of kset seq {} (byte offset {:#x})", im.head.seq, kset_at + 64 + 40 * j as u64);
        assert!(
            o.stdout.contains(&loc) && o.stdout.contains(want),
            "{what}: wanted {loc:?} and {want:?}\n{}",
            show(&o)
        );
        assert!(engine_view(&b, false).is_err(), "{what}: the engine loads it");
        let j = json_of(&expect(&["check", "--json", &pmem], 2));
        assert_eq!(j.s("status"), "unusable");
        assert_eq!(j.arr("problems")[0].s("severity"), "fatal");
        assert_eq!(read(&pmem), b);
    }
}

/// The device offset of the data of some live key in a data-CRC image.
fn live_key_data(img: &[u8]) -> u64 {
    let media = MemMedia::from_image(img.to_vec());
    let sb = Cache::read_superblock(&media).unwrap();
    let geo =
        pcache::segment::Geometry { seg_start: sb.seg_start, seg_size: sb.seg_size as u64, seg_count: sb.seg_count };
    let segs = pcache::segment::SegmentTable::load(&media, geo, 0).unwrap();
    let tails = pcache::tails::Tails::load(&media).unwrap();
    // The newest dirty key: no later key overwrites it, so writeback must read it.
    let mut pos = tails.dirty;
    let mut newest = None;
    while let Some(k) = pcache::keylog::read_kset(&media, &segs, sb.nonce, pos).unwrap() {
        if let Some(key) = k.keys.iter().rev().find(|k| !k.is_zero() && k.gen == segs.gen(k.seg)) {
            newest = Some(*key);
        }
        pos = k.next;
    }
    let key = newest.expect("a live dirty key");
    geo.addr(key.seg, key.seg_off) + key.len as u64 / 2
}

#[test]
fn check_verifies_data_crcs() {
    let dir = Dir::new("check-data");
    let im = build(true, false);
    let mut b = im.pmem.clone();
    let at = live_key_data(&b);
    b[at as usize] ^= 0x80;
    let pmem = dir.file("pmem", &b);
    let o = expect(&["check", &pmem], 1);
    assert!(o.stdout.contains("fails its CRC") && o.stdout.contains("of kset seq "), "{}", show(&o));
    assert!(o.stdout.contains("the data is dirty"), "{}", show(&o));
    expect(&["check", "--no-data", &pmem], 0);
    assert_eq!(read(&pmem), b);
}

#[test]
fn check_refuses_what_is_not_a_loadable_pcache() {
    let dir = Dir::new("check-bad");
    let im = build(false, false);
    let blank = dir.file("blank", &vec![0u8; media_len(SEGS)]);
    let o = expect(&["check", &blank], 2);
    assert!(o.stdout.contains("blank"), "{}", show(&o));
    let mut rng = SmallRng::seed_from_u64(3);
    let garbage: Vec<u8> = (0..media_len(SEGS)).map(|_| rng.next_u64() as u8).collect();
    let g = dir.file("garbage", &garbage);
    let o = expect(&["check", &g], 2);
    assert!(o.stdout.contains("not a pcache"), "{}", show(&o));
    let mut b = im.pmem.clone();
    b[40] ^= 1; // base size in the superblock
    let sbf = dir.file("sb", &b);
    let o = expect(&["check", &sbf], 2);
    assert!(o.stdout.contains("superblock") && o.stdout.contains("crc mismatch"), "{}", show(&o));
    let short = dir.file("short", &im.pmem[..im.pmem.len() / 2]);
    expect(&["check", &short], 2);
    let o = expect(&["check", &format!("{}/missing", dir.0.display())], 2);
    assert_one_line_error(&o);
    for p in [&blank, &g, &sbf] {
        let o = expect(&["inspect", p], 1);
        assert_one_line_error(&o);
    }
}

#[test]
fn check_verdict_agrees_with_the_engine_on_random_damage() {
    let im = build(true, false);
    let dir = Dir::new("check-random");
    let mut rng = SmallRng::seed_from_u64(2024);
    let meta_end = (SEG_START + format::SEG_PAYLOAD_OFF + im.head.off as u64 + 256) as usize;
    let (mut usable, mut unusable) = (0, 0);
    for i in 0..400 {
        let mut b = im.pmem.clone();
        for _ in 0..1 + rng.next_u64() % 4 {
            let at = (rng.next_u64() % meta_end as u64) as usize;
            b[at] ^= 1 << (rng.next_u64() % 8);
        }
        let engine = engine_view(&b, true).map(|(rep, ..)| rep);
        let media = Arc::new(MemMedia::from_image(b.clone()));
        let ins = pcache::inspect::inspect(media.clone(), pcache::inspect::InspectOptions { verify_data: true });
        assert_eq!(media.snapshot(), b, "mutation {i}: inspect changed the media");
        match (&engine, &ins) {
            (Ok(rep), Ok(ins)) => {
                assert!(ins.usable(), "mutation {i}: engine loads, check says unusable: {:?}", ins.problems);
                assert_eq!(ins.dirty_bytes, rep.dirty_bytes, "mutation {i}");
                usable += 1;
            }
            (Err(_), Ok(ins)) => {
                assert!(!ins.usable(), "mutation {i}: engine refuses, check says usable");
                unusable += 1;
            }
            (Ok(_), Err(e)) => panic!("mutation {i}: engine loads, inspect fails: {e}"),
            (Err(_), Err(_)) => unusable += 1,
        }
        // A few through the binary as well.
        if i % 50 == 0 {
            let pmem = dir.file("pmem", &b);
            let o = pcache(&["check", &pmem]);
            assert_eq!(o.code == 2, engine.is_err(), "mutation {i}\n{}", show(&o));
            assert!(o.code <= 2 && o.stderr.is_empty(), "mutation {i}\n{}", show(&o));
        }
    }
    assert!(usable > 20 && unusable > 20, "the mutations must cover both verdicts ({usable} usable, {unusable} not)");
}

// --- flush ---------------------------------------------------------------------

#[test]
fn flush_writes_every_dirty_byte_back_and_leaves_the_cache_clean() {
    let dir = Dir::new("flush");
    let im = build(true, false);
    let pmem = dir.file("pmem", &im.pmem);
    let base = dir.file("base", &im.base);
    let o = expect(&["flush", "--quiet", &pmem, &base], 0);
    assert!(o.stderr.is_empty(), "--quiet prints nothing on stderr\n{}", show(&o));
    assert!(o.stdout.contains("the cache is clean"), "{}", show(&o));
    assert_base_is_model(&read(&base), &im.model, "after flush");

    let j = json_of(&expect(&["inspect", "--json", &pmem], 0));
    assert_eq!(j.u("dirty_bytes"), 0);
    assert_eq!(j.u("dirty_ksets"), 0);
    assert_eq!(j.at("dirty_tail"), j.at("key_head"), "dirty_tail is persisted at the head");
    expect(&["check", &pmem], 0);

    let (rep, _, cache) = engine_view(&read(&pmem), true).unwrap();
    assert_eq!(rep.dirty_bytes, 0, "reopening finds dirty data");
    let mb = common::base(BASE_BYTES as usize);
    assert_eq!(cache.writeback_step(&mb).unwrap(), WbProgress::Idle, "reopening finds something to write back");
    // The cache still serves what it held.
    let got = read_through(&cache, &common::base_from(read(&base)), 0, 0, BASE_BYTES as usize);
    assert_base_is_model(&got, &im.model, "reads after flush");
    drop(cache);

    let o = expect(&["flush", &pmem, &base], 0);
    assert!(o.stdout.contains("nothing to write back"), "{}", show(&o));
}

#[test]
fn flush_prints_progress_lines_when_stderr_is_not_a_terminal() {
    let dir = Dir::new("flush-progress");
    let im = build(false, false);
    let pmem = dir.file("pmem", &im.pmem);
    let base = dir.file("base", &im.base);
    let o = expect(&["flush", &pmem, &base], 0);
    assert!(o.stderr.starts_with("flush: writing back "), "{}", show(&o));
    assert!(o.stderr.contains("flush: 100% ("), "{}", show(&o));
    let last = o.stderr.lines().find(|l| l.starts_with("flush: 100% (")).unwrap_or_default();
    assert!(last.contains("/s"), "the last line shows the drain rate\n{}", show(&o));
    assert!(!o.stderr.contains('\r'), "no bar without a terminal\n{}", show(&o));
    assert_base_is_model(&read(&base), &im.model, "after flush");
}

#[test]
fn flush_refuses_a_base_that_does_not_match_unless_forced() {
    let dir = Dir::new("flush-identity");
    let im = build(false, false);
    let pmem = dir.file("pmem", &im.pmem);
    let mut bigger = im.base.clone();
    bigger.resize(im.base.len() + 4096, 0);
    let wrong_size = dir.file("wrong", &bigger);
    let base = dir.file("base", &im.base);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["flush", &pmem, &wrong_size], "its size is 528384 bytes, the cache was formatted for 524288"),
        (vec!["flush", "--base-block-size", "4096", &pmem, &base], "its block size is 4096"),
        (vec!["flush", "--base-id", "other", &pmem, &base], "base id \"test-base\", not \"other\""),
    ];
    for (args, want) in &cases {
        let o = expect(args, 1);
        assert_one_line_error(&o);
        assert!(
            o.stderr.contains("does not match") && o.stderr.contains(want) && o.stderr.contains("--force"),
            "{args:?}\n{}",
            show(&o)
        );
        assert_eq!(read(&pmem), im.pmem, "a refused flush changed the cache");
        assert_eq!(read(&base), im.base, "a refused flush changed the base");
        assert_eq!(read(&wrong_size), bigger, "a refused flush changed the base");
    }
    // The right id is accepted; so is a mismatch with --force.
    let mut forced: Vec<&str> = cases[0].0.clone();
    forced.insert(1, "--force");
    let o = expect(&forced, 0);
    assert!(o.stderr.contains("--force"), "a forced flush says what it overrode\n{}", show(&o));
    assert_base_is_model(&read(&wrong_size)[..BASE_BYTES as usize], &im.model, "forced flush");
    let pmem2 = dir.file("pmem2", &im.pmem);
    expect(&["flush", "--base-id", "test-base", "--base-block-size", "512", "--quiet", &pmem2, &base], 0);
    assert_base_is_model(&read(&base), &im.model, "flush with a matching id");
}

#[derive(Clone, Default)]
struct CrashModel {
    flushed: HashMap<u64, u64>,
    since: HashMap<u64, Vec<u64>>,
}

#[test]
fn flush_after_a_power_failure_writes_back_what_the_cache_held() {
    let dir = Dir::new("flush-crash");
    let mut survived_after_flush = 0;
    for seed in 1..=24u64 {
        let media = Arc::new(CrashSim::new(media_len(SEGS)));
        let base = base(BASE_BYTES as usize);
        let mut cfg = config(BASE_BYTES, 1);
        cfg.gc_percent = Some(90);
        cfg.kset_flush_interval = std::time::Duration::from_secs(3600);
        let cache = open(media.clone() as Arc<dyn Media>, &cfg);
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut m = CrashModel::default();
        let mut last: HashMap<u64, u64> = HashMap::new();
        let write = |cache: &Cache, m: &mut CrashModel, last: &mut HashMap<u64, u64>, i: u64, rng: &mut SmallRng| {
            let first = rng.next_u64() % BASE_SECTORS;
            let n = 1 + rng.next_u64() % 8.min(BASE_SECTORS - first);
            let id = (seed << 20) | i;
            write_all(cache, &base, 0, first * 512, &write_data(id, first, n));
            for s in first..first + n {
                last.insert(s, id);
                m.since.entry(s).or_default().push(id);
            }
        };
        // Written, flushed, partly written back; flushed again; then more
        // writes that no flush covers, and the power fails.
        for i in 1..=80 {
            write(&cache, &mut m, &mut last, i, &mut rng);
        }
        cache.flush().unwrap();
        cache.writeback_all(&base).unwrap();
        for i in 81..=160 {
            write(&cache, &mut m, &mut last, i, &mut rng);
        }
        cache.flush().unwrap();
        m.flushed = last.clone();
        m.since.clear();
        for i in 161..=160 + 20 + rng.next_u64() % 280 {
            write(&cache, &mut m, &mut last, i, &mut rng);
        }
        let pmem_img = media.crash(seed);
        let base_img = base.crash_image(seed);
        drop(cache);

        let pmem = dir.file("pmem", &pmem_img);
        let basef = dir.file("base", &base_img);
        let o = expect(&["flush", "--quiet", &pmem, &basef], 0);
        let got = read(&basef);
        for s in 0..BASE_SECTORS {
            let who = who_wrote(&got[s as usize * 512..(s as usize + 1) * 512], s);
            let flushed = m.flushed.get(&s).copied().unwrap_or(0);
            let ok = who == Some(flushed) || who.is_some_and(|id| m.since.get(&s).is_some_and(|v| v.contains(&id)));
            assert!(
                ok,
                "seed {seed}: base sector {s} holds {who:?}; flushed value {flushed}, later {:?}\n{}",
                m.since.get(&s),
                show(&o)
            );
            if who != Some(flushed) {
                survived_after_flush += 1;
            }
        }
        let j = json_of(&expect(&["inspect", "--json", &pmem], 0));
        assert_eq!(j.u("dirty_bytes"), 0, "seed {seed}");
        expect(&["check", &pmem], 0);
    }
    // Ksets the engine sealed after the last flush survive some crashes: the
    // "new data" side of the rule is exercised too.
    assert!(survived_after_flush > 0, "no sector held a write issued after the last flush");
}

// --- format ----------------------------------------------------------------------

#[test]
fn format_formats_a_blank_device_and_refuses_an_existing_one() {
    let dir = Dir::new("format");
    let pmem = dir.file("pmem", &vec![0u8; media_len(SEGS)]);
    let base = dir.file("base", &vec![0u8; 1 << 20]);
    let o = expect(
        &[
            "format",
            &pmem,
            "--base",
            &base,
            "--base-id",
            "nvme0n1",
            "--seg-size",
            "64K",
            "--data-crc",
            "--gc-percent",
            "50",
        ],
        0,
    );
    assert!(o.stdout.contains("formatted"), "{}", show(&o));
    let j = json_of(&expect(&["inspect", "--json", &pmem], 0));
    assert_eq!(j.u("base.size"), 1 << 20);
    assert_eq!(j.u("base.block_size"), 512);
    assert_eq!(j.s("base.id"), "nvme0n1");
    assert_eq!(j.at("options.data_crc"), &Json::Bool(true));
    assert_eq!(j.u("options.gc_percent"), 50);
    assert_eq!(j.u("options.seg_size"), SEG);
    assert_eq!(j.u("segments.total"), SEGS);
    assert_eq!(j.u("dirty_bytes"), 0);
    expect(&["check", &pmem], 0);

    // A clean pcache: refused without --force, and the message says it is clean.
    let before = read(&pmem);
    let o = expect(&["format", &pmem, "--base-size", "512K", "--seg-size", "64K"], 1);
    assert_one_line_error(&o);
    assert!(o.stderr.contains("holds a clean pcache (no dirty data") && o.stderr.contains("--force"), "{}", show(&o));
    assert_eq!(read(&pmem), before);

    // A dirty pcache: refused, with the amount of dirty data.
    let im = build(false, false);
    let (rep, ..) = engine_view(&im.pmem, false).unwrap();
    let dirty = dir.file("dirty", &im.pmem);
    let o = expect(&["format", &dirty, "--base-size", "512K", "--seg-size", "64K"], 1);
    assert_one_line_error(&o);
    assert!(
        o.stderr.contains(&format!("holds a pcache with {} bytes", rep.dirty_bytes)) && o.stderr.contains("dirty data"),
        "{}",
        show(&o)
    );
    assert_eq!(read(&dirty), im.pmem, "a refused format changed the device");
    // --force reformats it.
    expect(&["format", &dirty, "--base-size", "512K", "--seg-size", "64K", "--force"], 0);
    let j = json_of(&expect(&["inspect", "--json", &dirty], 0));
    assert_eq!(j.u("dirty_bytes"), 0);
    assert_eq!(j.u("ksets"), 0);
    assert_ne!(j.s("superblock.nonce"), format!("{:#018x}", im.nonce));

    // Something that is not a pcache.
    let mut rng = SmallRng::seed_from_u64(8);
    let g: Vec<u8> = (0..media_len(SEGS)).map(|_| rng.next_u64() as u8).collect();
    let garbage = dir.file("garbage", &g);
    let o = expect(&["format", &garbage, "--base-size", "512K", "--seg-size", "64K"], 1);
    assert!(o.stderr.contains("not a pcache"), "{}", show(&o));
    assert_eq!(read(&garbage), g);
    expect(&["format", &garbage, "--base-size", "512K", "--seg-size", "64K", "--force"], 0);
    expect(&["check", &garbage], 0);

    // A pcache that cannot be loaded is refused too.
    let mut b = im.pmem.clone();
    b[KEY_TAIL_OFF[0] as usize + 20] ^= 1;
    b[KEY_TAIL_OFF[1] as usize + 20] ^= 1;
    let broken = dir.file("broken", &b);
    let o = expect(&["format", &broken, "--base-size", "512K", "--seg-size", "64K"], 1);
    assert!(o.stderr.contains("cannot be loaded"), "{}", show(&o));

    // Creating the file; bad arguments.
    let new = format!("{}/new", dir.0.display());
    expect(&["format", &new, "--base-size", "512K", "--seg-size", "64K", "--size", "2M"], 0);
    expect(&["check", &new], 0);
    let o = expect(&["format", &format!("{}/none", dir.0.display()), "--base-size", "512K"], 1);
    assert!(o.stderr.contains("--size"), "{}", show(&o));
    let tiny = dir.file("tiny", &vec![0u8; 200 << 10]);
    let o = expect(&["format", &tiny, "--base-size", "512K", "--seg-size", "64K"], 1);
    assert_one_line_error(&o);
    let o = expect(&["format", &pmem, "--base-size", "512K", "--seg-size", "1000", "--force"], 1);
    assert!(o.stderr.contains("segment size"), "{}", show(&o));
}

// --- the command line ------------------------------------------------------------

#[test]
fn usage_errors_exit_2_and_help_lists_everything() {
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["check"],
        vec!["check", "a", "b"],
        vec!["inspect", "--bogus", "x"],
        vec!["flush", "onlyone"],
        vec!["format", "x"],
        vec!["format", "x", "--gc-percent", "95", "--base-size", "1M"],
        vec!["format", "x", "--base-size"],
        vec!["flush", "a", "b", "--base-block-size", "lots"],
    ] {
        let o = expect(&args, 2);
        assert!(o.stderr.starts_with("pcache: "), "{args:?}\n{}", show(&o));
        assert!(o.stderr.contains("usage: pcache"), "{args:?}: usage text\n{}", show(&o));
        assert!(!o.stderr.contains("panicked"), "{}", show(&o));
    }
    let o = expect(&["--help"], 0);
    for c in ["inspect", "check", "flush", "format", "bench"] {
        assert!(o.stdout.contains(c), "--help lacks {c}\n{}", show(&o));
    }
    for (cmd, opts) in [
        ("inspect", &["--json"][..]),
        ("check", &["--json", "--no-data"][..]),
        ("flush", &["--force", "--base-id", "--base-block-size", "--quiet"][..]),
        (
            "format",
            &[
                "--base",
                "--base-size",
                "--base-block-size",
                "--base-id",
                "--seg-size",
                "--data-crc",
                "--gc-percent",
                "--size",
                "--force",
            ][..],
        ),
        ("bench", &["--pmem", "--data-crc"][..]),
    ] {
        let o = expect(&[cmd, "--help"], 0);
        for opt in opts {
            assert!(o.stdout.contains(opt), "{cmd} --help lacks {opt}\n{}", show(&o));
        }
    }
}

#[test]
fn runtime_errors_are_one_line() {
    let dir = Dir::new("errors");
    let missing = format!("{}/missing", dir.0.display());
    let blank = dir.file("blank", &vec![0u8; media_len(SEGS)]);
    let im = build(false, false);
    let pmem = dir.file("pmem", &im.pmem);
    let base = dir.file("base", &im.base);
    for args in [
        vec!["inspect", missing.as_str()],
        vec!["inspect", blank.as_str()],
        vec!["flush", missing.as_str(), base.as_str()],
        vec!["flush", blank.as_str(), base.as_str()],
        vec!["flush", pmem.as_str(), missing.as_str()],
        vec!["flush", pmem.as_str(), dir.0.to_str().unwrap()],
    ] {
        let o = expect(&args, 1);
        assert_one_line_error(&o);
    }
    // A cache whose dirty data fails its CRC: flush stops and says where.
    let im = build(true, false);
    let mut b = im.pmem.clone();
    let at = live_key_data(&b);
    b[at as usize] ^= 1;
    let bad = dir.file("bad", &b);
    let o = expect(&["flush", "--quiet", &bad, &base], 1);
    assert_one_line_error(&o);
    assert!(o.stderr.contains("data CRC mismatch"), "{}", show(&o));
}
