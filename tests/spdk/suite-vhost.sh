#!/usr/bin/env bash
# vhost-blk export: the vhost app with the module preloaded builds the stack
# from a JSON config and exports PC0 as a vhost-blk controller; a second app
# (bdevperf) attaches to it over the vhost-user socket with bdev_virtio and
# runs verify through it. A vhost-user initiator's memory must be shared with
# the target, so that app runs on hugepages: the suite reserves them and
# mounts a hugetlbfs for it, and gives both back at the end. Without root (no
# hugepages to reserve) the suite reports itself skipped (exit 77).
source "$(dirname "$0")/lib.sh"

HUGE_PAGES=576 # 2 MiB pages: the initiator's 1 GiB and some slack (an SPDK with OCF sets up its pools at start)
huge_before=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
HUGE_DIR=$WORK/huge
release_huge() {
  mountpoint -q "$HUGE_DIR" && umount "$HUGE_DIR"
  echo "$huge_before" >/proc/sys/vm/nr_hugepages 2>/dev/null
}
trap 'release_huge; cleanup' EXIT
mkdir -p "$HUGE_DIR"
if ! { echo $((huge_before + HUGE_PAGES)) >/proc/sys/vm/nr_hugepages &&
       [ "$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)" -ge "$HUGE_PAGES" ] &&
       mount -t hugetlbfs nodev "$HUGE_DIR"; } 2>/dev/null; then
  echo "skipped: a vhost-user initiator needs $HUGE_PAGES free 2 MiB hugepages and a hugetlbfs mount (root)"
  exit 77
fi

stack_config "$WORK/stack.json" $((256 << 20)) $((256 << 20))
python3 - "$WORK/stack.json" "$WORK/vhost.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["subsystems"].append({"subsystem": "vhost_blk", "config": [
    {"method": "vhost_create_blk_controller", "params": {"ctrlr": "vhost.0", "dev_name": "PC0"}}]})
json.dump(cfg, open(sys.argv[2], "w"))
PY
mkdir -p "$WORK/vhost"
sock=$WORK/vhost.sock
if start_app vhost "$sock" "$WORK/vhost.log" "$SPDK_DIR/bin/vhost" "${APP_ARGS[@]}" -m 0x1 -S "$WORK/vhost" \
    --json "$WORK/vhost.json"; then
  check "the vhost-user socket for vhost.0 exists" test -S "$WORK/vhost/vhost.0"
  ctrl=$(jsonrpc "$sock" vhost_get_controllers '{"name":"vhost.0"}')
  check "vhost.0 serves PC0" python3 -c "
import json, sys
c = json.loads(sys.argv[1])[0]
sys.exit(0 if c['backend_specific']['block']['bdev'] == 'PC0' else 1)" "$ctrl"
  check "PC0 is claimed by the vhost controller and online" \
    python3 -c "import json,sys; sys.exit(0 if json.loads(sys.argv[1])[0]['state']=='online' else 1)" \
    "$(jsonrpc "$sock" bdev_pcache_get_stats '{"name":"PC0"}')"
  # I/O through vhost-blk: bdevperf verify from another app, over the socket.
  cat >"$WORK/init.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_virtio_attach_controller","params":{"name":"VirtioBlk0","trtype":"user",
  "traddr":"$WORK/vhost/vhost.0","dev_type":"blk","vq_count":2}}
]}]}
JSON
  timeout 120 "$SPDK_DIR/bin/bdevperf" -s 1024 --huge-dir "$HUGE_DIR" -g --disable-cpumask-locks \
    --num-trace-entries 0 -m 0x2 -r "$WORK/init.sock" --json "$WORK/init.json" \
    -q 32 -o 4096 -w verify -t 5 >"$WORK/init.log" 2>&1
  rc=$?
  verified() { [ $rc -eq 0 ] && bdevperf_ok "$WORK/init.log" && ! grep -q "mismatch" "$WORK/init.log"; }
  check "verify through vhost-blk from a bdev_virtio initiator (exit $rc): $(totals "$WORK/init.log")" verified
  [ $rc -eq 0 ] || tail -15 "$WORK/init.log"
  st=$(jsonrpc "$sock" bdev_pcache_get_stats '{"name":"PC0"}')
  get() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[0]['$1'])" "$st"; }
  check "PC0 served the writes ($(get write_ops) writes)" [ "$(get write_ops)" -gt 1000 ]
  check "PC0 served the reads from the cache ($(get read_hit_ops) hits)" [ "$(get read_hit_ops)" -gt 1000 ]
  stop_app vhost "$sock"
  check "vhost exits cleanly" [ $? -eq 0 ]
  check "vhost's log shows no crash" no_crash "$WORK/vhost.log"
else
  fail "vhost did not start"
fi

finish
