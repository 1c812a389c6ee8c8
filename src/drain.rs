//! How fast writeback drains: base I/O rates and the time left until the
//! cache is clean, from periodic samples of the cache's counters.
//!
//! Rates are taken over the last [`WINDOW`] of samples, not the last second
//! alone: over a slow base, writeback completes a batch every second or two,
//! and a one-second rate would flip between zero and twice the real one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::Stats;

/// Samples closer together than this are not used for a rate.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Rates are measured over the samples of about this long.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DrainRates {
    pub base_writes_per_sec: f64,
    pub base_flushes_per_sec: f64,
    /// Dirty bytes leaving the cache per second (written back or found overwritten).
    pub writeback_bytes_per_sec: f64,
}

impl DrainRates {
    /// Seconds until `dirty_bytes` are gone at the current rate; None while
    /// writeback is not moving (or nothing was measured yet).
    pub fn eta_secs(&self, dirty_bytes: u64) -> Option<u64> {
        if dirty_bytes == 0 {
            return Some(0);
        }
        (self.writeback_bytes_per_sec >= 1.0).then(|| (dirty_bytes as f64 / self.writeback_bytes_per_sec).ceil() as u64)
    }
}

/// One sample: when, and base writes, base flushes, writeback bytes by then.
type Sample = (Instant, u64, u64, u64);

/// Keeps the samples of the last [`WINDOW`] and the rates measured over them.
#[derive(Debug, Default)]
pub struct DrainMeter {
    samples: VecDeque<Sample>,
    rates: DrainRates,
}

impl DrainMeter {
    /// Whether a sample taken at `now` would be used (sampling sums the
    /// counters, so hosts ask first).
    pub fn due(&self, now: Instant) -> bool {
        self.samples.back().is_none_or(|(t, ..)| now.saturating_duration_since(*t) >= MIN_INTERVAL)
    }

    /// Takes a sample of `s` at `now` (at most one per second is used).
    pub fn sample(&mut self, s: &Stats, now: Instant) {
        if !self.due(now) {
            return;
        }
        self.samples.push_back((now, s.base_writes, s.base_flushes, s.writeback_bytes));
        // Keep the newest sample at least WINDOW old as the window's start.
        while self.samples.len() > 2 && now.saturating_duration_since(self.samples[1].0) >= WINDOW {
            self.samples.pop_front();
        }
        let (Some(&(t, w, f, b)), Some(&cur)) = (self.samples.front(), self.samples.back()) else { return };
        let dt = now.saturating_duration_since(t);
        if dt < MIN_INTERVAL {
            return;
        }
        let per_sec = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt.as_secs_f64();
        self.rates = DrainRates {
            base_writes_per_sec: per_sec(cur.1, w),
            base_flushes_per_sec: per_sec(cur.2, f),
            writeback_bytes_per_sec: per_sec(cur.3, b),
        };
    }

    pub fn rates(&self) -> DrainRates {
        self.rates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_samples_a_second_or_more_apart() {
        let t0 = Instant::now();
        let mut m = DrainMeter::default();
        let mut s = Stats::default();
        m.sample(&s, t0);
        assert_eq!(m.rates(), DrainRates::default());
        s.base_writes = 500;
        s.writeback_bytes = 4 << 20;
        m.sample(&s, t0 + Duration::from_millis(500)); // too close: ignored
        assert_eq!(m.rates(), DrainRates::default());
        s.base_writes = 1000;
        s.base_flushes = 4;
        s.writeback_bytes = 8 << 20;
        m.sample(&s, t0 + Duration::from_secs(2));
        let r = m.rates();
        assert_eq!(
            (r.base_writes_per_sec, r.base_flushes_per_sec, r.writeback_bytes_per_sec),
            (500.0, 2.0, (4 << 20) as f64)
        );
        assert_eq!(r.eta_secs(10 << 20), Some(3));
        assert_eq!(r.eta_secs(0), Some(0));
        assert_eq!(DrainRates::default().eta_secs(1), None);
    }

    #[test]
    fn a_second_without_progress_keeps_the_rate_of_the_window() {
        let t0 = Instant::now();
        let mut m = DrainMeter::default();
        let mut s = Stats::default();
        m.sample(&s, t0);
        s.writeback_bytes = 3 << 20;
        m.sample(&s, t0 + Duration::from_secs(1));
        // Nothing completes in the next second (a slow base): the rate
        // halves, it does not drop to zero.
        m.sample(&s, t0 + Duration::from_secs(2));
        assert_eq!(m.rates().writeback_bytes_per_sec, (3 << 20) as f64 / 2.0);
        // Samples older than the window leave it.
        for i in 3..=20 {
            m.sample(&s, t0 + Duration::from_secs(i));
        }
        assert_eq!(m.rates().writeback_bytes_per_sec, 0.0, "no progress for a whole window");
        s.writeback_bytes += 10 << 20;
        m.sample(&s, t0 + Duration::from_secs(21));
        assert_eq!(m.rates().writeback_bytes_per_sec, (10 << 20) as f64 / 10.0);
    }
}
