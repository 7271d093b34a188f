"""Localisation: fold |error| onto the kernel's structure and name the pattern.

Folds (DESIGN.md), each the max |error| / tol over the elements that land in a cell:
  tiles     query-row tile (BLOCK_M rows) x key tile (BLOCK_N) for [Sq,Sk] outputs, or
            x head-dim tile (16 columns) for O
  warps     row within the block // rows per warp: the rows each warp owns
  fragment  (row % 16, column % 16): the position inside a 16x16 mma fragment
  key tiles key-tile index (only [Sq,Sk] outputs show keys)
A value <= 1 is within tolerance. The hint rules read the folds; they are heuristics and
say what they saw, not what the bug is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Folds:
    output: str
    tiles: np.ndarray            # [q tiles, column tiles]
    warps: np.ndarray            # [warps]
    fragment: np.ndarray         # [16, 16] (or [16, 1] for per-row outputs)
    key_tiles: np.ndarray | None # [key tiles] for [Sq,Sk] outputs
    col_tile: int                # columns per column tile (BLOCK_N or 16)
    nonfinite_rows: list = field(default_factory=list)   # (b, h, i) of rows with NaN/Inf errors
    hints: list = field(default_factory=list)


def _fold_max(values: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    np.maximum.at(out, idx, values)
    return out


def fold(err: np.ndarray, tol: float, output: str, block_m: int, block_n: int,
         got: np.ndarray | None = None, exact: np.ndarray | None = None, warp_rows: int = 16) -> Folds:
    """err: |error| of one output, [B,H,Sq] or [B,H,Sq,X]; tol: the pass threshold; got and
    exact (optional) let the permutation rule test fragment mappings."""
    tol = tol if tol > 0 else np.finfo(np.float64).tiny
    e = np.where(np.isfinite(err), err, np.inf).astype(np.float64) / tol
    e = np.where(np.isinf(e), 1e30, e)          # keep maps finite; NaN rows are listed apart
    if e.ndim == 3:
        e = e[..., None]
    B, H, Sq, X = e.shape
    per_key = output in ("S", "P")
    col_tile = block_n if per_key else 16
    rows = np.arange(Sq)
    cols = np.arange(X)
    flat = e.max(axis=(0, 1))                    # [Sq, X]: worst over batch and heads
    nq, nc = -(-Sq // block_m), -(-X // col_tile)
    tiles = np.zeros((nq, nc))
    np.maximum.at(tiles, ((rows // block_m)[:, None], (cols // col_tile)[None, :]), flat)
    n_warps = block_m // warp_rows
    warps = _fold_max(flat.max(axis=1), (rows % block_m) // warp_rows, n_warps)
    frag = np.zeros((16, 16 if X > 1 else 1))
    np.maximum.at(frag, ((rows % 16)[:, None], (cols % frag.shape[1])[None, :]), flat)
    key_tiles = _fold_max(flat.max(axis=0), cols // block_n, -(-X // block_n)) if per_key else None
    bad_rows = np.argwhere(~np.isfinite(err).reshape(B, H, Sq, -1).all(axis=-1))
    f = Folds(output, tiles, warps, frag, key_tiles, col_tile,
              [tuple(int(x) for x in r) for r in bad_rows[:8]])
    f.hints = hints(f, e, Sq, X, block_m, block_n, warp_rows)
    if got is not None and exact is not None and f.hints != ["no element over tolerance"]:
        p = permutation_hint(got, exact, tol)
        if p:   # a named mapping explains the spread: drop the generic "widespread" line
            f.hints = [p] + [h for h in f.hints if not h.startswith("widespread")]
    return f


def permutation_hint(got: np.ndarray, exact: np.ndarray, tol: float) -> str | None:
    """If the output equals the reference with rows (or columns) permuted as i -> i ^ k inside
    each 16-wide fragment, name it: a fragment-to-element mapping bug, not a numeric one."""
    if got.ndim != 4:
        return None
    g = got.astype(np.float64)
    for axis, name in ((2, "row"), (3, "col")):
        n = g.shape[axis]
        idx = np.arange(n)
        for k in range(1, 16):
            perm = idx ^ k
            ok = perm < n
            a = np.take(g, idx[ok], axis=axis)
            b = np.take(exact, perm[ok], axis=axis)
            with np.errstate(invalid="ignore"):
                if np.all(np.abs(a - b) <= tol):
                    return (f"fragment mapping: {name} i of every 16-{name} fragment holds {name} i^{k} of the "
                            f"reference (values right, places wrong" + (": c0,c1 <-> c2,c3" if k == 8 and axis == 2 else "") + ")")
    return None


def hints(f: Folds, e: np.ndarray, Sq: int, X: int, block_m: int, block_n: int, warp_rows: int = 16) -> list:
    """Rule-based names for the pattern in the folds (e: error / tol, [B,H,Sq,X])."""
    out = []
    bad = e > 1
    if not bad.any():
        return ["no element over tolerance"]
    if f.nonfinite_rows:
        b, h, i = f.nonfinite_rows[0]
        out.append(f"NaN/Inf from a row: first at (b={b}, h={h}, row {i}); {len(f.nonfinite_rows)} row(s) listed")
    bad_q_tiles = np.flatnonzero(f.tiles.max(axis=1) > 1)
    bad_c_tiles = np.flatnonzero(f.tiles.max(axis=0) > 1)
    last_q, last_c = f.tiles.shape[0] - 1, f.tiles.shape[1] - 1
    q_tail = Sq % block_m != 0
    c_tail = X % f.col_tile != 0
    if (q_tail and list(bad_q_tiles) == [last_q]) or (c_tail and list(bad_c_tiles) == [last_c]):
        out.append("last (tail) tile only: look at the tail masking / bounds of the partial tile")
    elif len(bad_q_tiles) == 1 and len(bad_c_tiles) == 1 and f.tiles.size > 1:
        out.append(f"one tile only: query tile {bad_q_tiles[0]} x column tile {bad_c_tiles[0]}")
    bad_warps = np.flatnonzero(f.warps > 1)
    if len(bad_warps) == 1 and len(f.warps) > 1:
        w = bad_warps[0]
        out.append(f"one warp: only rows owned by warp {w} (rows {warp_rows * w}-{warp_rows * w + warp_rows - 1} of each block)")
    if f.key_tiles is not None and len(f.key_tiles) > 1:
        if f.key_tiles[0] <= 1 and (f.key_tiles[1:] > 1).all():
            out.append("key tiles after the first: the hand-off between tiles or the online rescale")
        elif f.key_tiles[0] > 1 and (f.key_tiles[1:] <= 1).all():
            out.append("first key tile only")
    frag_bad = f.fragment > 1
    n_tiles_bad = int((f.tiles > 1).sum())
    if frag_bad.size == 256 and 0 < frag_bad.sum() <= 192 and n_tiles_bad >= 2:
        rows_bad = np.flatnonzero(frag_bad.any(axis=1))
        cols_bad = np.flatnonzero(frag_bad.any(axis=0))
        out.append(f"fragment-periodic: the same {int(frag_bad.sum())} of 256 positions in every 16x16 fragment "
                   f"(rows {_ranges(rows_bad)}, cols {_ranges(cols_bad)}): a fragment-to-element mapping")
    diff_rows = e.reshape(-1, Sq, X)
    if Sq > 1 and bad.any(axis=-1).all() and np.ptp(diff_rows, axis=1).max() <= 1e-6 * max(1.0, diff_rows.max()):
        out.append("all rows alike but wrong: every row carries the same error (the row-independent part)")
    if not out:
        frac = bad.mean()
        out.append(f"widespread: {frac:.0%} of elements over tolerance, no tile/warp/fragment pattern")
    return out


def _ranges(idx) -> str:
    idx = list(idx)
    if not idx:
        return "-"
    parts, start = [], idx[0]
    for a, b in zip(idx, idx[1:] + [None]):
        if b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ",".join(parts)
