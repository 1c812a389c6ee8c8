//! `pcache check PMEM`: validates every structure and reports each problem
//! with its location. Never writes to PMEM.

use pcache::inspect::{inspect, InspectOptions, Severity};

use std::path::PathBuf;

use serde::Serialize;

use crate::dev::{open_ro, to_json};
use crate::inspect::{problems_json, ProblemJson};
use crate::Fail;

/// The options of `pcache check` (their help is in main.rs, on the command).
#[derive(clap::Args)]
#[command(after_help = "Exit status: 0 clean; 1 problems found, but the cache can be loaded;\n\
                        2 the cache cannot be loaded (or a usage error).")]
pub struct Args {
    /// the cache device (a pmem file or device)
    #[arg(value_name = "PMEM")]
    pmem: PathBuf,
    /// one JSON object: status, exit, problems[] (severity, location, detail)
    #[arg(long)]
    json: bool,
    /// skip reading data to verify data CRCs
    #[arg(long)]
    no_data: bool,
}

/// `check --json`. A device without a readable superblock reports only
/// status, exit and problems.
#[derive(Serialize)]
struct Report {
    status: &'static str,
    exit: i32,
    #[serde(flatten)]
    counts: Option<Counts>,
    problems: Vec<ProblemJson>,
}

#[derive(Serialize)]
struct Counts {
    ksets: u64,
    keys: u64,
    data_checked: u64,
    dirty_bytes: u64,
}

pub fn main(a: Args) -> Result<i32, Fail> {
    let path = a.pmem.as_path();
    let json = a.json;
    let media = open_ro(path).map_err(|f| f.with_code(2))?;
    let ins = match inspect(media, InspectOptions { verify_data: !a.no_data }) {
        Ok(i) => i,
        Err(e) => {
            // No superblock to go by: nothing on the device can be loaded.
            if json {
                let problems = vec![ProblemJson::fatal("superblock at offset 0x0", e.to_string())];
                println!("{}", to_json(&Report { status: "unusable", exit: 2, counts: None, problems }));
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
        let counts =
            Counts { ksets: ins.ksets, keys: ins.keys, data_checked: ins.data_checked, dirty_bytes: ins.dirty_bytes };
        println!("{}", to_json(&Report { status, exit: code, counts: Some(counts), problems: problems_json(&ins) }));
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
