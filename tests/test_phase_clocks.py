"""scripts/phase_clocks.py and the kernel's PHASE_CLOCKS build: the intervals read from the SM
clock are the ones written (wrapping clocks included, first and last iterations cut), and the
build adds its eight clock reads to the key loop and nothing else: no spills, no wgmma
serialisation, and the plain build has none."""

import numpy as np
import pytest

from tests.scripts import load_script

pc = load_script("phase_clocks")


def _clocks(blocks, warps, n_iter, durations, start=0):
    """Clocks of iterations whose phases last `durations` (8 values) each, from `start` (u32)."""
    clk = np.zeros((blocks, warps, pc.PHASE_TILES, pc.PHASE_N), dtype=np.uint32)
    t = np.full((blocks, warps), start, dtype=np.int64)
    for j in range(min(n_iter - 1, pc.PHASE_TILES)):
        for k in range(pc.PHASE_N):
            clk[:, :, j, k] = (t % 2**32).astype(np.uint32)
            t += durations[k]
    return clk


def test_intervals_are_the_phases_written_even_across_a_clock_wrap():
    dur = np.array([40, 5, 300, 120, 90, 800, 60, 70])
    clk = _clocks(3, 8, 16, dur, start=2**32 - 5000)          # the clock wraps a few tiles in
    d = pc.intervals(clk, 16)
    assert d.shape == (3, 8, 15 - 2, 8)                        # iterations 1 .. n-2 of 15
    assert (d == dur).all()
    s = pc.summary(d)
    assert set(s) == {"wg0", "wg1"} and s["wg0"]["iteration"][0] == dur.sum()
    assert s["wg1"]["phases"]["softmax(j+1)"] == [800.0, 800.0, 800.0]


def test_intervals_refuse_a_sweep_too_short_to_read():
    with pytest.raises(ValueError, match="too few"):
        pc.intervals(np.zeros((1, 8, 64, 8), np.uint32), 4)


def test_persistent_blocks_without_marks_are_left_out():
    clk = _clocks(4, 8, 16, np.arange(1, 9))
    clk[1] = 0                                                 # a block with no second item
    kept = pc.marked_blocks(clk)
    assert kept.shape[0] == 3 and (kept == clk[[0, 2, 3]]).all()
    with pytest.raises(Exception, match="no block stored marks"):
        pc.marked_blocks(np.zeros_like(clk))


def test_phases_are_named_by_where_the_entry_takes_its_turn():
    assert pc.phases_of("flashcore_hopper_ovpp") == pc.PHASES
    assert pc.phases_of("flashcore_hopper_ovst2") == pc.SOFTMAX_TURN_PHASES
    assert len(pc.SOFTMAX_TURN_PHASES) == len(pc.PHASES) == pc.PHASE_N


@pytest.mark.parametrize("D,kernel", [(64, "flashcore_hopper_ovpp"), (128, "flashcore_hopper_ovpp"),
                                      (128, "flashcore_hopper_ovst"), (64, "flashcore_hopper_ovst2"),
                                      (128, "flashcore_hopper_woel"), (128, "flashcore_hopper_iow")])
def test_phase_clocks_build_reads_the_clock_eight_times_with_no_spill(D, kernel):
    """Version 14 takes one of its marks inside softmax_in_turn (PHASE_SLOT): still eight."""
    from harness.toolchain import compiler
    from harness.toolchain.variant import Variant
    from tests.test_hopper_compile import _disassemble
    v = Variant("full", D, False, kernel=kernel)
    res, cubin = compiler.compile_cubin(v, extra_options=("-DPHASE_CLOCKS=1",))
    assert res.spill_stores == res.spill_loads == 0 and res.wgmma_warnings == ()
    assert _disassemble(cubin).count("SR_CLOCKLO") == 8
    assert "SR_CLOCKLO" not in _disassemble(compiler.compile_cubin(v)[1])
