#!/usr/bin/env bash
# UNMAP and WRITE_ZEROES through pcache: after them the range reads as zeros,
# across a restart, and writeback puts the zeros on the base device.
source "$(dirname "$0")/lib.sh"
DD=$SPDK_DIR/bin/spdk_dd
BP=$SPDK_DIR/bin/bdevperf

for w in unmap write_zeroes; do
  rm -f "$SHM.pmem"
  stack_config "$WORK/stack.json" $((256 << 20)) $((64 << 20))
  # fallocate lets the AIO base do write_zeroes itself (a hole punch).
  sed -i 's/"block_size":4096}}/"block_size":4096,"fallocate":true}}/' "$WORK/stack.json"
  head -c $((64 << 20)) /dev/urandom >"$WORK/data.bin"
  env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$WORK/stack.json" --if "$WORK/data.bin" --ob PC0 --bs 1048576 \
    >"$WORK/dd1.log" 2>&1
  check "$w: spdk_dd wrote 64 MiB of random data through PC0" [ $? -eq 0 ]
  # A sequential bdevperf run of 1 MiB requests covers the whole 64 MiB bdev many times.
  env LD_PRELOAD="$MODULE" "$BP" "${APP_ARGS[@]}" -m 0x1 --json "$WORK/stack.json" -T PC0 -q 4 -o 1048576 -w "$w" -t 1 \
    >"$WORK/bp.log" 2>&1
  check "$w: bdevperf -w $w ran without errors" [ $? -eq 0 ]
  env LD_PRELOAD="$MODULE" "$DD" "${APP_ARGS[@]}" --json "$WORK/stack.json" --ib PC0 --of "$WORK/out.bin" --bs 1048576 \
    >"$WORK/dd2.log" 2>&1
  check "$w: the whole bdev reads back as zeros after a restart" \
    cmp -s "$WORK/out.bin" <(head -c $((64 << 20)) /dev/zero)
  # Write everything back, then look at the base file itself.
  sock=$WORK/tgt.sock
  if start_app tgt "$sock" "$WORK/tgt.log" "$SPDK_DIR/bin/spdk_tgt" "${APP_ARGS[@]}" -m 0x1 --json "$WORK/stack.json"; then
    check "$w: bdev_pcache_flush" jsonrpc "$sock" bdev_pcache_flush '{"name":"PC0"}'
    stop_app tgt "$sock"
    check "$w: the base device holds zeros after writeback" cmp -s "$WORK/base.img" <(head -c $((64 << 20)) /dev/zero)
  else
    fail "$w: spdk_tgt did not start"
  fi
done

finish
