"""References for a kernel checked as written (kernels/spec.py): every quantity a spec may
declare an output for, exact (float64) and at the kernel's declared precision, on the host.

exact            float64 from the inputs as the kernel sees them (rounded to its input dtype).
kernel-precision the precision model of the spec: S accumulated in fp32 term by term, the online softmax
                 over key tiles of block_n keys (running max, rescale) in fp32, P rounded to
                 the declared P dtype before P.V, P.V accumulated in fp32, O rounded to the
                 output dtype. With no model declared, P and O at the kernel's I/O dtype:
                 flash-attention's rule of judging against a reference at the kernel's own
                 precision. floor = max|kernel-precision - exact| (harness/check/metrics.py).

Conventions (spec [conventions]): LSE natural (log) or base 2; m the row max of the scaled
scores s = scale * q.k, or that times log2(e) (kernels that run exp2); l = sum_j exp(s_ij - m_i).
Debug-flag quantities (spec.FLAG_REFERENCES): O under uniform P, over every key or over the
first key tile, and the first key tile's (scaled or raw) scores.
"""

from __future__ import annotations

import numpy as np

F64, F32 = np.float64, np.float32
LOG2E = 1.4426950408889634


def np_dtype(name: str):
    """A NumPy dtype for a spec dtype name (bfloat16 from ml_dtypes: NumPy has none)."""
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def rounded(a, dtype_name: str):
    """a rounded to a spec dtype and back to float32 (the values a kernel of that type holds)."""
    return np.asarray(a).astype(np_dtype(dtype_name)).astype(F32)


def _mask(Sq: int, Sk: int, causal: bool):
    """Visible keys: every key, or under top-left causal masking key j for query i iff j <= i."""
    if not causal:
        return None
    return np.arange(Sk)[None, :] <= np.arange(Sq)[:, None]


def exact_scores(q, k, scale: float, causal: bool):
    s = scale * (q.astype(F64) @ np.swapaxes(k.astype(F64), -1, -2))
    m = _mask(q.shape[-2], k.shape[-2], causal)
    return s if m is None else np.where(m, s, -np.inf)


def exact(q, k, v, scale: float, causal: bool) -> dict:
    """{o, lse, m, l, s}: float64 attention of [..., S, D] inputs (lse, m natural units)."""
    s = exact_scores(q, k, scale, causal)
    m = s.max(axis=-1)
    p = np.exp(s - m[..., None])
    l = p.sum(axis=-1)
    o = (p @ v.astype(F64)) / l[..., None]
    return {"o": o, "lse": m + np.log(l), "m": m, "l": l, "s": s}


def kernel_precision(q, k, v, scale: float, causal: bool, block_n: int, p_dtype: str, out_dtype: str,
                     acc: str = "float32") -> dict:
    """The online softmax as a tiled kernel computes it, at the declared precision (see the
    module docstring); the same keys as exact(): {o, lse, m, l, s}."""
    Sq, Sk = q.shape[-2], k.shape[-2]
    v32 = v.astype(F32)
    s = kp_scores(q, k, scale, causal)
    lead = q.shape[:-2]
    m = np.full(lead + (Sq,), -np.inf, F32)
    l = np.zeros(lead + (Sq,), F32)
    o = np.zeros(lead + (Sq, v.shape[-1]), F32)
    with np.errstate(invalid="ignore", over="ignore"):
        for j0 in range(0, Sk, block_n):
            sj = s[..., j0:j0 + block_n]
            m_new = np.maximum(m, sj.max(axis=-1))
            alpha = np.where(np.isneginf(m), F32(0), np.exp(m - m_new)).astype(F32)
            p = np.exp(sj - m_new[..., None]).astype(F32)
            p = np.where(np.isneginf(sj), F32(0), p)
            l = (alpha * l + p.sum(axis=-1, dtype=F32)).astype(F32)
            pv = rounded(p, p_dtype) @ v32[..., j0:j0 + block_n, :]
            if acc == "float16":
                pv = rounded(pv, "float16")
            o = (alpha[..., None] * o + pv).astype(F32)
            m = m_new
    o = rounded(o / l[..., None], out_dtype)
    return {"o": o, "lse": (m + np.log(l)).astype(F32), "m": m, "l": l, "s": s}


def kp_scores(q, k, scale: float, causal: bool):
    """The scores at the kernel's precision: fp32 term by term, scaled, masked with -inf."""
    s = sequential_scores(q.astype(F32), k.astype(F32)) * F32(scale)
    mask = _mask(q.shape[-2], k.shape[-2], causal)
    return s if mask is None else np.where(mask, s, F32(-np.inf))


def sequential_scores(q32, k32):
    """q.k in fp32 accumulated one term at a time, rounding after every multiply and add: the
    error a kernel's own loop (or its tensor-core chain) makes in a score, not the smaller one
    of a blocked BLAS. With large logits (the large probe: s ~ 50) that error, amplified by the
    exp, is what a correct fp32 kernel shows; a floor from BLAS scores was 90x too small."""
    s = np.zeros(q32.shape[:-1] + (k32.shape[-2],), F32)
    kt = np.swapaxes(k32, -1, -2)
    for x in range(q32.shape[-1]):
        s = (s + (q32[..., x:x + 1] * kt[..., x:x + 1, :]).astype(F32)).astype(F32)
    return s


def in_convention(ref: dict, lse_base: str, m_form: str) -> dict:
    """The reference quantities in the units the kernel declares it writes them in."""
    out = dict(ref)
    if lse_base == "log2":
        out["lse"] = ref["lse"] * LOG2E
    if m_form == "max_log2":
        out["m"] = ref["m"] * LOG2E
    return out


def uniform_o(v, Sq: int, causal: bool, first: int | None = None, out_dtype: str = "float32", exact_: bool = True):
    """O under P = 1/(number of keys averaged): every row the mean of V's keys (the first
    `first` keys only for a flag that is uniform over the first tile; under causal masking the
    keys a row sees)."""
    Sk = v.shape[-2]
    n = Sk if first is None else min(first, Sk)
    vv = (v.astype(F64) if exact_ else v.astype(F32))[..., :n, :]
    lead = v.shape[:-2]
    if causal:
        csum = np.cumsum(vv, axis=-2)
        rows = np.minimum(np.arange(Sq), n - 1)
        o = csum[..., rows, :] / (rows + 1)[:, None]
    else:
        o = np.broadcast_to(vv.mean(axis=-2)[..., None, :], lead + (Sq, v.shape[-1]))
    return np.ascontiguousarray(o) if exact_ else rounded(o, out_dtype)
