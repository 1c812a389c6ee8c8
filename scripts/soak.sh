#!/usr/bin/env bash
# Soak test of the SPDK module (not part of CI; tests/ does not call it).
# bdevperf -z runs a verify workload in rounds on a pcache with a small
# cache over an AIO base file, so writeback and GC never rest; around the
# I/O the script keeps changing the pcache: cache modes, set_options values,
# flushes, delete (with and without flush) and create again, and restarts of
# the app from its saved config with a data check across each restart. It
# records bdevperf's RSS and open fds and fails if they grow.
#
#   scripts/soak.sh [SECONDS, default 3600]
#
# One round: perform_tests (verify, io size and queue depth vary by round)
# for SOAK_ROUND_SECS while, every 2 s, one RPC changes or reads the pcache
# (the next cache mode, a random set_options value, a flush under I/O,
# get_stats). Between rounds, one of: an idle flush, after which the cache
# must be clean and the base file must hold the check region; every third
# round a bdev_pcache_delete (alternately with and without flush) and a
# create with random options; every SOAK_RESTART_SECS a restart: save_config,
# SIGTERM, spdk_dd reads the check region back (16 MiB, compared with what
# was written before) and writes a new pattern there, then a new bdevperf
# starts from the saved config and must show the same options.
#
# Layout: Base0 (AIO, $SOAK_VERIFY_MIB x 2, in /var/tmp), Pmem0 ($SOAK_PMEM_MIB
# on /dev/shm), PC0 over both, split in two: PC0p0 takes the verify
# workload, the first 16 MiB of PC0p1 are the check region, which only
# spdk_dd writes (while bdevperf is down: they share the pmem file).
#
# Fails (exit 1, FAIL in the summary) on: an RPC answered with an error or
# not answered in time, a round with failed or timed-out I/O or a miscompare,
# a check region that differs, an app that does not start or exit cleanly,
# and growth of RSS (VmRSS, and RssAnon on its own: VmRSS is mostly DPDK's
# --no-huge memory and the mapped pmem) or fds within one app's life (the
# last sample against the largest of the life's first 10 minutes, or first
# quarter of a short run) or from the first life to the last. samples.csv
# gets them every minute. Everything it started is stopped and removed on
# exit; the output directory (samples.csv, summary.txt, logs, saved config)
# stays.
#
# Environment: PCACHE_MODULE (default target/release/libpcache.so),
# SPDK_DIR (else pkg-config spdk_bdev, else /opt/spdk), SOAK_OUT (output
# directory, default a new /var/tmp/pcache-soak.XXXXXX), SOAK_ROUND_SECS (20),
# SOAK_RESTART_SECS (a third of the run), SOAK_SAMPLE_SECS (60, less for runs
# under 30 min), SOAK_PMEM_MIB (64), SOAK_VERIFY_MIB (192), SOAK_SEED,
# SOAK_CORE_MASK (0x1), SOAK_RSS_PCT (10) and SOAK_RSS_MIB (16): allowed RSS
# growth, SOAK_FD_SLACK (2): allowed fd growth.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
duration=${1:-3600}
[[ $duration =~ ^[0-9]+$ ]] && ((duration > 0)) || { echo "usage: $0 [SECONDS]" >&2; exit 2; }

source "$repo/scripts/find-spdk.sh"
spdk=$(find_spdk) || { echo "$0: SPDK not found (looked at $SPDK_LOOKED)" >&2; exit 1; }
BP=$spdk/bin/bdevperf
DD=$spdk/bin/spdk_dd
MODULE=${PCACHE_MODULE:-$repo/target/release/libpcache.so}
for f in "$BP" "$DD" "$MODULE"; do [[ -e $f ]] || { echo "$0: $f not found" >&2; exit 1; }; done

ROUND=${SOAK_ROUND_SECS:-20}
RESTART=${SOAK_RESTART_SECS:-$((duration / 3 > ROUND ? duration / 3 : ROUND))}
# Every minute; shorter runs sample more often so a life has several samples.
SAMPLE=${SOAK_SAMPLE_SECS:-$((duration >= 1800 ? 60 : (duration / 30 > 5 ? duration / 30 : 5)))}
# The window whose samples set each life's baseline: its first 10 minutes,
# or the first quarter of a short run.
WINDOW=$((duration / 4 < 600 ? duration / 4 : 600))
PMEM_MIB=${SOAK_PMEM_MIB:-64}
SPLIT_MIB=${SOAK_VERIFY_MIB:-192}
CHECK_MIB=16
RSS_PCT=${SOAK_RSS_PCT:-10}
RSS_MIB=${SOAK_RSS_MIB:-16}
FD_SLACK=${SOAK_FD_SLACK:-2}
SEED=${SOAK_SEED:-$((RANDOM * 32768 + RANDOM))}
RANDOM=$SEED
# Core locks off: someone else's SPDK app on core 0 must not stop the soak,
# and a killed app leaves no lock file. Tracing off: no trace buffer in /dev/shm.
APP_ARGS=(--no-huge -s 2048 -u -m "${SOAK_CORE_MASK:-0x1}" --disable-cpumask-locks --num-trace-entries 0)
export PMEM_IS_PMEM_FORCE=1

OUT=${SOAK_OUT:-$(mktemp -d /var/tmp/pcache-soak.XXXXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d /var/tmp/pcache-soak-work.XXXXXX)
SHM=/dev/shm/pcache-soak-$$.pmem
sock=$WORK/bp.sock
csv=$OUT/samples.csv
: >"$OUT/rpc.log"
rm -f "$OUT/failures" "$OUT"/dd-*.log "$OUT"/bdevperf-*.log "$OUT/soak.log"
echo "time,elapsed_s,round,life,pid,rss_kib,rss_anon_kib,rss_shmem_kib,fds,event" >"$csv"

t0=$SECONDS
round=0 life=0 app_pid= dd_pid= round_pid= started=() completed=0
restarts=0 recreates=0 region_checks=0 base_checks=0 flushes=0 mode_i=0 act=0
reading= next_sample=0 life_sampled=0

# Messages go to the script's own stdout (fd 3), also from functions whose
# output is captured or redirected.
exec 3>&1 4>&2
log() { printf '%s +%ss %s\n' "$(date +%T)" $((SECONDS - t0)) "$*" | tee -a "$OUT/soak.log" >&3; }
# fail MESSAGE: the soak has failed. Works in a subshell too: the reason
# goes to a file the summary reads, and the caller's set -e stops the run.
fail() { echo "$*" >>"$OUT/failures"; log "FAIL: $*"; exit 1; }

# One JSON-RPC call through tests/spdk/jsonrpc.py; prints the result as JSON,
# or EXPR evaluated on it (`r`).
cat >"$WORK/rpc.py" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[1])
import jsonrpc
sock, method, params, expr, timeout = sys.argv[2:7]
try:
    resp = jsonrpc.call(sock, method, json.loads(params) if params else None, timeout=float(timeout))
except Exception as e:
    print(f"no answer: {e!r}")
    sys.exit(2)
if "error" in resp:
    print("error %s: %s" % (resp["error"].get("code"), resp["error"].get("message")))
    sys.exit(1)
r = resp.get("result")
print(eval(expr) if expr else json.dumps(r, indent=1))
PY
# rpc TIMEOUT METHOD [PARAMS [EXPR]]: the call must be answered without an
# error within TIMEOUT seconds, or the soak fails. Answered calls are counted
# as lines of rpc.log (calls run in subshells too).
rpc() {
  local t=$1 m=$2 p=${3:-} e=${4:-} out rc=0
  out=$(timeout -k 5 $((t + 5)) python3 "$WORK/rpc.py" "$repo/tests/spdk" "$sock" "$m" "$p" "$e" "$t" 2>&1) || rc=$?
  if ((rc != 0)); then
    ((rc == 124 || rc == 137)) && out="no answer in ${t}s"
    fail "RPC $m $p: $out"
  fi
  echo "+$((SECONDS - t0)) $m $p" >>"$OUT/rpc.log"
  printf '%s\n' "$out"
}
# pick VALUE...: one of them, in PICK (not a subshell, so the seed replays).
pick() { local a=("$@"); PICK=${a[RANDOM % $#]}; }
# wait_exit PID SECONDS: waits for a process we started; its exit status in
# EXIT_RC, or fails after SECONDS (killing it).
wait_exit() {
  local pid=$1 end=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < end)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; wait "$pid" 2>/dev/null || true; fail "pid $pid still running after $2 s"; fi
  EXIT_RC=0; wait "$pid" || EXIT_RC=$?
}
no_crash() { ! grep -Eq 'panicked|internal error|Segmentation|Aborted|assert' "$1"; }

# read_app: the app's RSS (kB; VmRSS, and of it anonymous memory and shared
# memory, which is where the mapped pmem file counts) and open fds, read
# without forking; kept as the latest reading. Taken only while a round
# runs, so every reading sees the same RPC connections (perform_tests' own).
read_app() {
  local k v _ rss=0 anon=0 shmem=0 fds
  while read -r k v _; do
    case $k in VmRSS:) rss=$v ;; RssAnon:) anon=$v ;; RssShmem:) shmem=$v ;; esac
  done <"/proc/$app_pid/status"
  fds=(/proc/"$app_pid"/fd/*)
  reading="$(date -Is),$((SECONDS - t0)),$round,$life,$app_pid,$rss,$anon,$shmem,${#fds[@]}"
}
record() { echo "$reading,$1" >>"$csv"; next_sample=$((SECONDS + SAMPLE)); }

# The check region: CHECK_MIB at the start of PC0p1, i.e. at SPLIT_MIB in the base file.
# run_dd LOG ARGS...: spdk_dd with the module and the current config.
run_dd() {
  local name=$1; shift
  env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" -r "$WORK/dd.sock" --json "$OUT/config.json" "$@" \
    >>"$OUT/$name.log" 2>&1 &
  dd_pid=$!; started+=("$dd_pid")
  wait_exit "$dd_pid" 600; dd_pid=
  ((EXIT_RC == 0)) || fail "spdk_dd ($name) exited with $EXIT_RC: $(tail -3 "$OUT/$name.log" | tr '\n' ' ')"
  no_crash "$OUT/$name.log" || fail "spdk_dd ($name): crash in its log"
  # Only the very first spdk_dd may format the cache.
  local n
  n=$(cat "$OUT"/dd-*.log | grep -c "PC0: formatted" || true)
  ((n <= 1)) || fail "spdk_dd ($name): PC0 was formatted again"
}
write_region() { # BS: a new pattern, written in BS-byte units
  head -c $((CHECK_MIB << 20)) /dev/urandom >"$WORK/expect.bin"
  run_dd dd-write --if "$WORK/expect.bin" --ob PC0p1 --bs "$1"
}
check_region() { # WHEN
  rm -f "$WORK/got.bin"
  run_dd dd-read --ib PC0p1 --of "$WORK/got.bin" --bs 65536 --count $((CHECK_MIB * 16))
  if ! cmp -s "$WORK/expect.bin" "$WORK/got.bin"; then
    fail "check region read back $1 differs: $(python3 - "$WORK/expect.bin" "$WORK/got.bin" <<'PY'
import sys
a, b = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
bad = [i // 4096 for i in range(0, len(a), 4096) if a[i:i + 4096] != b[i:i + 4096]]
print(f"{len(bad)} of {len(a) // 4096} blocks, first {bad[:5]}, read {len(b)} bytes")
PY
)"
  fi
  region_checks=$((region_checks + 1))
}
# base_check WHEN: with nothing dirty, the base file holds the check region.
base_check() {
  cmp -s -n $((CHECK_MIB << 20)) -i 0:$((SPLIT_MIB << 20)) "$WORK/expect.bin" "$WORK/base.img" ||
    fail "the base file does not hold the check region $1"
  base_checks=$((base_checks + 1))
}

OPT_KEYS="('uuid','seg_size','cache_mode','gc_percent','writeback_batch_bytes','seq_cutoff_bytes','base_lag_secs','max_dirty_percent','promotion','promotion_hits')"
options() { rpc 30 bdev_pcache_get_stats '{"name":"PC0"}' "json.dumps({k: r[0].get(k) for k in $OPT_KEYS}, sort_keys=True)"; }

start_app() {
  life=$((life + 1)) life_sampled=0
  env LD_PRELOAD="$MODULE" "$BP" "${APP_ARGS[@]}" -z -r "$sock" --json "$OUT/config.json" -T PC0p0 \
    -q 32 -o 4096 -w verify -t "$ROUND" -k 60 >"$OUT/bdevperf-$life.log" 2>&1 &
  app_pid=$!; started+=("$app_pid")
  local end=$((SECONDS + 60))
  until [[ -S $sock ]]; do
    kill -0 "$app_pid" 2>/dev/null || fail "bdevperf (life $life) exited at start: $(tail -3 "$OUT/bdevperf-$life.log" | tr '\n' ' ')"
    ((SECONDS < end)) || fail "bdevperf (life $life) has no RPC socket after 60 s"
    sleep 0.1
  done
  rpc 60 framework_wait_init >/dev/null
  rpc 30 bdev_get_bdevs '{"name":"PC0p0","timeout":10000}' >/dev/null
  grep -q "PC0: loaded Pmem0 and replayed" "$OUT/bdevperf-$life.log" || fail "life $life: PC0 was not loaded from the pmem"
  ! grep -q "PC0: formatted" "$OUT/bdevperf-$life.log" || fail "life $life: PC0 was formatted again"
  log "life $life: bdevperf pid $app_pid from $OUT/config.json"
}
stop_app() {
  [[ -n $app_pid ]] || return 0
  [[ -n $reading ]] && record end
  kill -TERM "$app_pid"
  wait_exit "$app_pid" 120
  local pid=$app_pid; app_pid=
  ((EXIT_RC == 0)) || fail "bdevperf (life $life, pid $pid) exited with $EXIT_RC after SIGTERM"
  no_crash "$OUT/bdevperf-$life.log" || fail "life $life: crash in bdevperf's log"
  rm -f "$sock"
}

modes=(writeback writethrough writearound passthrough)
# random_option: one set_options member with a valid value, in OPT.
random_option() {
  pick gc_percent writeback_batch_bytes seq_cutoff_bytes base_lag_secs max_dirty_percent promotion
  local k=$PICK
  case $k in
    gc_percent) pick 0 10 30 50 70 90 ;;
    writeback_batch_bytes) pick 1 65536 1048576 33554432 268435456 ;;
    seq_cutoff_bytes) pick 0 65536 1048576 8388608 ;;
    base_lag_secs) pick 0 1 30 300 ;;
    max_dirty_percent) pick 1 10 50 100 ;;
    promotion) pick always 2 3 16 255 ;;
  esac
  if [[ $k != promotion ]]; then OPT="\"$k\":$PICK"
  elif [[ $PICK == always ]]; then OPT='"promotion":"always"'
  else OPT="\"promotion\":\"nhit\",\"promotion_hits\":$PICK"; fi
}
# chaos: one change or query while verify runs, in turn: the next cache
# mode, an option, a flush under I/O, get_stats.
chaos() {
  act=$((act + 1))
  case $((act % 6)) in
    0 | 3)
      mode_i=$(((mode_i + 1) % 4))
      rpc 30 bdev_pcache_set_options "{\"name\":\"PC0\",\"cache_mode\":\"${modes[mode_i]}\"}" >/dev/null ;;
    1 | 4)
      random_option
      rpc 30 bdev_pcache_set_options "{\"name\":\"PC0\",$OPT}" >/dev/null ;;
    2)
      rpc 600 bdev_pcache_flush '{"name":"PC0"}' >/dev/null
      flushes=$((flushes + 1)) ;;
    5)
      local st
      st=$(rpc 30 bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['state']")
      [[ $st == online ]] || fail "PC0 is $st during round $round"
      rpc 30 bdev_get_bdevs '{"name":"PC0p0"}' >/dev/null ;;
  esac
}

# run_round: one perform_tests round (verify, a random io size and queue
# depth) with chaos beside it. A reading every 2 s; samples.csv gets the
# first of each app life, then one every SAMPLE s (stop_app adds the last).
run_round() {
  round=$((round + 1))
  pick 4096 4096 16384 65536 131072; local size=$PICK
  pick 32 32 8 64; local qd=$PICK
  local params="{\"time_in_sec\":$ROUND,\"workload_type\":\"verify\",\"queue_depth\":$qd,\"io_size\":\"$size\"}"
  (rpc $((ROUND + 300)) perform_tests "$params" >"$WORK/round.json") &
  round_pid=$!
  local end=$((SECONDS + ROUND))
  while kill -0 "$round_pid" 2>/dev/null; do
    sleep 2
    kill -0 "$round_pid" 2>/dev/null || break
    kill -0 "$app_pid" 2>/dev/null || break
    read_app
    if ((life_sampled == 0)); then record start; life_sampled=1
    elif ((SECONDS >= next_sample)); then record periodic; fi
    ((SECONDS < end - 1)) && chaos
  done
  local rc=0
  wait "$round_pid" || rc=$?
  round_pid=
  ((rc == 0)) || fail "round $round: perform_tests failed: $(head -c 300 "$WORK/round.json")"
  local res
  res=$(python3 - "$WORK/round.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
bad = [j for j in r if j["status"] != "finished" or j["io_failed"] or j["io_timeout"] or j["iops"] <= 0]
print(f'{"bad" if bad or not r else "ok"} {sum(j["iops"] for j in r):.0f} IOPS, '
      f'{sum(j["io_failed"] for j in r)} failed, {sum(j["io_timeout"] for j in r)} timed out, '
      f'status {",".join(j["status"] for j in r)}')
PY
)
  local mis
  mis=$(tr '\r' '\n' <"$OUT/bdevperf-$life.log" | grep -c 'Buffer mismatch' || true)
  [[ $res == ok* && $mis == 0 ]] || fail "round $round: ${res#* }, $mis miscompares"
  local mode
  mode=$(rpc 30 bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['cache_mode']")
  log "round $round (life $life, verify ${size} B qd $qd, now $mode): ${res#ok }"
}

# idle_flush WHEN: between rounds, a flush leaves the cache clean and the
# check region on the base.
idle_flush() {
  rpc 600 bdev_pcache_flush '{"name":"PC0"}' >/dev/null
  flushes=$((flushes + 1))
  local st
  st=$(rpc 30 bdev_pcache_get_stats '{"name":"PC0"}' "(r[0]['clean'], r[0]['dirty_bytes'], r[0]['flushes_waiting'])")
  [[ $st == "(True, 0, 0)" ]] || fail "after the flush $1, PC0 (clean, dirty_bytes, flushes_waiting) is $st"
  base_check "after the flush $1"
}

# recreate: delete PC0 (FLUSH true or false) and create it again with
# random options; it must load the cache and keep its uuid.
recreate() {
  local flush=$1 uuid names end
  uuid=$(rpc 30 bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['uuid']")
  rpc 600 bdev_pcache_delete "{\"name\":\"PC0\",\"flush\":$flush}" >/dev/null
  # The splits go with PC0 (and their config with them); wait for that.
  end=$((SECONDS + 30))
  while :; do
    names=$(rpc 30 bdev_get_bdevs '' "' '.join(sorted(b['name'] for b in r))")
    [[ " $names " == *" PC0"* ]] || break
    ((SECONDS < end)) || fail "after bdev_pcache_delete, still there: $names"
    sleep 0.2
  done
  [[ $flush == true ]] && base_check "after bdev_pcache_delete with flush"
  local params="\"name\":\"PC0\",\"cache_bdev\":\"Pmem0\",\"base_bdev\":\"Base0\""
  pick "" writeback writethrough writearound passthrough
  [[ -n $PICK ]] && params+=",\"cache_mode\":\"$PICK\""
  random_option; params+=",$OPT"
  random_option; [[ $params == *"${OPT%%:*}"* ]] || params+=",$OPT"
  rpc 30 bdev_pcache_create "{$params}" >/dev/null
  rpc 30 bdev_split_create "{\"base_bdev\":\"PC0\",\"split_count\":2,\"split_size_mb\":$SPLIT_MIB}" >/dev/null
  rpc 30 bdev_get_bdevs '{"name":"PC0p0","timeout":10000}' >/dev/null
  local st
  st=$(rpc 30 bdev_pcache_get_stats '{"name":"PC0"}' "(r[0]['state'], r[0]['uuid'], r[0]['clean'])")
  [[ $st == "('online', '$uuid', "* ]] || fail "PC0 after delete and create: (state, uuid, clean) $st, uuid was $uuid"
  [[ $flush == false || $st == *True\) ]] || fail "PC0 is not clean after a delete with flush: $st"
  recreates=$((recreates + 1))
  log "deleted PC0 (flush $flush) and created it again: {$params}"
}

# save_config: the app's config into config.json, as rpc.py save_config
# builds it (that command is the client's: one framework_get_config per
# subsystem).
save_config() {
  local subs s cfg sep=
  subs=$(rpc 30 framework_get_subsystems '' "' '.join(x['subsystem'] for x in r)")
  {
    echo '{"subsystems":['
    for s in $subs; do
      cfg=$(rpc 30 framework_get_config "{\"name\":\"$s\"}" "json.dumps(r)")
      echo "$sep{\"subsystem\":\"$s\",\"config\":$cfg}"
      sep=,
    done
    echo ']}'
  } >"$WORK/config.json"
  python3 -m json.tool "$WORK/config.json" >"$OUT/config.json"
  grep -q '"bdev_pcache_create"' "$OUT/config.json" || fail "the saved config has no bdev_pcache_create"
}

# restart: save_config, SIGTERM, check and rewrite the check region with
# spdk_dd, start again from the saved config; the options must survive.
restart() {
  local before= after
  [[ ${1:-} == final ]] || before=$(options)
  save_config
  stop_app
  check_region "after life $life"
  if [[ ${1:-} == final ]]; then return 0; fi
  pick 4096 16384 65536 131072
  write_region "$PICK"
  start_app
  after=$(options)
  [[ $after == "$before" ]] || fail "options changed across the restart: $before -> $after"
  restarts=$((restarts + 1))
}

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  set +e
  exec 1>&3 2>&4
  # bdevperf printf()s its miscompares to a buffered stdout: SIGTERM first,
  # so what it printed reaches its log.
  for pid in "$app_pid" "$dd_pid"; do [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 50); do
    kill -0 "$app_pid" 2>/dev/null || kill -0 "$dd_pid" 2>/dev/null || break
    sleep 0.2
  done
  for pid in "$round_pid" "$app_pid" "$dd_pid"; do [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null; done
  wait 2>/dev/null || true
  # DPDK's runtime directories of the apps this run started.
  for pid in "${started[@]}"; do rm -rf "/var/run/dpdk/spdk_pid$pid"; done
  rm -rf "$WORK" "$SHM"
  summary "$rc"
}

summary() {
  local verdict=PASS mem rc=0 rpcs mis
  rpcs=$(wc -l <"$OUT/rpc.log")
  mis=$(cat "$OUT"/bdevperf-*.log 2>/dev/null | tr '\r' '\n' | grep -c 'Buffer mismatch' || true)
  mem=$(python3 - "$csv" "$WINDOW" "$RSS_PCT" "$RSS_MIB" "$FD_SLACK" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
window, pct, mib, slack = (int(a) for a in sys.argv[2:6])
if not rows:
    print("no samples"); sys.exit(0)
lives = {}
for r in rows:
    lives.setdefault(int(r["life"]), []).append(r)
t = lambda r: int(r["elapsed_s"])
# VmRSS is mostly shared memory (DPDK's --no-huge memory, the mapped pmem):
# RssAnon, the heap, is checked on its own, or its growth would hide in
# VmRSS's margin. (name, column, allowed growth over a baseline)
checks = [("RSS", "rss_kib", lambda b: b * (100 + pct) // 100 + mib * 1024),
          ("RssAnon", "rss_anon_kib", lambda b: b * (100 + pct) // 100 + mib * 1024),
          ("fds", "fds", lambda b: b + slack)]
show = lambda col, v: f"{v / 1024:.1f}" if col != "fds" else str(v)
bad = []
for name, col, _ in checks:
    v = [int(r[col]) for r in rows]
    unit = "" if col == "fds" else " MiB"
    print(f"{name}{unit} first/last/max: {show(col, v[0])} / {show(col, v[-1])} / {show(col, max(v))}")
print(f"growth allowed: RSS and RssAnon {pct}% + {mib} MiB, fds +{slack}, over the max of each life's first {window} s")
for life, rs in sorted(lives.items()):
    early = [r for r in rs if t(r) - t(rs[0]) <= window]
    line = f"  life {life} (pid {rs[0]['pid']}, {t(rs[-1]) - t(rs[0])} s, {len(rs)} samples), first/last/max:"
    for name, col, limit in checks:
        v = [int(r[col]) for r in rs]
        line += f" {name} {show(col, v[0])}/{show(col, v[-1])}/{show(col, max(v))},"
        base = max(int(r[col]) for r in early)
        if len(early) < len(rs) and v[-1] > limit(base):
            bad.append(f"life {life}: {name} grew to {show(col, v[-1])}, its first {window} s at most {show(col, base)}")
    shm = [int(r["rss_shmem_kib"]) for r in rs]
    line += f" RssShmem last {shm[-1] / 1024:.1f}"
    print(line + (" (too short to judge growth)" if len(early) == len(rs) else ""))
first, last = lives[min(lives)], lives[max(lives)]
if len(lives) > 1:
    for name, col, limit in checks:
        base = max(int(r[col]) for r in first)
        if int(last[-1][col]) > limit(base):
            bad.append(f"{name} of the last life {show(col, int(last[-1][col]))}, the first life at most {show(col, base)}")
for b in bad:
    print("GROWTH: " + b)
sys.exit(1 if bad else 0)
PY
) || { verdict=FAIL; echo "RSS or fd growth" >>"$OUT/failures"; }
  [[ -s $OUT/failures || $completed != 1 || $mis != 0 ]] && verdict=FAIL
  [[ $verdict == PASS ]] || rc=1
  {
    echo "== pcache soak: $verdict"
    echo "seed $SEED, $((SECONDS - t0)) s of $duration s, output in $OUT"
    echo "rounds $round, app lives $life (restarts $restarts), delete+create $recreates, flushes $flushes"
    echo "RPCs answered $rpcs, miscompares $mis, check-region reads $region_checks, base-file checks $base_checks"
    echo "$mem"
    if [[ -s $OUT/failures ]]; then sed 's/^/failure: /' "$OUT/failures"
    elif [[ $completed != 1 ]]; then echo "failure: stopped early (exit status $1)"; fi
    echo "== $verdict"
  } | tee "$OUT/summary.txt"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "soak for $duration s: output in $OUT (seed $SEED, module $MODULE)"
log "rounds of $ROUND s, restart every $RESTART s, samples every $SAMPLE s, baseline window $WINDOW s"
truncate -s $((2 * SPLIT_MIB << 20)) "$WORK/base.img"
cat >"$OUT/config.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"$SHM","size":$((PMEM_MIB << 20))}},
 {"method":"bdev_aio_create","params":{"name":"Base0","filename":"$WORK/base.img","block_size":4096}},
 {"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Base0"}},
 {"method":"bdev_split_create","params":{"base_bdev":"PC0","split_count":2,"split_size_mb":$SPLIT_MIB}},
 {"method":"bdev_wait_for_examine"}
]}]}
JSON
# The first spdk_dd formats the cache and writes the first pattern.
write_region 4096
grep -q "PC0: formatted Pmem0" "$OUT/dd-write.log" || fail "the first spdk_dd did not format the cache"
start_app
deadline=$((t0 + duration))
life_t0=$SECONDS
while :; do
  run_round
  # Leave time for the last round's checks and the final stop.
  ((SECONDS + ROUND + 10 < deadline)) || break
  if ((SECONDS - life_t0 >= RESTART)); then
    restart
    life_t0=$SECONDS
  elif ((round % 3 == 0)); then
    if (((round / 3) % 2)); then recreate true; else recreate false; fi
  else
    idle_flush "after round $round"
  fi
done
idle_flush "at the end"
restart final
completed=1
