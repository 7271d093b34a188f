"""harness/run/launch_counts.py: the raw fill and counts the launch side uses in place of
CuPy's generated kernels. On the CPU: the module compiles with NVRTC for every arch we ship.
On the GPU: each count equals NumPy's on arrays where the answer is known and not zero."""

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


@pytest.mark.gpu
def test_launch_side_compiles_no_cupy_generated_kernel(tmp_path, monkeypatch):
    """The point of the module: a mode's launch side (poison, two launches, the counts, the
    host copy) makes CuPy compile no generated kernel, only the raw module and the variant
    (issue 26's cold start: CUB's count_nonzero passes were 19 s of a fresh diagnose)."""
    import re
    from cupy.cuda import compiler
    from harness.check.shapes import Shape
    from harness.run import gpu
    names = []
    inner = compiler._compile_using_nvrtc_no_warning

    def spy(source, *args, **kw):
        names.extend(re.findall(r"__global__\s+(?:__launch_bounds__\([^)]*\)\s*)?void\s+(\w+)", source))
        return inner(source, *args, **kw)
    monkeypatch.setattr(compiler, "_compile_using_nvrtc_no_warning", spy)
    monkeypatch.setattr(launch_counts, "_module", None)
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path / "cupy"))
    r = gpu.run_mode("pv_only", Shape(1, 2, 100, 100, 64), reference_device="cpu", seed=3)
    assert r.status == "ok", r.message
    assert all(m.passed for m in r.metrics), [(m.output, m.max_abs, m.tol) for m in r.metrics]
    ours = re.compile(r"(fill|count_ne|count_written_outside)_u(16|32)$|flashcore_fwd$")
    assert [n for n in names if not ours.match(n)] == []
    assert "count_ne_u16" in names      # the spy saw the raw module compile (the cache was empty)
