#!/usr/bin/env bash
# FLUSH while writes wait for space: a tiny cache over a slow base (a delay
# bdev with 20 ms writes) fills, so writes are deferred; a bdevperf job sends
# FLUSH to the same pcache all along, and a bdev_pcache_flush RPC arrives in
# the middle. Nothing may hang or fail.
source "$(dirname "$0")/lib.sh"

cat >"$WORK/flush.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"$SHM.pmem","size":$((24 << 20))}},
 {"method":"bdev_malloc_create","params":{"name":"Mal0","num_blocks":$((256 << 20 >> 12)),"block_size":4096}},
 {"method":"bdev_delay_create","params":{"name":"Slow0","base_bdev_name":"Mal0","avg_read_latency":0,
   "p99_read_latency":0,"avg_write_latency":20000,"p99_write_latency":20000}},
 {"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Slow0",
   "seg_size":1048576,"gc_percent":30,"seq_cutoff_bytes":0}}
]}]}
JSON
cat >"$WORK/jobs.conf" <<'CONF'
[write]
filename=PC0
rw=randwrite
bs=4096
iodepth=32
[flush]
filename=PC0
rw=flush
bs=4096
iodepth=1
CONF

sock=$WORK/bp.sock
log=$WORK/bp.log
start_app bp "$sock" "$log" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x1 -z --json "$WORK/flush.json" \
  -j "$WORK/jobs.conf" -t 8 || { fail "bdevperf did not start"; finish; exit; }

timeout 60 python3 "$ROOT/tests/spdk/jsonrpc.py" "$sock" perform_tests >"$WORK/perform.out" 2>&1 &
run=$!
deferring() { [ "$(pstat PC0 deferred_writes)" -gt 0 ]; }
check "the cache fills: writes wait for space" until_ok 6 deferring
out=$(timeout 60 python3 "$ROOT/tests/spdk/jsonrpc.py" "$sock" bdev_pcache_flush '{"name":"PC0"}' 2>&1); rc=$?
check "bdev_pcache_flush while writes wait for space returns true (rc $rc: $out)" [ $rc -eq 0 ]
wait $run
check "perform_tests completes: no I/O hangs" [ $? -eq 0 ]
check "no write and no FLUSH failed" bdevperf_ok "$log"
check "the FLUSH job ran ($(pstat PC0 flush_ops) flushes seen by PC0)" [ "$(pstat PC0 flush_ops)" -gt 0 ]
stop_app bp "$sock"
check "bdevperf exits cleanly" [ $? -eq 0 ]
check "no panic or internal error in the log" no_crash "$log"
finish
