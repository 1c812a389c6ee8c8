//! The DRAM index: which byte ranges of the base device are cached where.
//!
//! The logical space is sharded into 4 MiB subtrees, each behind its own lock,
//! so workers touching different regions never contend. Inside a subtree,
//! extents are kept in 64 KiB buckets: a small sorted array each, found
//! through a one-cache-line directory. An extent is split at bucket
//! boundaries, so any range is looked up in one or a few short arrays — a
//! write's index update touches three or four cache lines and runs no
//! generic tree code, which matters because it sits on every I/O. Inserting
//! an extent trims or splits what it overlaps. Each subtree counts its
//! mutations; a read miss remembers the count so that filling the cache from
//! the base device later can tell whether the range changed meanwhile.

use crate::spinlock::{SpinGuard, SpinLock};

use crate::format::{KeyRecord, SUBTREE_SHIFT, SUBTREE_SIZE};
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
    /// The key's flags (format::KEY_FLAG_*).
    pub flags: u8,
    /// The open kset the key went into and that kset's epoch then (see
    /// [`Extent::kset`]); two fields rather than a [`KsetTag`] so that the
    /// extent stays 24 bytes.
    pub kset_id: u8,
    pub kset_epoch: u16,
}

/// Which open kset (and which epoch of it) holds a key. Epochs wrap: a tag
/// may look open long after it was journalled, which only costs a needless
/// seal, never a missed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KsetTag {
    pub id: u8,
    pub epoch: u16,
}

impl KsetTag {
    pub const NONE: KsetTag = KsetTag { id: u8::MAX, epoch: 0 };
}

impl Extent {
    /// Where `key`'s bytes are, for a key held by open kset `kset`
    /// ([`KsetTag::NONE`] when it comes from the log).
    pub fn of_key(key: &KeyRecord, kset: KsetTag) -> Extent {
        Extent {
            len: key.len,
            seg: key.seg,
            seg_off: key.seg_off,
            gen: key.gen as u32,
            crc: key.data_crc,
            flags: key.flags as u8,
            kset_id: kset.id,
            kset_epoch: kset.epoch,
        }
    }

    /// The open kset the key went into ([`KsetTag::NONE`] for keys replayed
    /// from the log): a later key over the same bytes in another kset must
    /// see this one journalled first.
    pub fn kset(&self) -> KsetTag {
        KsetTag { id: self.kset_id, epoch: self.kset_epoch }
    }

    /// A zero extent (from a zero key): reads as zeros, backed by nothing.
    pub fn is_zero(&self) -> bool {
        self.flags as u32 & crate::format::KEY_FLAG_ZERO != 0
    }

    /// Read since its data was written, filled or moved (see [`REFERENCED`]).
    pub fn is_referenced(&self) -> bool {
        self.flags & REFERENCED != 0
    }
}

/// An in-DRAM flag of [`Extent::flags`], never persisted (no key flag uses
/// the bit): a read hit the extent. GC moves the data of such extents to the
/// log head instead of dropping it (gc.rs), a second chance in the manner of
/// CLOCK: data written and never read again still leaves the cache.
pub const REFERENCED: u8 = 0x80;
const _: () = assert!(crate::format::KEY_FLAGS_KNOWN & REFERENCED as u32 == 0);

const BUCKET_SHIFT: u32 = 16;
const BUCKET_SIZE: u64 = 1 << BUCKET_SHIFT;
const BUCKETS: usize = (SUBTREE_SIZE >> BUCKET_SHIFT) as usize;
/// Directory value of a bucket that holds nothing.
const NO_BUCKET: u8 = u8::MAX;

/// A bucket's extents. One extent (a bucket written by one large write)
/// stays inline, so that a lookup does not follow one more pointer.
type Bucket = smallvec::SmallVec<[Entry; 1]>;

/// An extent and where it starts, as an offset inside its subtree.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: u32,
    e: Extent,
}

impl Entry {
    fn end(&self) -> u32 {
        self.start + self.e.len
    }
}

/// The extents of one 4 MiB range of the base device.
pub struct Subtree {
    /// Bucket number -> position in `buckets`, or NO_BUCKET. Only buckets
    /// holding extents take memory, so a sparsely used subtree stays small.
    dir: [u8; BUCKETS],
    /// Per bucket, which of its 4 KiB blocks any extent touches (a superset:
    /// bits are set on insert and recomputed on removal). A read miss over a
    /// cache much smaller than the data finds its block clear here and never
    /// reads the bucket itself, which is usually not in the CPU cache.
    occupied: [u16; BUCKETS],
    /// Sorted, non-overlapping extents of each present bucket.
    buckets: Vec<Bucket>,
    /// Which bucket each element of `buckets` is (to update `dir` on removal).
    ids: Vec<u8>,
    len: usize,
    pub version: u64,
    /// Ranges a sequential bypass is writing to the base (see bypass.rs).
    pub(crate) bypass: Vec<(u64, u64)>,
    /// A write found one of `bypass` in its way and waits: the bypass's
    /// end must wake it.
    pub(crate) bypass_waited: bool,
}

impl Default for Subtree {
    fn default() -> Self {
        Subtree {
            dir: [NO_BUCKET; BUCKETS],
            occupied: [0; BUCKETS],
            buckets: Vec::new(),
            ids: Vec::new(),
            len: 0,
            version: 0,
            bypass: Vec::new(),
            bypass_waited: false,
        }
    }
}

/// crc32c of an extent's bytes in pmem; !0 (which never matches) if unreadable,
/// so a damaged extent fails its read cleanly.
/// Derives the CRC of a piece of an extent (a trimmed or split part) from
/// the extent's data on pmem, after checking that data against the
/// extent's own CRC: a piece of damaged data gets a CRC no read of it will
/// match, so cutting an extent never blesses damage. Keeps the last
/// extent's data, since one insert cuts one extent into several pieces.
pub struct PieceCrc<'a> {
    media: &'a dyn Media,
    geo: &'a Geometry,
    /// The last whole extent read, whether its CRC held, and its data.
    last: std::cell::RefCell<Option<(Extent, bool, Vec<u8>)>>,
}

impl<'a> PieceCrc<'a> {
    pub fn new(media: &'a dyn Media, geo: &'a Geometry) -> Self {
        PieceCrc { media, geo, last: Default::default() }
    }

    /// The CRC for `piece`, a part of `whole` (whose `crc` covers all of it).
    pub fn crc(&self, whole: &Extent, piece: &Extent) -> u32 {
        let mut last = self.last.borrow_mut();
        let same = |w: &Extent| (w.seg, w.seg_off, w.len, w.crc) == (whole.seg, whole.seg_off, whole.len, whole.crc);
        if !last.as_ref().is_some_and(|(w, ..)| same(w)) {
            let mut buf = vec![0u8; whole.len as usize];
            let ok = self.media.read(self.geo.addr(whole.seg, whole.seg_off), &mut buf).is_ok()
                && crate::format::data_crc(&[&buf]) == whole.crc;
            *last = Some((*whole, ok, buf));
        }
        let Some((_, ok, buf)) = last.as_ref() else { return !0 };
        let at = piece.seg_off.saturating_sub(whole.seg_off) as usize;
        let Some(bytes) = buf.get(at..at + piece.len as usize) else { return !0 };
        let c = crate::format::data_crc(&[bytes]);
        if *ok {
            c
        } else {
            !c
        }
    }
}

/// Gives a cut piece of an extent its CRC: called with the extent it comes
/// from and the piece (see [`PieceCrc`]); None when CRCs are off.
pub type Recrc<'a> = Option<&'a dyn Fn(&Extent, &Extent) -> u32>;

/// Offset of `off` inside its subtree.
fn rel(off: u64) -> u32 {
    (off & (SUBTREE_SIZE - 1)) as u32
}

fn bucket_of(rel: u32) -> usize {
    (rel >> BUCKET_SHIFT) as usize
}

const BLOCK_SHIFT: u32 = BUCKET_SHIFT - 4;
const _: () = assert!(BUCKET_SIZE >> BLOCK_SHIFT == u16::BITS as u64);

/// The [`Subtree::occupied`] bits of the blocks `[from, to)` (offsets in
/// the subtree, inside one bucket) touches.
fn block_bits(from: u32, to: u32) -> u16 {
    debug_assert!(from < to && bucket_of(from) == bucket_of(to - 1));
    let first = (from >> BLOCK_SHIFT) & 15;
    let last = ((to - 1) >> BLOCK_SHIFT) & 15;
    ((u32::MAX >> (31 - last)) & !((1u32 << first) - 1)) as u16
}

impl Subtree {
    /// Inserts `[start, start+e.len)`, trimming or splitting overlapped extents.
    /// The range must lie inside one subtree (keys never cross one).
    pub fn insert(&mut self, start: u64, e: Extent, recrc: Recrc) {
        self.version += 1;
        let (from, to) = (rel(start), rel(start) + e.len);
        debug_assert!(e.len > 0 && (to as u64) <= SUBTREE_SIZE, "extent crosses its subtree");
        if bucket_of(from) == bucket_of(to - 1) {
            self.insert_in_bucket(Entry { start: from, e }, recrc);
            return;
        }
        // Split at bucket boundaries; each piece keeps its own CRC.
        let mut at = from;
        while at < to {
            let piece_end = ((at as u64 / BUCKET_SIZE + 1) * BUCKET_SIZE).min(to as u64) as u32;
            let mut p = e;
            p.seg_off = e.seg_off + (at - from);
            p.len = piece_end - at;
            fix_crc(&mut p, &e, recrc);
            self.insert_in_bucket(Entry { start: at, e: p }, recrc);
            at = piece_end;
        }
    }

    /// The bucket holding `b`, created if absent.
    fn bucket_mut(&mut self, b: usize) -> &mut Bucket {
        if self.dir[b] == NO_BUCKET {
            self.dir[b] = self.buckets.len() as u8;
            self.buckets.push(Bucket::new());
            self.ids.push(b as u8);
        }
        &mut self.buckets[self.dir[b] as usize]
    }

    fn bucket(&self, b: usize) -> &[Entry] {
        match self.dir[b] {
            NO_BUCKET => &[],
            i => &self.buckets[i as usize],
        }
    }

    /// Drops bucket `b` if it became empty, so that its memory goes back.
    fn drop_if_empty(&mut self, b: usize) {
        let i = self.dir[b];
        if i == NO_BUCKET || !self.buckets[i as usize].is_empty() {
            return;
        }
        self.buckets.swap_remove(i as usize);
        self.ids.swap_remove(i as usize);
        if let Some(&moved) = self.ids.get(i as usize) {
            self.dir[moved as usize] = i;
        }
        self.dir[b] = NO_BUCKET;
    }

    fn insert_in_bucket(&mut self, new: Entry, recrc: Recrc) {
        let (s, end) = (new.start, new.end());
        // What the bucket holds after this is what it held plus the new range.
        self.occupied[bucket_of(s)] |= block_bits(s, end);
        let v = self.bucket_mut(bucket_of(s));
        let i = first_at_or_after(v, s);
        // Fast path: an exact overwrite, in place.
        if let Some(x) = v.get_mut(i) {
            if x.start == s && x.e.len == new.e.len {
                x.e = new.e;
                return;
            }
        }
        let before = v.len();
        // An extent that starts before `s` and reaches into it.
        if i > 0 && v[i - 1].end() > s {
            let old = v[i - 1];
            let mut left = old;
            left.e.len = s - old.start;
            fix_crc(&mut left.e, &old.e, recrc);
            v[i - 1] = left;
            if old.end() > end {
                v.insert(i, tail_of(&old, end, recrc));
            }
        }
        // Extents that start inside the new one.
        let mut j = i;
        while j < v.len() && v[j].start < end {
            if v[j].end() > end {
                v[j] = tail_of(&v[j], end, recrc);
                break;
            }
            j += 1;
        }
        if j > i {
            // Reuse the first overwritten slot, drop the rest.
            v[i] = new;
            v.drain(i + 1..j);
        } else {
            v.insert(i, new);
        }
        let after = v.len();
        self.len = self.len + after - before;
    }

    /// Removes the parts of `[start, start+len)` still backed by the pmem
    /// extent `seg`/`seg_off..+len` (GC dropping a journalled key).
    pub fn remove_backed_by(&mut self, start: u64, len: u32, seg: u32, seg_off: u32) -> u64 {
        let (from, to) = (rel(start), rel(start) + len);
        let lo = seg_off as u64;
        let hi = lo + len as u64;
        let mut removed = 0u64;
        let mut count = 0usize;
        for b in bucket_of(from)..=bucket_of(to - 1) {
            let i = self.dir[b];
            if i == NO_BUCKET {
                continue;
            }
            self.buckets[i as usize].retain(|x| {
                let e = &x.e;
                let victim = x.start < to
                    && x.end() > from
                    && !e.is_zero()
                    && e.seg == seg
                    && e.seg_off as u64 >= lo
                    && e.seg_off as u64 + e.len as u64 <= hi;
                if victim {
                    removed += e.len as u64;
                    count += 1;
                }
                !victim
            });
            self.occupied[b] = self.buckets[i as usize].iter().fold(0, |m, x| m | block_bits(x.start, x.end()));
            self.drop_if_empty(b);
        }
        if removed > 0 {
            self.len -= count;
            self.version += 1;
        }
        removed
    }

    /// Flags the data extents overlapping `[start, end)` as read (see
    /// [`REFERENCED`]). Not a change of what the range holds: the version
    /// stays.
    pub fn mark_referenced(&mut self, start: u64, end: u64) {
        let (from, to) = (rel(start), rel(start) + (end - start) as u32);
        for b in bucket_of(from)..=bucket_of(to - 1) {
            let i = self.dir[b];
            if i == NO_BUCKET {
                continue;
            }
            for x in self.buckets[i as usize].iter_mut() {
                if x.start < to && x.end() > from && !x.e.is_zero() {
                    x.e.flags |= REFERENCED;
                }
            }
        }
    }

    /// Whether a sequential bypass is writing any of `[start, end)` to the base.
    pub fn bypassing(&self, start: u64, end: u64) -> bool {
        self.bypass.iter().any(|&(s, e)| s < end && start < e)
    }

    /// Like [`Subtree::bypassing`], for a write that will wait if so: the
    /// bypass's end then wakes waiting writes.
    pub(crate) fn bypass_blocks(&mut self, start: u64, end: u64) -> bool {
        let b = self.bypassing(start, end);
        self.bypass_waited |= b;
        b
    }

    /// Walks `[start, end)`: `hit(off, extent, skip, n)` for cached pieces (skip = bytes
    /// of the extent before `off`), `miss(off, len)` for holes, in address order.
    pub fn walk(
        &self,
        start: u64,
        end: u64,
        mut hit: impl FnMut(u64, &Extent, u32, u32),
        mut miss: impl FnMut(u64, u64),
    ) {
        if start >= end {
            return;
        }
        let base = start - rel(start) as u64;
        let (from, to) = (rel(start), (end - base) as u32);
        let mut pos = from;
        for b in bucket_of(from)..=bucket_of(to - 1) {
            let bucket_start = (b as u64 * BUCKET_SIZE) as u32;
            let (lo, hi) = (pos.max(bucket_start), to.min(bucket_start + BUCKET_SIZE as u32));
            if self.occupied[b] & block_bits(lo, hi) == 0 {
                // Nothing here: the hole goes on (reported at the next hit or the end).
                continue;
            }
            let v = self.bucket(b);
            let first = first_ending_after(v, pos);
            for x in &v[first..] {
                if x.start >= to {
                    break;
                }
                if x.start > pos {
                    miss(base + pos as u64, (x.start - pos) as u64);
                    pos = x.start;
                }
                let piece_end = x.end().min(to);
                hit(base + pos as u64, &x.e, pos - x.start, piece_end - pos);
                pos = piece_end;
            }
        }
        if pos < to {
            miss(base + pos as u64, (to - pos) as u64);
        }
    }

    /// Heap bytes this subtree holds (buckets, their spilled extents, ids).
    fn heap_bytes(&self) -> usize {
        let spilled: usize =
            self.buckets.iter().filter(|b| b.spilled()).map(|b| b.capacity() * std::mem::size_of::<Entry>()).sum();
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
            + spilled
            + self.ids.capacity()
            + self.bypass.capacity() * std::mem::size_of::<(u64, u64)>()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every extent in address order, as (absolute start, extent), for a
    /// subtree starting at `base`.
    #[cfg(test)]
    pub fn extents(&self, base: u64) -> Vec<(u64, Extent)> {
        (0..BUCKETS).flat_map(|b| self.bucket(b).iter().map(move |x| (base + x.start as u64, x.e))).collect()
    }
}

// Buckets are short (16 entries for 4 KiB extents) and usually not in the
// CPU cache: a forward scan lets the CPU fetch the next lines while it
// compares, where a binary search waits for each probe's line in turn.

/// Position of the first entry starting at or after `s`.
fn first_at_or_after(v: &[Entry], s: u32) -> usize {
    v.iter().position(|x| x.start >= s).unwrap_or(v.len())
}

/// Position of the first entry ending after `pos`.
fn first_ending_after(v: &[Entry], pos: u32) -> usize {
    v.iter().position(|x| x.end() > pos).unwrap_or(v.len())
}

/// The part of `old` from `cut` (an offset in the subtree) on.
fn tail_of(old: &Entry, cut: u32, recrc: Recrc) -> Entry {
    let skip = cut - old.start;
    let mut right = *old;
    right.start = cut;
    right.e.len = old.e.len - skip;
    right.e.seg_off = old.e.seg_off + skip;
    fix_crc(&mut right.e, &old.e, recrc);
    right
}

/// Gives `piece`, cut from `whole`, its own CRC.
fn fix_crc(piece: &mut Extent, whole: &Extent, recrc: Recrc) {
    if let Some(f) = recrc {
        if !piece.is_zero() {
            piece.crc = f(whole, piece);
        }
    }
}

/// Subtrees are allocated in chunks of this many (256 MiB of base), the
/// first time one of them is locked: the index's DRAM follows what is used,
/// not the base's size (16 bytes per 256 MiB before that: 64 KiB per TiB).
const CHUNK: usize = 64;
type Chunk = [SpinLock<Subtree>; CHUNK];

/// All subtrees covering a base device.
pub struct Index {
    chunks: Vec<std::sync::OnceLock<Box<Chunk>>>,
    count: usize,
}

impl Index {
    pub fn new(base_size: u64) -> Self {
        let count = base_size.div_ceil(SUBTREE_SIZE).max(1) as usize;
        Index { chunks: (0..count.div_ceil(CHUNK)).map(|_| std::sync::OnceLock::new()).collect(), count }
    }

    fn chunk(&self, i: usize) -> &Chunk {
        self.chunks[i / CHUNK].get_or_init(|| Box::new(std::array::from_fn(|_| SpinLock::new(Subtree::default()))))
    }

    pub fn subtree_of(off: u64) -> usize {
        (off >> SUBTREE_SHIFT) as usize
    }

    /// Bytes from `off` to the end of its subtree, at most `left`: keys and
    /// lookups never cross a subtree.
    pub fn piece_len(off: u64, left: u64) -> u64 {
        left.min(SUBTREE_SIZE - (off & (SUBTREE_SIZE - 1)))
    }

    /// Locks subtree `i`. Readers take it too: they hold it only while they
    /// copy their hits, and a lock shared by readers needs an atomic release
    /// (see spinlock.rs).
    pub fn lock(&self, i: usize) -> SpinGuard<'_, Subtree> {
        assert!(i < self.count, "subtree {i} is past the base ({} subtrees)", self.count);
        self.chunk(i)[i % CHUNK].lock()
    }

    /// The subtrees allocated so far, each locked in turn.
    fn each_allocated(&self, mut f: impl FnMut(&Subtree)) {
        for c in self.chunks.iter().filter_map(|c| c.get()) {
            for t in c.iter() {
                f(&t.lock());
            }
        }
    }

    /// Number of extents over all subtrees (takes every lock in turn).
    pub fn extents(&self) -> usize {
        let mut n = 0;
        self.each_allocated(|t| n += t.len());
        n
    }

    /// DRAM the index holds: chunk table, allocated subtrees, their extents.
    pub fn dram_bytes(&self) -> u64 {
        let mut heap = 0usize;
        self.each_allocated(|t| heap += t.heap_bytes());
        let chunks = self.chunks.iter().filter(|c| c.get().is_some()).count();
        (self.chunks.len() * std::mem::size_of::<std::sync::OnceLock<Box<Chunk>>>()
            + chunks * std::mem::size_of::<Chunk>()
            + heap) as u64
    }
}

const _: () = assert!(std::mem::size_of::<Extent>() == 24);

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(len: u32, seg_off: u32) -> Extent {
        Extent { len, seg: 1, seg_off, gen: 0, crc: 0, flags: 0, kset_id: KsetTag::NONE.id, kset_epoch: 0 }
    }

    fn dump(t: &Subtree) -> Vec<(u64, u32, u32)> {
        t.extents(0).into_iter().map(|(s, e)| (s, e.len, e.seg_off)).collect()
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
        assert_eq!(
            out.into_inner(),
            vec![('m', 512, 0, 512), ('h', 1024, 0, 1024), ('m', 2048, 0, 2048), ('h', 4096, 0, 512)]
        );
    }

    #[test]
    fn remove_backed_by_leaves_newer_data() {
        let mut t = Subtree::default();
        t.insert(0, ext(4096, 0), None);
        t.insert(1024, Extent { seg: 2, ..ext(1024, 0) }, None);
        t.remove_backed_by(0, 4096, 1, 0);
        assert_eq!(dump(&t), vec![(1024, 1024, 0)]);
    }

    /// Random inserts and GC removals against a per-sector reference model,
    /// with extents of every size (many crossing buckets) and CRC upkeep.
    #[test]
    fn matches_a_sector_model() {
        use rand::rngs::SmallRng;
        use rand::{RngCore, SeedableRng};
        const SECT: u64 = 512;
        let sectors = (SUBTREE_SIZE / SECT) as usize;
        // A fake crc that depends on exactly what an extent covers.
        let fake = |e: &Extent| e.seg.wrapping_mul(0x9e37_79b9) ^ e.seg_off.wrapping_mul(31) ^ e.len;
        let recrc: &dyn Fn(&Extent, &Extent) -> u32 = &|_, piece| fake(piece);
        let base = 3 * SUBTREE_SIZE;
        let mut t = Subtree::default();
        // sector -> (seg, seg_off of that sector)
        let mut model: Vec<Option<(u32, u32)>> = vec![None; sectors];
        let mut keys: Vec<(u64, u32, u32, u32)> = Vec::new();
        let mut rng = SmallRng::seed_from_u64(7);
        for step in 0..20_000u32 {
            if rng.next_u64() % 8 == 0 && !keys.is_empty() {
                // GC of an old key.
                let (off, len, seg, seg_off) = keys.swap_remove((rng.next_u64() % keys.len() as u64) as usize);
                t.remove_backed_by(off, len, seg, seg_off);
                let first = ((off - base) / SECT) as usize;
                for i in 0..(len as u64 / SECT) as usize {
                    if model[first + i] == Some((seg, seg_off + (i as u64 * SECT) as u32)) {
                        model[first + i] = None;
                    }
                }
            } else {
                let n = match rng.next_u64() % 4 {
                    0 => 1 + rng.next_u64() % 8,
                    1 => 8,
                    2 => 1 + rng.next_u64() % 300,
                    _ => 1 + rng.next_u64() % 3000,
                } as usize;
                let n = n.min(sectors);
                let first = (rng.next_u64() % (sectors - n + 1) as u64) as usize;
                let (seg, seg_off) = (step, (rng.next_u64() % 1000) as u32 * 512);
                let mut e = Extent {
                    len: (n as u64 * SECT) as u32,
                    seg,
                    seg_off,
                    gen: 0,
                    crc: 0,
                    flags: 0,
                    kset_id: KsetTag::NONE.id,
                    kset_epoch: 0,
                };
                e.crc = fake(&e);
                let off = base + first as u64 * SECT;
                t.insert(off, e, Some(recrc));
                keys.push((off, e.len, seg, seg_off));
                for i in 0..n {
                    model[first + i] = Some((seg, seg_off + (i as u64 * SECT) as u32));
                }
            }
            if step % 500 != 0 {
                continue;
            }
            // Whole-subtree walk equals the model; extents are sorted,
            // disjoint, within one bucket, and carry their own crc.
            let got = std::cell::RefCell::new(vec![None; sectors]);
            let last_end = std::cell::Cell::new(base);
            t.walk(
                base,
                base + SUBTREE_SIZE,
                |o, e, skip, n| {
                    assert!(o >= last_end.get());
                    last_end.set(o + n as u64);
                    assert_eq!(e.crc, fake(e), "crc of a trimmed or split extent");
                    for i in 0..(n as u64 / SECT) {
                        got.borrow_mut()[((o - base) / SECT + i) as usize] =
                            Some((e.seg, e.seg_off + skip + (i * SECT) as u32));
                    }
                },
                |o, n| {
                    assert!(o >= last_end.get());
                    last_end.set(o + n);
                },
            );
            assert_eq!(last_end.get(), base + SUBTREE_SIZE);
            assert_eq!(got.into_inner(), model, "step {step}");
            let all = t.extents(base);
            assert_eq!(all.len(), t.len());
            for w in all.windows(2) {
                assert!(w[0].0 + w[0].1.len as u64 <= w[1].0);
            }
            for (s, e) in &all {
                assert_eq!(s / BUCKET_SIZE, (s + e.len as u64 - 1) / BUCKET_SIZE);
            }
            // A partial walk reports holes merged across buckets.
            let (a, b) = (base + 100 * SECT, base + 5000 * SECT);
            let pos = std::cell::Cell::new(a);
            let last_was_miss = std::cell::Cell::new(false);
            t.walk(
                a,
                b,
                |o, _, _, n| {
                    assert_eq!(o, pos.get());
                    pos.set(o + n as u64);
                    last_was_miss.set(false);
                },
                |o, n| {
                    assert_eq!(o, pos.get());
                    assert!(!last_was_miss.get(), "two adjacent holes");
                    pos.set(o + n);
                    last_was_miss.set(true);
                },
            );
            assert_eq!(pos.get(), b);
            // Short walks anywhere (a read's lookup, which the occupancy
            // bits answer without the bucket) agree with the model.
            for _ in 0..200 {
                let n = 1 + (rng.next_u64() % 24) as usize;
                let first = (rng.next_u64() % (sectors - n + 1) as u64) as usize;
                let got = std::cell::RefCell::new(vec![None; n]);
                let a = base + first as u64 * SECT;
                t.walk(
                    a,
                    a + n as u64 * SECT,
                    |o, e, skip, len| {
                        for i in 0..(len as u64 / SECT) {
                            got.borrow_mut()[((o - a) / SECT + i) as usize] =
                                Some((e.seg, e.seg_off + skip + (i * SECT) as u32));
                        }
                    },
                    |_, _| {},
                );
                assert_eq!(got.into_inner()[..], model[first..first + n], "step {step}, sectors {first}+{n}");
            }
        }
    }
}
