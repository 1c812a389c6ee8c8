//! `pcache format PMEM`: formats a cache device. Refuses a device that holds
//! a pcache (saying whether it holds dirty data) or anything else that is not
//! blank, unless --force.

use std::path::Path;
use std::sync::Arc;

use pcache::format::{META_BLOCK, SB_MAGIC};
use pcache::inspect::{inspect, InspectOptions, Severity};
use pcache::pmem::{Media, PmemFile};
use pcache::{BaseIdentity, Cache, Config};

use crate::dev::{human, open_ro, open_rw, probe_base};
use crate::{one_device, parse_cmd, Fail};

const HELP: &str = "usage: pcache format PMEM [options]

Formats PMEM as a cache for a base device. The base identity (size, block
size, id) is recorded and checked whenever the cache is opened.

  --base FILE            take the base size (and, for a block device, the
                         block size) from FILE
  --base-size SIZE       base size in bytes (K, M, G suffixes) if no --base
  --base-block-size N    base block size                      (512)
  --base-id ID           base id, up to 64 bytes (a bdev name, a UUID)  (\"\")
  --seg-size SIZE        segment size, 64K to 1G  (16M, smaller on a device
                         that would hold fewer than 8 segments of 16M)
  --data-crc             keep a CRC of every key's data and check it on reads
  --gc-percent N         start GC at N% of segments used, 0 to 90  (70)
  --size SIZE            create PMEM with SIZE bytes if it does not exist
  --force                format even if PMEM holds a pcache (its data is lost)
                         or other data

Exit status: 0 formatted, 1 error or refusal, 2 usage.";

pub fn main(raw: &[String]) -> Result<i32, Fail> {
    let takes_value = ["base", "base-size", "base-block-size", "base-id", "seg-size", "gc-percent", "size"];
    let Some(a) = parse_cmd(raw, &takes_value, &["data-crc", "force"], HELP)? else { return Ok(0) };
    let pmem = one_device(&a, "format", HELP)?;
    let usage = |e: String| Fail::usage(e, HELP);
    let seg_size = a.num("seg-size").map_err(usage)?;
    let gc = a.num("gc-percent").map_err(usage)?;
    if gc.is_some_and(|g| g > pcache::format::MAX_GC_PERCENT as u64) {
        let max = pcache::format::MAX_GC_PERCENT;
        return Err(Fail::usage(format!("--gc-percent must be between 0 and {max}"), HELP));
    }
    let block_arg = a.num("base-block-size").map_err(usage)?;
    let base = match (a.get("base"), a.num("base-size").map_err(usage)?) {
        (Some(_), Some(_)) => return Err(Fail::usage("give --base or --base-size, not both".to_string(), HELP)),
        (None, None) => {
            return Err(Fail::usage("the base size is needed: --base FILE or --base-size SIZE".to_string(), HELP))
        }
        (Some(f), None) => {
            let p = probe_base(Path::new(f))?;
            if let (Some(dev), Some(arg)) = (p.block_size, block_arg) {
                if dev as u64 != arg {
                    return Err(Fail::error(format!("format: {f} has block size {dev}, not {arg}")));
                }
            }
            (p.size, p.block_size.map(u64::from).or(block_arg).unwrap_or(512))
        }
        (None, Some(size)) => (size, block_arg.unwrap_or(512)),
    };
    let id = a.get("base-id").unwrap_or("").to_string();
    let block_size =
        u32::try_from(base.1).map_err(|_| Fail::usage(format!("base block size {} is too large", base.1), HELP))?;
    let mut cfg = Config::new(BaseIdentity::named(base.0, block_size, id));
    cfg.seg_size = seg_size;
    cfg.data_crc = a.flag("data-crc");
    cfg.gc_percent = gc.map(|g| g as u8);
    cfg.read_cache = false;
    // Existing contents are refused below unless --force.
    cfg.force_format = true;

    let media: Arc<PmemFile> = if !pmem.exists() {
        let Some(size) = a.num("size").map_err(usage)? else {
            return Err(Fail::error(format!("{}: does not exist (give --size to create it)", pmem.display())));
        };
        Arc::new(PmemFile::create(pmem, size).map_err(|e| Fail::error(format!("{}: {e}", pmem.display())))?)
    } else {
        if !a.flag("force") {
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
