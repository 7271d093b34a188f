"""NumPy references for every stage, on the fp16-rounded inputs.

Two references per stage (DESIGN.md):
  exact            float64 throughout;
  kernel-precision the kernel's rounding points emulated: fp32 S, the exp argument formed
                   by one fused multiply-add in fp32, P rounded to fp16 before P.V (or kept
                   at fp32 for fp32_p), fp32 accumulation tile by tile with the online
                   rescale, output rounded to the kernel's output type.
floor = max|kernel-precision - exact| is the error a correct kernel is expected to show.

Memory: every function works one (batch, head) at a time and, for O-sized outputs, in row
chunks, so no more than one [rows, Sk] float64 block per head is alive (sane at S = 8192).
"""

from __future__ import annotations

import numpy as np

LOG2E32 = np.float32(1.4426950408889634)
F32, F16, F64 = np.float32, np.float16, np.float64
ROW_CHUNK_ELEMS = 1 << 22  # rows * Sk per float64 block (32 MiB)


# ------------------------------------------------------------------ masks and exact stages
def valid_mask(rows: np.ndarray, Sk: int, causal: bool) -> np.ndarray:
    """[len(rows), Sk] bool: key j visible to query i (tail-free; causal is top-left: j <= i)."""
    cols = np.arange(Sk)
    if not causal:
        return np.ones((len(rows), Sk), dtype=bool)
    return cols[None, :] <= rows[:, None]


def row_chunks(Sq: int, Sk: int):
    step = max(1, ROW_CHUNK_ELEMS // max(Sk, 1))
    for r0 in range(0, Sq, step):
        yield np.arange(r0, min(Sq, r0 + step))


def exact_scores(q: np.ndarray, k: np.ndarray, scale: float, causal: bool, rows=None) -> np.ndarray:
    """float64 S = scale * q k^T for one head (q [Sq,D], k [Sk,D]), masked entries = -inf."""
    rows = np.arange(q.shape[0]) if rows is None else rows
    s = (q[rows].astype(F64) @ k.astype(F64).T) * scale
    s[~valid_mask(rows, k.shape[0], causal)] = -np.inf
    return s


def exact_softmax(s: np.ndarray):
    """Row max m, row sum l = sum exp(s - m), normalised P, all float64."""
    s = s.astype(F64)
    m = s.max(axis=1)
    p = np.exp(s - m[:, None])
    l = p.sum(axis=1)
    return m, l, p / l[:, None]


def exact_attention(q, k, v, scale: float, causal: bool):
    """One head: float64 O [Sq,D] and log-sum-exp [Sq]."""
    o = np.empty((q.shape[0], v.shape[1]), dtype=F64)
    lse = np.empty(q.shape[0], dtype=F64)
    v64 = v.astype(F64)
    for rows in row_chunks(q.shape[0], k.shape[0]):
        m, l, p = exact_softmax(exact_scores(q, k, scale, causal, rows))
        o[rows] = p @ v64
        lse[rows] = m + np.log(l)
    return o, lse


def uniform_p_output(v: np.ndarray, Sq: int) -> np.ndarray:
    """The smoking gun: with P = 1/Sk every output row is the column mean of V."""
    return np.broadcast_to(v.astype(F64).mean(axis=0), (Sq, v.shape[1]))


# ------------------------------------------------------------------ kernel-precision emulation
def _exp2_fma(s32: np.ndarray, sl2: np.float32, ms32: np.ndarray) -> np.ndarray:
    """fp32 exp2(fma(s, sl2, -ms)): the product is exact in float64, one rounding to fp32."""
    arg = (s32.astype(F64) * F64(sl2) - ms32.astype(F64)).astype(F32)
    return np.exp2(arg.astype(F64)).astype(F32)


def _online_softmax_step(s32, m, l, sl2=LOG2E32):
    """One key tile of the kernel's softmax_update: returns p (fp32), alpha, new m, new l.
    s32 are scores in the units the kernel holds them (raw Q.K^T with sl2 = fp32(scale*log2e)
    in the full kernel, scaled S with sl2 = log2e in softmax_only); m is in the same units."""
    mx = np.maximum(m, s32.max(axis=1))
    m_use = np.where(np.isneginf(mx), F32(0), mx).astype(F32)
    alpha = np.exp2(((m - m_use).astype(F32) * sl2).astype(F64)).astype(F32)
    ms = (m_use * sl2).astype(F32)
    p = _exp2_fma(s32, sl2, ms[:, None])
    l = (l * alpha + p.sum(axis=1, dtype=F32)).astype(F32)
    return p, alpha, mx.astype(F32), l


def _trunc32(x64: np.ndarray) -> np.ndarray:
    """float64 -> fp32 rounded toward zero."""
    y = x64.astype(F32)
    over = np.abs(y.astype(F64)) > np.abs(x64)
    y[over] = np.nextafter(y[over], F32(0))
    return y


def _mma_accumulate(c32: np.ndarray, a: np.ndarray, b: np.ndarray, k_step: int = 16) -> np.ndarray:
    """c + a.b the way mma.sync.m16n8k16 accumulates in fp32: fp16 products are exact, each
    k16 step adds its products to c and the result is truncated to fp32 (tensor cores
    align and truncate rather than round to nearest; Fasi et al., 2021). The sum of 16
    products plus c is formed in float64, close enough to exact for the emulation."""
    a64, b64 = a.astype(F64), b.astype(F64)
    for k0 in range(0, a.shape[1], k_step):
        c32 = _trunc32(c32.astype(F64) + a64[:, k0:k0 + k_step] @ b64[k0:k0 + k_step])
    return c32


def _pv_accumulate(o32: np.ndarray, p32: np.ndarray, v: np.ndarray, fp32_p: bool) -> np.ndarray:
    """o + fp16(p).v on the tensor cores; with fp32_p a second product with the remainder
    lo = fp16(p - hi) per k16 step (the kernel's hi + lo split)."""
    hi = p32.astype(F16)
    if not fp32_p:
        return _mma_accumulate(o32, hi, v)
    lo = (p32 - hi.astype(F32)).astype(F16)
    for k0 in range(0, p32.shape[1], 16):
        o32 = _mma_accumulate(o32, hi[:, k0:k0 + 16], v[k0:k0 + 16])
        o32 = _mma_accumulate(o32, lo[:, k0:k0 + 16], v[k0:k0 + 16])
    return o32


def kp_scores(q, k, scale: float, causal: bool, rows=None) -> np.ndarray:
    """fp32 S = fp32(q k^T) * fp32(scale), masked = -inf (tensor-core products are exact)."""
    rows = np.arange(q.shape[0]) if rows is None else rows
    s = (q[rows].astype(F32) @ k.astype(F32).T) * F32(scale)
    s[~valid_mask(rows, k.shape[0], causal)] = -np.inf
    return s.astype(F32)


def kp_attention(q, k, v, scale: float, causal: bool, block_n: int, fp32_p: bool = False):
    """One head, the kernel's arithmetic: O (fp16, or fp32 for fp32_p) and LSE (fp32)."""
    Sq, Sk = q.shape[0], k.shape[0]
    sl2 = (F32(scale) * LOG2E32).astype(F32)     # the kernel's scale * log2(e), in fp32
    out = np.empty((Sq, v.shape[1]), dtype=F32 if fp32_p else F16)
    lse = np.empty(Sq, dtype=F32)
    for rows in row_chunks(Sq, Sk):
        m = np.full(len(rows), -np.inf, dtype=F32)
        l = np.zeros(len(rows), dtype=F32)
        o = np.zeros((len(rows), v.shape[1]), dtype=F32)
        for t0 in range(0, Sk, block_n):
            t1 = min(Sk, t0 + block_n)
            s = kp_scores(q, k[t0:t1], 1.0, False, rows)    # raw scores: the scale is in sl2
            if causal:
                s[np.arange(t0, t1)[None, :] > rows[:, None]] = -np.inf
            p, alpha, m, l = _online_softmax_step(s, m, l, sl2)
            o = _pv_accumulate((o * alpha[:, None]).astype(F32), p, v[t0:t1], fp32_p)
        inv = (F32(1) / l).astype(F32)
        out[rows] = (o * inv[:, None]).astype(out.dtype)
        lse[rows] = ((m * F32(scale)).astype(F32) + np.log(l)).astype(F32)
    return out, lse


def kp_softmax(s_in: np.ndarray, block_n: int):
    """One head, injected fp32 S: the kernel's m, l and normalised P (second sweep)."""
    Sq, Sk = s_in.shape
    m = np.full(Sq, -np.inf, dtype=F32)
    l = np.zeros(Sq, dtype=F32)
    for t0 in range(0, Sk, block_n):
        _, _, m, l = _online_softmax_step(s_in[:, t0:t0 + block_n].astype(F32), m, l)
    ms = (np.where(np.isneginf(m), F32(0), m) * LOG2E32).astype(F32)
    p = (_exp2_fma(s_in.astype(F32), LOG2E32, ms[:, None]) * (F32(1) / l)[:, None]).astype(F32)
    return m, l, p


def kp_pv(p_in: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One head, injected fp32 P: fp16(P) . V accumulated as the tensor cores do, alpha = l = 1,
    output fp16."""
    o = np.zeros((p_in.shape[0], v.shape[1]), F32)
    return _pv_accumulate(o, p_in, v, False).astype(F16)


def kp_uniform(v: np.ndarray, Sq: int) -> np.ndarray:
    """One head: P = fp16(1/Sk) times the fp32 column sums of V, output fp16."""
    p = F32(F16(F32(1) / F32(v.shape[0])))
    row = (p * v.astype(F32).sum(axis=0, dtype=F32)).astype(F16)
    return np.broadcast_to(row, (Sq, v.shape[1]))
