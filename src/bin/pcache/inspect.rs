//! `pcache inspect PMEM`: what is on a cache device, without changing it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use pcache::inspect::{inspect, slot_name, InspectOptions, Inspection, Severity};

use crate::dev::{human, open_ro, pos, PosJson};
use crate::Fail;

/// The options of `pcache inspect` (their help is in main.rs, on the command).
#[derive(clap::Args)]
#[command(after_help = "Exit status: 0 report printed, 1 error (no readable superblock), 2 usage.")]
pub struct Args {
    /// the cache device (a pmem file or device)
    #[arg(value_name = "PMEM")]
    pmem: PathBuf,
    /// one JSON object with stable field names (see README.md)
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> Result<i32, Fail> {
    let path = a.pmem.as_path();
    let media = open_ro(path)?;
    let ins = inspect(media, InspectOptions::default()).map_err(|e| Fail::error(format!("{}: {e}", path.display())))?;
    if a.json {
        println!("{}", crate::dev::to_json(&Report::new(path, &ins)));
    } else {
        print_human(path, &ins);
    }
    Ok(0)
}

fn print_human(path: &Path, ins: &Inspection) {
    let sb = &ins.sb;
    println!("device       {} ({} bytes)", path.display(), ins.device_len);
    println!(
        "superblock   version {}, nonce {:#018x}, formatted on a device of {} bytes",
        sb.version, sb.nonce, sb.cache_size
    );
    println!("uuid         {}", pcache::sb_uuid(sb));
    println!(
        "options      cache_mode {}, data_crc {}, gc_percent {}, segment size {} ({})",
        ins.cache_mode.map_or("unknown", |m| m.as_str()),
        if sb.data_crc() { "on" } else { "off" },
        ins.gc_percent.map_or("unknown".to_string(), |g| g.to_string()),
        sb.seg_size,
        human(sb.seg_size as u64)
    );
    println!(
        "base         size {} ({}), block size {}, id {:?}, uuid {}",
        sb.base_size,
        human(sb.base_size),
        sb.base_block_size,
        sb.base_id,
        sb.base_uuid().map_or("none".to_string(), |u| u.to_string())
    );
    println!(
        "segments     {} total, {} used, {} in the key log",
        sb.seg_count,
        ins.segs_used.map_or("unknown".to_string(), |u| u.to_string()),
        ins.log_segments
    );
    let p = |x: Option<pcache::format::LogPos>| x.map_or("unknown".to_string(), |x| pos(&x));
    println!("key_head     {}", p(ins.key_head));
    println!("dirty_tail   {}", p(ins.dirty_tail));
    println!("key_tail     {}", p(ins.key_tail));
    println!(
        "ksets        {} ({} not written back), {} keys ({} stale)",
        ins.ksets, ins.dirty_ksets, ins.keys, ins.stale_keys
    );
    println!("dirty        {} bytes ({})", ins.dirty_bytes, human(ins.dirty_bytes));
    for r in &ins.records {
        let slots: Vec<String> = r
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| match &s.state {
                Ok(seq) => format!("{} seq {seq}", slot_name(i)),
                Err(why) => format!("{} {why}", slot_name(i)),
            })
            .collect();
        println!(
            "{:<12} replicas: {}; {}",
            r.name,
            slots.join(", "),
            r.used.map_or("none usable".to_string(), |u| format!("{} used", slot_name(u)))
        );
    }
    if ins.problems.is_empty() {
        println!("state        {}", if ins.dirty_bytes > 0 { "dirty" } else { "clean" });
    } else {
        let fatal = ins.problems.iter().filter(|p| p.severity == Severity::Fatal).count();
        println!(
            "state        {} problem(s){}; run `pcache check` for details",
            ins.problems.len(),
            if fatal > 0 { ", cannot be loaded" } else { "" }
        );
    }
}

/// One problem, as `check --json` and `inspect --json` list it.
#[derive(Serialize)]
pub struct ProblemJson {
    severity: &'static str,
    location: String,
    detail: String,
}

impl ProblemJson {
    pub fn fatal(location: &str, detail: String) -> ProblemJson {
        ProblemJson { severity: "fatal", location: location.to_string(), detail }
    }
}

pub fn problems_json(ins: &Inspection) -> Vec<ProblemJson> {
    ins.problems
        .iter()
        .map(|p| ProblemJson {
            severity: if p.severity == Severity::Fatal { "fatal" } else { "damaged" },
            location: p.location.clone(),
            detail: p.detail.clone(),
        })
        .collect()
}

/// `inspect --json`: the field names are stable (README.md).
#[derive(Serialize)]
struct Report {
    device: DeviceJson,
    superblock: SuperblockJson,
    options: OptionsJson,
    base: BaseJson,
    segments: SegmentsJson,
    key_head: Option<PosJson>,
    dirty_tail: Option<PosJson>,
    key_tail: Option<PosJson>,
    ksets: u64,
    dirty_ksets: u64,
    keys: u64,
    stale_keys: u64,
    dirty_bytes: u64,
    replicas: Vec<RecordJson>,
    usable: bool,
    problems: Vec<ProblemJson>,
}

#[derive(Serialize)]
struct DeviceJson {
    path: String,
    size: u64,
}

#[derive(Serialize)]
struct SuperblockJson {
    version: u32,
    nonce: String,
    cache_size: u64,
    uuid: String,
}

#[derive(Serialize)]
struct OptionsJson {
    cache_mode: Option<&'static str>,
    data_crc: bool,
    gc_percent: Option<u8>,
    seg_size: u32,
}

#[derive(Serialize)]
struct BaseJson {
    size: u64,
    block_size: u32,
    id: String,
    uuid: Option<String>,
}

#[derive(Serialize)]
struct SegmentsJson {
    total: u32,
    used: Option<u32>,
    log: u32,
}

#[derive(Serialize)]
struct RecordJson {
    record: String,
    used: Option<String>,
    slots: Vec<SlotJson>,
}

#[derive(Serialize)]
struct SlotJson {
    replica: String,
    offset: u64,
    valid: bool,
    seq: Option<u64>,
    error: Option<String>,
}

impl Report {
    fn new(path: &Path, ins: &Inspection) -> Report {
        let sb = &ins.sb;
        let replicas = ins
            .records
            .iter()
            .map(|r| RecordJson {
                record: r.name.clone(),
                used: r.used.map(|u| slot_name(u).to_string()),
                slots: r
                    .slots
                    .iter()
                    .enumerate()
                    .map(|(i, s)| SlotJson {
                        replica: slot_name(i).to_string(),
                        offset: s.offset,
                        valid: s.state.is_ok(),
                        seq: s.state.as_ref().ok().map(|q| *q as u64),
                        error: s.state.as_ref().err().cloned(),
                    })
                    .collect(),
            })
            .collect();
        Report {
            device: DeviceJson { path: path.to_string_lossy().into_owned(), size: ins.device_len },
            superblock: SuperblockJson {
                version: sb.version as u32,
                nonce: format!("{:#018x}", sb.nonce),
                cache_size: sb.cache_size,
                uuid: pcache::sb_uuid(sb).to_string(),
            },
            options: OptionsJson {
                cache_mode: ins.cache_mode.map(|m| m.as_str()),
                data_crc: sb.data_crc(),
                gc_percent: ins.gc_percent,
                seg_size: sb.seg_size,
            },
            base: BaseJson {
                size: sb.base_size,
                block_size: sb.base_block_size,
                id: sb.base_id.clone(),
                uuid: sb.base_uuid().map(|u| u.to_string()),
            },
            segments: SegmentsJson { total: sb.seg_count, used: ins.segs_used, log: ins.log_segments },
            key_head: ins.key_head.map(PosJson::from),
            dirty_tail: ins.dirty_tail.map(PosJson::from),
            key_tail: ins.key_tail.map(PosJson::from),
            ksets: ins.ksets,
            dirty_ksets: ins.dirty_ksets,
            keys: ins.keys,
            stale_keys: ins.stale_keys,
            dirty_bytes: ins.dirty_bytes,
            replicas,
            usable: ins.usable(),
            problems: problems_json(ins),
        }
    }
}
