//! The `pcache` command: tools that work on a cache device without SPDK.
//!
//! Exit status: 0 success; 1 an error (one line on stderr); 2 a usage error
//! (with usage text). `pcache check` uses 1 for "problems found, the cache
//! loads" and 2 for "the cache cannot be loaded". 3 is an internal error.

mod alloc_count;
mod bench;
mod check;
mod dev;
mod flush;
mod format;
mod inspect;

use clap::{CommandFactory, Parser, Subcommand};

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

#[derive(Parser)]
#[command(
    name = "pcache",
    about = "Tools that work on a pcache cache device without SPDK.",
    after_help = "`pcache <command> --help` lists a command's options. inspect and check never\n\
                  write to PMEM. Set PMEM_IS_PMEM_FORCE=1 when PMEM is a file on /dev/shm."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// show the superblock, options, base identity, log tails and dirty bytes
    ///
    /// Shows the superblock, the options (cache_mode, data_crc, gc_percent,
    /// segment size), the base identity (size, block size, id), segments total and
    /// used, key_head, dirty_tail, key_tail, the key-set count and the dirty
    /// bytes. Never writes to PMEM.
    Inspect(inspect::Args),
    /// validate every structure; exit 0 clean, 1 problems, 2 unusable
    ///
    /// Validates the superblock, both replicas of every record (and which one is
    /// used), CRCs, the key-set chain, generations, bounds of every key and, when
    /// the cache keeps data CRCs, the data of every live key. Prints one line per
    /// problem with its location (byte offset, segment, kset seq). Never writes to
    /// PMEM.
    Check(check::Args),
    /// write every dirty byte back to the base and mark the cache clean
    ///
    /// Replays the cache on PMEM, writes every dirty byte back to BASE in log
    /// order and marks the cache clean. BASE must match the identity recorded at
    /// format: its size, and its block size (read from the system for a block
    /// device; for a regular file, given with --base-block-size if you want it
    /// checked).
    Flush(flush::Args),
    /// format a cache device (refuses an existing pcache without --force)
    ///
    /// Formats PMEM as a cache for a base device. The base identity (size, block
    /// size, id) is recorded and checked whenever the cache is opened.
    Format(format::Args),
    /// drive the engine like bdevperf drives a bdev
    ///
    /// Drives the cache engine over a pmem file and a base file like bdevperf
    /// drives a bdev, and measures in the same run a plain copy into the same
    /// pmem mapping.
    Bench(bench::Args),
}

/// Why a command did not succeed.
pub struct Fail {
    pub code: i32,
    pub msg: String,
    /// For usage errors: the command whose usage line follows the message.
    pub usage_of: Option<&'static str>,
}

impl Fail {
    pub fn error(msg: impl Into<String>) -> Fail {
        Fail { code: 1, msg: msg.into(), usage_of: None }
    }
    pub fn usage(msg: impl Into<String>, command: &'static str) -> Fail {
        Fail { code: 2, msg: msg.into(), usage_of: Some(command) }
    }
    pub fn with_code(mut self, code: i32) -> Fail {
        self.code = code;
        self
    }
}

/// `usage: pcache <command> ...` and where the options are listed.
fn usage_text(command: Option<&str>) -> String {
    let mut cli = Cli::command();
    let usage = match command.and_then(|c| cli.find_subcommand_mut(c)) {
        Some(sub) => sub.clone().bin_name(format!("pcache {}", sub.get_name())).render_usage(),
        None => cli.render_usage(),
    };
    let usage = usage.to_string();
    let line = usage.trim().strip_prefix("Usage: ").unwrap_or(usage.trim());
    let more = command.map_or("pcache --help".to_string(), |c| format!("pcache {c} --help"));
    format!("usage: {line}\n`{more}` lists the options.")
}

/// A clap parse error as this command's usage errors look: one line after
/// "pcache: ", then the usage. Help and version requests print and succeed.
fn parse_error(e: clap::Error, argv: &[String]) -> Fail {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        print!("{e}");
        return Fail { code: 0, msg: String::new(), usage_of: None };
    }
    let command = argv
        .first()
        .and_then(|c| Cli::command().get_subcommands().find(|s| s.get_name() == c).map(|s| s.get_name().to_string()));
    let msg = match e.kind() {
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            "no command given".to_string()
        }
        // clap's message without its "error: " and its hints after the
        // first blank line, on one line.
        _ => {
            let rendered = e.render().to_string();
            let body: Vec<&str> = rendered.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            body.join(" ").trim_start_matches("error: ").to_string()
        }
    };
    let usage = usage_text(command.as_deref());
    Fail { code: 2, msg: format!("{msg}\n{usage}"), usage_of: None }
}

fn run(argv: &[String]) -> Result<i32, Fail> {
    let cli = Cli::try_parse_from(std::iter::once("pcache".to_string()).chain(argv.iter().cloned()))
        .map_err(|e| parse_error(e, argv))?;
    match cli.command {
        Command::Inspect(a) => inspect::main(a),
        Command::Check(a) => check::main(a),
        Command::Flush(a) => flush::main(a),
        Command::Format(a) => format::main(a),
        Command::Bench(a) => bench::main(a).map(|()| 0).map_err(|e| Fail { code: 2, msg: e, usage_of: None }),
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    // A last resort: a bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("pcache: internal error: {}{at}", msg.replace('\n', " "));
    }));
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let code = match std::panic::catch_unwind(|| run(&argv)) {
        Ok(Ok(code)) => code,
        Ok(Err(f)) if f.code == 0 => 0,
        Ok(Err(f)) => {
            eprintln!("pcache: {}", f.msg);
            if let Some(c) = f.usage_of {
                eprintln!("{}", usage_text(Some(c)));
            }
            f.code
        }
        Err(_) => 3,
    };
    std::process::exit(code);
}

/// Sizes on the command line: "4096", "4K", "16M", "2G".
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a number (suffixes K, M, G allowed)"))
}
