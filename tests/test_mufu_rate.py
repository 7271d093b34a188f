"""scripts/mufu_rate.py's kernel: both builds compile for sm_90, every step of the alone build is
one MUFU.EX2 with its negation folded in (no other FP32 op in the loop), and the mixed build
pairs each with one FFMA, as the softmax does."""

import pytest

from tests.scripts import load_script

m = load_script("mufu_rate")


@pytest.mark.parametrize("mix", [0, 1])
def test_mufu_rate_kernel_is_the_instruction_mix_it_says(mix):
    from harness.toolchain import compiler
    from tests.test_hopper_compile import _disassemble
    text = _disassemble(compiler.compile_source(m.SOURCE, "mufu.cu", "sm_90", (f"-DILP={m.ILP}", f"-DMIX={mix}")))
    mufu = text.count("MUFU.EX2")
    assert mufu >= m.ILP and mufu % m.ILP == 0, mufu
    if mix:
        assert text.count("FFMA") >= mufu
    else:
        assert "MUFU.EX2 R" in text and ", -R" in text and text.count("FFMA") <= 1
