#!/usr/bin/env bash
# SPDK's fio plugin with pcache loaded: a short verify job
# (configs/fio-pcache-verify.fio, over a copy of its bdev config with this
# suite's files), the profiles of configs/fio-pcache-profiles.fio, and a
# write job killed with -9 whose fsynced blocks a fresh fio verifies. Needs fio and the plugin (SPDK built --with-fio): the
# plugin is $SPDK_FIO_PLUGIN, else $SPDK_DIR/lib/fio/spdk_bdev or
# $SPDK_DIR/build/fio/spdk_bdev. Without them the suite says so and is
# skipped (exit 77), not passed.
source "$(dirname "$0")/lib.sh"

if ! plugin=$(fio_plugin); then
  echo "skipped: needs fio and SPDK's fio plugin (set SPDK_FIO_PLUGIN; SPDK built --with-fio)"
  exit 77
fi

truncate -s $((512 << 20)) "$WORK/base.img"
python3 - "$ROOT/configs/bdevperf-pcache-aio.json" "$WORK/fio.json" "$SHM.pmem" "$WORK/base.img" <<'PY'
import json, sys
src, out, pmem, base = sys.argv[1:]
c = json.load(open(src))
for s in c["subsystems"]:
    for m in s.get("config") or []:
        if m["method"] == "bdev_pmem_create":
            m["params"]["path"] = pmem
        if m["method"] == "bdev_aio_create":
            m["params"]["filename"] = base
json.dump(c, open(out, "w"))
PY
sed "s|^spdk_json_conf=.*|spdk_json_conf=$WORK/fio.json|; s|^size=.*|size=64m|" \
  "$ROOT/configs/fio-pcache-verify.fio" >"$WORK/verify.fio"
# run_fio JOBFILE LOG: fio with the plugin and the module, in $WORK (the
# preload goes on fio itself, not on timeout, which cannot load the plugin).
run_fio() {
  (cd "$WORK" && PMEM_IS_PMEM_FORCE=1 timeout 300 env LD_PRELOAD="$plugin $MODULE" fio "$1") >"$2" 2>&1
}
log=$WORK/fio.log
run_fio "$WORK/verify.fio" "$log"
rc=$?
check "fio verify job through PC0 exits 0 (exit $rc)" [ $rc -eq 0 ]
check "fio reports no errors" bash -c 'grep -q "err= 0" "$1" && ! grep -qi "verify:.*bad" "$1"' _ "$log"
[ $rc -eq 0 ] || tail -20 "$log"

# The profiles users run first (configs/fio-pcache-profiles.fio), 2 s each.
sed "s|^spdk_json_conf=.*|spdk_json_conf=$WORK/fio.json|; s|^size=.*|size=64m|; s|^runtime=.*|runtime=2|; \
  s|^ramp_time=.*|ramp_time=0|" "$ROOT/configs/fio-pcache-profiles.fio" >"$WORK/profiles.fio"
run_fio "$WORK/profiles.fio" "$WORK/profiles.log"
rc=$?
check "fio profiles through PC0 exit 0 (exit $rc)" [ $rc -eq 0 ]
for job in randread randwrite randrw70 seqwrite fsync; do
  check "fio profile $job: no errors, I/O done, latency percentiles" python3 - "$WORK/profiles.log" "$job" <<'PY'
import re, sys
text, job = open(sys.argv[1]).read(), sys.argv[2]
m = re.search(r"^%s: \(groupid=\d+, jobs=\d+\): err= 0:(.*?)(?=^\S|\Z)" % job, text, re.S | re.M)
ok = m and re.search(r"IOPS=[1-9]", m.group(1)) and "99.00th" in m.group(1)
sys.exit(0 if ok else 1)
PY
done
[ $rc -eq 0 ] || tail -20 "$WORK/profiles.log"

# kill -9 in the middle of a write job: job A writes 32 MiB of verifiable
# blocks and ends with an fsync (a FLUSH of PC0); job B then writes past it
# until fio is killed. A fresh fio with verify_only=1 checks every block of A.
cat >"$WORK/kill.fio" <<JOB
[global]
ioengine=spdk_bdev
spdk_json_conf=$WORK/fio.json
filename=PC0
env_context=--no-huge --legacy-mem --no-pci --iova-mode=va
spdk_mem=2048
thread=1
direct=1
bs=4k
iodepth=32
verify=crc32c
verify_state_save=0
randrepeat=1

[a]
rw=randwrite
offset=0
size=32m
do_verify=0
end_fsync=1

[b]
stonewall
rw=randwrite
offset=64m
size=64m
time_based=1
runtime=120
do_verify=0
JOB
(cd "$WORK" && PMEM_IS_PMEM_FORCE=1 exec env LD_PRELOAD="$plugin $MODULE" fio "$WORK/kill.fio") >"$WORK/kill.log" 2>&1 &
fio_pid=$!
sleep 8
check "fio still writing (job b) when killed" kill -0 "$fio_pid"
kill -9 "$fio_pid"; wait "$fio_pid" 2>/dev/null
sed -n '1,/^\[b\]/p' "$WORK/kill.fio" | sed '$d; s/^do_verify=0/verify_only=1/' >"$WORK/verify-a.fio"
run_fio "$WORK/verify-a.fio" "$WORK/verify-a.log"
rc=$?
check "after kill -9, verify_only finds every block job a wrote and fsynced (exit $rc)" \
  bash -c '[ "$2" -eq 0 ] && grep -q "err= 0" "$1" && grep -Eq "read: IOPS=" "$1"' _ "$WORK/verify-a.log" "$rc"
[ $rc -eq 0 ] || tail -20 "$WORK/verify-a.log"
finish
