"""The GPU path: compile with cupy.RawModule, poison, launch, check, compare.

Public API (tests and notebooks call these directly; the CLI is a thin layer on top):
  require_gpu()                    -> device info dict, or NoGPUError
  forward(q, k, v, causal, scale)  -> O, same kind as q (CuPy array or a __dlpack__ tensor)
  run_mode(mode, shape, ...)       -> RunResult: per-output StageMetrics, |error| arrays
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from debug_modes.registry import KERNEL_PARAMS, get_mode
from . import compiler, metrics as met, stages
from .errors import FlashCoreError, NoGPUError, UsageError
from .inputs import fresh_seed, make_inputs
from .shapes import Shape
from .variant import Variant, tiles_for

DEFAULT_SMEM = 48 * 1024
MAX_DEBUG_MATRIX_BYTES = 2 << 30   # [B,H,Sq,Sk] fp32 buffers of the debug modes


class KernelFault(FlashCoreError):
    """The launch or the synchronisation after it failed (illegal address, ...)."""

    exit_code = 1


def _cupy():
    try:
        import cupy
        return cupy
    except Exception as e:
        raise NoGPUError(f"no GPU: CuPy is not importable ({type(e).__name__}); install flashcore[cuda13]") from None


def require_gpu() -> dict:
    """Device facts for the record; NoGPUError (exit 2) where there is no CUDA GPU."""
    cp = _cupy()
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise NoGPUError(f"no CUDA GPU available ({str(e).splitlines()[0][:120]})") from None
    if n < 1:
        raise NoGPUError("no CUDA GPU available")
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {
        "device": name,
        "arch": f"sm_{props['major']}{props['minor']}",
        "sms": int(props["multiProcessorCount"]),
        "driver": cp.cuda.runtime.driverGetVersion(),
        "runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cupy": cp.__version__,
    }


_MODULES: dict = {}


def get_kernel(variant: Variant):
    """The compiled flashcore_fwd for a variant (compiled once per process, cached on disk by CuPy)."""
    key = compiler.cache_key(variant)
    if key not in _MODULES:
        cp = _cupy()
        src = compiler.kernel_file().read_text()
        try:
            mod = cp.RawModule(code=src, options=compiler.runtime_options(variant), backend="nvrtc")
            fn = mod.get_function(compiler.KERNEL_NAME)
        except cp.cuda.compiler.CompileException as e:
            log = compiler.format_compile_log(str(e), compiler.kernel_sources())
            raise compiler.CompileError(f"{variant.label}: compilation failed\n{log}") from None
        if variant.smem_bytes > DEFAULT_SMEM:
            fn.max_dynamic_shared_size_bytes = variant.smem_bytes
        _MODULES[key] = fn
    return _MODULES[key]


def kernel_resources(variant: Variant) -> dict:
    fn = get_kernel(variant)
    return {"registers": int(fn.num_regs), "smem_static": int(fn.shared_size_bytes),
            "smem_dynamic": variant.smem_bytes, "local_bytes": int(fn.local_size_bytes)}


def runtime_variant(mode="full", head_dim=64, causal=False, bugs=(), **kw) -> Variant:
    """A Variant for the current device's arch (resources and records name it)."""
    arch = require_gpu()["arch"]
    arch = arch if arch in ("sm_80", "sm_86", "sm_89", "sm_90") else "sm_80"
    return Variant(mode=mode, head_dim=head_dim, causal=causal, bugs=tuple(bugs), arch=arch, **kw)


def kernel_args(shape: Shape, bufs: dict, scale: float) -> tuple:
    """flashcore_fwd's argument tuple; buffers absent from bufs are null pointers."""
    return tuple(bufs[p] if p in bufs else np.uint64(0) for p in KERNEL_PARAMS) + (
        np.int32(shape.H), np.int32(shape.Sq), np.int32(shape.Sk), np.float32(scale))


def launch(variant: Variant, shape: Shape, bufs: dict, scale: float, sync: bool = True):
    """Launch flashcore_fwd; checks the launch and (with sync) the synchronisation."""
    cp = _cupy()
    fn = get_kernel(variant)
    try:
        fn(variant.grid(shape), (variant.threads,), kernel_args(shape, bufs, scale), shared_mem=variant.smem_bytes)
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


# ------------------------------------------------------------------ forward (the product API)
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
    launch(variant, shape, bufs, default_scale(D, scale), sync=False)
    outs = (o, bufs["LSE"]) if lse else (o,)
    if not is_cupy:
        import torch   # the only other kind we hand back: a __dlpack__ tensor from PyTorch
        outs = tuple(torch.from_dlpack(x) for x in outs)
    return outs if lse else outs[0]


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


def check_debug_size(mode: str, shape: Shape):
    m = get_mode(mode)
    nbytes = max((int(np.prod(b.shape_for(shape))) * b.np_dtype.itemsize for b in m.reads + m.writes), default=0)
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

    def repoison(self):
        for p, a in self.outs.items():
            self.outs[p] = poisoned(a.shape, a.dtype)

    def launch(self):
        self.repoison()
        launch(self.variant, self.shape, {**self.bufs, **self.outs}, self.scale)

    def timed_launcher(self):
        """A zero-overhead launch for timing: kernel and arguments resolved once, no checks
        (the caller checks the stream afterwards)."""
        fn = get_kernel(self.variant)
        args = kernel_args(self.shape, {**self.bufs, **self.outs}, self.scale)
        grid, block, smem = self.variant.grid(self.shape), (self.variant.threads,), self.variant.smem_bytes
        return lambda: fn(grid, block, args, shared_mem=smem)


def prepare(mode: str, shape: Shape, causal: bool = False, inputs: str = "randn", seed: int | None = None,
            bugs=(), scale: float | None = None, **variant_kw) -> Prepared:
    cp = _cupy()
    variant = runtime_variant(mode, shape.D, causal, bugs, **{**tiles_for(shape), **variant_kw})
    check_debug_size(mode, shape)
    seed = fresh_seed() if seed is None else int(seed)
    scale = default_scale(shape.D, scale)
    q, k, v = make_inputs(shape, inputs, seed)
    host = {"Q": q, "K": k, "V": v, **stages.injected_inputs(mode, q, k, v, causal, scale)}
    m = get_mode(mode)
    bufs = {b.param: cp.asarray(host[b.param]) for b in m.reads}
    outs = {b.param: poisoned(b.shape_for(shape), b.np_dtype) for b in m.writes}
    return Prepared(variant, shape, scale, seed, host, bufs, outs)


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
    refs = stages.stage_references(mode, q, k, v, causal, scale, variant.block_n, injected)
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
