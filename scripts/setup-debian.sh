#!/usr/bin/env bash
# Installs what building pcache needs on Debian bookworm (idempotent).
# The Rust toolchain is expected to be present (rustup).
set -euo pipefail
need=()
[ -f /usr/include/libpmem.h ] || need+=(libpmem-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v cc >/dev/null || need+=(gcc)
# Where SPDK is installed, the module is built too: bindgen needs libclang.
source "$(dirname "$0")/find-spdk.sh"
if find_spdk >/dev/null; then
  ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need+=(libclang-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust with rustup first" >&2; exit 1; }
