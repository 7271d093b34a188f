"""The sm_90a kernel (kernels/flashcore_hopper.cu) on a CPU box: every mode x D {64, 128} x causal
compiles for sm_90a with NVRTC (the compiler the run time uses) with 0 spill bytes, 0 stack and
no ptxas warning (C7513: wgmma serialised by a register write; C7519: warpgroup.arrive injected;
both cost speed, so they fail here); the SASS uses wgmma and TMA; the signature is the sm_80
kernel's 17 parameters plus three tensor maps; the TMA host module fails cleanly without a driver.

The harness's Variant has no sm_90a arch (and carries the sm_80 kernel's tile macros), so this
compiles with cupy.cuda.nvrtc directly, with harness.toolchain.compiler's include-dir finder and
whole-cubin reader, as compiler.compile_cubin does.
"""

import ctypes
import itertools
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from harness.toolchain import compiler

ROOT = Path(__file__).resolve().parent.parent
KERNEL = ROOT / "kernels" / "flashcore_hopper.cu"
FUSED = ROOT / "kernels" / "flashcore_fused.cu"

MODES = {"qk_only": ("DEBUG_QK_ONLY", True), "softmax_only": ("DEBUG_SOFTMAX_ONLY", True),
         "pv_only": ("DEBUG_PV_ONLY", True), "uniform_p": ("UNIFORM_P", False),
         "full": (None, True), "fp32_p": ("FP32_P", True)}
VARIANTS = [(m, d, c) for m, d, c in itertools.product(MODES, (64, 128), (False, True)) if MODES[m][1] or not c]
# Tile configs beyond the defaults (BLOCK_N, KV_STAGES, CONSUMER_WGS) that must stay clean too.
TILE_VARIANTS = [(d, bn, st, wgs) for d in (64, 128) for bn, st, wgs in ((64, 3, 2), (64, 2, 1), (32, 4, 2))]


def _compile(defines: list, want_cubin: bool = False):
    from cupy.cuda import nvrtc
    opts = ["-std=c++17", "--gpu-architecture=sm_90a", "--ptxas-options=-v", "-ftz=true", "-lineinfo",
            f"-I{compiler.find_cuda_include()}", f"-I{KERNEL.parent}"] + [f"-D{d}" for d in defines]
    prog = nvrtc.createProgram(KERNEL.read_text(), KERNEL.name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, opts)
        except Exception:
            pytest.fail(f"{defines}: compilation failed\n{nvrtc.getProgramLog(prog)}")
        log = nvrtc.getProgramLog(prog)
        cubin = compiler._whole_cubin(nvrtc, prog) if want_cubin else b""
    finally:
        nvrtc.destroyProgram(prog)
    return log, compiler.parse_ptxas(log), cubin


def _defines(mode, d, causal, extra=()):
    flag = MODES[mode][0]
    return [f"HEAD_DIM={d}", f"IS_CAUSAL={int(causal)}", *extra] + ([flag] if flag else [])


def _assert_clean(log, res, what):
    assert res["registers"] > 0, (what, log)
    assert res["spill_stores"] == 0 and res["spill_loads"] == 0, (what, res)
    assert res["stack_bytes"] == 0, (what, res)
    assert "C7513" not in log and "C7519" not in log, (what, log)
    warnings = [l for l in log.splitlines() if re.search(r"warning", l, re.I)]
    assert not warnings, (what, warnings)


@pytest.mark.parametrize("mode,d,causal", VARIANTS)
def test_every_mode_compiles_for_sm90a_clean(mode, d, causal):
    log, res, _ = _compile(_defines(mode, d, causal))
    _assert_clean(log, res, (mode, d, causal))
    assert res["registers"] <= 255


@pytest.mark.parametrize("d,bn,st,wgs", TILE_VARIANTS)
def test_other_tiles_compile_clean(d, bn, st, wgs):
    for mode, causal in (("full", True), ("qk_only", False), ("fp32_p", False)):
        log, res, _ = _compile(_defines(mode, d, causal, (f"BLOCK_N={bn}", f"KV_STAGES={st}", f"CONSUMER_WGS={wgs}")))
        _assert_clean(log, res, (mode, d, causal, bn, st, wgs))


def test_plain_sm90_is_refused():
    """wgmma exists on sm_90a only: a plain sm_90 build must fail (so nobody ships one by mistake)."""
    from cupy.cuda import nvrtc
    prog = nvrtc.createProgram(KERNEL.read_text(), KERNEL.name, [], [])
    try:
        with pytest.raises(Exception):
            nvrtc.compileProgram(prog, ["-std=c++17", "--gpu-architecture=sm_90", f"-I{compiler.find_cuda_include()}",
                                        f"-I{KERNEL.parent}", "-DHEAD_DIM=64"])
    finally:
        nvrtc.destroyProgram(prog)


@pytest.mark.parametrize("mode", ["full", "pv_only", "softmax_only"])
def test_sass_uses_wgmma_and_tma(mode):
    from harness.toolchain import sass
    dis = sass.disassembler()
    if not dis:
        pytest.skip("no nvdisasm/cuobjdump")
    _, _, cubin = _compile(_defines(mode, 128, False), want_cubin=True)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "k.cubin"
        p.write_bytes(cubin)
        args = [dis, "-c", str(p)] if Path(dis).name.startswith("nvdisasm") else [dis, "-sass", str(p)]
        text = subprocess.run(args, capture_output=True, text=True, timeout=300).stdout
    if not text.strip():
        pytest.skip(f"{Path(dis).name} could not read the cubin")
    if mode == "softmax_only":       # no matrix product, no shared memory
        assert "HGMMA" not in text and "UTMALDG" not in text
        return
    assert "HGMMA.64x128x16.F32" in text and "UTMALDG.3D" in text and "SYNCS" in text
    assert not re.search(r"\b(LDL|STL)\b", text)
    if mode == "pv_only":            # P.V only: one wgmma kind, A from registers, V transposed
        assert ".tnspB" in text


def test_signature_is_the_sm80_contract_plus_three_tensor_maps():
    from harness.toolchain import signature
    fused = [s for s in signature.kernels_in(FUSED.read_text(), {"HEAD_DIM": "64"}) if s.name == "flashcore_fwd"][0]
    hopper = [s for s in signature.kernels_in(KERNEL.read_text(), {"HEAD_DIM": "64"}) if s.name == "flashcore_fwd"][0]
    assert hopper.extern_c
    assert [(p.type, p.name) for p in hopper.params[:17]] == [(p.type, p.name) for p in fused.params]
    assert [(p.type, p.name) for p in hopper.params[17:]] == [
        ("const __grid_constant__ TmaDesc", n) for n in ("tmQ", "tmK", "tmV")]


def test_smem_formula_matches_the_kernel_comment():
    import importlib.util
    spec = importlib.util.spec_from_file_location("hopper_selfcheck", ROOT / "scripts" / "hopper_selfcheck.py")
    sc = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("hopper_selfcheck", sc)      # dataclasses look their module up
    spec.loader.exec_module(sc)
    text = KERNEL.read_text()
    assert "#define SMEM_BYTES (1024 + 2 * Q_TILE_HALVES + KV_STAGES * 2 * 2 * KV_TILE_HALVES)" in text
    for d, bn, st, expect in ((64, 128, 2, 82944), (128, 128, 2, 164864), (64, 128, 3, 115712), (128, 64, 3, 132096)):
        assert sc.smem_bytes(d, bn, st, 2) == expect
        assert f"{expect:,}" in text       # the worked examples in the header comment
    assert sc.smem_bytes(128, 128, 2, 2) <= 227 * 1024


def test_tma_module_without_a_driver():
    from harness.toolchain import tma
    z = tma.null_desc()
    assert z.dtype.itemsize == 128 and z.shape == (1,) and not z.view(np.uint8).any()
    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("a driver is present: the no-driver error cannot be seen here")
    except OSError:
        pass
    tma._driver.cache_clear()
    with pytest.raises(RuntimeError, match="libcuda.so.1") as e:
        tma.encode_bhsd(0x10000, 2, 128, 64, 128)
    assert len(str(e.value).splitlines()) == 1
