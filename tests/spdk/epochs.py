#!/usr/bin/env python3
"""FLUSH epochs written by fio through SPDK's plugin, and the check that a
device image holds a prefix of them.

  epochs.py job OUT.fio CONF.json BDEV EPOCHS REGION_MIB EPOCH_MIB
      A fio job file: EPOCHS stonewalled jobs e1, e2, ... each writing
      EPOCH_MIB of distinct random 4 KiB blocks of the first REGION_MIB of
      BDEV, every block filled with the job's own pattern, and ending with an
      fsync (a FLUSH of BDEV). Each job logs its writes (write_iolog) to
      eN.iolog, in the directory fio runs in; fio opens that log only when
      the job starts, after the job before it ended, FLUSH included.

  epochs.py check IMAGE DIR REGION_MIB [--flushed-kept]
      IMAGE (the region's bytes, read back after fio was killed) must be a
      prefix of the epochs: for some k, every block holds what the epochs up
      to k left there, or a write of epoch k+1. Epochs 1..F are known to have
      completed their FLUSH (DIR holds eF+1.iolog); the epoch after F may be
      cut short, so any of its writes may be there. With --flushed-kept, k
      must be F: nothing acknowledged before the last completed FLUSH may be
      missing. Prints k; exits 1 with the first block that breaks the rule.
"""
import os
import sys

BLOCK = 4096
MAGIC = 0x50430000  # "PC" in the pattern's high half; the low half is the epoch


def pattern(epoch):
    return (MAGIC + epoch).to_bytes(4, "big") * (BLOCK // 4)


def job(out, conf, bdev, epochs, region_mib, epoch_mib):
    lines = [
        "[global]",
        "ioengine=spdk_bdev",
        f"spdk_json_conf={conf}",
        f"filename={bdev}",
        "env_context=--no-huge --legacy-mem --no-pci --iova-mode=va",
        "spdk_mem=2048",
        "thread=1",
        "direct=1",
        f"bs={BLOCK}",
        "iodepth=16",
        "rw=randwrite",
        "offset=0",
        f"size={region_mib}m",
        f"io_size={epoch_mib}m",
        "end_fsync=1",
        # fio would otherwise alter a few bytes of every buffer.
        "scramble_buffers=0",
        "",
    ]
    for e in range(1, epochs + 1):
        lines += [f"[e{e}]", "stonewall", f"buffer_pattern=0x{MAGIC + e:08x}", f"write_iolog=e{e}.iolog", ""]
    with open(out, "w") as f:
        f.write("\n".join(lines))


def writes(path):
    """Block numbers an iolog says its job wrote."""
    blocks = set()
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 5 and parts[2] == "write":
                off, length = int(parts[3]), int(parts[4])
                blocks.update(range(off // BLOCK, (off + length) // BLOCK))
    return blocks


def epoch_in(data, b):
    """The epoch whose pattern block b holds (0 for never written), or None."""
    blk = data[b * BLOCK:(b + 1) * BLOCK]
    if blk == bytes(BLOCK):
        return 0
    e = int.from_bytes(blk[:4], "big") - MAGIC
    return e if 0 < e < 0x10000 and blk == pattern(e) else None


def check(image, logdir, region_mib, flushed_kept):
    nblocks = (region_mib << 20) // BLOCK
    data = open(image, "rb").read()
    if len(data) < nblocks * BLOCK:
        print(f"{image}: {len(data)} bytes, shorter than the region")
        return 1
    f = 0
    while os.path.exists(os.path.join(logdir, f"e{f + 2}.iolog")):
        f += 1
    # e1 starts first; if even e2 never started, no FLUSH is known complete.
    if not os.path.exists(os.path.join(logdir, "e1.iolog")):
        print("no epoch started")
        return 1
    held = [epoch_in(data, b) for b in range(nblocks)]
    torn = [b for b, e in enumerate(held) if e is None or e > f + 1]
    if torn:
        b = torn[0]
        print(f"block {b}: {len(torn)} blocks hold no epoch's pattern or one past epoch {f + 1}")
        return 1
    state = [0] * nblocks  # what epochs 1..k left in each block
    written = [writes(os.path.join(logdir, f"e{e}.iolog")) for e in range(1, f + 1)]
    best = None
    for k in range(0, f + 1):
        if k > 0:
            for b in written[k - 1]:
                state[b] = k
        nxt = written[k] if k < f else None  # epoch f+1 may have written anywhere
        bad = next((b for b in range(nblocks)
                    if held[b] != state[b] and not (held[b] == k + 1 and (nxt is None or b in nxt))), None)
        if bad is None:
            best = k
        elif k == f and flushed_kept:
            print(f"block {bad} holds epoch {held[bad]}, not epoch {state[bad]} that FLUSH {f} acknowledged")
            return 1
    if best is None or (flushed_kept and best != f):
        print(f"not a prefix of the {f} flushed epochs (plus part of epoch {f + 1})")
        return 1
    print(f"prefix: epochs 1..{best} complete (of {f} flushed; {sum(map(len, written))} writes logged)")
    return 0


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[:1] == ["job"] and len(a) == 7:
        job(a[1], a[2], a[3], int(a[4]), int(a[5]), int(a[6]))
    elif a[:1] == ["check"] and len(a) in (4, 5):
        sys.exit(check(a[1], a[2], int(a[3]), a[4:] == ["--flushed-kept"]))
    else:
        sys.exit(__doc__)
