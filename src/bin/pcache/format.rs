//! `pcache format PMEM`: formats a cache device. Refuses a device that holds
//! a pcache (saying whether it holds dirty data) or anything else that is not
//! blank, unless --force.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pcache::format::{META_BLOCK, SB_MAGIC};
use pcache::inspect::{inspect, InspectOptions, Severity};
use pcache::pmem::{Media, PmemFile};
use pcache::{BaseIdentity, Cache, Config};

use crate::dev::{human, open_ro, open_rw, probe_base};
use crate::{parse_size, Fail};

/// The options of `pcache format` (their help is in main.rs, on the command).
#[derive(clap::Args)]
#[command(after_help = "Exit status: 0 formatted, 1 error or refusal, 2 usage.")]
pub struct Args {
    /// the cache device (a pmem file or device)
    #[arg(value_name = "PMEM")]
    pmem: PathBuf,
    /// take the base size (and, for a block device, the block size) from FILE
    #[arg(long, value_name = "FILE", conflicts_with = "base_size")]
    base: Option<PathBuf>,
    /// base size in bytes (K, M, G suffixes) if no --base
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    base_size: Option<u64>,
    /// base block size [default: 512]
    #[arg(long, value_name = "N", value_parser = parse_size)]
    base_block_size: Option<u64>,
    /// base id, up to 64 bytes (a bdev name, a UUID) [default: ""]
    #[arg(long, value_name = "ID")]
    base_id: Option<String>,
    /// segment size, 64K to 1G [default: 16M, smaller on a device that would
    /// hold fewer than 8 segments of 16M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    seg_size: Option<u64>,
    /// keep a CRC of every key's data and check it on reads
    #[arg(long)]
    data_crc: bool,
    /// start GC at N% of segments used, 0 to 90 [default: 70]
    #[arg(long, value_name = "N", value_parser = gc_percent)]
    gc_percent: Option<u8>,
    /// create PMEM with SIZE bytes if it does not exist
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    size: Option<u64>,
    /// format even if PMEM holds a pcache (its data is lost) or other data
    #[arg(long)]
    force: bool,
}

fn gc_percent(s: &str) -> Result<u8, String> {
    let max = pcache::format::MAX_GC_PERCENT;
    s.parse::<u8>().ok().filter(|g| *g <= max).ok_or_else(|| format!("must be between 0 and {max}"))
}

pub fn main(a: Args) -> Result<i32, Fail> {
    let pmem = a.pmem.as_path();
    let block_arg = a.base_block_size;
    let base = match (&a.base, a.base_size) {
        (Some(_), Some(_)) => return Err(Fail::usage("give --base or --base-size, not both", "format")),
        (None, None) => return Err(Fail::usage("the base size is needed: --base FILE or --base-size SIZE", "format")),
        (Some(f), None) => {
            let p = probe_base(f)?;
            if let (Some(dev), Some(arg)) = (p.block_size, block_arg) {
                if dev as u64 != arg {
                    return Err(Fail::error(format!("format: {} has block size {dev}, not {arg}", f.display())));
                }
            }
            (p.size, p.block_size.map(u64::from).or(block_arg).unwrap_or(512))
        }
        (None, Some(size)) => (size, block_arg.unwrap_or(512)),
    };
    let id = a.base_id.clone().unwrap_or_default();
    let block_size =
        u32::try_from(base.1).map_err(|_| Fail::usage(format!("base block size {} is too large", base.1), "format"))?;
    let mut cfg = Config::new(BaseIdentity::named(base.0, block_size, id));
    cfg.seg_size = a.seg_size;
    cfg.data_crc = a.data_crc;
    cfg.gc_percent = a.gc_percent;
    cfg.read_cache = false;
    // Existing contents are refused below unless --force.
    cfg.force_format = true;

    let media: Arc<PmemFile> = if !pmem.exists() {
        let Some(size) = a.size else {
            return Err(Fail::error(format!("{}: does not exist (give --size to create it)", pmem.display())));
        };
        Arc::new(PmemFile::create(pmem, size).map_err(|e| Fail::error(format!("{}: {e}", pmem.display())))?)
    } else {
        if !a.force {
            refuse_existing(pmem)?;
        }
        open_rw(pmem)?
    };
    let (cache, _) = Cache::open(media.clone() as Arc<dyn Media>, &cfg)
        .map_err(|e| Fail::error(format!("format: {}: {e}", pmem.display())))?;
    let sb = cache.superblock().clone();
    let gc_now = cache.stats().gc_percent;
    cache.close().map_err(|e| Fail::error(format!("format: {}: {e}", pmem.display())))?;
    println!(
        "{}: formatted: {} segments of {} bytes ({}), data_crc {}, gc_percent {gc_now}; base size {} block size {} id {:?}",
        pmem.display(),
        sb.seg_count,
        sb.seg_size,
        human(sb.seg_size as u64),
        if sb.data_crc() { "on" } else { "off" },
        sb.base_size,
        sb.base_block_size,
        sb.base_id
    );
    Ok(0)
}

/// Refuses a device that is not blank, saying what it holds.
fn refuse_existing(pmem: &Path) -> Result<(), Fail> {
    let media = open_ro(pmem)?;
    let len = media.len().min(META_BLOCK);
    let mut head = vec![0u8; len as usize];
    media.read(0, &mut head).map_err(|e| Fail::error(format!("{}: {e}", pmem.display())))?;
    if head.iter().all(|&b| b == 0) {
        return Ok(());
    }
    let what = if head.len() >= 16 && head[8..16] == SB_MAGIC.to_le_bytes() {
        match inspect(media, InspectOptions::default()) {
            Ok(ins) if ins.usable() => {
                if ins.dirty_bytes > 0 {
                    format!(
                        "holds a pcache with {} bytes ({}) of dirty data not yet written back to its base \
                         (size {}, id {:?}); formatting would lose it: run `pcache flush` first",
                        ins.dirty_bytes,
                        human(ins.dirty_bytes),
                        ins.sb.base_size,
                        ins.sb.base_id
                    )
                } else {
                    format!(
                        "holds a clean pcache (no dirty data; base size {}, id {:?})",
                        ins.sb.base_size, ins.sb.base_id
                    )
                }
            }
            Ok(ins) => {
                let why = ins
                    .problems
                    .iter()
                    .find(|p| p.severity == Severity::Fatal)
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                format!("holds a pcache that cannot be loaded ({why}); any dirty data on it cannot be counted")
            }
            Err(e) => format!("holds a damaged pcache ({e}); any dirty data on it cannot be counted"),
        }
    } else {
        "holds data that is not a pcache".to_string()
    };
    Err(Fail::error(format!("format: {} {what}; use --force to format it anyway", pmem.display())))
}
