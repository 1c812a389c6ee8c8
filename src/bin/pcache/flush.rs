//! `pcache flush PMEM BASE`: the way out when the target cannot be started.
//! Replays the log, writes every dirty byte back to the base in log order and
//! leaves the cache clean (dirty_tail persisted at the key head).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pcache::base::{Done, ReadDone};
use pcache::pmem::Media;
use pcache::{BaseDevice, BaseIdentity, Cache, Config, FileBase, Opened, WbProgress};

use crate::dev::{human, open_ro, open_rw, probe_base};
use crate::Fail;

/// The options of `pcache flush` (their help is in main.rs, on the command).
#[derive(clap::Args)]
#[command(after_help = "Progress goes to stderr: a bar when stderr is a terminal, plain lines otherwise.\n\
                        Exit status: 0 the cache is clean, 1 error, 2 usage.")]
pub struct Args {
    /// the cache device (a pmem file or device)
    #[arg(value_name = "PMEM")]
    pmem: PathBuf,
    /// the base device or file the cache was formatted for
    #[arg(value_name = "BASE")]
    base: PathBuf,
    /// also require the recorded base id to be ID
    #[arg(long, value_name = "ID")]
    base_id: Option<String>,
    /// the block size of BASE (regular files)
    #[arg(long, value_name = "N", value_parser = crate::parse_size)]
    base_block_size: Option<u64>,
    /// write even if BASE does not match
    #[arg(long)]
    force: bool,
    /// no progress output on stderr
    #[arg(long)]
    quiet: bool,
}

pub fn main(a: Args) -> Result<i32, Fail> {
    let block_arg = a.base_block_size;
    let (pmem, base_path) = (a.pmem.as_path(), a.base.as_path());

    // Identity first, from a read-only look: nothing is touched on a refusal.
    let sb = Cache::read_superblock(&*open_ro(pmem)?).map_err(|e| Fail::error(format!("{}: {e}", pmem.display())))?;
    let probe = probe_base(base_path)?;
    // What is not known of BASE is taken as recorded: a regular file's block
    // size unless --base-block-size gives it, the id unless --base-id does.
    let block = probe.block_size.or(block_arg.map(|b| b as u32)).unwrap_or(sb.base_block_size);
    let id = a.base_id.clone().unwrap_or_else(|| sb.base_id.clone());
    let diffs = BaseIdentity::named(probe.size, block, id).differences(&sb);
    if !diffs.is_empty() {
        if !a.force {
            return Err(Fail::error(format!(
                "flush: {} does not match the cache on {}: {}; use --force to write to it anyway",
                base_path.display(),
                pmem.display(),
                diffs.join("; ")
            )));
        }
        eprintln!("pcache: flush: warning: writing despite a mismatch (--force): {}", diffs.join("; "));
    }

    let media = open_rw(pmem)?;
    let mut cfg = Config::new(BaseIdentity::recorded(&sb));
    cfg.data_crc = sb.data_crc();
    cfg.read_cache = false;
    let fail = |e: pcache::Error| Fail::error(format!("flush: {}: {e}", pmem.display()));
    let (cache, opened) = Cache::open(media.clone() as Arc<dyn Media>, &cfg).map_err(fail)?;
    let Opened::Loaded(rep) = opened else {
        return Err(Fail::error(format!("flush: {}: holds no cache", pmem.display())));
    };
    let st = cache.stats();
    let total = rep.dirty_bytes;
    let ksets = st.key_head.seq - st.dirty_tail.seq;
    let file = FileBase::open(base_path, sb.base_block_size).map_err(|e| Fail::error(format!("flush: {e}")))?;
    let base = Recording { inner: file, first_error: Arc::new(Mutex::new(None)) };

    let mut progress = Progress::new(total, ksets, a.quiet);
    progress.start(base_path);
    let mut busy = 0u64;
    loop {
        let step = cache.writeback_step(&base).map_err(|e| {
            progress.abort();
            Fail::error(format!(
                "flush: {e}; {} of {} dirty bytes were written back before it",
                total - cache.stats().dirty_bytes,
                total
            ))
        })?;
        match step {
            WbProgress::Idle => break,
            WbProgress::Advanced => {
                busy = 0;
                progress.update(total - cache.stats().dirty_bytes, cache.stats().writeback_ksets);
            }
            WbProgress::Busy => {
                busy += 1;
                let err = base.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(e) = err {
                    progress.abort();
                    return Err(Fail::error(format!("flush: {}: {e}", base_path.display())));
                }
                if busy > 10_000_000 {
                    progress.abort();
                    return Err(Fail::error("flush: writeback makes no progress".to_string()));
                }
            }
        }
    }
    progress.finish();
    if !cache.is_clean() {
        return Err(Fail::error(format!("flush: {}: dirty data remains after writeback", pmem.display())));
    }
    let written = cache.stats().writeback_bytes;
    cache.close().map_err(fail)?;
    if total == 0 && ksets == 0 {
        println!("{}: nothing to write back; the cache is clean", pmem.display());
    } else {
        println!(
            "{}: wrote {written} bytes ({}) from {ksets} kset(s) back to {}; the cache is clean",
            pmem.display(),
            human(written),
            base_path.display()
        );
    }
    Ok(0)
}

/// The base file, remembering the first I/O error (the engine retries a
/// failed kset; the tool stops and says why).
struct Recording {
    inner: FileBase,
    first_error: Arc<Mutex<Option<String>>>,
}

impl Recording {
    /// Wraps a completion so that an error is remembered before it is passed on.
    fn noting(&self, done: Done) -> Done {
        let slot = self.first_error.clone();
        Box::new(move |r: pcache::Result<()>| {
            if let Err(e) = &r {
                slot.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| e.to_string());
            }
            done(r)
        })
    }
}

impl BaseDevice for Recording {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn write(&self, offset: u64, data: Vec<u8>, done: Done) {
        self.inner.write(offset, data, self.noting(done));
    }
    fn flush(&self, done: Done) {
        self.inner.flush(self.noting(done));
    }
    fn read(&self, offset: u64, buf: Vec<u8>, done: ReadDone) {
        self.inner.read(offset, buf, done)
    }
}

enum Mode {
    Quiet,
    Bar,
    Lines,
}

struct Progress {
    total: u64,
    ksets: u64,
    mode: Mode,
    last_draw: Option<Instant>,
    last_tenth: u64,
    started: Instant,
}

impl Progress {
    fn new(total: u64, ksets: u64, quiet: bool) -> Self {
        let mode = if quiet || (total == 0 && ksets == 0) {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        };
        Progress { total, ksets, mode, last_draw: None, last_tenth: 0, started: Instant::now() }
    }

    fn start(&mut self, base: &Path) {
        self.started = Instant::now();
        if !matches!(self.mode, Mode::Quiet) {
            eprintln!(
                "flush: writing back {} bytes ({}) in {} kset(s) to {}",
                self.total,
                human(self.total),
                self.ksets,
                base.display()
            );
        }
    }

    fn percent(&self, done: u64, ksets_done: u64) -> u64 {
        // By bytes; by ksets when the dirty ksets hold only zero keys; done
        // when there was nothing to write back.
        (done * 100)
            .checked_div(self.total)
            .or_else(|| (ksets_done.min(self.ksets) * 100).checked_div(self.ksets))
            .unwrap_or(100)
    }

    /// The drain rate so far and, while bytes are left, the time left at it:
    /// ", 120 MiB/s, about 4 s left".
    fn rate(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        if secs <= 0.0 || done == 0 {
            return String::new();
        }
        let rate = done as f64 / secs;
        let left = self.total.saturating_sub(done);
        let mut s = format!(", {}/s", human(rate as u64));
        if left > 0 {
            s += &format!(", about {:.0} s left", (left as f64 / rate).ceil());
        }
        s
    }

    fn update(&mut self, done: u64, ksets_done: u64) {
        let pct = self.percent(done, ksets_done);
        match self.mode {
            Mode::Quiet => {}
            Mode::Lines => {
                let tenth = pct / 10;
                if tenth > self.last_tenth && pct < 100 {
                    self.last_tenth = tenth;
                    eprintln!(
                        "flush: {:>3}% ({} of {}{})",
                        tenth * 10,
                        human(done),
                        human(self.total),
                        self.rate(done)
                    );
                }
            }
            Mode::Bar => {
                if self.last_draw.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
                    return;
                }
                self.last_draw = Some(Instant::now());
                let width = 40;
                let fill = (pct as usize * width / 100).min(width);
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\rflush [{}{}] {pct:>3}%  {} of {}{}   ",
                    "#".repeat(fill),
                    "-".repeat(width - fill),
                    human(done),
                    human(self.total),
                    self.rate(done)
                );
                let _ = err.flush();
            }
        }
    }

    fn finish(&mut self) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Lines => {
                eprintln!("flush: 100% ({} of {}{})", human(self.total), human(self.total), self.rate(self.total))
            }
            Mode::Bar => {
                self.last_draw = None;
                self.update(self.total, self.ksets);
                eprintln!();
            }
        }
    }

    fn abort(&mut self) {
        if matches!(self.mode, Mode::Bar) && self.last_draw.is_some() {
            eprintln!();
        }
    }
}
