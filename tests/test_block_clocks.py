"""scripts/block_clocks.py and the kernel's BLOCK_CLOCKS build: the launch's SM time is split
into parts that add up to it, from marks whose values are known; a persistent block's items are
read one by one; and the build adds its seven clock and timer reads and nothing else (no spills,
no wgmma serialisation; the plain build has none), in the persistent entries too."""

import numpy as np
import pytest

from tests.scripts import load_script

bc = load_script("block_clocks")


def _rows(blocks_on_sm, phases_ns, warps=8, ghz=1.5, gap=700, first=10**6):
    """Rows [items, warps, BLOCK_WORDS] of items run back to back on each SM, each warp's phases
    `phases_ns` (6 values, ns) long, `gap` ns between items; SM s starts at first + 100 s ns. The
    SM clock runs at ghz."""
    rows = []
    for s, n in enumerate(blocks_on_sm):
        t = first + 100 * s
        for _ in range(n):
            r = np.zeros((warps, bc.BLOCK_WORDS), np.uint64)
            marks = t + np.concatenate([[0], np.cumsum(phases_ns)])
            r[:, bc.GT:bc.GT + bc.MARKS] = marks
            r[:, :bc.MARKS] = (marks * ghz).astype(np.int64) + 10**9
            r[:, bc.SMID] = s
            rows.append(r)
            t = marks[-1] + gap
    return np.stack(rows)


def test_parts_add_up_to_the_sms_time_and_name_each_phase():
    ph = np.array([1000, 1500, 20000, 1500, 400, 600])
    r = bc.decompose(_rows([3, 3, 2], ph), n_iter=16)
    assert r["sms"] == 3 and r["items"] == 8 and r["items_per_sm"] == [2, 3]
    assert r["sum_share"] == pytest.approx(1.0)
    p = r["parts"]
    assert p["Q wait"]["us_per_sm"] == pytest.approx(8 * 1.0 / 3)
    assert p["key loop"]["us_per_sm"] == pytest.approx(8 * 20.0 / 3)
    assert p["gaps between items on an SM"]["us_per_sm"] == pytest.approx(5 * 0.7 / 3)
    assert r["span_us"] == pytest.approx((100 + 3 * ph.sum() + 2 * 700) / 1e3)   # SM 1's third block ends last
    assert p["idle after the SM's last item"]["us_per_sm"] == pytest.approx((100 + 0 + 25600) / 3 / 1e3)
    assert p["idle before the SM's first item"]["us_per_sm"] == pytest.approx(300 / 3 / 1e3)
    assert r["clock_ghz"] == pytest.approx(1.5, rel=1e-6)
    assert r["item_clocks"]["wg0"]["key loop"] == r["item_clocks"]["wg1"]["key loop"] == pytest.approx(30000, abs=2)
    assert r["item_clocks"]["wg0"]["epilogue: l, LSE"] == pytest.approx(600, abs=2)   # every part has its clocks
    assert r["item_clocks"]["wg0"]["epilogue: O stores"] == pytest.approx(900, abs=2)
    assert list(r["item_clocks"]["wg1"]) == list(bc.PARTS[1:bc.MARKS])
    assert r["loop_clocks_per_tile"] == pytest.approx(2000, abs=1)


def test_each_sms_first_item_is_told_apart_from_its_later_ones():
    ph = np.array([1000, 1500, 20000, 1500, 400, 600])
    x = _rows([3, 3], ph, gap=2000)
    first = [0, 3]                                        # _rows: SM 0's items 0-2, SM 1's 3-5
    x[first, :, bc.GT + 6] += 1000                        # the first items' stores take 1 us more
    x[first, :, 6] += 1500
    r = bc.decompose(x, 16)["first_vs_later_clocks"]
    assert r["first"]["epilogue: O stores"] == pytest.approx(900 + 1500, abs=2)
    assert r["later"]["epilogue: O stores"] == pytest.approx(900, abs=2)
    assert r["first"]["key loop"] == r["later"]["key loop"] == pytest.approx(30000, abs=2)


def test_a_persistent_blocks_items_are_read_one_by_one_and_the_unrun_left_out():
    ph = np.array([300, 1500, 20000, 1500, 400, 600])
    items = _rows([3, 2], ph)                            # SM 0: items 0-2, SM 1: items 3-4
    rows = np.zeros((2, 8, bc.PERSISTENT_ITEMS, bc.BLOCK_WORDS), np.uint64)   # two blocks
    rows[0, :, :3] = np.moveaxis(items[:3], 0, 1)
    rows[1, :, :2] = np.moveaxis(items[3:], 0, 1)
    x = bc.items_of(rows)
    assert x.shape == (5, 8, bc.BLOCK_WORDS)
    assert sorted(x[:, 0, bc.GT].tolist()) == sorted(items[:, 0, bc.GT].tolist())
    r = bc.decompose(x, 16)
    assert r["items"] == 5 and r["sum_share"] == pytest.approx(1.0)
    assert r["parts"]["gaps between items on an SM"]["us_per_sm"] == pytest.approx(3 * 0.7 / 2)


def test_warpgroups_half_an_item_apart_are_timed_per_warp():
    """A persistent block's warpgroup 1 runs behind warpgroup 0, so warpgroup 0 starts an item
    before warpgroup 1 has finished the one before: per warp, the timelines still add up."""
    ph = np.array([300, 1500, 20000, 1500, 400, 600])
    x = _rows([4], ph, gap=100)
    x[:, 4:, bc.GT:bc.GT + bc.MARKS] += 5000                   # warpgroup 1, 5 us behind
    r = bc.decompose(x, 16)
    assert r["sum_share"] == pytest.approx(1.0)
    p = r["parts"]
    assert p["key loop"]["us_per_sm"] == pytest.approx(4 * 20.0)
    assert p["gaps between items on an SM"]["us_per_sm"] == pytest.approx(3 * 0.1)
    assert p["idle before the SM's first item"]["us_per_sm"] == pytest.approx(2.5)   # half the warps 5 us late
    assert p["idle after the SM's last item"]["us_per_sm"] == pytest.approx(2.5)


def test_overlapping_items_on_one_sm_are_refused():
    r = _rows([2], np.array([100, 100, 100, 100, 100, 100]), gap=-250)
    with pytest.raises(ValueError, match="overlap"):
        bc.decompose(r, 4)


def test_unwritten_rows_are_refused():
    r = _rows([2], np.array([100, 100, 100, 100, 100, 100]))
    r[1, 3, bc.GT + 2:bc.GT + bc.MARKS] = 0              # a warp that stopped after mark 1
    with pytest.raises(ValueError, match="1 warps left marks unwritten"):
        bc.decompose(r, 4)
    r = _rows([2], np.array([100, 100, 100, 100, 100, 100]))
    r[0, 0, 2] = r[0, 0, 1] - 1                          # a clock that ran backwards
    with pytest.raises(ValueError, match="out of order"):
        bc.decompose(r, 4)


@pytest.mark.parametrize("D,kernel", [(64, "flashcore_hopper_ovpp"), (128, "flashcore_hopper_ovpp"),
                                      (128, "flashcore_hopper_kv"), (64, "flashcore_hopper_dyn"),
                                      (128, "flashcore_hopper_ps"), (64, "flashcore_hopper_woel")])
def test_block_clocks_build_reads_the_clock_and_timer_seven_times_with_no_spill(D, kernel):
    from harness.toolchain import compiler
    from harness.toolchain.variant import Variant
    from tests.test_hopper_compile import _disassemble
    v = Variant("full", D, False, kernel=kernel)
    res, cubin = compiler.compile_cubin(v, extra_options=("-DBLOCK_CLOCKS=1",))
    assert res.spill_stores == res.spill_loads == 0 and res.wgmma_warnings == ()
    text = _disassemble(cubin)
    assert text.count("SR_CLOCKLO") == 7 and text.count("SR_GLOBALTIMER") == 7
    plain = _disassemble(compiler.compile_cubin(v)[1])
    assert "SR_CLOCKLO" not in plain and "SR_GLOBALTIMER" not in plain


def test_block_clocks_refuses_the_plain_schedule():
    from harness.toolchain import compiler
    from harness.toolchain.variant import Variant
    v = Variant("full", 128, False, kernel="flashcore_hopper_ws")
    with pytest.raises(Exception, match="BLOCK_CLOCKS"):
        compiler.compile_cubin(v, extra_options=("-DBLOCK_CLOCKS=1",))
