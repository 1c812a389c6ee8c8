//! The DRAM index: which byte ranges of the base device are cached where.
//!
//! The logical space is sharded into 4 MiB subtrees, each an ordered map of
//! non-overlapping extents behind its own lock, so workers touching different
//! regions never contend. Inserting an extent trims or splits what it
//! overlaps. Each subtree counts its mutations; a read miss remembers the count
//! so that filling the cache from the base device later can tell whether the
//! range changed meanwhile.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::format::{SUBTREE_SHIFT, SUBTREE_SIZE};
use crate::pmem::Media;
use crate::segment::Geometry;

/// Where an extent's bytes are in pmem. 24 bytes, to keep DRAM per key small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u32,
    pub seg: u32,
    pub seg_off: u32,
    /// Low 32 bits of the segment generation the data was written under.
    pub gen: u32,
    /// crc32c of exactly these bytes when data CRC is on.
    pub crc: u32,
    pub flags: u32,
}

impl Extent {
    /// A zero extent (from a zero key): reads as zeros, backed by nothing.
    pub fn is_zero(&self) -> bool {
        self.flags & crate::format::KEY_FLAG_ZERO != 0
    }
}

#[derive(Default)]
pub struct Subtree {
    pub map: BTreeMap<u64, Extent>,
    pub version: u64,
}

/// crc32c of an extent's bytes in pmem; !0 (which never matches) if unreadable,
/// so a damaged extent fails its read cleanly.
pub fn extent_crc(media: &dyn Media, geo: &Geometry, e: &Extent) -> u32 {
    let mut buf = vec![0u8; e.len as usize];
    match media.read(geo.addr(e.seg, e.seg_off), &mut buf) {
        Ok(()) => crate::format::data_crc(&[&buf]),
        Err(_) => !0,
    }
}

/// Recomputes the crc of a trimmed extent (reads pmem); None when CRCs are off.
pub type Recrc<'a> = Option<&'a dyn Fn(&Extent) -> u32>;

impl Subtree {
    /// Inserts `[start, start+e.len)`, trimming or splitting overlapped extents.
    pub fn insert(&mut self, start: u64, e: Extent, recrc: Recrc) {
        self.version += 1;
        let end = start + e.len as u64;
        // Fast paths: an exact overwrite (in place, one lookup), or nothing overlaps.
        match self.map.range_mut(..end).next_back() {
            None => {
                self.map.insert(start, e);
                return;
            }
            Some((&s, old)) if s == start && old.len == e.len => {
                *old = e;
                return;
            }
            Some((&s, old)) if s + old.len as u64 <= start => {
                self.map.insert(start, e);
                return;
            }
            _ => {}
        }
        // An extent that starts before `start` and reaches into it.
        if let Some((&s, &old)) = self.map.range(..start).next_back() {
            let old_end = s + old.len as u64;
            if old_end > start {
                let mut left = old;
                left.len = (start - s) as u32;
                fix_crc(&mut left, recrc);
                self.map.insert(s, left);
                if old_end > end {
                    let right = tail_of(&old, s, end, recrc);
                    self.map.insert(end, right);
                }
            }
        }
        // Extents that start inside the new one.
        loop {
            let Some((&s, &old)) = self.map.range(start..end).next() else { break };
            self.map.remove(&s);
            let old_end = s + old.len as u64;
            if old_end > end {
                let right = tail_of(&old, s, end, recrc);
                self.map.insert(end, right);
                break;
            }
        }
        self.map.insert(start, e);
    }

    /// Removes the parts of `[start, start+len)` still backed by the pmem
    /// extent `seg`/`seg_off..+len` (GC dropping a journalled key).
    pub fn remove_backed_by(&mut self, start: u64, len: u32, seg: u32, seg_off: u32) -> u64 {
        let end = start + len as u64;
        let lo = seg_off as u64;
        let hi = lo + len as u64;
        let first = self.map.range(..start).next_back().map(|(&s, _)| s).unwrap_or(start);
        let victims: Vec<u64> = self
            .map
            .range(first..end)
            .filter(|(&s, e)| {
                s + e.len as u64 > start
                    && !e.is_zero()
                    && e.seg == seg
                    && e.seg_off as u64 >= lo
                    && e.seg_off as u64 + e.len as u64 <= hi
            })
            .map(|(&s, _)| s)
            .collect();
        let mut removed = 0;
        for s in victims {
            if let Some(e) = self.map.remove(&s) {
                removed += e.len as u64;
            }
        }
        if removed > 0 {
            self.version += 1;
        }
        removed
    }

    /// Walks `[start, end)`: `hit(off, extent, skip)` for cached pieces (skip = bytes
    /// of the extent before `off`), `miss(off, len)` for holes, in address order.
    pub fn walk(&self, start: u64, end: u64, mut hit: impl FnMut(u64, &Extent, u32, u32), mut miss: impl FnMut(u64, u64)) {
        let mut pos = start;
        let first = self.map.range(..start).next_back().map(|(&s, _)| s).unwrap_or(start);
        for (&s, e) in self.map.range(first..end) {
            let e_end = s + e.len as u64;
            if e_end <= pos {
                continue;
            }
            if s > pos {
                miss(pos, s - pos);
                pos = s;
            }
            let piece_end = e_end.min(end);
            hit(pos, e, (pos - s) as u32, (piece_end - pos) as u32);
            pos = piece_end;
        }
        if pos < end {
            miss(pos, end - pos);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

fn tail_of(old: &Extent, s: u64, cut: u64, recrc: Recrc) -> Extent {
    let skip = (cut - s) as u32;
    let mut right = *old;
    right.len = old.len - skip;
    right.seg_off = old.seg_off + skip;
    fix_crc(&mut right, recrc);
    right
}

fn fix_crc(e: &mut Extent, recrc: Recrc) {
    if let Some(f) = recrc {
        if !e.is_zero() {
            e.crc = f(e);
        }
    }
}

/// All subtrees covering a base device.
pub struct Index {
    subtrees: Vec<RwLock<Subtree>>,
}

impl Index {
    pub fn new(base_size: u64) -> Self {
        let n = base_size.div_ceil(SUBTREE_SIZE).max(1) as usize;
        Index { subtrees: (0..n).map(|_| RwLock::new(Subtree::default())).collect() }
    }

    pub fn subtree_of(off: u64) -> usize {
        (off >> SUBTREE_SHIFT) as usize
    }

    /// Bytes from `off` to the end of its subtree, at most `left`: keys and
    /// lookups never cross a subtree.
    pub fn piece_len(off: u64, left: u64) -> u64 {
        left.min(SUBTREE_SIZE - (off & (SUBTREE_SIZE - 1)))
    }

    pub fn write(&self, i: usize) -> RwLockWriteGuard<'_, Subtree> {
        self.subtrees[i].write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn read(&self, i: usize) -> RwLockReadGuard<'_, Subtree> {
        self.subtrees[i].read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn count(&self) -> usize {
        self.subtrees.len()
    }

    /// Number of extents over all subtrees (takes every lock in turn).
    pub fn extents(&self) -> usize {
        (0..self.count()).map(|i| self.read(i).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(len: u32, seg_off: u32) -> Extent {
        Extent { len, seg: 1, seg_off, gen: 0, crc: 0, flags: 0 }
    }

    fn dump(t: &Subtree) -> Vec<(u64, u32, u32)> {
        t.map.iter().map(|(&s, e)| (s, e.len, e.seg_off)).collect()
    }

    #[test]
    fn insert_splits_and_trims() {
        let mut t = Subtree::default();
        t.insert(0, ext(4096, 0), None);
        t.insert(1024, ext(1024, 10000), None);
        assert_eq!(dump(&t), vec![(0, 1024, 0), (1024, 1024, 10000), (2048, 2048, 2048)]);
        t.insert(512, ext(2048, 20000), None);
        assert_eq!(dump(&t), vec![(0, 512, 0), (512, 2048, 20000), (2560, 1536, 2560)]);
        t.insert(0, ext(8192, 30000), None);
        assert_eq!(dump(&t), vec![(0, 8192, 30000)]);
    }

    #[test]
    fn walk_reports_hits_and_holes() {
        let mut t = Subtree::default();
        t.insert(1024, ext(1024, 0), None);
        t.insert(4096, ext(1024, 5000), None);
        let out = std::cell::RefCell::new(Vec::new());
        t.walk(
            512,
            4608,
            |o, _, skip, n| out.borrow_mut().push(('h', o, skip as u64, n as u64)),
            |o, n| out.borrow_mut().push(('m', o, 0, n)),
        );
        assert_eq!(out.into_inner(), vec![('m', 512, 0, 512), ('h', 1024, 0, 1024), ('m', 2048, 0, 2048), ('h', 4096, 0, 512)]);
    }

    #[test]
    fn remove_backed_by_leaves_newer_data() {
        let mut t = Subtree::default();
        t.insert(0, ext(4096, 0), None);
        t.insert(1024, Extent { seg: 2, ..ext(1024, 0) }, None);
        t.remove_backed_by(0, 4096, 1, 0);
        assert_eq!(dump(&t), vec![(1024, 1024, 0)]);
    }
}
