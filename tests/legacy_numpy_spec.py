"""A frozen copy of the NumPy references and stage assembly as they were before the
array-module change (commit 9b26766: harness/check/reference.py and stages.py, verbatim
below the marker, stages' `ref.` pointing at this file). tests/test_xp_references.py
checks that the array-module-generic code gives exactly these results on the host.
Do not edit: it is the old specification that the new code must reproduce bit for bit."""
# ---- harness/check/reference.py at 9b26766

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

# ---- harness/check/stages.py at 9b26766

F32, F64 = np.float32, np.float64


def _heads(q):
    B, H = q.shape[:2]
    for b in range(B):
        for h in range(H):
            yield b, h


def s_width(injected: dict) -> int:
    return injected["S_in"].shape[-1]


def _alloc(shape, kp_dtype):
    return np.empty(shape, F64), np.empty(shape, kp_dtype)


def injected_inputs(mode: str, q, k, v, causal: bool, scale: float, sk_pad: int | None = None) -> dict:
    """The exact stage inputs that softmax_only (S) and pv_only (P) read instead of computing,
    at the padded key width sk_pad (docs/DESIGN.md, "Stage boundaries"): the padded columns
    hold what the previous stage must produce there, S = -inf and P = 0."""
    if mode not in ("softmax_only", "pv_only"):
        return {}
    B, H, Sq, _ = q.shape
    Sk = k.shape[2]
    sk_pad = Sk if sk_pad is None else sk_pad
    out = np.empty((B, H, Sq, sk_pad), F32)
    out[..., Sk:] = -np.inf if mode == "softmax_only" else 0.0
    for b, h in _heads(q):
        s = exact_scores(q[b, h], k[b, h], scale, causal)
        out[b, h, :, :Sk] = s if mode == "softmax_only" else exact_softmax(s)[2]
    return {"S_in" if mode == "softmax_only" else "P_in": out}


def stage_references(mode: str, q, k, v, causal: bool, scale: float, block_n: int, injected: dict,
                     sk_pad: int | None = None) -> dict:
    """{output name: (exact float64 array, kernel-precision array)} for the mode's outputs.
    [rows, keys] outputs are at the padded key width sk_pad: S = -inf and P = 0 there."""
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    sk_pad = Sk if sk_pad is None else sk_pad
    res = {}
    if mode in ("full", "fp32_p"):
        fp32_p = mode == "fp32_p"
        res["O"] = _alloc((B, H, Sq, D), F32 if fp32_p else np.float16)
        res["LSE"] = _alloc((B, H, Sq), F32)
        for b, h in _heads(q):
            o, lse = exact_attention(q[b, h], k[b, h], v[b, h], scale, causal)
            res["O"][0][b, h], res["LSE"][0][b, h] = o, lse
            o, lse = kp_attention(q[b, h], k[b, h], v[b, h], scale, causal, block_n, fp32_p)
            res["O"][1][b, h], res["LSE"][1][b, h] = o, lse
    elif mode == "qk_only":
        res["S"] = _alloc((B, H, Sq, sk_pad), F32)
        for a in res["S"]:
            a[..., Sk:] = -np.inf              # the padded keys of the tail tile: masked
        for b, h in _heads(q):
            res["S"][0][b, h, :, :Sk] = exact_scores(q[b, h], k[b, h], scale, causal)
            res["S"][1][b, h, :, :Sk] = kp_scores(q[b, h], k[b, h], scale, causal)
    elif mode == "softmax_only":
        # S_in carries -inf in its padded columns, so P = 0 there in both references.
        for name, shape in (("m", (B, H, Sq)), ("l", (B, H, Sq)), ("P", (B, H, Sq, s_width(injected)))):
            res[name] = _alloc(shape, F32)
        s_in = injected["S_in"]
        for b, h in _heads(q):
            exact = exact_softmax(s_in[b, h])
            kp = kp_softmax(s_in[b, h], block_n)
            for name, e, p in zip(("m", "l", "P"), exact, kp):
                res[name][0][b, h], res[name][1][b, h] = e, p
    elif mode == "pv_only":
        res["O"] = _alloc((B, H, Sq, D), np.float16)
        p_in = injected["P_in"][..., :Sk]      # the padded columns are 0: no contribution
        for b, h in _heads(q):
            res["O"][0][b, h] = p_in[b, h].astype(F64) @ v[b, h].astype(F64)
            res["O"][1][b, h] = kp_pv(p_in[b, h], v[b, h])
    elif mode == "uniform_p":
        res["O"] = _alloc((B, H, Sq, D), np.float16)
        for b, h in _heads(q):
            res["O"][0][b, h] = uniform_p_output(v[b, h], Sq)
            res["O"][1][b, h] = kp_uniform(v[b, h], Sq)
    else:
        raise KeyError(mode)
    return res
