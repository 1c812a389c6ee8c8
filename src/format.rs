//! The on-media format (version 1). doc/format.md is the prose version of this file.
//!
//! Every structure is little-endian with naturally aligned fields and explicit
//! reserved bytes; encoding is by hand, never by transmuting packed structs.
//! Every structure carries a crc32c over its bytes after the crc field.

use crate::error::{Error, Result};

pub const FORMAT_VERSION: u16 = 1;
/// "PCACHE01" read as a little-endian u64.
pub const SB_MAGIC: u64 = u64::from_le_bytes(*b"PCACHE01");
/// Seed for every metadata crc32c (a public constant: it detects damage, not forgery).
pub const CRC_SEED: u32 = 0x5043_4331;

/// Metadata block stride: each replica owns a whole 4 KiB block, so one torn
/// write can never touch both copies.
pub const META_BLOCK: u64 = 4096;
pub const SB_OFF: u64 = 0;
pub const CACHE_INFO_OFF: [u64; 2] = [4096, 8192];
pub const KEY_TAIL_OFF: [u64; 2] = [12288, 16384];
pub const DIRTY_TAIL_OFF: [u64; 2] = [20480, 24576];
/// Segments start here.
pub const SEG_START: u64 = 64 * 1024;
/// Inside a segment: two 4 KiB replica blocks of segment metadata, then payload.
pub const SEG_META_OFF: [u64; 2] = [0, 4096];
pub const SEG_PAYLOAD_OFF: u64 = 8192;

pub const DEFAULT_SEG_SIZE: u64 = 16 << 20;
pub const MIN_SEG_SIZE: u64 = 64 << 10;
pub const MAX_SEG_SIZE: u64 = 1 << 30;
pub const MAX_SEGS: u64 = 1 << 20;
/// Highest GC threshold (percent of segments in use) a cache may record: GC
/// must start while there is room left for writes and the key log.
pub const MAX_GC_PERCENT: u8 = 90;
/// Fewest segments a cache may have (data heads, key log and its reserve need room).
pub const MIN_SEGS: u64 = 8;
/// Sequence numbers and generations count up by one per kset or reuse and
/// are never this large (2^62 of either would take millennia): a record
/// holding one is crafted, and counting on from it would overflow.
pub const MAX_COUNTER: u64 = 1 << 62;

/// I/O granularity: offsets and lengths are multiples of this.
pub const SECTOR: u64 = 512;
/// Requests are split so that no key crosses a subtree of this size.
pub const SUBTREE_SHIFT: u32 = 22;
pub const SUBTREE_SIZE: u64 = 1 << SUBTREE_SHIFT;

pub const KSET_MAGIC: u32 = u32::from_le_bytes(*b"KSET");
pub const KSET_HDR_SIZE: usize = 64;
pub const KEY_SIZE: usize = 40;
pub const KSET_MAX_KEYS: usize = 128;
/// Largest kset on media (header + 128 keys), already a multiple of 64.
pub const KSET_MAX_SIZE: usize = KSET_HDR_SIZE + KSET_MAX_KEYS * KEY_SIZE;
/// Kset flag: this kset carries no keys and continues the log in `next_seg`.
pub const KSET_FLAG_LAST: u16 = 1;
/// Kset flag: a FLUSH of the front end completed after this kset: it ends
/// an epoch. Writeback never lets the base hold a write of a later epoch
/// without every write of this one.
pub const KSET_FLAG_FLUSH: u16 = 2;
/// Kset flag: written by a writer that marks FLUSHes with KSET_FLAG_FLUSH.
/// A kset without it (written before epochs were marked) is an epoch of its own.
pub const KSET_FLAG_MARKS: u16 = 4;
pub const KSET_FLAGS_KNOWN: u16 = KSET_FLAG_LAST | KSET_FLAG_FLUSH | KSET_FLAG_MARKS;

/// Key flag: data not yet written back to the base device.
pub const KEY_FLAG_DIRTY: u32 = 1;
/// Key flag: `data_crc` holds the crc32c of the key's data.
pub const KEY_FLAG_CRC: u32 = 2;
/// Key flag: a zero key (WRITE_ZEROES / UNMAP). The range reads as zeros; it
/// has no data, so `seg`, `seg_off`, `gen` and `data_crc` are 0 and no
/// segment is referenced. Writeback sends write_zeroes to the base.
pub const KEY_FLAG_ZERO: u32 = 4;
pub const KEY_FLAGS_KNOWN: u32 = KEY_FLAG_DIRTY | KEY_FLAG_CRC | KEY_FLAG_ZERO;

/// Superblock flag: keys carry data CRCs, verified on every read hit.
pub const SB_FLAG_DATA_CRC: u16 = 1;

pub const BASE_ID_LEN: usize = 64;
pub const SB_SIZE: usize = 256;
pub const REC_SIZE: usize = 64;

/// Kinds of replicated records, stored in their header so that a record read
/// from the wrong place is rejected.
pub const REC_CACHE_INFO: u32 = u32::from_le_bytes(*b"CINF");
pub const REC_KEY_TAIL: u32 = u32::from_le_bytes(*b"KTAL");
pub const REC_DIRTY_TAIL: u32 = u32::from_le_bytes(*b"DTAL");
pub const REC_SEG_META: u32 = u32::from_le_bytes(*b"SEGM");

pub fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(CRC_SEED, bytes)
}

pub fn data_crc(chunks: &[&[u8]]) -> u32 {
    chunks.iter().fold(CRC_SEED, |c, b| crc32c::crc32c_append(c, b))
}

// --- little-endian field access over fixed buffers -------------------------

pub(crate) fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
pub(crate) fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

// --- superblock -------------------------------------------------------------

/// Written once at format; identifies the cache, its geometry and its base device.
///
/// ```text
///   0 crc u32        4 version u16     6 flags u16      8 magic u64
///  16 nonce u64     24 seg_size u32   28 seg_count u32  32 seg_start u64
///  40 base_size u64 48 base_block u32 52 reserved u32   56 base_id [u8; 64]
/// 120 cache_size u64  128..256 reserved (zero)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub version: u16,
    pub flags: u16,
    /// Random per format: ties ksets to this format of the device.
    pub nonce: u64,
    pub seg_size: u32,
    pub seg_count: u32,
    pub seg_start: u64,
    pub base_size: u64,
    pub base_block_size: u32,
    pub base_id: String,
    pub cache_size: u64,
    /// The cache's own identity (the pcache bdev's UUID); nil in images
    /// formatted before it was recorded.
    pub uuid: [u8; 16],
    /// The base device's UUID at format; nil if it had none.
    pub base_uuid: [u8; 16],
}

impl Superblock {
    pub fn data_crc(&self) -> bool {
        self.flags & SB_FLAG_DATA_CRC != 0
    }

    /// The base's UUID recorded at format, if it had one.
    pub fn base_uuid(&self) -> Option<uuid::Uuid> {
        Some(uuid::Uuid::from_bytes(self.base_uuid)).filter(|u| !u.is_nil())
    }

    pub fn encode(&self) -> [u8; SB_SIZE] {
        let mut b = [0u8; SB_SIZE];
        put_u16(&mut b, 4, self.version);
        put_u16(&mut b, 6, self.flags);
        put_u64(&mut b, 8, SB_MAGIC);
        put_u64(&mut b, 16, self.nonce);
        put_u32(&mut b, 24, self.seg_size);
        put_u32(&mut b, 28, self.seg_count);
        put_u64(&mut b, 32, self.seg_start);
        put_u64(&mut b, 40, self.base_size);
        put_u32(&mut b, 48, self.base_block_size);
        let id = self.base_id.as_bytes();
        b[56..56 + id.len().min(BASE_ID_LEN)].copy_from_slice(&id[..id.len().min(BASE_ID_LEN)]);
        put_u64(&mut b, 120, self.cache_size);
        b[128..144].copy_from_slice(&self.uuid);
        b[144..160].copy_from_slice(&self.base_uuid);
        let c = crc(&b[4..]);
        put_u32(&mut b, 0, c);
        b
    }

    /// Decodes and validates the superblock against a device of `dev_len` bytes.
    pub fn decode(b: &[u8], dev_len: u64) -> Result<Self> {
        let bad = |d: String| Error::corrupt("superblock", d);
        if b.len() < SB_SIZE {
            return Err(bad("short read".into()));
        }
        if get_u64(b, 8) != SB_MAGIC {
            return Err(Error::NotPcache("no pcache superblock magic".into()));
        }
        if get_u32(b, 0) != crc(&b[4..SB_SIZE]) {
            return Err(bad("crc mismatch".into()));
        }
        let version = get_u16(b, 4);
        if version == 0 || version > FORMAT_VERSION {
            return Err(Error::NotPcache(format!(
                "format version {version}, this build reads version {FORMAT_VERSION}"
            )));
        }
        let flags = get_u16(b, 6);
        if flags & !SB_FLAG_DATA_CRC != 0 {
            return Err(bad(format!("unknown flags {flags:#x}")));
        }
        let seg_size = get_u32(b, 24);
        let seg_count = get_u32(b, 28);
        let seg_start = get_u64(b, 32);
        let s = seg_size as u64;
        if !(MIN_SEG_SIZE..=MAX_SEG_SIZE).contains(&s) || s % META_BLOCK != 0 {
            return Err(bad(format!("segment size {s} out of range")));
        }
        if seg_start != SEG_START {
            return Err(bad(format!("segment start {seg_start}, expected {SEG_START}")));
        }
        let n = seg_count as u64;
        if !(MIN_SEGS..=MAX_SEGS).contains(&n) {
            return Err(bad(format!("segment count {n} out of range")));
        }
        let need = seg_start + n * s;
        if need > dev_len {
            return Err(bad(format!("{n} segments need {need} bytes, device has {dev_len}")));
        }
        let id_raw = &b[56..56 + BASE_ID_LEN];
        let id_len = id_raw.iter().position(|&c| c == 0).unwrap_or(BASE_ID_LEN);
        let base_id =
            std::str::from_utf8(&id_raw[..id_len]).map_err(|_| bad("base id is not UTF-8".into()))?.to_string();
        let base_block_size = get_u32(b, 48);
        if base_block_size == 0 || base_block_size as u64 % SECTOR != 0 {
            return Err(bad(format!("base block size {base_block_size}")));
        }
        Ok(Superblock {
            version,
            flags,
            nonce: get_u64(b, 16),
            seg_size,
            seg_count,
            seg_start,
            base_size: get_u64(b, 40),
            base_block_size,
            base_id,
            cache_size: get_u64(b, 120),
            uuid: b[128..144].try_into().expect("16 bytes"),
            base_uuid: b[144..160].try_into().expect("16 bytes"),
        })
    }
}

// --- replicated records -----------------------------------------------------

/// Header shared by every dual-replicated record (64 bytes in all):
///
/// ```text
///  0 crc u32   4 kind u32   8 seq u32   12 version u16   14 reserved u16
/// 16..64 body
/// ```
/// The newest valid replica wins, comparing `seq` with wrap-around.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub kind: u32,
    pub seq: u32,
    pub body: [u8; REC_SIZE - 16],
}

impl Record {
    pub fn new(kind: u32, seq: u32) -> Self {
        Record { kind, seq, body: [0; REC_SIZE - 16] }
    }

    pub fn encode(&self) -> [u8; REC_SIZE] {
        let mut b = [0u8; REC_SIZE];
        put_u32(&mut b, 4, self.kind);
        put_u32(&mut b, 8, self.seq);
        put_u16(&mut b, 12, FORMAT_VERSION);
        b[16..].copy_from_slice(&self.body);
        let c = crc(&b[4..]);
        put_u32(&mut b, 0, c);
        b
    }

    /// A record of `kind`, or None if the bytes are not a valid one.
    pub fn decode(b: &[u8], kind: u32) -> Option<Self> {
        if b.len() < REC_SIZE || get_u32(b, 0) != crc(&b[4..REC_SIZE]) {
            return None;
        }
        if get_u32(b, 4) != kind || get_u16(b, 12) != FORMAT_VERSION {
            return None;
        }
        let mut body = [0u8; REC_SIZE - 16];
        body.copy_from_slice(&b[16..REC_SIZE]);
        Some(Record { kind, seq: get_u32(b, 8), body })
    }
}

/// True when sequence `a` is newer than `b`, allowing for wrap-around.
pub fn seq_newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Options that may change after format (body of the CACHE_INFO record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheInfo {
    pub gc_percent: u8,
    /// The cache mode (mode.rs: 0 writeback, 1 writethrough, 2 writearound,
    /// 3 passthrough); 0 in images written before modes existed.
    pub mode: u8,
}

impl CacheInfo {
    pub fn to_body(self, r: &mut Record) {
        r.body[0] = self.gc_percent;
        r.body[1] = self.mode;
    }
    pub fn from_body(r: &Record) -> Result<Self> {
        let gc_percent = r.body[0];
        if gc_percent > MAX_GC_PERCENT {
            return Err(Error::corrupt("cache info", format!("gc_percent {gc_percent} > {MAX_GC_PERCENT}")));
        }
        let mode = r.body[1];
        if crate::mode::CacheMode::from_u8(mode).is_none() {
            return Err(Error::corrupt("cache info", format!("unknown cache mode {mode}")));
        }
        Ok(CacheInfo { gc_percent, mode })
    }
}

/// A position in the key log: segment, byte offset in its payload, and the
/// sequence number the kset found there must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogPos {
    pub seg: u32,
    pub off: u32,
    pub seq: u64,
}

impl LogPos {
    pub fn to_body(self, r: &mut Record) {
        put_u32(&mut r.body, 0, self.seg);
        put_u32(&mut r.body, 4, self.off);
        put_u64(&mut r.body, 8, self.seq);
    }
    pub fn from_body(r: &Record) -> Self {
        LogPos { seg: get_u32(&r.body, 0), off: get_u32(&r.body, 4), seq: get_u64(&r.body, 8) }
    }
}

/// Body of a SEG_META record: the segment's id (so a record in the wrong
/// segment is detected) and its generation.
pub fn seg_meta_body(r: &mut Record, seg: u32, gen: u64) {
    put_u32(&mut r.body, 0, seg);
    put_u64(&mut r.body, 8, gen);
}
pub fn seg_meta_from_body(r: &Record) -> (u32, u64) {
    (get_u32(&r.body, 0), get_u64(&r.body, 8))
}

// --- keys and ksets ---------------------------------------------------------

/// A key as journalled: `len` bytes of the base device at `off` are cached at
/// `seg_off` in the payload of segment `seg`, generation `gen`.
///
/// ```text
///  0 off u64  8 len u32  12 flags u32  16 seg u32  20 seg_off u32
/// 24 gen u64 32 data_crc u32 36 reserved u32
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRecord {
    pub off: u64,
    pub len: u32,
    pub flags: u32,
    pub seg: u32,
    pub seg_off: u32,
    pub gen: u64,
    pub data_crc: u32,
}

impl KeyRecord {
    pub fn is_dirty(&self) -> bool {
        self.flags & KEY_FLAG_DIRTY != 0
    }

    pub fn is_zero(&self) -> bool {
        self.flags & KEY_FLAG_ZERO != 0
    }

    pub fn encode_into(&self, b: &mut [u8]) {
        put_u64(b, 0, self.off);
        put_u32(b, 8, self.len);
        put_u32(b, 12, self.flags);
        put_u32(b, 16, self.seg);
        put_u32(b, 20, self.seg_off);
        put_u64(b, 24, self.gen);
        put_u32(b, 32, self.data_crc);
        put_u32(b, 36, 0);
    }

    pub fn decode(b: &[u8]) -> Self {
        KeyRecord {
            off: get_u64(b, 0),
            len: get_u32(b, 8),
            flags: get_u32(b, 12),
            seg: get_u32(b, 16),
            seg_off: get_u32(b, 20),
            gen: get_u64(b, 24),
            data_crc: get_u32(b, 32),
        }
    }
}

/// Kset header (64 bytes), followed by `key_num` keys:
///
/// ```text
///  0 crc u32 (header[4..64] and keys)  4 magic u32  8 seq u64  16 nonce u64
/// 24 key_num u16  26 flags u16  28 next_seg u32  32..64 reserved
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KsetHeader {
    pub seq: u64,
    pub nonce: u64,
    pub key_num: u16,
    pub flags: u16,
    pub next_seg: u32,
}

impl KsetHeader {
    pub fn is_last(&self) -> bool {
        self.flags & KSET_FLAG_LAST != 0
    }

    /// Whether this kset is a FLUSH mark.
    pub fn is_flush(&self) -> bool {
        self.flags & KSET_FLAG_FLUSH != 0
    }

    /// Whether an epoch ends with this kset: a FLUSH mark, or a kset from
    /// before epochs were marked (each of those is an epoch of its own).
    pub fn ends_epoch(&self) -> bool {
        self.flags & KSET_FLAG_FLUSH != 0 || self.flags & KSET_FLAG_MARKS == 0
    }
}

/// Size on media of a kset with `n` keys, rounded to a cache line.
pub fn kset_size(n: usize) -> usize {
    (KSET_HDR_SIZE + n * KEY_SIZE + 63) & !63
}

/// Encodes a kset into `out` (cleared first); returns its size on media.
pub fn encode_kset(out: &mut Vec<u8>, hdr: &KsetHeader, keys: &[KeyRecord]) -> usize {
    let size = kset_size(keys.len());
    out.clear();
    out.resize(size, 0);
    put_u32(out, 4, KSET_MAGIC);
    put_u64(out, 8, hdr.seq);
    put_u64(out, 16, hdr.nonce);
    put_u16(out, 24, keys.len() as u16);
    put_u16(out, 26, hdr.flags);
    put_u32(out, 28, hdr.next_seg);
    for (i, k) in keys.iter().enumerate() {
        let at = KSET_HDR_SIZE + i * KEY_SIZE;
        k.encode_into(&mut out[at..at + KEY_SIZE]);
    }
    let end = KSET_HDR_SIZE + keys.len() * KEY_SIZE;
    let c = crc(&out[4..end]);
    put_u32(out, 0, c);
    size
}

/// Why a kset at a log position is not (or no longer) part of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KsetEnd {
    /// No kset here: wrong magic, another format's nonce, or an older sequence.
    NotAKset,
    /// Header parsed but the crc does not match (a torn append).
    BadCrc,
    /// Parsed and crc-valid but impossible (crafted): too many keys, unknown flags.
    Invalid(String),
}

/// Parses the header of a kset whose first bytes are `b` (at least the header).
/// `room` is how many payload bytes remain in its segment from its start.
pub fn parse_kset_header(b: &[u8], nonce: u64, seq: u64, room: usize) -> std::result::Result<KsetHeader, KsetEnd> {
    if b.len() < KSET_HDR_SIZE || get_u32(b, 4) != KSET_MAGIC {
        return Err(KsetEnd::NotAKset);
    }
    let hdr = KsetHeader {
        seq: get_u64(b, 8),
        nonce: get_u64(b, 16),
        key_num: get_u16(b, 24),
        flags: get_u16(b, 26),
        next_seg: get_u32(b, 28),
    };
    if hdr.nonce != nonce || hdr.seq != seq {
        return Err(KsetEnd::NotAKset);
    }
    if hdr.flags & !KSET_FLAGS_KNOWN != 0 {
        return Err(KsetEnd::Invalid(format!("unknown kset flags {:#x}", hdr.flags)));
    }
    if hdr.key_num as usize > KSET_MAX_KEYS {
        return Err(KsetEnd::Invalid(format!("kset holds {} keys, at most {KSET_MAX_KEYS}", hdr.key_num)));
    }
    if hdr.is_last() && hdr.key_num != 0 {
        return Err(KsetEnd::Invalid("last kset carries keys".into()));
    }
    if kset_size(hdr.key_num as usize) > room {
        return Err(KsetEnd::Invalid(format!("kset of {} keys overruns its segment", hdr.key_num)));
    }
    Ok(hdr)
}

/// Checks the crc of a whole kset (`b` holds at least `kset_size(key_num)` bytes).
pub fn kset_crc_ok(b: &[u8], key_num: usize) -> bool {
    let end = KSET_HDR_SIZE + key_num * KEY_SIZE;
    b.len() >= end && get_u32(b, 0) == crc(&b[4..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_wraps() {
        assert!(seq_newer(1, 0));
        assert!(!seq_newer(0, 1));
        assert!(seq_newer(0, u32::MAX));
        assert!(!seq_newer(5, 5));
    }

    #[test]
    fn superblock_round_trip_and_crc() {
        let sb = Superblock {
            version: FORMAT_VERSION,
            flags: SB_FLAG_DATA_CRC,
            nonce: 42,
            seg_size: MIN_SEG_SIZE as u32,
            seg_count: 8,
            seg_start: SEG_START,
            base_size: 1 << 30,
            base_block_size: 4096,
            base_id: "base-1".into(),
            cache_size: 1 << 20,
            uuid: [7; 16],
            base_uuid: [0; 16],
        };
        let mut b = sb.encode();
        assert_eq!(Superblock::decode(&b, 1 << 20).unwrap(), sb);
        b[100] ^= 1;
        assert!(matches!(Superblock::decode(&b, 1 << 20), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn kset_round_trip() {
        let keys: Vec<KeyRecord> = (0..3)
            .map(|i| KeyRecord {
                off: i * 4096,
                len: 4096,
                flags: KEY_FLAG_DIRTY,
                seg: 1,
                seg_off: 0,
                gen: 7,
                data_crc: 0,
            })
            .collect();
        let hdr = KsetHeader { seq: 9, nonce: 5, key_num: 3, flags: 0, next_seg: 0 };
        let mut out = Vec::new();
        let n = encode_kset(&mut out, &hdr, &keys);
        assert_eq!(n, kset_size(3));
        let h = parse_kset_header(&out, 5, 9, 1 << 16).unwrap();
        assert_eq!(h.key_num, 3);
        assert!(kset_crc_ok(&out, 3));
        assert_eq!(parse_kset_header(&out, 5, 10, 1 << 16), Err(KsetEnd::NotAKset));
        out[KSET_HDR_SIZE + 3] ^= 0x10;
        assert!(!kset_crc_ok(&out, 3));
    }
}
