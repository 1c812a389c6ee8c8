//! Keeping dirty data (src/writeback.rs, "Keeping"): while GC needs room, a
//! host's writeback tick moves the live dirty data of the open epoch to the
//! log head instead of writing it; the base gets it once the lag, a drain or
//! a FLUSH-ended epoch asks for it, and nothing kept is ever lost.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pcache::pmem::{Media, MemMedia};
use pcache::{Cache, MemBase};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

const BASE: u64 = 8 << 20;
const HOT: u64 = 1 << 20;

fn setup(lag: Duration) -> (Arc<MemMedia>, MemBase, Cache) {
    setup_with(lag, pcache::Config::new(pcache::BaseIdentity::named(0, 512, "")).writeback_batch_bytes)
}

fn setup_with(lag: Duration, batch_bytes: u64) -> (Arc<MemMedia>, MemBase, Cache) {
    let media = Arc::new(MemMedia::new(media_len(64)));
    let mut cfg = config(BASE, 1);
    cfg.writeback_batch_bytes = batch_bytes;
    cfg.gc_percent = Some(70);
    cfg.base_lag = lag;
    let cache = open(media.clone() as Arc<dyn Media>, &cfg);
    (media, base(BASE as usize), cache)
}

/// Background work as a busy host's pollers run it, without the wall clock:
/// writeback steps when a busy front end's pacing says to step at once
/// (Cache::writeback_pace; its trickle left out); GC steps whenever it has work.
fn tick(cache: &Cache, base: &MemBase) {
    if cache.writeback_pace(true, false).is_none() {
        cache.background_step(base).unwrap();
    } else {
        cache.flush_expired_ksets().unwrap();
        cache.gc_step().unwrap();
    }
}

/// Writes a random quarter of the hot range's 4 KiB blocks (ids from `id`,
/// one per write) `rounds` times, running background work as a busy host's
/// pollers do after each round: some blocks stay live long enough to reach
/// the tail of the log. Returns the id of the last write of each block.
fn rewrite_hot(cache: &Cache, base: &MemBase, id: &mut u64, rounds: u64) -> Vec<u64> {
    let mut last = vec![0; (HOT / 4096) as usize];
    let mut rng = SmallRng::seed_from_u64(7);
    for round in 0..rounds {
        for (i, l) in last.iter_mut().enumerate() {
            // The first round writes every block.
            if round > 0 && rng.next_u64() % 4 != 0 {
                continue;
            }
            *id += 1;
            let off = i as u64 * 4096;
            write_all(cache, base, 0, off, &write_data(*id, off / 512, 8));
            *l = *id;
        }
        for _ in 0..8 {
            tick(cache, base);
        }
    }
    last
}

fn check(img: &[u8], last: &[u64], what: &str) {
    for (b, &id) in last.iter().enumerate() {
        for s in b as u64 * 8..b as u64 * 8 + 8 {
            let got = who_wrote(&img[s as usize * 512..(s as usize + 1) * 512], s);
            assert_eq!(got, Some(id), "{what}: sector {s}");
        }
    }
}

/// A hot set rewritten over and over in a cache that must reclaim: its
/// dirty data is kept, not written, while the base may lag; with no lag it
/// is written.
#[test]
fn a_hot_set_stays_dirty_while_the_base_may_lag() {
    let (_, base, cache) = setup(Duration::from_secs(3600));
    let mut id = 0;
    rewrite_hot(&cache, &base, &mut id, 64);
    let st = cache.stats();
    assert!(st.gc_ksets > 0 && st.writeback_kept_bytes > 0, "GC ran and dirty data was kept: {st:?}");
    let written = |st: &pcache::Stats| st.writeback_bytes - st.writeback_kept_bytes - st.writeback_skipped_bytes;
    // Batches that later writes overwrote less than writeback.rs's
    // KEEP_MIN_OVERWRITTEN are written: some of the set reaches the base.
    assert!(written(&st) < 2 * st.writeback_kept_bytes, "much of it was kept: {st:?}");

    let (_, base0, lagless) = setup(Duration::ZERO);
    let mut id = 0;
    rewrite_hot(&lagless, &base0, &mut id, 64);
    let st0 = lagless.stats();
    assert_eq!(st0.writeback_kept_bytes, 0, "no lag: nothing kept");
    assert!(written(&st0) > written(&st), "no lag: the base gets more: {st0:?} vs {st:?}");
}

/// Keeping starts only once data writes are about to run out of free
/// segments (writeback::keep_room), not at gc_percent: until then GC reclaims only what writeback
/// wrote, and the hot set stays in place instead of being moved round the log.
#[test]
fn a_hot_set_is_kept_only_once_the_cache_is_nearly_full() {
    // Batches small beside the cache: what one may move leaves much room.
    let (_, base, cache) = setup_with(Duration::from_secs(3600), 128 << 10);
    let mut rng = SmallRng::seed_from_u64(5);
    let (mut kept, mut id) = (0, 0u64);
    while kept == 0 {
        id += 1;
        assert!(id < 1_000_000, "nothing was ever kept");
        let off = rng.next_u64() % (HOT / 4096) * 4096;
        write_all(&cache, &base, 0, off, &write_data(id, off / 512, 8));
        let used = cache.used_percent();
        tick(&cache, &base);
        let now = cache.stats().writeback_kept_bytes;
        if now > kept {
            assert!(used >= cache.gc_percent() as u32 + 10, "kept at {used} % in use");
            kept = now;
        }
    }
}

/// A power cut while data is kept: what the restarted cache serves is what
/// a full writeback then puts on the base (a kept key is journalled before
/// dirty_tail passes its original, so no original is served as clean while
/// the base lacks it), and every sector holds a value that was written.
#[test]
fn after_a_crash_the_cache_serves_what_reaches_the_base() {
    let (media, base, cache) = setup(Duration::from_secs(3600));
    let mut id = 0;
    let last = rewrite_hot(&cache, &base, &mut id, 64);
    // More writes until a writeback batch keeps data, then at once a power
    // cut with every store durable: the open ksets are lost.
    let kept = cache.stats().writeback_kept_bytes;
    let mut rng = SmallRng::seed_from_u64(3);
    while cache.stats().writeback_kept_bytes == kept {
        id += 1;
        let off = rng.next_u64() % last.len() as u64 * 4096;
        write_all(&cache, &base, 0, off, &write_data(id, off / 512, 8));
        if cache.writeback_pace(true, false).is_none() {
            while cache.writeback_tick(&base).unwrap() == pcache::WbProgress::Busy {}
            cache.gc_step().unwrap();
        }
        assert!(id < 1_000_000, "no batch was kept");
    }
    drop(cache);
    let again = open(media as Arc<dyn Media>, &config(BASE, 1));
    let served = read_through(&again, &base, 0, 0, HOT as usize);
    for s in 0..HOT / 512 {
        let got = who_wrote(&served[s as usize * 512..(s as usize + 1) * 512], s);
        assert!(got.is_some_and(|i| i <= id), "sector {s} holds {got:?}, which nobody wrote");
    }
    again.writeback_all(&base).unwrap();
    let img = base.durable_image();
    for s in 0..HOT / 512 {
        let r = s as usize * 512..(s as usize + 1) * 512;
        assert_eq!(who_wrote(&img[r.clone()], s), who_wrote(&served[r], s), "sector {s}: served and on the base");
    }
}

/// A drain (what a flush request or a delete with flush waits for) gets
/// everything written before it onto the base, kept before or not.
#[test]
fn a_drain_ticket_puts_kept_data_on_the_base() {
    let (_, base, cache) = setup(Duration::from_secs(3600));
    let mut id = 0;
    let last = rewrite_hot(&cache, &base, &mut id, 64);
    let ticket = cache.drain_ticket().unwrap();
    let mut steps = 0;
    while !cache.written_back(ticket) {
        // A host's ticks (a waiting flush: writeback unpaced), GC needing room.
        cache.background_step(&base).unwrap();
        steps += 1;
        assert!(steps < 100_000, "the drain never ended");
    }
    check(&base.durable_image(), &last, "after the drain");
}

/// The lag bounds how long data stays off the base: once it has passed,
/// what was journalled then is written, not kept.
#[test]
fn the_lag_puts_old_data_on_the_base() {
    let (_, base, cache) = setup(Duration::from_millis(200));
    let mut id = 0;
    let last = rewrite_hot(&cache, &base, &mut id, 64);
    std::thread::sleep(Duration::from_millis(250));
    // Writes elsewhere keep GC busy; the hot range is left alone.
    let mut other = 1u64 << 20;
    let mut steps = 0;
    loop {
        let img = base.durable_image();
        let on_base =
            last.iter().enumerate().all(|(b, &i)| who_wrote(&img[b * 4096..b * 4096 + 512], b as u64 * 8) == Some(i));
        if on_base {
            break;
        }
        id += 1;
        write_all(&cache, &base, 0, other, &write_data(id, other / 512, 8));
        other = (1 << 20) + (other + 4096) % (BASE - (1 << 20));
        tick(&cache, &base);
        steps += 1;
        assert!(steps < 200_000, "the hot range never reached the base");
    }
}

/// A write that completes only once on the base (writethrough) is never
/// kept, even if the cache is back in writeback before its batch is planned.
#[test]
fn a_write_waiting_for_the_base_is_never_kept() {
    // Every kset a batch of its own, so that the write's batch starts after
    // the mode switch's drain.
    let (_, base, cache) = setup_with(Duration::from_secs(3600), 1);
    let mut id = 0;
    rewrite_hot(&cache, &base, &mut id, 64);
    cache.set_cache_mode(pcache::CacheMode::Writethrough).unwrap();
    id += 1;
    let x = id;
    write_all(&cache, &base, 0, 0, &write_data(x, 0, 8));
    let ticket = cache.through_ticket().unwrap();
    cache.set_cache_mode(pcache::CacheMode::Writeback).unwrap();
    let mut b = 1u64;
    while !cache.written_back(ticket) {
        // Writes elsewhere in the hot range keep GC needing room.
        id += 1;
        let off = 4096 * (1 + b % (HOT / 4096 - 1));
        write_all(&cache, &base, 0, off, &write_data(id, off / 512, 8));
        b += 7;
        tick(&cache, &base);
        assert!(id < 1_000_000, "the write never reached the base");
    }
    let img = base.durable_image();
    for s in 0..8 {
        assert_eq!(
            who_wrote(&img[s * 512..(s + 1) * 512], s as u64),
            Some(x),
            "sector {s}: the writethrough write is on the base"
        );
    }
}

/// A working set larger than the cache, rarely overwritten before writeback
/// reaches it, is written, not kept: keeping it would move it round and
/// round (writeback.rs, KEEP_MIN_OVERWRITTEN).
#[test]
fn a_working_set_larger_than_the_cache_is_not_kept() {
    let (_, base, cache) = setup(Duration::from_secs(3600));
    let mut rng = SmallRng::seed_from_u64(11);
    for id in 1..=4096u64 {
        let off = rng.next_u64() % (BASE / 4096) * 4096;
        write_all(&cache, &base, 0, off, &write_data(id, off / 512, 8));
        if id % 64 == 0 {
            tick(&cache, &base);
        }
    }
    let st = cache.stats();
    assert!(st.gc_ksets > 0 && st.base_writes > 0, "the cache cycled: {st:?}");
    assert_eq!(st.writeback_kept_bytes, 0, "nothing kept: {st:?}");
}

/// A dirty-data cap (max_dirty_percent): at it a busy front end's writeback
/// runs at full speed instead of trickling, and a hot set is written, not
/// kept. Out-of-range caps are refused.
#[test]
fn the_dirty_cap_stops_keeping_and_trickling() {
    let (_, base, cache) = setup(Duration::from_secs(3600));
    let mut id = 0;
    // The hot range once: a quarter of the cache dirty, GC not needed yet.
    for i in 0..HOT / 4096 {
        id += 1;
        write_all(&cache, &base, 0, i * 4096, &write_data(id, i * 8, 8));
    }
    assert!(cache.dirty_percent() >= 20, "{}", cache.dirty_percent());
    assert!(cache.writeback_pace(true, false).is_some(), "no cap: writeback trickles");
    cache.set_max_dirty_percent(10).unwrap();
    assert_eq!(cache.max_dirty_percent(), 10);
    assert_eq!(cache.writeback_pace(true, false), None, "at the cap: full speed");

    rewrite_hot(&cache, &base, &mut id, 64);
    let st = cache.stats();
    assert!(st.gc_ksets > 0 && st.writeback_bytes > 0, "GC and writeback ran: {st:?}");
    assert_eq!(st.writeback_kept_bytes, 0, "over the cap nothing is kept: {st:?}");

    for bad in [0, 101] {
        assert!(cache.set_max_dirty_percent(bad).is_err(), "{bad}");
    }
    assert_eq!(cache.max_dirty_percent(), 10);
}

/// How far the base lags (get_stats' base_behind): zero when clean, the
/// age of the oldest dirty data otherwise, back to zero once written back.
#[test]
fn base_behind_is_the_age_of_the_oldest_dirty_data() {
    let (_, base, cache) = setup(Duration::from_secs(3600));
    assert_eq!(cache.base_behind(), Duration::ZERO);
    write_all(&cache, &base, 0, 0, &write_data(1, 0, 8));
    std::thread::sleep(Duration::from_millis(250));
    cache.background_step(&base).unwrap(); // notes the log head's age
    write_all(&cache, &base, 0, 4096, &write_data(2, 8, 8));
    let behind = cache.base_behind();
    assert!(behind >= Duration::from_millis(250), "{behind:?}");
    cache.writeback_all(&base).unwrap();
    assert_eq!(cache.base_behind(), Duration::ZERO);
}
