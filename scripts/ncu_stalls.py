"""Warp-state totals of each kernel in a `gpu_suite.sh profile` log (Nsight Compute text), so
kernels with different grids compare: ncu's smsp__average_warp_latency_issue_stalled_*.ratio is
per warp, so it is multiplied by the warps launched (blocks x threads / 32) and printed in
millions of warp-cycles, beside the duration, IPC and instructions executed.

    python scripts/ncu_stalls.py results/logs/ncu-106cbd4-ovpp-cudnn-4x16x2048x128-h200.txt
"""

from __future__ import annotations

import re
import sys

HEADER = re.compile(r"^  (?:void )?(\S+?)(?:<.*>)?(?:\(.*\))? \((\d+), (\d+), (\d+)\)x\((\d+), (\d+), (\d+)\), Context")
STALL = re.compile(r"\s+smsp__average_warp_latency_issue_stalled_(\w+)\.ratio\s+inst/warp\s+([\d,.]+)")
FIELDS = {"us": r"\s+Duration\s+us\s+([\d,.]+)", "ipc": r"\s+Executed Ipc Active\s+inst/cycle\s+([\d.]+)",
          "inst": r"\s+Executed Instructions\s+inst\s+([\d,]+)"}
SHOWN = ("wait", "barrier", "long_scoreboard", "short_scoreboard", "dispatch_stall", "mio_throttle",
         "math_pipe_throttle", "gmma", "not_selected", "selected", "no_instruction")


def parse(path: str) -> list:
    kernels = []
    for line in open(path, errors="replace"):
        m = HEADER.match(line)
        if m:
            g = [int(x) for x in m.groups()[1:]]
            kernels.append(dict(name=m.group(1)[:40], warps=g[0] * g[1] * g[2] * g[3] * g[4] * g[5] // 32))
            continue
        if not kernels:
            continue
        k = kernels[-1]
        m = STALL.match(line)
        if m:
            k[m.group(1)] = float(m.group(2).replace(",", "")) * k["warps"] / 1e6
        for key, pat in FIELDS.items():
            m = re.match(pat, line)
            if m and key not in k:
                k[key] = float(m.group(1).replace(",", ""))
    return kernels


def main(paths) -> None:
    for p in paths:
        print(f"== {p}  (stalls: M warp-cycles)")
        for k in parse(p):
            print(f"  {k['name']:40s} {k.get('us', 0):7.1f} us  IPC {k.get('ipc', 0):.2f}  "
                  f"{k.get('inst', 0) / 1e6:5.1f} M inst  " + "  ".join(f"{s} {k[s]:.0f}" for s in SHOWN if s in k))


if __name__ == "__main__":
    main(sys.argv[1:])
