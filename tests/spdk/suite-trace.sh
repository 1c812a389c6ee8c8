#!/usr/bin/env bash
# pcache's tracepoints in SPDK's tracing: with `-e pcache` every pcache event
# shows in spdk_trace (staged writes, read hits and misses, fills, writes
# waiting for space, writeback batches, base flushes, GC steps); with another
# group only, none does.
source "$(dirname "$0")/lib.sh"
BP=$SPDK_DIR/bin/bdevperf
RECORD=$SPDK_DIR/bin/spdk_trace_record
PARSE=$SPDK_DIR/bin/spdk_trace
if [ ! -x "$RECORD" ] || [ ! -x "$PARSE" ]; then
  echo "skipped: spdk_trace and spdk_trace_record are not in $SPDK_DIR/bin"
  exit 0
fi
# Tracing on (lib.sh turns it off): a trace file in /dev/shm, removed below.
TRACE_ARGS=(--no-huge -s 2048 -u --disable-cpumask-locks)
EVENTS=(WRITE_STAGED READ_HIT READ_MISS FILL WRITE_WAIT WB_BATCH_START WB_BATCH_DONE BASE_FLUSH BASE_FLUSH_DONE GC_STEP)

# A 16 MiB cache over a base whose writes take 2 ms: writes soon wait for
# space, writeback and GC run all the time. Every miss is cached (promotion
# "always") so that fills show.
rm -f "$SHM.pmem"
stack_config "$WORK/stack.json" $((16 << 20)) $((128 << 20)) ',"promotion":"always","gc_percent":50'
sed -i 's/"name":"Base0","filename"/"name":"Aio0","filename"/; s/"base_bdev":"Base0"/"base_bdev":"Slow0"/' "$WORK/stack.json"
sed -i 's/^ {"method":"bdev_pcache_create"/ {"method":"bdev_delay_create","params":{"name":"Slow0","base_bdev_name":"Aio0","avg_read_latency":10,"p99_read_latency":10,"avg_write_latency":2000,"p99_write_latency":2000}},\n&/' "$WORK/stack.json"

# traced NAME GROUPS...: bdevperf -z with `-e` GROUPS, its
# trace recorded from start to end into $WORK/NAME.trace, parsed into
# $WORK/NAME.txt. Runs 2 s of randrw 50/50 (reads of written blocks hit,
# the others miss), then a flush.
traced() {
  local name=$1; shift
  local sock=$WORK/$name.sock eargs=(-e "$(IFS=,; echo "$*")")
  rm -f "$SHM.pmem"
  if ! start_app "$name" "$sock" "$WORK/$name.log" "$BP" "${TRACE_ARGS[@]}" "${eargs[@]}" -m 0x1 \
    --json "$WORK/stack.json" -T PC0 -q 32 -o 4096 -w randrw -M 50 -t 2 -z; then
    fail "$name: bdevperf did not start"
    return 1
  fi
  local pid
  pid=$(eval echo "\$PID_$name")
  "$RECORD" -s bdevperf -p "$pid" -f "$WORK/$name.trace" -q >"$WORK/$name.rec.log" 2>&1 &
  local rec=$!
  sleep 0.5
  jr "$sock" perform_tests >/dev/null
  jr "$sock" bdev_pcache_flush '{"name":"PC0"}' >/dev/null
  stop_app "$name" "$sock"
  kill -INT "$rec" 2>/dev/null
  wait "$rec" 2>/dev/null
  rm -f "/dev/shm/bdevperf_trace.pid$pid"
  "$PARSE" -f "$WORK/$name.trace" >"$WORK/$name.txt" 2>&1
}

# count NAME EVENT: how many PCACHE_EVENT lines NAME's trace has.
count() { grep -c " PCACHE_$2 " "$WORK/$1.txt"; }

traced on pcache
for e in "${EVENTS[@]}"; do
  n=$(count on "$e")
  check "-e pcache: PCACHE_$e recorded ($n)" [ "${n:-0}" -gt 0 ]
done

traced bdev bdev
check "-e bdev: bdev events recorded" grep -q 'BDEV_IO_START' "$WORK/bdev.txt"
check "-e bdev: no pcache event recorded" [ "$(grep -c ' PCACHE_' "$WORK/bdev.txt")" -eq 0 ]

finish
