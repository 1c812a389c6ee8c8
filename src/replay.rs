//! Rebuilding DRAM state from the key log at open.
//!
//! Walks ksets from key_tail following the chain, and stops at the first
//! position that holds no valid kset (that is the key head). Every field read
//! is treated as untrusted: positions, segment ids, key bounds and the chain
//! itself (cycles) are checked, and a crc-valid but impossible structure is an
//! error, never a panic.

use crate::error::{Error, Result};
use crate::format::{KeyRecord, LogPos, Superblock, KEY_FLAGS_KNOWN, KEY_FLAG_CRC, SECTOR, SUBTREE_SHIFT};
use crate::index::{Extent, Index, KsetTag, PieceCrc};
use crate::keylog::{check_pos, read_kset};
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

/// One walk of the chain: the kset positions from key_tail to the head.
pub struct Chain {
    pub ksets: Vec<LogPos>,
    pub segs: Vec<u32>,
    pub head: LogPos,
    /// Index in `ksets` of the kset at dirty_tail (== ksets.len() when it is the head).
    pub dirty_at: usize,
}

/// Follows the log from key_tail, validating tails and chain.
pub fn walk_chain(media: &dyn Media, sb: &Superblock, segs: &SegmentTable, tails: &Tails) -> Result<Chain> {
    let geo = segs.geo;
    check_pos(geo.payload(), geo.seg_count, tails.key, "key_tail")?;
    check_pos(geo.payload(), geo.seg_count, tails.dirty, "dirty_tail")?;
    if tails.dirty.seq < tails.key.seq {
        return Err(Error::corrupt("dirty_tail", "is behind key_tail"));
    }
    let mut visited = vec![false; geo.seg_count as usize];
    let mut pos = tails.key;
    visited[pos.seg as usize] = true;
    let mut chain = Chain { ksets: Vec::new(), segs: vec![pos.seg], head: pos, dirty_at: usize::MAX };
    loop {
        if pos == tails.dirty {
            chain.dirty_at = chain.ksets.len();
        }
        let Some(k) = read_kset(media, segs, sb.nonce, pos)? else { break };
        chain.ksets.push(pos);
        if k.hdr.is_last() {
            let next = k.next.seg;
            if visited[next as usize] {
                return Err(Error::corrupt(
                    format!("kset at segment {} offset {}", pos.seg, pos.off),
                    format!("chain loops back to segment {next}"),
                ));
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
                "segment {} offset {} seq {} is not on the key log",
                tails.dirty.seg, tails.dirty.off, tails.dirty.seq
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
    let gen = segs.gen(k.seg);
    if k.gen > gen {
        return bad(format!("generation {} is newer than its segment's {gen}", k.gen));
    }
    Ok(k.gen == gen)
}

pub fn replay(
    media: &dyn Media,
    sb: &Superblock,
    segs: &SegmentTable,
    index: &Index,
    tails: &mut Tails,
) -> Result<Replayed> {
    let chain = match walk_chain(media, sb, segs, tails) {
        Err(e) if tails.key_degraded && tails.key != tails.dirty => {
            log::warn!(
                "pcache: key_tail: the log from its surviving replica does not lead to dirty_tail ({e}); \
                 the log is read from dirty_tail, and the clean data cached before it is dropped"
            );
            tails.start_at_dirty();
            walk_chain(media, sb, segs, tails)?
        }
        r => r?,
    };
    let mut is_log = vec![false; segs.geo.seg_count as usize];
    for &s in &chain.segs {
        is_log[s as usize] = true;
        segs.replay_get(s);
    }
    let mut report = ReplayReport { log_segments: chain.segs.len() as u32, ..Default::default() };
    let geo = segs.geo;
    let data_crc = sb.data_crc();
    let pieces = PieceCrc::new(media, &geo);
    let recrc = |whole: &Extent, piece: &Extent| pieces.crc(whole, piece);
    let mut last_epoch_end = 0;
    // Where each live key's data is, to find two keys naming the same bytes.
    let mut spans: Vec<Vec<(u32, u32)>> = vec![Vec::new(); geo.seg_count as usize];
    for (i, &pos) in chain.ksets.iter().enumerate() {
        let k =
            read_kset(media, segs, sb.nonce, pos)?.ok_or_else(|| Error::Io("key log changed during replay".into()))?;
        report.ksets += 1;
        if k.hdr.ends_epoch() {
            last_epoch_end = pos.seq;
        }
        for key in &k.keys {
            report.keys += 1;
            if !check_key(key, sb, segs, &is_log)? {
                report.stale_keys += 1;
                continue;
            }
            if !key.is_zero() {
                segs.replay_get(key.seg);
                spans[key.seg as usize].push((key.seg_off, key.len));
            }
            if key.is_dirty() && i >= chain.dirty_at {
                report.dirty_bytes += key.len as u64;
            }
            let e = Extent::of_key(key, KsetTag::NONE);
            let mut t = index.lock(Index::subtree_of(key.off));
            t.insert(key.off, e, if data_crc { Some(&recrc) } else { None });
        }
    }
    // Data is never written in place: no two live keys share pmem bytes.
    for (seg, s) in spans.iter_mut().enumerate() {
        s.sort_unstable();
        if let Some(w) = s.windows(2).find(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(Error::corrupt(
                format!("keys in segment {seg}"),
                format!("two keys name the same bytes (offsets {} and {})", w[0].0, w[1].0),
            ));
        }
    }
    Ok(Replayed { head: chain.head, report, last_epoch_end })
}
