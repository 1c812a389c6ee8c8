//! Sequential bypass (src/bypass.rs): when a write may skip the cache, and
//! what must wait for it.

mod common;

use std::io::IoSliceMut;
use std::sync::Arc;

use common::*;
use pcache::pmem::{Media, MemMedia};
use pcache::{BaseDevice, Bypass, Cache, MemBase, WbProgress, WriteOutcome, WriteReq};

const BASE: u64 = 8 << 20;
const IO: u64 = 64 << 10;
const CUTOFF: u64 = 256 << 10;

fn setup() -> (MemBase, Cache) {
    setup_workers(1)
}

fn setup_workers(workers: usize) -> (MemBase, Cache) {
    let media = Arc::new(MemMedia::new(media_len(64)));
    let base = base(BASE as usize);
    let mut cfg = config(BASE, workers);
    cfg.seq_cutoff = CUTOFF;
    let cache = open(media as Arc<dyn Media>, &cfg);
    (base, cache)
}

/// Writes `data` to the base and waits for it, as a host does a bypass.
fn base_write(base: &MemBase, off: u64, data: Vec<u8>) {
    let (tx, rx) = std::sync::mpsc::channel();
    base.write(off, data, Box::new(move |r| tx.send(r).unwrap()));
    rx.recv().unwrap().unwrap();
}

/// One write of a host: bypassed if the cache says so (a stream, or a full
/// cache), cached otherwise.
/// Returns whether it bypassed.
fn host_write(cache: &Cache, base: &MemBase, id: u64, off: u64, len: u64) -> bool {
    worker_write(cache, base, 0, id, off, len)
}

/// The same from worker `w`.
fn worker_write(cache: &Cache, base: &MemBase, w: usize, id: u64, off: u64, len: u64) -> bool {
    let data = write_data(id, off / 512, len / 512);
    match cache.admit(w, off, len).base() {
        Some(b) => {
            base_write(base, off, data);
            cache.end_bypass(b, true);
            true
        }
        None => {
            write_all(cache, base, w, off, &data);
            false
        }
    }
}

/// Four cached writes of a stream, then a bypass of its fifth, left in flight.
fn bypass_after_a_stream(cache: &Cache, base: &MemBase) -> Bypass {
    for i in 0..4 {
        host_write(cache, base, i + 1, i * IO, IO);
    }
    cache.begin_bypass(0, 4 * IO, IO).expect("the stream bypasses")
}

fn check_reads(cache: &Cache, base: &MemBase, ids: &[(u64, u64, u64)]) {
    for &(id, off, len) in ids {
        let got = read_through(cache, base, 0, off, len as usize);
        assert!(got == write_data(id, off / 512, len / 512), "write {id} at {off} does not read back");
    }
}

fn drain(cache: &Cache, base: &MemBase) {
    cache.flush().unwrap();
    while cache.writeback_step(base).unwrap() != WbProgress::Idle {}
}

#[test]
fn a_stream_bypasses_once_it_runs_past_the_cutoff() {
    let (base, cache) = setup();
    let mut writes = Vec::new();
    let mut bypassed = Vec::new();
    for i in 0..16 {
        let off = i * IO;
        bypassed.push(host_write(&cache, &base, i + 1, off, IO));
        writes.push((i + 1, off, IO));
    }
    let first = (CUTOFF / IO) as usize;
    assert!(bypassed[..first].iter().all(|b| !b), "the first {CUTOFF} bytes are cached: {bypassed:?}");
    assert!(bypassed[first..].iter().all(|b| *b), "the rest bypass: {bypassed:?}");
    let st = cache.stats();
    assert_eq!((st.bypass_writes, st.bypass_bytes), (16 - first as u64, (16 - first as u64) * IO));
    // Writes past the cache count as front-end work (writeback pacing sees it).
    assert_eq!(cache.io_ops(), 16, "every write, cached or not, is a front-end operation");
    check_reads(&cache, &base, &writes);
    // A jump starts a new stream; small writes never bypass.
    assert!(!host_write(&cache, &base, 100, 4 << 20, IO));
    for i in 0..8 {
        assert!(!host_write(&cache, &base, 200 + i, (6 << 20) + i * 4096, 4096), "4 KiB writes are cached");
    }
}

#[test]
fn cached_data_over_the_range_keeps_the_write_in_the_cache() {
    let (base, cache) = setup();
    // A cached write inside what the stream will reach.
    host_write(&cache, &base, 1, 10 * IO + 4096, 4096);
    let mut writes = vec![];
    for i in 0..16 {
        let b = host_write(&cache, &base, 10 + i, i * IO, IO);
        assert_eq!(b, i > 3 && i != 10, "write {i}: only the write over the cached key stays in the cache");
        writes.push((10 + i, i * IO, IO));
    }
    check_reads(&cache, &base, &writes);
}

#[test]
fn no_bypass_while_an_earlier_epoch_is_dirty() {
    let (base, cache) = setup();
    host_write(&cache, &base, 1, 7 << 20, 4096);
    // The dirty write above is now in a closed epoch.
    cache.flush().unwrap();
    for i in 0..8 {
        assert!(!host_write(&cache, &base, 10 + i, i * IO, IO), "write {i} must wait for the earlier epoch");
    }
    drain(&cache, &base);
    assert!(host_write(&cache, &base, 20, 8 * IO, IO), "with the earlier epochs on the base, the stream bypasses");
}

#[test]
fn writes_over_a_bypass_in_flight_wait_for_it() {
    let (base, cache) = setup();
    let b = bypass_after_a_stream(&cache, &base);
    // A read of the range misses now; its fill must not survive the bypass.
    let mut buf = vec![0u8; 4096];
    let misses = cache.read(4 * IO, &mut [IoSliceMut::new(&mut buf)]).unwrap();
    assert_eq!(misses.len(), 1);
    // Cached writes and zeroes over the range are deferred, elsewhere not.
    let over = write_data(50, (4 * IO + 8192) / 512, 8);
    assert_eq!(cache.write_buf(0, 4 * IO + 8192, &over).unwrap(), WriteOutcome::Deferred { written: 0 });
    assert_eq!(cache.write_zeroes(4 * IO, 512).unwrap(), WriteOutcome::Deferred { written: 0 });
    let (one, two) = ([std::io::IoSlice::new(&over)], [std::io::IoSlice::new(&over)]);
    let reqs = [WriteReq { offset: 4 * IO + 8192, data: &one }, WriteReq { offset: 4 * IO, data: &two }];
    let mut out = Vec::new();
    cache.write_batch(0, &reqs, &mut out);
    assert!(out.iter().all(|r| matches!(r, Ok(WriteOutcome::Deferred { .. }))), "a batch over it waits: {out:?}");
    // Waiting for a bypass is no lack of space: writeback, GC and the full
    // cache's bypass must not act as if it were.
    assert!(!cache.under_pressure(), "writes waiting for a bypass do not put the cache under pressure");
    // (in another subtree: a write to this one would move its version too)
    assert_eq!(cache.write_buf(0, 5 << 20, &write_data(51, (5 << 20) / 512, 8)).unwrap(), WriteOutcome::Done);
    let epoch = cache.space_epoch();
    base_write(&base, 4 * IO, write_data(5, 4 * IO / 512, IO / 512));
    cache.end_bypass(b, true);
    assert_ne!(cache.space_epoch(), epoch, "ending a bypass wakes deferred writes");
    assert!(!cache.fill(0, &misses[0], &vec![0u8; 4096]).unwrap(), "a fill read during the bypass is dropped");
    assert_eq!(cache.write_buf(0, 4 * IO + 8192, &over).unwrap(), WriteOutcome::Done);
    let got = read_through(&cache, &base, 0, 4 * IO, IO as usize);
    let mut want = write_data(5, 4 * IO / 512, IO / 512);
    want[8192..8192 + 4096].copy_from_slice(&over);
    assert!(got == want, "the later cached write reads over the bypassed data");
}

/// Ending a bypass no write waited for wakes nobody: the wake moves a
/// counter every reactor's deferred writes watch.
#[test]
fn a_bypass_nobody_waited_for_wakes_nothing() {
    let (base, cache) = setup();
    let b = bypass_after_a_stream(&cache, &base);
    let epoch = cache.space_epoch();
    base_write(&base, 4 * IO, write_data(5, 4 * IO / 512, IO / 512));
    cache.end_bypass(b, true);
    assert_eq!(cache.space_epoch(), epoch);
}

/// Only writes that overlap a bypass in flight wait for it: ones just
/// before it, in the same subtree, go in at once, as a write, as zeroes
/// (ending where it starts) and in a batch.
#[test]
fn writes_beside_a_bypass_in_flight_do_not_wait() {
    let (base, cache) = setup();
    let b = bypass_after_a_stream(&cache, &base);
    let before = 4 * IO - 8192;
    let data = write_data(60, before / 512, 8);
    assert_eq!(cache.write_buf(0, before, &data).unwrap(), WriteOutcome::Done, "a write just before the bypass");
    assert_eq!(cache.write_zeroes(before + 4096, 4096).unwrap(), WriteOutcome::Done, "zeroes ending at the bypass");
    // A batch of two (one request alone takes the single-write path).
    let batched = write_data(61, 1, 8);
    let iov = [std::io::IoSlice::new(&batched)];
    let batch = |offsets: [u64; 2]| {
        let reqs = offsets.map(|offset| pcache::WriteReq { offset, data: &iov });
        let mut out = Vec::new();
        cache.write_batch(0, &reqs, &mut out);
        out.into_iter().map(|r| r.unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(batch([512, 8192]), [WriteOutcome::Done, WriteOutcome::Done], "a batch before the bypass");
    // The first byte of the bypass waits, in each form.
    assert_eq!(cache.write_buf(0, 4 * IO, &data).unwrap(), WriteOutcome::Deferred { written: 0 });
    assert_eq!(cache.write_zeroes(4 * IO, 512).unwrap(), WriteOutcome::Deferred { written: 0 });
    assert_eq!(batch([512, 4 * IO]), [WriteOutcome::Done, WriteOutcome::Deferred { written: 0 }]);
    base_write(&base, 4 * IO, write_data(5, 4 * IO / 512, IO / 512));
    cache.end_bypass(b, true);
    let mut want = data[..4096].to_vec();
    want.extend(vec![0u8; 4096]);
    assert!(read_through(&cache, &base, 0, before, 8192) == want);
    assert!(read_through(&cache, &base, 0, 512, 4096) == batched);
}

#[test]
fn a_flush_after_a_bypass_needs_a_base_flush() {
    let (base, cache) = setup();
    assert_eq!(cache.bypass_flush_target(), None);
    for i in 0..6 {
        host_write(&cache, &base, i + 1, i * IO, IO);
    }
    let t = cache.bypass_flush_target().expect("two bypassed writes are not flushed on the base");
    assert_eq!(t, 2);
    cache.bypass_flushed(t);
    assert_eq!(cache.bypass_flush_target(), None);
    host_write(&cache, &base, 7, 6 * IO, IO);
    assert_eq!(cache.bypass_flush_target(), Some(3));
}

#[test]
fn a_cutoff_of_zero_turns_bypass_off() {
    let (base, cache) = setup();
    cache.set_seq_cutoff(0);
    for i in 0..16 {
        assert!(!host_write(&cache, &base, i + 1, i * IO, IO));
    }
    assert_eq!(cache.stats().bypass_writes, 0);
}

#[test]
fn a_flush_request_makes_bypassed_writes_durable_on_the_base() {
    let (base, cache) = setup();
    for i in 0..6 {
        host_write(&cache, &base, i + 1, i * IO, IO);
    }
    // Bypassed data is visible on the base, not yet durable.
    let durable = |i: u64| {
        let img = base.durable_image();
        img[(i * IO) as usize..((i + 1) * IO) as usize] == write_data(i + 1, i * IO / 512, IO / 512)[..]
    };
    assert!(!durable(5));
    assert!(cache.flush_bypassed(&base), "a base flush is needed");
    let t = std::time::Instant::now();
    while cache.flush_bypassed(&base) {
        assert!(t.elapsed().as_secs() < 10, "the base flush never completed");
        std::thread::yield_now();
    }
    assert!(durable(4) && durable(5), "the base flush made both bypassed writes durable");
    assert_eq!(cache.bypass_flush_target(), None);

    // A failing base flush is counted and leaves the writes unflushed.
    host_write(&cache, &base, 7, 6 * IO, IO);
    base.set_faults(pcache::Faults { write_fail_per_mille: 0, flush_fail_per_mille: 1000 });
    let errors = cache.stats().writeback_errors;
    assert!(cache.flush_bypassed(&base));
    let t = std::time::Instant::now();
    while cache.stats().writeback_errors == errors {
        assert!(t.elapsed().as_secs() < 10, "the failed base flush was not counted");
        std::thread::yield_now();
    }
    assert_eq!(cache.bypass_flush_target(), Some(3), "still to be flushed");
}

#[test]
fn no_bypass_while_gc_runs() {
    let (base, cache) = setup();
    for i in 0..4 {
        host_write(&cache, &base, i + 1, i * IO, IO);
    }
    let gc = cache.gc_pass_for_tests();
    assert!(
        cache.begin_bypass(0, 4 * IO, IO).is_none(),
        "GC may have keys out of the index but not yet out of the log"
    );
    drop(gc);
    let b = cache.begin_bypass(0, 5 * IO, IO).expect("bypass once GC is done");
    cache.end_bypass(b, true);
}

#[test]
fn a_bypass_may_cross_a_subtree() {
    let (base, cache) = setup();
    const SUBTREE: u64 = 4 << 20;
    // A stream ending past a subtree boundary, with a key just past it.
    host_write(&cache, &base, 1, SUBTREE + 8192, 4096);
    let mut writes = vec![(1, SUBTREE + 8192, 4096)];
    for i in 0..8 {
        let off = SUBTREE - 8 * IO + 32768 + i * IO;
        let b = host_write(&cache, &base, 10 + i, off, IO);
        writes.push((10 + i, off, IO));
        if i == 7 {
            assert!(!b, "the write over the key past the boundary stays in the cache");
        }
    }
    assert!(host_write(&cache, &base, 20, SUBTREE + 32768, IO), "the stream bypasses again past the key");
    writes.push((20, SUBTREE + 32768, IO));
    writes.remove(0); // overwritten by write 17
    check_reads(&cache, &base, &writes);
}

#[test]
fn the_defaults_bypass_long_streams_of_large_writes_only() {
    assert_eq!(pcache::Config::new(pcache::BaseIdentity::named(BASE, 512, "b")).seq_cutoff, 1 << 20);
    let (base, cache) = setup();
    // A long stream of 32 KiB writes: merged by writeback, never bypassed.
    for i in 0..64 {
        assert!(!host_write(&cache, &base, i + 1, i * 32768, 32768), "32 KiB write {i} bypassed");
    }
    // 64 KiB writes of a stream past the cutoff do.
    assert!(host_write(&cache, &base, 100, 64 * 32768, IO));
}

#[test]
fn each_worker_has_a_stream_of_its_own() {
    let (base, cache) = setup_workers(3);
    // Workers 1 and 2 write two streams, interleaved.
    let mut bypassed = [0, 0];
    for i in 0..12 {
        for (k, w) in [1usize, 2].into_iter().enumerate() {
            let off = ((k as u64 * 2) << 20) + i * IO;
            if worker_write(&cache, &base, w, 10 * (w as u64) + i, off, IO) {
                bypassed[k] += 1;
            }
        }
    }
    assert_eq!(bypassed, [8, 8], "each stream bypasses once it alone runs past the cutoff");
}

#[test]
fn a_stream_may_run_to_the_end_of_the_base() {
    let (base, cache) = setup();
    let mut writes = Vec::new();
    for i in 0..8 {
        let off = BASE - (8 - i) * IO;
        host_write(&cache, &base, i + 1, off, IO);
        writes.push((i + 1, off, IO));
    }
    assert!(cache.stats().bypass_writes > 0);
    check_reads(&cache, &base, &writes);
}

#[test]
fn two_bypasses_over_the_same_bytes_do_not_run_at_once() {
    let (base, cache) = setup_workers(2);
    cache.set_seq_cutoff(IO); // two writes in a row make a stream
                              // Worker 0: a cached write, then a bypass over [IO, 5 IO), left in flight.
    assert!(!worker_write(&cache, &base, 0, 1, 0, IO));
    let a = cache.begin_bypass(0, IO, 4 * IO).expect("worker 0's stream bypasses");
    // Worker 1 bypasses elsewhere meanwhile.
    assert!(!worker_write(&cache, &base, 1, 2, 20 * IO, IO));
    let b = cache.begin_bypass(1, 21 * IO, IO).expect("worker 1 bypasses where nothing is in flight");
    cache.end_bypass(b, true);
    // Worker 1's stream runs into worker 0's range in flight: no bypass.
    assert!(cache.begin_bypass(1, 0, IO).is_none(), "a key covers [0, IO)");
    assert!(cache.begin_bypass(1, IO, IO).is_none(), "a bypass over these bytes is in flight");
    cache.end_bypass(a, true);
    let c = cache.begin_bypass(1, 2 * IO, IO).expect("once it ended, the stream bypasses");
    cache.end_bypass(c, true);
}

/// Fills the cache with 4 KiB writes at distinct offsets until one is
/// deferred; returns how many went in.
fn fill_until_full(cache: &Cache) -> u64 {
    let mut i = 0;
    while cache.write_buf(0, i * 4096, &write_data(1000 + i, i * 8, 8)).unwrap() == WriteOutcome::Done {
        i += 1;
        assert!(i * 4096 < BASE, "the cache never filled");
    }
    i
}

#[test]
fn a_full_cache_sends_writes_nothing_cached_overlaps_to_the_base() {
    let (base, cache) = setup();
    assert!(cache.bypass_when_full(BASE - IO, 4096).is_none(), "the cache has room: the write goes into it");
    let n = fill_until_full(&cache);
    assert!(cache.bypass_when_full(0, 4096).is_none(), "a cached block is overwritten in the cache, not around it");
    assert!(cache.bypass_when_full((n - 1) * 4096, 8192).is_none(), "nor is a write that partly overlaps one");
    // A block nothing caches goes to the base, however small.
    let off = BASE - IO;
    let b = cache.bypass_when_full(off, 4096).expect("the cache is full and nothing covers the block");
    assert!(b.when_full);
    base_write(&base, off, write_data(7, off / 512, 8));
    cache.end_bypass(b, true);
    let st = cache.stats();
    assert_eq!((st.bypass_writes, st.bypass_full_writes), (1, 1));
    check_reads(&cache, &base, &[(7, off, 4096), (1000, 0, 4096)]);
    assert_eq!(cache.bypass_flush_target(), Some(1), "a FLUSH must flush the base for it");
}

#[test]
fn a_full_cache_bypasses_nothing_while_an_earlier_epoch_is_dirty() {
    let (base, cache) = setup();
    cache.write_buf(0, BASE - 2 * IO, &write_data(1, (BASE - 2 * IO) / 512, 8)).unwrap();
    // The write above is now in a closed epoch, not yet on the base.
    cache.flush().unwrap();
    fill_until_full(&cache);
    assert!(
        cache.bypass_when_full(BASE - IO, 4096).is_none(),
        "the base may not get a write ahead of an earlier epoch"
    );
    drain(&cache, &base);
    assert!(cache.under_pressure(), "still full: clean data waits for GC");
    assert!(cache.bypass_when_full(BASE - IO, 4096).is_some(), "with the earlier epochs on the base, it may");
}

/// Writes 4 KiB blocks (block `i` at `i * 4096 % span`) until `pct` percent
/// of the segments are in use, then lets the open ksets expire and writes
/// back everything journalled, without a FLUSH (so overwrites are skipped).
fn fill_then_write_back(cache: &Cache, base: &MemBase, span: u64, pct: u32) {
    let mut i = 0;
    while cache.used_percent() < pct {
        let off = i * 4096 % span;
        assert_eq!(cache.write_buf(0, off, &write_data(2000 + i, off / 512, 8)).unwrap(), WriteOutcome::Done);
        i += 1;
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    cache.flush_expired_ksets().unwrap();
    while cache.writeback_step(base).unwrap() != WbProgress::Idle {}
}

#[test]
fn a_full_cache_that_absorbs_little_sends_new_blocks_to_the_base() {
    let (base, cache) = setup();
    assert_eq!(cache.absorbed_percent(), None, "no batch yet");
    // Every block written once: writeback skips nothing.
    fill_then_write_back(&cache, &base, BASE, 62);
    assert_eq!(cache.absorbed_percent(), Some(0));
    assert!(!cache.under_pressure(), "no write waited for space");
    assert!(cache.is_full(), "writeback absorbs nothing: new blocks are better sent to the base");
    let b = cache.bypass_when_full(BASE - IO, 4096).expect("a block nothing caches goes to the base");
    cache.end_bypass(b, true);
    assert!(cache.bypass_when_full(0, 4096).is_none(), "a cached block is still overwritten in the cache");
}

/// Dirty data holding the room new blocks want: writeback frees it at full
/// speed rather than trickle (the base lag grew for good over RBD). Little
/// dirty data: it trickles, so that later writes find something to
/// overwrite (see the next test).
#[test]
fn a_cache_full_enough_to_send_writes_to_the_base_writes_back_at_full_speed() {
    let (base, cache) = setup();
    fill_then_write_back(&cache, &base, BASE, 62);
    // A little new dirty data, far below the GC threshold.
    let mut i = 0u64;
    let mut write = |n: u64| {
        for _ in 0..n {
            let off = BASE / 2 + i * 4096;
            // GC reclaims the clean data for room.
            while cache.write_buf(0, off, &write_data(3000 + i, off / 512, 8)).unwrap() != WriteOutcome::Done {
                assert!(cache.gc_step().unwrap() > 0, "no room, and nothing for GC");
            }
            i += 1;
        }
    };
    write(16);
    assert!(cache.is_full(), "new blocks go to the base");
    assert!(cache.dirty_percent() < 10, "{}", cache.dirty_percent());
    assert!(cache.writeback_pace(true, false).is_some(), "little is dirty: writeback trickles");
    // Dirty data up to 20 % below the GC threshold (70 %): full speed.
    while cache.dirty_percent() < 50 || cache.used_percent() < 62 || cache.under_pressure() {
        write(1);
    }
    assert!(cache.is_full());
    assert_eq!(
        cache.writeback_pace(true, false),
        None,
        "writes bypass for want of room that dirty data holds: writeback must make it at full speed, not trickle"
    );
}

/// A cache that bypassed while it absorbed little, then given a hot set of
/// reads and writes a quarter its size, takes the hot set's writes again:
/// writeback leaves them dirty long enough for later writes to overwrite,
/// so that writeback's batches find them absorbed (or the full cache's
/// writes find them cached, full_hits.rs). Written back at full
/// speed as long as the cache bypasses, they never were, and the cache went
/// on sending the hot set's new blocks to the base (mixed 50/50 at a tenth
/// of its speed).
#[test]
fn a_hot_set_ends_the_bypass_of_a_cache_that_absorbed_little() {
    use rand::{Rng, SeedableRng};
    let (base, cache) = setup();
    fill_then_write_back(&cache, &base, BASE, 62);
    assert!(cache.is_full());
    let hot = 256u64;
    let mut last = vec![None; hot as usize];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
    let (mut id, mut late_writes, mut late_bypasses) = (10_000u64, 0, 0);
    for round in 0..600 {
        for op in 0..64 {
            let b = rng.random_range(0..hot);
            let off = BASE / 2 + b * 4096;
            if rng.random_bool(0.5) {
                read_through(&cache, &base, 0, off, 4096);
            } else {
                id += 1;
                let bypassed = host_write(&cache, &base, id, off, 4096);
                if round >= 500 {
                    late_writes += 1;
                    late_bypasses += bypassed as u64;
                }
                last[b as usize] = Some(id);
            }
            // A busy host's pollers between I/Os: writeback steps at once
            // when its pace asks for no wait, else once in ten rounds (its
            // trickle).
            if cache.writeback_pace(true, false).is_none() || (round % 10 == 0 && op == 0) {
                cache.background_step(&base).unwrap();
            } else {
                cache.flush_expired_ksets().unwrap();
                cache.gc_step().unwrap();
            }
        }
    }
    // What ends the bypass (writeback finding the hot set absorbed, or the
    // full cache's writes finding cached data) depends on how many ksets
    // expire per round, which is wall-clock time: only the outcome is
    // asserted (absorbed_percent was 46-48 % on a loaded machine, against
    // 50 % or more on an idle one).
    assert!(
        late_bypasses * 100 < late_writes,
        "{late_bypasses} of the hot set's last {late_writes} writes bypassed: {:?}",
        cache.stats()
    );
    for (b, id) in last.iter().enumerate() {
        let off = BASE / 2 + b as u64 * 4096;
        if let Some(id) = id {
            assert!(read_through(&cache, &base, 0, off, 4096) == write_data(*id, off / 512, 8), "block {b}");
        }
    }
}

#[test]
fn a_full_cache_that_absorbs_overwrites_keeps_new_writes() {
    let (base, cache) = setup();
    // A hot set of 64 blocks overwritten over and over: writeback skips most.
    fill_then_write_back(&cache, &base, 64 * 4096, 62);
    assert!(cache.absorbed_percent().is_some_and(|p| p >= 50), "{:?}", cache.absorbed_percent());
    assert!(!cache.is_full(), "writeback absorbs most overwrites: the cache keeps taking writes");
    assert!(cache.bypass_when_full(BASE - IO, 4096).is_none());
}

#[test]
fn gc_freeing_space_ends_the_pressure() {
    let (base, cache) = setup();
    fill_until_full(&cache);
    assert!(cache.under_pressure());
    drain(&cache, &base);
    while cache.gc_step().unwrap() > 0 {}
    assert!(!cache.under_pressure(), "GC freed segments: writes that bypass would otherwise keep the flag forever");
    assert!(!cache.is_full());
}

/// A full cache that absorbed little but finds cached data under most of
/// its writes holds the working set after all: it takes new blocks again,
/// whatever writeback measured (full_hits.rs).
#[test]
fn a_full_cache_whose_writes_find_cached_data_takes_new_blocks_again() {
    let (base, cache) = setup();
    fill_then_write_back(&cache, &base, BASE, 62);
    assert!(cache.is_full() && cache.absorbed_percent() == Some(0));
    let mut id = 50_000;
    for sample in 0..2 {
        cache.sample_full_hits(std::time::Instant::now());
        // Nine writes in ten over cached blocks, one to a new block.
        for i in 0..100u64 {
            id += 1;
            let off = if i % 10 == 9 { BASE / 2 + (sample * 100 + i) * 4096 } else { i * 4096 };
            let bypassed = host_write(&cache, &base, id, off, 4096);
            assert_eq!(bypassed, off >= BASE / 2 && cache.is_full(), "write {i} at {off}");
        }
        std::thread::sleep(std::time::Duration::from_millis(110));
    }
    cache.sample_full_hits(std::time::Instant::now());
    assert!(cache.full_hits_percent().is_some_and(|p| p >= 85), "{:?}", cache.full_hits_percent());
    assert!(cache.absorbed_percent().is_some_and(|p| p < 50), "writeback still finds little overwritten");
    assert!(!cache.is_full(), "most writes find cached data: new blocks go into the cache");
    assert!(cache.bypass_when_full(BASE - IO, 4096).is_none());
}
