#!/usr/bin/env bash
# Hot-remove of the bdevs under a pcache: deleting the base or the pmem bdev
# unregisters the pcache without crashing the app; the pcache keeps its
# config, waits for its bdevs and comes back when they return. Then the same
# with bdevperf writing through the pcache when a bdev goes away.
source "$(dirname "$0")/lib.sh"

# absent NAME: bdev_get_bdevs -b NAME is answered with an error.
absent() { [[ $(jr "$sock" bdev_get_bdevs "{\"name\":\"$1\"}" 2>/dev/null) == ERROR* ]]; }
alive() { jr "$sock" rpc_get_methods >/dev/null 2>&1; }
# state_is NAME STATE: get_stats shows pcache NAME in STATE.
state_is() { [ "$(pstat "$1" state)" = "$2" ]; }

# 1. spdk_tgt, no I/O: malloc base, pmem, PC0.
sock=$WORK/tgt.sock
log=$WORK/tgt.log
start_app tgt "$sock" "$log" "$SPDK_DIR/bin/spdk_tgt" "${APP_ARGS[@]}" -m 0x1 || { fail "spdk_tgt start"; finish; exit; }
ok=1
quiet spdk bdev_malloc_create -b Malloc0 64 4096 || ok=0
quiet rpc "$sock" bdev_pmem_create "$SHM.pmem" -n Pmem0 -s $((256 << 20)) || ok=0
quiet rpc "$sock" bdev_pcache_create PC0 -c Pmem0 -b Malloc0 || ok=0
[ $ok -eq 1 ] && state_is PC0 online || ok=0
check "stack created: Malloc0, Pmem0, PC0 online" [ $ok -eq 1 ]

echo "# base bdev removed"
check "bdev_malloc_delete Malloc0 under PC0 succeeds" quiet spdk bdev_malloc_delete Malloc0
check "PC0 disappears (bdev_get_bdevs -b PC0 fails within 5 s)" until_ok 5 absent PC0
check "the target keeps serving" alive
check "the log says PC0 is unregistered because Malloc0 is removed" grep -q "PC0: bdev Malloc0 is being removed" "$log"
check "PC0 keeps its config: get_stats shows it waiting for its bdevs" until_ok 5 state_is PC0 "waiting for its bdevs"
check "bdev_malloc_create Malloc0 again (same size)" quiet spdk bdev_malloc_create -b Malloc0 64 4096
check "PC0 comes back online" until_ok 5 state_is PC0 online
check "the log says PC0 was created now that its bdevs exist" grep -q "PC0: created now that its bdevs exist" "$log"
check "PC0 came back by loading its cache (same base identity), not formatting it" \
  [ "$(grep -c "PC0: loaded Pmem0 and replayed" "$log")/$(grep -c "PC0: formatted" "$log")" = 1/1 ]
check "bdev_get_bdevs -b PC0 answers again" quiet jsonrpc "$sock" bdev_get_bdevs '{"name":"PC0"}'

echo "# pmem bdev removed"
out=$(rpc "$sock" bdev_pmem_delete Pmem0 2>&1); rc=$?
echo "  (bdev_pmem_delete Pmem0 under PC0: exit $rc${out:+: $(tr -s ' \n' ' ' <<<"$out" | cut -c1-160)})"
check "the target keeps serving after bdev_pmem_delete under PC0" alive
if [ $rc -eq 0 ]; then
  check "Pmem0 is gone" until_ok 5 absent Pmem0
  check "PC0 is hot-removed with it" until_ok 5 absent PC0
  check "PC0 waits for its bdevs" until_ok 5 state_is PC0 "waiting for its bdevs"
else
  check "the refused delete left PC0 online" state_is PC0 online
fi
check "a waiting PC0 can be deleted" quiet rpc "$sock" bdev_pcache_delete PC0
check "Malloc0 is free again (released by PC0)" quiet spdk bdev_malloc_delete Malloc0
check "no crash or internal error in the spdk_tgt log" no_crash "$log"
stop_app tgt "$sock"
check "spdk_tgt exits cleanly" [ $? -eq 0 ]

# 2. bdevperf -z writing to PC0 when a bdev goes away, at a moment the cache
# is full and writes wait for space (deferred), with writeback to the base
# under way. Writes that cannot be placed once a bdev is gone may fail; -f
# keeps bdevperf going after a failure (it resubmits, as a host would), so
# the app stays up and is asked to exit like any app. Every call is bounded:
# a hung reactor must fail the suite, not stall it.
# deferring: the cache deferred writes during the last 0.3 s and writeback ran.
deferring() {
  [ "$(python3 - "$sock" 2>/dev/null <<'PY'
import sys, time, jsonrpc
get = lambda: jsonrpc.call(sys.argv[1], "bdev_pcache_get_stats", {"name": "PC0"}, timeout=5)["result"][0]
a = get(); time.sleep(0.3); b = get()
print(int(b["deferred_writes"] > a["deferred_writes"] and b["writeback_bytes"] > 0))
PY
)" = 1 ]
}
HUNG=
inflight() { # what, base (Malloc0, or Delay0: a delay bdev over Malloc0), method, params
  local what=$1 base=$2 method=$3 params=$4
  if [ -n "$HUNG" ]; then echo "  (skipped \"$what\": an earlier round hung)"; return; fi
  rm -f "$SHM.pmem"
  local delay=
  [ "$base" = Delay0 ] && delay='{"method":"bdev_delay_create","params":{"base_bdev_name":"Malloc0","name":"Delay0",
   "avg_read_latency":100,"p99_read_latency":100,"avg_write_latency":2000,"p99_write_latency":2000}},'
  # 10 segments of 16 MiB: the cache fills within a second. Over Delay0
  # (2 ms per write) it stays full, so writes wait for space when the bdev goes.
  cat >"$WORK/bp.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":16384,"block_size":4096}},
 $delay
 {"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"$SHM.pmem","size":$(((10 << 24) + (64 << 10)))}},
 {"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"$base"}},
 {"method":"bdev_wait_for_examine"}]}]}
JSON
  ROUND=$((${ROUND:-0} + 1))
  sock=$WORK/bp-$ROUND.sock
  log=$WORK/bp-$ROUND.log
  if ! start_app bp "$sock" "$log" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x1 -z --json "$WORK/bp.json" \
      -q 32 -o 4096 -w randwrite -t 20 -T PC0 -f; then
    fail "$what: bdevperf did not start"; return
  fi
  quiet jr "$sock" framework_wait_init
  jsonrpc "$sock" perform_tests >"$WORK/perform-$ROUND.out" 2>&1 &
  local perform=$!
  check "$what: the cache is full and deferring writes, writeback runs" until_ok 15 deferring
  echo "  (PC0 at the removal: $(q bdev_pcache_get_stats '{"name":"PC0"}' \
    "' '.join('%s=%s' % (k, r[0][k]) for k in ('write_ops','segs_used','dirty_bytes','writeback_bytes','gc_ksets','deferred_writes'))"))"
  local out
  out=$(timeout 5 python3 "$ROOT/tests/spdk/jsonrpc.py" "$sock" "$method" "$params" 2>&1)
  check "$what: $method answers during the writes${out:+ ($(tr -s ' \n' ' ' <<<"$out"))}" [ "$out" = true ]
  if ! alive; then
    # The reactor is stuck: report where, fail what cannot be checked, and move on.
    fail "$what: bdevperf still answers RPCs (no answer within 10 s)"
    if command -v gdb >/dev/null; then
      echo "  (bdevperf's reactor:)"
      gdb -p "$PID_bp" -batch -ex bt 2>/dev/null | grep -E '^#' | head -14 | cut -c1-160 | sed 's/^/    /'
    fi
    fail "$what: PC0 disappears"
    fail "$what: bdevperf exits when asked (it does not answer; killed)"
    kill -9 "$PID_bp" 2>/dev/null; wait "$PID_bp" 2>/dev/null; PID_bp=
    kill "$perform" 2>/dev/null; wait "$perform" 2>/dev/null
    HUNG=1
    return
  fi
  pass "$what: bdevperf still answers RPCs"
  if until_ok 10 absent PC0; then pass "$what: PC0 disappears"
  else fail "$what: PC0 disappears"; echo "  (PC0: $(q bdev_get_bdevs '{"name":"PC0"}' "r[0]['driver_specific']") / $(q bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['state']"))"; fi
  check "$what: perform_tests returns well before the 20 s run would end" \
    until_ok 10 bash -c "! kill -0 $perform 2>/dev/null"
  kill "$perform" 2>/dev/null; wait "$perform" 2>/dev/null
  echo "  (perform_tests: $(tr -s ' \n' ' ' <"$WORK/perform-$ROUND.out" | cut -c1-200))"
  check "$what: bdevperf is still running" kill -0 "$PID_bp"
  check "$what: no crash or internal error in the log" no_crash "$log"
  stop_app bp "$sock"
  local rc=$?
  check "$what: bdevperf exits when asked, not from a signal (exit $rc)" [ $rc -lt 128 ]
}
# The removal races with the app's own remove callback, so there are several
# rounds; after a round that hangs the rest are skipped (the suite stays short).
inflight "slow base removed under I/O" Delay0 bdev_delay_delete '{"name":"Delay0"}'
inflight "base under the slow base removed under I/O" Delay0 bdev_malloc_delete '{"name":"Malloc0"}'
inflight "base removed under I/O" Malloc0 bdev_malloc_delete '{"name":"Malloc0"}'
inflight "pmem removed under I/O (slow base)" Delay0 bdev_pmem_delete '{"name":"Pmem0"}'
inflight "pmem removed under I/O" Malloc0 bdev_pmem_delete '{"name":"Pmem0"}'

finish
