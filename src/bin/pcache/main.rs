//! The `pcache` command: tools that work on a cache device without SPDK.

mod alloc_count;
mod args;
mod bench;

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

const USAGE: &str = "usage: pcache <command> [options]

commands:
  bench    drive the engine like bdevperf drives a bdev (see `pcache bench --help`)";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let code = match argv.first().map(String::as_str) {
        Some("bench") => bench::main(&argv[1..]),
        Some("-h") | Some("--help") | Some("help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    if let Err(e) = code {
        eprintln!("pcache: {e}");
        std::process::exit(2);
    }
}
