//! Dual-replicated metadata records.
//!
//! Each record has two 4 KiB slots. Loading picks the newest valid replica
//! (crc, kind and version checked; sequence compared with wrap-around). An
//! update always writes the slot that is *not* current, fences, and only then
//! makes it current, so a torn write can destroy at most the copy being written.

use crate::error::{Error, Result};
use crate::format::{seq_newer, Record, REC_SIZE};
use crate::pmem::Media;

/// Where a replicated record lives and which slot holds its newest copy.
#[derive(Debug, Clone, Copy)]
pub struct Replica {
    offs: [u64; 2],
    kind: u32,
    cur: usize,
    seq: u32,
}

/// What loading found, for `check` and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaHealth {
    pub valid: [bool; 2],
}

impl Replica {
    /// Reads both slots and returns the newest valid record.
    pub fn load(media: &dyn Media, offs: [u64; 2], kind: u32, what: &str) -> Result<(Replica, Record, ReplicaHealth)> {
        let mut recs = [None, None];
        for (i, off) in offs.iter().enumerate() {
            let mut b = [0u8; REC_SIZE];
            media.read(*off, &mut b)?;
            recs[i] = Record::decode(&b, kind);
        }
        let health = ReplicaHealth { valid: [recs[0].is_some(), recs[1].is_some()] };
        let cur = match (&recs[0], &recs[1]) {
            (Some(a), Some(b)) => usize::from(seq_newer(b.seq, a.seq)),
            (Some(_), None) => 0,
            (None, Some(_)) => 1,
            (None, None) => return Err(Error::corrupt(what, "both replicas are invalid")),
        };
        let rec = recs[cur].expect("chosen replica is valid");
        Ok((Replica { offs, kind, cur, seq: rec.seq }, rec, health))
    }

    /// Writes a fresh record into both slots (format time).
    pub fn init(media: &dyn Media, offs: [u64; 2], kind: u32, fill: impl Fn(&mut Record)) -> Result<Replica> {
        for (i, off) in offs.iter().enumerate() {
            let mut r = Record::new(kind, i as u32);
            fill(&mut r);
            media.write(*off, &r.encode())?;
        }
        media.fence();
        Ok(Replica { offs, kind, cur: 1, seq: 1 })
    }

    /// Persists a new version: other slot, fence, then switch.
    pub fn store(&mut self, media: &dyn Media, fill: impl Fn(&mut Record)) -> Result<()> {
        let next = 1 - self.cur;
        let seq = self.seq.wrapping_add(1);
        let mut r = Record::new(self.kind, seq);
        fill(&mut r);
        media.write(self.offs[next], &r.encode())?;
        media.fence();
        self.cur = next;
        self.seq = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::REC_KEY_TAIL;
    use crate::pmem::MemMedia;

    #[test]
    fn store_alternates_slots_and_survives_a_torn_slot() {
        let m = MemMedia::new(16384);
        let offs = [4096, 8192];
        let mut r = Replica::init(&m, offs, REC_KEY_TAIL, |r| r.body[0] = 1).unwrap();
        r.store(&m, |r| r.body[0] = 2).unwrap();
        let (_, rec, _) = Replica::load(&m, offs, REC_KEY_TAIL, "t").unwrap();
        assert_eq!(rec.body[0], 2);
        // Tear the newest slot: the older one must still load.
        let newest = offs[r.cur];
        m.write(newest + 20, &[0xff]).unwrap();
        let (_, rec, h) = Replica::load(&m, offs, REC_KEY_TAIL, "t").unwrap();
        assert_eq!(rec.body[0], 1);
        assert_eq!(h.valid.iter().filter(|v| **v).count(), 1);
        r.store(&m, |r| r.body[0] = 3).unwrap();
        let (_, rec, _) = Replica::load(&m, offs, REC_KEY_TAIL, "t").unwrap();
        assert_eq!(rec.body[0], 3);
    }
}
