//! Dual-replicated metadata records.
//!
//! Each record has two 4 KiB slots. Loading picks the newest valid replica
//! (crc, kind and version checked; sequence compared with wrap-around). An
//! update always writes the slot that is *not* current, fences, and only then
//! makes it current, so a torn write can destroy at most the copy being written.

use crate::error::{Error, Result};
use crate::format::{get_u16, get_u32, seq_newer, Record, FORMAT_VERSION, REC_SIZE};
use crate::pmem::Media;

/// Where a replicated record lives and which slot holds its newest copy.
#[derive(Debug, Clone, Copy)]
pub struct Replica {
    offs: [u64; 2],
    kind: u32,
    cur: usize,
    seq: u32,
}

/// What reading both slots of a record found: each slot's record, or why
/// it holds none; and which slot loading uses (the newest valid one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaHealth {
    pub slots: [std::result::Result<Record, String>; 2],
    pub used: Option<usize>,
}

impl ReplicaHealth {
    /// Reads both slots of the record at `offs`. Fails only if the media does.
    pub fn read(media: &dyn Media, offs: [u64; 2], kind: u32) -> Result<ReplicaHealth> {
        let slot = |off: u64| -> Result<std::result::Result<Record, String>> {
            let mut b = [0u8; REC_SIZE];
            media.read(off, &mut b)?;
            Ok(Record::decode(&b, kind).ok_or_else(|| why_invalid(&b, kind)))
        };
        let slots = [slot(offs[0])?, slot(offs[1])?];
        let used = match (&slots[0], &slots[1]) {
            (Ok(a), Ok(b)) => Some(usize::from(seq_newer(b.seq, a.seq))),
            (Ok(_), Err(_)) => Some(0),
            (Err(_), Ok(_)) => Some(1),
            (Err(_), Err(_)) => None,
        };
        Ok(ReplicaHealth { slots, used })
    }

    /// One slot holds no valid record.
    pub fn degraded(&self) -> bool {
        self.slots.iter().any(|s| s.is_err())
    }
}

/// Why a slot's bytes are not a valid record of `kind`.
fn why_invalid(b: &[u8], kind: u32) -> String {
    if b.iter().all(|&x| x == 0) {
        return "is blank".into();
    }
    if get_u32(b, 0) != crate::format::crc(&b[4..REC_SIZE]) {
        return "is corrupt (CRC mismatch)".into();
    }
    if get_u32(b, 4) != kind {
        return format!("holds a record of another kind ({:#010x})", get_u32(b, 4));
    }
    format!("has format version {}, expected {FORMAT_VERSION}", get_u16(b, 12))
}

impl Replica {
    /// Reads both slots and returns the newest valid record.
    pub fn load(media: &dyn Media, offs: [u64; 2], kind: u32, what: &str) -> Result<(Replica, Record, ReplicaHealth)> {
        let health = ReplicaHealth::read(media, offs, kind)?;
        let Some(cur) = health.used else {
            return Err(Error::corrupt(what, "both replicas are invalid"));
        };
        let rec = health.slots[cur].clone().expect("the used replica is valid");
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
    use crate::format::{REC_DIRTY_TAIL, REC_KEY_TAIL};
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
        assert_eq!(h.slots.iter().filter(|v| v.is_ok()).count(), 1);
        assert_eq!(h.slots[r.cur].as_ref().unwrap_err(), "is corrupt (CRC mismatch)");
        r.store(&m, |r| r.body[0] = 3).unwrap();
        let (_, rec, _) = Replica::load(&m, offs, REC_KEY_TAIL, "t").unwrap();
        assert_eq!(rec.body[0], 3);
    }

    /// Each invalid slot says why: what `pcache check` prints for it.
    #[test]
    fn an_invalid_slot_says_why() {
        let m = MemMedia::new(16384);
        let offs = [4096, 8192];
        let h = ReplicaHealth::read(&m, offs, REC_KEY_TAIL).unwrap();
        assert_eq!(h.used, None);
        assert_eq!(h.slots, [Err("is blank".to_string()), Err("is blank".to_string())]);
        Replica::init(&m, offs, REC_KEY_TAIL, |r| r.body[0] = 1).unwrap();
        let h = ReplicaHealth::read(&m, offs, REC_DIRTY_TAIL).unwrap();
        assert!(h.slots[0].as_ref().unwrap_err().starts_with("holds a record of another kind"), "{h:?}");
        m.write(offs[0] + 20, &[0xff]).unwrap();
        let h = ReplicaHealth::read(&m, offs, REC_KEY_TAIL).unwrap();
        assert_eq!(h.slots[0].as_ref().unwrap_err(), "is corrupt (CRC mismatch)");
        assert_eq!(h.used, Some(1));
    }
}
