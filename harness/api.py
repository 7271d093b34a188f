"""The product path: forward(q, k, v) on CuPy arrays or torch CUDA tensors.

Apart from the harness path (harness/run/): no references, no poison, no records.
"""

from __future__ import annotations

import math

import numpy as np

from debug_modes.registry import KERNEL_PARAMS
from harness.build.device import cupy as _cupy
from harness.build.loader import get_kernel, runtime_variant
from harness.build.variant import tiles_for
from harness.check.shapes import Shape
from harness.errors import UsageError


def forward(q, k, v, causal: bool = False, scale: float | None = None, lse: bool = False):
    """Attention forward. q [B,H,Sq,D], k/v [B,H,Sk,D] fp16 CUDA arrays (CuPy, or anything with
    __dlpack__, e.g. a PyTorch tensor); returns O of the same kind (and LSE fp32 when lse=True)."""
    cp = _cupy()
    is_cupy = isinstance(q, cp.ndarray)
    qc, kc, vc = (x if isinstance(x, cp.ndarray) else cp.from_dlpack(x) for x in (q, k, v))
    for name, x in (("q", qc), ("k", kc), ("v", vc)):
        if x.dtype != cp.float16 or x.ndim != 4:
            raise UsageError(f"{name}: expected a 4-D float16 array [B,H,S,D], got {x.dtype} {x.shape}")
    B, H, Sq, D = qc.shape
    if kc.shape != vc.shape or kc.shape[:2] != (B, H) or kc.shape[3] != D:
        raise UsageError(f"k/v shapes {kc.shape}/{vc.shape} do not match q {qc.shape}")
    shape = Shape(B, H, Sq, kc.shape[2], D)
    variant = runtime_variant("full", D, bool(causal), **tiles_for(shape))
    qc, kc, vc = (cp.ascontiguousarray(x) for x in (qc, kc, vc))
    o = cp.empty((B, H, Sq, D), cp.float16)
    bufs = {"Q": qc, "K": kc, "V": vc, "O": o}
    if lse:
        bufs["LSE"] = cp.empty((B, H, Sq), cp.float32)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    # The kernel contract's arguments: pointers, then H, Sq, Sk, scale and the window of
    # query rows (row0, n_rows): forward computes every row.
    args = tuple(bufs[p] if p in bufs else np.uint64(0) for p in KERNEL_PARAMS) + (
        np.int32(H), np.int32(Sq), np.int32(shape.Sk), np.float32(scale), np.int32(0), np.int32(Sq))
    get_kernel(variant)(variant.grid(shape), (variant.threads,), args, shared_mem=variant.smem_bytes)
    outs = (o, bufs["LSE"]) if lse else (o,)
    if not is_cupy:
        import torch   # the only other kind we hand back: a __dlpack__ tensor from PyTorch
        outs = tuple(torch.from_dlpack(x) for x in outs)
    return outs if lse else outs[0]
