"""scripts/softmax_rate.py's kernel: every build compiles for sm_90 from the kernels' own
softmax.cuh, and each adds the instructions it says: the update's 66 MUFU.EX2 per tile (64 scores
and two alphas), then O's 64 rescale FMULs, then P's 32 F2FP packs."""

import pytest

from tests.scripts import load_script

m = load_script("softmax_rate")


def _sass(*build):
    from harness.toolchain import compiler
    from tests.test_hopper_compile import _disassemble
    return _disassemble(compiler.compile_source(m.SOURCE, "softmax_rate.cu", "sm_90", m.options(*build)))


def test_each_build_adds_the_work_it_names():
    base, upd, res, pack, ilp2, ilp4 = (_sass(*b[1:]) for b in m.BUILDS)
    assert "MUFU.EX2" not in base and base.count("FFMA") >= 64
    assert upd.count("MUFU.EX2") == 66 and "F2FP" not in upd
    assert res.count("FMUL") - upd.count("FMUL") >= 64
    assert pack.count("F2FP") == 32
    assert ilp2.count("MUFU.EX2") == ilp4.count("MUFU.EX2") == 66 and ilp4 != upd


@pytest.mark.gpu
def test_softmax_rate_runs():
    """It runs and reads a clock (the figure itself is a measurement, not asserted)."""
    import cupy as cp
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    fn = cp.RawModule(code=m.SOURCE, options=m.options(1, 0, 0) + ("-ftz=true",)).get_function("softmax_rate")
    t = m.measure(cp, fn, sms, 1)
    assert t > 0, t


@pytest.mark.parametrize("companion,group,in_flight", m.COMPANIONS)
def test_beside_builds_compile_clean_and_the_gemm_companion_issues_hgmma(companion, group, in_flight):
    from harness.toolchain import compiler
    from tests.test_hopper_compile import _disassemble
    text = _disassemble(compiler.compile_source(m.BESIDE, "beside.cu", "sm_90a", m.beside_options(companion, group, in_flight)))
    assert text.count("MUFU.EX2") >= 66                 # (ptxas may peel the first step)
    assert ("HGMMA" in text) == (companion == 2)
    if companion == 2:
        assert text.count("HGMMA") == group + 1 and f"WARPGROUP.DEPBAR.LE gsb0, 0x{in_flight}" in text
