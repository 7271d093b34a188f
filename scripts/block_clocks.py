"""Where a launch's SM time goes outside the key loop: each work item's prologue and epilogue,
and the gaps between items on an SM, read from the SM clock and the global timer.

Builds an sm_90a entry's overlapped schedule (default flashcore_hopper_ovpp; persistent entries
too) in full mode with -DBLOCK_CLOCKS (kernels/flashcore_hopper.cu): lane 0 of every consumer
warp stores the SM clock and the global timer at seven marks per work item (0 the item starts,
1 Q has landed, 2 the loop starts, 3 the last P.V has retired, 4 the epilogue starts, 5 l and LSE
are done, 6 O is stored) and its SM's id. A non-persistent block is one item and its mark 0 is
the warp's start; a persistent block's items follow one another (the first 32 are marked).
PHASE_CLOCKS (scripts/phase_clocks.py) reads the middle iterations of the key loop; this reads
the rest.

    python scripts/block_clocks.py 4,16,2048,128 [--kernel flashcore_hopper_ovpp] [--json out.json]

The SMs' time from the launch's first mark to its last, summed over the SMs that ran an item, is
split into: idle before an SM's first item, each item's Q wait, prologue (S(0) and its softmax),
key loop, last P.V, epilogue (l and LSE, then O's stores), the gaps between one item's last
mark and the next item's first on the same SM, and idle after an SM's last item. The split is per consumer warp (decompose): one
block per SM at a time, so a warp's items on an SM do not overlap (checked), and the parts add up
to the whole. The kernel's output is checked against a float32 reference of two heads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from phase_clocks import WARPS_PER_WG, launch  # noqa: E402  (scripts/ is not a package)

BLOCK_WORDS, MARKS, GT, SMID = 16, 7, 8, 7   # kernels/flashcore_hopper.cu's BLOCK_CLOCKS row
PERSISTENT_ITEMS = 32                        # its BLOCK_ITEMS in a persistent build
PARTS = ("idle before the SM's first item", "Q wait", "prologue: S(0), softmax(0)", "key loop",
         "last P.V (+ warpgroup 0's last turn)", "epilogue: l, LSE", "epilogue: O stores", "gaps between items on an SM",
         "idle after the SM's last item")


def items_of(rows: np.ndarray) -> np.ndarray:
    """u64 [blocks, warps, items, BLOCK_WORDS] -> [marked items, warps, BLOCK_WORDS]: the items
    that ran (a persistent block marks as many as it took; the rest stay zero)."""
    x = np.moveaxis(rows, 2, 1).reshape(-1, rows.shape[1], rows.shape[3])
    written = (x[:, :, GT] != 0).any(axis=1)
    return x[written]


def decompose(rows: np.ndarray, n_iter: int) -> dict:
    """rows u64 [items, warps, BLOCK_WORDS] (items_of) -> the launch's SM time by part (PARTS,
    in ns summed over SMs, and as shares), the clock rate, and per-item phases in clocks
    (medians, per consumer warpgroup).

    The time is split per warp: consumer warp w of every item on an SM forms one timeline (the
    items one after another; one block per SM at a time), from the launch's first mark to its
    last, and the SM's parts are the mean over its warps' timelines. Per warp, not per item:
    a persistent block's warpgroups run half an iteration apart, so one starts its next item
    before the other has finished this one."""
    rows = rows.astype(np.int64)
    clk, gt = rows[:, :, :MARKS], rows[:, :, GT:GT + MARKS]
    sm = rows[:, 0, SMID]
    if not (rows[:, :, SMID] == sm[:, None]).all():
        raise ValueError("an item's warps report different SMs")
    if (gt == 0).any():
        raise ValueError(f"{int((gt == 0).any(axis=2).sum())} warps left marks unwritten")
    if (np.diff(clk, axis=2) < 0).any() or (np.diff(gt, axis=2) < 0).any():
        raise ValueError("marks out of order: a warp's clock ran backwards (unwritten rows?)")
    t0, t1 = gt[:, :, 0].min(), gt[:, :, -1].max()
    warps = rows.shape[1]
    phase_ns = np.diff(gt, axis=2).sum(axis=(0, 1)) / warps         # [MARKS - 1], summed over items, mean over warps
    before = after = gaps = 0.0
    sms = np.unique(sm)
    # Each SM's first item (by warp 0's start), told apart below from its later ones: a cost paid
    # once per SM (cold instruction or constant caches, the first loads of a launch) shows in it only.
    first = np.zeros(rows.shape[0], bool)
    for s in sms:
        idx = np.flatnonzero(sm == s)
        for w in range(warps):
            order = idx[np.argsort(gt[idx, w, 0])]
            if w == 0:
                first[order[0]] = True
            g = gt[order[1:], w, 0] - gt[order[:-1], w, -1]
            if (g < 0).any():
                raise ValueError(f"SM {s}, warp {w}: two items overlap; one block per SM at a time was assumed")
            gaps += g.sum() / warps
            before += (gt[order[0], w, 0] - t0) / warps
            after += (t1 - gt[order[-1], w, -1]) / warps
    ns = [before, *phase_ns.tolist(), gaps, after]
    total = float(len(sms) * (t1 - t0))
    d_clk = np.diff(clk, axis=2)                                     # [items, warps, MARKS - 1]
    rate = float((clk[:, :, -1] - clk[:, :, 0]).sum() / (gt[:, :, -1] - gt[:, :, 0]).sum())   # GHz
    per_sm = np.bincount(np.searchsorted(sms, sm))

    def medians(d):                                                  # d: d_clk of some items and warps
        return {name: float(np.median(d[:, :, k])) if d.size else None for k, name in enumerate(PARTS[1:MARKS])}
    return {
        "span_us": (t1 - t0) / 1e3, "sms": int(len(sms)), "items": int(rows.shape[0]),
        "items_per_sm": [int(per_sm.min()), int(per_sm.max())],
        "clock_ghz": rate, "n_iter": int(n_iter),
        "parts": {name: {"us_per_sm": float(v) / len(sms) / 1e3, "share": float(v) / total}
                  for name, v in zip(PARTS, ns)},
        "sum_share": float(sum(ns)) / total,
        "item_clocks": {f"wg{g}": medians(d_clk[:, g * WARPS_PER_WG:(g + 1) * WARPS_PER_WG])
                        for g in range(warps // WARPS_PER_WG)},
        "loop_clocks_per_tile": float(np.median(d_clk[:, :, 2])) / max(n_iter - 1, 1),
        "first_vs_later_clocks": {"first": medians(d_clk[first]), "later": medians(d_clk[~first])},
    }


@click.command()
@click.argument("shape")
@click.option("--kernel", default="flashcore_hopper_ovpp", show_default=True)
@click.option("--json", "json_out", default=None, help="write the decomposition here")
@click.option("--raw", "raw_out", default=None, help="write the marked items (u64 [items, warps, words]) here, .npy")
def main(shape, kernel, json_out, raw_out):
    from rich.console import Console
    from rich.table import Table
    variant, rows, n_iter, err = launch(
        shape, kernel, "-DBLOCK_CLOCKS=1",
        lambda v: (PERSISTENT_ITEMS if v.persistent else 1, BLOCK_WORDS), np.uint64)
    items = items_of(rows)
    if raw_out:
        np.save(raw_out, items)
    try:
        r = decompose(items, n_iter)
    except ValueError as e:
        raise click.ClickException(str(e))
    ok = err < 2e-2
    print(f"{kernel} {variant.label} at {shape}: {r['items']} items marked on {r['sms']} SMs "
          f"({r['items_per_sm'][0]}-{r['items_per_sm'][1]} each), {n_iter} key tiles, span "
          f"{r['span_us']:.1f} us at {r['clock_ghz']:.2f} GHz; max |O - float32 reference| over two "
          f"heads {err:.2e} ({'ok' if ok else 'WRONG'})")
    t = Table(title="the SMs' time, from the launch's first mark to its last (mean over consumer warps)")
    wgs = list(r["item_clocks"])
    for c in ("part", "us per SM", "share", *(f"median clocks per item, {g}" for g in wgs)):
        t.add_column(c, justify="left" if c == "part" else "right")
    for name, v in r["parts"].items():
        c = [r["item_clocks"][g].get(name) for g in wgs]
        t.add_row(name, f"{v['us_per_sm']:.2f}", f"{v['share']:.1%}", *("" if x is None else f"{x:.0f}" for x in c))
    t.add_row("sum", f"{r['span_us'] * r['sum_share']:.2f}", f"{r['sum_share']:.1%}", *("" for _ in wgs))
    Console(width=140).print(t)
    print(f"key loop: {r['loop_clocks_per_tile']:.0f} clocks per tile (median item, {n_iter - 1} iterations)")
    fl = r["first_vs_later_clocks"]
    print("each SM's first item / its later ones, median clocks (all warps): " + ", ".join(
        f"{name.split(':')[0] if name.startswith('prologue') else name}: {fl['first'][name]:.0f} / "
        + ("-" if fl["later"][name] is None else f"{fl['later'][name]:.0f}") for name in PARTS[1:MARKS]))
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"kernel": kernel, "shape": shape, "label": variant.label, "max_err": err, **r}, f, indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
