#!/usr/bin/env bash
# The steady-state benchmark: bdevperf against a bare base bdev and against
# pcache over the same kind of base, side by side in one run, each in its own
# bdevperf process. A pcache is preconditioned first: in the same process
# (bdevperf -z, perform_tests twice), the workload runs until at least twice
# the cache's size has been written, so the cache is full and writeback and
# GC run as they do in steady state; then the same workload is timed. The
# bare base gets a fully written file, so it is not timed on a sparse one.
#
#   scripts/bdevperf-steady.sh [seconds per timed run, default 15] [cases...]
#
# Cases (all by default): ws2g (4 KiB randwrite, 2 GiB over a 256 MiB cache),
# ws512m (512 MiB over 1 GiB), ws128m (128 MiB over 1 GiB), seq128k (128 KiB
# sequential writes, 2 GiB over 256 MiB), read (4 KiB randread of cached data
# while writeback drains, against the raw pmem bdev); the hot set of ws512m
# read and mixed: rd512m (randread, after a separate process filled the
# cache with random writes), mix70 and mix50 (randrw, 70 % and 50 % reads);
# rd2g (randread of 2 GiB over a 256 MiB cache: most reads miss, and the
# cache, filled by the reads themselves first, must not slow them).
# A mix row also shows pcache against its own randread and randwrite of the
# same run (rd512m and ws512m, when they ran), combined as
# 1 / (r / read + (1 - r) / write). Bases: an AIO file on BENCH_DIR (default
# /var/tmp), a delay bdev over malloc with 100 us write latency, and a base
# as fast as an NVMe SSD, a delay bdev of 20 us over a null bdev (BENCH_BASES,
# default "aio delay"; "fast" adds that one). Cores: BENCH_MASKS="0x1 0x3". Where SPDK has OCF
# (libspdk_bdev_ocf), OCF in write-back mode over the same kind of pmem bdev
# and base runs beside them, preconditioned as pcache is (BENCH_OCF=0 leaves
# it out). Prints a markdown table of IOPS and the ratios.
#
# BENCH_PC_PARAMS adds parameters to bdev_pcache_create (JSON members with a
# leading comma, e.g. ',"writeback_batch_bytes":268435456'). BENCH_TRACE=1
# prints the cache's state (used segments, dirty bytes, base rates, bypasses)
# every second of each timed pcache run, on stderr. BENCH_PERF=DIR records a
# CPU profile (perf record) of each timed pcache and OCF run into DIR.
#
# Environment: SPDK_DIR (else pkg-config spdk_bdev, else /opt/spdk),
# SPDK_APP_ARGS (default "--no-huge -s 2048 -u").
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-15}
shift || true
cases=("$@")
[[ ${#cases[@]} -eq 0 ]] && cases=(ws2g ws512m ws128m seq128k read rd512m mix70 mix50)
read -r -a bases <<<"${BENCH_BASES:-aio delay}"
read -r -a masks <<<"${BENCH_MASKS:-0x1 0x3}"
source "$repo/scripts/spdk-env.sh"

dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/pcache-steady.XXXXXX")
shm=/dev/shm/pcache-steady-$$
trap '[[ -n ${KEEP:-} ]] || rm -rf "$dir"; rm -f "$shm".*' EXIT
export PMEM_IS_PMEM_FORCE=1
MiB=$((1 << 20))

# case -> "workload io_size base_MiB cache_MiB read_percent"
declare -A spec=(
  [ws2g]="randwrite 4096 2048 256 0"
  [ws512m]="randwrite 4096 512 1024 0"
  [ws128m]="randwrite 4096 128 1024 0"
  [seq128k]="write 131072 2048 256 0"
  [read]="randread 4096 512 1024 100"
  [rd512m]="randread 4096 512 1024 100"
  [rd2g]="randread 4096 2048 256 100"
  [mix70]="randrw 4096 512 1024 70"
  [mix50]="randrw 4096 512 1024 50"
)
ocf=0
if [[ ${BENCH_OCF:-1} != 0 ]] && ls "$spdk"/lib/libspdk_bdev_ocf.* >/dev/null 2>&1; then ocf=1; fi

# base_lines KIND SIZE_MiB FILE: the config lines of a base bdev named Base0.
base_lines() {
  case $1 in
    aio) echo '{"method":"bdev_aio_create","params":{"name":"Base0","filename":"'$3'","block_size":4096}}' ;;
    delay) echo '{"method":"bdev_malloc_create","params":{"name":"Mal0","num_blocks":'$(($2 * MiB / 4096))',"block_size":4096}},'\
'{"method":"bdev_delay_create","params":{"name":"Base0","base_bdev_name":"Mal0","avg_read_latency":0,"p99_read_latency":0,"avg_write_latency":100,"p99_write_latency":100}}' ;;
    # As fast as an NVMe SSD: 20 us each way, data not kept (bdev_null).
    fast) echo '{"method":"bdev_null_create","params":{"name":"Null0","num_blocks":'$(($2 * MiB / 4096))',"block_size":4096}},'\
'{"method":"bdev_delay_create","params":{"name":"Base0","base_bdev_name":"Null0","avg_read_latency":20,"p99_read_latency":20,"avg_write_latency":20,"p99_write_latency":20}}' ;;
  esac
}
config() { # FILE LINES
  { echo '{"subsystems":[{"subsystem":"bdev","config":['; echo "$2"; echo ']}]}'; } >"$1"
}
# mix_args WORKLOAD: bdevperf's read share for a randrw case.
mix_args() { [[ $1 == randrw ]] && echo "-M $mix"; }
# run CONFIG BDEV MASK WORKLOAD IO_SIZE SECONDS: prints the total IOPS.
run() {
  local extra=(); [[ $3 == 0x3 ]] && extra=(-C)
  # shellcheck disable=SC2046
  env LD_PRELOAD="$so" "$bp" "${app_args[@]}" "${mem[@]}" -m "$3" "${extra[@]}" --json "$1" -T "$2" \
    -q 32 -o "$5" -w "$4" $(mix_args "$4") -t "$6" >"$dir/last.log" 2>&1 || { tail -20 "$dir/last.log" >&2; return 1; }
  tr '\r' '\n' <"$dir/last.log" | awk '/^ *Total *:/ {print $3}'
}
# run_pre CONFIG BDEV MASK WORKLOAD IO_SIZE PRE_SECONDS SECONDS: runs the
# workload PRE_SECONDS, then times it SECONDS in the same process; prints
# the timed run's total IOPS.
run_pre() {
  local extra=() sock=$dir/bp.sock; [[ $3 == 0x3 ]] && extra=(-C)
  # shellcheck disable=SC2046
  env LD_PRELOAD="$so" "$bp" "${app_args[@]}" "${mem[@]}" -m "$3" "${extra[@]}" --json "$1" -T "$2" \
    -q 32 -o "$5" -w "$4" $(mix_args "$4") -t "$7" -z -r "$sock" >"$dir/last.log" 2>&1 &
  local pid=$!
  python3 - "$sock" "$6" "$7" "$2" "$pid" "${BENCH_PERF:+$BENCH_PERF/$kind-$3-$c-$2.perf.data}" <<'PY' || { kill -9 $pid; tail -20 "$dir/last.log" >&2; return 1; }
import json, os, socket, subprocess, sys, time
path, pre, secs, bdev, pid, perf_out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
def call(method, params=None):
    for _ in range(300):
        try:
            s = socket.socket(socket.AF_UNIX); s.connect(path); break
        except OSError:
            time.sleep(0.1)
    req = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params: req["params"] = params
    s.sendall(json.dumps(req).encode()); buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk: raise SystemExit("bdevperf closed the connection")
        buf += chunk
        try: return json.loads(buf)
        except ValueError: continue
def trace():
    # BENCH_TRACE=1: a line of the cache's state every second of the timed run.
    keys = ("segs_used", "dirty_bytes", "cache_full", "absorbed_percent", "full_hits_percent", "base_writes_per_sec",
            "base_flushes_per_sec", "writeback_bytes_per_sec", "bypass_full_writes", "deferred_writes")
    for _ in range(secs):
        time.sleep(1)
        st = call("bdev_pcache_get_stats", {"name": "PC0"}).get("result", [{}])[0]
        print("    trace: " + ", ".join(f"{k} {st.get(k)}" for k in keys), file=sys.stderr)
for t in (pre, secs):
    if t == secs and os.environ.get("BENCH_TRACE") and bdev == "PC0":
        import threading
        threading.Thread(target=trace, daemon=True).start()
    if t == secs and perf_out:
        # BENCH_PERF=DIR: a CPU profile of the timed run, per thread (perf report --sort comm,dso,symbol).
        subprocess.Popen(["perf", "record", "-q", "-F", "999", "-p", pid, "-o", perf_out, "--", "sleep", str(secs)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = call("perform_tests", {"time_in_sec": t})
    if "error" in r: raise SystemExit(r["error"])
# Where the writes went, for the log (stderr): a few counters at the end.
if bdev == "PC0":
    st = call("bdev_pcache_get_stats", {"name": "PC0"}).get("result", [{}])[0]
    keys = ("write_ops", "deferred_writes", "bypass_writes", "bypass_full_writes", "writeback_bytes",
            "writeback_skipped_bytes", "writeback_kept_bytes", "base_writes", "base_flushes", "dirty_bytes",
            "read_miss_ops", "gc_moved_bytes")
    print("    pcache stats: " + ", ".join(f"{k} {st.get(k)}" for k in keys), file=sys.stderr)
call("spdk_kill_instance", {"sig_name": "SIGTERM"})
PY
  wait $pid || true
  tr '\r' '\n' <"$dir/last.log" | awk '/^ *Total *:/ && $3 > 0 {v = $3} END {print v}'
}
# fresh_file PATH SIZE_MiB: a fully written file (not sparse).
fresh_file() { dd if=/dev/zero of="$1" bs=1M count="$2" conv=fsync status=none; }

declare -A out
for kind in "${bases[@]}"; do
  for mask in "${masks[@]}"; do
    for c in "${cases[@]}"; do
      read -r w o base_mib cache_mib mix <<<"${spec[$c]}"
      # A malloc base lives in the app's memory: give it room.
      mem=(); [[ $kind == delay ]] && mem=(-s $((base_mib + 1536)))
      if [[ $c == read ]]; then
        # The reference for reads of cached data is the raw pmem bdev.
        config "$dir/raw.json" '{"method":"bdev_pmem_create","params":{"name":"Pmem1","path":"'$shm.raw'","size":'$((base_mib * MiB))'}}'
        out[$kind,$mask,$c,base]=$(run "$dir/raw.json" Pmem1 "$mask" randread 4096 "$secs")
        rm -f "$shm.raw"
      else
        fresh_file "$dir/bare.img" "$base_mib"
        config "$dir/bare.json" "$(base_lines "$kind" "$base_mib" "$dir/bare.img")"
        out[$kind,$mask,$c,base]=$(run "$dir/bare.json" Base0 "$mask" "$w" "$o" "$secs")
        rm -f "$dir/bare.img"
      fi
      # Precondition: at least twice the cache written at the base's rate
      # (a cache writes at least as fast while it has room), then timed.
      write_share=$((100 - mix)); (( write_share == 0 )) && write_share=100
      pre=$(( (2 * cache_mib * MiB * 100) / (${out[$kind,$mask,$c,base]%.*} * o * write_share + 1) + 3 ))
      (( pre > 120 )) && pre=120
      pmem='{"method":"bdev_pmem_create","params":{"name":"Pmem0","path":"'$shm.cache'","size":'$((cache_mib * MiB))'}}'
      fresh_file "$dir/pc.img" "$base_mib"
      # The read case fills the cache with sequential writes: no bypass there.
      pc_params=${BENCH_PC_PARAMS:-}; [[ $c == read ]] && pc_params+=',"seq_cutoff_bytes":0'
      config "$dir/pc.json" "$(base_lines "$kind" "$base_mib" "$dir/pc.img"),$pmem,"\
'{"method":"bdev_pcache_create","params":{"name":"PC0","cache_bdev":"Pmem0","base_bdev":"Base0"'"$pc_params"'}}'
      case $c in
        read)
          # Write the whole bdev (it fits the cache), then read it while it drains.
          run "$dir/pc.json" PC0 "$mask" write 131072 5 >/dev/null
          out[$kind,$mask,$c,pcache]=$(run "$dir/pc.json" PC0 "$mask" randread 4096 "$secs") ;;
        rd512m)
          # Random writes fill the cache first (reads write nothing), in a
          # process of their own; the cache is reloaded for the reads.
          run "$dir/pc.json" PC0 "$mask" randwrite 4096 "$(( (2 * cache_mib * MiB) / (100000 * o) + 3 ))" >/dev/null
          out[$kind,$mask,$c,pcache]=$(run_pre "$dir/pc.json" PC0 "$mask" "$w" "$o" 3 "$secs") ;;
        *)
          out[$kind,$mask,$c,pcache]=$(run_pre "$dir/pc.json" PC0 "$mask" "$w" "$o" "$pre" "$secs") ;;
      esac
      rm -f "$shm.cache" "$dir/pc.img"
      # OCF write-back over the same kind of pmem bdev and base, preconditioned
      # the same way (not for reads: its cache would start empty).
      out[$kind,$mask,$c,ocf]=
      # Not over the fast base: bdev_null has no FLUSH, and OCF fails every
      # flush it forwards to a core that lacks it.
      if (( ocf )) && [[ $c != read && $c != rd512m && $kind != fast ]]; then
        fresh_file "$dir/ocf.img" "$base_mib"
        config "$dir/ocf.json" "$(base_lines "$kind" "$base_mib" "$dir/ocf.img"),$pmem,"\
'{"method":"bdev_ocf_create","params":{"name":"OC0","mode":"wb","cache_bdev_name":"Pmem0","core_bdev_name":"Base0"}}'
        out[$kind,$mask,$c,ocf]=$(run_pre "$dir/ocf.json" OC0 "$mask" "$w" "$o" "$pre" "$secs")
        rm -f "$shm.cache" "$dir/ocf.img"
      fi
      echo "  $kind $mask $c: base ${out[$kind,$mask,$c,base]} pcache ${out[$kind,$mask,$c,pcache]} ocf ${out[$kind,$mask,$c,ocf]:--}" >&2
    done
  done
done

ratio() { [[ -n $1 && -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }' || echo "—"; }
echo
echo "bdevperf -q 32, $secs s timed after preconditioning (>= 2x the cache written); ${app_args[*]}"
echo "pmem on /dev/shm (PMEM_IS_PMEM_FORCE=1); aio = AIO file in ${BENCH_DIR:-/var/tmp}; delay = delay bdev (100 us writes) over malloc; fast = delay bdev (20 us) over null, no OCF (null has no FLUSH)"
echo "ocf = OCF write-back over the same pmem bdev and base; own = pcache's rd512m and ws512m of this run, combined for the mix"
echo
echo "| base | cores | case | base IOPS | pcache IOPS | OCF IOPS | pcache / base | pcache / OCF | pcache / own |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for kind in "${bases[@]}"; do
  for mask in "${masks[@]}"; do
    for c in "${cases[@]}"; do
      b=${out[$kind,$mask,$c,base]}; p=${out[$kind,$mask,$c,pcache]}; f=${out[$kind,$mask,$c,ocf]}
      label=$c; [[ $c == read ]] && label="read (base column: raw pmem)"
      own=
      read -r _ _ _ _ mix <<<"${spec[$c]}"
      rd=${out[$kind,$mask,rd512m,pcache]:-}; wr=${out[$kind,$mask,ws512m,pcache]:-}
      if [[ $c == mix* && -n $rd && -n $wr ]]; then
        own=$(awk -v m="$mix" -v r="$rd" -v w="$wr" 'BEGIN { print 1 / (m / 100 / r + (100 - m) / 100 / w) }')
      fi
      printf "| %s | %s | %s | %.0f | %.0f | %s | %s | %s | %s |\n" "$kind" "$([[ $mask == 0x1 ]] && echo 1 || echo 2)" "$label" \
        "$b" "$p" "$([[ -n $f ]] && printf %.0f "$f" || echo —)" "$(ratio "$p" "$b")" "$(ratio "$p" "$f")" "$(ratio "$p" "$own")"
    done
  done
done
