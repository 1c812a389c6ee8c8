#!/usr/bin/env bash
# Start nvmf_tgt with the pcache stack and export PC0 over NVMe-oF/TCP on
# 127.0.0.1:4420 as nqn.2016-06.io.spdk:pcache0 (configs/nvmf-tcp-pcache.json).
#
#   scripts/start-nvmf-tcp.sh [extra app args, e.g. -m 0x1]
#
# A client: bdevperf --json configs/bdevperf-nvme-tcp.json, or
#   nvme connect -t tcp -a 127.0.0.1 -s 4420 -n nqn.2016-06.io.spdk:pcache0
# Environment: as scripts/start-spdk-tgt.sh (SPDK_DIR, SPDK_APP_ARGS, SPDK_RPC_SOCK, ...).
set -euo pipefail
dir=$(cd "$(dirname "$0")" && pwd)
export SPDK_APP=nvmf_tgt
export PCACHE_CONFIG=${PCACHE_CONFIG:-$dir/../configs/nvmf-tcp-pcache.json}
exec "$dir/start-spdk-tgt.sh" "$@"
