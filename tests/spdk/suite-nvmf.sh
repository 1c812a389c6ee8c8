#!/usr/bin/env bash
# NVMe-oF/TCP on loopback: nvmf_tgt exports PC0 (pmem cache over an AIO base),
# bdevperf attaches to it with bdev_nvme and runs -w verify; the I/O must
# have gone through pcache.
source "$(dirname "$0")/lib.sh"

NQN=nqn.2016-06.io.spdk:pcache0

# A free TCP port on 127.0.0.1, starting from 4420 + pid % 1000.
port_free() { python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "$1" 2>/dev/null; }
PORT=$((4420 + $$ % 1000))
for _ in $(seq 1 100); do port_free "$PORT" && break; PORT=$((PORT + 1)); done

truncate -s $((512 << 20)) "$WORK/base.img"
cat >"$WORK/nvmf.json" <<JSON
{"subsystems":[
 {"subsystem":"bdev","config":[
  {"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"$SHM.pmem","size":$((256 << 20))}},
  {"method":"bdev_aio_create","params":{"name":"Base0","filename":"$WORK/base.img","block_size":4096}},
  {"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Base0"}},
  {"method":"bdev_wait_for_examine"}]},
 {"subsystem":"nvmf","config":[
  {"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
  {"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true,
    "serial_number":"PCACHE0000000001","model_number":"SPDK pcache","max_namespaces":1}},
  {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"nsid":1,"bdev_name":"PC0"}}},
  {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":
    {"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"$PORT"}}}]}
]}
JSON
cat >"$WORK/bdevperf.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_nvme_attach_controller","params":{"name":"Nvme0","trtype":"tcp","adrfam":"ipv4",
   "traddr":"127.0.0.1","trsvcid":"$PORT","subnqn":"$NQN"}},
 {"method":"bdev_wait_for_examine"}]}]}
JSON

sock=$WORK/nvmf.sock
log=$WORK/nvmf.log
start_app nvmf "$sock" "$log" "$SPDK_DIR/bin/nvmf_tgt" "${APP_ARGS[@]}" -m 0x1 --json "$WORK/nvmf.json" \
  || { fail "nvmf_tgt start"; finish; exit; }
check "nvmf_tgt finished loading its config" quiet jsonrpc "$sock" framework_wait_init
subs=$(jsonrpc "$sock" nvmf_get_subsystems 2>/dev/null)
check "$NQN exports PC0 and listens on 127.0.0.1:$PORT" python3 - "$subs" "$NQN" "$PORT" <<'PY'
import json, sys
subs, nqn, port = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
s = next(s for s in subs if s["nqn"] == nqn)
ok = [n["bdev_name"] for n in s["namespaces"]] == ["PC0"] and \
     any(l["trsvcid"] == port and l["traddr"] == "127.0.0.1" for l in s["listen_addresses"])
sys.exit(0 if ok else 1)
PY

bplog=$WORK/bdevperf.log
timeout 60 env LD_PRELOAD="$MODULE" "$SPDK_DIR/bin/bdevperf" "${APP_ARGS[@]}" -m 0x2 -r "$WORK/bdevperf.sock" \
  --json "$WORK/bdevperf.json" -T Nvme0n1 -q 32 -o 4096 -w verify -t 5 >"$bplog" 2>&1
rc=$?
check "bdevperf over NVMe/TCP exits with 0 (exit $rc)" [ $rc -eq 0 ]
if bdevperf_ok "$bplog"; then pass "bdevperf verify on Nvme0n1: $(totals "$bplog")"
else fail "bdevperf verify on Nvme0n1: Total line with IOPS > 0 and no failures"; tail -25 "$bplog"; fi

stats=$(jsonrpc "$sock" bdev_pcache_get_stats '{"name":"PC0"}' 2>/dev/null)
get() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[0]['$1'])" "$stats" 2>/dev/null; }
check "PC0 on nvmf_tgt counted the writes (write_ops $(get write_ops))" [ "$(get write_ops || echo 0)" -gt 0 ]
reads=$(( $(get read_hit_ops || echo 0) + $(get read_miss_ops || echo 0) ))
check "PC0 on nvmf_tgt served the verify reads ($reads read ops)" [ "$reads" -gt 0 ]
check "PC0 is still online" [ "$(get state)" = online ]
check "no panic or internal error in the nvmf_tgt log" bash -c "! grep -Eq 'panicked|internal error' \"\$1\"" _ "$log"

# Stable identity: an initiator sees PC0's UUID as the namespace's, and the
# same one after the target restarts (the pcache loads it from pmem).
pc_uuid() { jsonrpc "$sock" bdev_get_bdevs '{"name":"PC0"}' 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['uuid'])"; }
# ns_uuid: attaches from a second app (spdk_tgt), prints Nvme0n1's UUID, stops it.
ns_uuid() {
  local isock=$WORK/init.sock
  start_app init "$isock" "$WORK/init.log" "$SPDK_DIR/bin/spdk_tgt" "${APP_ARGS[@]}" -m 0x2 || return 1
  jsonrpc "$isock" bdev_nvme_attach_controller '{"name":"Nvme0","trtype":"tcp","adrfam":"ipv4","traddr":"127.0.0.1","trsvcid":"'"$PORT"'","subnqn":"'"$NQN"'"}' >/dev/null 2>&1
  jsonrpc "$isock" bdev_get_bdevs '{"name":"Nvme0n1"}' 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['uuid'])"
  stop_app init "$isock" >/dev/null 2>&1
}
before_pc=$(pc_uuid)
before_ns=$(ns_uuid)
same() { [ -n "$1" ] && [ "$1" = "$2" ]; }
check "the initiator sees PC0's UUID as the namespace's ($before_ns)" same "$before_ns" "$before_pc"
stop_app nvmf "$sock"
check "nvmf_tgt exits cleanly" [ $? -eq 0 ]

start_app nvmf "$sock" "$log" "$SPDK_DIR/bin/nvmf_tgt" "${APP_ARGS[@]}" -m 0x1 --json "$WORK/nvmf.json" \
  || { fail "nvmf_tgt restart"; finish; exit; }
quiet jsonrpc "$sock" framework_wait_init
check "PC0 keeps its UUID across the restart" same "$(pc_uuid)" "$before_pc"
after_ns=$(ns_uuid)
check "the initiator sees the same namespace UUID after the restart ($after_ns)" same "$after_ns" "$before_ns"
stop_app nvmf "$sock"
check "nvmf_tgt exits cleanly after the restart" [ $? -eq 0 ]

finish
