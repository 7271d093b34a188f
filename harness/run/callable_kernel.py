"""A kernel built another way (Triton, a torch extension, a library call) checked through a
Python callable, the gpu-mode / KernelBench convention:

    attention(q, k, v, *, causal: bool, scale: float) -> o  or  (o, lse)

with torch CUDA tensors [B, H, S, D] (CuPy arrays where torch is absent). `--kernel
module:function` or `--kernel path/to/file.py:function` names it. It gets the full-mode check
(O, and LSE in natural log when it returns one) over the coverage set, the folds, records and
the worker isolation; what needs the source (flags, compile, SASS, sanitizer lines) says in one
line that it needs a .cu and a spec.

The floor is flash-attention's rule at the kernel's I/O dtype: a reference with fp32 scores, P
rounded to the I/O dtype, fp32 accumulation and the output rounded to it (spec_reference).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.check import localise
from harness.check import metrics as met
from harness.check import spec_reference as sref
from harness.check.inputs import fresh_seed, make_inputs
from harness.check.shapes import Shape
from harness.errors import UsageError
from harness.run.gpu import RunResult

TILE = 64      # no tiles are known: the folds and the coverage edges use 64 x 64


def is_callable_ref(kernel: str | None) -> bool:
    return bool(kernel) and ":" in kernel and not kernel.endswith((".toml", ".cu"))


def load(ref: str):
    """The callable a --kernel module:function (or file.py:function) names; one line if not."""
    mod_name, _, fn_name = ref.rpartition(":")
    if not mod_name or not fn_name:
        raise UsageError(f"--kernel {ref!r}: expected module:function or path/to/file.py:function")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise UsageError(f"--kernel {ref!r}: no file {path}")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(mod_name)
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"--kernel {ref!r}: importing {mod_name} failed ({type(e).__name__}: {str(e)[:120]})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise UsageError(f"--kernel {ref!r}: {mod_name} has no callable {fn_name!r}")
    return fn


@dataclass(frozen=True)
class CallableKernel:
    """What the coverage set, the probes and the reports read of a callable kernel: no tiles
    are known (64 x 64 stand in), fp16 I/O, LSE in natural log, no flags, no seeded bugs."""
    ref: str
    head_dims: tuple = (64, 128)
    causal: bool = True
    self_attention_only: bool = False
    block_m: int = TILE
    block_n: int = TILE
    dtype: str = "float16"
    lse_base: str = "natural"
    m_form: str = "max"

    @property
    def name(self) -> str:
        return self.ref

    @property
    def spec_path(self) -> str:
        return self.ref

    @property
    def precision(self) -> dict:
        return {}

    @property
    def bugs(self) -> dict:
        return {}

    def role_arg(self, role: str) -> str:
        return role

    def buffer_dtype(self, arg) -> str:
        return self.dtype

    def tiles_for(self, B, H, Sq, D) -> dict:
        return dict(block_m=TILE, block_n=TILE, kv_stages=1, m_frags=TILE // 16, nwarps=1)

    def check_domain(self, B, H, Sq, Sk, D, causal) -> None:
        if D not in self.head_dims:
            raise UsageError(f"{self.ref} is checked at head dim {', '.join(map(str, self.head_dims))}, not {D}")


def execute(ref: str, shape: Shape, scale: float, host: dict, causal: bool = False, deterministic: bool = True):
    """The callable on given inputs (host q, k, v in [B, H, S, D]), as harness/run/asis.execute
    launches a spec'd kernel: twice when deterministic (a moving output is a race). Nothing is
    outside: the callable allocates its own outputs. Its exception is a KernelFault."""
    from harness.run.asis import Executed
    from harness.run.gpu import KernelFault
    fn = load(ref)
    outs = []
    for _ in range(2 if deterministic else 1):
        try:
            t0 = time.monotonic()
            out = fn(_to_device(host["q"]), _to_device(host["k"]), _to_device(host["v"]), causal=causal, scale=scale)
            o, lse = (out if isinstance(out, tuple) else (out, None))
            got = {"o": _to_host(o)}
            if lse is not None:
                got["lse"] = _to_host(lse)
            outs.append(got)
            took = time.monotonic() - t0
        except Exception as e:
            raise KernelFault(f"FAULT: {ref} raised {type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
    got = outs[0]
    if got["o"].shape != (shape.B, shape.H, shape.Sq, shape.D):
        raise KernelFault(f"FAULT: {ref} returned O of shape {tuple(got['o'].shape)}, not {(shape.B, shape.H, shape.Sq, shape.D)}")
    moved = {r: 0 for r in got}
    if deterministic:
        moved = {r: int(np.count_nonzero(np.ascontiguousarray(got[r].astype(np.float32)).view(np.uint32)
                                         != np.ascontiguousarray(outs[1][r].astype(np.float32)).view(np.uint32)))
                 for r in got}
    return Executed({r: np.ascontiguousarray(a.astype(np.float32)) for r, a in got.items()}, {}, moved, [],
                    {"call_s": took})


@dataclass(frozen=True)
class CallableVariant:
    ref: str
    mode: str = "full"
    head_dim: int = 64
    causal: bool = False
    bugs: tuple = ()
    arch: str = "-"
    block_m: int = TILE
    block_n: int = TILE
    warp_rows: int = TILE

    @property
    def defines(self) -> list:
        return []

    @property
    def label(self) -> str:
        return f"{self.ref} D={self.head_dim}{' causal' if self.causal else ''}"


def _to_device(a):
    try:
        import torch
        return torch.from_numpy(np.ascontiguousarray(a)).cuda()
    except ImportError:
        from harness.toolchain.device import cupy
        return cupy().asarray(a)


def _to_host(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy() if x.dtype.is_floating_point else x.cpu().numpy()
    from harness.toolchain.device import cupy
    return cupy().asnumpy(x).astype(np.float32)


def run_callable(ref: str, shape: Shape, causal: bool = False, inputs: str = "randn", seed: int | None = None,
                 scale: float | None = None, keep_outputs: bool = False, folds: bool | None = None,
                 dtype: str = "float16") -> RunResult:
    """The callable on one shape against float64, twice (an output that moves is a race); an
    exception inside it is this case's fault, with its one-line message."""
    from harness.toolchain.device import require_gpu
    require_gpu()
    fn = load(ref)
    seed = fresh_seed() if seed is None else int(seed)
    scale = 1.0 / math.sqrt(shape.D) if scale is None else float(scale)
    folds = keep_outputs if folds is None else folds
    q, k, v = make_inputs(shape, inputs, seed, dtype)
    result = RunResult(CallableVariant(ref, "full", shape.D, causal), shape, scale, inputs, seed)
    outs = []
    for _ in range(2):
        try:
            t0 = time.monotonic()
            out = fn(_to_device(q), _to_device(k), _to_device(v), causal=causal, scale=scale)
            o, lse = (out if isinstance(out, tuple) else (out, None))
            outs.append((_to_host(o), None if lse is None else _to_host(lse)))
            result.resources = {"call_s": time.monotonic() - t0}
        except Exception as e:       # the callable's own failure (a CUDA fault inside it, a bad shape)
            result.status, result.message = "fault", f"{ref} raised {type(e).__name__}: {str(e).splitlines()[0][:160]}"
            return result
    (o, lse), (o2, lse2) = outs
    if o.shape != (shape.B, shape.H, shape.Sq, shape.D):
        result.status, result.message = "fault", f"{ref} returned O of shape {tuple(o.shape)}, not {(shape.B, shape.H, shape.Sq, shape.D)}"
        return result
    q64, k64, v64 = (a.astype(np.float32).astype(np.float64) for a in (q, k, v))
    ex = sref.exact(q64, k64, v64, scale, causal)
    kp = sref.kernel_precision(q64, k64, v64, scale, causal, TILE, dtype, dtype)
    judged = [("O", o, o2, ex["o"], kp["o"])] + ([("LSE", lse, lse2, ex["lse"], kp["lse"])] if lse is not None else [])
    for name, got, again, e, p in judged:
        got = np.ascontiguousarray(got.astype(np.float32))
        sm, err = met.compare("full", name, "all", got, e, p)
        moved = int(np.count_nonzero(got.view(np.uint32) != np.ascontiguousarray(again.astype(np.float32)).view(np.uint32)))
        sm.extra.update(nondeterministic=moved, reference_device="cpu")
        sm.passed = sm.passed and moved == 0
        result.metrics.append(sm)
        if folds and not sm.passed and got.ndim == 4:
            result.folds.append(localise.fold(err, sm.tol, f"full/{name}", TILE, TILE, got, e, TILE,
                                              n_keys=shape.Sk, n_rows=shape.Sq))
    return result


def sdpa(q, k, v, *, causal: bool, scale: float):
    """PyTorch's SDPA as a callable kernel: the reference user of this path (and its test)."""
    import torch.nn.functional as F
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


def sdpa_wrong_scale(q, k, v, *, causal: bool, scale: float):
    """A must-fail callable: twice the scale it was asked for."""
    import torch.nn.functional as F
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=2 * scale)


# ------------------------------------------------------------------ in workers, over shapes
def make_case(ref: str, shape: Shape, causal=False, **kw) -> dict:
    from dataclasses import asdict
    return dict(callable=ref, shape=asdict(shape), causal=causal, **kw)


def run_one(case: dict) -> RunResult:
    """The worker's side (harness/run/worker.py)."""
    kw = {k: v for k, v in case.items() if k not in ("callable", "shape")}
    return run_callable(case["callable"], Shape(**case["shape"]), **kw)


def _lost(case: dict, message: str) -> RunResult:
    shape = Shape(**case["shape"])
    return RunResult(CallableVariant(case["callable"], "full", shape.D, case.get("causal", False)), shape, 0.0,
                     case.get("inputs", "randn"), case.get("seed") or 0, status="fault", message=message)


def run_cases(cases: list, isolate: bool = True) -> list:
    from harness.run import runs
    if not isolate:
        return [run_one(c) for c in cases]
    return runs.run_isolated(cases, _lost, 120.0)


def record_of(r: RunResult, ref: str, device: dict) -> dict:
    from harness.run import runs
    return runs.run_record(r, device, kernel_sha256=None, kernel=ref)


def check(ref: str, command: str, shape: Shape | None = None, causal=False, head_dim=None, inputs="randn", seed=None,
          scale=None, record=True, isolate=True, show=True):
    """run/diagnose --kernel module:function: one shape (the error table and, for diagnose, the
    folds), or the coverage set with the separating feature and the smallest failing shape."""
    from harness import records
    from harness.check import coverage as cov
    from harness.run import coverage as rc
    from harness.run import pool, session
    from harness.show.report import console, error_table
    load(ref)                                    # one line now, before any GPU work
    kern = CallableKernel(ref)
    if isolate:
        pool.prestart(1)
    device = session.device_facts(isolate)
    seed = fresh_seed() if seed is None else seed

    def results_of(s, c, keep):
        rs = run_cases([make_case(ref, s, c, inputs=inputs, seed=seed, scale=scale, keep_outputs=keep)], isolate)
        if record:
            for r in rs:
                records.append(record_of(r, ref, device))
        return rs[0]

    if shape is not None:
        r = results_of(shape, causal, command == "diagnose")
        if show:
            console.print(error_table([r], f"{ref} {shape.label}{' causal' if causal else ''} inputs={inputs} seed={seed}"))
            if r.status != "ok":
                console.print(f"[bold red]{r.status.upper()}[/] {r.message}")
            if command == "diagnose":
                from harness.show import heatmap
                for f in r.folds:
                    console.print(heatmap.render_folds(f))
        return r.passed
    cases = cov.coverage_set(kern, None if head_dim is None else (head_dim,), True if causal else None)

    def per_case(c):
        r = results_of(c.shape, c.causal, False)
        feats = cov.features_of(c, kern)
        return rc.Outcome(c, feats, not r.passed, "all" if not r.passed else None, "full" if not r.passed else None,
                          rc.result_detail(r) if not r.passed else "")

    outcomes = rc.run_sweep(cases, per_case, show, command, kern)
    rep = rc.conclude("run", outcomes, lambda c, m: not results_of(c.shape, c.causal, False).passed, (), inputs, seed,
                      kern, kernel=ref)
    if show:
        rc.print_report(rep, (), inputs, device, ["full"], kern)
    return rep.clean
