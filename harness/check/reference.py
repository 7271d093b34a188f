"""References for every stage, on the fp16-rounded inputs: NumPy code that runs on the host
(NumPy) or on the GPU (CuPy), the array module taken from the inputs (harness/check/xp.py).

Two references per stage (docs/DESIGN.md):
  exact            float64 throughout;
  kernel-precision the kernel's rounding points emulated: fp32 S, the exp argument formed
                   by one fused multiply-add in fp32, P rounded to fp16 before P.V (or kept
                   at fp32 for fp32_p), fp32 accumulation tile by tile with the online
                   rescale, output rounded to the kernel's output type.
floor = max|kernel-precision - exact| is the error a correct kernel is expected to show.

Arrays: q [..., Sq, D], k and v [..., Sk, D]; the leading axes are heads, computed together
(one head on the host as before, all heads at once on the device, where each operation
should have work enough to fill the GPU). `rows` selects query rows by absolute index (a
window, docs/DESIGN.md §7; None = every row), so that causal masking sees the true row.

Memory: O-sized outputs are computed in row chunks so that no float64 [..., rows, Sk] block
exceeds a budget per array module (32 MiB on the host, as always; 512 MiB on the device).
"""

from __future__ import annotations

import numpy as np

from harness.check.xp import array_module

LOG2E32 = np.float32(1.4426950408889634)
F32, F16, F64 = np.float32, np.float16, np.float64
ROW_CHUNK_ELEMS = 1 << 22          # host: float64 elements per [rows, width] block (32 MiB)
DEVICE_CHUNK_ELEMS = 1 << 26       # device: 512 MiB blocks, so each launch has work to do


def chunk_elems(xp) -> int:
    return ROW_CHUNK_ELEMS if xp is np else DEVICE_CHUNK_ELEMS


# ------------------------------------------------------------------ rows
def all_rows(n: int) -> np.ndarray:
    return np.arange(n)


def take_rows(a, rows):
    """a[..., rows, :]; rows a host int array of absolute indices. A contiguous run is a
    slice (a view, no copy); anything else is gathered on a's device."""
    if rows is None:
        return a
    rows = np.asarray(rows)
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1):
        return a[..., int(rows[0]):int(rows[-1]) + 1, :]
    xp = array_module(a)
    return xp.take(a, xp.asarray(rows), axis=-2)


def row_chunks(rows, width: int, lead: int = 1, xp=np):
    """(offset, rows) chunks of a host row-index array (or a row count) so that one float64
    block [lead, chunk, width] stays within the array module's budget."""
    rows = all_rows(rows) if np.isscalar(rows) else np.asarray(rows)
    step = max(1, chunk_elems(xp) // max(width * lead, 1))
    for i0 in range(0, len(rows), step):
        yield i0, rows[i0:i0 + step]


def _lead(a) -> int:
    return int(np.prod(a.shape[:-2], dtype=np.int64))


def _swap(a):
    return a.swapaxes(-1, -2)


# ------------------------------------------------------------------ masks and exact stages
def valid_mask(rows, Sk: int, causal: bool, xp=np):
    """[len(rows), Sk] bool: key j visible to query i (tail-free; causal is top-left: j <= i)."""
    rows = np.asarray(rows)
    if not causal:
        return xp.ones((len(rows), Sk), dtype=bool)
    return xp.arange(Sk)[None, :] <= xp.asarray(rows)[:, None]


def _rows_on(xp, rows):
    """Row indices as an array of xp (a host-to-device copy only when they are on the host)."""
    return rows if array_module(rows) is xp else xp.asarray(np.asarray(rows))


def _mask(s, rows, Sk: int, causal: bool, col0: int = 0):
    """s with -inf where key col0 + j is invisible to query rows[i] (causal only: the tail
    is masked by the callers that pad). rows may already be on s's device (kp_attention
    copies them once per row chunk, not once per key tile: each copy waits for the device)."""
    if not causal:
        return s
    xp = array_module(s)
    invisible = xp.arange(col0, col0 + Sk)[None, :] > _rows_on(xp, rows)[:, None]
    return xp.where(invisible, s.dtype.type(-np.inf), s)


def exact_scores(q, k, scale: float, causal: bool, rows=None):
    """float64 S = scale * q k^T (q [..., Sq, D], k [..., Sk, D]), masked entries = -inf."""
    rows = all_rows(q.shape[-2]) if rows is None else rows
    s = (take_rows(q, rows).astype(F64) @ _swap(k.astype(F64, copy=False))) * scale
    return _mask(s, rows, k.shape[-2], causal)


def exact_softmax(s):
    """Row max m, row sum l = sum exp(s - m), normalised P, all float64."""
    xp = array_module(s)
    s = s.astype(F64, copy=False)
    m = s.max(axis=-1)
    p = xp.exp(s - m[..., None])
    l = p.sum(axis=-1)
    return m, l, p / l[..., None]


def exact_attention(q, k, v, scale: float, causal: bool, rows=None):
    """float64 O [..., rows, D] and log-sum-exp [..., rows]."""
    xp = array_module(q)
    rows = all_rows(q.shape[-2]) if rows is None else np.asarray(rows)
    lead = q.shape[:-2]
    o = xp.empty(lead + (len(rows), v.shape[-1]), dtype=F64)
    lse = xp.empty(lead + (len(rows),), dtype=F64)
    k64, v64 = k.astype(F64), v.astype(F64)     # once, not per row chunk
    for i0, chunk in row_chunks(rows, k.shape[-2], _lead(q), xp):
        m, l, p = exact_softmax(exact_scores(q, k64, scale, causal, chunk))
        o[..., i0:i0 + len(chunk), :] = p @ v64
        lse[..., i0:i0 + len(chunk)] = m + xp.log(l)
    return o, lse


def uniform_p_output(v, Sq: int):
    """The smoking gun: with P = 1/Sk every output row is the column mean of V."""
    xp = array_module(v)
    mean = v.astype(F64).mean(axis=-2)
    return xp.broadcast_to(mean[..., None, :], v.shape[:-2] + (Sq, v.shape[-1]))


# ------------------------------------------------------------------ kernel-precision emulation
def _exp2_fma(s32, sl2: np.float32, ms32):
    """fp32 exp2(fma(s, sl2, -ms)): the product is exact in float64, one rounding to fp32."""
    xp = array_module(s32)
    arg = (s32.astype(F64) * F64(sl2) - ms32.astype(F64)).astype(F32)
    return xp.exp2(arg.astype(F64)).astype(F32)


def _online_softmax_step(s32, m, l, sl2=LOG2E32):
    """One key tile of the kernel's softmax_update: returns p (fp32), alpha, new m, new l.
    s32 are scores in the units the kernel holds them (raw Q.K^T with sl2 = fp32(scale*log2e)
    in the full kernel, scaled S with sl2 = log2e in softmax_only); m is in the same units."""
    xp = array_module(s32)
    mx = xp.maximum(m, s32.max(axis=-1))
    m_use = xp.where(xp.isneginf(mx), F32(0), mx).astype(F32)
    alpha = xp.exp2(((m - m_use).astype(F32) * sl2).astype(F64)).astype(F32)
    ms = (m_use * sl2).astype(F32)
    p = _exp2_fma(s32, sl2, ms[..., None])
    l = (l * alpha + p.sum(axis=-1, dtype=F32)).astype(F32)
    return p, alpha, mx.astype(F32), l


def _trunc32_rounded(x64):
    """float64 -> fp32 rounded toward zero: round to nearest, then step back toward zero where
    that rounded away (the comparison promotes fp32 exactly). Right everywhere."""
    xp = array_module(x64)
    y = x64.astype(F32)
    over = xp.abs(y) > xp.abs(x64)
    return xp.where(over, xp.nextafter(y, F32(0)), y)


_LOW29 = np.int64(~((1 << 29) - 1))    # float64's 52 mantissa bits less fp32's 23
_FP32_TINY = F32(np.finfo(np.float32).tiny)


def _trunc32(x64):
    """float64 -> fp32 rounded toward zero. On the host: clear the 29 mantissa bits fp32 has
    not (that is truncation), and the cast is then exact, in two passes instead of six
    (_mma_accumulate calls this once per k16 step: it was half of fp32_p's reference time).
    Where fp32 is subnormal or overflows the cast would round again, so those elements, if
    any, take _trunc32_rounded; bit for bit the same everywhere. On the device the rounded
    form stays: it needs no further CuPy kernels (each costs a compilation on a fresh machine)."""
    xp = array_module(x64)
    if xp is not np:
        return _trunc32_rounded(x64)
    with np.errstate(over="ignore"):
        t = (np.ascontiguousarray(x64).view(np.int64) & _LOW29).view(F64).astype(F32)
    a = np.abs(t)
    odd = ~(a >= _FP32_TINY) & (a != 0) | np.isinf(a)
    return np.where(odd, _trunc32_rounded(x64), t) if odd.any() else t


def _mma_accumulate(c32, a, b, k_step: int = 16):
    """c + a.b the way mma.sync.m16n8k16 accumulates in fp32: fp16 products are exact, each
    k16 step adds its products to c and the result is truncated to fp32 (tensor cores
    align and truncate rather than round to nearest; Fasi et al., 2021). The sum of 16
    products plus c is formed in float64, close enough to exact for the emulation. Each step
    is one whole-block operation (every row and head at once): on the device the loop over
    k16 steps is the only Python loop."""
    a64, b64 = a.astype(F64), b.astype(F64)
    for k0 in range(0, a.shape[-1], k_step):
        c32 = _trunc32(c32.astype(F64) + a64[..., k0:k0 + k_step] @ b64[..., k0:k0 + k_step, :])
    return c32


def _pv_accumulate(o32, p32, v, fp32_p: bool):
    """o + fp16(p).v on the tensor cores; with fp32_p a second product with the remainder
    lo = fp16(p - hi) per k16 step (the kernel's hi + lo split)."""
    hi = p32.astype(F16)
    if not fp32_p:
        return _mma_accumulate(o32, hi, v)
    lo = (p32 - hi.astype(F32)).astype(F16)
    for k0 in range(0, p32.shape[-1], 16):
        o32 = _mma_accumulate(o32, hi[..., k0:k0 + 16], v[..., k0:k0 + 16, :])
        o32 = _mma_accumulate(o32, lo[..., k0:k0 + 16], v[..., k0:k0 + 16, :])
    return o32


def kp_scores(q, k, scale: float, causal: bool, rows=None):
    """fp32 S = fp32(q k^T) * fp32(scale), masked = -inf (tensor-core products are exact)."""
    rows = all_rows(q.shape[-2]) if rows is None else rows
    s = (take_rows(q, rows).astype(F32) @ _swap(k.astype(F32, copy=False))) * F32(scale)
    return _mask(s, rows, k.shape[-2], causal).astype(F32)


def _kp_width(xp, Sk: int, block_n: int, D: int) -> int:
    """Float64 elements per row that kp_attention's row chunks are budgeted by. Per key tile
    a few [rows, D] and [rows, BLOCK_N] temporaries are alive, so the device budgets by those;
    the host keeps the chunks of the NumPy references (by Sk, as exact_attention), so that its
    results stay bit for bit what they were."""
    return Sk if xp is np else 4 * max(block_n, D)


def kp_attention(q, k, v, scale: float, causal: bool, block_n: int, fp32_p: bool = False, rows=None):
    """The kernel's arithmetic: O [..., rows, D] (fp16, or fp32 for fp32_p) and LSE (fp32).
    Works key tile by key tile, so a row chunk needs [rows, max(BLOCK_N, D)] blocks only."""
    xp = array_module(q)
    rows = all_rows(q.shape[-2]) if rows is None else np.asarray(rows)
    Sk, D, lead = k.shape[-2], v.shape[-1], q.shape[:-2]
    sl2 = (F32(scale) * LOG2E32).astype(F32)     # the kernel's scale * log2(e), in fp32
    out = xp.empty(lead + (len(rows), D), dtype=F32 if fp32_p else F16)
    lse = xp.empty(lead + (len(rows),), dtype=F32)
    k32 = k.astype(F32)
    for i0, chunk in row_chunks(rows, _kp_width(xp, Sk, block_n, D), _lead(q), xp):
        q32, chunk_rows = take_rows(q, chunk).astype(F32), _rows_on(xp, chunk)
        m = xp.full(lead + (len(chunk),), -np.inf, dtype=F32)
        l = xp.zeros(lead + (len(chunk),), dtype=F32)
        o = xp.zeros(lead + (len(chunk), D), dtype=F32)
        for t0 in range(0, Sk, block_n):
            t1 = min(Sk, t0 + block_n)
            s = (q32 @ _swap(k32[..., t0:t1, :])) * F32(1.0)        # raw scores: the scale is in sl2
            s = _mask(s, chunk_rows, t1 - t0, causal, t0)
            p, alpha, m, l = _online_softmax_step(s, m, l, sl2)
            o = _pv_accumulate((o * alpha[..., None]).astype(F32), p, v[..., t0:t1, :], fp32_p)
        inv = (F32(1) / l).astype(F32)
        out[..., i0:i0 + len(chunk), :] = (o * inv[..., None]).astype(out.dtype)
        lse[..., i0:i0 + len(chunk)] = ((m * F32(scale)).astype(F32) + xp.log(l)).astype(F32)
    return out, lse


def kp_softmax(s_in, block_n: int):
    """Injected fp32 S [..., rows, Skp]: the kernel's m, l and normalised P (second sweep)."""
    xp = array_module(s_in)
    lead_rows = s_in.shape[:-1]
    m = xp.full(lead_rows, -np.inf, dtype=F32)
    l = xp.zeros(lead_rows, dtype=F32)
    for t0 in range(0, s_in.shape[-1], block_n):
        _, _, m, l = _online_softmax_step(s_in[..., t0:t0 + block_n].astype(F32), m, l)
    ms = (xp.where(xp.isneginf(m), F32(0), m) * LOG2E32).astype(F32)
    p = (_exp2_fma(s_in.astype(F32), LOG2E32, ms[..., None]) * (F32(1) / l)[..., None]).astype(F32)
    return m, l, p


def kp_pv(p_in, v):
    """Injected fp32 P [..., rows, Sk]: fp16(P) . V accumulated as the tensor cores do,
    alpha = l = 1, output fp16."""
    xp = array_module(p_in)
    o = xp.zeros(p_in.shape[:-1] + (v.shape[-1],), F32)
    return _pv_accumulate(o, p_in, v, False).astype(F16)


def kp_uniform(v, Sq: int):
    """P = fp16(1/Sk) times the fp32 column sums of V, output fp16, every row alike."""
    xp = array_module(v)
    p = F32(F16(F32(1) / F32(v.shape[-2])))
    row = (p * v.astype(F32).sum(axis=-2, dtype=F32)).astype(F16)
    return xp.broadcast_to(row[..., None, :], v.shape[:-2] + (Sq, v.shape[-1]))
