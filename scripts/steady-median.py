#!/usr/bin/env python3
"""Medians of several runs of scripts/bdevperf-steady.sh.

    scripts/steady-median.py RUN1.md RUN2.md RUN3.md

Each file is one run's standard output (its markdown table). Prints the
same table with each IOPS column's median and each ratio's median and
min-max over the runs, for the rows every run has.
"""
import statistics
import sys


def rows(path):
    """{(base, cores, case): {column: value}} of one run's table."""
    header, out = None, {}
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 4:
            continue
        if cells[0] == "base":
            header = cells
            continue
        if header is None or set(cells[0]) <= set("- "):
            continue
        out[tuple(cells[:3])] = dict(zip(header[3:], cells[3:]))
    return header, out


def num(v):
    try:
        return float(v)
    except ValueError:
        return None


def main(paths):
    if len(paths) < 2:
        sys.exit(__doc__)
    runs = [rows(p) for p in paths]
    header = runs[0][0]
    if header is None:
        sys.exit(f"{paths[0]}: no table")
    keys = [k for k in runs[0][1] if all(k in r for _, r in runs)]
    print(f"Medians of {len(paths)} runs; ratios as median (min-max).\n")
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" for _ in header) + " |")
    for k in keys:
        cells = list(k)
        for col in header[3:]:
            vals = [num(r[k].get(col, "")) for _, r in runs]
            vals = [v for v in vals if v is not None]
            if not vals:
                cells.append("—")
            elif "IOPS" in col:
                cells.append(f"{statistics.median(vals):.0f}")
            else:
                cells.append(f"{statistics.median(vals):.2f} ({min(vals):.2f}–{max(vals):.2f})")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
