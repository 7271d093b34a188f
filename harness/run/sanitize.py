"""`flashcore sanitize`: one variant under compute-sanitizer, in a subprocess, with CuPy's
memory pool off (the pool hides out-of-bounds writes inside its own slabs) and -lineinfo on
(it always is: compiler.runtime_options), each hazard summarised with kernel file:line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import NoGPUError, UsageError

TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
HAZARD_START = re.compile(r"^========= (?!\s)(?!ERROR SUMMARY|RACECHECK SUMMARY|COMPUTE-SANITIZER|Program hit)(.+)$")
CU_LINE = re.compile(r"([\w./-]+\.cuh?):(\d+)")
TIMEOUT_S = 540


def compiler_kernel_name(spec_path=None) -> str:
    """The name hazards are attributed to: the spec'd kernel's source, else the registry's file."""
    if spec_path is not None:
        from kernels.spec import load
        return str(load(spec_path).source)
    from harness.toolchain.compiler import kernel_file
    return f"kernels/{kernel_file().name}"


def find_sanitizer() -> str:
    cands = [shutil.which("compute-sanitizer")]
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            cands.append(os.path.join(os.environ[var], "bin", "compute-sanitizer"))
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(str(Path(nvcc).resolve().parent / "compute-sanitizer"))
    cands += ["/usr/local/cuda/bin/compute-sanitizer", "/usr/local/cuda/compute-sanitizer/compute-sanitizer"]
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise NoGPUError("compute-sanitizer not found (install the CUDA toolkit or put it on PATH)")


@dataclass
class SanitizeResult:
    tool: str
    hazards: Counter = field(default_factory=Counter)   # "kind @ file:line[, file:line]" -> count
    error_summary: int = 0
    returncode: int = 0
    raw: str = ""

    @property
    def clean(self) -> bool:
        return not self.hazards and self.error_summary == 0


def parse(output: str) -> tuple:
    """(Counter of hazard summaries, ERROR SUMMARY count) from compute-sanitizer output."""
    hazards: Counter = Counter()
    current = None
    locs: list = []

    def flush():
        if current is not None:
            where = ", ".join(dict.fromkeys(f"{Path(f).name}:{n}" for f, n in locs)) or "no source line"
            hazards[f"{current} @ {where}"] += 1

    for line in output.splitlines():
        m = HAZARD_START.match(line)
        if m:
            flush()
            kind = re.sub(r"\s+at\s+\S+\+0x[0-9a-f]+.*", "", m.group(1)).strip()
            kind = re.sub(r"0x[0-9a-f]+", "0x..", kind)
            current, locs = kind[:90], CU_LINE.findall(line)
        elif current is not None and line.startswith("========= "):
            locs += [l for l in CU_LINE.findall(line) if "flashcore" in l[0] or l[0].endswith(".cu")][:2]
        elif current is not None and not line.startswith("========="):
            flush()
            current, locs = None, []
    flush()
    m = re.search(r"ERROR SUMMARY: (\d+) error", output)
    return hazards, int(m.group(1)) if m else 0


def sanitize(tool: str, mode: str = "full", bugs=(), shape=None, causal=False, seed=0, spec_path=None) -> SanitizeResult:
    """One launch under compute-sanitizer: of flashcore_fused's mode, or (spec_path) of a spec'd
    kernel as written, mode "full" or one of its own flags."""
    from harness.check.shapes import Shape
    if tool not in TOOLS:
        raise UsageError(f"unknown tool {tool!r}; valid: {', '.join(TOOLS)}")
    shape = shape or Shape(1, 2, 128, 256, 64)
    if spec_path is None:
        from harness.toolchain.variant import Variant
        Variant(mode, shape.D, causal, tuple(bugs))   # validate before anything runs
    else:
        from harness.toolchain.user_kernel import UserVariant
        from kernels.spec import load
        spec = load(spec_path)
        spec.check_domain(shape.B, shape.H, shape.Sq, shape.Sk, shape.D, causal)
        UserVariant(spec, mode, shape.D, causal, tuple(bugs))
    exe = find_sanitizer()
    case = dict(mode=mode, shape=dict(B=shape.B, H=shape.H, Sq=shape.Sq, Sk=shape.Sk, D=shape.D),
                causal=causal, bugs=list(bugs), seed=seed, spec=str(spec_path) if spec_path else None)
    cmd = [exe, "--tool", tool, "--print-limit", "100"]
    if tool == "racecheck":
        cmd += ["--racecheck-report", "hazard"]
    cmd += [sys.executable, "-m", "harness.run.sanitize_target", json.dumps(case)]
    env = dict(os.environ, FLASHCORE_NO_POOL="1", FLASHCORE_HANG_S="600", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise UsageError(f"compute-sanitizer --tool {tool} timed out after {TIMEOUT_S} s") from None
    out = p.stdout + p.stderr
    # CuPy compiles the source under its own cache name (<hash>.cubin.cu): name the kernel file.
    out = re.sub(r"[\w./-]*\.cubin\.cu", compiler_kernel_name(spec_path), out)
    hazards, n_err = parse(out)
    if "FLASHCORE_TARGET_OK" not in out and not hazards and n_err == 0:
        last = [l for l in out.splitlines() if l.strip()][-1:] or ["(no output)"]
        raise UsageError(f"the sanitized run failed before the kernel ran: {last[0][:200]}")
    return SanitizeResult(tool, hazards, n_err, p.returncode, out)
