#!/usr/bin/env bash
# Stacking on a pcache: an lvol store (two lvols) and a GPT partition table on
# PC0. After writeback the base carries their metadata too, so at every start
# the lvol and GPT modules must find it on PC0, never on the base, and
# whatever was written through them before a flush must read back exactly:
# after a clean stop, after bdev_pcache_flush, after kill -9 mid-write, with
# the config's lines in other orders, and across hot-remove of either bdev.
source "$(dirname "$0")/lib.sh"
DD=$SPDK_DIR/bin/spdk_dd
BP=$SPDK_DIR/bin/bdevperf
TGT=$SPDK_DIR/bin/spdk_tgt
MiB=$((1 << 20))


# owners: one line per bdev that is claimed or sits on another:
# "NAME claim_type" for Base0/Pmem0/PC0, "lvol NAME on BASE" for each lvol,
# "part NAME" for GPT partitions.
owners() {
  python3 - "$sock" <<'PY'
import sys, jsonrpc
sock = sys.argv[1]
bdevs = jsonrpc.call(sock, "bdev_get_bdevs", timeout=10)["result"]
for b in bdevs:
    if b["name"] in ("Base0", "Pmem0", "PC0"):
        print(b["name"], b.get("claim_type", "unclaimed"))
lvs = {s["uuid"]: s["base_bdev"] for s in jsonrpc.call(sock, "bdev_lvol_get_lvstores", timeout=10)["result"]}
for b in bdevs:
    lv = b.get("driver_specific", {}).get("lvol")
    if lv:
        print("lvol", b["aliases"][0], "on", lvs.get(lv["lvol_store_uuid"], "?"))
    if b["product_name"] == "GPT Disk":
        print("part", b["name"])
PY
}

# stack_ok: the stack is as built: PC0 online over a base claimed exclusively
# (by pcache), the lvols on PC0, no lvol or partition on the base.
stack_ok() {
  local o; o=$(owners)
  grep -qx "Base0 exclusive_write" <<<"$o" &&
    grep -qx "lvol lvs0/lv1 on PC0" <<<"$o" && grep -qx "lvol lvs0/lv2 on PC0" <<<"$o" &&
    ! grep -q "on Base0" <<<"$o" && ! grep -q "^part Base0" <<<"$o"
}

# dd_read BDEV OUT BLOCKS: reads a bdev with spdk_dd from the saved config.
dd_read() {
  env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$CFG" --ib "$1" --of "$2" --bs 65536 \
    --count $(($3 * 4096 / 65536)) >"$WORK/dd.log" 2>&1 && no_crash "$WORK/dd.log"
}
# dd_write FILE BDEV: writes FILE into BDEV with spdk_dd from the saved config.
dd_write() {
  env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$CFG" --if "$1" --ob "$2" --bs 65536 >"$WORK/dd.log" 2>&1
}
# reads_back BDEV FILE: the first size-of-FILE bytes of BDEV are FILE's.
reads_back() {
  local blocks=$(($(stat -c %s "$2") / 4096))
  dd_read "$1" "$WORK/readback.bin" "$blocks" && cmp -s "$2" "$WORK/readback.bin"
}
# start_tgt NAME CONFIG: spdk_tgt from a config; sets $sock and $log.
start_tgt() {
  sock=$WORK/$1.sock
  log=$WORK/$1.log
  start_app "$1" "$sock" "$log" "$TGT" "${APP_ARGS[@]}" -m 0x1 --json "$2"
}

truncate -s $((512 * MiB)) "$WORK/base.img"
head -c $((8 * MiB)) /dev/urandom >"$WORK/d1.bin"
head -c $((8 * MiB)) /dev/urandom >"$WORK/d2.bin"
head -c $((4 * MiB)) /dev/urandom >"$WORK/d3.bin"

echo "# lvol store on PC0, built over RPC"
start_app t0 "$WORK/t0.sock" "$WORK/t0.log" "$TGT" "${APP_ARGS[@]}" -m 0x1 || { fail "spdk_tgt start"; finish; exit; }
sock=$WORK/t0.sock
ok=1
jr "$sock" bdev_pmem_create "{\"name\":\"Pmem0\",\"path\":\"$SHM.pmem\",\"size\":$((256 * MiB))}" >/dev/null || ok=0
jr "$sock" bdev_aio_create "{\"name\":\"Base0\",\"filename\":\"$WORK/base.img\",\"block_size\":4096}" >/dev/null || ok=0
jr "$sock" bdev_pcache_create '{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Base0"}' >/dev/null || ok=0
jr "$sock" bdev_lvol_create_lvstore '{"bdev_name":"PC0","lvs_name":"lvs0","cluster_sz":1048576}' >/dev/null || ok=0
jr "$sock" bdev_lvol_create '{"lvs_name":"lvs0","lvol_name":"lv1","size_in_mib":64}' >/dev/null || ok=0
jr "$sock" bdev_lvol_create '{"lvs_name":"lvs0","lvol_name":"lv2","size_in_mib":64,"thin_provision":true}' >/dev/null || ok=0
check "pmem, aio base, PC0, lvstore lvs0 with lv1 and lv2 (thin) created over RPC" [ $ok -eq 1 ]
check "the lvols sit on PC0 and pcache claims Base0" stack_ok
CFG=$WORK/saved.json
spdk save_config >"$CFG"
check "save_config lists bdev_pcache_create before the base bdev" python3 - "$CFG" <<'PY'
import json, sys
bdev = next(s for s in json.load(open(sys.argv[1]))["subsystems"] if s["subsystem"] == "bdev")["config"]
m = [c["method"] for c in bdev]
sys.exit(0 if m.index("bdev_pcache_create") < m.index("bdev_aio_create") else 1)
PY
stop_app t0 "$sock"

echo "# data through the lvols, a clean stop, a restart"
check "spdk_dd wrote 8 MiB into lvs0/lv1" dd_write "$WORK/d1.bin" lvs0/lv1
check "spdk_dd wrote 8 MiB into lvs0/lv2" dd_write "$WORK/d2.bin" lvs0/lv2
start_tgt t1 "$CFG" || { fail "restart from save_config"; finish; exit; }
check "after a clean stop the target starts from save_config" true
check "after a clean stop: lvols on PC0, Base0 claimed by pcache only" stack_ok
check "nothing else tried to claim Base0" bash -c "! grep -q 'Base0 already claimed' '$log'"
echo "# bdev_pcache_flush: the lvstore's metadata reaches the base"
check "bdev_pcache_flush PC0" jr "$sock" bdev_pcache_flush '{"name":"PC0"}'
check "the base now carries the blobstore superblock (SPDKBLOB)" \
  bash -c "head -c 4096 '$WORK/base.img' | grep -q SPDKBLOB"
stop_app t1 "$sock"
start_tgt t2 "$CFG" || { fail "restart after a flush"; finish; exit; }
check "after bdev_pcache_flush and a stop: lvols on PC0, Base0 claimed by pcache only" stack_ok
check "no module found an lvstore on Base0" bash -c "! grep -q 'Base0 already claimed' '$log'"
stop_app t2 "$sock"
check "lvs0/lv1 reads back exactly" reads_back lvs0/lv1 "$WORK/d1.bin"
check "lvs0/lv2 reads back exactly" reads_back lvs0/lv2 "$WORK/d2.bin"

echo "# kill -9 mid-write"
# d3 goes to lv1 and is flushed; then random writes to lv2 until kill -9.
check "spdk_dd wrote 4 MiB into lvs0/lv1" dd_write "$WORK/d3.bin" lvs0/lv1
head -c $((4 * MiB)) "$WORK/d3.bin" >"$WORK/lv1.want"
tail -c $((4 * MiB)) "$WORK/d1.bin" >>"$WORK/lv1.want"
sock=$WORK/bp.sock
start_app bp "$sock" "$WORK/bp.log" "$BP" "${APP_ARGS[@]}" -m 0x1 -z --json "$CFG" -T lvs0/lv2 -q 32 -o 4096 \
  -w randwrite -t 60 || { fail "bdevperf start"; finish; exit; }
jr "$sock" perform_tests >/dev/null 2>&1 &
sleep 1
check "bdev_pcache_flush while lv2 is being written" jr "$sock" bdev_pcache_flush '{"name":"PC0"}'
sleep 1
writes=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])[0]['write_ops'])" "$(jr "$sock" bdev_pcache_get_stats '{"name":"PC0"}')")
check "writes were in progress at the kill ($writes so far)" [ "${writes:-0}" -gt 1000 ]
kill -9 "$PID_bp"; wait "$PID_bp" 2>/dev/null; PID_bp=
start_tgt t3 "$CFG" || { fail "restart after kill -9"; finish; exit; }
check "after kill -9: lvols on PC0, Base0 claimed by pcache only" stack_ok
check "PC0 was loaded and replayed after the kill" grep -q "PC0: loaded Pmem0 and replayed" "$log"
stop_app t3 "$sock"
check "lvs0/lv1 (written and flushed before the kill) reads back exactly" reads_back lvs0/lv1 "$WORK/lv1.want"

echo "# the config's lines in other orders"
# reorder NAME METHOD...: the saved config with its bdev lines in this order
# of methods (others keep their place after them).
reorder() {
  python3 - "$CFG" "$WORK/$1.json" "${@:2}" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
order = sys.argv[3:]
for s in cfg["subsystems"]:
    if s["subsystem"] == "bdev":
        c = s["config"]
        picked = [e for m in order for e in c if e["method"] == m]
        s["config"] = picked + [e for e in c if e["method"] not in order]
json.dump(cfg, open(sys.argv[2], "w"))
PY
}
for order in "bdev_pcache_create bdev_aio_create bdev_pmem_create" \
             "bdev_pmem_create bdev_aio_create bdev_pcache_create" \
             "bdev_pcache_create bdev_pmem_create bdev_aio_create"; do
  name=$(tr ' ' '_' <<<"$order" | sed 's/bdev_//g; s/_create//g')
  reorder "$name" $order
  if start_tgt "o_$name" "$WORK/$name.json"; then
    check "config order [$order]: lvols on PC0, Base0 claimed by pcache only" stack_ok
    stop_app "o_$name" "$sock"
  else
    fail "config order [$order]: the target starts"
  fi
done
# Base first and pcache last: the lvol module examines Base0 before pcache
# knows it. pcache cannot serve then: it must say so, and serve nothing.
# (On copies of both devices: the lvol module writes to the base it holds.)
reorder late bdev_aio_create bdev_pmem_create bdev_pcache_create
cp "$SHM.pmem" "$SHM.late.pmem"; cp "$WORK/base.img" "$WORK/late.img"
sed -i "s|$SHM.pmem|$SHM.late.pmem|; s|$WORK/base.img|$WORK/late.img|" "$WORK/late.json"
if start_tgt late "$WORK/late.json"; then
  check "base listed first, pcache last: the target still starts" true
  st=$(jr "$sock" bdev_pcache_get_stats '{"name":"PC0"}')
  check "get_stats shows PC0 blocked, naming module lvol" python3 -c "
import json,sys; s=json.loads(sys.argv[1])[0]; sys.exit(0 if s['state']=='blocked' and 'module lvol' in s['error'] else 1)" "$st"
  check "PC0 is not registered (nothing served from the stale base)" bash -c "[[ \$(timeout 10 python3 '$ROOT/tests/spdk/jsonrpc.py' '$sock' bdev_get_bdevs '{\"name\":\"PC0\"}') == ERROR* ]]"
  check "the log names module lvol and says to list bdev_pcache_create before the base" \
    grep -q "base_bdev Base0 is in use: claimed by module lvol.*lists bdev_pcache_create" "$log"
  stop_app late "$sock"
  rm -f "$SHM.late.pmem" "$WORK/late.img"
else
  fail "base listed first, pcache last: the target starts"
fi

echo "# hot-remove and return under the lvol store"
start_tgt hr "$CFG" || { fail "start for hot-remove"; finish; exit; }
check "bdev_aio_delete Base0 under PC0 and lvs0" jr "$sock" bdev_aio_delete '{"name":"Base0"}'
no_lvols() { ! owners | grep -q '^lvol'; }
check "the lvols go away with PC0" until_ok 10 no_lvols
check "bdev_aio_create Base0 again" jr "$sock" bdev_aio_create "{\"name\":\"Base0\",\"filename\":\"$WORK/base.img\",\"block_size\":4096}"
check "after the base returns: lvols on PC0, Base0 claimed by pcache only" until_ok 10 stack_ok
check "bdev_pmem_delete Pmem0 under PC0 and lvs0" jr "$sock" bdev_pmem_delete '{"name":"Pmem0"}'
holds_base() {
  jr "$sock" bdev_pcache_get_stats '{"name":"PC0"}' | python3 -c "
import json,sys; s=json.load(sys.stdin)[0]; sys.exit(0 if s['state']=='waiting for its bdevs' and 'Base0' in s['held'] else 1)"
}
check "PC0 waits for its bdevs and holds Base0 meanwhile" until_ok 10 holds_base
base_claimed() { owners | grep -qx "Base0 exclusive_write"; }
check "meanwhile Base0 stays claimed (no module examines it)" base_claimed
check "bdev_pmem_create Pmem0 again" jr "$sock" bdev_pmem_create "{\"name\":\"Pmem0\",\"path\":\"$SHM.pmem\"}"
check "after the pmem returns: lvols on PC0, Base0 claimed by pcache only" until_ok 10 stack_ok
check "no crash in the target" no_crash "$log"
stop_app hr "$sock"
check "lvs0/lv1 reads back exactly after both hot-removes" reads_back lvs0/lv1 "$WORK/lv1.want"

echo "# GPT on PC0"
# On fresh devices (the lvol store keeps PC0 above): the saved config with other files.
truncate -s $((512 * MiB)) "$WORK/gpt.img"
python3 - "$CFG" "$WORK/gpt.json" "$SHM.gpt.pmem" "$WORK/gpt.img" $((256 * MiB)) <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
for s in cfg["subsystems"]:
    for e in s["config"] or []:
        p = e.get("params", {})
        if e["method"] == "bdev_pmem_create":
            p["path"], p["size"] = sys.argv[3], int(sys.argv[5])
        if e["method"] == "bdev_aio_create":
            p["filename"] = sys.argv[4]
json.dump(cfg, open(sys.argv[2], "w"))
PY
CFG=$WORK/gpt.json
# A GPT with one SPDK partition, written through PC0 and flushed to the base.
python3 - "$WORK/gpt.bin" $((512 * MiB / 4096)) <<'PY'
import struct, sys, uuid, zlib
out, blocks = sys.argv[1], int(sys.argv[2])
bs = 4096
img = bytearray(8 * bs)
# Protective MBR.
img[446:462] = struct.pack("<B3sB3sII", 0, b"\0\x02\0", 0xEE, b"\xff\xff\xff", 1, min(blocks - 1, 0xFFFFFFFF))
img[510:512] = b"\x55\xaa"
part_type = uuid.UUID("6527994e-2c5a-4eec-9613-8f5944074e8b").bytes_le
entry = part_type + uuid.uuid4().bytes_le + struct.pack("<QQQ", 8, blocks - 8, 0) + "pcache-part".encode("utf-16-le").ljust(72, b"\0")
entries = entry.ljust(128 * 128, b"\0")
img[2 * bs:2 * bs + len(entries)] = entries
hdr = struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, 1, blocks - 1, 6, blocks - 7,
                  uuid.uuid4().bytes_le, 2, 128, 128, zlib.crc32(entries))
hdr = hdr[:16] + struct.pack("<I", zlib.crc32(hdr)) + hdr[20:]
img[bs:bs + 92] = hdr
open(out, "wb").write(img)
PY
check "spdk_dd wrote a GPT into PC0" env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$CFG" --if "$WORK/gpt.bin" --ob PC0 --bs 4096
check "spdk_dd wrote 4 MiB into the partition PC0p1" dd_write "$WORK/d3.bin" PC0p1
start_tgt g1 "$CFG" || { fail "start with a GPT on PC0"; finish; exit; }
has_part() { owners | grep -qx 'part PC0p1'; }
check "the partition PC0p1 appears on PC0" until_ok 5 has_part
check "bdev_pcache_flush puts the GPT on the base" jr "$sock" bdev_pcache_flush '{"name":"PC0"}'
check "the base now carries the GPT header" bash -c "dd if='$WORK/gpt.img' bs=4096 skip=1 count=1 2>/dev/null | grep -q 'EFI PART'"
stop_app g1 "$sock"
start_tgt g2 "$CFG" || { fail "restart with a GPT on the base"; finish; exit; }
o=$(owners)
part_ok() { grep -qx 'part PC0p1' <<<"$o" && ! grep -q 'part Base0' <<<"$o" && grep -qx 'Base0 exclusive_write' <<<"$o"; }
check "after the restart PC0p1 is on PC0 and no partition is on Base0" part_ok
stop_app g2 "$sock"
check "PC0p1 reads back exactly" reads_back PC0p1 "$WORK/d3.bin"
# kill -9 mid-write to the partition, then two restarts: from the saved
# config, and with bdev_pcache_create first and the base before the pmem bdev.
sock=$WORK/gbp.sock
start_app gbp "$sock" "$WORK/gbp.log" "$BP" "${APP_ARGS[@]}" -m 0x1 -z --json "$CFG" -T PC0p1 -q 32 -o 4096 \
  -w randwrite -t 60 || { fail "bdevperf start on PC0p1"; finish; exit; }
jr "$sock" perform_tests >/dev/null 2>&1 &
sleep 2
kill -9 "$PID_gbp"; wait "$PID_gbp" 2>/dev/null; PID_gbp=
start_tgt g3 "$CFG" || { fail "restart after kill -9 with a GPT"; finish; exit; }
o=$(owners)
check "after kill -9: PC0p1 is on PC0 and no partition is on Base0" part_ok
stop_app g3 "$sock"
reorder gpt_order bdev_pcache_create bdev_aio_create bdev_pmem_create
start_tgt g4 "$WORK/gpt_order.json" || { fail "start with the GPT config reordered"; finish; exit; }
o=$(owners)
check "config order [pcache aio pmem]: PC0p1 is on PC0 and no partition is on Base0" part_ok
stop_app g4 "$sock"

finish
