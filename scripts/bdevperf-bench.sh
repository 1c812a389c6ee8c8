#!/usr/bin/env bash
# The SPDK benchmark: bdevperf, 4 KiB, queue depth 32, on 1 core and on 2
# cores (-m 0x3 -C), against malloc, a raw pmem bdev, passthru over an AIO
# file, and pcache (pmem on /dev/shm + the same kind of AIO base), all in one
# run so the ratios compare like with like. Prints a markdown table.
#
#   scripts/bdevperf-bench.sh [seconds per read run, default 5]
#
# Write runs last 1 s on a freshly formatted cache as big as this machine
# allows (BENCH_CACHE_GIB; default 16 GiB, less when memory or /dev/shm is
# short): they measure what pcache adds on the write path while the cache
# has room. Once it fills past half, writeback to the base (an AIO file here:
# several microseconds of reactor time per 4 KiB write) competes with the
# front end, and once it is full, writes go at the speed of writeback; the
# "sustained" row shows that (10 s over a 1 GiB cache). Read runs read data
# a 4 GiB cache holds; the ratio uses the run on a clean cache, and a row
# shows the run just after the data was written, while it is written back.
#
# Environment: SPDK_DIR (else pkg-config spdk_bdev, else /opt/spdk),
# SPDK_APP_ARGS (default "--no-huge -s 2048 -u"), BENCH_DIR (default /var/tmp).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-5}
source "$repo/scripts/spdk-env.sh"

# The cache size: 16 GiB, or what fits beside SPDK's 2 GiB and the rest.
if [[ -z ${BENCH_CACHE_GIB:-} ]]; then
  avail=$(awk '/^MemAvailable:/ {print int($2 / 1048576)}' /proc/meminfo)
  shm_free=$(df -k --output=avail /dev/shm | awk 'NR == 2 {print int($1 / 1048576)}')
  BENCH_CACHE_GIB=$(( avail - 6 < shm_free - 2 ? avail - 6 : shm_free - 2 ))
  (( BENCH_CACHE_GIB > 16 )) && BENCH_CACHE_GIB=16
  (( BENCH_CACHE_GIB < 2 )) && { echo "$0: too little memory for the benchmark (${avail} GiB available)" >&2; exit 1; }
fi

dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/pcache-bench.XXXXXX")
shm=/dev/shm/pcache-bench-$$
trap 'rm -rf "$dir" "$shm".*' EXIT
export PMEM_IS_PMEM_FORCE=1
size=$((512 << 20))
truncate -s $size "$dir/base-pt.img" "$dir/base-pc.img"
# One config per bdev under test, so that no run shares its reactor with
# another bdev's background work (a pcache writing back, say).
config() { # NAME METHOD-LINES...
  local name=$1; shift
  { echo '{"subsystems":[{"subsystem":"bdev","config":['; (IFS=,; echo "$*"); echo ']}]}'; } >"$dir/$name.json"
}
config Malloc0 '{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":'$((size / 4096))',"block_size":4096}}'
config Pmem1 '{"method":"bdev_pmem_create","params":{"name":"Pmem1","path":"'$shm.raw'","size":'$size'}}'
config PT0 '{"method":"bdev_aio_create","params":{"name":"Aio0","filename":"'$dir/base-pt.img'","block_size":4096}}' \
  '{"method":"bdev_passthru_create","params":{"name":"PT0","base_bdev_name":"Aio0"}}'
pcache_config() { # NAME CACHE-FILE SIZE [EXTRA PCACHE PARAMS]
  config "$1" '{"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"'$2'","size":'$3'}}' \
    '{"method":"bdev_aio_create","params":{"name":"Base0","filename":"'$dir/base-pc.img'","block_size":4096}}' \
    '{"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Base0"'"${4:-}"'}}'
}
pcache_config PC0 "$shm.cache" $((BENCH_CACHE_GIB << 30))
# The sustained case: a 1 GiB cache, full after a fraction of a second.
pcache_config small "$shm.small" $((1 << 30))
# For the reads: a 4 GiB cache holding the whole bdev. It is filled with
# sequential writes, so sequential bypass is off (seq_cutoff_bytes 0).
pcache_config read "$shm.read" $((4 << 30)) ',"seq_cutoff_bytes":0'

# run MASK BDEV WORKLOAD SECONDS [IO_SIZE] [CONFIG]: prints the total IOPS.
run() {
  local mask=$1 bdev=$2 w=$3 t=$4 o=${5:-4096} cfg=${6:-$dir/$2.json}
  local extra=(); [[ $mask == 0x3 ]] && extra=(-C)
  env LD_PRELOAD="$so" "$bp" "${app_args[@]}" -m "$mask" "${extra[@]}" --json "$cfg" -T "$bdev" \
    -q 32 -o "$o" -w "$w" -t "$t" >"$dir/last.log" 2>&1 || { tail -20 "$dir/last.log" >&2; return 1; }
  tr '\r' '\n' <"$dir/last.log" | awk '/^ *Total *:/ {print $3}'
}

declare -A iops
for mask in 0x1 0x3; do
  for b in Malloc0 Pmem1 PT0; do
    iops[$mask,randwrite,$b]=$(run "$mask" "$b" randwrite 1)
  done
  # Each pcache run starts from a fresh cache, and its file goes right after
  # (a 16 GiB file in /dev/shm slows every run beside it on this machine).
  iops[$mask,randwrite,PC0]=$(run "$mask" PC0 randwrite 1)
  rm -f "$shm.cache"
  iops[$mask,sustained,PC0]=$(run "$mask" PC0 randwrite 10 4096 "$dir/small.json")
  rm -f "$shm.small"
  for b in Malloc0 Pmem1 PT0; do
    iops[$mask,randread,$b]=$(run "$mask" "$b" randread "$secs")
  done
  # Cached data for the reads: write the whole pcache bdev first (a 4 GiB
  # cache holds it), then read it twice; the first read shares the reactor
  # with the writeback of what was written, the second finds it clean.
  run "$mask" PC0 write "$secs" 131072 "$dir/read.json" >/dev/null
  iops[$mask,randread-wb,PC0]=$(run "$mask" PC0 randread "$secs" 4096 "$dir/read.json")
  iops[$mask,randread,PC0]=$(run "$mask" PC0 randread "$secs" 4096 "$dir/read.json")
  rm -f "$shm.read"
done

cores() { [[ $1 == 0x1 ]] && echo 1 || echo 2; }
echo
echo "bdevperf -q 32 -o 4096, randwrite -t 1 (fresh ${BENCH_CACHE_GIB} GiB cache), randread -t $secs (cached data, clean 4 GiB cache); ${app_args[*]}"
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
  printf "| %s | randread while writing back | | | | %.0f | |\n" "$(cores $mask)" "${iops[$mask,randread-wb,PC0]}"
  printf "| %s | randwrite sustained (1 GiB cache, 10 s) | | | | %.0f | |\n" "$(cores $mask)" "${iops[$mask,sustained,PC0]}"
done
echo
echo "target: pcache / raw pmem >= 0.80 for randwrite and for randread of cached data"
