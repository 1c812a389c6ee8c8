#!/usr/bin/env bash
# pcache over a RAID0 of two AIO bases (bdev_raid, 64 KiB strips): the stack
# comes back from its saved config after a clean stop and after kill -9 in
# the middle of writes, what was written and flushed reads back, and after a
# flush the two member files hold it striped as RAID0 lays it out.
source "$(dirname "$0")/lib.sh"
DD=$SPDK_DIR/bin/spdk_dd
BP=$SPDK_DIR/bin/bdevperf
MiB=$((1 << 20))
STRIP_KIB=64

if ! ls "$SPDK_DIR"/lib/libspdk_bdev_raid.* >/dev/null 2>&1; then
  echo "skipped: SPDK at $SPDK_DIR has no bdev_raid module"
  exit 77
fi

truncate -s $((128 * MiB)) "$WORK/m0.img" "$WORK/m1.img"
head -c $((16 * MiB)) /dev/urandom >"$WORK/p1.bin"

# 1. The stack over RPC in spdk_tgt; its saved config is what every later
#    process starts from.
sock=$WORK/tgt.sock
start_app t1 "$sock" "$WORK/t1.log" "$SPDK_DIR/bin/spdk_tgt" "${APP_ARGS[@]}" -m 0x1 || { fail "spdk_tgt start"; finish; exit; }
ok=1
jr "$sock" bdev_aio_create "{\"name\":\"M0\",\"filename\":\"$WORK/m0.img\",\"block_size\":4096}" >/dev/null || ok=0
jr "$sock" bdev_aio_create "{\"name\":\"M1\",\"filename\":\"$WORK/m1.img\",\"block_size\":4096}" >/dev/null || ok=0
jr "$sock" bdev_raid_create "{\"name\":\"Raid0\",\"raid_level\":\"raid0\",\"strip_size_kb\":$STRIP_KIB,\"base_bdevs\":[\"M0\",\"M1\"]}" \
  >/dev/null || ok=0
jr "$sock" bdev_pmem_create "{\"name\":\"Pmem0\",\"path\":\"$SHM.pmem\",\"size\":$((128 * MiB))}" >/dev/null || ok=0
jr "$sock" bdev_pcache_create '{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Raid0"}' >/dev/null || ok=0
check "stack created over RPC (two AIO members, RAID0, pmem, pcache)" [ $ok -eq 1 ]
check "PC0 has the RAID's size (256 MiB)" \
  [ "$(q bdev_get_bdevs '{"name":"PC0"}' "r[0]['num_blocks'] * r[0]['block_size']")" = $((256 * MiB)) ]
check "Raid0 is claimed by pcache" [ "$(q bdev_get_bdevs '{"name":"Raid0"}' "r[0]['claim_type']")" = exclusive_write ]
CFG=$WORK/saved.json
spdk save_config >"$CFG"
stop_app t1 "$sock"

# dd_write FILE SEEK_BLOCKS / dd_read OUT SKIP_BLOCKS COUNT_BLOCKS: PC0 with
# spdk_dd from the saved config, in a process of its own.
dd_write() {
  env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$CFG" --if "$1" --ob PC0 --bs 65536 --seek $(($2 / 16)) \
    >>"$WORK/dd.log" 2>&1
}
dd_read() {
  env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$CFG" --ib PC0 --of "$1" --bs 4096 --skip "$2" \
    --count "$3" >>"$WORK/dd.log" 2>&1
}
# striped_ok FILE OFFSET: FILE's bytes are at OFFSET of the RAID0 over the
# two member files (strip i of the array is strip i/2 of member i%2).
striped_ok() {
  python3 - "$1" "$2" "$WORK/m0.img" "$WORK/m1.img" "$((STRIP_KIB * 1024))" <<'PY'
import sys
data, off, strip = open(sys.argv[1], "rb").read(), int(sys.argv[2]), int(sys.argv[5])
members = [open(p, "rb") for p in sys.argv[3:5]]
for at in range(0, len(data), strip):
    i = (off + at) // strip
    m = members[i % 2]
    m.seek((i // 2) * strip)
    if m.read(strip) != data[at:at + strip]:
        sys.exit(f"strip {i} differs")
PY
}

# 2. P1 through pcache; back after a clean stop.
dd_write "$WORK/p1.bin" 0
check "spdk_dd wrote 16 MiB into PC0 over Raid0" [ $? -eq 0 ]
dd_read "$WORK/r1.bin" 0 4096
check "P1 reads back after a clean stop" cmp -s "$WORK/p1.bin" "$WORK/r1.bin"

# 3. kill -9 in the middle of random writes past P1 (bdevperf, its own
#    process), then P1 reads back and a flush puts it on the members striped.
cat >"$WORK/past.conf" <<CONF
[past]
filename=PC0
rw=randwrite
bs=4096
iodepth=32
offset=$((8192))
length=$((32768))
CONF
env LD_PRELOAD="$MODULE" "$BP" "${APP_ARGS[@]}" -m 0x1 --json "$CFG" -j "$WORK/past.conf" -t 60 >"$WORK/bp.log" 2>&1 &
bp=$!
sleep 5
check "bdevperf still writing when killed" kill -0 "$bp"
kill -9 "$bp"; wait "$bp" 2>/dev/null
dd_read "$WORK/r2.bin" 0 4096
check "after kill -9, P1 reads back" cmp -s "$WORK/p1.bin" "$WORK/r2.bin"
start_app t2 "$sock" "$WORK/t2.log" "$SPDK_DIR/bin/spdk_tgt" "${APP_ARGS[@]}" -m 0x1 --json "$CFG" \
  || { fail "spdk_tgt restarts from the saved config"; finish; exit; }
until_ok 10 q bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['state']" >/dev/null
check "flush RPC" flushed
stop_app t2 "$sock"
check "after the flush, the members hold P1 striped as RAID0" striped_ok "$WORK/p1.bin" 0
for l in "$WORK"/t*.log "$WORK/dd.log"; do check "no crash in $(basename "$l")" no_crash "$l"; done

finish
