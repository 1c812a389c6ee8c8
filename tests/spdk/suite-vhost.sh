#!/usr/bin/env bash
# vhost-blk export: the vhost app with the module preloaded builds the stack
# from a JSON config and exports PC0 as a vhost-blk controller.
source "$(dirname "$0")/lib.sh"

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
  stop_app vhost "$sock"
  check "vhost exits cleanly" [ $? -eq 0 ]
else
  fail "vhost did not start"
fi

finish
