//! `pcache check PMEM`: validates every structure and reports each problem
//! with its location. Never writes to PMEM.

use pcache::inspect::{inspect, InspectOptions, Severity};

use crate::dev::open_ro;
use crate::json::J;
use crate::{one_device, parse_cmd, Fail};

const HELP: &str = "usage: pcache check PMEM [--json] [--no-data]

Validates the superblock, both replicas of every record (and which one is
used), CRCs, the key-set chain, generations, bounds of every key and, when the
cache keeps data CRCs, the data of every live key. Prints one line per problem
with its location (byte offset, segment, kset seq). Never writes to PMEM.

  --json      one JSON object: status, exit, problems[] (severity, location, detail)
  --no-data   skip reading data to verify data CRCs

Exit status: 0 clean; 1 problems found, but the cache can be loaded;
2 the cache cannot be loaded (or a usage error).";

pub fn main(raw: &[String]) -> Result<i32, Fail> {
    let Some(a) = parse_cmd(raw, &[], &["json", "no-data"], HELP)? else { return Ok(0) };
    let path = one_device(&a, "check", HELP)?;
    let json = a.flag("json");
    let media = open_ro(path).map_err(|f| f.with_code(2))?;
    let ins = match inspect(media, InspectOptions { verify_data: !a.flag("no-data") }) {
        Ok(i) => i,
        Err(e) => {
            // No superblock to go by: nothing on the device can be loaded.
            if json {
                print!(
                    "{}",
                    J::Obj(vec![
                        ("status", J::str("unusable")),
                        ("exit", J::Num(2)),
                        (
                            "problems",
                            J::Arr(vec![J::Obj(vec![
                                ("severity", J::str("fatal")),
                                ("location", J::str("superblock at offset 0x0")),
                                ("detail", J::str(e.to_string())),
                            ])])
                        ),
                    ])
                    .to_pretty()
                );
            } else {
                println!("fatal: superblock at offset 0x0: {e}");
                println!("{}: cannot be loaded", path.display());
            }
            return Ok(2);
        }
    };
    let fatal = ins.problems.iter().filter(|p| p.severity == Severity::Fatal).count();
    let (status, code) = if fatal > 0 {
        ("unusable", 2)
    } else if !ins.problems.is_empty() {
        ("problems", 1)
    } else {
        ("clean", 0)
    };
    if json {
        print!(
            "{}",
            J::Obj(vec![
                ("status", J::str(status)),
                ("exit", J::Num(code as u64)),
                ("ksets", J::Num(ins.ksets)),
                ("keys", J::Num(ins.keys)),
                ("data_checked", J::Num(ins.data_checked)),
                ("dirty_bytes", J::Num(ins.dirty_bytes)),
                ("problems", crate::inspect::problems_json(&ins)),
            ])
            .to_pretty()
        );
        return Ok(code);
    }
    for p in &ins.problems {
        let sev = if p.severity == Severity::Fatal { "fatal" } else { "damaged" };
        println!("{sev}: {p}");
    }
    let checked = format!(
        "{} segments, {} ksets, {} keys, {} data CRCs verified",
        ins.sb.seg_count, ins.ksets, ins.keys, ins.data_checked
    );
    match code {
        0 => println!("{}: clean ({checked})", path.display()),
        1 => println!("{}: {} problem(s), the cache can be loaded ({checked})", path.display(), ins.problems.len()),
        _ => {
            println!("{}: {} problem(s), {fatal} fatal: the cache cannot be loaded", path.display(), ins.problems.len())
        }
    }
    Ok(code)
}
