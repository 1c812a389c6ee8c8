#!/usr/bin/env bash
# pcache over a Ceph RBD image (bdev_rbd), on a one-node cluster that
# scripts/ceph-cluster.sh starts for the suite: the stack comes up from a
# JSON config, data written through pcache reads back, a kill -9 loses
# nothing pcache acknowledged before it, and once pcache is flushed the image
# read without pcache (`rbd export`) is exactly what pcache serves; fio
# killed with -9 in the middle of writeback leaves the image a prefix of its
# FLUSH epochs (tests/spdk/epochs.py) and pcache serving all it flushed; with
# the OSD away for a while under writes, no write fails, a flush completes
# once it is back, and the image then holds what pcache serves; the image
# names the pcache that owns it, and
# a second pcache over it is refused until the first is deleted with flush.
# Skipped where Ceph's daemons or SPDK's bdev_rbd are missing.
source "$(dirname "$0")/lib.sh"
DD=$SPDK_DIR/bin/spdk_dd

missing=()
for t in ceph-mon ceph-osd ceph rbd monmaptool; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "skipped: Ceph is not installed (no ${missing[*]}; apt install ceph-mon ceph-osd ceph-common)"
  exit 77
fi
if ! ls "$SPDK_DIR"/lib/libspdk_bdev_rbd.* >/dev/null 2>&1; then
  echo "skipped: SPDK at $SPDK_DIR was built without RBD (configure --with-rbd)"
  exit 77
fi

CEPH=$WORK/ceph
IMAGE_MIB=256
stop_cluster() { "$ROOT/scripts/ceph-cluster.sh" stop "$CEPH" >/dev/null 2>&1; }
trap 'stop_cluster; cleanup' EXIT
conf=$("$ROOT/scripts/ceph-cluster.sh" start "$CEPH" "$IMAGE_MIB" 2>"$WORK/ceph-start.log" | tail -1)
if [ ! -f "$conf" ]; then
  fail "one-node Ceph cluster starts"; tail -20 "$WORK/ceph-start.log"; finish; exit
fi
pass "one-node Ceph cluster starts ($(rbd -c "$conf" info rbd/img0 | head -1))"

# librbd's own cache off: pcache is the cache; with it on, librbd turns to
# write-back at the first base flush and holds writes back behind its own.
cat >"$WORK/stack.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_rbd_register_cluster","params":{"name":"ceph0","config_file":"$conf","config_param":{"rbd_cache":"false"}}},
 {"method":"bdev_rbd_create","params":{"name":"Rbd0","pool_name":"rbd","rbd_name":"img0","block_size":4096,"cluster_name":"ceph0"}},
 {"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"$SHM.pmem","size":$((64 << 20))}},
 {"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Rbd0"}}
]}]}
JSON
head -c $((16 << 20)) /dev/urandom >"$WORK/p1.bin"
head -c $((8 << 20)) /dev/urandom >"$WORK/p2.bin"

# dd_write FILE SEEK_BLOCKS: FILE into PC0 at SEEK (4 KiB blocks), in its own process.
dd_write() {
  env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$WORK/stack.json" --if "$1" --ob PC0 --bs 65536 \
    --seek $(($2 / 16)) >>"$WORK/dd.log" 2>&1
}
# dd_read OUT SKIP_BLOCKS COUNT_BLOCKS: PC0's blocks into OUT.
dd_read() {
  env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$WORK/stack.json" --ib PC0 --of "$1" --bs 4096 \
    --skip "$2" --count "$3" >>"$WORK/dd.log" 2>&1
}
# image_part OUT SKIP_BYTES LEN: bytes of the RBD image itself (rbd export), past pcache.
image_part() {
  rm -f "$WORK/image.bin"
  timeout 120 rbd -c "$conf" export --no-progress rbd/img0 "$WORK/image.bin" >>"$WORK/export.log" 2>&1 \
    && dd if="$WORK/image.bin" of="$1" bs=1M iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none \
    || { echo "  (rbd export failed:)"; tail -3 "$WORK/export.log"; return 1; }
}

# 1. The stack from a JSON config; P1 written and read back through pcache.
dd_write "$WORK/p1.bin" 0
check "spdk_dd wrote 16 MiB into PC0 over Rbd0" [ $? -eq 0 ]
dd_read "$WORK/r1.bin" 0 4096
check "P1 reads back through pcache" cmp -s "$WORK/p1.bin" "$WORK/r1.bin"

# 2. A target: P2 written into the cache and left dirty (a lag long enough
#    that nothing is written back meanwhile), then kill -9.
sock=$WORK/tgt.sock
start_app tgt "$sock" "$WORK/tgt.log" "$SPDK_DIR/bin/spdk_tgt" "${APP_ARGS[@]}" -m 0x1 --json "$WORK/stack.json" \
  || { fail "spdk_tgt over RBD starts"; finish; exit; }
until_ok 10 q bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['state']" >/dev/null
check "bdev_pcache_get_stats: PC0 over Rbd0" \
  [ "$(q bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['base_bdev']")" = Rbd0 ]
flushed
check "flush RPC: clean" [ "$(q bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['clean']")" = True ]
image_part "$WORK/i1.bin" 0 $((16 << 20))
check "after the flush, the image holds P1 (rbd export)" cmp -s "$WORK/p1.bin" "$WORK/i1.bin"
stop_app tgt "$sock"

dd_write "$WORK/p2.bin" 1024
check "spdk_dd wrote 8 MiB over P1 at 4 MiB" [ $? -eq 0 ]
start_app tgt "$sock" "$WORK/tgt2.log" "$SPDK_DIR/bin/spdk_tgt" "${APP_ARGS[@]}" -m 0x1 --json "$WORK/stack.json" \
  || { fail "spdk_tgt restarts"; finish; exit; }
kill -9 "$PID_tgt"; wait "$PID_tgt" 2>/dev/null
pass "spdk_tgt killed with -9"

# 3. What pcache serves after the kill: P1 with P2 over it.
cp "$WORK/p1.bin" "$WORK/want.bin"
dd if="$WORK/p2.bin" of="$WORK/want.bin" bs=4096 seek=1024 conv=notrunc status=none
dd_read "$WORK/r2.bin" 0 4096
check "after kill -9, pcache serves P1 with P2 over it" cmp -s "$WORK/want.bin" "$WORK/r2.bin"

# 4. Flushed: the image read without pcache is what pcache serves.
start_app tgt "$sock" "$WORK/tgt3.log" "$SPDK_DIR/bin/spdk_tgt" "${APP_ARGS[@]}" -m 0x1 --json "$WORK/stack.json" \
  || { fail "spdk_tgt restarts"; finish; exit; }
until_ok 10 q bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['state']" >/dev/null
check "flush RPC after the restart" flushed
image_part "$WORK/i2.bin" 0 $((16 << 20))
check "the flushed image equals what pcache serves (rbd export)" cmp -s "$WORK/want.bin" "$WORK/i2.bin"
stop_app tgt "$sock"

# 5. kill -9 in the middle of writeback: fio (SPDK's plugin, the app here)
#    writes FLUSH epochs over a 32 MiB region of a fresh image through a
#    64 MiB cache, each epoch 16 MiB of random blocks with its own pattern,
#    and is killed while RBD is still catching up. The image read without
#    pcache must be a prefix of the epochs; the restarted pcache must serve
#    every epoch whose FLUSH completed; flushed, the image equals it.
if ! plugin=$(fio_plugin); then
  echo "  skipped: kill -9 in the middle of writeback needs fio and SPDK's fio plugin (SPDK built --with-fio)"
else
  rbd -c "$conf" create --size 64 rbd/epochs >>"$WORK/export.log" 2>&1
  sed 's/"rbd_name":"img0"/"rbd_name":"epochs"/; s/"name":"PC0"/"name":"PCE"/
       s|'"$SHM"'.pmem"|'"$SHM"'.pmeme"|' "$WORK/stack.json" >"$WORK/epochs.json"
  mkdir -p "$WORK/ep"
  python3 "$ROOT/tests/spdk/epochs.py" job "$WORK/ep/epochs.fio" "$WORK/epochs.json" PCE 100 32 16
  (cd "$WORK/ep" && exec env LD_PRELOAD="$plugin $MODULE" fio epochs.fio) >"$WORK/ep/fio.log" 2>&1 &
  fio_pid=$!
  sleep 12
  check "fio still writing epochs when killed ($(ls "$WORK"/ep/e*.iolog 2>/dev/null | wc -l) started)" kill -0 "$fio_pid"
  kill -9 "$fio_pid"; wait "$fio_pid" 2>/dev/null
  edd() { env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$WORK/epochs.json" "$@" >>"$WORK/dd.log" 2>&1; }
  timeout 120 rbd -c "$conf" export --no-progress rbd/epochs "$WORK/ep/image.bin" >>"$WORK/export.log" 2>&1
  prefix() { python3 "$ROOT/tests/spdk/epochs.py" check "$1" "$WORK/ep" 32 ${2:-}; }
  out=$(prefix "$WORK/ep/image.bin"); rc=$?
  check "after kill -9 the image (rbd export) is a prefix of FLUSH epochs: $out" [ $rc -eq 0 ]
  edd --ib PCE --of "$WORK/ep/served.bin" --bs 65536 --count 512
  out=$(prefix "$WORK/ep/served.bin" --flushed-kept); rc=$?
  check "the restarted pcache serves every epoch whose FLUSH completed: $out" [ $rc -eq 0 ]
  start_app tgt "$sock" "$WORK/tgt-ep.log" "$SPDK_DIR/bin/spdk_tgt" "${APP_ARGS[@]}" -m 0x1 --json "$WORK/epochs.json" \
    || { fail "spdk_tgt restarts over the epochs image"; finish; exit; }
  check "flush RPC" bash -c 'timeout 120 python3 "$1" "$2" bdev_pcache_flush "{\"name\":\"PCE\"}" >/dev/null' \
    _ "$ROOT/tests/spdk/jsonrpc.py" "$sock"
  check "delete PCE with flush" quiet jr "$sock" bdev_pcache_delete '{"name":"PCE","flush":true}'
  stop_app tgt "$sock"
  timeout 120 rbd -c "$conf" export --no-progress rbd/epochs "$WORK/ep/image2.bin" >>"$WORK/export.log" 2>&1
  check "flushed, the image equals what the restarted pcache served" \
    cmp -s "$WORK/ep/served.bin" <(head -c $((32 << 20)) "$WORK/ep/image2.bin")
  rm -f "$SHM.pmeme"
fi

# 6. The OSD goes away for 6 s while bdevperf writes through pcache: no
#    write fails, once the OSD is back a flush completes, and then the
#    image holds what pcache serves.
bsock=$WORK/bp.sock
start_app bp "$bsock" "$WORK/bp.log" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x1 -z --json "$WORK/stack.json" \
  -T PC0 -q 32 -o 4096 -w randwrite -t 20 || { fail "bdevperf over RBD starts"; finish; exit; }
timeout 120 python3 "$ROOT/tests/spdk/jsonrpc.py" "$bsock" perform_tests >"$WORK/perform.out" 2>&1 &
perform=$!
sleep 3
"$ROOT/scripts/ceph-cluster.sh" osd-stop "$CEPH"
check "the OSD is stopped while writes go on" bash -c '! kill -0 "$(cat "$1")" 2>/dev/null' _ "$CEPH/run/osd.0.pid"
sleep 6
"$ROOT/scripts/ceph-cluster.sh" osd-start "$CEPH"
wait "$perform"
check "bdevperf's 20 s of writes end without an error, the OSD away for 6 s of them" \
  grep -q '"io_failed": 0' "$WORK/perform.out"
check "flush RPC once the OSD is back" bash -c 'timeout 120 python3 "$1" "$2" bdev_pcache_flush "{\"name\":\"PC0\"}" >/dev/null' \
  _ "$ROOT/tests/spdk/jsonrpc.py" "$bsock"
stop_app bp "$bsock"
check "the OSD is running again" bash -c 'kill -0 "$(cat "$1")"' _ "$CEPH/run/osd.0.pid"
dd_read "$WORK/s6.bin" 0 $((IMAGE_MIB << 8))
image_part "$WORK/i6.bin" 0 $((IMAGE_MIB << 20))
check "flushed after the OSD's absence, the image equals what pcache serves" cmp -s "$WORK/s6.bin" "$WORK/i6.bin"
rm -f "$WORK/s6.bin" "$WORK/i6.bin" "$WORK/image.bin"

# 7. Ownership: the image records the pcache whose cache may hold its data
#    (image metadata pcache.owner); a second pcache over the same image is
#    refused, naming it, until the first is deleted with flush.
owner() { rbd -c "$conf" image-meta get rbd/img0 pcache.owner 2>/dev/null; }
owned() { [ -n "$(owner)" ]; }
not_owned() { [ -z "$(owner)" ]; }
owner_has() { owner | grep -q "$1"; }
no_bdev() { ! jr "$sock" bdev_get_bdevs "{\"name\":\"$1\"}" >/dev/null 2>&1; }
dd_write "$WORK/p2.bin" 2048
check "spdk_dd left dirty data in PC0 and exited: the image stays owned" owned
start_app tgt "$sock" "$WORK/tgt4.log" "$SPDK_DIR/bin/spdk_tgt" "${APP_ARGS[@]}" -m 0x1 --json "$WORK/stack.json" \
  || { fail "spdk_tgt restarts"; finish; exit; }
until_ok 10 q bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['state']" >/dev/null
uuid0=$(q bdev_get_bdevs '{"name":"PC0"}' "r[0]['uuid']")
check "the owner key names PC0's cache ($uuid0)" owner_has "uuid=$uuid0 name=PC0 cache_bdev=Pmem0"
jr "$sock" bdev_rbd_create '{"name":"Rbd1","pool_name":"rbd","rbd_name":"img0","block_size":4096,"cluster_name":"ceph0"}' >/dev/null
jr "$sock" bdev_pmem_create "{\"name\":\"Pmem1\",\"path\":\"$SHM.pmem1\",\"size\":$((64 << 20))}" >/dev/null
jr "$sock" bdev_pcache_create '{"name":"PC1","cache_bdev":"Pmem1","base_bdev":"Rbd1"}' >"$WORK/pc1.out" 2>&1
check "a second pcache over the image is refused, naming the owner" \
  grep -q "RBD image rbd/img0 belongs to another pcache (uuid=$uuid0" "$WORK/pc1.out"
check "the refused pcache does not exist" no_bdev PC1
check "delete PC0 with flush" jr "$sock" bdev_pcache_delete '{"name":"PC0","flush":true}'
check "delete with flush released the image" not_owned
check "now the second pcache takes the image" jr "$sock" bdev_pcache_create '{"name":"PC1","cache_bdev":"Pmem1","base_bdev":"Rbd1"}'
uuid1=$(q bdev_get_bdevs '{"name":"PC1"}' "r[0]['uuid']")
check "the owner key names PC1's cache" owner_has "uuid=$uuid1 name=PC1"
stop_app tgt "$sock"
check "PC1 went away clean (app stopped): the image is released" not_owned
rm -f "$SHM.pmem1"

for l in "$WORK"/tgt*.log "$WORK/bp.log"; do check "no crash in $(basename "$l")" no_crash "$l"; done

finish
