//! How many of the writes a full cache saw had cached data under them
//! (bypass.rs, is_full): the sign that the working set fits the cache
//! after all, whatever writeback measured.
//!
//! A full cache sends writes with nothing cached under them to the base
//! while writeback finds little of its batches overwritten (absorbed
//! percent). That measure depends on how long dirty data waits: a cache
//! that wrote back at once while it bypassed found nothing overwritten,
//! and bypassed for good a hot set of reads and writes half its size (a
//! randrw 70/30 run at a third of its speed, 365 K writes bypassed, 945 K
//! reads missed). The writes themselves tell better: while the cache is
//! full, the ones it keeps are those with cached data under them, the ones
//! it bypasses are the rest.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a sample runs.
const SAMPLE: Duration = Duration::from_millis(100);
/// Fewest writes a sample needs to count.
const MIN_WRITES: u64 = 64;
/// No sample yet.
const UNKNOWN: u32 = u32::MAX;

pub(crate) struct FullHits {
    /// When the running sample began, and the counters then: writes the
    /// cache took, writes sent to the base for want of room.
    start: Mutex<Option<(Instant, u64, u64)>>,
    /// Share (percent) of a full cache's writes that had cached data under
    /// them, a moving average over samples; UNKNOWN before the first.
    pct: AtomicU32,
}

impl FullHits {
    pub fn new() -> Self {
        FullHits { start: Mutex::new(None), pct: AtomicU32::new(UNKNOWN) }
    }

    pub fn percent(&self) -> Option<u32> {
        let p = self.pct.load(Ordering::Relaxed);
        (p != UNKNOWN).then_some(p)
    }

    /// Notes whether the cache is `full` at `now`, and while it is, the
    /// counters (`counters()`: writes taken, writes sent to the base for
    /// want of room) where a sample starts or ends: a sample runs while the
    /// cache stays full, and counts once SAMPLE has passed. Cheap between
    /// samples, as a poller calls it on every run.
    pub fn sample(&self, now: Instant, full: bool, counters: impl FnOnce() -> (u64, u64)) {
        let Ok(mut start) = self.start.try_lock() else { return };
        if !full {
            *start = None;
            return;
        }
        match *start {
            Some((t, _, _)) if now.duration_since(t) < SAMPLE => {}
            Some((_, c0, b0)) => {
                let (cached, bypassed) = counters();
                let (c, b) = (cached.wrapping_sub(c0), bypassed.wrapping_sub(b0));
                if c + b >= MIN_WRITES {
                    let pct = (c * 100 / (c + b)) as u32;
                    let old = self.pct.load(Ordering::Relaxed);
                    self.pct.store(if old == UNKNOWN { pct } else { (old + pct) / 2 }, Ordering::Relaxed);
                }
                *start = Some((now, cached, bypassed));
            }
            None => {
                let (cached, bypassed) = counters();
                *start = Some((now, cached, bypassed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_count_only_while_full_and_long_enough() {
        let h = FullHits::new();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        h.sample(at(0), true, || (0, 0));
        h.sample(at(50), true, || (900, 100));
        assert_eq!(h.percent(), None, "too short");
        h.sample(at(120), true, || (900, 100));
        assert_eq!(h.percent(), Some(90));
        h.sample(at(300), false, || (1000, 1000));
        h.sample(at(310), true, || (1000, 1000));
        h.sample(at(450), true, || (1010, 1010)); // 20 writes
        assert_eq!(h.percent(), Some(90), "too few writes, and nothing counted while not full");
        h.sample(at(600), true, || (1110, 1910));
        assert_eq!(h.percent(), Some(50), "averaged: (90 + 10) / 2");
    }
}
