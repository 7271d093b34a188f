"""Where a consumer warp's key-loop time goes, tile by tile, read from the SM clock.

Builds the sm_90a kernel's overlapped schedule (default flashcore_hopper_ovpp) in full mode with
-DPHASE_CLOCKS (kernels/flashcore_hopper.cu): lane 0 of every consumer warp stores the SM clock
at eight points of each key-loop iteration j, into L_out seen as u32 [block][warp][j][8]. A
persistent block stores its second item's (PHASE_ITEM); blocks with fewer items are left out.
Nsight Compute's sampling says which instructions a warp stalls on; this says how long each phase
lasts, and how the two warpgroups' turns fall against each other.

    python scripts/phase_clocks.py 4,16,2048,128 [--kernel flashcore_hopper_ovpp] [--json out.json]

Marks (per iteration j, which issues tile j+1's Q.K^T and tile j's P.V):
  0 start, 1 P(j) packed, 2 K/V(j+1) landed, 3 turn taken, 4 GEMMs issued and turn handed on,
  5 S(j+1) landed, 6 softmax(j+1) done, 7 P(j).V(j) retired; the next iteration's 0 closes it
  (7 -> next 0: O's rescale and the S copy).
In the entries whose turn is the softmax (SOFTMAX_TURNS, version 14): 3 GEMMs issued (no turn),
  4 S(j+1) landed, 5 the softmax's turn taken (after the mask; with SOFTMAX_TURNS=2 the row max
  too), 6 softmax(j+1) done and the turn handed on.
The instrumented kernel's output is checked against a float32 reference of two heads, so a
reading comes from a kernel that still computes attention.
"""

from __future__ import annotations

import json
import math
import sys

import click
import numpy as np

PHASE_N, PHASE_TILES = 8, 64          # kernels/flashcore_hopper.cu's PHASE_N and PHASE_TILES
WARPS_PER_WG = 4                      # consumer warps per warpgroup
PHASES = ("pack P(j)", "wait K/V(j+1)", "wait for the turn", "issue QK(j+1)+PV(j)",
          "wait S(j+1)", "softmax(j+1)", "wait PV(j)", "rescale O, copy S")
SOFTMAX_TURN_PHASES = ("pack P(j)", "wait K/V(j+1)", "issue QK(j+1)+PV(j)", "wait S(j+1)",
                       "mask (+max), wait for the turn", "softmax(j+1) in the turn", "wait PV(j)",
                       "rescale O, copy S")


def phases_of(kernel: str) -> tuple:
    """The names of the eight phases, by where the entry's turn lies (kernels/flashcore_hopper.cu)."""
    from kernels.registry import KERNELS
    turns = any(d.startswith("SOFTMAX_TURNS=") and d != "SOFTMAX_TURNS=0" for d in KERNELS[kernel].tile_defines)
    return SOFTMAX_TURN_PHASES if turns else PHASES


def intervals(clk: np.ndarray, n_iter: int) -> np.ndarray:
    """clk u32 [blocks, warps, PHASE_TILES, PHASE_N] -> int64 [blocks, warps, iterations, 8]:
    the clocks between marks k and k+1 (the last: mark 7 to the next iteration's mark 0), for the
    iterations 1 .. n-3 of the n_iter - 1 the loop has (the first and last two are cut: the
    first follows the peeled tile 0, and the last has no next iteration to close it). u32
    differences, so a clock that wraps between two marks reads right."""
    n = min(n_iter - 1, PHASE_TILES)
    if n < 4:
        raise ValueError(f"{n_iter} key tiles: too few iterations to read (need at least 5 tiles)")
    c = clk[:, :, :n, :].astype(np.uint32)
    nxt = np.concatenate([c[:, :, 1:, :1], c[:, :, -1:, :1]], axis=2)   # next iteration's mark 0
    marks = np.concatenate([c, nxt], axis=3)                              # [.., n, 9]
    d = (marks[..., 1:] - marks[..., :-1]).astype(np.uint32).astype(np.int64)
    return d[:, :, 1:n - 1, :]


def summary(d: np.ndarray, warps_per_wg: int = WARPS_PER_WG, phases: tuple = PHASES) -> dict:
    """Per warpgroup: median, p10, p90 of each phase and of the whole iteration (clocks)."""
    out = {}
    for wg in range(d.shape[1] // warps_per_wg):
        x = d[:, wg * warps_per_wg:(wg + 1) * warps_per_wg].reshape(-1, PHASE_N)
        it = x.sum(axis=1)
        out[f"wg{wg}"] = {
            "phases": {name: [float(np.percentile(x[:, k], q)) for q in (50, 10, 90)] for k, name in enumerate(phases)},
            "iteration": [float(np.percentile(it, q)) for q in (50, 10, 90)],
            "samples": int(x.shape[0]),
        }
    return out


def launch(shape, kernel: str, define: str, row, dtype):
    """Build `kernel` in full mode with `define` (a measuring build that writes L_out), launch it
    three times on random inputs with L_out seen as dtype [blocks, consumer warps, *row(variant)],
    and return the variant, the last launch's L_out, the key tiles and max |O - float32
    reference| over two heads. row(variant) is None where the build cannot mark the variant."""
    import cupy as cp
    from harness.check.shapes import parse_shape
    from harness.run import gpu
    from harness.toolchain import loader
    from harness.toolchain.variant import Variant, tiles_for

    shp = parse_shape(shape)
    variant = Variant("full", shp.D, False, kernel=kernel, **tiles_for(shp, kernel))
    row = row(variant)
    if row is None:
        raise click.UsageError(f"{kernel} is persistent: {define} marks the non-persistent loop only")
    src = loader.KernelSource.read(kernel=kernel)
    fn = loader.compile_function(variant, src, extra_options=(define,))
    rng = np.random.default_rng(0)
    q, k, v = (cp.asarray(rng.standard_normal((shp.B, shp.H, s, shp.D)).astype(np.float16))
               for s in (shp.Sq, shp.Sk, shp.Sk))
    o = cp.full((shp.B, shp.H, shp.Sq, shp.D), np.nan, dtype=cp.float16)
    lse = cp.empty((shp.B, shp.H, shp.Sq), dtype=cp.float32)
    grid = variant.grid(shp)
    blocks = grid[0] * grid[1] * grid[2]
    warps = variant.tiles["nwarps"]                   # the kernel's NWARPS: consumer warps only
    clk = cp.zeros((blocks, warps) + tuple(row), dtype=dtype)
    bufs = {"Q": q, "K": k, "V": v, "O": o, "LSE": lse, "L_out": clk}
    scale = 1.0 / math.sqrt(shp.D)
    args = gpu.kernel_args(shp, bufs, scale) + gpu.trailing_args(variant, bufs)
    for _ in range(3):                                # the last launch's clocks are read
        # cleared before each launch: a block that takes its items from a counter (version 9)
        # may run fewer than it did in an earlier launch, whose marks would otherwise stay
        clk.fill(0)
        fn(grid, (variant.threads,), args, shared_mem=variant.smem_bytes)
    cp.cuda.Device().synchronize()
    err = 0.0
    for b, h in ((0, 0), (shp.B - 1, shp.H - 1)):
        s = (q[b, h].astype(cp.float32) @ k[b, h].astype(cp.float32).T) * scale
        p = cp.exp(s - s.max(axis=1, keepdims=True))
        ref = (p / p.sum(axis=1, keepdims=True)) @ v[b, h].astype(cp.float32)
        err = max(err, float(cp.abs(o[b, h].astype(cp.float32) - ref).max()))
    n_iter = -(-shp.Sk // variant.block_n)
    return variant, cp.asnumpy(clk), n_iter, err


def _run(shape, kernel: str):
    variant, clk, n_iter, err = launch(shape, kernel, "-DPHASE_CLOCKS=1", lambda v: (PHASE_TILES, PHASE_N),
                                       np.uint32)
    return variant, marked_blocks(clk), n_iter, err


def marked_blocks(clk: np.ndarray) -> np.ndarray:
    """The blocks that stored marks: a persistent block with no second item stores none."""
    kept = clk[clk.reshape(clk.shape[0], -1).any(axis=1)]
    if not len(kept):
        raise click.UsageError("no block stored marks (a persistent grid with one item per block)")
    return kept


@click.command()
@click.argument("shape")
@click.option("--kernel", default="flashcore_hopper_ovpp", show_default=True)
@click.option("--json", "json_out", default=None, help="write the summary here")
def main(shape, kernel, json_out):
    from rich.console import Console
    from rich.table import Table
    variant, clk, n_iter, err = _run(shape, kernel)
    d = intervals(clk, n_iter)
    phases = phases_of(kernel)
    s = summary(d, phases=phases)
    ok = err < 2e-2
    print(f"{kernel} {variant.label} at {shape}: {n_iter} key tiles, {d.shape[0]} blocks; "
          f"max |O - float32 reference| over two heads {err:.2e} ({'ok' if ok else 'WRONG'})")
    t = Table(title="clocks per key-loop iteration, median (p10-p90), per consumer warp")
    t.add_column("phase")
    for wg in s:
        t.add_column(wg, justify="right")
        t.add_column("share", justify="right")
    for name in phases + ("iteration",):
        row = [name]
        for wg, v in s.items():
            m, lo, hi = v["iteration"] if name == "iteration" else v["phases"][name]
            row += [f"{m:.0f} ({lo:.0f}-{hi:.0f})", f"{m / v['iteration'][0]:.0%}"]
        t.add_row(*row)
    Console(width=140).print(t)
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"kernel": kernel, "shape": shape, "label": variant.label, "n_iter": n_iter,
                       "max_err": err, "summary": s}, f, indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
