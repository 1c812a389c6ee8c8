#!/usr/bin/env bash
# Start an SPDK app with the pcache module (libpcache.so) preloaded and a JSON
# config that builds the pmem + AIO + pcache stack (PC0).
#
#   scripts/start-spdk-tgt.sh [extra app args, e.g. -m 0x1]
#
# Environment (all optional):
#   SPDK_DIR        SPDK install prefix (else `pkg-config spdk_bdev`, else /opt/spdk)
#   SPDK_APP        app to run (default spdk_tgt; nvmf_tgt, vhost, ...)
#   PCACHE_CONFIG   JSON config (default configs/spdk_tgt-pcache.json)
#   SPDK_APP_ARGS   memory args (default "--no-huge -s 2048 -u"; "" for hugepages)
#   SPDK_RPC_SOCK   RPC socket (default /var/tmp/spdk.sock)
#   PCACHE_SO       module (default target/release/libpcache.so, built if missing)
#   BASE_SIZE       size of AIO base files the config names and that are missing (default 2G)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

source "$repo/scripts/find-spdk.sh"
spdk=$(find_spdk) || spdk=${SPDK_DIR:-/opt/spdk}   # maybe a source tree (build/bin)
app=${SPDK_APP:-spdk_tgt}
bin=$spdk/bin/$app
[[ -x $bin ]] || bin=$spdk/build/bin/$app   # an SPDK source tree
[[ -x $bin ]] || { echo "$0: $app not found in $spdk/bin or $spdk/build/bin (set SPDK_DIR)" >&2; exit 1; }

config=${PCACHE_CONFIG:-$repo/configs/spdk_tgt-pcache.json}
[[ -r $config ]] || { echo "$0: cannot read config $config" >&2; exit 1; }
so=${PCACHE_SO:-$repo/target/release/libpcache.so}
if [[ -z ${PCACHE_SO:-} && ! -e $so ]]; then
  SPDK_DIR=$spdk "$repo/scripts/build-module.sh"
fi
[[ -e $so ]] || { echo "$0: module $so not found" >&2; exit 1; }

# AIO base files the config names: create missing ones (sparse).
sed -n 's/.*"filename": *"\([^"]*\)".*/\1/p' "$config" | while read -r f; do
  [[ -e $f ]] || truncate -s "${BASE_SIZE:-2G}" "$f"
done
# pmem files on /dev/shm are DRAM: tell libpmem to treat them as pmem anyway.
if grep -q '"path": *"/dev/shm/' "$config"; then
  export PMEM_IS_PMEM_FORCE=${PMEM_IS_PMEM_FORCE:-1}
fi

# shellcheck disable=SC2086 # SPDK_APP_ARGS is a list of words
exec env LD_PRELOAD="$so${LD_PRELOAD:+:$LD_PRELOAD}" "$bin" ${SPDK_APP_ARGS---no-huge -s 2048 -u} \
  -r "${SPDK_RPC_SOCK:-/var/tmp/spdk.sock}" --json "$config" "$@"
