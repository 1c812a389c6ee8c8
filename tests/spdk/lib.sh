# Shared helpers for the SPDK integration suites (sourced, not run).
# Each suite starts the stock SPDK apps with the pcache module preloaded,
# drives them over JSON-RPC, and counts checks with pass/fail.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$ROOT/scripts/find-spdk.sh"
SPDK_DIR=$(find_spdk) || SPDK_DIR=${SPDK_DIR:-/opt/spdk}
MODULE=$ROOT/target/release/libpcache.so
# Core locks are off so a suite never fails because another SPDK app holds a
# core; tracing is off so that apps the suites kill leave no trace buffer in
# /dev/shm.
APP_ARGS=(--no-huge -s 2048 -u --disable-cpumask-locks --num-trace-entries 0)
export PMEM_IS_PMEM_FORCE=1

# SPDK's rpc.py: the installed spdk-rpc (python package under the prefix) or
# scripts/rpc.py of a source tree.
PYSITE=$(ls -d "$SPDK_DIR"/lib/python3*/site-packages 2>/dev/null | head -1)
export PYTHONPATH=$ROOT/rpc:$ROOT/tests/spdk${PYSITE:+:$PYSITE}${PYTHONPATH:+:$PYTHONPATH}
if [ -x "$SPDK_DIR/bin/spdk-rpc" ]; then RPC_PY=("$SPDK_DIR/bin/spdk-rpc")
elif [ -f "$SPDK_DIR/scripts/rpc.py" ]; then RPC_PY=(python3 "$SPDK_DIR/scripts/rpc.py")
else RPC_PY=(); fi

PASSED=0
FAILED=0
PIDS=()
WORK=$(mktemp -d /var/tmp/pcache-spdk-test.XXXXXX)
SHM=/dev/shm/pcache-test-$$

pass() { PASSED=$((PASSED + 1)); echo "  ok: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "  FAIL: $*"; }
check() { # description, command...
  local what=$1; shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  [ -n "${KEEP_WORK:-}" ] && echo "kept $WORK" || rm -rf "$WORK" "$SHM"*
}
trap cleanup EXIT

# Prints the totals line scripts/test.sh counts, and the suite's exit status.
finish() {
  echo "test result: $([ "$FAILED" -eq 0 ] && echo ok || echo FAILED). $PASSED passed; $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

# start_app NAME SOCK LOG APP [ARGS...]: runs an SPDK app in the background
# with the module preloaded and waits until its RPC server answers.
start_app() {
  local name=$1 sock=$2 log=$3; shift 3
  env LD_PRELOAD="$MODULE" "$@" -r "$sock" >"$log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  eval "PID_$name=$pid"
  for _ in $(seq 1 200); do
    if ! kill -0 "$pid" 2>/dev/null; then echo "  $name exited early:"; tail -20 "$log"; return 1; fi
    if [ -S "$sock" ] && jsonrpc "$sock" rpc_get_methods >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "  $name did not start:"; tail -20 "$log"; return 1
}

# stop_app NAME SOCK: asks the app to exit, then waits (kill -9 after 30 s).
stop_app() {
  local name=$1 sock=$2 pid
  pid=$(eval echo "\${PID_$name:-}")
  [ -n "$pid" ] || return 0
  jsonrpc "$sock" spdk_kill_instance '{"sig_name":"SIGTERM"}' >/dev/null 2>&1
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  local rc=$?
  eval "PID_$name="
  return $rc
}

# jsonrpc SOCK METHOD [PARAMS-JSON]: one raw JSON-RPC call; prints the result
# as JSON, or "ERROR <code>: <message>" and fails.
jsonrpc() { python3 "$ROOT/tests/spdk/jsonrpc.py" "$@"; }
# jr: the same, given up after 10 s.
jr() { timeout 10 python3 "$ROOT/tests/spdk/jsonrpc.py" "$@"; }
# until_ok SECONDS CMD...: runs CMD until it succeeds, for at most SECONDS.
until_ok() {
  local end=$((SECONDS + $1)); shift
  while [ $SECONDS -le $end ]; do "$@" && return 0; sleep 0.1; done
  return 1
}
# no_crash LOG: the app's log shows no panic, internal error or crash.
no_crash() { ! grep -Eq 'panicked|internal error|Segmentation|Aborted|assert' "$1"; }
# bdevperf_ok LOG: bdevperf's Total lines show I/O and no failed I/O.
bdevperf_ok() {
  tr '\r' '\n' <"$1" | awk '/^ *Total *:/ { found=1; if ($3 + 0 <= 0 || $5 + 0 != 0) bad=1 }
       END { exit !(found && !bad) }'
}
# totals LOG: bdevperf's Total line, for messages.
totals() { tr '\r' '\n' <"$1" | awk '/^ *Total *:/ {print $3 " IOPS, " $5 " failed/s"}'; }

# quiet CMD...: CMD with its output (not its errors) thrown away.
quiet() { "$@" >/dev/null; }

# rpc SOCK ARGS...: rpc.py with the pcache plugin.
rpc() { local sock=$1; shift; "${RPC_PY[@]}" -s "$sock" -t 600 --plugin pcache_rpc "$@"; }

# The suites below talk to the app whose socket is in $sock:
# spdk ARGS...: SPDK's rpc.py against it.
spdk() { "${RPC_PY[@]}" -s "$sock" "$@"; }
# flushed: bdev_pcache_flush of PC0 succeeds (every dirty byte on the base).
flushed() { jr "$sock" bdev_pcache_flush '{"name":"PC0"}' >/dev/null; }
# q METHOD PARAMS PYEXPR: one raw call; prints PYEXPR evaluated on its result
# `r` (nothing if the call fails). One process per query keeps suites fast.
q() {
  python3 - "$sock" "$@" 2>/dev/null <<'PY'
import json, sys, jsonrpc
resp = jsonrpc.call(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if sys.argv[3] else None, timeout=10)
if "result" in resp:
    r = resp["result"]
    print(eval(sys.argv[4]))
PY
}

# pstat NAME KEY: one field of bdev_pcache_get_stats for pcache NAME (as
# Python prints it; nothing if the call fails).
pstat() { q bdev_pcache_get_stats "{\"name\":\"$1\"}" "r[0]['$2']"; }

# A stack config: pmem bdev (created at $2 bytes), AIO base of $3 bytes, pcache PC0.
stack_config() { # out pmem_size base_size [extra pcache params json]
  local out=$1 psize=$2 bsize=$3 extra=${4:-}
  truncate -s "$bsize" "$WORK/base.img"
  cat >"$out" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"$SHM.pmem","size":$psize}},
 {"method":"bdev_aio_create","params":{"name":"Base0","filename":"$WORK/base.img","block_size":4096}},
 {"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Base0"$extra}}
]}]}
JSON
}

# fio_plugin: prints the path of SPDK's fio bdev plugin ($SPDK_FIO_PLUGIN,
# else under $SPDK_DIR) when fio and the plugin are both there; fails if not.
fio_plugin() {
  command -v fio >/dev/null 2>&1 || return 1
  local p
  for p in ${SPDK_FIO_PLUGIN:-} "$SPDK_DIR/lib/fio/spdk_bdev" "$SPDK_DIR/build/fio/spdk_bdev" "$SPDK_DIR/fio/spdk_bdev"; do
    [ -f "$p" ] && { echo "$p"; return 0; }
  done
  return 1
}
