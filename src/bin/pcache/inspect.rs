//! `pcache inspect PMEM`: what is on a cache device, without changing it.

use std::path::Path;

use pcache::inspect::{inspect, slot_name, InspectOptions, Inspection, Severity};

use crate::dev::{human, open_ro, pos, pos_json};
use crate::json::J;
use crate::{one_device, parse_cmd, Fail};

const HELP: &str = "usage: pcache inspect PMEM [--json]

Shows the superblock, the options (cache_mode, data_crc, gc_percent, segment size), the
base identity (size, block size, id), segments total and used, key_head,
dirty_tail, key_tail, the key-set count and the dirty bytes. Never writes to
PMEM. Exit status: 0 report printed, 1 error (no readable superblock), 2 usage.

  --json    one JSON object with stable field names (see README.md)";

pub fn main(raw: &[String]) -> Result<i32, Fail> {
    let Some(a) = parse_cmd(raw, &[], &["json"], HELP)? else { return Ok(0) };
    let path = one_device(&a, "inspect", HELP)?;
    let media = open_ro(path)?;
    let ins = inspect(media, InspectOptions::default()).map_err(|e| Fail::error(format!("{}: {e}", path.display())))?;
    if a.flag("json") {
        print!("{}", to_json(path, &ins).to_pretty());
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
    println!("uuid         {}", pcache::cache::sb_uuid(sb));
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

pub fn problems_json(ins: &Inspection) -> J {
    J::Arr(
        ins.problems
            .iter()
            .map(|p| {
                J::Obj(vec![
                    ("severity", J::str(if p.severity == Severity::Fatal { "fatal" } else { "damaged" })),
                    ("location", J::str(p.location.clone())),
                    ("detail", J::str(p.detail.clone())),
                ])
            })
            .collect(),
    )
}

fn to_json(path: &Path, ins: &Inspection) -> J {
    let sb = &ins.sb;
    let records = ins
        .records
        .iter()
        .map(|r| {
            let slots = r
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    J::Obj(vec![
                        ("replica", J::str(slot_name(i).to_string())),
                        ("offset", J::Num(s.offset)),
                        ("valid", J::Bool(s.state.is_ok())),
                        ("seq", s.state.as_ref().map_or(J::Null, |q| J::Num(*q as u64))),
                        ("error", s.state.as_ref().err().map_or(J::Null, |e| J::str(e.clone()))),
                    ])
                })
                .collect();
            J::Obj(vec![
                ("record", J::str(r.name.clone())),
                ("used", r.used.map_or(J::Null, |u| J::str(slot_name(u).to_string()))),
                ("slots", J::Arr(slots)),
            ])
        })
        .collect();
    J::Obj(vec![
        ("device", J::Obj(vec![("path", J::str(path.to_string_lossy())), ("size", J::Num(ins.device_len))])),
        (
            "superblock",
            J::Obj(vec![
                ("version", J::Num(sb.version as u64)),
                ("nonce", J::str(format!("{:#018x}", sb.nonce))),
                ("cache_size", J::Num(sb.cache_size)),
                ("uuid", J::str(pcache::cache::sb_uuid(sb).to_string())),
            ]),
        ),
        (
            "options",
            J::Obj(vec![
                ("cache_mode", ins.cache_mode.map_or(J::Null, |m| J::str(m.as_str().to_string()))),
                ("data_crc", J::Bool(sb.data_crc())),
                ("gc_percent", J::opt_num(ins.gc_percent.map(u64::from))),
                ("seg_size", J::Num(sb.seg_size as u64)),
            ]),
        ),
        (
            "base",
            J::Obj(vec![
                ("size", J::Num(sb.base_size)),
                ("block_size", J::Num(sb.base_block_size as u64)),
                ("id", J::str(sb.base_id.clone())),
                ("uuid", sb.base_uuid().map_or(J::Null, |u| J::str(u.to_string()))),
            ]),
        ),
        (
            "segments",
            J::Obj(vec![
                ("total", J::Num(sb.seg_count as u64)),
                ("used", J::opt_num(ins.segs_used.map(u64::from))),
                ("log", J::Num(ins.log_segments as u64)),
            ]),
        ),
        ("key_head", pos_json(ins.key_head)),
        ("dirty_tail", pos_json(ins.dirty_tail)),
        ("key_tail", pos_json(ins.key_tail)),
        ("ksets", J::Num(ins.ksets)),
        ("dirty_ksets", J::Num(ins.dirty_ksets)),
        ("keys", J::Num(ins.keys)),
        ("stale_keys", J::Num(ins.stale_keys)),
        ("dirty_bytes", J::Num(ins.dirty_bytes)),
        ("replicas", J::Arr(records)),
        ("usable", J::Bool(ins.usable())),
        ("problems", problems_json(ins)),
    ])
}
