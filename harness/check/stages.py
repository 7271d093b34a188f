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


def _alloc(shape, kp_dtype):
    return np.empty(shape, F64), np.empty(shape, kp_dtype)


def injected_inputs(mode: str, q, k, v, causal: bool, scale: float) -> dict:
    """The exact stage inputs that softmax_only (S) and pv_only (P) read instead of computing."""
    if mode not in ("softmax_only", "pv_only"):
        return {}
    B, H, Sq, _ = q.shape
    Sk = k.shape[2]
    out = np.empty((B, H, Sq, Sk), F32)
    for b, h in _heads(q):
        s = ref.exact_scores(q[b, h], k[b, h], scale, causal)
        out[b, h] = s if mode == "softmax_only" else ref.exact_softmax(s)[2]
    return {"S_in" if mode == "softmax_only" else "P_in": out}


def stage_references(mode: str, q, k, v, causal: bool, scale: float, block_n: int, injected: dict) -> dict:
    """{output name: (exact float64 array, kernel-precision array)} for the mode's outputs."""
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
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
        res["S"] = _alloc((B, H, Sq, Sk), F32)
        for b, h in _heads(q):
            res["S"][0][b, h] = ref.exact_scores(q[b, h], k[b, h], scale, causal)
            res["S"][1][b, h] = ref.kp_scores(q[b, h], k[b, h], scale, causal)
    elif mode == "softmax_only":
        for name, shape in (("m", (B, H, Sq)), ("l", (B, H, Sq)), ("P", (B, H, Sq, Sk))):
            res[name] = _alloc(shape, F32)
        s_in = injected["S_in"]
        for b, h in _heads(q):
            exact = ref.exact_softmax(s_in[b, h])
            kp = ref.kp_softmax(s_in[b, h], block_n)
            for name, e, p in zip(("m", "l", "P"), exact, kp):
                res[name][0][b, h], res[name][1][b, h] = e, p
    elif mode == "pv_only":
        res["O"] = _alloc((B, H, Sq, D), np.float16)
        p_in = injected["P_in"]
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
