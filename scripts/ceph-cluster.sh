#!/usr/bin/env bash
# A throwaway one-node Ceph cluster for tests and benchmarks: one monitor and
# one OSD on 127.0.0.1, no systemd, no mgr, auth none, pools of size 1, all
# state in one directory. Needs Debian's ceph-mon, ceph-osd and ceph-common.
#
#   scripts/ceph-cluster.sh start DIR [IMAGE_MiB]   # pool "rbd", image "img0"
#   scripts/ceph-cluster.sh stop DIR
#   scripts/ceph-cluster.sh osd-stop DIR | osd-start DIR   # the OSD alone
#
# start prints the ceph.conf path on its last line (what
# bdev_rbd_register_cluster takes as config_file, with the pool and image
# names above). Ports: the monitor listens on a free port the kernel picks,
# the OSD on the 40 ports after it, so clusters of parallel runs do not
# collide. The OSD uses MemStore (objects in RAM, saved to DIR when the OSD
# stops cleanly; its RSS grew past 5 GB for a fully written 1 GiB image):
# BlueStore on a file, though it takes about 600 MB, crashed here on an
# assert (`req.bl.length() == req.r_len` in _prepare_read_ioc) every time an
# `rbd export` read objects that random 4 KiB writes had just filled, and
# once under a random-write benchmark. CEPH_OSD_STORE=bluestore picks it
# anyway (on a sparse file in DIR sized well past the image, since a full
# OSD blocks every write).
set -euo pipefail

usage() { echo "usage: $0 start DIR [IMAGE_MiB] | stop DIR | osd-stop DIR | osd-start DIR" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
cmd=$1 dir=$2 image_mib=${3:-1024}

for t in ceph-mon ceph-osd ceph rbd monmaptool; do
  command -v "$t" >/dev/null || { echo "$0: $t not found (apt install ceph-mon ceph-osd ceph-common)" >&2; exit 3; }
done

conf=$dir/ceph.conf

# kill_pidfile FILE: stops the daemon FILE names and waits for it (10 s, then KILL).
kill_pidfile() {
  local pid
  [[ -f $1 ]] || return 0
  pid=$(cat "$1" 2>/dev/null) || return 0
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  kill_pidfile "$dir/run/osd.0.pid"
  kill_pidfile "$dir/run/mon.a.pid"
}

# ceph_ ARGS: the ceph CLI against this cluster, bounded in time.
ceph_() { timeout 30 ceph -c "$conf" --connect-timeout 10 "$@"; }

start() {
  if [[ -f $dir/run/mon.a.pid ]] && kill -0 "$(cat "$dir/run/mon.a.pid")" 2>/dev/null; then
    echo "$0: a cluster already runs in $dir" >&2; exit 1
  fi
  rm -rf "$dir"
  mkdir -p "$dir/run" "$dir/log" "$dir/mon.a" "$dir/osd.0"
  local port fsid store
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
  store=${CEPH_OSD_STORE:-memstore}
  cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
ms bind ipv4 = true
ms bind ipv6 = false
ms bind msgr1 = false
ms bind port min = $((port + 1))
ms bind port max = $((port + 40))
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
osd crush chooseleaf type = 0
run dir = $dir/run
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
keyring = /dev/null
osd objectstore = $store
osd data = $dir/\$name
mon data = $dir/\$name
bluestore block path = $dir/\$name.block
bluestore block create = true
bluestore block size = $(( (image_mib * 4 + 8192) << 20 ))
bluestore min alloc size = 4096
bluestore cache autotune = false
bluestore cache size = 134217728
osd memory target = 939524096
bluestore fsck on mount = false
memstore device bytes = $(( (image_mib + 1024) << 20 ))
# Objects as fixed pages, not buffer lists that random 4 KiB writes split
# ever finer (with those, one bare image ran 3.6 K, then 1.75 K, 1.57 K and
# 1.17 K IOPS in four 20 s runs in a row).
memstore page set = true
# A MemStore OSD saves its objects only when it unmounts the store, which
# the fast shutdown (the default on SIGTERM) skips: osd-stop would lose them.
osd fast shutdown = false
EOF
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$dir/monmap" >/dev/null
  ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" >"$dir/log/mkfs-mon.log" 2>&1
  ceph-mon -c "$conf" -i a 2>>"$dir/log/mon.a.stderr"
  local id
  id=$(ceph_ osd create)
  [[ $id == 0 ]] || { echo "$0: ceph osd create gave id '$id'" >&2; stop; exit 1; }
  ceph-osd -c "$conf" -i 0 --mkfs >"$dir/log/mkfs-osd.log" 2>&1 \
    || { tail -5 "$dir/log/mkfs-osd.log" >&2; stop; exit 1; }
  ceph-osd -c "$conf" -i 0 2>>"$dir/log/osd.0.stderr"
  ceph_ osd pool create rbd 32 >/dev/null 2>&1
  # Both write objects: once they return, placement groups serve I/O
  # (without a mgr, `ceph pg stat` has no answer to wait for).
  timeout 60 rbd -c "$conf" pool init rbd
  timeout 60 rbd -c "$conf" create --size "$image_mib" rbd/img0
  echo "$conf"
}

case $cmd in
  start) start ;;
  stop) stop ;;
  # An OSD that goes away and comes back: I/O to the pool waits meanwhile.
  osd-stop) kill_pidfile "$dir/run/osd.0.pid" ;;
  osd-start) ceph-osd -c "$conf" -i 0 2>>"$dir/log/osd.0.stderr" ;;
  *) usage ;;
esac
