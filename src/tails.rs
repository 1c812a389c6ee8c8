//! The two persisted log tails.
//!
//! `key_tail` is where the live log starts (GC moves it); `dirty_tail` is the
//! first kset not yet written back (writeback moves it). Always
//! key_tail <= dirty_tail <= key head, compared by sequence number.

use crate::error::Result;
use crate::format::{LogPos, DIRTY_TAIL_OFF, KEY_TAIL_OFF, REC_DIRTY_TAIL, REC_KEY_TAIL};
use crate::pmem::Media;
use crate::replica::Replica;

pub struct Tails {
    pub key: LogPos,
    pub dirty: LogPos,
    /// One key_tail replica was unreadable at load, so `key` may be the value
    /// before the last GC step, and the ksets there may since have been
    /// overwritten (see [`Tails::start_at_dirty`]).
    pub key_degraded: bool,
    key_rep: Replica,
    dirty_rep: Replica,
}

impl Tails {
    pub fn format(media: &dyn Media, start: LogPos) -> Result<Tails> {
        let key_rep = Replica::init(media, KEY_TAIL_OFF, REC_KEY_TAIL, |r| start.to_body(r))?;
        let dirty_rep = Replica::init(media, DIRTY_TAIL_OFF, REC_DIRTY_TAIL, |r| start.to_body(r))?;
        Ok(Tails { key: start, dirty: start, key_degraded: false, key_rep, dirty_rep })
    }

    pub fn load(media: &dyn Media) -> Result<Tails> {
        let (key_rep, k, key_health) = Replica::load(media, KEY_TAIL_OFF, REC_KEY_TAIL, "key_tail")?;
        let (dirty_rep, d, health) = Replica::load(media, DIRTY_TAIL_OFF, REC_DIRTY_TAIL, "dirty_tail")?;
        let (key, mut dirty) = (LogPos::from_body(&k), LogPos::from_body(&d));
        // With one dirty_tail replica lost, the survivor may be the value
        // before the last update, and GC may since have moved key_tail past
        // it. The lost value was at or past key_tail (GC never passes
        // dirty_tail), so writeback from key_tail misses nothing: it only
        // writes back again what already reached the base.
        if health.degraded() && dirty.seq < key.seq {
            log::warn!(
                "pcache: dirty_tail: the surviving replica (seq {}) is behind key_tail (seq {}); writeback restarts at key_tail",
                dirty.seq,
                key.seq
            );
            dirty = key;
        }
        Ok(Tails { key, dirty, key_degraded: key_health.degraded(), key_rep, dirty_rep })
    }

    /// When the log from a degraded key_tail does not lead to dirty_tail (GC
    /// had moved key_tail on and its segments were reused), the live log
    /// starts at dirty_tail instead: everything before it is written back,
    /// so only clean cached data is dropped. Persisted by the next GC step.
    pub fn start_at_dirty(&mut self) {
        self.key = self.dirty;
    }

    pub fn set_key(&mut self, media: &dyn Media, pos: LogPos) -> Result<()> {
        self.key_rep.store(media, |r| pos.to_body(r))?;
        self.key = pos;
        Ok(())
    }

    pub fn set_dirty(&mut self, media: &dyn Media, pos: LogPos) -> Result<()> {
        self.dirty_rep.store(media, |r| pos.to_body(r))?;
        self.dirty = pos;
        Ok(())
    }
}
