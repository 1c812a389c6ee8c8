//! How fast writeback drains: base I/O rates and the time left until the
//! cache is clean, from periodic samples of the cache's counters.

use std::time::{Duration, Instant};

use crate::Stats;

/// Samples closer together than this are not used for a rate.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

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

/// Keeps the last sample and the rates measured between the last two.
#[derive(Debug, Default)]
pub struct DrainMeter {
    last: Option<(Instant, u64, u64, u64)>,
    rates: DrainRates,
}

impl DrainMeter {
    /// Whether a sample taken at `now` would be used (sampling sums the
    /// counters, so hosts ask first).
    pub fn due(&self, now: Instant) -> bool {
        self.last.is_none_or(|(t, ..)| now.saturating_duration_since(t) >= MIN_INTERVAL)
    }

    /// Takes a sample of `s` at `now` (at most one per second is used).
    pub fn sample(&mut self, s: &Stats, now: Instant) {
        let cur = (now, s.base_writes, s.base_flushes, s.writeback_bytes);
        if let Some((t, w, f, b)) = self.last {
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
        self.last = Some(cur);
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
}
