#!/usr/bin/env bash
# Data CRC under a running target: a block of cached data is damaged on pmem
# while bdevperf holds the cache open. Reads of that block must fail and be
# counted (data_crc_errors), never return the damaged bytes; every other
# block still reads back as written.
source "$(dirname "$0")/lib.sh"

BLK=4096
BAD=100 # the block damaged
head -c $((16 << 20)) /dev/urandom >"$WORK/data.bin"
truncate -s $((16 << 20)) "$WORK/base.img"
rm -f "$SHM.pmem"
cat >"$WORK/crc.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"$SHM.pmem","size":$((128 << 20))}},
 {"method":"bdev_aio_create","params":{"name":"Base0","filename":"$WORK/base.img","block_size":4096}},
 {"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Base0",
   "data_crc":true,"seq_cutoff_bytes":0}}
]}]}
JSON
dd_app() { env LD_PRELOAD="$MODULE" "$SPDK_DIR/bin/spdk_dd" "${APP_ARGS[@]}" --json "$WORK/crc.json" "$@"; }

dd_app --if "$WORK/data.bin" --ob PC0 --bs $((1 << 20)) >"$WORK/dd-in.log" 2>&1
check "spdk_dd writes 16 MiB of random data into PC0 (data_crc on)" [ $? -eq 0 ]

sock=$WORK/bp.sock
log=$WORK/bp.log
start_app bp "$sock" "$log" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x1 -z --json "$WORK/crc.json" \
  -q 32 -o $BLK -w read -t 2 -f || { fail "bdevperf did not start"; finish; exit; }
# Damage one byte of block BAD where it sits on pmem (found by its contents),
# through the file the running target has mapped shared.
damage() {
  python3 - "$SHM.pmem" "$WORK/data.bin" $BAD $BLK <<'PY'
import sys
pmem, data, bad, blk = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
want = open(data, "rb").read()[bad * blk:(bad + 1) * blk]
with open(pmem, "r+b") as f:
    img = f.read()
    at = img.find(want)
    if at < 0 or img.find(want, at + 1) >= 0:
        sys.exit(1)
    f.seek(at + 123)
    f.write(bytes([img[at + 123] ^ 0x5a]))
PY
}
check "block $BAD's data found once on pmem and one byte of it damaged" damage
res=$(jsonrpc "$sock" perform_tests 2>&1)
failed=$(python3 -c "import json,sys; print(sum(j.get('io_failed', 0) for j in json.loads(sys.argv[1])['results']))" \
  "$res" 2>/dev/null)
check "reads of the damaged block fail (${failed:-?} failed/s)" [ "${failed:-0}" != 0 ]
st=$(jsonrpc "$sock" bdev_pcache_get_stats '{"name":"PC0"}')
crc_errs=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])[0]['data_crc_errors'])" "$st")
check "and are counted (data_crc_errors $crc_errs)" [ "${crc_errs:-0}" -gt 0 ]
stop_app bp "$sock"
check "bdevperf exits cleanly" [ $? -eq 0 ]
check "no panic or internal error in its log" no_crash "$log"

# Offline reads of the same cache (spdk_dd, after a restart): reads of the
# damaged data fail with a CRC error naming the cached extent (after the
# replay, every extent of the damaged key: which of its bytes are damaged is
# not known); spdk_dd itself goes on past failed reads, so the check is on
# what came out: block BAD is never the damaged bytes, and every block
# outside the extents reported damaged reads back as written.
dd_app --ib PC0 --of "$WORK/all.bin" --bs $BLK >"$WORK/dd-all.log" 2>&1
check "spdk_dd reads the bdev through" [ -s "$WORK/all.bin" ]
compare() {
  python3 - "$WORK/all.bin" "$WORK/data.bin" "$WORK/dd-all.log" $BAD $BLK <<'PY'
import re, sys
out, data, log = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read(), open(sys.argv[3], errors="replace").read()
bad, blk = int(sys.argv[4]), int(sys.argv[5])
damaged = bytearray(data[bad * blk:(bad + 1) * blk]); damaged[123] ^= 0x5a
if out[bad * blk:(bad + 1) * blk] == bytes(damaged):
    sys.exit("the damaged bytes were returned")
spans = {(int(o), int(n)) for o, n in re.findall(r"CRC mismatch in cached data at offset (\d+) \(\+(\d+) bytes\)", log)}
if not any(o <= bad * blk < o + n for o, n in spans):
    sys.exit(f"no CRC error reported for block {bad}: {sorted(spans)}")
for b in range(len(data) // blk):
    if any(o <= b * blk < o + n for o, n in spans):
        continue
    if out[b * blk:(b + 1) * blk] != data[b * blk:(b + 1) * blk]:
        sys.exit(f"block {b}, outside the damaged extents {sorted(spans)}, does not read back as written")
print(f"damaged extents {sorted(spans)}")
PY
}
quiet_compare() { compare >/dev/null; }
check "the damaged block is never returned, and every other extent reads back as written: $(compare 2>&1)" quiet_compare
finish
