#!/usr/bin/env bash
# A failing base device: bdev_error between pcache and its AIO base injects
# write, flush and read failures while bdevperf runs through pcache.
# Front-end writes must not fail (writeback retries; data stays dirty in
# the cache), verify must find every acknowledged write, the errors must be
# counted, and once the base is healthy a flush must put everything on it.
source "$(dirname "$0")/lib.sh"

truncate -s $((512 << 20)) "$WORK/base.img"
cat >"$WORK/errors.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"$SHM.pmem","size":$((2 << 30))}},
 {"method":"bdev_aio_create","params":{"name":"Base0","filename":"$WORK/base.img","block_size":4096}},
 {"method":"bdev_error_create","params":{"base_name":"Base0"}},
 {"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"EE_Base0",
   "seg_size":1048576,"gc_percent":50,"seq_cutoff_bytes":0}}
]}]}
JSON

sock=$WORK/bp.sock
log=$WORK/bp.log
start_app bp "$sock" "$log" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x1 -z --json "$WORK/errors.json" \
  -q 32 -o 4096 -w verify -t 8 || { fail "bdevperf did not start"; finish; exit; }
inject() { "${RPC_PY[@]}" -s "$sock" bdev_error_inject_error EE_Base0 "$@" >/dev/null; }

# Writes and flushes of writeback fail, a few hundred times over the run.
check "inject 300 write failures into the base" inject write failure -n 300
check "inject 20 flush failures into the base" inject flush failure -n 20
out=$(jsonrpc "$sock" perform_tests 2>&1); rc=$?
check "verify through PC0 completes while the base fails writes and flushes (rc $rc)" [ $rc -eq 0 ]
check "no front-end I/O failed and no data mismatched" bdevperf_ok "$log"
errs=$(pstat PC0 writeback_errors)
check "writeback errors are counted ($errs)" [ "${errs:-0}" -gt 0 ]
check "PC0 is still online" [ "$(pstat PC0 state)" = online ]
# A flush fails while injected failures remain (it says so); retried, it
# succeeds once they are used up.
flush_ok() { jr "$sock" bdev_pcache_flush '{"name":"PC0"}' >/dev/null 2>&1; }
check "bdev_pcache_flush puts everything on the base once it is healthy" until_ok 120 flush_ok
check "PC0 is clean" [ "$(pstat PC0 clean)" = True ]

# A flush while the base fails every flush: the RPC fails and says why;
# nothing is lost (it still succeeds once the base recovers).
check "inject flush failures for a while" inject flush failure -n 1000000
# Room for 1 s of writes without writeback (a cache whose base cannot flush
# fills with dirty data, and then writes wait, as they must).
check "set_options -g 90" rpc "$sock" bdev_pcache_set_options PC0 -g 90
# Some new dirty data to write back, a bounded amount: bdev QoS holds the
# run to 20,000 I/O per second. Unlimited, a fast machine writes more in one
# second than the 1.8 GiB the cache has room for, and the run then waits for
# space that a base which cannot flush never frees (as it must).
check "limit PC0 to 20,000 I/O per second (bdev QoS)" \
  rpc "$sock" bdev_set_qos_limit PC0 --rw-ios-per-sec 20000
out=$(timeout 30 python3 "$ROOT/tests/spdk/jsonrpc.py" "$sock" perform_tests '{"time_in_sec":1}' 2>&1); rc=$?
check "another verify run (1 s) completes (rc $rc: $(tr -s "\n" " " <<<"$out" | cut -c1-120))" [ $rc -eq 0 ]
check "its front-end I/O did not fail" bdevperf_ok "$log"
ferr=$(jr "$sock" bdev_pcache_flush '{"name":"PC0"}' 2>&1); frc=$?
check "bdev_pcache_flush fails while the base cannot flush" [ $frc -ne 0 ]
check "and says why: $(tr -s '\n' ' ' <<<"$ferr" | cut -c1-160)" grep -qi "flush failed" <<<"$ferr"
check "clear the injected errors" inject clear failure
check "bdev_pcache_flush succeeds after the base recovered" jr "$sock" bdev_pcache_flush '{"name":"PC0"}'
check "PC0 is clean again" [ "$(pstat PC0 clean)" = True ]

stop_app bp "$sock"
check "bdevperf exits cleanly" [ $? -eq 0 ]
check "no panic or internal error in the log" no_crash "$log"

# Read misses the base fails: over a base holding known data and a new cache,
# bdevperf reads it all (misses, then hits on what was cached). The reads the
# base fails fail (nothing else can serve them) and are counted; nothing
# wrong is ever cached: afterwards the whole pcache bdev reads back (spdk_dd,
# same config) equal to the base file.
head -c $((64 << 20)) /dev/urandom >"$WORK/rbase.img"
cp "$WORK/rbase.img" "$WORK/rbase.orig"
rm -f "$SHM.rpmem"
cat >"$WORK/reads.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"$SHM.rpmem","size":$((256 << 20))}},
 {"method":"bdev_aio_create","params":{"name":"Base0","filename":"$WORK/rbase.img","block_size":4096}},
 {"method":"bdev_error_create","params":{"base_name":"Base0"}},
 {"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"EE_Base0"}}
]}]}
JSON
log=$WORK/reads.log
start_app br "$sock" "$log" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x1 -z --json "$WORK/reads.json" \
  -q 32 -o 4096 -w randread -t 3 -f || { fail "bdevperf (reads) did not start"; finish; exit; }
check "inject 200 read failures into the base" inject read failure -n 200
res=$(jsonrpc "$sock" perform_tests 2>&1)
failed=$(python3 -c "import json,sys; print(sum(j.get('io_failed', 0) for j in json.loads(sys.argv[1])['results']))" "$res" 2>/dev/null)
check "reads the base failed failed ($failed of them)" [ "${failed:-0}" -gt 0 ]
rerr=$(pstat PC0 base_read_errors)
check "get_stats counts them (base_read_errors $rerr)" [ "${rerr:-0}" -ge 200 ]
check "the rest was read and cached ($(pstat PC0 fill_bytes) bytes filled)" [ "$(pstat PC0 fill_bytes)" -gt 0 ]
stop_app br "$sock"
check "bdevperf (reads) exits cleanly" [ $? -eq 0 ]
env LD_PRELOAD="$MODULE" "$SPDK_DIR/bin/spdk_dd" "${APP_ARGS[@]}" --json "$WORK/reads.json" --ib PC0 \
  --of "$WORK/rout.img" --bs 1048576 >"$WORK/dd.log" 2>&1
check "spdk_dd reads the whole pcache bdev back" [ $? -eq 0 ]
check "and it equals the base's data: nothing wrong was cached" cmp -s "$WORK/rout.img" "$WORK/rbase.orig"
check "the base file was not changed" cmp -s "$WORK/rbase.img" "$WORK/rbase.orig"
finish
