//! The `pcache` command: tools that work on a cache device without SPDK.
//!
//! Exit status: 0 success; 1 an error (one line on stderr); 2 a usage error
//! (with usage text). `pcache check` uses 1 for "problems found, the cache
//! loads" and 2 for "the cache cannot be loaded". 3 is an internal error.

mod alloc_count;
mod args;
mod bench;
mod check;
mod dev;
mod flush;
mod format;
mod inspect;
mod json;

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

const USAGE: &str = "usage: pcache <command> [options]

commands:
  inspect PMEM        show the superblock, options, base identity, log tails and dirty bytes
  check PMEM          validate every structure; exit 0 clean, 1 problems, 2 unusable
  flush PMEM BASE     write every dirty byte back to the base and mark the cache clean
  format PMEM         format a cache device (refuses an existing pcache without --force)
  bench               drive the engine like bdevperf drives a bdev

`pcache <command> --help` lists a command's options. inspect and check never
write to PMEM. Set PMEM_IS_PMEM_FORCE=1 when PMEM is a file on /dev/shm.";

/// Why a command did not succeed.
pub struct Fail {
    pub code: i32,
    pub msg: String,
    /// Printed after the message for usage errors.
    pub usage: Option<&'static str>,
}

impl Fail {
    pub fn error(msg: impl Into<String>) -> Fail {
        Fail { code: 1, msg: msg.into(), usage: None }
    }
    pub fn usage(msg: impl Into<String>, usage: &'static str) -> Fail {
        Fail { code: 2, msg: msg.into(), usage: Some(usage) }
    }
    pub fn with_code(mut self, code: i32) -> Fail {
        self.code = code;
        self
    }
}

/// Parses a tool command's arguments (`--help`/`-h` are always accepted).
/// None when help was asked for: it has been printed.
pub fn parse_cmd(
    raw: &[String],
    takes_value: &[&str],
    flags: &[&str],
    help: &'static str,
) -> Result<Option<args::Args>, Fail> {
    let flags: Vec<&str> = flags.iter().copied().chain(["help", "h"]).collect();
    let a = args::Args::parse(raw, takes_value, &flags).map_err(|e| Fail::usage(e, help))?;
    if a.flag("help") || a.flag("h") {
        println!("{help}");
        return Ok(None);
    }
    Ok(Some(a))
}

/// The one device a command takes.
pub fn one_device<'a>(a: &'a args::Args, cmd: &str, help: &'static str) -> Result<&'a std::path::Path, Fail> {
    match a.positional.as_slice() {
        [path] => Ok(std::path::Path::new(path)),
        other => Err(Fail::usage(format!("{cmd} takes one device, got {}", other.len()), help)),
    }
}

fn run(argv: &[String]) -> Result<i32, Fail> {
    match argv.first().map(String::as_str) {
        Some("inspect") => inspect::main(&argv[1..]),
        Some("check") => check::main(&argv[1..]),
        Some("flush") => flush::main(&argv[1..]),
        Some("format") => format::main(&argv[1..]),
        Some("bench") => bench::main(&argv[1..]).map(|()| 0).map_err(|e| Fail { code: 2, msg: e, usage: None }),
        Some("-h") | Some("--help") | Some("help") => {
            println!("{USAGE}");
            Ok(0)
        }
        Some(other) => Err(Fail::usage(format!("unknown command {other:?}"), USAGE)),
        None => Err(Fail::usage("no command given", USAGE)),
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
        Ok(Err(f)) => {
            eprintln!("pcache: {}", f.msg);
            if let Some(u) = f.usage {
                eprintln!("{u}");
            }
            f.code
        }
        Err(_) => 3,
    };
    std::process::exit(code);
}
