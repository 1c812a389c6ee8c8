//! Cache modes (src/mode.rs): where writes go, when they may complete, what
//! a mode switch does, and that the mode survives a restart.

mod common;

use std::sync::Arc;

use common::*;
use pcache::pmem::{Media, MemMedia};
use pcache::{BaseDevice, Cache, CacheMode, MemBase, WbProgress};

const BASE: u64 = 8 << 20;
const IO: u64 = 4096;

fn setup(mode: Option<CacheMode>) -> (Arc<MemMedia>, MemBase, Cache) {
    let media = Arc::new(MemMedia::new(media_len(64)));
    let base = base(BASE as usize);
    let mut cfg = config(BASE, 1);
    cfg.cache_mode = mode;
    let cache = open(media.clone() as Arc<dyn Media>, &cfg);
    (media, base, cache)
}

/// A write as the SPDK module does it in `cache`'s mode: straight to the base
/// when the cache lets it (writearound, passthrough), else into the cache;
/// then, in every mode but writeback, running writeback until the cache says
/// it is on the base. Returns whether it went around the cache, and how many
/// writeback steps it waited for.
fn host_write(cache: &Cache, base: &MemBase, id: u64, off: u64) -> (bool, usize) {
    let data = write_data(id, off / 512, IO / 512);
    if let Some(b) = cache.begin_around(off, IO) {
        wait_base(|done| base.write(off, data, done)).unwrap();
        cache.end_bypass(b, true);
        return (true, 0);
    }
    write_all(cache, base, 0, off, &data);
    if cache.cache_mode().completes_in_cache() {
        return (false, 0);
    }
    let ticket = cache.through_ticket().unwrap();
    let mut steps = 0;
    // The test base completes I/O on its own thread, when it gets to it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cache.written_back(ticket) {
        cache.writeback_step(base).unwrap();
        steps += 1;
        assert!(std::time::Instant::now() < deadline, "writeback never reached the write ({steps} steps)");
        std::thread::yield_now();
    }
    (false, steps)
}

fn on_base(base: &MemBase, id: u64, off: u64) -> bool {
    let img = base.durable_image();
    img[off as usize..(off + IO) as usize] == write_data(id, off / 512, IO / 512)[..]
}

#[test]
fn writethrough_completes_a_write_only_once_it_is_flushed_on_the_base() {
    let (_m, base, cache) = setup(Some(CacheMode::Writethrough));
    for i in 0..20u64 {
        let off = (i * 7 % 16) * IO;
        let (around, steps) = host_write(&cache, &base, i + 1, off);
        assert!(!around, "writethrough never writes around the cache");
        assert!(steps > 0, "write {i} completed before writeback ran");
        // Flushed, not merely written: the durable image has it.
        assert!(on_base(&base, i + 1, off), "write {i} completed but is not durable on the base");
        assert_eq!(read_through(&cache, &base, 0, off, IO as usize), write_data(i + 1, off / 512, IO / 512));
    }
    assert!(cache.is_clean(), "what writethrough caches is clean");
    assert!(cache.stats().read_hit_ops > 0, "written data is served from the cache");
}

#[test]
fn writearound_sends_writes_past_the_cache_unless_cached_data_overlaps() {
    let (_m, base, cache) = setup(Some(CacheMode::Writearound));
    assert!(host_write(&cache, &base, 1, 0).0, "nothing cached: the write goes around");
    assert!(cache.is_clean() && cache.stats().write_ops == 0, "nothing went into the cache");
    assert_eq!(base.visible_image()[..IO as usize], write_data(1, 0, IO / 512)[..]);
    // A read caches the block; a write over it then updates the cache and
    // completes once written back, so the cache never holds older data.
    assert_eq!(read_through(&cache, &base, 0, 0, IO as usize), write_data(1, 0, IO / 512));
    assert!(cache.stats().fill_bytes > 0, "writearound caches reads");
    let (around, steps) = host_write(&cache, &base, 2, 0);
    assert!(!around && steps > 0, "a write over cached data goes through the cache and waits");
    assert!(on_base(&base, 2, 0));
    assert_eq!(read_through(&cache, &base, 0, 0, IO as usize), write_data(2, 0, IO / 512));
}

#[test]
fn writeback_never_writes_around() {
    let (_m, base, cache) = setup(None);
    assert_eq!(cache.cache_mode(), CacheMode::Writeback, "a new cache is writeback");
    assert!(cache.begin_around(0, IO).is_none());
    assert_eq!(host_write(&cache, &base, 1, 0), (false, 0));
    assert!(!cache.is_clean(), "writeback completes writes in the cache");
}

#[test]
fn passthrough_caches_no_read_misses_and_still_serves_cached_data() {
    let (_m, base, cache) = setup(None);
    host_write(&cache, &base, 1, 0);
    cache.set_cache_mode(CacheMode::Passthrough).unwrap();
    read_through(&cache, &base, 0, 8 * IO, IO as usize);
    assert_eq!(cache.stats().fill_bytes, 0, "a read miss is not cached");
    assert_eq!(read_through(&cache, &base, 0, 0, IO as usize), write_data(1, 0, IO / 512), "dirty data is served");
    assert!(cache.stats().read_hit_ops > 0);
    // Write 1 is dirty but in the open epoch: a write elsewhere may reach the
    // base first. After a FLUSH it may not, until writeback has put write 1
    // there; so that write goes through the cache and waits.
    assert!(host_write(&cache, &base, 2, 16 * IO).0, "the dirty data is all in the open epoch");
    host_write(&cache, &base, 3, 0);
    cache.flush().unwrap();
    let (around, steps) = host_write(&cache, &base, 4, 24 * IO);
    assert!(!around && steps > 0, "an earlier epoch is not on the base yet");
    assert!(on_base(&base, 3, 0) && on_base(&base, 4, 24 * IO));
    assert!(host_write(&cache, &base, 5, 32 * IO).0, "every earlier epoch is on the base now");
}

#[test]
fn leaving_writeback_writes_back_what_was_dirty_at_full_speed() {
    let (_m, base, cache) = setup(None);
    for i in 0..8 {
        host_write(&cache, &base, i + 1, i * IO);
    }
    assert!(cache.writeback_pace(true, false).is_some(), "writeback trickles under a busy front end");
    cache.set_cache_mode(CacheMode::Writearound).unwrap();
    assert!(cache.mode_transition(), "dirty data of writeback mode is left");
    assert_eq!(cache.writeback_pace(true, false), None, "leaving writeback, writeback is not paced");
    while cache.writeback_step(&base).unwrap() != WbProgress::Idle {}
    assert!(!cache.mode_transition());
    for i in 0..8 {
        assert!(on_base(&base, i + 1, i * IO), "write {i} was written back");
    }
    // Back to writeback: no transition, pacing again.
    cache.set_cache_mode(CacheMode::Writeback).unwrap();
    assert!(!cache.mode_transition());
}

#[test]
fn the_mode_survives_a_restart_and_a_gc_percent_change() {
    let (media, base, cache) = setup(None);
    cache.set_cache_mode(CacheMode::Writearound).unwrap();
    drop(cache);
    let again = open(media.clone() as Arc<dyn Media>, &config(BASE, 1));
    assert_eq!(again.cache_mode(), CacheMode::Writearound);
    again.set_gc_percent(50).unwrap();
    drop(again);
    let again = open(media.clone() as Arc<dyn Media>, &config(BASE, 1));
    assert_eq!((again.cache_mode(), again.gc_percent()), (CacheMode::Writearound, 50));
    drop(again);
    // A mode given at open replaces the recorded one, and is recorded.
    let mut cfg = config(BASE, 1);
    cfg.cache_mode = Some(CacheMode::Passthrough);
    drop(open(media.clone() as Arc<dyn Media>, &cfg));
    let third = open(media as Arc<dyn Media>, &config(BASE, 1));
    assert_eq!(third.cache_mode(), CacheMode::Passthrough);
    drop(base);
}
