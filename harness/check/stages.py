"""Per-mode reference builders: inputs a debug mode injects, and (exact, kernel-precision)
pairs for every buffer the mode writes. Works head by head (see reference.py on memory)."""

from __future__ import annotations

import numpy as np

from harness.check import reference as ref

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
        s = ref.exact_scores(q[b, h], k[b, h], scale, causal)
        out[b, h, :, :Sk] = s if mode == "softmax_only" else ref.exact_softmax(s)[2]
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
            o, lse = ref.exact_attention(q[b, h], k[b, h], v[b, h], scale, causal)
            res["O"][0][b, h], res["LSE"][0][b, h] = o, lse
            o, lse = ref.kp_attention(q[b, h], k[b, h], v[b, h], scale, causal, block_n, fp32_p)
            res["O"][1][b, h], res["LSE"][1][b, h] = o, lse
    elif mode == "qk_only":
        res["S"] = _alloc((B, H, Sq, sk_pad), F32)
        for a in res["S"]:
            a[..., Sk:] = -np.inf              # the padded keys of the tail tile: masked
        for b, h in _heads(q):
            res["S"][0][b, h, :, :Sk] = ref.exact_scores(q[b, h], k[b, h], scale, causal)
            res["S"][1][b, h, :, :Sk] = ref.kp_scores(q[b, h], k[b, h], scale, causal)
    elif mode == "softmax_only":
        # S_in carries -inf in its padded columns, so P = 0 there in both references.
        for name, shape in (("m", (B, H, Sq)), ("l", (B, H, Sq)), ("P", (B, H, Sq, s_width(injected)))):
            res[name] = _alloc(shape, F32)
        s_in = injected["S_in"]
        for b, h in _heads(q):
            exact = ref.exact_softmax(s_in[b, h])
            kp = ref.kp_softmax(s_in[b, h], block_n)
            for name, e, p in zip(("m", "l", "P"), exact, kp):
                res[name][0][b, h], res[name][1][b, h] = e, p
    elif mode == "pv_only":
        res["O"] = _alloc((B, H, Sq, D), np.float16)
        p_in = injected["P_in"][..., :Sk]      # the padded columns are 0: no contribution
        for b, h in _heads(q):
            res["O"][0][b, h] = p_in[b, h].astype(F64) @ v[b, h].astype(F64)
            res["O"][1][b, h] = ref.kp_pv(p_in[b, h], v[b, h])
    elif mode == "uniform_p":
        res["O"] = _alloc((B, H, Sq, D), np.float16)
        for b, h in _heads(q):
            res["O"][0][b, h] = ref.uniform_p_output(v[b, h], Sq)
            res["O"][1][b, h] = ref.kp_uniform(v[b, h], Sq)
    else:
        raise KeyError(mode)
    return res
