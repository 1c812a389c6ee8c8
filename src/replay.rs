//! Rebuilding DRAM state from the key log at open.
//!
//! [`visit_log`] is the one walk of the live log: from key_tail along the
//! chain to the first position that holds no valid kset (the key head), then
//! every kset and key in log order, each key checked. Every field read is
//! treated as untrusted: positions, segment ids, key bounds and the chain
//! itself (cycles) are checked, and a crc-valid but impossible structure is an
//! error that names where it is, never a panic. Replay is one visitor of that
//! walk ([`replay`]: the index, segment references, the report); the offline
//! tools' `inspect` is another, so they accept exactly what `Cache::open` does.

use crate::error::{Error, Result};
use crate::format::{
    KeyRecord, LogPos, Superblock, KEY_FLAGS_KNOWN, KEY_FLAG_CRC, KEY_SIZE, KSET_HDR_SIZE, SECTOR, SUBTREE_SHIFT,
};
use crate::index::{Extent, Index, KsetTag, PieceCrc};
use crate::keylog::{check_pos, read_kset, LoggedKset};
use crate::pmem::Media;
use crate::segment::SegmentTable;
use crate::tails::Tails;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub ksets: u64,
    pub keys: u64,
    pub stale_keys: u64,
    pub dirty_bytes: u64,
    pub log_segments: u32,
}

pub struct Replayed {
    pub head: LogPos,
    pub report: ReplayReport,
    /// Sequence number of the last kset that ends an epoch (0: none): the
    /// ksets after it, up to the head, are the epoch that was open.
    pub last_epoch_end: u64,
}

/// The chain of ksets from key_tail to the head.
pub struct Chain {
    pub ksets: Vec<LogPos>,
    /// The segments the key log occupies.
    pub segs: Vec<u32>,
    pub head: LogPos,
    /// Index in `ksets` of the kset at dirty_tail (== ksets.len() when it is the head).
    pub dirty_at: usize,
}

/// Where a kset is, as errors and reports name it.
pub fn kset_location(geo: &crate::segment::Geometry, pos: LogPos) -> String {
    format!(
        "kset seq {} at segment {} offset {:#x} (byte offset {:#x})",
        pos.seq,
        pos.seg,
        pos.off,
        geo.addr(pos.seg, pos.off)
    )
}

/// A key of the log: its kset, its place in it, and where its record is.
#[derive(Debug, Clone, Copy)]
pub struct KeyAt {
    pub kset: LogPos,
    pub index: usize,
    pub byte_offset: u64,
}

impl KeyAt {
    pub fn location(&self) -> String {
        format!("key {} of kset seq {} (byte offset {:#x})", self.index, self.kset.seq, self.byte_offset)
    }
}

/// What the walk of the log shows, in log order.
pub trait LogVisitor {
    /// The log from the surviving key_tail replica did not lead to
    /// dirty_tail (`why`); the walk starts again at dirty_tail.
    fn restarted_at_dirty(&mut self, _why: &Error) {}
    /// The chain, before any kset is visited.
    fn chain(&mut self, _chain: &Chain) {}
    /// A kset; `dirty` when it is at or after dirty_tail.
    fn kset(&mut self, _pos: LogPos, _kset: &LoggedKset, _dirty: bool) -> Result<()> {
        Ok(())
    }
    /// A key that passed [`check_key`]: `live`, or stale (its segment was
    /// reclaimed since); `dirty` when its kset is at or after dirty_tail.
    fn key(&mut self, at: KeyAt, key: &KeyRecord, live: bool, dirty: bool) -> Result<()>;
}

/// Walks the live log and shows every kset and key to `v`. With a degraded
/// key_tail whose log does not lead to dirty_tail, starts at dirty_tail
/// instead (see [`Tails::start_at_dirty`]).
pub fn visit_log(
    media: &dyn Media,
    sb: &Superblock,
    segs: &SegmentTable,
    tails: &mut Tails,
    v: &mut impl LogVisitor,
) -> Result<Chain> {
    let chain = match walk_chain(media, sb, segs, tails.key, tails.dirty) {
        Err(e) if tails.key_degraded && tails.key != tails.dirty => {
            v.restarted_at_dirty(&e);
            tails.start_at_dirty();
            walk_chain(media, sb, segs, tails.key, tails.dirty)?
        }
        r => r?,
    };
    v.chain(&chain);
    let geo = segs.geo;
    let mut is_log = vec![false; geo.seg_count as usize];
    for &s in &chain.segs {
        is_log[s as usize] = true;
    }
    for (i, &pos) in chain.ksets.iter().enumerate() {
        let k = read_kset(media, segs, sb.nonce, pos)?
            .ok_or_else(|| Error::corrupt(kset_location(&geo, pos), "changed while the log was read"))?;
        let dirty = i >= chain.dirty_at;
        v.kset(pos, &k, dirty)?;
        for (j, key) in k.keys.iter().enumerate() {
            let at = KeyAt {
                kset: pos,
                index: j,
                byte_offset: geo.addr(pos.seg, pos.off) + (KSET_HDR_SIZE + j * KEY_SIZE) as u64,
            };
            let live = match check_key(key, sb, segs, &is_log) {
                Ok(live) => live,
                Err(Error::Corrupt { detail, .. }) => {
                    let detail = format!("for base offset {} (+{} bytes): {detail}", key.off, key.len);
                    return Err(Error::corrupt(at.location(), detail));
                }
                Err(e) => return Err(e),
            };
            v.key(at, key, live, dirty)?;
        }
    }
    Ok(chain)
}

/// Follows the log from `key`, validating both tails and the chain.
fn walk_chain(media: &dyn Media, sb: &Superblock, segs: &SegmentTable, key: LogPos, dirty: LogPos) -> Result<Chain> {
    let geo = segs.geo;
    let at = |name: &str, p: LogPos| format!("{name} (segment {} offset {:#x} seq {})", p.seg, p.off, p.seq);
    check_pos(geo.payload(), geo.seg_count, key, &at("key_tail", key))?;
    check_pos(geo.payload(), geo.seg_count, dirty, &at("dirty_tail", dirty))?;
    if dirty.seq < key.seq {
        return Err(Error::corrupt("dirty_tail", format!("seq {} is behind key_tail seq {}", dirty.seq, key.seq)));
    }
    let mut visited = vec![false; geo.seg_count as usize];
    let mut pos = key;
    visited[pos.seg as usize] = true;
    let mut chain = Chain { ksets: Vec::new(), segs: vec![pos.seg], head: pos, dirty_at: usize::MAX };
    loop {
        if pos == dirty {
            chain.dirty_at = chain.ksets.len();
        }
        let k = match read_kset(media, segs, sb.nonce, pos) {
            Ok(Some(k)) => k,
            Ok(None) => break,
            Err(Error::Corrupt { detail, .. }) => return Err(Error::corrupt(kset_location(&geo, pos), detail)),
            Err(e) => return Err(e),
        };
        chain.ksets.push(pos);
        if k.hdr.is_last() {
            let next = k.next.seg;
            if visited[next as usize] {
                return Err(Error::corrupt(kset_location(&geo, pos), format!("chain loops back to segment {next}")));
            }
            visited[next as usize] = true;
            chain.segs.push(next);
        }
        pos = k.next;
    }
    chain.head = pos;
    if chain.dirty_at == usize::MAX {
        return Err(Error::corrupt(
            "dirty_tail",
            format!(
                "segment {} offset {:#x} seq {} is not on the key log (key_tail seq {}, head seq {})",
                dirty.seg, dirty.off, dirty.seq, key.seq, pos.seq
            ),
        ));
    }
    Ok(chain)
}

/// Checks one journalled key against the geometry. Returns Ok(false) for a
/// stale key (its segment was reclaimed since), an error for an impossible one.
pub fn check_key(k: &KeyRecord, sb: &Superblock, segs: &SegmentTable, is_log_seg: &[bool]) -> Result<bool> {
    let geo = segs.geo;
    let bad = |d: String| Err(Error::corrupt(format!("key for offset {} (+{})", k.off, k.len), d));
    if k.len == 0 || k.len as u64 % SECTOR != 0 || k.off % SECTOR != 0 {
        return bad("unaligned or empty".into());
    }
    match k.off.checked_add(k.len as u64) {
        Some(end) if end <= sb.base_size => {
            if k.off >> SUBTREE_SHIFT != (end - 1) >> SUBTREE_SHIFT {
                return bad("crosses a subtree boundary".into());
            }
        }
        _ => return bad(format!("beyond the base device ({} bytes)", sb.base_size)),
    }
    if k.flags & !KEY_FLAGS_KNOWN != 0 {
        return bad(format!("unknown flags {:#x}", k.flags));
    }
    if k.is_zero() {
        // No data: nothing may point anywhere.
        if k.flags & KEY_FLAG_CRC != 0 || k.seg != 0 || k.seg_off != 0 || k.gen != 0 || k.data_crc != 0 {
            return bad("zero key with data fields set".into());
        }
        return Ok(true);
    }
    if sb.data_crc() != (k.flags & KEY_FLAG_CRC != 0) {
        return bad("data CRC flag disagrees with the superblock".into());
    }
    if k.seg >= geo.seg_count {
        return bad(format!("segment {} out of range", k.seg));
    }
    if k.seg_off as u64 + k.len as u64 > geo.payload() as u64 || k.seg_off as u64 % SECTOR != 0 {
        return bad(format!("segment offset {} out of range", k.seg_off));
    }
    if is_log_seg[k.seg as usize] {
        return bad(format!("points into key-log segment {}", k.seg));
    }
    segs.replay_gen(k.seg, k.gen).or_else(|gen| bad(format!("generation {} is newer than its segment's {gen}", k.gen)))
}

/// Replay: the walk of the log rebuilding the index and segment references.
struct Replay<'a> {
    segs: &'a SegmentTable,
    /// CRCs of the pieces of extents that keys cut (data CRC on).
    pieces: PieceCrc<'a>,
    index: &'a Index,
    data_crc: bool,
    report: ReplayReport,
    last_epoch_end: u64,
    /// Where each live key's data is, to find two keys naming the same bytes.
    spans: Vec<Vec<(u32, u32)>>,
}

impl LogVisitor for Replay<'_> {
    fn restarted_at_dirty(&mut self, why: &Error) {
        log::warn!(
            "pcache: key_tail: the log from its surviving replica does not lead to dirty_tail ({why}); \
             the log is read from dirty_tail, and the clean data cached before it is dropped"
        );
    }

    fn chain(&mut self, chain: &Chain) {
        for &s in &chain.segs {
            self.segs.replay_get(s);
        }
        self.report.log_segments = chain.segs.len() as u32;
    }

    fn kset(&mut self, pos: LogPos, k: &LoggedKset, _dirty: bool) -> Result<()> {
        self.report.ksets += 1;
        if k.hdr.ends_epoch() {
            self.last_epoch_end = pos.seq;
        }
        Ok(())
    }

    fn key(&mut self, _at: KeyAt, key: &KeyRecord, live: bool, dirty: bool) -> Result<()> {
        self.report.keys += 1;
        if !live {
            self.report.stale_keys += 1;
            return Ok(());
        }
        if !key.is_zero() {
            self.segs.replay_get(key.seg);
            self.spans[key.seg as usize].push((key.seg_off, key.len));
        }
        if key.is_dirty() && dirty {
            self.report.dirty_bytes += key.len as u64;
        }
        let pieces = &self.pieces;
        let recrc = |whole: &Extent, piece: &Extent| pieces.crc(whole, piece);
        let e = Extent::of_key(key, KsetTag::NONE);
        let mut t = self.index.lock(Index::subtree_of(key.off));
        t.insert(key.off, e, if self.data_crc { Some(&recrc) } else { None });
        Ok(())
    }
}

pub fn replay(
    media: &dyn Media,
    sb: &Superblock,
    segs: &SegmentTable,
    index: &Index,
    tails: &mut Tails,
) -> Result<Replayed> {
    let mut r = Replay {
        segs,
        pieces: PieceCrc::new(media, &segs.geo),
        index,
        data_crc: sb.data_crc(),
        report: ReplayReport::default(),
        last_epoch_end: 0,
        spans: vec![Vec::new(); segs.geo.seg_count as usize],
    };
    let chain = visit_log(media, sb, segs, tails, &mut r)?;
    // Data is never written in place: no two live keys share pmem bytes.
    for (seg, s) in r.spans.iter_mut().enumerate() {
        s.sort_unstable();
        if let Some(w) = s.windows(2).find(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(Error::corrupt(
                format!("keys in segment {seg}"),
                format!("two keys name the same bytes (offsets {} and {})", w[0].0, w[1].0),
            ));
        }
    }
    Ok(Replayed { head: chain.head, report: r.report, last_epoch_end: r.last_epoch_end })
}
