"""Localisation: fold |error| onto the kernel's structure and name the pattern.

Folds (docs/DESIGN.md §4), each the max |error| / tol over the elements that land in a cell:
  tiles     query-row tile (BLOCK_M rows) x key tile (BLOCK_N) for [rows, keys] outputs, or
            x head-dim tile (16 columns) for O; tiles of rows that were not checked are NaN
  warps     row within the block // rows per warp: the rows each warp owns
  fragment  (row % 16, column % 16): the position inside a 16x16 mma fragment
  key tiles key-tile index (only [rows, keys] outputs show keys); the last may be the tail
  (b, h)    batch x head: one slice or all of them
A value <= 1 is within tolerance. The folds are computed where the error array is (host or
device) by padding and reshaping, and only they, small NumPy arrays, come back. The hint
rules read the folds; they are heuristics and say what they saw, not what the bug is.

Rows are absolute: an error array may hold windows of query rows (docs/DESIGN.md §7), given
as `row_ranges` [(row0, row_end), ...] in the order they are stacked along axis 2; every
window starts on a query tile (row0 % BLOCK_M == 0), so a window row's place in its tile,
warp and fragment is its absolute row's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.check.xp import array_module, to_host


@dataclass
class Folds:
    output: str
    tiles: np.ndarray            # [q tiles, column tiles]; NaN where no row was checked
    warps: np.ndarray            # [warps]
    fragment: np.ndarray         # [16, 16] (or [16, 1] for per-row outputs)
    key_tiles: np.ndarray | None # [key tiles] for [rows, keys] outputs
    col_tile: int                # columns per column tile (BLOCK_N or 16)
    nonfinite_rows: list = field(default_factory=list)   # (b, h, i) of rows with NaN/Inf errors
    hints: list = field(default_factory=list)
    bh: np.ndarray | None = None # [B, H]
    n_keys: int | None = None    # Sk for [rows, keys] outputs: the key tiles are at the padded width
    row_ranges: list = field(default_factory=list)       # [(row0, row_end)] of the rows checked
    n_rows: int = 0              # Sq

    @property
    def key_tail(self) -> int:
        """Valid keys in the last key tile when it is a partial (tail) tile, else 0."""
        if self.n_keys is None or self.key_tiles is None:
            return 0
        return self.n_keys % self.col_tile

    @property
    def row_ranges_text(self) -> str:
        """'' when every row was checked, else the checked rows as inclusive ranges."""
        if not self.row_ranges or [tuple(r) for r in self.row_ranges] == [(0, self.n_rows)]:
            return ""
        return ",".join(f"{a}-{b - 1}" for a, b in self.row_ranges)


@dataclass
class _Stats:
    """Whole-array facts the hint rules need, reduced where the array is."""
    any_bad: bool
    frac_bad: float
    rows_alike: bool     # every row over tolerance somewhere and all rows carry the same error


def _pad_max(a, axis: int, size: int, xp):
    """a padded with zeros along axis to a multiple of size, then max over groups of size:
    reshape-and-max, the same on host and device (errors are >= 0, so 0 pads neutrally)."""
    n = a.shape[axis]
    pad = -n % size
    if pad:
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, pad)
        a = xp.pad(a, widths)
    shape = a.shape[:axis] + ((n + pad) // size, size) + a.shape[axis + 1:]
    return a.reshape(shape).max(axis=axis + 1)


def _segment_folds(flat, block_m: int, col_tile: int, warp_rows: int, frag_cols: int, xp):
    """tiles, warps and fragment folds of one window's [rows, X] map (the window starts a
    query tile, so local row r sits where absolute row row0 + r does)."""
    tiles = _pad_max(_pad_max(flat, 0, block_m, xp), 1, col_tile, xp)
    in_block = _pad_max(flat.max(axis=1), 0, warp_rows, xp)            # [warp-row groups]
    pad = -in_block.shape[0] % (block_m // warp_rows)
    in_block = xp.pad(in_block, (0, pad)) if pad else in_block
    warps = in_block.reshape(-1, block_m // warp_rows).max(axis=0)
    return tiles, warps, _fragment_positions(flat, frag_cols, xp)


def _fragment_positions(flat, frag_cols: int, xp):
    """[16, frag_cols]: max over every (row % 16, column % frag_cols) position."""
    pr, pc = -flat.shape[0] % 16, -flat.shape[1] % frag_cols
    f = xp.pad(flat, ((0, pr), (0, pc))) if pr or pc else flat
    return f.reshape(f.shape[0] // 16, 16, f.shape[1] // frag_cols, frag_cols).max(axis=(0, 2))


def fold(err, tol: float, output: str, block_m: int, block_n: int, got=None, exact=None,
         warp_rows: int = 16, n_keys: int | None = None, row_ranges=None, n_rows: int | None = None) -> Folds:
    """err: |error| of one output, [B,H,R] or [B,H,R,X] (host or device); tol: the pass
    threshold; got and exact (optional) let the permutation rule test fragment mappings.
    n_keys: Sk for [rows, keys] outputs (default X): marks the tail key tile of a padded
    width. row_ranges / n_rows: the windows stacked along R and Sq (default: R rows from 0)."""
    xp = array_module(err)
    tol = tol if tol > 0 else np.finfo(np.float64).tiny
    e = xp.where(xp.isfinite(err), err, np.inf).astype(np.float64) / tol
    e = xp.where(xp.isinf(e), 1e30, e)          # keep maps finite; NaN rows are listed apart
    if e.ndim == 3:
        e = e[..., None]
    B, H, R, X = e.shape
    row_ranges = [(0, R)] if row_ranges is None else [tuple(map(int, r)) for r in row_ranges]
    Sq = R if n_rows is None else n_rows
    per_key = output.split("/")[-1] in ("S", "P")
    col_tile = block_n if per_key else 16
    frag_cols = 16 if X > 1 else 1
    nq, nc = -(-Sq // block_m), -(-X // col_tile)
    tiles = np.full((nq, nc), np.nan)
    warps = np.zeros(block_m // warp_rows)
    fragment = np.zeros((16, frag_cols))
    flat_all = e.max(axis=(0, 1))                # [R, X]: worst over batch and heads
    offset = 0
    for row0, row_end in row_ranges:
        assert row0 % block_m == 0, f"window at row {row0} does not start a query tile of {block_m}"
        flat = flat_all[offset:offset + row_end - row0]
        t, w, fr = (to_host(a) for a in _segment_folds(flat, block_m, col_tile, warp_rows, frag_cols, xp))
        tiles[row0 // block_m: row0 // block_m + t.shape[0]] = t
        warps, fragment = np.maximum(warps, w), np.maximum(fragment, fr)
        offset += row_end - row0
    key_tiles = to_host(_pad_max(flat_all.max(axis=0), 0, block_n, xp)) if per_key else None
    bh = to_host(e.max(axis=(2, 3)))
    abs_rows = np.concatenate([np.arange(a, b) for a, b in row_ranges])
    bad_rows = np.argwhere(to_host(~xp.isfinite(err).reshape(B, H, R, -1).all(axis=-1)))[:8]
    f = Folds(output, tiles, warps, fragment, key_tiles, col_tile,
              [(int(b), int(h), int(abs_rows[i])) for b, h, i in bad_rows], bh=bh,
              n_keys=(X if n_keys is None else n_keys) if per_key else None, row_ranges=row_ranges, n_rows=Sq)
    f.hints = hints(f, _stats(e, xp), block_m, warp_rows)
    if got is not None and exact is not None and per_key and f.hints != ["no element over tolerance"]:
        m = masking_hint(got, exact, abs_rows)
        if m:   # the non-finite errors are masking, not a NaN computed in a row
            f.hints = [m] + [h for h in f.hints if not h.startswith("NaN/Inf from a row")]
    if got is not None and exact is not None and f.hints != ["no element over tolerance"]:
        p = permutation_hint(got, exact, tol)
        if p:   # a named mapping explains the spread: drop the generic "widespread" line
            f.hints = [p] + [h for h in f.hints if not h.startswith("widespread")]
    return f


def _stats(e, xp) -> _Stats:
    bad = e > 1
    rows = e.reshape(-1, e.shape[2], e.shape[3])
    alike = bool(e.shape[2] > 1 and bool(bad.any(axis=-1).all())
                 and float(xp.ptp(rows, axis=1).max()) <= 1e-6 * max(1.0, float(rows.max())))
    return _Stats(bool(bad.any()), int(xp.count_nonzero(bad)) / max(bad.size, 1), alike)


def permutation_hint(got, exact, tol: float) -> str | None:
    """If the output equals the reference with rows (or columns) permuted as i -> i ^ k inside
    each 16-wide fragment, name it: a fragment-to-element mapping bug, not a numeric one."""
    if got.ndim != 4:
        return None
    xp = array_module(got, exact)
    g = got.astype(np.float64)
    for axis, name in ((2, "row"), (3, "col")):
        n = g.shape[axis]
        if n < 16:      # no whole fragment along this axis: a permutation rule would hold vacuously
            continue
        idx = np.arange(n)
        for k in range(1, 16):
            perm = idx ^ k
            ok = perm < n   # only the last, partial fragment loses rows (perm past the end)
            a = xp.take(g, xp.asarray(idx[ok]), axis=axis)
            b = xp.take(exact, xp.asarray(perm[ok]), axis=axis)
            with np.errstate(invalid="ignore"):
                if bool(xp.all(xp.abs(a - b) <= tol)):
                    return (f"fragment mapping: {name} i of every 16-{name} fragment holds {name} i^{k} of the "
                            f"reference (values right, places wrong" + (": c0,c1 <-> c2,c3" if k == 8 and axis == 2 else "") + ")")
    return None


def masking_hint(got, exact, abs_rows) -> str | None:
    """Scores where kernel and reference disagree on being masked (-inf): a key left visible
    (finite where the reference says -inf: tail or causal masking too weak) or one masked that
    must not be. Names the first such element and how many there are."""
    xp = array_module(got, exact)
    for what, where in (("left visible: the reference masks (-inf) scores the kernel left finite "
                         "(tail padding or causal masking too weak)", xp.isneginf(exact) & xp.isfinite(got)),
                        ("masked that must not be: the kernel wrote -inf where the reference has a score",
                         xp.isfinite(exact) & xp.isneginf(got))):
        n = int(xp.count_nonzero(where))
        if n:
            b, h, i, j = (int(x) for x in to_host(xp.argwhere(where)[0]))
            return f"masking: {n} score(s) {what}; first at (b={b}, h={h}, row {int(abs_rows[i])}, key {j})"
    return None


def _one_of(bad_idx, n: int) -> bool:
    return len(bad_idx) == 1 and n > 1


def hints(f: Folds, s: _Stats, block_m: int, warp_rows: int = 16) -> list:
    """Rule-based names for the pattern in the folds."""
    out = []
    if not s.any_bad:
        return ["no element over tolerance"]
    if f.nonfinite_rows:
        b, h, i = f.nonfinite_rows[0]
        out.append(f"NaN/Inf from a row (a computed NaN, or an element never written: see the unwritten "
                   f"count): first at (b={b}, h={h}, row {i}); {len(f.nonfinite_rows)} row(s) listed")
    tiles = np.nan_to_num(f.tiles, nan=0.0)      # rows not checked: nothing seen there
    bad_q_tiles = np.flatnonzero(tiles.max(axis=1) > 1)
    bad_c_tiles = np.flatnonzero(tiles.max(axis=0) > 1)
    last_q, last_c = tiles.shape[0] - 1, tiles.shape[1] - 1
    tail = []
    if f.n_rows % block_m and list(bad_q_tiles) == [last_q] and last_q > 0:   # "only" needs another tile
        tail.append(f"the last (tail) query tile only (rows {last_q * block_m}-{f.n_rows - 1}): "
                    f"look at the bounds of the partial query tile")
    if f.key_tail and list(bad_c_tiles) == [last_c] and last_c > 0:
        tail.append(f"the last (tail) key tile only (keys {last_c * f.col_tile}-{f.n_keys - 1} valid, "
                    f"{f.n_keys}-{(last_c + 1) * f.col_tile - 1} padding): look at the tail masking")
    if tail:
        out += tail
    elif len(bad_q_tiles) == 1 and len(bad_c_tiles) == 1 and tiles.size > 1:
        out.append(f"one tile only: query tile {bad_q_tiles[0]} x column tile {bad_c_tiles[0]}")
    out += _bh_hints(f.bh)
    bad_warps = np.flatnonzero(f.warps > 1)
    if _one_of(bad_warps, len(f.warps)) and f.n_rows > warp_rows:   # rows of another warp exist
        w = bad_warps[0]
        out.append(f"one warp: only rows owned by warp {w} (rows {warp_rows * w}-{warp_rows * w + warp_rows - 1} of each block)")
    if f.key_tiles is not None and len(f.key_tiles) > 1:
        if f.key_tiles[0] <= 1 and (f.key_tiles[1:] > 1).all():
            out.append("key tiles after the first: the hand-off between tiles or the online rescale")
        elif f.key_tiles[0] > 1 and (f.key_tiles[1:] <= 1).all():
            out.append("first key tile only")
    frag_bad = f.fragment > 1
    n_tiles_bad = int((tiles > 1).sum())
    if frag_bad.size == 256 and 0 < frag_bad.sum() <= 192 and n_tiles_bad >= 2 and f.n_rows >= 16:
        rows_bad = np.flatnonzero(frag_bad.any(axis=1))
        cols_bad = np.flatnonzero(frag_bad.any(axis=0))
        out.append(f"fragment-periodic: the same {int(frag_bad.sum())} of 256 positions in every 16x16 fragment "
                   f"(rows {_ranges(rows_bad)}, cols {_ranges(cols_bad)}): a fragment-to-element mapping")
    if s.rows_alike:
        out.append("all rows alike but wrong: every row carries the same error (the row-independent part)")
    if not out:
        out.append(f"widespread: {s.frac_bad:.0%} of elements over tolerance, no tile/warp/fragment pattern")
    return out


def _bh_hints(bh) -> list:
    """One batch or one head carrying all of the error: per-(b, h) offsets, grid y/z."""
    if bh is None:
        return []
    B, H = bh.shape
    bad = bh > 1
    bad_b, bad_h = np.flatnonzero(bad.any(axis=1)), np.flatnonzero(bad.any(axis=0))
    out = []
    if _one_of(bad_b, B):
        out.append(f"one batch only: b={bad_b[0]} (of {B}): a batch offset or grid z")
    if _one_of(bad_h, H):
        out.append(f"one head only: h={bad_h[0]} (of {H}): a head offset or grid y")
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
