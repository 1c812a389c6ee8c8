#!/usr/bin/env bash
# The SPDK benchmark: bdevperf, 4 KiB, queue depth 32, on 1 core and on 2
# cores (-m 0x3 -C), against malloc, a raw pmem bdev, passthru over an AIO
# file, and pcache (pmem on /dev/shm + the same kind of AIO base), all in one
# run so the ratios compare like with like. Prints a markdown table.
#
#   scripts/bdevperf-bench.sh [seconds per read run, default 5]
#
# Write runs last 1 s on a freshly formatted cache big enough to take the
# whole burst (BENCH_CACHE_GIB, default 8): they measure what pcache adds on
# the write path. Once a write-back cache is full, writes go at the speed of
# writeback to the base; the "sustained" row shows that (10 s over a 1 GiB cache).
#
# Environment: SPDK_DIR (else pkg-config spdk_bdev, else /opt/spdk),
# SPDK_APP_ARGS (default "--no-huge -s 2048 -u"), BENCH_DIR (default /var/tmp).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-5}
spdk=${SPDK_DIR:-$(pkg-config --variable=prefix spdk_bdev 2>/dev/null || true)}
spdk=${spdk:-/opt/spdk}
bp=$spdk/bin/bdevperf
[[ -x $bp ]] || { echo "$0: bdevperf not found in $spdk/bin (set SPDK_DIR)" >&2; exit 1; }
read -r -a app_args <<<"${SPDK_APP_ARGS:---no-huge -s 2048 -u}"
so=$repo/target/release/libpcache.so
SPDK_DIR=$spdk "$repo/scripts/build-module.sh" --quiet

dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/pcache-bench.XXXXXX")
shm=/dev/shm/pcache-bench-$$
trap 'rm -rf "$dir" "$shm".*' EXIT
export PMEM_IS_PMEM_FORCE=1
size=$((512 << 20))
truncate -s $size "$dir/base-pt.img" "$dir/base-pc.img"
cat >"$dir/bench.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":$((size / 4096)),"block_size":4096}},
 {"method":"bdev_pmem_create","params":{"name":"Pmem1","path":"$shm.raw","size":$size}},
 {"method":"bdev_aio_create","params":{"name":"Aio0","filename":"$dir/base-pt.img","block_size":4096}},
 {"method":"bdev_passthru_create","params":{"name":"PT0","base_bdev_name":"Aio0"}},
 {"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"$shm.cache","size":$((${BENCH_CACHE_GIB:-8} << 30))}},
 {"method":"bdev_aio_create","params":{"name":"Base0","filename":"$dir/base-pc.img","block_size":4096}},
 {"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Base0"}}
]}]}
JSON

# run MASK BDEV WORKLOAD SECONDS [IO_SIZE] [CONFIG]: prints the total IOPS.
run() {
  local mask=$1 bdev=$2 w=$3 t=$4 o=${5:-4096} cfg=${6:-$dir/bench.json}
  local extra=(); [[ $mask == 0x3 ]] && extra=(-C)
  env LD_PRELOAD="$so" "$bp" "${app_args[@]}" -m "$mask" "${extra[@]}" --json "$cfg" -T "$bdev" \
    -q 32 -o "$o" -w "$w" -t "$t" >"$dir/last.log" 2>&1 || { tail -20 "$dir/last.log" >&2; return 1; }
  tr '\r' '\n' <"$dir/last.log" | awk '/^ *Total *:/ {print $3}'
}

# The sustained case: a 1 GiB cache, full after a fraction of a second.
sed "s|$shm.cache\",\"size\":[0-9]*|$shm.small\",\"size\":$((1 << 30))|" "$dir/bench.json" >"$dir/small.json"

declare -A iops
for mask in 0x1 0x3; do
  for b in Malloc0 Pmem1 PT0 PC0; do
    [[ $b == PC0 ]] && rm -f "$shm.cache" # a fresh, empty cache
    iops[$mask,randwrite,$b]=$(run "$mask" "$b" randwrite 1)
  done
  rm -f "$shm.small"
  iops[$mask,sustained,PC0]=$(run "$mask" PC0 randwrite 10 4096 "$dir/small.json")
  # Cached data for the reads: write the whole pcache bdev first.
  rm -f "$shm.cache"
  run "$mask" PC0 write "$secs" 131072 >/dev/null
  for b in Malloc0 Pmem1 PT0 PC0; do
    iops[$mask,randread,$b]=$(run "$mask" "$b" randread "$secs")
  done
done

cores() { [[ $1 == 0x1 ]] && echo 1 || echo 2; }
echo
echo "bdevperf -q 32 -o 4096, randwrite -t 1 (fresh ${BENCH_CACHE_GIB:-8} GiB cache), randread -t $secs (cached data); ${app_args[*]}"
echo "pmem on /dev/shm (PMEM_IS_PMEM_FORCE=1), AIO files in ${BENCH_DIR:-/var/tmp}"
echo
echo "| cores | workload | malloc | raw pmem | passthru (AIO) | pcache | pcache / raw pmem |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for mask in 0x1 0x3; do
  for w in randwrite randread; do
    r=$(awk -v a="${iops[$mask,$w,PC0]}" -v b="${iops[$mask,$w,Pmem1]}" 'BEGIN { printf "%.2f", a / b }')
    printf "| %s | %s | %.0f | %.0f | %.0f | %.0f | %s |\n" "$(cores $mask)" "$w" \
      "${iops[$mask,$w,Malloc0]}" "${iops[$mask,$w,Pmem1]}" "${iops[$mask,$w,PT0]}" "${iops[$mask,$w,PC0]}" "$r"
  done
  printf "| %s | randwrite sustained (1 GiB cache, 10 s) | | | | %.0f | |\n" "$(cores $mask)" "${iops[$mask,sustained,PC0]}"
done
echo
echo "target: pcache / raw pmem >= 0.80 for randwrite and for randread of cached data"
