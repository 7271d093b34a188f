"""Sweeps of (mode, shape) cases: each case optionally in its own process, so that a kernel
fault (which poisons the CUDA context) in one variant does not take down the others; and
the run record of DESIGN.md for each result."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from dataclasses import asdict

from harness.build import compiler

from harness import records
from harness.run.gpu import RunResult, run_mode
from harness.check.shapes import Shape
from harness.build.variant import Variant

WORKER_TIMEOUT_S = 300


def run_case(case: dict, isolate: bool = True) -> RunResult:
    """case: keyword arguments of gpu.run_mode with shape as a dict."""
    if not isolate:
        return run_mode(shape=Shape(**case["shape"]), **{k: v for k, v in case.items() if k != "shape"})
    with tempfile.TemporaryDirectory(prefix="flashcore-") as tmp:
        out = os.path.join(tmp, "result.pkl")
        try:
            proc = subprocess.run([sys.executable, "-m", "harness.run.worker", json.dumps(case), out],
                                  capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return _failed(case, "fault", f"timed out after {WORKER_TIMEOUT_S} s (hang?)")
        if proc.returncode == 0 and os.path.exists(out):
            with open(out, "rb") as f:
                return pickle.load(f)
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return _failed(case, "fault", f"worker exited {proc.returncode}: {tail}")


def _failed(case, status, message) -> RunResult:
    shape = Shape(**case["shape"])
    v = Variant(case.get("mode", "full"), shape.D, case.get("causal", False), tuple(case.get("bugs", ())))
    return RunResult(v, shape, case.get("scale") or 0.0, case.get("inputs", "randn"), case.get("seed") or 0,
                     status=status, message=message)


def run_record(r: RunResult, device: dict, latency: dict | None = None) -> dict:
    """The record of DESIGN.md for one (variant, shape, inputs)."""
    return records.new_record(
        "run",
        mode=r.variant.mode, shape=asdict(r.shape), shape_label=r.shape.label, causal=r.variant.causal,
        bugs=list(r.variant.bugs), flags=r.variant.defines, arch=r.variant.arch,
        kernel_sha256=compiler.source_hash(), device=device.get("device"), driver=device.get("driver"),
        cupy=device.get("cupy"), seed=r.seed, inputs=r.inputs, scale=r.scale,
        status=r.status, message=r.message, passed=r.passed,
        metrics=[m.to_dict() for m in r.metrics],
        max_err=max((m.max_abs for m in r.metrics), default=None),
        err_floor=max((m.err_over_floor for m in r.metrics), default=None),
        resources=r.resources, latency=latency,
    )
