#!/usr/bin/env bash
# Two pcaches on one app under I/O at once: one over a 4 KiB-block base, one
# over a 512-byte-block base with data CRC on and a tiny cache (GC and
# writeback run throughout). bdevperf verify drives both on two cores while
# bdev_pcache_set_options changes every option of both, back and forth.
source "$(dirname "$0")/lib.sh"

truncate -s $((512 << 20)) "$WORK/base0.img"
truncate -s $((256 << 20)) "$WORK/base1.img"
cat >"$WORK/multi.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"$SHM.pmem0","size":$((256 << 20))}},
 {"method":"bdev_aio_create","params":{"name":"Base0","filename":"$WORK/base0.img","block_size":4096}},
 {"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Base0"}},
 {"method":"bdev_pmem_create","params":{"name":"Pmem1","path":"$SHM.pmem1","size":$((24 << 20)),"block_size":512}},
 {"method":"bdev_aio_create","params":{"name":"Base1","filename":"$WORK/base1.img","block_size":512}},
 {"method":"bdev_pcache_create","params":{"name":"PC1","cache_bdev":"Pmem1","base_bdev":"Base1",
   "data_crc":true,"seg_size":1048576,"gc_percent":30}}
]}]}
JSON

sock=$WORK/bp.sock
log=$WORK/bp.log
# No -T: bdevperf runs a job on every bdev nothing sits on (PC0 and PC1).
start_app bp "$sock" "$log" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x3 -C -z --json "$WORK/multi.json" \
  -q 16 -o 4096 -w verify -t 10 || { fail "bdevperf did not start"; finish; exit; }
check "PC1 sits on a 512-byte-block base (block_size $(jr "$sock" bdev_get_bdevs '{"name":"PC1"}' | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['block_size'])"))" \
  [ "$(jr "$sock" bdev_get_bdevs '{"name":"PC1"}' | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['block_size'])")" = 512 ]

both_positive() { [ "$1" -gt 0 ] && [ "$2" -gt 0 ]; }
jsonrpc "$sock" perform_tests >"$WORK/perform.out" 2>&1 &
run=$!
# Options change under I/O, several times.
changes_ok=1
for round in 1 2 3; do
  sleep 2
  for pc in PC0 PC1; do
    rpc "$sock" bdev_pcache_set_options "$pc" -g 40 -W 1048576 -S 0 >/dev/null || changes_ok=0
    sleep 0.5
    rpc "$sock" bdev_pcache_set_options "$pc" -g 70 -W 33554432 -S 1048576 >/dev/null || changes_ok=0
  done
done
check "bdev_pcache_set_options changed both pcaches six times under I/O" [ $changes_ok -eq 1 ]
wait $run
check "perform_tests completes" [ $? -eq 0 ]
check "no I/O failed and verify found no mismatch on either pcache" bdevperf_ok "$log"
jobs_seen() { tr '\r' '\n' <"$log" | grep -c "Job: PC[01] "; }
check "bdevperf ran jobs on both pcaches ($(jobs_seen) job lines)" [ "$(jobs_seen)" -ge 2 ]
for pc in PC0 PC1; do
  w=$(pstat $pc write_ops); r=$(( $(pstat $pc read_hit_ops) + $(pstat $pc read_miss_ops) ))
  check "$pc served writes ($w) and reads ($r)" both_positive "${w:-0}" "$r"
done
check "PC1's tiny cache ran GC ($(pstat PC1 gc_ksets) ksets) and writeback ($(pstat PC1 writeback_bytes) bytes)" \
  [ "$(pstat PC1 gc_ksets)" -gt 0 ]
check "no data CRC error on PC1" [ "$(pstat PC1 data_crc_errors)" = 0 ]
check "gc_percent is back to 70 on both" [ "$(pstat PC0 gc_percent)-$(pstat PC1 gc_percent)" = 70-70 ]
stop_app bp "$sock"
check "bdevperf exits cleanly" [ $? -eq 0 ]
check "no panic or internal error in the log" no_crash "$log"
finish
