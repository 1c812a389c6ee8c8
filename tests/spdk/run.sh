#!/usr/bin/env bash
# Runs the SPDK integration suites against the installed SPDK (found by
# scripts/find-spdk.sh: SPDK_DIR, pkg-config, /opt/spdk) with the pcache module preloaded into its stock apps. Each suite
# prints a "test result:" line; this exits non-zero if any suite failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/find-spdk.sh
SPDK_DIR=$(find_spdk) || { echo "SPDK not found (looked at $SPDK_LOOKED)" >&2; exit 1; }
export SPDK_DIR

echo "building the SPDK module (scripts/build-module.sh)"
scripts/build-module.sh || exit 1

rc=0
results=()
for s in tests/spdk/suite-*.sh; do
  echo "--- $(basename "$s")"
  out=$(mktemp)
  bash "$s" 2>&1 | tee "$out"
  case ${PIPESTATUS[0]} in
    0) results+=("ok:      $(basename "$s")") ;;
    77) results+=("skipped: $(basename "$s"): $(grep -m1 '^skipped:' "$out" | sed 's/^skipped: //')") ;;
    *) results+=("FAILED:  $(basename "$s")"); rc=1 ;;
  esac
  rm -f "$out"
done
echo "--- SPDK suites"
printf '%s\n' "${results[@]}"
exit $rc
