// Finds an installed SPDK: $SPDK_DIR, then pkg-config (spdk_bdev), then /opt/spdk.
// Without one, the build stops with a message saying where it looked.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SPDK_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    let mut looked = Vec::new();
    let root = find(&mut looked).unwrap_or_else(|| {
        panic!(
            "SPDK not found. Looked in: {}.\n\
             Install SPDK (v26.05) and point the build at it with SPDK_DIR=/path/to/prefix \
             (the directory holding include/spdk and lib), or make `pkg-config spdk_bdev` work \
             (PKG_CONFIG_PATH=<prefix>/lib/pkgconfig), or install it to /opt/spdk.",
            looked.join(", ")
        )
    });
    println!("cargo:rustc-link-search=native={}", root.join("lib").display());
    // The module is loaded into an SPDK application that already maps these
    // libraries; linking them records the dependency and resolves symbols.
    for lib in LIBS {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    println!("cargo:root={}", root.display());
    println!("cargo:rerun-if-changed=wrapper.h");

    let include = root.join("include");
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_function("spdk_.*")
        .allowlist_type("spdk_.*")
        .allowlist_var("SPDK_.*")
        // Tracepoints: the trace file (whose mask says what is enabled) and
        // the recorder behind the spdk_trace_record macro.
        .allowlist_var("g_trace_file")
        .allowlist_function("_spdk_trace_record")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        // Packed structs that hold aligned unions do not translate to Rust;
        // the module never looks inside these.
        .opaque_type("spdk_nvme_ctrlr_data")
        .opaque_type("spdk_bdev_ext_io_opts")
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .unwrap_or_else(|e| {
            panic!(
                "bindgen failed on the SPDK headers in {}: {e}\n\
                 bindgen needs libclang (Debian: apt-get install libclang-dev).",
                include.display()
            )
        });
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    bindings.write_to_file(out.join("bindings.rs")).expect("write bindings.rs");
}

/// SPDK libraries the module calls into.
const LIBS: &[&str] = &[
    "spdk_bdev",
    "spdk_thread",
    "spdk_trace",
    "spdk_json",
    "spdk_jsonrpc",
    "spdk_rpc",
    "spdk_log",
    "spdk_util",
    "spdk_env_dpdk",
];

fn has_headers(p: &Path) -> bool {
    p.join("include/spdk/bdev_module.h").exists()
}

fn find(looked: &mut Vec<String>) -> Option<PathBuf> {
    if let Ok(d) = std::env::var("SPDK_DIR") {
        let p = PathBuf::from(&d);
        looked.push(format!("SPDK_DIR={d}"));
        if has_headers(&p) {
            return Some(p);
        }
    } else {
        looked.push("SPDK_DIR (unset)".into());
    }
    looked.push("pkg-config spdk_bdev".into());
    if let Ok(out) = Command::new("pkg-config").args(["--variable=prefix", "spdk_bdev"]).output() {
        if out.status.success() {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_headers(&p) {
                return Some(p);
            }
        }
    }
    let p = PathBuf::from("/opt/spdk");
    looked.push("/opt/spdk".into());
    has_headers(&p).then_some(p)
}
