#!/usr/bin/env bash
# The JSON-RPC methods in a running spdk_tgt, through the rpc.py plugin and
# raw calls: the normal life cycle, loading an existing cache versus
# formatting it, pcaches waiting for their bdevs, and bad input of every
# kind, which must be answered with an error while the target keeps serving.
source "$(dirname "$0")/lib.sh"

sock=$WORK/tgt.sock
log=$WORK/tgt.log
PMEM_SIZE=$((256 << 20))
truncate -s $((256 << 20)) "$WORK/base0.img"
truncate -s $((128 << 20)) "$WORK/base1.img"
truncate -s $((64 << 20)) "$WORK/base2.img"
truncate -s $((64 << 20)) "$WORK/base4.img"

start_app tgt "$sock" "$log" "$SPDK_DIR/bin/spdk_tgt" "${APP_ARGS[@]}" -m 0x1 || { fail "spdk_tgt start"; finish; exit; }

aio() { "${RPC_PY[@]}" -s "$sock" bdev_aio_create "$1" "$2" 4096 >/dev/null; }
# bdev NAME PYEXPR: PYEXPR over bdev_get_bdevs' entry `b` for NAME.
bdev() { q bdev_get_bdevs "{\"name\":\"$1\"}" "(lambda b: $2)(r[0])"; }
# absent NAME: bdev_get_bdevs -b NAME fails.
absent() { [[ $(jr "$sock" bdev_get_bdevs "{\"name\":\"$1\"}" 2>/dev/null) == ERROR* ]]; }
# no_pcache NAME: bdev_pcache_get_stats for NAME fails.
no_pcache() { [[ $(jr "$sock" bdev_pcache_get_stats "{\"name\":\"$1\"}" 2>/dev/null) == ERROR* ]]; }
# jr SOCK METHOD [PARAMS]: jsonrpc bounded to 10 s (a hung target fails checks, not stalls them).

# ok DESC ARGS...: the plugin call succeeds.
ok() {
  local what=$1; shift
  local out
  if out=$(rpc "$sock" "$@" 2>&1); then pass "$what"; else fail "$what"; echo "$out" | tail -5; fi
}
# rpc_err DESC REGEX ARGS...: the plugin call fails and its output matches REGEX.
rpc_err() {
  local what=$1 re=$2; shift 2
  local out rc
  out=$(rpc "$sock" "$@" 2>&1); rc=$?
  if [ $rc -ne 0 ] && grep -Eqi -- "$re" <<<"$out"; then
    pass "$what: $(grep -m1 '"message"' <<<"$out" | sed 's/^ *//')"
  else
    fail "$what (exit $rc)"; echo "$out" | tail -8
  fi
}
# live_option KEY FLAG DEFAULT VALUE BAD...: PC0's get_stats shows KEY at
# DEFAULT; set_options FLAG VALUE makes get_stats and save_config show VALUE;
# each BAD value is refused with an error naming KEY.
live_option() {
  local key=$1 flag=$2 def=$3 val=$4 bad; shift 4
  check "get_stats: $key defaults to $def" [ "$(pstat PC0 "$key")" = "$def" ]
  ok "bdev_pcache_set_options PC0 $flag $val" bdev_pcache_set_options PC0 "$flag" "$val"
  check "get_stats: $key $val" [ "$(pstat PC0 "$key")" = "$val" ]
  check "save_config keeps $key" saved "\"$key\": $val"
  for bad in "$@"; do rpc_err "set_options $flag $bad" "$key" bdev_pcache_set_options PC0 "$flag" "$bad"; done
}
# raw_err DESC REGEX METHOD [PARAMS]: a raw call is answered with an ERROR matching REGEX.
raw_err() {
  local what=$1 re=$2; shift 2
  local out rc
  out=$(jr "$sock" "$@" 2>&1); rc=$?
  if [ $rc -ne 0 ] && grep -q '^ERROR' <<<"$out" && grep -Eqi -- "$re" <<<"$out"; then
    pass "$what: $out"
  else
    fail "$what (exit $rc)"; echo "$out" | tail -5
  fi
}
# wait_state NAME STATE: polls get_stats until NAME shows STATE (5 s).
wait_state() {
  local end=$((SECONDS + 5))
  while [ $SECONDS -le $end ]; do
    [ "$(pstat "$1" state)" = "$2" ] && return 0
    sleep 0.1
  done
  echo "  ($1: $(q bdev_pcache_get_stats "{\"name\":\"$1\"}" "r[0]"))"
  return 1
}
# gone NAME: polls until bdev_get_bdevs -b NAME fails (5 s).
gone() {
  local end=$((SECONDS + 5))
  while [ $SECONDS -le $end ]; do
    absent "$1" && return 0
    sleep 0.1
  done
  return 1
}
alive() { jr "$sock" rpc_get_methods >/dev/null 2>&1; }

echo "# life cycle"
ok "bdev_pmem_create of a new file (-s)" bdev_pmem_create "$SHM.pmem0" -n Pmem0 -s $PMEM_SIZE
check "bdev_aio_create Base0 (256 MiB)" aio "$WORK/base0.img" Base0
ok "bdev_pcache_create PC0 -c Pmem0 -b Base0" bdev_pcache_create PC0 -c Pmem0 -b Base0
pc0_uuid=$(bdev PC0 "b['uuid']")
check "get_stats shows PC0's uuid ($pc0_uuid), the one bdev_get_bdevs has" [ "$(pstat PC0 uuid)" = "$pc0_uuid" ]
# saved PATTERN: save_config's output holds PATTERN.
saved() { local c; c=$("${RPC_PY[@]}" -s "$sock" save_config) && grep -q -- "$1" <<<"$c"; }
check "save_config writes PC0's uuid" saved "\"uuid\": \"$pc0_uuid\""
check "PC0 was formatted (new pmem file)" grep -q "PC0: formatted Pmem0 for base Base0" "$log"
check "get_stats: state online" [ "$(pstat PC0 state)" = online ]
check "get_stats: cache_bdev Pmem0" [ "$(pstat PC0 cache_bdev)" = Pmem0 ]
check "get_stats: base_bdev Base0" [ "$(pstat PC0 base_bdev)" = Base0 ]
segs=$(pstat PC0 segs_total)
check "get_stats: segs_total > 0 ($segs)" [ "${segs:-0}" -gt 0 ]
check "bdev_get_bdevs -b PC0: driver_specific.pcache has dirty_bytes, segs_used, clean" \
  [ "$(bdev PC0 "all(k in b['driver_specific']['pcache'] for k in ('dirty_bytes','segs_used','clean','key_head'))")" = True ]
check "bdev_get_bdevs -b PC0: dirty_bytes 0 on a new cache" [ "$(bdev PC0 "b['driver_specific']['pcache']['dirty_bytes']")" = 0 ]
base_blocks=$(bdev Base0 "b['num_blocks']")
pc_blocks=$(bdev PC0 "b['num_blocks']")
check "PC0 has the base's num_blocks ($pc_blocks = $base_blocks)" [ "${pc_blocks:-x}" = "${base_blocks:-y}" ]
check "PC0 has the base's block_size" [ "$(bdev PC0 "b['block_size']")" = 4096 ]
check "get_stats without a name lists PC0" [ "$(q bdev_pcache_get_stats '' "[s['name'] for s in r]")" = "['PC0']" ]
ok "bdev_pcache_set_options PC0 -g 40" bdev_pcache_set_options PC0 -g 40
check "get_stats: gc_percent 40" [ "$(pstat PC0 gc_percent)" = 40 ]
check "get_stats: writeback_batch_bytes defaults to 32 MiB" [ "$(pstat PC0 writeback_batch_bytes)" = 33554432 ]
ok "bdev_pcache_set_options PC0 -W 1048576" bdev_pcache_set_options PC0 -W 1048576
check "get_stats: writeback_batch_bytes 1048576" [ "$(pstat PC0 writeback_batch_bytes)" = 1048576 ]
check "save_config keeps writeback_batch_bytes" saved '"writeback_batch_bytes": 1048576'
rpc_err "set_options -W 0" "writeback_batch_bytes" bdev_pcache_set_options PC0 -W 0
check "get_stats: seq_cutoff_bytes defaults to 1 MiB" [ "$(pstat PC0 seq_cutoff_bytes)" = 1048576 ]
ok "bdev_pcache_set_options PC0 -S 0" bdev_pcache_set_options PC0 -S 0
check "get_stats: seq_cutoff_bytes 0" [ "$(pstat PC0 seq_cutoff_bytes)" = 0 ]
check "save_config keeps seq_cutoff_bytes" saved '"seq_cutoff_bytes": 0'
rpc_err "set_options -S -1" "seq_cutoff_bytes" bdev_pcache_set_options PC0 -S -1
ok "bdev_pcache_set_options PC0 -S 4194304" bdev_pcache_set_options PC0 -S 4194304
live_option base_lag_secs -L 30 5 -1 86401
check "get_stats: promotion defaults to nhit" [ "$(pstat PC0 promotion)" = nhit ]
live_option promotion_hits -H 3 5 1 256
ok "bdev_pcache_set_options PC0 -P always" bdev_pcache_set_options PC0 -P always
check "get_stats: promotion always, no hits" \
  [ "$(pstat PC0 promotion)" = always ] && [ "$(q bdev_pcache_get_stats '{"name":"PC0"}' "'promotion_hits' in r[0]")" = False ]
check "save_config keeps promotion always" saved '"promotion": "always"'
raw_err "set_options promotion lru" 'promotion .*lru.* is not one of' bdev_pcache_set_options '{"name":"PC0","promotion":"lru"}'
raw_err "set_options always with hits" 'nhit' bdev_pcache_set_options '{"name":"PC0","promotion":"always","promotion_hits":3}'
check "get_stats: counts promotion_declined_ops" [ "$(pstat PC0 promotion_declined_ops)" = 0 ]
live_option max_dirty_percent -D 100 40 0 101
check "get_stats: a clean cache's base is 0 ms behind" [ "$(pstat PC0 base_behind_ms)" = 0 ]
check "get_stats: counts writeback_kept_bytes and gc_moved_bytes" \
  [ "$(pstat PC0 writeback_kept_bytes)" = 0 ] && [ "$(pstat PC0 gc_moved_bytes)" = 0 ]
check "get_stats: cache_mode writeback on a new cache" [ "$(pstat PC0 cache_mode)" = writeback ]
check "get_stats: no mode transition" [ "$(pstat PC0 cache_mode_transition)" = False ]
ok "bdev_pcache_set_options PC0 -m writearound" bdev_pcache_set_options PC0 -m writearound
check "get_stats: cache_mode writearound" [ "$(pstat PC0 cache_mode)" = writearound ]
check "bdev_get_bdevs: cache_mode writearound" \
  [ "$(bdev PC0 "b['driver_specific']['pcache']['cache_mode']")" = writearound ]
check "save_config writes cache_mode" saved '"cache_mode": "writearound"'
rpc_err "set_options -m bogus (refused by the plugin)" "cache.mode" bdev_pcache_set_options PC0 -m bogus
ok "bdev_pcache_flush PC0 returns" bdev_pcache_flush PC0
check "PC0 is clean after the flush" [ "$(pstat PC0 clean)" = True ]
check "get_stats: a clean cache drains in 0 s (drain_eta_secs)" [ "$(pstat PC0 drain_eta_secs)" = 0 ]
rates_shown() { [ -n "$(pstat PC0 writeback_bytes_per_sec)" ] && [ -n "$(pstat PC0 base_writes_per_sec)" ]; }
check "get_stats: writeback rates are reported" rates_shown
ok "bdev_pcache_delete PC0" bdev_pcache_delete PC0
check "bdev_get_bdevs -b PC0 fails after the delete" absent PC0
check "get_stats -b PC0 fails after the delete" no_pcache PC0

echo "# load versus format"
ok "bdev_pcache_create PC0 again over the same bdevs" bdev_pcache_create PC0 -c Pmem0 -b Base0
check "the second create loaded the cache (log: PC0: loaded Pmem0 and replayed)" grep -q "PC0: loaded Pmem0 and replayed" "$log"
check "and did not format it again" [ "$(grep -c "PC0: formatted Pmem0" "$log")" = 1 ]
check "the loaded PC0 is online" [ "$(pstat PC0 state)" = online ]
check "the loaded PC0 has the uuid recorded at format" [ "$(bdev PC0 "b['uuid']")" = "$pc0_uuid" ]
check "the loaded PC0 kept its cache mode (writearound)" [ "$(pstat PC0 cache_mode)" = writearound ]
ok "bdev_pcache_set_options PC0 -m writeback" bdev_pcache_set_options PC0 -m writeback
check "get_stats: cache_mode writeback again" [ "$(pstat PC0 cache_mode)" = writeback ]
ok "bdev_pcache_delete PC0 (second time)" bdev_pcache_delete PC0
other=11111111-2222-4333-8444-555555555555
rpc_err "loading Pmem0 with another uuid is refused, naming both" "$other.*$pc0_uuid" \
  bdev_pcache_create PC0 -c Pmem0 -b Base0 -u $other
check "the refused create left no PC0" absent PC0
rpc_err "create with -u not-a-uuid" "uuid" bdev_pcache_create PC0 -c Pmem0 -b Base0 -u not-a-uuid
rpc_err "create with the nil uuid" "uuid" bdev_pcache_create PC0 -c Pmem0 -b Base0 -u 00000000-0000-0000-0000-000000000000
ok "loading Pmem0 with its own uuid (-u)" bdev_pcache_create PC0 -c Pmem0 -b Base0 -u "$pc0_uuid"
ok "bdev_pcache_delete PC0 (third time)" bdev_pcache_delete PC0
check "bdev_aio_create Base1 (128 MiB)" aio "$WORK/base1.img" Base1
rpc_err "create over Pmem0 with a different base (Base1) is refused" "does not match.*Base1.*Base0|mismatch" \
  bdev_pcache_create PC1 -c Pmem0 -b Base1
check "the refused create left no PC1" absent PC1
ok "the same create with -f (force_format)" bdev_pcache_create PC1 -c Pmem0 -b Base1 -f
check "-f formatted Pmem0 for Base1 (log)" grep -q "PC1: formatted Pmem0 for base Base1" "$log"
pc1_blocks=$(bdev PC1 "b['num_blocks']")
check "PC1 has Base1's size ($pc1_blocks blocks)" [ "$pc1_blocks" = $((128 << 20 >> 12)) ]
ok "bdev_pcache_delete PC1" bdev_pcache_delete PC1
rpc_err "Pmem0 now belongs to Base1: PC0 over Base0 is refused" "does not match" bdev_pcache_create PC0 -c Pmem0 -b Base0
ok "PC0 over Base0 with -f" bdev_pcache_create PC0 -c Pmem0 -b Base0 -f
check "a new format made a new uuid" [ "$(bdev PC0 "b['uuid']")" != "$pc0_uuid" ]
check "PC0 is online again" [ "$(pstat PC0 state)" = online ]

echo "# waiting for bdevs"
ok "bdev_pcache_create PCW before Pmem1 and Base2 exist" bdev_pcache_create PCW -c Pmem1 -b Base2
check "get_stats: PCW is waiting for its bdevs" [ "$(pstat PCW state)" = "waiting for its bdevs" ]
check "get_stats: the waiting PCW names its bdevs" [ "$(pstat PCW cache_bdev)/$(pstat PCW base_bdev)" = Pmem1/Base2 ]
check "bdev_get_bdevs -b PCW fails while it waits" absent PCW
ok "bdev_pmem_create Pmem1" bdev_pmem_create "$SHM.pmem1" -n Pmem1 -s $PMEM_SIZE
check "PCW still waits with only Pmem1" [ "$(pstat PCW state)" = "waiting for its bdevs" ]
check "bdev_aio_create Base2" aio "$WORK/base2.img" Base2
check "PCW comes online once both exist" wait_state PCW online
check "bdev_get_bdevs -b PCW answers" [ "$(bdev PCW "b['name']")" = PCW ]
ok "bdev_pcache_create PCX over bdevs that do not exist" bdev_pcache_create PCX -c NoPmem -b NoBase
check "PCX is waiting" [ "$(pstat PCX state)" = "waiting for its bdevs" ]
rpc_err "delete --flush of the waiting PCX is refused (nothing can be written back)" "not online" \
  bdev_pcache_delete PCX --flush
check "PCX is still configured after the refused delete" [ "$(pstat PCX state)" = "waiting for its bdevs" ]
ok "bdev_pcache_delete of the waiting PCX" bdev_pcache_delete PCX
rpc_err "get_stats -b PCX fails after the delete (-19)" '"code": -19' bdev_pcache_get_stats -b PCX
ok "bdev_pcache_delete PCW (online)" bdev_pcache_delete PCW
check "bdev_aio_create Base4" aio "$WORK/base4.img" Base4
ok "bdev_pcache_create PCY before its pmem bdev (Base4 exists, Pmem2 not)" bdev_pcache_create PCY -c Pmem2 -b Base4
check "PCY is waiting" [ "$(pstat PCY state)" = "waiting for its bdevs" ]
ok "bdev_pmem_create Pmem2" bdev_pmem_create "$SHM.pmem2" -n Pmem2 -s $PMEM_SIZE
check "PCY comes online when its pmem bdev is the last to appear" wait_state PCY online
ok "bdev_pcache_delete PCY" bdev_pcache_delete PCY
# force_format is for the create call: a pcache that comes back after a
# hot-remove of its base must load its cache, not wipe it.
ok "bdev_pcache_create PCF -c Pmem2 -b Base4 -f" bdev_pcache_create PCF -c Pmem2 -b Base4 -f
check "bdev_aio_delete Base4 under PCF" spdk bdev_aio_delete Base4
check "PCF is hot-removed with its base" gone PCF
check "PCF keeps its config and waits for its bdevs" wait_state PCF "waiting for its bdevs"
check "bdev_aio_create Base4 again" aio "$WORK/base4.img" Base4
check "PCF comes back online" wait_state PCF online
check "PCF loaded its cache on the way back (log: PCF: loaded Pmem2)" grep -q "PCF: loaded Pmem2 and replayed" "$log"
check "PCF was formatted only once (by the create with -f)" [ "$(grep -c "PCF: formatted Pmem2" "$log")" = 1 ]
ok "bdev_pcache_delete PCF" bdev_pcache_delete PCF
ok "bdev_pmem_delete Pmem2" bdev_pmem_delete Pmem2

echo "# bad input"
raw_err "create without name" "name" bdev_pcache_create '{"cache_bdev":"Pmem0","base_bdev":"Base0"}'
raw_err "create without cache_bdev" "cache_bdev" bdev_pcache_create '{"name":"X","base_bdev":"Base0"}'
raw_err "create without base_bdev" "base_bdev" bdev_pcache_create '{"name":"X","cache_bdev":"Pmem0"}'
raw_err "create with an unknown parameter" "bogus" bdev_pcache_create \
  '{"name":"X","cache_bdev":"Pmem0","base_bdev":"Base0","bogus":1}'
raw_err "create with gc_percent \"abc\"" "gc_percent" bdev_pcache_create \
  '{"name":"X","cache_bdev":"Pmem0","base_bdev":"Base0","gc_percent":"abc"}'
raw_err "create with data_crc 1" "data_crc" bdev_pcache_create \
  '{"name":"X","cache_bdev":"Pmem0","base_bdev":"Base0","data_crc":1}'
raw_err "create with params [1,2]" "" bdev_pcache_create '[1,2]'
raw_err "create without params" "" bdev_pcache_create
raw_err "set_options with gc_percent \"abc\"" "gc_percent" bdev_pcache_set_options '{"name":"PC0","gc_percent":"abc"}'
raw_err "set_options with an unknown parameter" "bogus" bdev_pcache_set_options '{"name":"PC0","bogus":1}'
rpc_err "create with -g 91" "gc_percent" bdev_pcache_create X -c Pmem0 -b Base0 -g 91
rpc_err "create with -g -1" "gc_percent" bdev_pcache_create X -c Pmem0 -b Base0 -g -1
rpc_err "set_options -g 91" "gc_percent" bdev_pcache_set_options PC0 -g 91
raw_err "create with cache_mode \"writeforward\"" "cache_mode" bdev_pcache_create \
  '{"name":"X","cache_bdev":"Pmem0","base_bdev":"Base0","cache_mode":"writeforward"}'
raw_err "set_options with cache_mode 1" "cache_mode" bdev_pcache_set_options '{"name":"PC0","cache_mode":1}'
raw_err "set_options with cache_mode \"WriteBack\"" "cache_mode" bdev_pcache_set_options '{"name":"PC0","cache_mode":"WriteBack"}'
check "PC0 is still writeback after the refused switches" [ "$(pstat PC0 cache_mode)" = writeback ]
check "bdev_aio_create Base3 (spare)" aio "$WORK/base1.img" Base3
check "bdev_malloc_create Malloc0" quiet spdk bdev_malloc_create -b Malloc0 32 4096
rpc_err "cache_bdev that is an AIO bdev" "not a pmem bdev" bdev_pcache_create X -c Base3 -b Malloc0
rpc_err "cache_bdev that is a malloc bdev" "not a pmem bdev" bdev_pcache_create X -c Malloc0 -b Base3
rpc_err "cache_bdev used by PC0" "in use" bdev_pcache_create X -c Pmem0 -b Base3
rpc_err "base_bdev used by PC0" "in use|claimed" bdev_pcache_create X -c Pmem1 -b Base0
rpc_err "the same bdev for cache and base" "different" bdev_pcache_create X -c Pmem1 -b Pmem1
rpc_err "a pcache name that exists" "already exists" bdev_pcache_create PC0 -c Pmem1 -b Base3
rpc_err "a name of another bdev" "already exists" bdev_pcache_create Base3 -c Pmem1 -b Malloc0
rpc_err "pmem create with no size on a missing file" "size" bdev_pmem_create "$SHM.missing" -n PmemX
rpc_err "pmem create with block_size 1000" "block_size" bdev_pmem_create "$SHM.bs" -n PmemX -s $((16 << 20)) -B 1000
rpc_err "pmem create with a size not a multiple of block_size" "multiple" bdev_pmem_create "$SHM.odd" -n PmemX -s 1000000
rpc_err "pmem create in a directory that does not exist" "" bdev_pmem_create "$WORK/no/such/dir/pmem" -n PmemX -s $((16 << 20))
rpc_err "pmem create with a name that exists" "already exists" bdev_pmem_create "$SHM.dup" -n Pmem0 -s $((16 << 20))
raw_err "pmem create with size 0" "size" bdev_pmem_create "{\"name\":\"PmemX\",\"path\":\"$SHM.zero\",\"size\":0}"
raw_err "pmem create with an unknown parameter" "bogus" bdev_pmem_create \
  "{\"name\":\"PmemX\",\"path\":\"$SHM.x\",\"size\":16777216,\"bogus\":true}"
check "none of the failed pmem creates left a bdev" absent PmemX
rpc_err "bdev_pmem_delete of an unknown name (-19)" '"code": -19' bdev_pmem_delete NoSuch
rpc_err "bdev_pmem_delete of a bdev that is not pmem (-19)" '"code": -19' bdev_pmem_delete Base3
rpc_err "bdev_pcache_delete of an unknown name (-19)" '"code": -19' bdev_pcache_delete NoSuch
rpc_err "bdev_pcache_set_options of an unknown name (-19)" '"code": -19' bdev_pcache_set_options NoSuch -g 10
rpc_err "bdev_pcache_flush of an unknown name (-19)" '"code": -19' bdev_pcache_flush NoSuch
rpc_err "bdev_pcache_get_stats of an unknown name (-19)" '"code": -19' bdev_pcache_get_stats -b NoSuch
check "after the bad input: rpc_get_methods answers" alive
check "after the bad input: PC0 still exists" [ "$(bdev PC0 "b['name']")" = PC0 ]
check "after the bad input: PC0 is online with gc_percent unchanged" [ "$(pstat PC0 state)/$(pstat PC0 gc_percent)" = online/70 ]
check "after the bad input: no pcache X was left behind" no_pcache X
ok "the refused creates released their claims: PCV over Pmem1 and Base3 (-f)" \
  bdev_pcache_create PCV -c Pmem1 -b Base3 -f

echo "# deleting a pmem bdev under a pcache"
out=$(rpc "$sock" bdev_pmem_delete Pmem1 2>&1); rc=$?
echo "  (bdev_pmem_delete Pmem1 under PCV: exit $rc${out:+: $(tr -s ' \n' ' ' <<<"$out" | cut -c1-200)})"
check "the target still answers after bdev_pmem_delete of a claimed pmem bdev" alive
if [ $rc -eq 0 ]; then
  check "Pmem1 is gone" gone Pmem1
  check "PCV was hot-removed with it" gone PCV
  check "PCV keeps its config and waits for its bdevs" wait_state PCV "waiting for its bdevs"
  ok "bdev_pmem_create Pmem1 again (existing file, no size)" bdev_pmem_create "$SHM.pmem1" -n Pmem1
  check "PCV comes back online" wait_state PCV online
  check "PCV loaded its cache rather than formatting it (log)" grep -q "PCV: loaded Pmem1 and replayed" "$log"
else
  check "the refused delete left PCV online" [ "$(pstat PCV state)" = online ]
fi
ok "bdev_pcache_delete PCV" bdev_pcache_delete PCV

echo "# segment size"
truncate -s $((64 << 20)) "$WORK/base6.img"
ok "bdev_pmem_create Pmem6 of 128 MiB" bdev_pmem_create "$SHM.pmem6" -n Pmem6 -s $((128 << 20))
check "bdev_aio_create Base6" aio "$WORK/base6.img" Base6
rpc_err "create with seg_size 3 MiB" "seg_size.*power of two" bdev_pcache_create PC6 -c Pmem6 -b Base6 -z $((3 << 20))
rpc_err "create with seg_size 32 KiB" "seg_size" bdev_pcache_create PC6 -c Pmem6 -b Base6 -z 32768
rpc_err "create with seg_size 2 GiB" "seg_size" bdev_pcache_create PC6 -c Pmem6 -b Base6 -z $((2 << 30))
ok "a 128 MiB pmem bdev formats without a segment size" bdev_pcache_create PC6 -c Pmem6 -b Base6
check "it got 8 MiB segments ($(pstat PC6 seg_size))" [ "$(pstat PC6 seg_size)" = $((8 << 20)) ]
check "save_config writes seg_size" saved '"seg_size": 8388608'
ok "bdev_pcache_delete PC6" bdev_pcache_delete PC6
rpc_err "loading it with another seg_size is refused" "segment size 1048576" \
  bdev_pcache_create PC6 -c Pmem6 -b Base6 -z $((1 << 20))
ok "-f formats it with seg_size 1 MiB" bdev_pcache_create PC6 -c Pmem6 -b Base6 -z $((1 << 20)) -f
check "it has 1 MiB segments" [ "$(pstat PC6 seg_size)" = $((1 << 20)) ]
ok "bdev_pcache_delete PC6 (again)" bdev_pcache_delete PC6
ok "bdev_pmem_delete Pmem6" bdev_pmem_delete Pmem6

echo "# a 64 TiB base"
null_create() { "${RPC_PY[@]}" -s "$sock" bdev_null_create Null0 $((64 << 20)) 4096 >/dev/null; }
check "bdev_null_create Null0 of 64 TiB" null_create
ok "bdev_pmem_create Pmem7" bdev_pmem_create "$SHM.pmem7" -n Pmem7 -s $PMEM_SIZE
ok "bdev_pcache_create PC7 over the 64 TiB base" bdev_pcache_create PC7 -c Pmem7 -b Null0
idx=$(pstat PC7 index_dram_bytes)
check "its index holds $idx bytes of DRAM: under 4 MiB per TiB" [ "${idx:-999999999999}" -lt $((64 * (4 << 20))) ]
check "PC7 has the base's size" [ "$(bdev PC7 "b['num_blocks']")" = $((64 << 40 >> 12)) ]
ok "bdev_pcache_delete PC7" bdev_pcache_delete PC7
null_del() { "${RPC_PY[@]}" -s "$sock" bdev_null_delete Null0 >/dev/null; }
check "bdev_null_delete Null0" null_del
ok "bdev_pmem_delete Pmem7" bdev_pmem_delete Pmem7

echo "# a base is known by its uuid"
truncate -s $((64 << 20)) "$WORK/base5.img"
u5=22222222-3333-4444-8555-666666666666
aio_u() { "${RPC_PY[@]}" -s "$sock" bdev_aio_create "$WORK/base5.img" "$1" 4096 -u "$2" >/dev/null; }
aio_del() { "${RPC_PY[@]}" -s "$sock" bdev_aio_delete "$1" >/dev/null; }
ok "bdev_pmem_create Pmem5" bdev_pmem_create "$SHM.pmem5" -n Pmem5 -s $PMEM_SIZE
check "bdev_aio_create Base5 with uuid $u5" aio_u Base5 $u5
ok "bdev_pcache_create PC5 -c Pmem5 -b Base5" bdev_pcache_create PC5 -c Pmem5 -b Base5
check "get_stats shows the base's uuid" [ "$(pstat PC5 base_uuid)" = $u5 ]
ok "bdev_pcache_delete PC5" bdev_pcache_delete PC5
check "bdev_aio_delete Base5" aio_del Base5
check "the same file as BaseR, same uuid" aio_u BaseR $u5
ok "PC5 over the renamed base loads its cache" bdev_pcache_create PC5 -c Pmem5 -b BaseR
check "the rename is logged" grep -q 'base "BaseR" is the device formatted as "Base5" (same uuid' "$log"
ok "bdev_pcache_delete PC5 (over BaseR)" bdev_pcache_delete PC5
check "bdev_aio_delete BaseR" aio_del BaseR
check "the same file as BaseX with another uuid" aio_u BaseX 33333333-3333-4444-8555-666666666666
rpc_err "another name and another uuid are refused, naming both uuids" "33333333-3333-4444-8555-666666666666.*$u5" \
  bdev_pcache_create PC5 -c Pmem5 -b BaseX
check "bdev_aio_delete BaseX" aio_del BaseX
ok "bdev_pmem_delete Pmem5" bdev_pmem_delete Pmem5

echo "# teardown"
check "PC0 still exists" [ "$(bdev PC0 "b['name']")" = PC0 ]
ok "bdev_pcache_delete PC0" bdev_pcache_delete PC0
ok "bdev_pmem_delete Pmem0" bdev_pmem_delete Pmem0
check "Pmem0 is gone" gone Pmem0
check "the pmem file is kept" [ -f "$SHM.pmem0" ]
check "get_stats lists no pcache" [ "$(q bdev_pcache_get_stats '' "len(r)")" = 0 ]
check "no panic or internal error in the target log" bash -c "! grep -Eq 'panicked|internal error' \"\$1\"" _ "$log"
stop_app tgt "$sock"
check "spdk_tgt exits cleanly" [ $? -eq 0 ]

finish
