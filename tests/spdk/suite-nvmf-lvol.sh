#!/usr/bin/env bash
# An lvol store with two lvols on one pcache, each lvol exported over
# NVMe/TCP as a namespace of its own. An initiator app (spdk_dd over
# bdev_nvme) writes each namespace; nvmf_tgt is killed with -9 and restarted
# from its saved config 2 s after the last write (spdk_dd sends no FLUSH;
# the kset timer journals writes within 1 s); the initiator reads both
# back, and a flush RPC leaves the cache clean.
source "$(dirname "$0")/lib.sh"
DD=$SPDK_DIR/bin/spdk_dd
MiB=$((1 << 20))
NQN=nqn.2016-06.io.spdk:pcache-lvols

port_free() { python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "$1" 2>/dev/null; }
PORT=$((5420 + $$ % 1000))
for _ in $(seq 1 100); do port_free "$PORT" && break; PORT=$((PORT + 1)); done

truncate -s $((256 * MiB)) "$WORK/base.img"
head -c $((8 * MiB)) /dev/urandom >"$WORK/p1.bin"
head -c $((8 * MiB)) /dev/urandom >"$WORK/p2.bin"

# 1. The stack over RPC in nvmf_tgt, then its saved config.
sock=$WORK/nvmf.sock
start_app nvmf "$sock" "$WORK/nvmf1.log" "$SPDK_DIR/bin/nvmf_tgt" "${APP_ARGS[@]}" -m 0x1 \
  || { fail "nvmf_tgt start"; finish; exit; }
ok=1
jr "$sock" bdev_pmem_create "{\"name\":\"Pmem0\",\"path\":\"$SHM.pmem\",\"size\":$((128 * MiB))}" >/dev/null || ok=0
jr "$sock" bdev_aio_create "{\"name\":\"Base0\",\"filename\":\"$WORK/base.img\",\"block_size\":4096}" >/dev/null || ok=0
jr "$sock" bdev_pcache_create '{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Base0"}' >/dev/null || ok=0
jr "$sock" bdev_lvol_create_lvstore '{"bdev_name":"PC0","lvs_name":"lvs0"}' >/dev/null || ok=0
for lv in lv1 lv2; do
  jr "$sock" bdev_lvol_create "{\"lvol_name\":\"$lv\",\"size_in_mib\":64,\"lvs_name\":\"lvs0\"}" >/dev/null || ok=0
done
jr "$sock" nvmf_create_transport '{"trtype":"TCP"}' >/dev/null || ok=0
jr "$sock" nvmf_create_subsystem "{\"nqn\":\"$NQN\",\"allow_any_host\":true,\"serial_number\":\"PCACHELV00000001\"}" \
  >/dev/null || ok=0
for n in 1 2; do
  jr "$sock" nvmf_subsystem_add_ns "{\"nqn\":\"$NQN\",\"namespace\":{\"nsid\":$n,\"bdev_name\":\"lvs0/lv$n\"}}" \
    >/dev/null || ok=0
done
jr "$sock" nvmf_subsystem_add_listener "{\"nqn\":\"$NQN\",\"listen_address\":{\"trtype\":\"TCP\",\"adrfam\":\"IPv4\",\"traddr\":\"127.0.0.1\",\"trsvcid\":\"$PORT\"}}" \
  >/dev/null || ok=0
check "stack over RPC: pcache, lvol store with two lvols, each a namespace on NVMe/TCP" [ $ok -eq 1 ]
spdk save_config >"$WORK/saved.json"

# The initiator: an app of its own that attaches to the subsystem.
cat >"$WORK/init.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_nvme_attach_controller","params":{"name":"Nvme0","trtype":"tcp","adrfam":"ipv4",
   "traddr":"127.0.0.1","trsvcid":"$PORT","subnqn":"$NQN"}},
 {"method":"bdev_wait_for_examine"}]}]}
JSON
# init_dd ARGS...: spdk_dd in the initiator (it needs no pcache module).
init_dd() { timeout 60 "$DD" "${APP_ARGS[@]}" -m 0x2 --json "$WORK/init.json" "$@" >>"$WORK/dd.log" 2>&1; }

init_dd --if "$WORK/p1.bin" --ob Nvme0n1 --bs 65536
check "the initiator wrote 8 MiB to namespace 1 (lvs0/lv1)" [ $? -eq 0 ]
init_dd --if "$WORK/p2.bin" --ob Nvme0n2 --bs 65536
check "the initiator wrote 8 MiB to namespace 2 (lvs0/lv2)" [ $? -eq 0 ]
check "the writes went through PC0" [ "$(q bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['write_ops']")" -gt 0 ]

# 2. kill -9, restart from the saved config, read both back. spdk_dd sends
#    no FLUSH: what it wrote is durable once the kset timer has journalled
#    it (kset_flush_interval, 1 s), so the kill comes 2 s later.
sleep 2
kill -9 "$PID_nvmf"; wait "$PID_nvmf" 2>/dev/null
start_app nvmf "$sock" "$WORK/nvmf2.log" "$SPDK_DIR/bin/nvmf_tgt" "${APP_ARGS[@]}" -m 0x1 --json "$WORK/saved.json" \
  || { fail "nvmf_tgt restarts from its saved config after kill -9"; finish; exit; }
until_ok 15 q nvmf_get_subsystems '' "[n['bdev_name'] for s in r if s['nqn'] == '$NQN' for n in s['namespaces']]" \
  >/dev/null
# (The saved config names the lvols by UUID.)
ns=$(q nvmf_get_subsystems '' "[n['bdev_name'] for s in r if s['nqn'] == '$NQN' for n in s['namespaces']]")
lvs="['$(q bdev_get_bdevs '{"name":"lvs0/lv1"}' "r[0]['uuid']")', '$(q bdev_get_bdevs '{"name":"lvs0/lv2"}' "r[0]['uuid']")']"
check "after kill -9 and restart: namespaces 1 and 2 are lvs0/lv1 and lvs0/lv2 again" [ "$ns" = "$lvs" ]
check "the lvol store is on PC0" \
  [ "$(q bdev_lvol_get_lvstores '' "[s['base_bdev'] for s in r if s['name'] == 'lvs0']")" = "['PC0']" ]
init_dd --ib Nvme0n1 --of "$WORK/r1.bin" --bs 65536 --count 128
check "namespace 1 reads back P1 after the kill" cmp -s "$WORK/p1.bin" "$WORK/r1.bin"
init_dd --ib Nvme0n2 --of "$WORK/r2.bin" --bs 65536 --count 128
check "namespace 2 reads back P2 after the kill" cmp -s "$WORK/p2.bin" "$WORK/r2.bin"
check "flush RPC" flushed
check "PC0 is clean after the flush" [ "$(q bdev_pcache_get_stats '{"name":"PC0"}' "r[0]['clean']")" = True ]
stop_app nvmf "$sock"
for l in "$WORK"/nvmf*.log "$WORK/dd.log"; do check "no crash in $(basename "$l")" no_crash "$l"; done

finish
