#!/usr/bin/env bash
# Runs every test suite this machine can run, and says which ran and which
# were skipped and why. CI (.ci/run) calls exactly this.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh || exit 1

ran=()
skipped=()
failed=()

passed_tests=0
failed_tests=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

suite() { # name, command...
  local name=$1; shift
  echo "=== suite: $name"
  if "$@" 2>&1 | tee "$log"; then ran+=("$name"); else failed+=("$name"); fi
  # Count the tests cargo reports.
  local p f
  p=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
  f=$(grep -Eo '^test result: .*; ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
  passed_tests=$((passed_tests + p))
  failed_tests=$((failed_tests + f))
}

# Formatting (.rustfmt.toml), where rustfmt is installed.
if cargo fmt --version >/dev/null 2>&1; then
  suite "format (cargo fmt --check)" cargo fmt --all --check
else
  skipped+=("format: rustfmt is not installed (rustup component add rustfmt)")
fi

# Lints: every warning is an error. The SPDK module is linted below, with SPDK.
if cargo clippy --version >/dev/null 2>&1; then
  suite "lint (cargo clippy -D warnings)" cargo clippy --all-targets -- -D warnings
  # The library and tool alone, without the tests' `internals` feature: the
  # engine's inner modules are private, so code nothing uses is an error.
  suite "dead code (cargo clippy --lib --bins -D warnings)" cargo clippy --lib --bins -- -D warnings
  have_clippy=1
else
  skipped+=("lint: clippy is not installed (rustup component add clippy)")
  have_clippy=0
fi

# Engine: unit tests, model-based, power-failure (>= 10,000 crash points),
# writeback prefix, corruption/crafted images, tiny cache.
suite "engine (cargo test --release)" cargo test --release --workspace --exclude spdk-sys

# The fuzz target for image loading must at least build and run its corpus
# replay where cargo-fuzz is available; otherwise its harness runs as a test above.
if command -v cargo-fuzz >/dev/null 2>&1; then
  suite "fuzz smoke (load_image, 20 s)" bash -c 'cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run load_image -- -max_total_time=20'
else
  skipped+=("fuzz smoke: cargo-fuzz is not installed (cargo install cargo-fuzz)")
fi

# SPDK integration suites need an installed SPDK and the SPDK module.
source scripts/find-spdk.sh
spdk_dir=$(find_spdk || true)
if [ -z "$spdk_dir" ]; then
  skipped+=("SPDK integration: SPDK not installed (looked at $SPDK_LOOKED)")
elif [ ! -x tests/spdk/run.sh ]; then
  skipped+=("SPDK integration: SPDK found at $spdk_dir, but this tree has no SPDK module suites yet")
else
  if [ "$have_clippy" = 1 ]; then
    suite "lint of the SPDK module (cargo clippy --features spdk -D warnings)" \
      env SPDK_DIR="$spdk_dir" cargo clippy --features spdk --lib -- -D warnings
  fi
  suite "SPDK integration ($spdk_dir)" env SPDK_DIR="$spdk_dir" tests/spdk/run.sh
  # SPDK suites that could not run here (a missing tool) say why.
  while read -r l; do skipped+=("SPDK ${l#skipped: }"); done < <(grep '^skipped: suite-' "$log")
fi

echo
echo "=== summary"
for s in "${ran[@]}"; do echo "ran:     $s"; done
for s in "${skipped[@]}"; do echo "skipped: $s"; done
for s in "${failed[@]}"; do echo "FAILED:  $s"; done
echo "tests: $passed_tests passed, $failed_tests failed, ${#skipped[@]} skipped"
[ ${#failed[@]} -eq 0 ]
