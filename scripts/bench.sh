#!/usr/bin/env bash
# The main job: build pcache and run the engine benchmark on a DRAM-emulated
# pmem file (/dev/shm, PMEM_IS_PMEM_FORCE=1) over a base file.
# Extra arguments go to every `pcache bench` run (e.g. -t 10 -j 2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
cargo build --release --quiet
export PMEM_IS_PMEM_FORCE=1
for w in randwrite randread; do
  for j in 1 2; do
    echo
    target/release/pcache bench -w "$w" -j "$j" "$@"
  done
done
echo
target/release/pcache bench -w verify -j 2 -t 3 "$@"
