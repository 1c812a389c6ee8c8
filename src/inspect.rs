//! A read-only walk of the on-media state, for the offline tools.
//!
//! [`inspect`] reads everything replay reads — superblock, both replicas of
//! every record, the key-set chain, every key — and, when asked, the data of
//! every live key to verify its CRC. The chain and the keys are walked by the
//! walk replay itself uses (`replay::visit_log`), with a visitor of its own. It never stores to the device (the engine
//! load it ends with runs over [`ReadOnly`] media, which refuses stores).
//!
//! Every finding is a [`Problem`] with its location. A [`Severity::Damaged`]
//! problem leaves the cache loadable (a bad replica whose twin is good, a key
//! whose data fails its CRC); a [`Severity::Fatal`] one means the engine will
//! refuse to load the device. The verdict is cross-checked against a real
//! engine load, so "loadable" here means exactly what `Cache::open` does.

use std::fmt;
use std::sync::Arc;

use crate::cache::{Cache, Opened};
use crate::config::{BaseIdentity, Config};
use crate::error::{Error, Result};
use crate::format::{
    self, CacheInfo, KeyRecord, LogPos, Record, Superblock, CACHE_INFO_OFF, DIRTY_TAIL_OFF, KEY_TAIL_OFF,
    REC_CACHE_INFO, REC_DIRTY_TAIL, REC_KEY_TAIL, REC_SEG_META,
};
use crate::pmem::{Media, ReadOnly};
use crate::replay::{visit_log, Chain, KeyAt, LogVisitor};
use crate::replica::ReplicaHealth;
use crate::segment::{Geometry, SegmentTable};
use crate::tails::Tails;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Something is wrong, but the cache loads and serves its data.
    Damaged,
    /// The engine cannot load the device.
    Fatal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// Where: a structure and its byte offset, segment or kset sequence.
    pub location: String,
    pub detail: String,
}

impl fmt::Display for Problem {
    /// "location: detail", or one sentence when the detail continues it
    /// ("replica B of key_tail at offset 0x4000 is corrupt ...").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let continues = ["is ", "has ", "holds ", "names "].iter().any(|v| self.detail.starts_with(v));
        write!(f, "{}{}{}", self.location, if continues { " " } else { ": " }, self.detail)
    }
}

/// One replica slot of a replicated record as found on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub offset: u64,
    /// The record's seq when the slot is valid, otherwise why it is not.
    pub state: std::result::Result<u32, String>,
}

/// A replicated record: both slots and which one the engine uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordState {
    pub name: String,
    pub slots: [Slot; 2],
    /// 0 or 1; None when neither slot is valid.
    pub used: Option<usize>,
}

/// Replica slots are called A (first) and B (second) in reports.
pub fn slot_name(i: usize) -> char {
    if i == 0 {
        'A'
    } else {
        'B'
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct InspectOptions {
    /// Read the data of every live key and verify its CRC (when the cache keeps data CRCs).
    pub verify_data: bool,
}

/// What is on the device.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub device_len: u64,
    pub sb: Superblock,
    pub gc_percent: Option<u8>,
    pub cache_mode: Option<crate::CacheMode>,
    /// cache_info, key_tail, dirty_tail (segment metadata appears only in `problems`).
    pub records: Vec<RecordState>,
    pub key_tail: Option<LogPos>,
    pub dirty_tail: Option<LogPos>,
    /// Where the next kset goes; known when the chain could be walked.
    pub key_head: Option<LogPos>,
    pub ksets: u64,
    /// Ksets from dirty_tail to the head (not yet written back).
    pub dirty_ksets: u64,
    pub keys: u64,
    pub stale_keys: u64,
    pub dirty_bytes: u64,
    pub log_segments: u32,
    /// Segments in use as the engine counts them after a load.
    pub segs_used: Option<u32>,
    /// Keys whose data CRC was verified.
    pub data_checked: u64,
    pub problems: Vec<Problem>,
}

impl Inspection {
    /// True when the engine can load the device.
    pub fn usable(&self) -> bool {
        !self.problems.iter().any(|p| p.severity == Severity::Fatal)
    }

    fn problem(&mut self, severity: Severity, location: impl Into<String>, detail: impl Into<String>) {
        self.problems.push(Problem { severity, location: location.into(), detail: detail.into() });
    }
}

/// Reads the device without changing it. Fails only when there is no
/// superblock to report on (blank, not a pcache, damaged superblock, I/O);
/// every other finding is a [`Problem`] in the result.
pub fn inspect(media: Arc<dyn Media>, opts: InspectOptions) -> Result<Inspection> {
    let media: Arc<dyn Media> = Arc::new(ReadOnly(media));
    let sb = Cache::read_superblock(&*media)?;
    let mut ins = Inspection {
        device_len: media.len(),
        sb: sb.clone(),
        gc_percent: None,
        cache_mode: None,
        records: Vec::new(),
        key_tail: None,
        dirty_tail: None,
        key_head: None,
        ksets: 0,
        dirty_ksets: 0,
        keys: 0,
        stale_keys: 0,
        dirty_bytes: 0,
        log_segments: 0,
        segs_used: None,
        data_checked: 0,
        problems: Vec::new(),
    };

    // Replicated records: every slot, reported one by one.
    let info = record(&*media, &mut ins, "cache_info", CACHE_INFO_OFF, REC_CACHE_INFO)?;
    if let Some(r) = info {
        match CacheInfo::from_body(&r) {
            Ok(ci) => {
                ins.gc_percent = Some(ci.gc_percent);
                ins.cache_mode = crate::CacheMode::from_u8(ci.mode);
            }
            Err(e) => ins.problem(Severity::Fatal, "cache_info", e.to_string()),
        }
    }
    ins.key_tail = record(&*media, &mut ins, "key_tail", KEY_TAIL_OFF, REC_KEY_TAIL)?.map(|r| LogPos::from_body(&r));
    ins.dirty_tail =
        record(&*media, &mut ins, "dirty_tail", DIRTY_TAIL_OFF, REC_DIRTY_TAIL)?.map(|r| LogPos::from_body(&r));
    let geo = Geometry::of(&sb);
    for seg in 0..geo.seg_count {
        let name = format!("segment {seg} metadata");
        let offs = geo.meta_offs(seg);
        let (state, recs) = read_slots(&*media, &name, offs, REC_SEG_META)?;
        report_slots(&mut ins, &state);
        if let Some(used) = state.used {
            for (i, rec) in recs.iter().enumerate() {
                let Some(rec) = rec else { continue };
                let (id, _) = format::seg_meta_from_body(rec);
                if id == seg {
                    continue;
                }
                let loc = format!("replica {} of {name} at offset {:#x}", slot_name(i), offs[i]);
                if i == used {
                    ins.problem(Severity::Fatal, loc, format!("names segment {id}; this replica is the one in use"));
                } else {
                    ins.problem(
                        Severity::Damaged,
                        loc,
                        format!("names segment {id}; replica {} is used", slot_name(used)),
                    );
                }
            }
        }
    }

    if ins.usable() {
        walk(&media, &sb, &mut ins, opts)?;
    }

    // The verdict of the engine itself, on media that refuses stores.
    let mut cfg = Config::new(BaseIdentity::recorded(&sb));
    cfg.data_crc = sb.data_crc();
    cfg.read_cache = false;
    match Cache::open(media.clone(), &cfg) {
        Ok((cache, opened)) => {
            ins.segs_used = Some(cache.stats().segs_used);
            if let Opened::Loaded(rep) = opened {
                if ins.usable() && rep.dirty_bytes != ins.dirty_bytes {
                    ins.problem(
                        Severity::Damaged,
                        "key log",
                        format!("replay counts {} dirty bytes, the walk {}", rep.dirty_bytes, ins.dirty_bytes),
                    );
                }
            }
        }
        Err(e) => {
            if ins.usable() {
                ins.problem(Severity::Fatal, "load", e.to_string());
            }
        }
    }
    Ok(ins)
}

/// Why a slot does not hold a valid record of `kind`, or the record.
fn read_slots(media: &dyn Media, name: &str, offs: [u64; 2], kind: u32) -> Result<(RecordState, [Option<Record>; 2])> {
    // The reading and the choice Replica::load makes.
    let h = ReplicaHealth::read(media, offs, kind)?;
    let slot = |i: usize| Slot { offset: offs[i], state: h.slots[i].as_ref().map(|r| r.seq).map_err(|e| e.clone()) };
    let recs = [h.slots[0].as_ref().ok().copied(), h.slots[1].as_ref().ok().copied()];
    Ok((RecordState { name: name.to_string(), slots: [slot(0), slot(1)], used: h.used }, recs))
}

fn report_slots(ins: &mut Inspection, st: &RecordState) {
    match st.used {
        None => {
            let why: Vec<String> = st
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    format!(
                        "{} at {:#x} {}",
                        slot_name(i),
                        s.offset,
                        s.state.as_ref().err().cloned().unwrap_or_default()
                    )
                })
                .collect();
            ins.problem(Severity::Fatal, st.name.clone(), format!("both replicas are unusable ({})", why.join("; ")));
        }
        Some(used) => {
            for (i, s) in st.slots.iter().enumerate() {
                if let Err(why) = &s.state {
                    ins.problem(
                        Severity::Damaged,
                        format!("replica {} of {} at offset {:#x}", slot_name(i), st.name, s.offset),
                        format!("{why}; replica {} is used", slot_name(used)),
                    );
                }
            }
        }
    }
}

fn record(media: &dyn Media, ins: &mut Inspection, name: &str, offs: [u64; 2], kind: u32) -> Result<Option<Record>> {
    let (st, recs) = read_slots(media, name, offs, kind)?;
    report_slots(ins, &st);
    let rec = st.used.and_then(|u| recs[u]);
    ins.records.push(st);
    Ok(rec)
}

/// The key-set chain and every key: the walk replay does ([`visit_log`]),
/// counting, and checking data CRCs when asked.
fn walk(media: &Arc<dyn Media>, sb: &Superblock, ins: &mut Inspection, opts: InspectOptions) -> Result<()> {
    let geo = Geometry::of(sb);
    let segs = match SegmentTable::load(&**media, geo, 0) {
        Ok(s) => s,
        Err(e) => {
            ins.problem(Severity::Fatal, "segment metadata", e.to_string());
            return Ok(());
        }
    };
    let mut tails = match Tails::load(&**media) {
        Ok(t) => t,
        Err(e) => {
            ins.problem(Severity::Fatal, "tails", e.to_string());
            return Ok(());
        }
    };
    let mut v = Walk { media: &**media, geo, opts, ins, buf: Vec::new() };
    match visit_log(&**media, sb, &segs, &mut tails, &mut v) {
        Ok(_) => Ok(()),
        Err(Error::Corrupt { what, detail }) => {
            ins.problem(Severity::Fatal, what, detail);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// inspect's visitor of the log walk.
struct Walk<'a> {
    media: &'a dyn Media,
    geo: Geometry,
    opts: InspectOptions,
    ins: &'a mut Inspection,
    buf: Vec<u8>,
}

impl LogVisitor for Walk<'_> {
    fn restarted_at_dirty(&mut self, why: &Error) {
        self.ins.problem(
            Severity::Damaged,
            "key_tail",
            format!(
                "the log from its surviving replica does not lead to dirty_tail ({why}); \
                 it is read from dirty_tail, and the clean data cached before it is dropped"
            ),
        );
    }

    fn chain(&mut self, chain: &Chain) {
        self.ins.key_head = Some(chain.head);
        self.ins.ksets = chain.ksets.len() as u64;
        self.ins.log_segments = chain.segs.len() as u32;
        self.ins.dirty_ksets = (chain.ksets.len() - chain.dirty_at) as u64;
    }

    fn key(&mut self, at: KeyAt, key: &KeyRecord, live: bool, dirty: bool) -> Result<()> {
        self.ins.keys += 1;
        if !live {
            self.ins.stale_keys += 1;
            return Ok(());
        }
        if key.is_dirty() && dirty {
            self.ins.dirty_bytes += key.len as u64;
        }
        if self.opts.verify_data && key.flags & format::KEY_FLAG_CRC != 0 && !key.is_zero() {
            self.buf.resize(key.len as usize, 0);
            let addr = self.geo.addr(key.seg, key.seg_off);
            self.media.read(addr, &mut self.buf)?;
            self.ins.data_checked += 1;
            let got = format::data_crc(&[&self.buf]);
            if got != key.data_crc {
                self.ins.problem(
                    Severity::Damaged,
                    at.location(),
                    format!(
                        "data for base offset {} (+{} bytes) at segment {} offset {:#x} (byte offset {addr:#x}) fails its CRC \
                         (recorded {:#010x}, computed {got:#010x}){}",
                        key.off,
                        key.len,
                        key.seg,
                        key.seg_off,
                        key.data_crc,
                        if key.is_dirty() && dirty { "; the data is dirty" } else { "" }
                    ),
                );
            }
        }
        Ok(())
    }
}
