#!/usr/bin/env bash
# Start the vhost app with the pcache stack and a vhost-user-blk controller
# vhost.0 serving PC0 (configs/vhost-blk-pcache.json); the controller socket
# is $VHOST_SOCK_DIR/vhost.0 (default /var/tmp/vhost.0).
#
#   scripts/start-vhost-blk.sh [extra app args, e.g. -m 0x1]
#
# A QEMU guest then uses, with shared guest memory (memory-backend-file,share=on):
#   -chardev socket,id=char0,path=/var/tmp/vhost.0 -device vhost-user-blk-pci,chardev=char0
# Environment: as scripts/start-spdk-tgt.sh (SPDK_DIR, SPDK_APP_ARGS, SPDK_RPC_SOCK, ...),
# plus VHOST_SOCK_DIR.
set -euo pipefail
dir=$(cd "$(dirname "$0")" && pwd)
export SPDK_APP=vhost
export PCACHE_CONFIG=${PCACHE_CONFIG:-$dir/../configs/vhost-blk-pcache.json}
exec "$dir/start-spdk-tgt.sh" -S "${VHOST_SOCK_DIR:-/var/tmp}" "$@"
