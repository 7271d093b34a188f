"""harness/run/launch_counts.py: the raw fill and counts the launch side uses in place of
CuPy's generated kernels. On the CPU: the module compiles with NVRTC for every arch we ship.
On the GPU: each count equals NumPy's on arrays where the answer is known and not zero."""

from pathlib import Path

import numpy as np
import pytest

from harness.check import metrics as met
from harness.run import launch_counts


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_module_compiles_without_a_gpu(arch):
    from harness.toolchain.compiler import _nvrtc
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(launch_counts._SOURCE, "launch_counts.cu", [], [])
    try:
        nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", "-std=c++17"])
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    text = ptx.decode() if isinstance(ptx, bytes) else ptx
    for kind in ("fill", "count_ne", "count_written_outside"):
        for bits in ("u16", "u32"):
            assert f"{kind}_{bits}" in text


def _cp():
    from harness.toolchain.device import cupy
    return cupy()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_poison_fill_is_the_poison_bits(dtype):
    cp = _cp()
    a = launch_counts.poisoned((3, 2, 77, 5), dtype)
    assert a.dtype == dtype and a.shape == (3, 2, 77, 5)
    host = cp.asnumpy(a)
    assert (host.view(met.UINT_OF[np.dtype(dtype)]) == met.POISON_BITS[np.dtype(dtype)]).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("shape", [(2, 3, 130, 64), (2, 3, 130)])     # a matrix row and a per-row value
def test_counts_equal_numpy(dtype, shape):
    cp = _cp()
    rng = np.random.default_rng()
    a = rng.standard_normal(shape).astype(dtype)
    b = a.copy()
    flip = rng.random(shape) < 0.03
    b[flip] = b[flip] + np.asarray(1, dtype)                 # moved elements (never to the same bits)
    assert launch_counts.count_moved(cp.asarray(a), cp.asarray(b)) == np.count_nonzero(a.view(met.UINT_OF[np.dtype(dtype)]) != b.view(met.UINT_OF[np.dtype(dtype)]))
    out = met.poison(shape, dtype)
    written = rng.random(shape) < 0.2
    out[written] = a[written]
    row0, n = 37, 50
    rows = np.arange(shape[2]).reshape((1, 1, -1) + (1,) * (len(shape) - 3))
    outside = written & ((rows < row0) | (rows >= row0 + n))
    assert outside.sum() > 0
    assert launch_counts.count_written_outside(cp.asarray(out), row0, n) == int(outside.sum())
    copied = launch_counts.copy(cp.asarray(a))
    assert (cp.asnumpy(copied).view(met.UINT_OF[np.dtype(dtype)]) == a.view(met.UINT_OF[np.dtype(dtype)])).all()


_SPY = r"""
import json, re, sys
from cupy.cuda import compiler
names = []
inner = compiler._compile_using_nvrtc_no_warning
def spy(source, *args, **kw):
    names.extend(re.findall(r"__global__\s+(?:__launch_bounds__\([^)]*\)\s*)?void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)", source))
    return inner(source, *args, **kw)
compiler._compile_using_nvrtc_no_warning = spy
from harness.check.shapes import Shape
from harness.run import gpu
r = gpu.run_mode("pv_only", Shape(1, 2, 100, 100, 64), reference_device="cpu", seed=3)
print(json.dumps({"status": r.status, "message": r.message, "passed": all(m.passed for m in r.metrics),
                  "names": names}))
"""


@pytest.mark.gpu
def test_launch_side_compiles_no_cupy_generated_kernel(tmp_path):
    """The point of the module: a mode's launch side (poison, two launches, the counts, the
    host copy) makes CuPy compile no generated kernel, only the raw module and the variant
    (issue 26's cold start: CUB's count_nonzero passes were 19 s of a fresh diagnose). In a new
    process with empty caches, so that every compilation happens and is seen."""
    import json
    import os
    import re
    import subprocess
    import sys
    env = dict(os.environ, CUPY_CACHE_DIR=str(tmp_path / "cupy"), FLASHCORE_CUBIN_CACHE=str(tmp_path / "cubins"),
               FLASHCORE_NO_PREBUILD="1", FLASHCORE_WARMUP="0")
    p = subprocess.run([sys.executable, "-c", _SPY], env=env, capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parent.parent)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["status"] == "ok" and out["passed"], out
    # the raw module's kernels are macro-made (fill_##NAME): their source spells fill_, count_ne_, ...
    ours = re.compile(r"(fill|count_ne|count_written_outside)_(u16|u32)?$|flashcore_fwd$")
    assert [n for n in out["names"] if not ours.match(n)] == []
    assert "flashcore_fwd" in out["names"], out["names"]        # the spy saw CuPy's compiles
    # the raw module came from its own cubin (prebuild.source_cubin: no NVRTC through CuPy)
    assert list((tmp_path / "cubins").glob("launch_counts-*-sm_*.cubin")), list(tmp_path.rglob("*"))


def test_module_cubin_is_built_once_per_machine(tmp_path, monkeypatch):
    """prebuild.source_cubin: built into the cubin cache on first use, loaded as it is after
    (same path, not rewritten); another arch is another cubin. No GPU needed."""
    from harness.toolchain import compiler, prebuild
    monkeypatch.setenv(prebuild.ENV_DIR, str(tmp_path))
    built = []
    real = compiler.compile_source
    monkeypatch.setattr(compiler, "compile_source", lambda *a, **kw: built.append(a[2]) or real(*a, **kw))
    p1 = prebuild.source_cubin(launch_counts._SOURCE, "launch_counts", "sm_90", ("-std=c++17",))
    mtime = p1.stat().st_mtime_ns
    p2 = prebuild.source_cubin(launch_counts._SOURCE, "launch_counts", "sm_90", ("-std=c++17",))
    p3 = prebuild.source_cubin(launch_counts._SOURCE, "launch_counts", "sm_80", ("-std=c++17",))
    assert p1 == p2 and p2.stat().st_mtime_ns == mtime and p3 != p1 and built == ["sm_90", "sm_80"]
    assert p1.read_bytes()[:4] == b"\x7fELF"
