#!/usr/bin/env bash
# Mutation testing of the engine's crash-critical files with cargo-mutants:
# each mutant (a small deliberate break: a changed operator, a function body
# replaced by a default value, ...) is built and the engine's tests run
# against it; a mutant the tests do not fail "survives". doc/testing.md
# records the last score and why each survivor is harmless.
#
#   scripts/mutants.sh [FILE...]     default: the crash-critical files below
#
# MUTANTS_TESTS="crash corruption ..." runs only those test targets (faster;
# the default is every engine test).
#
# MUTANTS_JOBS=N tests N mutants at once (default 1).
#
# Builds use the `mutants` profile (Cargo.toml: release code, rebuilt
# incrementally), so a mutant's rebuild takes a few seconds; the test run is
# the cost. The power-failure tests honour PCACHE_CRASH_SEEDS,
# PCACHE_CRASH_WORKER_SEEDS and PCACHE_TINY_SECS: a quick pass with fewer seeds,
# then the survivors again (cargo mutants --re NAME) with the defaults, is how
# doc/testing.md's runs were made. Not part of CI.
# Needs cargo-mutants (cargo install cargo-mutants --locked).
# Results: mutants.out/ (caught.txt, missed.txt, timeout.txt, unviable.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo mutants --version >/dev/null 2>&1; then
  echo "cargo-mutants is not installed: cargo install cargo-mutants --locked" >&2
  exit 2
fi
files=("$@")
[[ ${#files[@]} -eq 0 ]] && files=(src/writeback.rs src/replay.rs src/keylog.rs src/tails.rs src/replica.rs
  src/write.rs src/read.rs src/journal.rs src/heads.rs src/gc.rs src/segment.rs)
args=()
for f in "${files[@]}"; do args+=(--file "$f"); done
start=$SECONDS
# Release code is what the tests are tuned for (the crash tests run
# thousands of power failures).
tests=()
for t in ${MUTANTS_TESTS:-}; do tests+=(--test "$t"); done
cargo mutants "${args[@]}" --jobs "${MUTANTS_JOBS:-1}" --timeout-multiplier 3 --profile mutants -- "${tests[@]}" || true
out=mutants.out
count() { if [[ -f $out/$1.txt ]]; then grep -c . "$out/$1.txt" || true; else echo 0; fi; }
caught=$(count caught) missed=$(count missed) timeout=$(count timeout) unviable=$(count unviable)
viable=$((caught + missed + timeout))
echo
echo "files: ${files[*]}"
echo "mutants: $caught caught, $missed missed, $timeout timed out (counted as caught), $unviable unviable"
if (( viable > 0 )); then
  echo "score: $(( 100 * (caught + timeout) / viable ))% of viable mutants caught, in $(( (SECONDS - start) / 60 )) min"
fi
[[ -s $out/missed.txt ]] && { echo "survivors:"; sed 's/^/  /' "$out/missed.txt"; }
exit 0
