# Sourced by the SPDK benchmark scripts: finds SPDK (SPDK_DIR, else
# pkg-config spdk_bdev, else /opt/spdk) and bdevperf, reads SPDK_APP_ARGS
# (default "--no-huge -s 2048 -u") and builds the module. Sets spdk, bp,
# app_args and so; expects repo.
source "$repo/scripts/find-spdk.sh"
spdk=$(find_spdk) || { echo "$0: SPDK not found (looked at $SPDK_LOOKED)" >&2; exit 1; }
bp=$spdk/bin/bdevperf
[[ -x $bp ]] || { echo "$0: bdevperf not found in $spdk/bin (set SPDK_DIR)" >&2; exit 1; }
read -r -a app_args <<<"${SPDK_APP_ARGS:---no-huge -s 2048 -u}"
so=$repo/target/release/libpcache.so
SPDK_DIR=$spdk "$repo/scripts/build-module.sh" --quiet
