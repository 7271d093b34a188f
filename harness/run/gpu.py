"""The GPU path: compile with cupy.RawModule, poison, launch, check, compare.

Public API (tests and notebooks call these directly; the CLI is a thin layer on top):
  prepare(mode, shape, ...)        -> Prepared: device inputs, poisoned outputs, launch()
  run_mode(mode, shape, ...)       -> RunResult: per-output StageMetrics, |error| arrays
The product path, forward(), lives apart in harness/api.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from debug_modes.registry import KERNEL_PARAMS, get_mode
from harness.build import compiler
from harness.check import metrics as met
from harness.check import stages
from harness.build.device import cupy as _cupy
from harness.build.loader import get_kernel, kernel_resources, runtime_variant
from harness.errors import FlashCoreError, UsageError
from harness.check.inputs import fresh_seed, make_inputs
from harness.check.shapes import Shape
from harness.build.variant import tiles_for

MAX_DEBUG_MATRIX_BYTES = 2 << 30   # [B,H,Sq,Sk] fp32 buffers of the debug modes


class KernelFault(FlashCoreError):
    """The launch or the synchronisation after it failed (illegal address, ...)."""

    exit_code = 1


def kernel_args(shape: Shape, bufs: dict, scale: float, window: tuple | None = None) -> tuple:
    """flashcore_fwd's argument tuple (the kernel contract); buffers absent from bufs are null
    pointers; window = (row0, n_rows), the query rows computed (default: all)."""
    row0, n_rows = window or (0, shape.Sq)
    return tuple(bufs[p] if p in bufs else np.uint64(0) for p in KERNEL_PARAMS) + (
        np.int32(shape.H), np.int32(shape.Sq), np.int32(shape.Sk), np.float32(scale),
        np.int32(row0), np.int32(n_rows))


def launch(variant: Variant, shape: Shape, bufs: dict, scale: float, sync: bool = True, window: tuple | None = None):
    """Launch flashcore_fwd; checks the launch and (with sync) the synchronisation."""
    cp = _cupy()
    fn = get_kernel(variant)
    n_rows = (window or (0, shape.Sq))[1]
    try:
        fn(variant.grid(shape, n_rows), (variant.threads,), kernel_args(shape, bufs, scale, window),
           shared_mem=variant.smem_bytes)
        if sync:
            cp.cuda.runtime.deviceSynchronize()
    except (cp.cuda.runtime.CUDARuntimeError, cp.cuda.driver.CUDADriverError) as e:
        raise KernelFault(f"{variant.label} on {shape.label}: kernel fault: {e}") from None


def poisoned(shape_tuple, dtype):
    """A device array filled with the poison NaN of metrics.POISON_BITS."""
    cp = _cupy()
    dtype = np.dtype(dtype)
    return cp.full(shape_tuple, met.POISON_BITS[dtype], dtype=met.UINT_OF[dtype]).view(dtype)


def default_scale(D: int, scale):
    return 1.0 / math.sqrt(D) if scale is None else float(scale)


# ------------------------------------------------------------------ one mode on one shape
@dataclass
class RunResult:
    variant: Variant
    shape: Shape
    scale: float
    inputs: str
    seed: int
    metrics: list = field(default_factory=list)       # StageMetrics, one per output buffer
    errors: dict = field(default_factory=dict)        # output name -> |kernel - exact| array
    outputs: dict = field(default_factory=dict)       # output name -> kernel output (host)
    expected: dict = field(default_factory=dict)      # output name -> exact reference (host)
    resources: dict = field(default_factory=dict)
    status: str = "ok"                                 # ok | fault | compile_error
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "ok" and all(m.passed for m in self.metrics)


def check_debug_size(mode: str, shape: Shape, rows: int, sk_pad: int):
    m = get_mode(mode)
    nbytes = max((int(np.prod(b.shape_for(shape, rows, sk_pad))) * b.np_dtype.itemsize for b in m.reads + m.writes),
                 default=0)
    if nbytes > MAX_DEBUG_MATRIX_BYTES:
        raise UsageError(f"{mode} on {shape.label} needs a {nbytes / 2**30:.1f} GiB buffer; the limit is "
                         f"{MAX_DEBUG_MATRIX_BYTES / 2**30:.0f} GiB (use a shorter sequence)")


@dataclass
class Prepared:
    """Everything one launch of a mode needs: device inputs, poisoned outputs, host copies."""
    variant: Variant
    shape: Shape
    scale: float
    seed: int
    host: dict        # host inputs by kernel parameter (Q, K, V, S_in, P_in)
    bufs: dict        # device inputs by parameter
    outs: dict        # device outputs by parameter (poisoned)
    window: tuple = None   # (row0, n_rows): the query rows the launch computes

    @property
    def sk_pad(self) -> int:
        return self.variant.padded_keys(self.shape.Sk)

    def repoison(self):
        for p, a in self.outs.items():
            self.outs[p] = poisoned(a.shape, a.dtype)

    def launch(self):
        self.repoison()
        launch(self.variant, self.shape, {**self.bufs, **self.outs}, self.scale, window=self.window)

    def timed_launcher(self):
        """A zero-overhead launch for timing: kernel and arguments resolved once, no checks
        (the caller checks the stream afterwards)."""
        fn = get_kernel(self.variant)
        args = kernel_args(self.shape, {**self.bufs, **self.outs}, self.scale, self.window)
        n_rows = (self.window or (0, self.shape.Sq))[1]
        grid, block, smem = self.variant.grid(self.shape, n_rows), (self.variant.threads,), self.variant.smem_bytes
        return lambda: fn(grid, block, args, shared_mem=smem)


def prepare(mode: str, shape: Shape, causal: bool = False, inputs: str = "randn", seed: int | None = None,
            bugs=(), scale: float | None = None, **variant_kw) -> Prepared:
    cp = _cupy()
    variant = runtime_variant(mode, shape.D, causal, bugs, **{**tiles_for(shape), **variant_kw})
    sk_pad = variant.padded_keys(shape.Sk)
    window = (0, shape.Sq)
    check_debug_size(mode, shape, window[1], sk_pad)
    seed = fresh_seed() if seed is None else int(seed)
    scale = default_scale(shape.D, scale)
    q, k, v = make_inputs(shape, inputs, seed)
    host = {"Q": q, "K": k, "V": v, **stages.injected_inputs(mode, q, k, v, causal, scale, sk_pad)}
    m = get_mode(mode)
    bufs = {b.param: cp.asarray(host[b.param]) for b in m.reads}
    outs = {b.param: poisoned(b.shape_for(shape, window[1], sk_pad), b.np_dtype) for b in m.writes}
    return Prepared(variant, shape, scale, seed, host, bufs, outs, window)


def run_mode(mode: str, shape: Shape, causal: bool = False, inputs: str = "randn", seed: int | None = None,
             bugs=(), scale: float | None = None, keep_outputs: bool = False, **variant_kw) -> RunResult:
    """Run one debug mode on one shape against its references; returns the metrics record.
    A kernel fault is reported in the result (status 'fault'), not raised."""
    cp = _cupy()
    pre = prepare(mode, shape, causal, inputs, seed, bugs, scale, **variant_kw)
    variant, scale, m = pre.variant, pre.scale, get_mode(mode)
    result = RunResult(variant, shape, scale, inputs, pre.seed)
    try:
        result.resources = kernel_resources(variant)
        pre.launch()
        # The kernel is bitwise deterministic by design (no atomics): a second launch that
        # differs is the signature of a race ("a moving error is a race").
        first = {p: a.copy() for p, a in pre.outs.items()}
        pre.launch()
        moved = {p: int(cp.count_nonzero(a.view(met.UINT_OF[a.dtype]) != first[p].view(met.UINT_OF[a.dtype])))
                 for p, a in pre.outs.items()}
    except compiler.CompileError as e:
        result.status, result.message = "compile_error", str(e)
        return result
    except KernelFault as e:
        result.status, result.message = "fault", str(e)
        return result
    q, k, v = pre.host["Q"], pre.host["K"], pre.host["V"]
    injected = {p: pre.host[p] for p in ("S_in", "P_in") if p in pre.host}
    outs = pre.outs
    refs = stages.stage_references(mode, q, k, v, causal, scale, variant.block_n, injected, pre.sk_pad)
    for b in m.writes:
        got = cp.asnumpy(outs[b.param])
        exact, kp = refs[b.output]
        sm, err = met.compare(mode, b.output, m.stage, got, exact, kp)
        sm.extra["nondeterministic"] = moved[b.param]
        sm.passed = sm.passed and moved[b.param] == 0
        if mode == "uniform_p":
            spread = met.row_spread(got)
            sm.extra["row_spread"] = spread
            sm.passed = sm.passed and spread <= sm.tol
        result.metrics.append(sm)
        result.errors[b.output] = err.astype(np.float32)
        if keep_outputs:
            result.outputs[b.output] = got
            result.expected[b.output] = exact
    return result
