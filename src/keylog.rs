//! The key log: ksets appended one after another through a chain of segments.
//!
//! A kset is written and fenced under the log lock, so everything before the
//! head is durable and log order is the order ksets were sealed. When a segment
//! has no room for another full kset, a LAST kset naming the next segment is
//! written and the log continues there. Every kset carries the format nonce and
//! the next sequence number, so stale ksets in a reused segment end replay.

use crate::error::{Error, Result};
use crate::format::{
    encode_kset, kset_size, KeyRecord, KsetHeader, LogPos, KSET_FLAG_FLUSH, KSET_FLAG_LAST, KSET_FLAG_MARKS,
    KSET_MAX_SIZE,
};
use crate::pmem::Media;
use crate::segment::{SegmentTable, Use};

pub struct KeyLog {
    /// Where the next kset goes.
    pub head: LogPos,
    nonce: u64,
    buf: Vec<u8>,
    /// Whether a FLUSH needs no mark: nothing was appended since the last
    /// mark, or since the log was opened.
    marked: bool,
    /// Sequence number of the newest FLUSH mark (0: none since open).
    last_mark: u64,
    /// Write a FLUSH mark before the next kset that carries keys.
    mark_pending: bool,
}

impl KeyLog {
    pub fn new(head: LogPos, nonce: u64) -> Self {
        KeyLog { head, nonce, buf: Vec::with_capacity(KSET_MAX_SIZE), marked: true, last_mark: 0, mark_pending: false }
    }

    /// Ends the epoch of everything in the log before anything is appended
    /// (at open, over a replayed log that holds dirty keys).
    pub fn mark_before_next_append(&mut self) {
        self.mark_pending = true;
    }

    /// Sequence number of the newest FLUSH mark written since the log was
    /// opened (0 if none): no later kset is in an earlier epoch.
    pub fn last_mark(&self) -> u64 {
        self.last_mark
    }

    /// Ends the current epoch: appends an empty kset carrying the FLUSH mark,
    /// unless the newest kset already ends one. Called once a FLUSH has
    /// journalled every open key.
    pub fn mark_flush(&mut self, media: &dyn Media, segs: &SegmentTable) -> Result<()> {
        if self.marked {
            return Ok(());
        }
        self.write_mark(media, segs)
    }

    fn write_mark(&mut self, media: &dyn Media, segs: &SegmentTable) -> Result<()> {
        self.write_kset(media, segs, &[], KSET_FLAG_FLUSH)?;
        self.marked = true;
        self.mark_pending = false;
        self.last_mark = self.head.seq - 1;
        Ok(())
    }

    /// Appends a kset holding `keys` and makes it durable.
    pub fn append(&mut self, media: &dyn Media, segs: &SegmentTable, keys: &[KeyRecord]) -> Result<()> {
        if self.mark_pending {
            self.write_mark(media, segs)?;
        }
        self.write_kset(media, segs, keys, 0)?;
        self.marked = false;
        Ok(())
    }

    fn write_kset(&mut self, media: &dyn Media, segs: &SegmentTable, keys: &[KeyRecord], flags: u16) -> Result<()> {
        let geo = segs.geo;
        let size = kset_size(keys.len());
        // Always leave room for the LAST kset that chains to the next segment.
        if self.head.off as usize + size + kset_size(0) > geo.payload() as usize {
            let next = segs.alloc(Use::Log).ok_or_else(|| Error::NoSpace("no free segment for the key log".into()))?;
            let hdr = KsetHeader {
                seq: self.head.seq,
                nonce: self.nonce,
                key_num: 0,
                flags: KSET_FLAG_LAST | KSET_FLAG_MARKS,
                next_seg: next,
            };
            let n = encode_kset(&mut self.buf, &hdr, &[]);
            media.write(geo.addr(self.head.seg, self.head.off), &self.buf[..n])?;
            self.head = LogPos { seg: next, off: 0, seq: self.head.seq + 1 };
        }
        let hdr = KsetHeader {
            seq: self.head.seq,
            nonce: self.nonce,
            key_num: keys.len() as u16,
            flags: flags | KSET_FLAG_MARKS,
            next_seg: 0,
        };
        let n = encode_kset(&mut self.buf, &hdr, keys);
        media.write(geo.addr(self.head.seg, self.head.off), &self.buf[..n])?;
        media.fence();
        self.head.off += n as u32;
        self.head.seq += 1;
        Ok(())
    }
}

/// A kset read back from the log.
pub struct LoggedKset {
    pub hdr: KsetHeader,
    pub keys: Vec<KeyRecord>,
    /// Position of the kset after this one.
    pub next: LogPos,
}

/// Reads the kset at `pos`. `Ok(None)` means the log ends here; an error means
/// the kset is crc-valid but impossible (crafted or corrupt).
pub fn read_kset(media: &dyn Media, segs: &SegmentTable, nonce: u64, pos: LogPos) -> Result<Option<LoggedKset>> {
    use crate::format::{kset_crc_ok, parse_kset_header, KsetEnd, KEY_SIZE, KSET_HDR_SIZE};
    let geo = segs.geo;
    check_pos(geo.payload(), geo.seg_count, pos, "log position")?;
    let room = (geo.payload() - pos.off) as usize;
    let mut buf = vec![0u8; KSET_HDR_SIZE];
    media.read(geo.addr(pos.seg, pos.off), &mut buf)?;
    let hdr = match parse_kset_header(&buf, nonce, pos.seq, room) {
        Ok(h) => h,
        Err(KsetEnd::NotAKset) | Err(KsetEnd::BadCrc) => return Ok(None),
        Err(KsetEnd::Invalid(d)) => {
            return Err(Error::corrupt(format!("kset at segment {} offset {}", pos.seg, pos.off), d))
        }
    };
    let n = hdr.key_num as usize;
    buf.resize(kset_size(n), 0);
    media.read(geo.addr(pos.seg, pos.off), &mut buf)?;
    if !kset_crc_ok(&buf, n) {
        return Ok(None);
    }
    let keys = (0..n)
        .map(|i| KeyRecord::decode(&buf[KSET_HDR_SIZE + i * KEY_SIZE..KSET_HDR_SIZE + (i + 1) * KEY_SIZE]))
        .collect();
    let next = if hdr.is_last() {
        if hdr.next_seg >= geo.seg_count {
            return Err(Error::corrupt(
                format!("kset at segment {} offset {}", pos.seg, pos.off),
                format!("next segment {} out of range ({} segments)", hdr.next_seg, geo.seg_count),
            ));
        }
        LogPos { seg: hdr.next_seg, off: 0, seq: pos.seq + 1 }
    } else {
        LogPos { seg: pos.seg, off: pos.off + kset_size(n) as u32, seq: pos.seq + 1 }
    };
    Ok(Some(LoggedKset { hdr, keys, next }))
}

/// Bounds-checks a log position read from media.
pub fn check_pos(payload: u32, seg_count: u32, pos: LogPos, what: &str) -> Result<()> {
    use crate::format::KSET_HDR_SIZE;
    if pos.seg >= seg_count {
        return Err(Error::corrupt(what, format!("segment {} out of range ({seg_count} segments)", pos.seg)));
    }
    if pos.off % 64 != 0 || pos.off as usize + KSET_HDR_SIZE > payload as usize {
        return Err(Error::corrupt(what, format!("offset {} out of range", pos.off)));
    }
    if pos.seq >= crate::format::MAX_COUNTER {
        return Err(Error::corrupt(what, format!("sequence number {} is impossibly large", pos.seq)));
    }
    Ok(())
}
