"""Where a kernel's warps stall, per SASS opcode and per instruction, from the source counters that
`PROFILE_SOURCE=1 bash scripts/gpu_suite.sh profile` exports (ncu --page source --csv; .csv or
.csv.gz). Each stall reason's samples are summed over the instructions of each opcode (the
opcode without its modifiers: MUFU, HGMMA, ULOP3, ...), and the hottest instructions are listed
with their two largest reasons. Samples are attributed to the instruction that was waiting to
issue, so a `wait` on a MUFU is the MUFU waiting for its inputs or its issue slot.

    python scripts/ncu_source_stalls.py results/logs/ncu-src-0ab3415-ovpp-4x16x2048x128-h200.csv.gz --phases
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import io
import re

OPCODE = re.compile(r"^\s*(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def _open(path: str):
    raw = gzip.open(path, "rb").read() if path.endswith(".gz") else open(path, "rb").read()
    return io.StringIO(raw.decode("utf-8", errors="replace"))


def _num(v: str) -> float:
    try:
        return float(v.replace(",", ""))
    except ValueError:
        return 0.0


def parse(path: str) -> dict:
    """{kernel, reasons: {reason: {opcode: samples}}, lines: [(address, source, samples, {reason: n})],
    samples: total}. The first row names the kernel, the second is the header."""
    rows = list(csv.reader(_open(path)))
    kernel = rows[0][1] if len(rows[0]) > 1 else "?"
    header = rows[1]
    col = {h: i for i, h in enumerate(header)}
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    by_reason: dict = {r[len("stall_"):]: collections.Counter() for r in reasons}
    lines, total = [], 0.0
    for row in rows[2:]:
        if len(row) < len(header):
            continue
        src = row[col["Source"]]
        m = OPCODE.match(src)
        op = m.group(1) if m else "?"
        counts = {r[len("stall_"):]: _num(row[col[r]]) for r in reasons}
        for r, n in counts.items():
            by_reason[r][op] += n
        samples = _num(row[col["Warp Stall Sampling (All Samples)"]])
        total += samples
        lines.append((row[col["Address"]], src.strip(), samples, counts))
    return dict(kernel=kernel, reasons=by_reason, lines=lines, samples=total)


def report(path: str, top_reasons: int = 8, top_lines: int = 25) -> str:
    p = parse(path)
    out = [f"{p['kernel']}: {p['samples']:.0f} samples, {len(p['lines'])} instructions ({path})",
           "reason            samples  share  top opcodes"]
    totals = sorted(((sum(c.values()), r) for r, c in p["reasons"].items()), reverse=True)
    for n, r in totals[:top_reasons]:
        ops = ", ".join(f"{o} {v:.0f}" for o, v in p["reasons"][r].most_common(5) if v)
        out.append(f"{r:16s} {n:8.0f}  {n / max(p['samples'], 1):5.1%}  {ops}")
    out.append("hottest instructions (samples, the two largest reasons):")
    for addr, src, n, counts in sorted(p["lines"], key=lambda x: -x[2])[:top_lines]:
        two = sorted(((v, r) for r, v in counts.items() if v), reverse=True)[:2]
        out.append(f"  {addr[-6:]} {n:6.0f}  {src[:64]:64s} " + " ".join(f"{r}:{v:.0f}" for v, r in two))
    return "\n".join(out)


def loop_phases(p: dict) -> dict:
    """The overlapped key loop of the ping-pong kernels (versions 6-9) cut at its markers, samples
    per phase: `pack` (loop head to the turn's BAR.SYNC: P's fragments, the full barrier), `turn`
    (BAR.SYNC to BAR.ARV: the token wait and issuing both GEMMs), `qk_wait` (to and with
    `DEPBAR.LE gsb0, 0x1`), `softmax` (from there to `DEPBAR.LE gsb0, 0x0`), `rescale` (the P.V
    wait to the backward branch: the stage's release, O's rescale), and `outside` (the rest: the
    producer warp, prologue, epilogue). The loop head is the backward branch's target."""
    lines = p["lines"]
    src = [x[1] for x in lines]
    w1 = next(i for i, t in enumerate(src) if "DEPBAR.LE gsb0, 0x1" in t)
    w0 = next(i for i in range(w1 + 1, len(src)) if "DEPBAR.LE gsb0, 0x0" in src[i])
    sync = max(i for i in range(w1) if "BAR.SYNC" in src[i])
    arv = max(i for i in range(w1) if "BAR.ARV" in src[i])
    at = {int(a, 16): i for i, (a, *_rest) in enumerate(lines)}
    head = back = None
    for i in range(w0, len(src)):
        m = re.search(r"BRA (0x[0-9a-f]+)", src[i])
        if m and at.get(int(m.group(1), 16), len(src)) < sync:
            head, back = at[int(m.group(1), 16)], i
            break
    if head is None:
        raise ValueError("no backward branch closes the loop")

    def total(a, b):
        return sum(lines[i][2] for i in range(a, b))
    ph = {"pack": total(head, sync), "turn": total(sync, arv + 1), "qk_wait": total(arv + 1, w1 + 1),
          "softmax": total(w1 + 1, w0), "rescale": total(w0, back + 1)}
    ph["outside"] = p["samples"] - sum(ph.values())
    return ph


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--lines", type=int, default=25, help="hottest instructions to list")
    ap.add_argument("--phases", action="store_true", help="also the key loop's samples per phase (versions 6-9)")
    a = ap.parse_args()
    for path in a.csv:
        print(report(path, top_lines=a.lines))
        if a.phases:
            ph = loop_phases(parse(path))
            loop = sum(v for k, v in ph.items() if k != "outside")
            print("key loop: " + ", ".join(f"{k} {v:.0f} ({v / loop:.0%})" for k, v in ph.items() if k != "outside")
                  + f"; outside the loop {ph['outside']:.0f}")


if __name__ == "__main__":
    main()
