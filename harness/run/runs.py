"""Sweeps of (mode, shape) cases: each case optionally isolated in the harness's worker process
(pool.py), so that a kernel fault (which poisons the CUDA context) in one variant does not take
down the others; and the run record of docs/DESIGN.md for each result."""

from __future__ import annotations

from dataclasses import asdict

from harness.toolchain import compiler

from harness import records
from harness.run import pool
from harness.run.gpu import RunResult, run_mode
from harness.check.shapes import Shape
from harness.toolchain.variant import Variant

WORKER_TIMEOUT_S = pool.CASE_TIMEOUT_S


def make_case(mode: str, shape: Shape, **fields) -> dict:
    """A case for run_case: run_mode's keyword arguments, with the shape as a dict (it crosses
    to the worker process)."""
    return dict(mode=mode, shape=asdict(shape), **fields)


def run_case(case: dict, isolate: bool = True, timeout: float = WORKER_TIMEOUT_S) -> RunResult:
    """case: keyword arguments of gpu.run_mode with shape as a dict. Isolated, it runs in the
    worker process; a fault, crash, exception or hang there (past timeout seconds) is this
    case's result with status fault, and the next case gets a fresh worker."""
    if not isolate:
        return run_mode(shape=Shape(**case["shape"]), **{k: v for k, v in case.items() if k != "shape"})
    return run_cases([case], isolate=True, timeout=timeout, jobs=1)[0]


def run_cases(cases: list, isolate: bool = True, timeout: float = WORKER_TIMEOUT_S, jobs: int | None = None,
              before=None) -> list:
    """run_case for several cases, results in their order. Isolated, up to jobs of them run at
    once, each in its own worker (default: pool.default_jobs); a case that fails its worker
    is reported and the others go on. before(i), where given, is called just before case i
    goes (run_modes: wait for that mode's variant to be built)."""
    if not isolate:
        out = []
        for i, c in enumerate(cases):
            if before is not None:
                before(i)
            out.append(run_case(c, isolate=False))
        return out
    jobs = pool.default_jobs() if jobs is None else jobs
    return run_isolated(cases, lambda c, message: _failed(c, "fault", message), timeout, jobs, before)


def run_isolated(cases: list, lost, timeout: float = WORKER_TIMEOUT_S, jobs: int = 1, before=None) -> list:
    """Cases in the harness's worker processes, results in their order; a case whose worker
    was lost (a crash, a hang past timeout) gets lost(case, message) as its result. Every kind
    of case goes through here: FlashCore's modes, spec'd kernels, probes, Python callables."""
    return [lost(c, str(r)) if isinstance(r, pool.WorkerLost) else r
            for c, r in zip(cases, pool.run_many(cases, timeout, jobs, before))]


def _failed(case, status, message) -> RunResult:
    shape = Shape(**case["shape"])
    from harness.toolchain.variant import tiles_for
    # the variant the case would have run: the tile table's choice for its shape, as run_mode makes it
    v = Variant(case.get("mode", "full"), shape.D, case.get("causal", False), tuple(case.get("bugs", ())),
                **tiles_for(shape))
    return RunResult(v, shape, case.get("scale") or 0.0, case.get("inputs", "randn"), case.get("seed") or 0,
                     status=status, message=message)


THIS_KERNEL = object()   # run_record's default: the hash of this checkout's kernel source


def run_record(r: RunResult, device: dict, latency: dict | None = None, kernel_sha256=THIS_KERNEL, **extra) -> dict:
    """The record of docs/DESIGN.md for one (variant, shape, inputs). A kernel other than
    flashcore_fused names itself in extra (kernel=..., kernel_spec=...) and gives its own source
    hash (None for a Python callable, which has no source the harness reads). A registry kernel
    other than the default (the sm_90a one) is named by its variant."""
    kernel = getattr(r.variant, "kernel", None)
    if isinstance(kernel, str) and kernel != "flashcore_fused" and "kernel" not in extra:
        extra["kernel"] = kernel
        if kernel_sha256 is THIS_KERNEL:
            kernel_sha256 = compiler.source_hash(compiler.kernel_file(None, kernel))
    return records.new_record(
        "run", **extra,
        mode=r.variant.mode, shape=asdict(r.shape), shape_label=r.shape.label, causal=r.variant.causal,
        bugs=list(r.variant.bugs), flags=r.variant.defines, arch=r.variant.arch,
        kernel_sha256=compiler.source_hash() if kernel_sha256 is THIS_KERNEL else kernel_sha256,
        device=device.get("device"), driver=device.get("driver"),
        cupy=device.get("cupy"), seed=r.seed, inputs=r.inputs, scale=r.scale,
        status=r.status, message=r.message, passed=r.passed,
        metrics=[m.to_dict() for m in r.metrics],
        max_err=max((m.max_abs for m in r.metrics), default=None),
        err_floor=max((m.err_over_floor for m in r.metrics), default=None),
        resources=r.resources, latency=latency,
    )
