// Links libpmem (PMDK), which the engine's pmem mapping uses through FFI.
// Debian: `apt-get install libpmem-dev`.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let from_pkg_config =
        Command::new("pkg-config").args(["--libs-only-L", "libpmem"]).output().ok().filter(|o| o.status.success());
    match from_pkg_config {
        Some(out) => {
            for flag in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Some(dir) = flag.strip_prefix("-L") {
                    println!("cargo:rustc-link-search=native={dir}");
                }
            }
        }
        None => {
            if !std::path::Path::new("/usr/include/libpmem.h").exists() {
                println!(
                    "cargo:warning=libpmem not found by pkg-config nor in /usr/include; \
                     install it with `apt-get install libpmem-dev` (scripts/setup-debian.sh does)"
                );
            }
        }
    }
    println!("cargo:rustc-link-lib=pmem");
}
