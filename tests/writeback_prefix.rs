//! Writeback keeps the base device a prefix of the flush epochs.
//!
//! Writes are grouped into epochs separated by flushes. Writeback then runs
//! step by step; at every step the base device is "crashed" (its flushed image
//! plus a random subset of unflushed writes). For some epoch k, every sector
//! must hold its value as of the end of epoch k, or a value written in epoch
//! k+1 — never a value from a later epoch while an earlier one is incomplete.

mod common;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use pcache::pmem::{Media, MemMedia};
use pcache::WbProgress;

const BASE_SECTORS: u64 = 1024;

fn check_prefix(img: &[u8], states: &[HashMap<u64, u64>], writes: &[HashMap<u64, Vec<u64>>]) -> Option<usize> {
    let sector = |s: u64| who_wrote(&img[s as usize * 512..(s as usize + 1) * 512], s);
    (0..states.len()).rev().find(|&k| {
        (0..BASE_SECTORS).all(|s| {
            let have = sector(s);
            let want = states[k].get(&s).copied().unwrap_or(0);
            have == Some(want)
                || writes.get(k + 1).and_then(|w| w.get(&s)).is_some_and(|ids| have.is_some_and(|h| ids.contains(&h)))
        })
    })
}

/// What the base may hold: states[k] maps sector -> id after epoch k;
/// writes[k] lists the ids written in epoch k.
struct Epochs {
    states: Vec<HashMap<u64, u64>>,
    writes: Vec<HashMap<u64, Vec<u64>>>,
}

impl Epochs {
    fn new() -> Self {
        Epochs { states: vec![HashMap::new()], writes: vec![HashMap::new()] }
    }

    /// Writes `min` to `min + 59` random writes as epoch `epoch` (ended by
    /// the caller) and records them.
    fn write(
        &mut self,
        cache: &pcache::Cache,
        base: &pcache::MemBase,
        rng: &mut SmallRng,
        seed: u64,
        epoch: u64,
        min: u64,
    ) {
        let mut state = self.states.last().unwrap().clone();
        let mut w: HashMap<u64, Vec<u64>> = HashMap::new();
        for i in 0..(min + rng.next_u64() % 60) {
            let first = rng.next_u64() % BASE_SECTORS;
            let n = 1 + rng.next_u64() % 8.min(BASE_SECTORS - first);
            let id = (seed << 32) | (epoch << 16) | (i + 1);
            write_all(cache, base, 0, first * 512, &write_data(id, first, n));
            for s in first..first + n {
                state.insert(s, id);
                w.entry(s).or_default().push(id);
            }
        }
        self.states.push(state);
        self.writes.push(w);
    }
}

#[test]
fn base_holds_a_prefix_of_flush_epochs_at_every_step() {
    for seed in 1..=20u64 {
        let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(64)));
        let base = base((BASE_SECTORS * 512) as usize);
        let mut cfg = config(BASE_SECTORS * 512, 1);
        cfg.gc_percent = Some(90);
        let cache = open(media, &cfg);
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut e = Epochs::new();
        for epoch in 1..=12u64 {
            e.write(&cache, &base, &mut rng, seed, epoch, 5);
            cache.flush().unwrap();
        }
        let (states, writes) = (&e.states, &e.writes);
        let mut steps = 0;
        let mut last_k = 0;
        loop {
            let p = cache.writeback_step(&base).unwrap();
            steps += 1;
            for c in 0..3 {
                let img = base.crash_image(seed * 1000 + steps * 3 + c);
                let k = check_prefix(&img, states, writes)
                    .unwrap_or_else(|| panic!("seed {seed} step {steps}: base is not a prefix of the flush epochs"));
                last_k = last_k.max(k);
            }
            if p == WbProgress::Idle {
                break;
            }
        }
        assert_eq!(last_k, states.len() - 1, "seed {seed}: writeback did not reach the last epoch");
        assert!(cache.is_clean());
    }
}

#[test]
fn failing_base_loses_nothing_and_writeback_resumes() {
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(32)));
    let base = base((BASE_SECTORS * 512) as usize);
    let cache = open(media, &config(BASE_SECTORS * 512, 1));
    for i in 0..200u64 {
        let first = (i * 7) % BASE_SECTORS;
        write_all(&cache, &base, 0, first * 512, &write_data(i + 1, first, 1));
    }
    cache.flush().unwrap();
    base.set_fail_writes(true);
    // Failures arrive as completions: step until a few have been seen.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cache.stats().writeback_errors < 3 && std::time::Instant::now() < until {
        cache.writeback_step(&base).unwrap();
    }
    assert!(cache.stats().writeback_errors >= 3, "failed writes must be seen and retried");
    assert!(!cache.is_clean());
    assert_eq!(cache.stats().writeback_ksets, 0, "dirty_tail must not move past failed writes");
    base.set_fail_writes(false);
    cache.writeback_all(&base).unwrap();
    assert!(cache.is_clean());
    let img = base.visible_image();
    for i in 0..200u64 {
        let s = (i * 7) % BASE_SECTORS;
        let who = who_wrote(&img[s as usize * 512..(s as usize + 1) * 512], s).unwrap();
        assert!(who > i, "sector {s} lost write {}", i + 1);
    }
}

/// A host that crashed left the newest epoch open: its ksets are in the log
/// with no FLUSH mark after them. Once the reopened cache completes a FLUSH,
/// those writes are flushed ones, so the base must not take a write issued
/// after that FLUSH while any of them is missing. Writeback keeps them apart
/// by the FLUSH mark the reopened log writes before its first new kset.
#[test]
fn a_flush_after_reopen_ends_the_epoch_the_crash_left_open() {
    for seed in 1..=8u64 {
        let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(64)));
        let base = base((BASE_SECTORS * 512) as usize);
        let cfg = config(BASE_SECTORS * 512, 1);
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut e = Epochs::new();
        // The crashed run: its keys reach the log through the kset timer,
        // never through a FLUSH.
        let cache = open(media.clone(), &cfg);
        e.write(&cache, &base, &mut rng, seed, 1, 40);
        std::thread::sleep(cfg.kset_flush_interval * 2);
        cache.flush_expired_ksets().unwrap();
        drop(cache);
        let cache = open(media, &cfg);
        cache.flush().unwrap();
        e.write(&cache, &base, &mut rng, seed, 2, 40);
        cache.flush().unwrap();
        let (states, writes) = (&e.states, &e.writes);
        let mut steps = 0;
        loop {
            let p = cache.writeback_step(&base).unwrap();
            steps += 1;
            for c in 0..3 {
                let img = base.crash_image(seed * 1000 + steps * 3 + c);
                check_prefix(&img, states, writes).unwrap_or_else(|| {
                    panic!("seed {seed} step {steps}: the base took a write after the FLUSH ahead of one before it")
                });
            }
            if p == WbProgress::Idle {
                break;
            }
        }
        assert!(cache.is_clean());
        assert_eq!(check_prefix(&base.visible_image(), states, writes), Some(2), "seed {seed}");
    }
}
