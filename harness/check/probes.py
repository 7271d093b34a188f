"""Input probes: inputs whose exact attention is known in closed form, so that a kernel with no
debug flag can still be checked stage by stage (docs/DESIGN.md §10, ../shared/DESIGN.md).

Each probe is data: how its inputs are built, what its closed form is, the stage it exercises
and what it excludes. Every probe is judged by the floor rule against its exact float64 answer
and the kernel-precision answer of the same inputs (harness/check/spec_reference.py), so a
probe's floor fits that probe. Pure NumPy; the GPU side is harness/run/probe_sweep.py.

  uniform    Q = 0: every score equal, P = 1/n (n the keys a row sees). O = the column mean
             of V over those keys, LSE = ln n. Runs P.V, the normaliser and the O store with
             nothing of QK or the running max.
  onehot     Q = 0 and V one-hot in blocks of D keys (key j of block b carries e_(j - bD)):
             O[i, c] * n = the weight with which key bD + c reached row i (1 if visible).
             Keys lost, counted twice or moved show by key index, key tile and position.
  dominant   Unit-norm random keys; row i's query is A * k_pi(i): one logit exceeds every
             other by more than 20, so O[i] = V[pi(i)] to fp32 precision. Tests which key
             each row reaches (QK addressing) and the max/rescale path, and tells rows that
             hold another row's result (the O store) from rows whose scores are wrong.
  identity   Random Q and K, V = identity blocks: O[i, c] = P[i, bD + c]: the softmax's P,
             read row by row without a debug buffer.
  large      Logits from 30 up to 50 along the keys (a later key 20 larger than the first):
             exp without the row max, or a max frozen after the first tile, overflows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np


F64 = np.float64
DOMINANT_LOGIT = 40.0      # the dominant score; the others are within +-0.5 * it (unit keys, D >= 64)
MAX_KEY_BLOCKS = 6         # onehot/identity launch once per block of D keys: cap them (first and last kept)


@dataclass(frozen=True)
class Launch:
    """One launch of a probe: its inputs ([B, H, S, D] float64 values, to be rounded to the
    kernel's dtype) and which keys its V carries (onehot/identity: the block of keys)."""
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    keys: slice | None = None
    perm: np.ndarray | None = None      # dominant: pi[b, h, i]


@dataclass(frozen=True)
class Probe:
    name: str
    stage: str                  # the stage whose failure it points to first
    exercises: str
    excludes: str
    closed_form: str
    build: Callable             # (shape, causal, rng) -> list of Launch
    causal_ok: bool = True


def visible_counts(Sq: int, Sk: int, causal: bool) -> np.ndarray:
    """n_i: the keys row i sees."""
    return np.minimum(np.arange(Sq) + 1, Sk) if causal else np.full(Sq, Sk)


def key_blocks(Sk: int, D: int) -> list:
    """The blocks of D keys a one-hot probe launches for: every block, or the first ones and
    the last one (which holds the key tail) when there are many."""
    n = -(-Sk // D)
    idx = list(range(n)) if n <= MAX_KEY_BLOCKS else list(range(MAX_KEY_BLOCKS - 1)) + [n - 1]
    return [slice(b * D, min(Sk, (b + 1) * D)) for b in idx]


def _onehot_v(shape, keys: slice) -> np.ndarray:
    v = np.zeros((shape.B, shape.H, shape.Sk, shape.D))
    j = np.arange(keys.start, keys.stop)
    v[:, :, j, j - keys.start] = 1.0
    return v


def _uniform(shape, causal, rng):
    qs, ks = (shape.B, shape.H, shape.Sq, shape.D), (shape.B, shape.H, shape.Sk, shape.D)
    return [Launch(np.zeros(qs), rng.standard_normal(ks), rng.standard_normal(ks))]


def _onehot(shape, causal, rng):
    qs, ks = (shape.B, shape.H, shape.Sq, shape.D), (shape.B, shape.H, shape.Sk, shape.D)
    k = rng.standard_normal(ks)
    return [Launch(np.zeros(qs), k, _onehot_v(shape, blk), blk) for blk in key_blocks(shape.Sk, shape.D)]


def _identity(shape, causal, rng):
    qs, ks = (shape.B, shape.H, shape.Sq, shape.D), (shape.B, shape.H, shape.Sk, shape.D)
    q, k = rng.standard_normal(qs), rng.standard_normal(ks)
    return [Launch(q, k, _onehot_v(shape, blk), blk) for blk in key_blocks(shape.Sk, shape.D)]


def dominant_perm(shape, causal, rng) -> np.ndarray:
    """pi[b, h, i]: a random key row i can see (under causal masking, one of keys 0..i)."""
    n = visible_counts(shape.Sq, shape.Sk, causal)
    return np.floor(rng.random((shape.B, shape.H, shape.Sq)) * n).astype(np.int64)


def _dominant(shape, causal, rng, scale=None):
    ks = (shape.B, shape.H, shape.Sk, shape.D)
    k = rng.standard_normal(ks)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    perm = dominant_perm(shape, causal, rng)
    scale = 1.0 / np.sqrt(shape.D) if scale is None else scale
    a = DOMINANT_LOGIT / scale
    q = a * np.take_along_axis(k, perm[..., None], axis=2)
    return [Launch(q, k, rng.standard_normal(ks), perm=perm)]


def _large(shape, causal, rng, scale=None):
    """Scores s_ij = 30 + 20 j / Sk: q = alpha u, k_j = beta_j u for one unit vector u."""
    scale = 1.0 / np.sqrt(shape.D) if scale is None else scale
    u = np.full(shape.D, 1.0 / np.sqrt(shape.D))
    beta = 30.0 + 20.0 * np.arange(shape.Sk) / max(shape.Sk, 1)
    alpha = 1.0 / scale
    q = np.broadcast_to(alpha * u, (shape.B, shape.H, shape.Sq, shape.D)).copy()
    k = np.broadcast_to(beta[:, None] * u, (shape.B, shape.H, shape.Sk, shape.D)).copy()
    return [Launch(q, k, rng.standard_normal((shape.B, shape.H, shape.Sk, shape.D)))]


PROBES = {p.name: p for p in (
    Probe("uniform", "pv", "P.V, the normaliser l, the O store", "QK, the running max, the rescale",
          "O[i] = mean of V over the n_i keys row i sees; LSE = ln n_i", _uniform),
    Probe("onehot", "pv", "which keys reach O and with what weight, by key, key tile and position",
          "QK (every score is 0)", "O[i, c] * n_i = 1 for every key bD + c row i sees, else 0", _onehot),
    Probe("dominant", "qk", "the key each row reaches (QK addressing), the running max and the rescale, "
          "the row an output lands in", "the rest of P (every other weight < e^-20)",
          "O[i] = V[pi(i)]", _dominant),
    Probe("identity", "softmax", "the softmax's P, row by row", "P.V addressing beyond the identity",
          "O[i, c] = P[i, bD + c]", _identity),
    Probe("large", "softmax", "exp of large logits: the row max subtracted, overflow of exp and of l",
          "nothing of the addressing (every row and key alike)", "softmax of s_ij = 30 + 20 j / Sk", _large),
)}
ORDER = ("uniform", "onehot", "dominant", "identity", "large")


# ------------------------------------------------------------------ reading the evidence
def key_weights(outs: list, launches: list, Sq: int, Sk: int, causal: bool) -> np.ndarray:
    """onehot: w[b, h, i, j] = the weight key j reached row i with, times n_i (1 when right;
    NaN for keys of blocks not launched)."""
    B, H = outs[0].shape[:2]
    w = np.full((B, H, Sq, Sk), np.nan)
    n = visible_counts(Sq, Sk, causal)[:, None]
    for o, l in zip(outs, launches):
        blk = l.keys
        w[..., blk] = o[..., : blk.stop - blk.start].astype(F64) * n
    return w


def expected_weights(Sq: int, Sk: int, causal: bool) -> np.ndarray:
    if not causal:
        return np.ones((Sq, Sk))
    return (np.arange(Sk)[None, :] <= np.arange(Sq)[:, None]).astype(F64)


def _ranges(idx) -> str:
    idx = sorted(int(i) for i in idx)
    out, start = [], None
    for a, b in zip(idx, idx[1:] + [None]):
        start = a if start is None else start
        if b != a + 1:
            out.append(f"{start}" if start == a else f"{start}-{a}")
            start = None
    return ",".join(out)


def describe_weights(w: np.ndarray, want: np.ndarray, tol: float, block_n: int) -> tuple:
    """(kind, words) from the key weights: the key tail taking weight, keys lost at the end of
    the loop, single keys lost or doubled, with key indices, key tiles and tile positions."""
    with warnings.catch_warnings():      # keys of blocks not launched are NaN throughout: expected
        warnings.simplefilter("ignore", RuntimeWarning)
        return _describe_weights(w, want, tol, block_n)


def _describe_weights(w, want, tol, block_n) -> tuple:
    Sk = w.shape[-1]
    seen = ~np.isnan(w).all(axis=(0, 1, 2))
    wm = np.nanmean(w, axis=(0, 1))                      # [Sq, Sk] over batch and heads
    err = np.abs(wm - want)
    bad_keys = np.flatnonzero(seen & (np.nanmax(err, axis=0) > tol))
    if bad_keys.size == 0:
        return "ok", "every key reaches every row with the right weight"
    visible = want > 0
    total = np.nansum(np.where(visible, wm, 0.0), axis=1) / np.maximum(visible.sum(axis=1), 1)
    ratio = np.nanmedian(np.where(visible, wm, np.nan), axis=1)
    lost = np.flatnonzero(seen & np.all(np.abs(wm) < tol, axis=0) & visible.any(axis=0))
    tile_of = lambda ks: _ranges(sorted({int(k) // block_n for k in ks}))   # noqa: E731
    pos_of = lambda ks: _ranges(sorted({int(k) % block_n for k in ks}))     # noqa: E731
    kept = visible & ~np.isin(np.arange(Sk), lost)[None, :]
    kept_w = float(np.nanmedian(wm[kept])) if kept.any() else float("nan")
    if lost.size and abs(kept_w - 1.0) <= tol:
        # l still counts the lost keys (the others keep weight 1): the key loop saw them, P.V did not
        return "pv_lost", (f"keys {_ranges(lost)} (key tile {tile_of(lost)}) never reach the output although the "
                           f"normaliser counts them: P.V skips them")
    if lost.size and lost.max() == Sk - 1 and np.all(np.diff(lost) == 1) and lost.size < Sk:
        return "lost_tail", (f"keys {_ranges(lost)} (key tile {tile_of(lost)}) never reach the output: the key loop "
                             f"or the tail mask ends {lost.size} key(s) early")
    if lost.size:
        return "lost", (f"keys {_ranges(lost)} never reach the output (key tile {tile_of(lost)}, "
                        f"positions {pos_of(lost)} in their tile)")
    if np.nanmax(np.abs(ratio - 1.0)) > tol and np.nanmax(np.abs(wm[visible] - np.repeat(ratio, visible.sum(1)))) <= tol:
        r = float(np.nanmin(ratio))
        return "diluted", (f"every visible key reaches O with weight {r:.3g} instead of 1: weight goes to keys "
                           f"that do not exist (the padded keys of the last key tile are not masked)")
    doubled = np.flatnonzero(seen & (np.nanmax(wm - want, axis=0) > 0.5))
    if doubled.size:
        return "doubled", (f"keys {_ranges(doubled)} (key tile {tile_of(doubled)}, positions {pos_of(doubled)}) "
                           f"reach the output with extra weight (counted twice?)")
    del total
    return "wrong", (f"keys {_ranges(bad_keys)} (key tile {tile_of(bad_keys)}) reach the output with the wrong weight")


def rows_identical(o: np.ndarray, tol: float) -> bool:
    spread = o.max(axis=-2) - o.min(axis=-2)
    return bool(np.isfinite(spread).any()) and float(np.nanmax(spread)) <= tol


def dominant_reading(o: np.ndarray, v: np.ndarray, perm: np.ndarray, tol: float, block_n: int, failing) -> tuple:
    """(kind, words) for the failing rows of the dominant probe: rows holding another row's
    answer (the O store), rows wrong only where the dominant key is past the first key tile
    (the rescale), or rows whose scores pick no key at all (QK)."""
    B, H, Sq, D = o.shape
    bad = np.argwhere(failing)                           # (b, h, i)
    if bad.size == 0:
        return "ok", ""
    # which key's V does a failing row hold?
    moved, held = 0, 0
    for b, h, i in bad[:512]:
        d = np.abs(v[b, h] - o[b, h, i][None, :]).max(axis=-1)
        j = int(np.argmin(d))
        if d[j] <= 4 * tol + 1e-3:
            held += 1
            if j in set(perm[b, h].tolist()) and j != perm[b, h, i]:
                moved += 1
    n = min(len(bad), 512)
    first_tile = perm < block_n
    rows_bad = np.asarray(failing)
    nonfinite = ~np.isfinite(o).all(axis=-1)
    if nonfinite[rows_bad].mean() > 0.5:
        where = "past the first key tile" if rows_bad[first_tile].sum() == 0 else "in any key tile"
        return "overflow", (f"{int(nonfinite.sum())} rows are Inf/NaN, rows whose dominant key lies {where}: exp "
                            f"overflows because the row max is not updated (the softmax)")
    if moved >= 0.8 * n:
        rows = _ranges(sorted({int(i) for _, _, i in bad}))
        return "moved", f"rows {rows} hold another row's output (right values, wrong places: the O store or the row addressing)"
    if rows_bad[first_tile].sum() == 0 and rows_bad[~first_tile].sum() > 0:
        return "rescale", (f"{int(rows_bad.sum())} rows fail, all of them rows whose dominant key lies past the first key "
                           f"tile: when the running max moves, O (or l) is not rescaled")
    return "scores", (f"{int(rows_bad.sum())} rows do not reach their dominant key"
                      + (f" ({held} of {n} hold some other key's V)" if held else "")
                      + ": the scores are wrong (QK: the K tile, its layout, or the row-to-key addressing)")
