//! Writeback in batches: what it may skip, and what it must still write.
//!
//! Bytes a later key overwrote need not reach the base when both keys are in
//! the same epoch and the later key is journalled: it is written back itself,
//! and replay puts it over the earlier one. The FLUSH-epoch prefix property
//! itself is tests/writeback_prefix.rs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pcache::pmem::{Media, MemMedia};
use pcache::{Cache, MemBase, WbProgress, WriteOutcome};

const BASE_SECTORS: u64 = 2048;

fn setup(batch_bytes: u64) -> (Arc<MemMedia>, MemBase, Cache) {
    let media = Arc::new(MemMedia::new(media_len(32)));
    let base = base((BASE_SECTORS * 512) as usize);
    let mut cfg = config(BASE_SECTORS * 512, 1);
    cfg.gc_percent = Some(90);
    cfg.kset_flush_interval = Duration::ZERO;
    cfg.writeback_batch_bytes = batch_bytes;
    let cache = open(media.clone() as Arc<dyn Media>, &cfg);
    (media, base, cache)
}

fn write(cache: &Cache, id: u64, first: u64, n: u64) {
    assert_eq!(cache.write_buf(0, first * 512, &write_data(id, first, n)).unwrap(), WriteOutcome::Done);
}

/// Journals the open ksets without a FLUSH (as the kset timer does).
fn journal(cache: &Cache) {
    cache.flush_expired_ksets().unwrap();
}

/// Steps writeback until `n` batches are done (or it is idle).
fn until_batches(cache: &Cache, base: &MemBase, n: u64) {
    while cache.stats().writeback_batches < n {
        if cache.writeback_step(base).unwrap() == WbProgress::Idle {
            return;
        }
    }
}

fn who(img: &[u8], s: u64) -> Option<u64> {
    who_wrote(&img[s as usize * 512..(s as usize + 1) * 512], s)
}

#[test]
fn bytes_overwritten_in_the_open_epoch_are_written_back_once() {
    // One kset per batch, so the overwrite is in a later batch.
    let (media, base, cache) = setup(1);
    write(&cache, 1, 0, 64);
    journal(&cache);
    write(&cache, 2, 0, 64);
    journal(&cache);
    until_batches(&cache, &base, 1);
    let st = cache.stats();
    assert_eq!(st.writeback_skipped_bytes, 64 * 512, "the first key's bytes were overwritten by a journalled key");
    assert_eq!(st.base_writes, 0, "nothing of the first batch reached the base");
    // A crash now: the first key is behind dirty_tail; replay must serve the second.
    let (pmem, img) = (media.snapshot(), base.crash_image(7));
    let again = open(Arc::new(MemMedia::from_image(pmem)) as Arc<dyn Media>, &config(BASE_SECTORS * 512, 1));
    let got = read_through(&again, &base_from(img), 0, 0, 64 * 512);
    assert!((0..64).all(|s| who(&got, s) == Some(2)), "after a crash the newest data is served");
    drop(again);
    cache.writeback_all(&base).unwrap();
    let img = base.visible_image();
    assert!((0..64).all(|s| who(&img, s) == Some(2)));
    assert_eq!(cache.stats().base_flushes, 1, "one flush for the one batch that wrote");
}

#[test]
fn an_overwrite_not_yet_journalled_does_not_excuse_writing_back() {
    let (_media, base, cache) = setup(1);
    write(&cache, 1, 100, 16);
    journal(&cache);
    write(&cache, 2, 100, 16); // open: a crash would lose it
    until_batches(&cache, &base, 1);
    assert_eq!(cache.stats().writeback_batches, 1);
    // dirty_tail is past the first key, which the cache now treats as clean:
    // the base must hold it.
    let img = base.durable_image();
    assert!((100..116).all(|s| who(&img, s) == Some(1)), "the first key reached the base before dirty_tail moved");
}

#[test]
fn an_overwrite_in_a_later_epoch_does_not_excuse_writing_back() {
    let (_media, base, cache) = setup(1);
    write(&cache, 1, 200, 8);
    cache.flush().unwrap(); // ends the epoch
    write(&cache, 2, 200, 8);
    journal(&cache);
    until_batches(&cache, &base, 1);
    let img = base.durable_image();
    assert!((200..208).all(|s| who(&img, s) == Some(1)), "the first epoch is complete on the base");
    // The FLUSH mark after it is a batch of its own at this cap; it ends the epoch.
    until_batches(&cache, &base, 2);
    assert_eq!(cache.stats().writeback_epochs, 1);
}

#[test]
fn a_batch_sorts_and_merges_and_flushes_once() {
    let (_media, base, cache) = setup(32 << 20);
    assert_eq!(cache.absorbed_percent(), None, "no batch yet");
    // A threshold of 10 % counts the cache as filled (absorbed_percent is
    // measured in steady state only: see the next test).
    cache.set_gc_percent(10).unwrap();
    // 64 adjacent 4 KiB writes in reverse order, each overwritten twice.
    for round in 0..3u64 {
        for i in (0..64u64).rev() {
            write(&cache, 1 + round * 100 + i, i * 8, 8);
        }
    }
    cache.writeback_all(&base).unwrap();
    let st = cache.stats();
    assert_eq!(st.writeback_batches, 1);
    assert_eq!(st.base_flushes, 1);
    assert_eq!(st.writeback_skipped_bytes, 2 * 64 * 4096, "two of three rounds were overwritten");
    assert_eq!(st.base_writes, 1, "256 KiB of adjacent pieces went as one write");
    let img = base.visible_image();
    assert!((0..64u64).all(|i| who(&img, i * 8) == Some(201 + i)));
    assert_eq!(cache.absorbed_percent(), Some(66), "two thirds of the batch's dirty bytes were overwritten");
    // A batch with half of it overwritten moves the average a quarter of the way.
    write(&cache, 500, 1024, 8);
    write(&cache, 501, 1024, 8);
    cache.writeback_all(&base).unwrap();
    assert_eq!(cache.absorbed_percent(), Some((66 * 3 + 50) / 4));
}

#[test]
fn a_cap_of_one_kset_writes_each_kset_as_its_own_batch() {
    // Set on the live cache, as bdev_pcache_set_options does.
    let (_media, base, cache) = setup(32 << 20);
    cache.set_writeback_batch_bytes(1);
    assert_eq!(cache.writeback_batch_bytes(), 1);
    for i in 0..5u64 {
        write(&cache, 1 + i, i * 16, 16);
        journal(&cache);
    }
    cache.writeback_all(&base).unwrap();
    let st = cache.stats();
    assert_eq!(st.writeback_batches, st.writeback_ksets, "{st:?}");
    assert!(st.writeback_ksets >= 5);
}

/// The dirty share writeback paces itself by (and get_stats reports): dirty
/// bytes against the data capacity of every segment, down to 0 once written
/// back.
#[test]
fn dirty_percent_is_dirty_bytes_over_the_cache_capacity() {
    let (_media, base, cache) = setup(1 << 20);
    assert_eq!(cache.dirty_percent(), 0);
    let sb = cache.superblock();
    let cap = sb.seg_count as u64 * (sb.seg_size as u64 - pcache::format::SEG_PAYLOAD_OFF);
    // About a third of the capacity, in 4 KiB writes.
    let n = cap / 3 / 4096;
    for i in 0..n {
        write(&cache, i + 1, i * 8, 8);
    }
    assert_eq!(cache.stats().dirty_bytes, n * 4096);
    assert_eq!(cache.dirty_percent() as u64, n * 4096 * 100 / cap);
    assert!((30..=34).contains(&cache.dirty_percent()), "{}", cache.dirty_percent());
    cache.flush().unwrap();
    cache.writeback_all(&base).unwrap();
    assert_eq!(cache.dirty_percent(), 0);
}

/// Steps writeback until the base has writes in flight (completions held).
fn until_submitted(cache: &Cache, base: &MemBase) {
    for _ in 0..100 {
        cache.writeback_step(base).unwrap();
        if base.in_flight() > 0 {
            return;
        }
    }
    panic!("writeback submitted nothing");
}

/// Lets the base complete what it holds, then holds its completions again.
fn complete_held(base: &MemBase) {
    base.hold_completions(false);
    while base.in_flight() > 0 {
        std::thread::yield_now();
    }
    base.hold_completions(true);
}

/// A step submits at most 64 base writes (one step stays short on a
/// reactor) and at most 64 are in flight at once (a front end's own base
/// I/Os queue behind them), and a batch is not done while its writes or its
/// flush are in flight: dirty_tail moves only once the flush completed.
#[test]
fn a_batch_waits_for_its_writes_and_its_flush_and_at_most_64_writes_are_out() {
    let (_media, base, cache) = setup(32 << 20);
    // 100 pieces with gaps between them: 100 base writes.
    for i in 0..100u64 {
        write(&cache, i + 1, i * 16, 8);
    }
    cache.flush().unwrap();
    base.hold_completions(true);
    until_submitted(&cache, &base);
    assert_eq!(base.in_flight(), 64, "the first step submits 64 writes");
    for _ in 0..50 {
        cache.writeback_step(&base).unwrap();
    }
    assert_eq!(base.in_flight(), 64, "no more while 64 are out");
    complete_held(&base);
    cache.writeback_step(&base).unwrap();
    assert_eq!(base.in_flight(), 36, "once they completed, the next step sends the other 36");
    for _ in 0..50 {
        cache.writeback_step(&base).unwrap();
    }
    assert_eq!(base.in_flight(), 36, "no flush while writes are in flight");
    assert_eq!(cache.stats().base_flushes, 0);
    // Let the writes complete, then hold the flush.
    complete_held(&base);
    while cache.stats().base_flushes == 0 {
        cache.writeback_step(&base).unwrap();
    }
    for _ in 0..50 {
        assert_ne!(cache.writeback_step(&base).unwrap(), WbProgress::Advanced, "a batch finished before its flush did");
    }
    assert_eq!(base.in_flight(), 1, "the flush");
    assert_eq!(cache.stats().writeback_batches, 0, "dirty_tail moved before the base flush completed");
    base.hold_completions(false);
    cache.writeback_all(&base).unwrap();
    assert_eq!(cache.stats().writeback_batches, 1);
    let img = base.durable_image();
    assert!((0..100u64).all(|i| who(&img, i * 16) == Some(i + 1)));
}

/// A step submits about 4 MiB (it stops once past it), and at most 16 MiB
/// (plus the run that crossed it) is in flight at once.
#[test]
fn a_step_submits_about_4_mib_and_16_mib_at_most_are_in_flight() {
    const MIB: u64 = 1 << 20;
    let media = Arc::new(MemMedia::new(media_len(600)));
    let base = base((32 * MIB) as usize);
    let mut cfg = config(32 * MIB, 1);
    cfg.gc_percent = Some(90);
    cfg.writeback_batch_bytes = 64 * MIB;
    let cache = open(media as Arc<dyn Media>, &cfg);
    for i in 0..24 * 16u64 {
        let first = i * 128;
        assert_eq!(cache.write_buf(0, first * 512, &write_data(i + 1, first, 128)).unwrap(), WriteOutcome::Done);
    }
    cache.flush().unwrap();
    base.hold_completions(true);
    until_submitted(&cache, &base);
    let first = base.in_flight_bytes();
    assert!((4 * MIB..5 * MIB).contains(&first), "first step submitted {first} bytes");
    for _ in 0..20 {
        cache.writeback_step(&base).unwrap();
    }
    let all = base.in_flight_bytes();
    assert!((16 * MIB..17 * MIB).contains(&all), "{all} bytes in flight");
    // Contiguous pieces go as base writes of up to 1 MiB.
    let writes = base.in_flight_writes();
    assert!(writes.iter().all(|w| w.1 <= MIB), "a base write over 1 MiB: {writes:?}");
    assert!(writes.iter().filter(|w| w.1 > MIB / 2).count() >= 14, "{writes:?}");
    base.hold_completions(false);
    cache.writeback_all(&base).unwrap();
    assert!(cache.is_clean());
}

/// An older build wrote ksets without MARKS: each is an epoch of its own, so
/// its log is written back one kset at a time, as that build did
/// (doc/format.md, "Epochs").
#[test]
fn a_log_written_before_epochs_were_marked_is_written_back_a_kset_at_a_time() {
    use pcache::format::{self as f, KeyRecord, KsetHeader, KEY_SIZE, KSET_HDR_SIZE};
    let (media, base, cache) = setup(32 << 20);
    for i in 0..6u64 {
        write(&cache, i + 1, i * 64, 8);
        journal(&cache);
    }
    drop(cache);
    // Rewrite every kset of the log without MARKS.
    let nonce = Cache::read_superblock(&*media).unwrap().nonce;
    let mut img = media.snapshot();
    let mut stripped = 0;
    for at in (f::SEG_START as usize..img.len() - KSET_HDR_SIZE).step_by(64) {
        let b = &img[at..];
        let seq = u64::from_le_bytes(b[8..16].try_into().unwrap());
        let Ok(hdr) = f::parse_kset_header(b, nonce, seq, b.len()) else { continue };
        let n = hdr.key_num as usize;
        if hdr.flags & f::KSET_FLAG_MARKS == 0 || !f::kset_crc_ok(b, n) {
            continue;
        }
        let keys: Vec<KeyRecord> = (0..n)
            .map(|i| KeyRecord::decode(&b[KSET_HDR_SIZE + i * KEY_SIZE..KSET_HDR_SIZE + (i + 1) * KEY_SIZE]))
            .collect();
        let mut buf = Vec::new();
        let len = f::encode_kset(&mut buf, &KsetHeader { flags: hdr.flags & !f::KSET_FLAG_MARKS, ..hdr }, &keys);
        img[at..at + len].copy_from_slice(&buf[..len]);
        stripped += 1;
    }
    assert!(stripped >= 6, "{stripped} ksets rewritten");
    let mut cfg = config(BASE_SECTORS * 512, 1);
    cfg.gc_percent = Some(90);
    let cache = open(Arc::new(MemMedia::from_image(img)) as Arc<dyn Media>, &cfg);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while cache.writeback_step(&base).unwrap() != WbProgress::Idle {
        assert!(std::time::Instant::now() < until, "writeback of the old log never ended");
    }
    let st = cache.stats();
    assert_eq!((st.writeback_batches, st.writeback_ksets, st.writeback_epochs), (6, 6, 6), "{st:?}");
    assert!(cache.is_clean());
    let img = base.visible_image();
    assert!((0..6u64).all(|i| who(&img, i * 64) == Some(i + 1)));
}

/// A key overwritten in its middle by a journalled key of the same epoch:
/// writeback drops only the overwritten bytes and writes the key's bytes on
/// both sides of them.
#[test]
fn a_key_overwritten_in_its_middle_is_written_back_around_the_overwrite() {
    let (_media, base, cache) = setup(1);
    write(&cache, 1, 0, 64);
    journal(&cache);
    write(&cache, 2, 16, 16);
    journal(&cache);
    until_batches(&cache, &base, 1);
    assert_eq!(cache.stats().writeback_skipped_bytes, 16 * 512, "the middle was overwritten");
    cache.writeback_all(&base).unwrap();
    let img = base.visible_image();
    let want = |s: u64| if (16..32).contains(&s) { 2 } else { 1 };
    for s in 0..64 {
        assert_eq!(who(&img, s), Some(want(s)), "sector {s}");
    }
}

/// While the cache fills, what writeback finds overwritten says nothing of
/// the steady state: absorbed_percent (which sends writes past a full cache
/// when low, bypass.rs) waits until the cache has filled to near gc_percent.
#[test]
fn absorbed_percent_counts_once_the_cache_has_filled() {
    let (_media, base, cache) = setup(32 << 20);
    for i in 0..64u64 {
        write(&cache, 1 + i, i * 8, 8);
    }
    cache.writeback_all(&base).unwrap();
    assert!(cache.stats().writeback_batches > 0);
    assert_eq!(cache.absorbed_percent(), None, "a filling cache's batches are not counted");
    cache.set_gc_percent(10).unwrap();
    for i in 0..64u64 {
        write(&cache, 100 + i, i * 8, 8);
    }
    cache.writeback_all(&base).unwrap();
    assert_eq!(cache.absorbed_percent(), Some(0), "once filled, they are");
}

/// What a host's tracing hears: each batch starts once and ends once, in
/// order, with the bytes it writes and the dirty bytes it retires.
#[test]
fn an_observer_hears_each_batch_start_and_end() {
    #[derive(Default)]
    struct Heard(std::sync::Mutex<Vec<(char, u64)>>);
    impl pcache::WritebackEvents for Heard {
        fn batch_start(&self, bytes: u64, writes: usize) {
            assert!(writes > 0 || bytes == 0);
            self.0.lock().unwrap().push(('s', bytes));
        }
        fn batch_done(&self, dirty: u64) {
            self.0.lock().unwrap().push(('d', dirty));
        }
    }
    let (_media, base, cache) = setup(1);
    let heard = Arc::new(Heard::default());
    assert!(cache.observe_writeback(heard.clone()));
    assert!(!cache.observe_writeback(heard.clone()), "a second observer");
    write(&cache, 1, 0, 64);
    journal(&cache);
    write(&cache, 2, 128, 32);
    journal(&cache);
    while cache.writeback_step(&base).unwrap() != WbProgress::Idle {}
    let heard = heard.0.lock().unwrap().clone();
    assert_eq!(heard.len() as u64, 2 * cache.stats().writeback_batches, "{heard:?}");
    for pair in heard.chunks(2) {
        assert!(matches!(pair, [('s', _), ('d', _)]), "{heard:?}");
    }
    let written: u64 = heard.iter().filter(|(k, _)| *k == 's').map(|(_, b)| b).sum();
    let retired: u64 = heard.iter().filter(|(k, _)| *k == 'd').map(|(_, b)| b).sum();
    assert_eq!((written, retired), (96 * 512, 96 * 512));
}

/// Over a slow base a batch is capped to what writeback drains in about
/// 100 ms at full speed (writeback.rs, BATCH_TIME): GC frees nothing of a
/// batch until it ends, so writes waiting for space would wait for it all.
/// Over a fast base the configured cap holds.
#[test]
fn a_slow_base_gets_batches_it_drains_quickly() {
    const BLOCKS: u64 = 1024;
    // Every other 4 KiB block, so that no two writes merge into one run.
    let fill = |cache: &Cache, id: u64, from: u64| {
        for b in 0..BLOCKS {
            let first = (from + 2 * b) * 8;
            assert_eq!(cache.write_buf(0, first * 512, &write_data(id, first, 8)).unwrap(), WriteOutcome::Done);
        }
        cache.flush_expired_ksets().unwrap();
    };
    let size = 8 * BLOCKS * 4096;
    let second_batch = |base: &MemBase| {
        let media = Arc::new(MemMedia::new(media_len(512)));
        let mut cfg = config(size, 1);
        cfg.kset_flush_interval = Duration::ZERO;
        let cache = open(media as Arc<dyn Media>, &cfg);
        fill(&cache, 1, 0);
        until_batches(&cache, base, 1);
        let before = cache.stats().writeback_bytes;
        fill(&cache, 2, 2 * BLOCKS);
        until_batches(&cache, base, 2);
        cache.stats().writeback_bytes - before
    };
    let all = BLOCKS * 4096;
    assert_eq!(second_batch(&base(size as usize)), all, "a fast base: one batch takes it all");

    // Every base write takes about 20 ms: 1024 of them, 64 at once, 320 ms.
    let slow = Arc::new(MemBase::device(size as usize, 512, 1));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (slow, stop) = (slow.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                slow.hold_completions(true);
                std::thread::sleep(Duration::from_millis(20));
                slow.hold_completions(false);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let got = second_batch(&slow);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    ticker.join().unwrap();
    assert!(got <= all / 2, "a slow base: the next batch is capped, {got} of {all} bytes");
}
