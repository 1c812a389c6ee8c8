#!/usr/bin/env bash
# pcache over a Ceph RBD image against the bare image, side by side in one
# run: a one-node cluster (scripts/ceph-cluster.sh) in a directory of its
# own, bdevperf 4 KiB randwrite at queue depth 32, each device in its own
# bdevperf process, librbd's cache off. Prints IOPS, average and maximum
# latency, and the ratios.
#
#   scripts/bdevperf-rbd.sh [seconds per timed run, default 60] [cases...]
#
# Cases (both by default): big (randwrite over a 1 GiB image, a 256 MiB
# cache: the working set is four times the cache); hot (randwrite over a
# 128 MiB image, the same cache: a hot set half the cache). pcache is
# preconditioned first in the same process (bdevperf -z, perform_tests
# twice) for PRE seconds (default: as long as the timed run), so that the
# cache is full and writeback runs as in steady state; the bare image gets
# 3 s of the same load first. Both images are filled sequentially before
# anything is timed. The bare image is timed before and after
# pcache, and pcache is compared with the mean of the two: a one-node
# cluster slows down as random writes go on (a MemStore OSD here ran 3.6 K,
# 1.75 K, 1.57 K, then 1.17 K IOPS in four 20 s runs in a row), so one
# bare run before pcache would flatter the image.
#
# Environment: SPDK_DIR (else pkg-config spdk_bdev, else /opt/spdk),
# SPDK_APP_ARGS (default "--no-huge -s 2048 -u"), PRE, BENCH_DIR (default
# /var/tmp, where the cluster's files go).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
shift || true
cases=("$@")
[[ ${#cases[@]} -eq 0 ]] && cases=(big hot)
pre=${PRE:-$secs}
source "$repo/scripts/spdk-env.sh"
ls "$spdk"/lib/libspdk_bdev_rbd.* >/dev/null 2>&1 || { echo "$0: SPDK has no bdev_rbd (configure --with-rbd)" >&2; exit 1; }

dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/pcache-rbd.XXXXXX")
shm=/dev/shm/pcache-rbd-$$
ceph=$dir/ceph
trap '"$repo/scripts/ceph-cluster.sh" stop "$ceph" >/dev/null 2>&1 || true; rm -rf "$dir"; rm -f "$shm"' EXIT
export PMEM_IS_PMEM_FORCE=1
MiB=$((1 << 20))
cache_mib=256

conf=$("$repo/scripts/ceph-cluster.sh" start "$ceph" 1024 2>"$dir/ceph-start.log" | tail -1) \
  || { cat "$dir/ceph-start.log" >&2; exit 1; }
rbd -c "$conf" create rbd/hot --size 128
# Every object written once before anything is timed: a fresh image's first
# writes allocate the OSD's pages, and run faster than any later ones.
for img in img0:1024 hot:128; do
  rbd -c "$conf" bench --io-type write --io-size 4M --io-pattern seq --io-threads 4 \
    --io-total "${img#*:}M" "rbd/${img%%:*}" >/dev/null
done

# config IMAGE WITH_PCACHE: the JSON config of Base0 (the image) and, if asked, PC0 over it.
config() {
  local lines='{"method":"bdev_rbd_register_cluster","params":{"name":"ceph0","config_file":"'$conf'","config_param":{"rbd_cache":"false"}}},
 {"method":"bdev_rbd_create","params":{"name":"Base0","pool_name":"rbd","rbd_name":"'$1'","block_size":4096,"cluster_name":"ceph0"}}'
  if [[ $2 == 1 ]]; then
    lines+=',{"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"'$shm'","size":'$((cache_mib * MiB))'}},
 {"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Base0"}}'
  fi
  echo '{"subsystems":[{"subsystem":"bdev","config":['"$lines"']}]}' >"$dir/cfg.json"
}

# run BDEV PRE_SECONDS: runs randwrite PRE_SECONDS, then times it for $secs
# in the same process; prints "IOPS AVG_US MAX_US" of the timed run.
run() {
  local sock=$dir/bp.sock
  rm -f "$sock" "$shm"
  env LD_PRELOAD="$so" "$bp" "${app_args[@]}" -m 0x1 --json "$dir/cfg.json" -T "$1" \
    -q 32 -o 4096 -w randwrite -t "$secs" -z -r "$sock" >"$dir/last.log" 2>&1 &
  local pid=$!
  rpc() { python3 "$repo/tests/spdk/jsonrpc.py" "$sock" "$@" >/dev/null; }
  for _ in $(seq 600); do [[ -S $sock ]] && break; sleep 0.1; done
  if ! { rpc perform_tests '{"time_in_sec":'"$2"'}' && rpc perform_tests '{"time_in_sec":'"$secs"'}' &&
    rpc spdk_kill_instance '{"sig_name":"SIGTERM"}'; }; then
    kill -9 $pid; tail -20 "$dir/last.log" >&2; return 1
  fi
  wait $pid || true
  # The last Total line is the timed run's: IOPS, MiB/s, Fail/s, TO/s, average, min, max (us).
  tr '\r' '\n' <"$dir/last.log" | awk '/^ *Total *:/ && $3 > 0 {v = $3 " " $7 " " $9} END {print v}'
}

declare -A out
for c in "${cases[@]}"; do
  case $c in
    big) image=img0 ;;
    hot) image=hot ;;
    *) echo "$0: unknown case $c (big, hot)" >&2; exit 2 ;;
  esac
  config "$image" 0
  out[$c,base]=$(run Base0 3)
  config "$image" 1
  out[$c,pcache]=$(run PC0 "$pre")
  # The image is owned by the pcache just run (it stopped with dirty data):
  # the bare runs after it write the image directly, as a user of a lost
  # cache would after releasing it.
  rbd -c "$conf" image-meta remove "rbd/$image" pcache.owner >/dev/null 2>&1 || true
  config "$image" 0
  out[$c,after]=$(run Base0 3)
  echo "  $c: base ${out[$c,base]} pcache ${out[$c,pcache]} base after ${out[$c,after]} (IOPS avg_us max_us)" >&2
done

echo
echo "bdevperf -q 32 -o 4096 randwrite, 1 core, $secs s timed (pcache after $pre s of the same load); ${app_args[*]}"
echo "one-node Ceph ($(ceph --version | awk '{print $3}'), $(sed -n 's/^ *osd objectstore *= *//p' "$conf" | head -1 || true) OSD), librbd cache off; pmem on /dev/shm (PMEM_IS_PMEM_FORCE=1), cache $cache_mib MiB"
echo
echo "| case | image | RBD IOPS before / after | RBD max ms before / after | pcache IOPS | pcache avg / max ms | pcache / RBD (mean) | max vs RBD's larger max |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for c in "${cases[@]}"; do
  read -r bi ba bm <<<"${out[$c,base]}"
  read -r ai aa am <<<"${out[$c,after]}"
  read -r pi pa pm <<<"${out[$c,pcache]}"
  img=$([[ $c == big ]] && echo "1 GiB" || echo "128 MiB")
  awk -v c="$c" -v img="$img" -v bi="$bi" -v bm="$bm" -v ai="$ai" -v am="$am" -v pi="$pi" -v pa="$pa" -v pm="$pm" 'BEGIN {
    mx = bm > am ? bm : am
    printf "| %s | %s | %.0f / %.0f | %.0f / %.0f | %.0f | %.1f / %.0f | %.2f | %.2f |\n", c, img, bi, ai, bm / 1000, am / 1000, pi, pa / 1000, pm / 1000, 2 * pi / (bi + ai), pm / mx }'
done
