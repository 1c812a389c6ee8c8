//! Opening cache and base devices for the offline tools, and small helpers
//! shared by the commands.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use pcache::format::LogPos;
use pcache::pmem::{Media, PmemFile, ReadOnly, ReadOnlyFile};

use crate::Fail;

/// Opens a cache device so that nothing can store to it: files and block
/// devices with pread, a devdax character device through its mapping with
/// every store refused.
pub fn open_ro(path: &Path) -> Result<Arc<dyn Media>, Fail> {
    let meta = std::fs::metadata(path).map_err(|e| Fail::error(format!("{}: {e}", path.display())))?;
    if meta.file_type().is_char_device() {
        let m = PmemFile::open(path).map_err(|e| Fail::error(format!("{}: {e}", path.display())))?;
        return Ok(Arc::new(ReadOnly(Arc::new(m))));
    }
    let m = ReadOnlyFile::open(path).map_err(|e| Fail::error(format!("{}: {e}", path.display())))?;
    Ok(Arc::new(m))
}

/// Maps a cache device for writing (libpmem).
pub fn open_rw(path: &Path) -> Result<Arc<PmemFile>, Fail> {
    std::fs::metadata(path).map_err(|e| Fail::error(format!("{}: {e}", path.display())))?;
    let m = PmemFile::open(path).map_err(|e| Fail::error(format!("{}: {e}", path.display())))?;
    if !m.is_pmem() {
        log::warn!("{} is not pmem to libpmem; stores are made durable with msync", path.display());
    }
    Ok(Arc::new(m))
}

/// What can be learnt about a base device from the system.
pub struct BaseProbe {
    pub size: u64,
    /// The logical block size of a block device; None for a regular file,
    /// which has no block size of its own.
    pub block_size: Option<u32>,
}

pub fn probe_base(path: &Path) -> Result<BaseProbe, Fail> {
    let meta = std::fs::metadata(path).map_err(|e| Fail::error(format!("{}: {e}", path.display())))?;
    if meta.file_type().is_block_device() {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::File::open(path).map_err(|e| Fail::error(format!("{}: {e}", path.display())))?;
        let size =
            f.seek(SeekFrom::End(0)).map_err(|e| Fail::error(format!("{}: cannot size: {e}", path.display())))?;
        let rdev = meta.rdev();
        let (maj, min) =
            (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff), ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff));
        let sys = format!("/sys/dev/block/{maj}:{min}");
        let block_size = [format!("{sys}/queue/logical_block_size"), format!("{sys}/../queue/logical_block_size")]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u32>().ok());
        Ok(BaseProbe { size, block_size })
    } else if meta.file_type().is_file() {
        Ok(BaseProbe { size: meta.len(), block_size: None })
    } else {
        Err(Fail::error(format!("{}: not a regular file or block device", path.display())))
    }
}

/// "12.0 MiB (12582912 bytes)"-style sizes.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub fn pos(p: &LogPos) -> String {
    format!("segment {} offset {:#x} seq {}", p.seg, p.off, p.seq)
}

/// A log position in JSON reports.
#[derive(serde::Serialize)]
pub struct PosJson {
    seg: u32,
    off: u32,
    seq: u64,
}

impl From<LogPos> for PosJson {
    fn from(p: LogPos) -> PosJson {
        PosJson { seg: p.seg, off: p.off, seq: p.seq }
    }
}

/// A report as pretty-printed JSON, fields in declaration order.
pub fn to_json(report: &impl serde::Serialize) -> String {
    // Serializing plain structs of numbers, strings and options cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
