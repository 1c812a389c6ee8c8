# Sourced by every script that needs SPDK. find_spdk prints the SPDK install
# prefix, looking where spdk-sys/build.rs looks and in the same order:
# $SPDK_DIR, then pkg-config spdk_bdev's prefix, then /opt/spdk; the first
# that holds SPDK's headers wins. Prints nothing and fails if none does.
find_spdk() {
  local d
  for d in "${SPDK_DIR:-}" "$(pkg-config --variable=prefix spdk_bdev 2>/dev/null || true)" /opt/spdk; do
    if [ -n "$d" ] && [ -f "$d/include/spdk/bdev_module.h" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

# Where find_spdk looked, for messages.
SPDK_LOOKED='$SPDK_DIR, pkg-config spdk_bdev, /opt/spdk'
