#!/usr/bin/env bash
# Restart: kill -9 an SPDK app in the middle of writes through pcache, start
# again from the config it saved, and check that what was written and flushed
# before the kill reads back exactly.
source "$(dirname "$0")/lib.sh"
DD=$SPDK_DIR/bin/spdk_dd
BP=$SPDK_DIR/bin/bdevperf

truncate -s $((512 << 20)) "$WORK/base.img"
head -c $((16 << 20)) /dev/urandom >"$WORK/p1.bin"
head -c $((8 << 20)) /dev/urandom >"$WORK/p2.bin"
# P3 (8 MiB) and P4 (9 MiB): what the killed process's writes go over.
head -c $((17 << 20)) /dev/urandom >"$WORK/p34.bin"

# 1. Build the stack over RPC in spdk_tgt and save its config.
sock=$WORK/t1.sock
start_app t1 "$sock" "$WORK/t1.log" "$SPDK_DIR/bin/spdk_tgt" "${APP_ARGS[@]}" -m 0x1 || { fail "app start"; finish; exit; }
ok=1
jsonrpc "$sock" bdev_pmem_create "{\"name\":\"Pmem0\",\"path\":\"$SHM.pmem\",\"size\":$((256 << 20))}" >/dev/null || ok=0
jsonrpc "$sock" bdev_aio_create "{\"name\":\"Base0\",\"filename\":\"$WORK/base.img\",\"block_size\":4096}" >/dev/null || ok=0
jsonrpc "$sock" bdev_pcache_create '{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Base0","gc_percent":60}' >/dev/null || ok=0
jsonrpc "$sock" bdev_split_create '{"base_bdev":"PC0","split_count":2}' >/dev/null || ok=0
check "stack created over RPC (pmem, aio, pcache, split)" [ $ok -eq 1 ]
"${RPC_PY[@]}" -s "$sock" save_config >"$WORK/saved.json"
check "save_config lists bdev_pcache_create before its base bdev" python3 - "$WORK/saved.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
bdev = next(s for s in cfg["subsystems"] if s["subsystem"] == "bdev")["config"]
m = [c["method"] for c in bdev]
# (bdev_split_create may come first: a split waits for its base bdev.)
sys.exit(0 if m.index("bdev_pcache_create") < m.index("bdev_aio_create") else 1)
PY
stop_app t1 "$sock"

# 2. Write P1 to the first half with spdk_dd, in its own process.
env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$WORK/saved.json" --if "$WORK/p1.bin" --ob PC0p0 --bs 65536 \
  >"$WORK/dd1.log" 2>&1
check "spdk_dd wrote 16 MiB into PC0p0" [ $? -eq 0 ]

# 3. From the saved config: P2 into the start of the second half, P3 and P4
#    after it; then, in the process that is killed, random writes (bdevperf
#    writes zeros) over P3 (2048 blocks: at tens of thousands of writes a
#    second, every block is written many times before the flush RPC 3 s in),
#    over P4, and over the rest of the half past them (bdevperf jobs with
#    offset and length, in blocks); a flush RPC; kill -9 a second later.
env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$WORK/saved.json" --if "$WORK/p2.bin" --ob PC0p1 --bs 65536 \
  >"$WORK/dd2.log" 2>&1
check "spdk_dd wrote 8 MiB into PC0p1" [ $? -eq 0 ]
env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$WORK/saved.json" --if "$WORK/p34.bin" --ob PC0p1 --bs 4096 \
  --seek 2048 >"$WORK/dd34.log" 2>&1
check "spdk_dd wrote P3 and P4 (17 MiB) into PC0p1 after P2" [ $? -eq 0 ]
# The same data straight onto the base (as writeback would put it), so that
# only the killed process's writes can make P3's blocks zeros there.
dd if="$WORK/p34.bin" of="$WORK/base.img" bs=4096 seek=$((65536 + 2048)) conv=notrunc status=none
sock=$WORK/t2.sock
cat >"$WORK/past-p2.conf" <<'CONF'
[p3]
filename=PC0p1
rw=randwrite
bs=4096
iodepth=8
offset=2048
length=2048
[p4]
filename=PC0p1
rw=randwrite
bs=4096
iodepth=8
offset=4096
length=2304
[rest]
filename=PC0p1
rw=randwrite
bs=4096
iodepth=16
offset=6400
length=59136
CONF
start_app t2 "$sock" "$WORK/t2.log" "$BP" "${APP_ARGS[@]}" -m 0x1 -z --json "$WORK/saved.json" \
  -j "$WORK/past-p2.conf" -t 60 || { fail "app restart"; finish; exit; }
# One kset per writeback batch, each ending with a base flush: writeback
# trails the writes far behind, so only a flush RPC that waits for it finds
# them all on the base.
check "set_options: writeback one kset per batch" \
  jsonrpc "$sock" bdev_pcache_set_options '{"name":"PC0","writeback_batch_bytes":1}'
jsonrpc "$sock" perform_tests >/dev/null 2>&1 &
sleep 3
check "bdev_pcache_flush returns true while writes go on" jsonrpc "$sock" bdev_pcache_flush '{"name":"PC0"}'
# The base as the flush RPC left it (the writes go on meanwhile).
dd if="$WORK/base.img" of="$WORK/p3-at-flush.img" bs=4096 skip=$((65536 + 2048)) count=2048 status=none
stats=$(jsonrpc "$sock" bdev_pcache_get_stats '{"name":"PC0"}')
writes=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])[0]['write_ops'])" "$stats")
check "writes were in progress at the kill ($writes so far)" [ "$writes" -gt 1000 ]
sleep 1
kill -9 "$PID_t2"; wait "$PID_t2" 2>/dev/null; PID_t2=
# Every block of P3 was written (zeros) before the flush RPC returned: the
# base holds zeros there now.
zeros_on_base() {
  python3 - "$WORK/p3-at-flush.img" 0 $((2048 << 12)) <<'PY'
import sys
f = open(sys.argv[1], "rb"); f.seek(int(sys.argv[2])); got = f.read(int(sys.argv[3]))
bad = [i // 4096 for i in range(0, len(got), 4096) if any(got[i:i + 4096])]
if bad:
    print(f"    {len(bad)} of 2048 blocks of P3 are not zeros on the base, first {bad[:5]}")
sys.exit(1 if bad else 0)
PY
}
check "the killed process's writes before the flush RPC were on the base when it returned (P3: 2048 blocks of zeros)" zeros_on_base

# 4. Start again from the saved config and read back.
env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$WORK/saved.json" --ib PC0p0 --of "$WORK/p1.out" --bs 65536 \
  --count 256 >"$WORK/dd3.log" 2>&1
check "spdk_dd read PC0p0 back after the kill" [ $? -eq 0 ]
check "the cache was loaded and replayed, not formatted" grep -q "PC0: loaded Pmem0 and replayed" "$WORK/dd3.log"
check "P1 (written before the flush) reads back exactly" cmp -s "$WORK/p1.bin" "$WORK/p1.out"
# Nothing wrote over P2 after the flush RPC, which returned only once every
# write before it was on the base: the base holds all of P2, block for block,
# and so does PC0 after the kill.
check "P2 reached the base device by the flush RPC: all 2048 blocks" python3 - "$WORK/base.img" "$WORK/p2.bin" <<'PY'
import sys
base = open(sys.argv[1], "rb")
half = 256 << 20
base.seek(half)
got = base.read(8 << 20)
want = open(sys.argv[2], "rb").read()
bad = [i // 4096 for i in range(0, len(want), 4096) if got[i:i + 4096] != want[i:i + 4096]]
if bad:
    print(f"    {len(bad)} of 2048 blocks of P2 are not on the base, first {bad[:5]}")
sys.exit(1 if bad else 0)
PY
env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$WORK/saved.json" --ib PC0p1 --of "$WORK/p2.out" --bs 65536 \
  --count 128 >"$WORK/dd4.log" 2>&1
check "spdk_dd read P2 back through PC0p1 after the kill" [ $? -eq 0 ]
check "P2 (written and flushed before the kill) reads back exactly" cmp -s "$WORK/p2.bin" "$WORK/p2.out"
env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$WORK/saved.json" --ib PC0p1 --of "$WORK/p34.out" --bs 4096 \
  --skip 2048 --count 4352 >"$WORK/dd5.log" 2>&1
check "spdk_dd read P3 and P4 back through PC0p1 after the kill" [ $? -eq 0 ]
# P3: written before the flush, and only with zeros after: zeros, all of it.
# P4: written by the killed process, flushed or not: each block is zeros
# (a write of it survived) or P4 as it was; nothing else.
killed_writes() {
  python3 - "$WORK/p34.out" "$WORK/p34.bin" <<'PY'
import sys
got, was = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
blk = [(got[i:i + 4096], was[i:i + 4096]) for i in range(0, len(was), 4096)]
p3_bad = [i for i, (g, _) in enumerate(blk[:2048]) if any(g)]
p4_bad = [i for i, (g, w) in enumerate(blk[2048:]) if any(g) and g != w]
zeros = sum(1 for g, _ in blk[2048:] if not any(g))
print(f"P4: {zeros} of 2304 blocks hold the killed process's writes")
if p3_bad:
    print(f"    P3 blocks not zeros after the kill: {len(p3_bad)}, first {p3_bad[:5]}")
if p4_bad:
    print(f"    P4 blocks holding data never written there: {len(p4_bad)}, first {p4_bad[:5]}")
sys.exit(1 if p3_bad or p4_bad or len(got) != len(was) else 0)
PY
}
check "the killed process's flushed writes read back (P3 all zeros) and nothing reads back as data never written (P4): $(killed_writes | head -1)" killed_writes

# 5. The restarted stack serves I/O.
env LD_PRELOAD="$MODULE" "$BP" "${APP_ARGS[@]}" -m 0x1 --json "$WORK/saved.json" -T PC0p1 -q 32 -o 4096 -w verify -t 2 \
  >"$WORK/bp3.log" 2>&1
check "bdevperf verify on the restarted stack" [ $? -eq 0 ]

finish
