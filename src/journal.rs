//! The journal: open ksets, the key log they are sealed into, and its tails.
//!
//! A key goes into its worker's open kset (write.rs); a kset is sealed —
//! appended to the key log and fenced — when it is full, when it has been
//! open for the flush interval (the kset timer), when a FLUSH journals every
//! open kset, or when a key from another kset overlaps one of its keys
//! (write.rs, settle_overlaps). Each kset's epoch counts its seals, so an
//! index extent tagged with a kset and epoch tells whether its key is still
//! open. The tails (key_tail, moved by GC; dirty_tail, moved by writeback)
//! are the log's other end.

use std::ops::Range;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::format::{KeyRecord, LogPos, KSET_MAX_KEYS};
use crate::index::KsetTag;
use crate::keylog::KeyLog;
use crate::shared::{lock, Shared};
use crate::spinlock::{Padded, SpinGuard, SpinLock};
use crate::tails::Tails;

/// Keys not yet journalled.
#[derive(Default)]
pub(crate) struct OpenKset {
    /// Position in the journal's ksets.
    pub id: u8,
    /// Bumped each time this kset is sealed (mirrored in Journal::epochs).
    pub epoch: u16,
    pub keys: Vec<KeyRecord>,
    pub since: Option<Instant>,
}

pub(crate) struct Journal {
    ksets: Vec<Padded<SpinLock<OpenKset>>>,
    /// Each kset's epoch, readable without its lock (apart from the locks,
    /// which its worker takes on every write, so that other workers checking
    /// an epoch do not pull that line away).
    epochs: Vec<AtomicU16>,
    log: Mutex<KeyLog>,
    tails: Mutex<Tails>,
    /// The epoch that was open when the log was replayed: ksets with seq in
    /// this range (see writeback.rs).
    replayed_open_epoch: Range<u64>,
    interval: Duration,
    /// Time origin for `due`.
    origin: Instant,
    /// Nanoseconds after `origin` when the oldest open kset falls due
    /// (u64::MAX: none is open), so that the kset timer need not lock every
    /// kset per tick. Never later than the truth; it may be earlier (a kset
    /// sealed since).
    due: AtomicU64,
}

impl Journal {
    pub fn new(ksets: usize, log: KeyLog, tails: Tails, replayed_open_epoch: Range<u64>, interval: Duration) -> Self {
        // What was journalled before this open is an epoch of its own: writes
        // from now on must not reach the base ahead of it. The mark goes in
        // with the first kset appended (a read-only open appends none).
        let mut log = log;
        if tails.dirty.seq < log.head.seq {
            log.mark_before_next_append();
        }
        Journal {
            ksets: (0..ksets)
                .map(|id| Padded(SpinLock::new(OpenKset { id: id as u8, ..OpenKset::default() })))
                .collect(),
            epochs: (0..ksets).map(|_| AtomicU16::new(0)).collect(),
            log: Mutex::new(log),
            tails: Mutex::new(tails),
            replayed_open_epoch,
            interval,
            origin: Instant::now(),
            due: AtomicU64::new(u64::MAX),
        }
    }

    #[inline]
    pub fn kset_count(&self) -> usize {
        self.ksets.len()
    }

    #[inline]
    pub fn kset(&self, i: usize) -> SpinGuard<'_, OpenKset> {
        self.ksets[i].lock()
    }

    /// Whether the key an extent tagged `tag` came from is still in its open
    /// kset (not yet in the log).
    #[inline]
    pub fn is_open(&self, tag: KsetTag) -> bool {
        tag != KsetTag::NONE && self.epochs[tag.id as usize].load(Ordering::Acquire) == tag.epoch
    }

    /// Where the next kset goes.
    pub fn head(&self) -> LogPos {
        lock(&self.log).head
    }

    /// Sequence number of the newest FLUSH mark since open (0: none).
    pub fn last_mark(&self) -> u64 {
        lock(&self.log).last_mark()
    }

    pub fn tails(&self) -> MutexGuard<'_, Tails> {
        lock(&self.tails)
    }

    pub fn replayed_open_epoch(&self) -> &Range<u64> {
        &self.replayed_open_epoch
    }

    /// Whether any open kset holds a dirty key.
    pub fn holds_dirty(&self) -> bool {
        self.ksets.iter().any(|k| k.lock().keys.iter().any(|k| k.is_dirty()))
    }

    /// Readies an open kset for one more key: seals it if full and starts its
    /// timer if it was empty. Takes the atomics a key's insertion needs, so
    /// that entering the key is plain stores (see write.rs, prepare_slot).
    #[inline]
    pub fn prepare(&self, s: &Shared, ks: &mut OpenKset) -> Result<()> {
        if ks.keys.len() >= KSET_MAX_KEYS {
            self.seal(s, ks)?;
        }
        if ks.since.is_none() {
            let now = Instant::now();
            ks.since = Some(now);
            self.due.fetch_min(self.due_nanos(now), Ordering::AcqRel);
        }
        Ok(())
    }

    /// Journals an open kset.
    pub fn seal(&self, s: &Shared, ks: &mut OpenKset) -> Result<()> {
        if ks.keys.is_empty() {
            ks.since = None;
            return Ok(());
        }
        lock(&self.log).append(&*s.media, &s.segs, &ks.keys)?;
        ks.keys.clear();
        ks.since = None;
        ks.epoch = ks.epoch.wrapping_add(1);
        self.epochs[ks.id as usize].store(ks.epoch, Ordering::Release);
        s.counters.local().add(|c| &c.kset_flushes, 1);
        Ok(())
    }

    /// Journals every open kset (no FLUSH mark: this ends no epoch) and
    /// returns the log head's sequence after them.
    pub fn seal_all(&self, s: &Shared) -> Result<u64> {
        for k in &self.ksets {
            self.seal(s, &mut k.lock())?;
        }
        Ok(self.head().seq)
    }

    /// Journals every open kset and ends the epoch: writeback keeps the base
    /// from holding later writes without all of these.
    pub fn flush(&self, s: &Shared) -> Result<()> {
        self.seal_all(s)?;
        lock(&self.log).mark_flush(&*s.media, &s.segs)
    }

    /// Seals open ksets older than the flush interval (all of them with
    /// `all`). Returns how many were sealed.
    pub fn seal_expired(&self, s: &Shared, all: bool) -> Result<usize> {
        if !all {
            // Nothing falls due yet: no need to look at the ksets.
            let due = self.due.load(Ordering::Acquire);
            if due == u64::MAX || self.nanos(Instant::now()) < due {
                return Ok(0);
            }
        }
        // Reset first: a kset opened from now on lowers it again itself, and
        // every kset still open is looked at below and lowers it too.
        self.due.store(u64::MAX, Ordering::SeqCst);
        let mut n = 0;
        for k in &self.ksets {
            let mut ks = k.lock();
            let due = match ks.since {
                Some(t) => all || t.elapsed() >= self.interval,
                None => false,
            };
            if due {
                if let Err(e) = self.seal(s, &mut ks) {
                    // Look again at the next tick.
                    self.due.store(0, Ordering::SeqCst);
                    return Err(e);
                }
                n += 1;
            } else if let Some(t) = ks.since {
                self.due.fetch_min(self.due_nanos(t), Ordering::AcqRel);
            }
        }
        Ok(n)
    }

    /// Nanoseconds from `origin` to `t` (saturating below u64::MAX).
    fn nanos(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.origin);
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1).min(u64::MAX - 1)
    }

    /// When a kset opened at `since` falls due, in nanoseconds after `origin`.
    fn due_nanos(&self, since: Instant) -> u64 {
        match since.checked_add(self.interval) {
            Some(t) => self.nanos(t),
            None => u64::MAX - 1,
        }
    }
}
