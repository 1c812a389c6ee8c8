//! What writeback may keep in the cache rather than write (writeback.rs,
//! "Keeping"): how long the base may lag, and how old each part of the log
//! is, so that dirty data reaches the base about `lag` after it was
//! written, however often it was moved meanwhile.
//!
//! Ages are kept in DRAM only: marks of (log sequence, time) taken as the
//! log head moves, and for the ksets moved keys went into, the age of the
//! data they carry. A restart loses them, which costs nothing: the log
//! replayed is an epoch of its own, and nothing of it is kept.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::relocate::MoveCredit;

/// How often the head's position is noted.
const MARK_EVERY: Duration = Duration::from_millis(100);

pub(crate) struct Keep {
    /// How long the base may lag (zero: nothing is kept).
    pub lag: Duration,
    /// Ksets before this log sequence are written, never kept (a drain).
    floor: u64,
    /// (seq, t): the ksets from seq on were appended at t or later. Oldest first.
    marks: VecDeque<(u64, Instant)>,
    /// Ksets appended while a batch's data moved, [start, end) -> when the
    /// oldest data they carry was written.
    inherited: BTreeMap<u64, (u64, Instant)>,
    /// When the keeper began: the age of ksets before the first mark.
    born: Instant,
    /// Bytes batches may still keep (relocate::MoveCredit).
    pub credit: MoveCredit,
}

impl Keep {
    pub fn new(lag: Duration) -> Self {
        Keep {
            lag,
            floor: 0,
            marks: VecDeque::new(),
            inherited: BTreeMap::new(),
            born: Instant::now(),
            credit: MoveCredit::default(),
        }
    }

    /// Nothing before `seq` may be kept from now on.
    pub fn raise_floor(&mut self, seq: u64) {
        self.floor = self.floor.max(seq);
    }

    /// Whether a batch starting at `seq` may be kept, as far as the lag and
    /// the floor tell (its age aside).
    pub fn allows(&self, seq: u64) -> bool {
        !self.lag.is_zero() && seq >= self.floor
    }

    /// Notes where the log head is now, and forgets what lies before
    /// `tail` (dirty_tail: written back or kept already).
    pub fn note_head(&mut self, head: u64, tail: u64, now: Instant) {
        if self.marks.back().is_none_or(|&(s, t)| s < head && now.duration_since(t) >= MARK_EVERY) {
            self.marks.push_back((head, now));
        }
        // The newest mark at or before the tail still dates the tail.
        while self.marks.len() > 1 && self.marks[1].0 <= tail {
            self.marks.pop_front();
        }
        self.inherited.retain(|_, &mut (end, _)| end > tail);
    }

    /// When the oldest data of the ksets [start, end) was written (an
    /// estimate never later than the truth).
    pub fn written_at(&self, start: u64, end: u64) -> Instant {
        let appended = self.marks.iter().rev().find(|&&(s, _)| s <= start).map_or(self.born, |&(_, t)| t);
        self.inherited.range(..end).filter(|(_, &(e, _))| e > start).map(|(_, &(_, t))| t).fold(appended, Instant::min)
    }

    /// Whether the ksets from `seq` on, with data written at `t`, are due
    /// on the base by `now`. Each batch falls due somewhere between half the
    /// lag and the lag (spread by its position): a hot set written in one
    /// burst (a cache filling up) would otherwise all fall due at once, and
    /// writes would wait while writeback wrote all of it at the base's speed.
    pub fn due(&self, seq: u64, t: Instant, now: Instant) -> bool {
        let spread = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58; // 0..64
        let after = self.lag / 2 + self.lag / 2 * spread as u32 / 63;
        now.saturating_duration_since(t) >= after
    }

    /// Ksets [start, end) were appended while data written at `t` moved into them.
    pub fn inherit(&mut self, start: u64, end: u64, t: Instant) {
        if start < end {
            self.inherited.insert(start, (end, t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_follow_the_marks_and_what_moved() {
        let mut k = Keep::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let later = |ms| t0 + Duration::from_millis(ms);
        k.note_head(5, 0, later(0));
        k.note_head(9, 0, later(50)); // too soon after the last mark
        k.note_head(12, 0, later(200));
        assert_eq!(k.written_at(6, 8), later(0));
        assert_eq!(k.written_at(12, 14), later(200));
        assert!(k.written_at(2, 3) <= later(0), "before the first mark: as old as the keeper");
        // Data written at 0 moved into ksets 20..22.
        k.inherit(20, 22, later(0));
        k.note_head(30, 0, later(5000));
        assert_eq!(k.written_at(20, 21), later(0), "moved data keeps its age");
        assert_eq!(k.written_at(22, 25), later(200));
        assert!((0..64).all(|seq| k.due(seq, later(0), later(10_000))), "everything is due after the lag");
        assert!((0..64).all(|seq| !k.due(seq, later(0), later(4_999))), "nothing before half of it");
        let early = (0..64).filter(|&seq| k.due(seq, later(0), later(7_500))).count();
        assert!(early > 10 && early < 54, "batches fall due spread over the second half ({early} of 64)");
        // Past the tail, ages are forgotten.
        k.note_head(31, 22, later(5200));
        assert!(k.inherited.is_empty());
    }

    #[test]
    fn the_floor_and_a_zero_lag_stop_keeping() {
        let mut k = Keep::new(Duration::from_secs(1));
        assert!(k.allows(0));
        k.raise_floor(10);
        assert!(!k.allows(9) && k.allows(10));
        k.raise_floor(5);
        assert!(k.allows(10), "the floor never goes down");
        k.lag = Duration::ZERO;
        assert!(!k.allows(10));
    }
}
