"""Per-mode reference builders: inputs a debug mode injects, and (exact, kernel-precision)
pairs for every buffer the mode writes, on the host or the device (the array module of q).

`rows` (a host array of absolute query-row indices, None = every row) restricts the [rows,
keys] matrices and the per-row outputs to the rows a window checks (docs/DESIGN.md §7): the
windowed modes' outputs exist only there. Work is done in blocks of heads and rows so that
no float64 block exceeds the array module's budget (reference.chunk_elems).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from harness.check import reference as ref
from harness.check.xp import array_module
from debug_modes.registry import get_mode

F32, F64 = np.float32, np.float64


def s_width(injected: dict) -> int:
    return injected["S_in"].shape[-1]


def _rows(q, rows) -> np.ndarray:
    return ref.all_rows(q.shape[2]) if rows is None else np.asarray(rows)


def _heads_view(a):
    """[B, H, ...] -> [B*H, ...] (a view of a contiguous array: writes land in a)."""
    return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])


def head_groups(n_heads: int, xp) -> list:
    """Host: one head at a time, the NumPy references' blocking, so that host results stay
    bit for bit what they were (BLAS results depend on the matrix sizes); device: every head
    at once, so that each launch has work enough."""
    step = 1 if xp is np else n_heads
    return [slice(h, min(n_heads, h + step)) for h in range(0, n_heads, step)]


def blocks(n_heads: int, n_rows: int, width: int, xp):
    """(head slice, row slice) blocks for the [rows, keys] stages: on the host one head with
    every row (as before); on the device every head, in row chunks that keep one float64
    [heads, rows, width] block within the budget."""
    rows_per = n_rows if xp is np else max(1, min(n_rows, ref.chunk_elems(xp) // max(width * n_heads, 1)))
    for hs in head_groups(n_heads, xp):
        for r0 in range(0, n_rows, rows_per):
            yield hs, slice(r0, min(n_rows, r0 + rows_per))


@lru_cache(maxsize=1)
def _host_pool() -> ThreadPoolExecutor | None:
    n = min(8, os.cpu_count() or 1)
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="flashcore-ref") if n > 1 else None


def blas_on_one_thread() -> bool:
    """Whether this process's BLAS was told to use one thread (OpenBLAS reads
    OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS, when it loads): the harness's worker is
    (pool.WORKER_BLAS_THREADS). Threads of ours pay only then: on the H200 the six modes'
    references at the mission shape took 0.29 s on 8 threads with one-thread BLAS, 0.66 s
    serially, and 0.73 s on 8 threads over OpenBLAS's own (scripts/host_refs_timing.py)."""
    v = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return v == "1"


def each_block(body, items, xp) -> None:
    """body(item) for every item. On the host, where BLAS runs on one thread, the items run
    concurrently on a few threads (NumPy and BLAS release the GIL in their loops): each body
    writes only its own slices of arrays allocated before, and computes exactly what the loop
    did, so the results are bit for bit the serial loop's (tests/test_loop_costs.py). Issue 26:
    the host references of `run --debug all` at the mission shape took 0.66 s of a 2.8 s
    command, one head at a time. On the device, in order: each block is already every head."""
    items = list(items)
    pool = _host_pool() if xp is np and len(items) > 1 and blas_on_one_thread() else None
    if pool is None:
        for it in items:
            body(it)
        return
    for f in [pool.submit(body, it) for it in items]:
        f.result()      # the first error is raised, as the loop would


def _alloc(xp, shape, kp_dtype):
    return xp.empty(shape, F64), xp.empty(shape, kp_dtype)


def injected_inputs(mode: str, q, k, v, causal: bool, scale: float, sk_pad: int | None = None,
                    rows=None) -> dict:
    """The exact stage input a mode reads instead of computing (its Mode.injects: S for
    softmax_only, P for pv_only), for the query rows `rows`, at the padded key width sk_pad
    (docs/DESIGN.md, "Stage boundaries"): the padded columns hold what the previous stage must
    produce there, S = -inf and P = 0."""
    injects = get_mode(mode).injects
    if injects is None:
        return {}
    xp = array_module(q)
    B, H = q.shape[:2]
    Sk = k.shape[2]
    rows = _rows(q, rows)
    sk_pad = Sk if sk_pad is None else sk_pad
    out = xp.empty((B, H, len(rows), sk_pad), F32)
    out[..., Sk:] = -np.inf if injects == "S_in" else 0.0
    qh, kh, oh = _heads_view(q), _heads_view(k), _heads_view(out)

    def block(b):
        hs, rs = b
        s = ref.exact_scores(qh[hs], kh[hs], scale, causal, rows[rs])
        oh[hs, rs, :Sk] = (s if injects == "S_in" else ref.exact_softmax(s)[2]).astype(F32)
    each_block(block, blocks(B * H, len(rows), Sk, xp), xp)
    return {injects: out}


# ------------------------------------------------------------------ one builder per reference
# Each takes (q, k, v, causal, scale, block_n, injected, sk_pad, rows) with rows a host array
# and returns {output name: (exact, kernel-precision)}; a mode names its builder (Mode.reference).
def _attention(q, k, v, causal, scale, block_n, injected, sk_pad, rows, fp32_p=False):
    xp = array_module(q)
    B, H, _, D = q.shape
    R = len(rows)
    qh, kh, vh = _heads_view(q), _heads_view(k), _heads_view(v)
    res = {"O": _alloc(xp, (B, H, R, D), F32 if fp32_p else np.float16), "LSE": _alloc(xp, (B, H, R), F32)}
    (o, o_kp), (lse, lse_kp) = ((_heads_view(a) for a in res[n]) for n in ("O", "LSE"))

    def block(hs):      # each chunks its rows by its own width
        o[hs], lse[hs] = ref.exact_attention(qh[hs], kh[hs], vh[hs], scale, causal, rows)
        o_kp[hs], lse_kp[hs] = ref.kp_attention(qh[hs], kh[hs], vh[hs], scale, causal, block_n, fp32_p, rows)
    each_block(block, head_groups(B * H, xp), xp)
    return res


def _attention_fp32_p(*a):
    return _attention(*a, fp32_p=True)


def _scores(q, k, v, causal, scale, block_n, injected, sk_pad, rows):
    xp = array_module(q)
    B, H = q.shape[:2]
    Sk, R = k.shape[2], len(rows)
    qh, kh = _heads_view(q), _heads_view(k)
    res = {"S": _alloc(xp, (B, H, R, sk_pad), F32)}
    exact, kp = (_heads_view(a) for a in res["S"])
    for a in (exact, kp):
        a[..., Sk:] = -np.inf              # the padded keys of the tail tile: masked

    def block(b):
        hs, rs = b
        exact[hs, rs, :Sk] = ref.exact_scores(qh[hs], kh[hs], scale, causal, rows[rs])
        kp[hs, rs, :Sk] = ref.kp_scores(qh[hs], kh[hs], scale, causal, rows[rs])
    each_block(block, blocks(B * H, R, Sk, xp), xp)
    return res


def _softmax_of_injected_s(q, k, v, causal, scale, block_n, injected, sk_pad, rows):
    # S_in carries -inf in its padded columns, so P = 0 there in both references.
    xp = array_module(q)
    B, H, R = q.shape[0], q.shape[1], len(rows)
    res = {name: _alloc(xp, shape, F32)
           for name, shape in (("m", (B, H, R)), ("l", (B, H, R)), ("P", (B, H, R, s_width(injected))))}
    s_in = _heads_view(injected["S_in"])
    views = {name: tuple(_heads_view(a) for a in res[name]) for name in res}

    def block(b):
        hs, rs = b
        exact = ref.exact_softmax(s_in[hs, rs])
        kp = ref.kp_softmax(s_in[hs, rs], block_n)
        for name, e, p in zip(("m", "l", "P"), exact, kp):
            views[name][0][hs, rs], views[name][1][hs, rs] = e, p
    each_block(block, blocks(B * H, R, s_in.shape[-1], xp), xp)
    return res


def _pv_of_injected_p(q, k, v, causal, scale, block_n, injected, sk_pad, rows):
    xp = array_module(q)
    B, H, _, D = q.shape
    Sk, R = k.shape[2], len(rows)
    res = {"O": _alloc(xp, (B, H, R, D), np.float16)}
    exact, kp = (_heads_view(a) for a in res["O"])
    p_in = _heads_view(injected["P_in"])[..., :Sk]      # the padded columns are 0: no contribution
    vh = _heads_view(v)
    v64 = vh.astype(F64)

    def block(b):
        hs, rs = b
        exact[hs, rs] = p_in[hs, rs].astype(F64) @ v64[hs]
        kp[hs, rs] = ref.kp_pv(p_in[hs, rs], vh[hs])
    each_block(block, blocks(B * H, R, Sk, xp), xp)
    return res


def _column_mean(q, k, v, causal, scale, block_n, injected, sk_pad, rows):
    R = len(rows)
    return {"O": (ref.uniform_p_output(v, R), ref.kp_uniform(v, R))}


REFERENCES = {
    "attention": _attention,
    "attention_fp32_p": _attention_fp32_p,
    "scores": _scores,
    "softmax_of_injected_s": _softmax_of_injected_s,
    "pv_of_injected_p": _pv_of_injected_p,
    "column_mean": _column_mean,
}


def stage_references(mode: str, q, k, v, causal: bool, scale: float, block_n: int, injected: dict,
                     sk_pad: int | None = None, rows=None) -> dict:
    """{output name: (exact float64 array, kernel-precision array)} for the mode's outputs,
    over the query rows `rows` (the injected inputs hold exactly those rows), by the builder
    its data names (Mode.reference). [rows, keys] outputs are at the padded key width sk_pad:
    S = -inf and P = 0 there."""
    build = REFERENCES[get_mode(mode).reference]
    Sk = k.shape[2]
    return build(q, k, v, causal, scale, block_n, injected, Sk if sk_pad is None else sk_pad, _rows(q, rows))
