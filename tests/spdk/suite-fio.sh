#!/usr/bin/env bash
# SPDK's fio plugin with pcache loaded: one short verify job
# (configs/fio-pcache-verify.fio, over a copy of its bdev config with this
# suite's files). Needs fio and the plugin (SPDK built --with-fio): the
# plugin is $SPDK_FIO_PLUGIN, else $SPDK_DIR/lib/fio/spdk_bdev or
# $SPDK_DIR/build/fio/spdk_bdev. Without them the suite says so and is
# skipped (exit 77), not passed.
source "$(dirname "$0")/lib.sh"

plugin=${SPDK_FIO_PLUGIN:-}
for p in "$SPDK_DIR/lib/fio/spdk_bdev" "$SPDK_DIR/build/fio/spdk_bdev" "$SPDK_DIR/fio/spdk_bdev"; do
  [ -n "$plugin" ] || { [ -f "$p" ] && plugin=$p; }
done
if ! command -v fio >/dev/null 2>&1 || [ -z "$plugin" ]; then
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
log=$WORK/fio.log
# The preload goes on fio itself, not on timeout (which cannot load the plugin).
(cd "$WORK" && PMEM_IS_PMEM_FORCE=1 timeout 300 env LD_PRELOAD="$plugin $MODULE" fio "$WORK/verify.fio") >"$log" 2>&1
rc=$?
check "fio verify job through PC0 exits 0 (exit $rc)" [ $rc -eq 0 ]
check "fio reports no errors" bash -c 'grep -q "err= 0" "$1" && ! grep -qi "verify:.*bad" "$1"' _ "$log"
[ $rc -eq 0 ] || tail -20 "$log"
finish
