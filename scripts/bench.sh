#!/usr/bin/env bash
# The main job: build pcache, run the engine benchmark on a DRAM-emulated
# pmem file (/dev/shm, PMEM_IS_PMEM_FORCE=1) over a base file, and where SPDK
# is installed, bdevperf through the SPDK module (scripts/bdevperf-bench.sh).
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

# Where SPDK is installed, the module is measured too: bdevperf against
# malloc, raw pmem, passthru and pcache, side by side.
source scripts/find-spdk.sh
d=$(find_spdk || true)
if [ -n "$d" ] && [ -x "$d/bin/bdevperf" ]; then
  echo
  echo "=== SPDK: bdevperf through the pcache module ($d)"
  SPDK_DIR=$d scripts/bdevperf-bench.sh
  exit
fi
echo
echo "SPDK with bdevperf not installed (looked at $SPDK_LOOKED): bdevperf benchmark skipped"
