"""Stage metrics and the pass rule of docs/DESIGN.md.

pass  iff  max|kernel - exact| <= 2 * floor + atol,  no NaN/Inf,  no unwritten element,
where floor = max|kernel-precision - exact| and atol = ATOL_REL * max|exact| (fp32
accumulation-order noise, tiny next to any fp16 rounding).

Unwritten elements are told apart from computed NaNs by the poison's bit pattern: the
harness fills outputs with a NaN carrying a payload no arithmetic produces (CUDA's own
NaNs are 0x7fff / 0x7fffffff).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from harness.check.xp import array_module

F64 = np.float64
ATOL_REL = 2.0**-18
POISON_BITS = {np.dtype(np.float16): np.uint16(0x7E5A), np.dtype(np.float32): np.uint32(0x7FC0DEAD)}
UINT_OF = {np.dtype(np.float16): np.uint16, np.dtype(np.float32): np.uint32}


def poison(shape, dtype):
    """A host array filled with the poison NaN (the device's outputs are filled by
    harness/run/launch_counts.poisoned, with the same bits)."""
    dtype = np.dtype(dtype)
    return np.full(shape, POISON_BITS[dtype], dtype=UINT_OF[dtype]).view(dtype)


def unwritten_mask(out):
    """Where out still holds the poison (out contiguous: a bit view of it)."""
    return out.view(UINT_OF[out.dtype]) == POISON_BITS[out.dtype]


def abs_error(a, exact):
    """|a - exact| in float64; equal infinities (masked scores) count as 0, any other
    non-finite value in a as +inf. Host or device, as the arrays are."""
    xp = array_module(a, exact)
    a64 = a.astype(F64)
    with np.errstate(invalid="ignore"):
        err = xp.abs(a64 - exact)
    err = xp.where(xp.isinf(exact) & (a64 == exact), 0.0, err)
    return xp.where(xp.isfinite(err), err, np.inf)


@dataclass
class StageMetrics:
    mode: str
    output: str            # which buffer: O, LSE, S, m, l, P
    stage: str             # QK, softmax, PV, ...
    max_abs: float
    mean_abs: float
    rel_l2: float
    floor: float
    atol: float
    tol: float
    err_over_floor: float
    n_over_tol: int
    n_nonfinite: int
    n_unwritten: int
    n_elements: int
    worst_index: tuple
    passed: bool
    extra: dict = field(default_factory=dict)   # e.g. row_spread for uniform_p

    def to_dict(self) -> dict:
        d = asdict(self)
        d["worst_index"] = list(self.worst_index)
        return d


def compare(mode: str, output: str, stage: str, kernel, exact, kp, rows=None):
    """Metrics of one output buffer; also returns the |error| array for localisation (on
    the arrays' device: only the metrics, plain Python numbers, leave it). The arrays are
    [B, H, rows, ...]; `rows` (host ints) names the absolute query row of each index along
    axis 2 when they hold windows of rows, so the worst index is absolute."""
    xp = array_module(kernel, exact, kp)
    unwritten = unwritten_mask(kernel)
    err = abs_error(kernel, exact)
    floor_err = abs_error(kp, exact)
    finite_ref = xp.isfinite(exact)
    scale = float(xp.max(xp.abs(exact[finite_ref]))) if bool(finite_ref.any()) else 0.0
    floor = float(floor_err.max()) if floor_err.size else 0.0
    del floor_err
    atol = ATOL_REL * scale
    tol = 2.0 * floor + atol
    nonfinite = (~xp.isfinite(kernel.astype(F64)) & ~unwritten) & ~(xp.isinf(exact) & (kernel == exact))
    finite = xp.isfinite(err)
    finite_err = err[finite]
    max_abs = float(err.max()) if err.size else 0.0
    worst = tuple(int(i) for i in np.unravel_index(int(xp.argmax(err)), err.shape)) if err.size else ()
    if rows is not None and len(worst) > 2:
        worst = worst[:2] + (int(np.asarray(rows)[worst[2]]),) + worst[3:]
    diff = xp.where(finite, err, 0.0)[finite_ref]
    ref_norm = float(xp.linalg.norm(exact[finite_ref]))
    rel_l2 = float(xp.linalg.norm(diff)) / ref_norm if ref_norm > 0 else float(xp.linalg.norm(diff))
    if not bool(finite.all()):
        rel_l2 = float("inf")
    n_over = int(xp.count_nonzero(err > tol))
    n_nonfinite, n_unwritten = int(xp.count_nonzero(nonfinite)), int(xp.count_nonzero(unwritten))
    m = StageMetrics(
        mode=mode, output=output, stage=stage, max_abs=max_abs,
        mean_abs=float(finite_err.mean()) if finite_err.size else float("inf"),
        rel_l2=rel_l2, floor=floor, atol=atol, tol=tol,
        err_over_floor=(max_abs / floor) if floor > 0 else (0.0 if max_abs == 0 else float("inf")),
        n_over_tol=n_over, n_nonfinite=n_nonfinite,
        n_unwritten=n_unwritten, n_elements=int(kernel.size),
        worst_index=worst,
        passed=bool(n_over == 0 and n_nonfinite == 0 and n_unwritten == 0),
    )
    return m, err


def row_spread(out) -> float:
    """uniform_p: per (b, h, column), max over rows minus min over rows; the largest of them."""
    xp = array_module(out)
    o = out.astype(F64)
    return float(xp.nanmax(o.max(axis=-2) - o.min(axis=-2)))
