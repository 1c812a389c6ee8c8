#!/usr/bin/env bash
# bdevperf -w verify through pcache: on 1 core, on 2 cores, and with a tiny
# cache that makes GC and writeback run during the test.
source "$(dirname "$0")/lib.sh"

verify_run() { # description, cpumask, extra bdevperf args...
  local what=$1 mask=$2; shift 2
  local log=$WORK/bdevperf-$mask.log
  rm -f "$SHM.pmem"
  stack_config "$WORK/stack.json" $((256 << 20)) $((512 << 20))
  env LD_PRELOAD="$MODULE" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m "$mask" --json "$WORK/stack.json" \
    -q 32 -o 4096 -t 5 -w verify "$@" >"$log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ] && bdevperf_ok "$log"; then
    pass "$what: $(totals "$log")"
  else
    fail "$what (exit $rc)"; tail -25 "$log"
  fi
}

verify_run "verify on 1 core" 0x1
verify_run "verify on 2 cores (-C)" 0x3 -C
# bdevperf's reset workload is verify with a bdev reset every 10 s. A reset
# aborts I/O in flight (passthru over AIO fails ~0.1% of I/O the same way), so
# here: no data mismatch (bdevperf exits non-zero on one), I/O goes on, and
# failures stay a small fraction.
rm -f "$SHM.pmem"
stack_config "$WORK/stack.json" $((256 << 20)) $((512 << 20))
env LD_PRELOAD="$MODULE" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x1 --json "$WORK/stack.json" \
  -q 32 -o 4096 -w reset -t 12 >"$WORK/reset.log" 2>&1
rc=$?
if [ $rc -eq 0 ] && ! grep -q "Buffer mismatch" "$WORK/reset.log" &&
   tr '\r' '\n' <"$WORK/reset.log" | awk '/^ *Total *:/ { f=1; ok = ($3 > 0 && $5 < $3 / 100) } END { exit !(f && ok) }'; then
  pass "verify with a reset (-w reset -t 12): $(totals "$WORK/reset.log")"
else
  fail "verify with a reset (exit $rc)"; tail -20 "$WORK/reset.log"
fi

# A tiny bdev_io pool: the base runs out of I/O objects, so pcache's
# writeback takes the ENOMEM path (spdk_bdev_queue_io_wait; seen hit ~10^5 times).
rm -f "$SHM.pmem"
stack_config "$WORK/nomem.json" $((256 << 20)) $((512 << 20))
sed -i 's|"config":\[|"config":[\n {"method":"bdev_set_options","params":{"bdev_io_pool_size":256,"bdev_io_cache_size":4}},|' "$WORK/nomem.json"
env LD_PRELOAD="$MODULE" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x3 -C --json "$WORK/nomem.json" \
  -q 128 -o 4096 -w verify -t 5 >"$WORK/nomem.log" 2>&1
rc=$?
if [ $rc -eq 0 ] && bdevperf_ok "$WORK/nomem.log"; then
  pass "verify with a 256-entry bdev_io pool, queue depth 128 on 2 cores: $(totals "$WORK/nomem.log")"
else
  fail "verify with a tiny bdev_io pool (exit $rc)"; tail -20 "$WORK/nomem.log"
fi

# Sequential bypass: verify's sequential 128 KiB writes past the 1 MiB
# cutoff go straight to the base, its reads of them miss the cache, and a
# bdev_pcache_flush afterwards flushes the base for them.
rm -f "$SHM.pmem"
stack_config "$WORK/seq.json" $((256 << 20)) $((512 << 20))
sock=$WORK/bdevperf-seq.sock
log=$WORK/bdevperf-seq.log
if start_app bps "$sock" "$log" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x3 -C -z --json "$WORK/seq.json" \
    -q 32 -o 131072 -w verify -t 5; then
  check "bypass: perform_tests completes without errors" jsonrpc "$sock" perform_tests
  check "bypass: bdevperf totals show I/O and no failures" bdevperf_ok "$log"
  stats=$(jsonrpc "$sock" bdev_pcache_get_stats '{"name":"PC0"}')
  get() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[0]['$1'])" "$stats"; }
  check "bypass: writes went straight to the base ($(get bypass_writes) writes, $(get bypass_bytes) bytes)" \
    [ "$(get bypass_writes)" -gt 0 ]
  check "bypass: the first MiB of each stream was cached ($(get write_bytes) bytes)" [ "$(get write_bytes)" -gt 0 ]
  check "bypass: bdev_pcache_flush answers" jsonrpc "$sock" bdev_pcache_flush '{"name":"PC0"}'
  stop_app bps "$sock"
  check "bypass: bdevperf exits cleanly" [ $? -eq 0 ]
else
  fail "bypass: bdevperf did not start"
fi

# Cache modes (src/mode.rs): verify in each, with the stats read after the
# run in the same app. writethrough: everything written is clean once the
# run ends (writes complete only once written back). writearound and
# passthrough: verify's writes go past the cache (its reads of them then
# miss); passthrough caches no read misses.
for m in writethrough writearound passthrough; do
  rm -f "$SHM.pmem"
  stack_config "$WORK/mode.json" $((256 << 20)) $((512 << 20)) ",\"cache_mode\":\"$m\",\"seq_cutoff_bytes\":0"
  sock=$WORK/bdevperf-mode.sock
  log=$WORK/bdevperf-$m.log
  if start_app bpm "$sock" "$log" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x3 -C -z --json "$WORK/mode.json" \
      -q 32 -o 4096 -w verify -t 4; then
    check "$m: perform_tests completes without errors" jsonrpc "$sock" perform_tests
    check "$m: bdevperf totals show I/O and no failures ($(totals "$log"))" bdevperf_ok "$log"
    stats=$(jsonrpc "$sock" bdev_pcache_get_stats '{"name":"PC0"}')
    get() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[0]['$1'])" "$stats"; }
    check "$m: get_stats shows the mode" [ "$(get cache_mode)" = "$m" ]
    case $m in
      writethrough)
        check "$m: writes went into the cache ($(get write_ops) writes)" [ "$(get write_ops)" -gt 0 ]
        check "$m: nothing is dirty after the run ($(get dirty_bytes) bytes)" [ "$(get dirty_bytes)" = 0 ]
        check "$m: writes went around the cache only when it was full ($(get bypass_full_writes) writes)" \
          [ "$(get bypass_writes)" = "$(get bypass_full_writes)" ] ;;
      *)
        check "$m: writes went around the cache ($(get bypass_writes) writes)" [ "$(get bypass_writes)" -gt 0 ]
        check "$m: nothing is dirty after the run ($(get dirty_bytes) bytes)" [ "$(get dirty_bytes)" = 0 ] ;;
    esac
    if [ $m = passthrough ]; then
      check "$m: no read miss was cached" [ "$(get fill_bytes)" = 0 ]
    else
      check "$m: read misses were cached ($(get fill_bytes) bytes)" [ "$(get fill_bytes)" -gt 0 ]
    fi
    stop_app bpm "$sock"
    check "$m: bdevperf exits cleanly" [ $? -eq 0 ]
  else
    fail "$m: bdevperf did not start"
  fi
done

# A switch under I/O: verify in writeback with data dirty, then writethrough
# for the rest of the run; the dirty data is written back and verify passes.
rm -f "$SHM.pmem"
stack_config "$WORK/switch.json" $((256 << 20)) $((512 << 20)) ',"seq_cutoff_bytes":0'
sock=$WORK/bdevperf-switch.sock
log=$WORK/bdevperf-switch.log
if start_app bpw "$sock" "$log" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x3 -C -z --json "$WORK/switch.json" \
    -q 32 -o 4096 -w verify -t 6; then
  jsonrpc "$sock" perform_tests >"$WORK/switch-perform.out" 2>&1 &
  perform=$!
  sleep 2
  dirty=$(q bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['dirty_bytes']")
  check "switch: dirty data before the switch (${dirty:-?} bytes)" [ "${dirty:-0}" -gt 0 ]
  check "switch: set_options cache_mode writethrough under I/O" \
    jsonrpc "$sock" bdev_pcache_set_options '{"name":"PC0","cache_mode":"writethrough"}'
  wait $perform
  check "switch: perform_tests completes without errors" [ $? -eq 0 ]
  check "switch: bdevperf totals show I/O and no failures ($(totals "$log"))" bdevperf_ok "$log"
  check "switch: the transition ended" \
    [ "$(q bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['cache_mode_transition']")" = False ]
  check "switch: nothing is dirty" [ "$(q bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['dirty_bytes']")" = 0 ]
  stop_app bpw "$sock"
  check "switch: bdevperf exits cleanly" [ $? -eq 0 ]
else
  fail "switch: bdevperf did not start"
fi

# The pmem bdev on its own, as a plain bdev.
rm -f "$SHM.raw"
cat >"$WORK/raw.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_pmem_create","params":{"name":"Pmem1","path":"$SHM.raw","size":$((128 << 20)),"block_size":512}}
]}]}
JSON
for w in verify write_zeroes unmap flush; do
  env LD_PRELOAD="$MODULE" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x1 --json "$WORK/raw.json" \
    -q 32 -o 4096 -w "$w" -t 2 >"$WORK/raw-$w.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && bdevperf_ok "$WORK/raw-$w.log"; then
    pass "raw pmem bdev, -w $w: $(totals "$WORK/raw-$w.log")"
  else
    fail "raw pmem bdev, -w $w (exit $rc)"; tail -20 "$WORK/raw-$w.log"
  fi
done

# Tiny cache: 10 segments of 16 MiB in front of 1 GiB. bdevperf waits for
# perform_tests (-z) so the stats can be read after the run, in the same app.
# verify writes sequentially: sequential bypass is off, so every write goes
# through the cache until it is full; after that, writes that no cached data
# overlaps go to the base (bypass.rs), and verify reads all of them back.
rm -f "$SHM.pmem"
stack_config "$WORK/tiny.json" $(((10 << 24) + (64 << 10))) $((1 << 30)) ',"gc_percent":50,"seq_cutoff_bytes":0'
sock=$WORK/bdevperf.sock
log=$WORK/bdevperf-tiny.log
if start_app bp "$sock" "$log" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x3 -C -z --json "$WORK/tiny.json" \
    -q 32 -o 65536 -w verify -t 10; then
  check "tiny cache: perform_tests completes without errors" jsonrpc "$sock" perform_tests
  stats=$(jsonrpc "$sock" bdev_pcache_get_stats '{"name":"PC0"}')
  get() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[0]['$1'])" "$stats"; }
  check "tiny cache: bdevperf totals show I/O and no failures" bdevperf_ok "$log"
  check "tiny cache: GC ran ($(get gc_ksets) ksets)" [ "$(get gc_ksets)" -gt 0 ]
  check "tiny cache: writeback ran ($(get writeback_bytes) bytes)" [ "$(get writeback_bytes)" -gt 0 ]
  through=$(( $(get write_bytes) + $(get bypass_bytes) ))
  check "tiny cache: more was written ($through bytes, cached or around it) than the cache holds" \
    [ "$through" -gt $((10 << 24)) ]
  check "tiny cache: no flush is waiting (flushes_waiting 0)" [ "$(get flushes_waiting)" = 0 ]
  check "tiny cache: get_stats says how much writeback found overwritten ($(get absorbed_percent) %)" \
    [ "$(get absorbed_percent)" != None ]
  check "tiny cache: writes that found it full went to the base ($(get bypass_full_writes) writes)" \
    [ "$(get bypass_full_writes)" -gt 0 ]
  stop_app bp "$sock"
  check "tiny cache: bdevperf exits cleanly" [ $? -eq 0 ]
else
  fail "tiny cache: bdevperf did not start"
fi

# Detach in one step: bdev_pcache_delete --flush writes everything back, then
# releases the bdevs. The base is a delay bdev with 1 s writes, so writeback
# is slow enough to watch: the flush shows in get_stats while it runs
# (batches of 1 MiB, each ended by a base flush: a second or more each).
rm -f "$SHM.pmem"
cat >"$WORK/slow.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"$SHM.pmem","size":$((64 << 20))}},
 {"method":"bdev_malloc_create","params":{"name":"Mal0","num_blocks":$((256 << 20 >> 12)),"block_size":4096}},
 {"method":"bdev_delay_create","params":{"name":"Slow0","base_bdev_name":"Mal0","avg_read_latency":0,
   "p99_read_latency":0,"avg_write_latency":1000000,"p99_write_latency":1000000}},
 {"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Slow0","seg_size":1048576,
   "writeback_batch_bytes":1048576}}
]}]}
JSON
sock=$WORK/slow.sock
if start_app slow "$sock" "$WORK/slow.log" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x1 -z --json "$WORK/slow.json" \
    -q 32 -o 4096 -w randwrite -t 2; then
  check "slow base: perform_tests completes" quiet jsonrpc "$sock" perform_tests
  dirty=$(pstat PC0 dirty_bytes)
  check "slow base: dirty data is left ($dirty bytes)" [ "${dirty:-0}" -gt $((4 << 20)) ]
  rpc "$sock" bdev_pcache_delete PC0 --flush >"$WORK/delete.out" 2>&1 &
  del=$!
  waiting() { [ "$(pstat PC0 flushes_waiting)" = 1 ]; }
  check "get_stats shows the flush of the delete while it runs" until_ok 10 waiting
  # The estimate needs a measured drain rate: about a second of writeback.
  eta_known() { eta=$(pstat PC0 drain_eta_secs); [ -n "$eta" ] && [ "$eta" != None ]; }
  check "and, once a rate is measured, the time left to drain" until_ok 10 eta_known
  echo "  (drain_eta_secs: $eta)"

  wait $del; del_rc=$?
  check "bdev_pcache_delete --flush succeeds (exit $del_rc: $(tr -s "\n" " " <"$WORK/delete.out"))" [ $del_rc -eq 0 ]
  gone() { ! jsonrpc "$sock" bdev_get_bdevs '{"name":"PC0"}' >/dev/null 2>&1; }
  check "PC0 is gone after it" gone
  stop_app slow "$sock"
  ( cd "$ROOT" && cargo build --release -q --bin pcache )
  dirty_left() { "$ROOT/target/release/pcache" inspect --json "$SHM.pmem" | python3 -c "import json,sys; print(json.load(sys.stdin)['dirty_bytes'])"; }
  left=$(dirty_left)
  check "the pmem image it left is clean (pcache inspect: $left dirty bytes)" [ "$left" = 0 ]
else
  fail "slow base: bdevperf did not start"
fi


# bdev QoS on the pcache bdev: the bdev layer then submits from its queue of
# waiting I/O, walking it while it submits each one. pcache must not complete
# other I/O from inside that submission (a completion lets bdevperf submit
# again, and the nested walk would submit one I/O twice: "Unexpected
# completion", data mismatches, then a crash on a completion after the job
# ended). Many short verify runs, each ending with I/O queued.
rm -f "$SHM.pmem"
stack_config "$WORK/qos.json" $((256 << 20)) $((512 << 20))
sock=$WORK/qos.sock
log=$WORK/qos.log
if start_app qos "$sock" "$log" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x1 -z --json "$WORK/qos.json" \
  -q 32 -o 4096 -w verify -t 1; then
  check "limit PC0 to 20,000 I/O per second (bdev QoS)" \
    "${RPC_PY[@]}" -s "$sock" bdev_set_qos_limit PC0 --rw-ios-per-sec 20000
  runs_ok=0
  for _ in $(seq 1 16); do
    timeout 30 python3 "$ROOT/tests/spdk/jsonrpc.py" "$sock" perform_tests '{"time_in_sec":1}' >/dev/null 2>&1 &&
      runs_ok=$((runs_ok + 1))
  done
  check "16 verify runs of 1 s under QoS complete ($runs_ok did)" [ "$runs_ok" -eq 16 ]
  stop_app qos "$sock"
  check "bdevperf (QoS) exits cleanly" [ $? -eq 0 ]
  check "no I/O was completed twice or read back wrong" \
    bash -c "! grep -Eq 'Unexpected completion|Buffer mismatch' '$log'"
  check "no panic or crash in the log" no_crash "$log"
else
  fail "bdevperf (QoS) did not start"
fi

# Writes waiting for space, on 2 cores: a small hot set over a slow base
# keeps the cache full, so writes wait for GC (on the first reactor) while
# the second reactor's app submits a new write from each completion. The
# retry of waiting writes must return to its reactor (taking the writes that
# completions queue behind them never ended there: perform_tests never came
# back) and complete them from the stage poller, so the channel leaves its
# queue of waiting writes.
rm -f "$SHM.pmem"
cat >"$WORK/defer.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"$SHM.pmem","size":$((1 << 30))}},
 {"method":"bdev_malloc_create","params":{"name":"Mal0","num_blocks":$((128 << 20 >> 12)),"block_size":4096}},
 {"method":"bdev_delay_create","params":{"name":"Slow0","base_bdev_name":"Mal0","avg_read_latency":0,
   "p99_read_latency":0,"avg_write_latency":100,"p99_write_latency":100}},
 {"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Slow0"}}
]}]}
JSON
sock=$WORK/defer.sock
log=$WORK/defer.log
if start_app defer "$sock" "$log" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x3 -C -z --json "$WORK/defer.json" \
  -q 32 -o 4096 -w randwrite -t 3; then
  runs_ok=0
  for _ in $(seq 1 4); do
    timeout 30 python3 "$ROOT/tests/spdk/jsonrpc.py" "$sock" perform_tests '{"time_in_sec":3}' >/dev/null 2>&1 &&
      runs_ok=$((runs_ok + 1))
  done
  check "writes waiting for space on 2 cores: 4 randwrite runs of 3 s complete ($runs_ok did)" [ "$runs_ok" -eq 4 ]
  deferred=$(q bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['deferred_writes']")
  check "writes waited for space meanwhile (deferred_writes ${deferred:-?})" [ "${deferred:-0}" -gt 0 ]
  stop_app defer "$sock"
  check "bdevperf (waiting writes) exits cleanly" [ $? -eq 0 ]
else
  fail "bdevperf (waiting writes) did not start"
fi

finish
