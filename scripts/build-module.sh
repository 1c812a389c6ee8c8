#!/usr/bin/env bash
# Builds the SPDK module, target/release/libpcache.so: the pcache library as
# a cdylib with the `spdk` feature. Needs an installed SPDK (SPDK_DIR, else
# pkg-config spdk_bdev, else /opt/spdk) and libclang (bindgen). Extra
# arguments go to cargo (e.g. --quiet).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo rustc --release --lib --features spdk --crate-type cdylib "$@"
