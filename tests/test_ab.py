"""harness/run/ab.py and `flashcore bench --against`: two registry kernels timed in turns. On the
CPU: the round order (A, B then B, A), the ratio's direction and spread, and the CLI's one-line
refusals. On a GPU (marker gpu): two Hopper entries at the mission shape, timed and recorded."""

import pytest
from click.testing import CliRunner

from harness.check.shapes import Shape
from harness.run import ab


def test_rounds_alternate_which_kernel_runs_first():
    calls = []
    timers = {"A": lambda: calls.append("A") or 10.0, "B": lambda: calls.append("B") or 12.0}
    us = ab.interleaved(timers, rounds=4)
    assert calls == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert us == {"A": [10.0] * 4, "B": [12.0] * 4}


def test_ratio_is_b_over_a_with_its_range():
    times = iter([100.0, 120.0, 118.0, 101.0])              # round 0: A, B; round 1: B, A
    us = ab.interleaved({"A": lambda: next(times), "B": lambda: next(times)}, rounds=2)
    assert us == {"A": [100.0, 101.0], "B": [120.0, 118.0]}
    row = ab.ABRow("x", Shape(1, 8, 512, 512, 64), False, ("A", "B"), us, 1e9)
    assert row.ratios() == pytest.approx([1.2, 118 / 101])
    assert row.ratio() == pytest.approx((1.2 + 118 / 101) / 2)   # the median of two
    d = row.to_dict()["ratio_b_over_a"]
    assert d["min"] == pytest.approx(118 / 101) and d["max"] == pytest.approx(1.2)
    assert row.median_us("A") == pytest.approx(100.5)


def test_two_kernels_exactly():
    with pytest.raises(ValueError):
        ab.interleaved({"A": lambda: 1.0}, rounds=2)


@pytest.mark.parametrize("args,words", [
    (["--against", "nope"], "no registry kernel 'nope'"),
    (["--against", "flashcore_fused"], "is the kernel in use"),
    (["--kernel", "flashcore_hopper_ovpp", "--against", "flashcore_hopper_dyn", "--debug", "pv_only"], "full mode"),
    (["--against", "flashcore_hopper", "--suite", "--shape", "mission"], "exclude each other"),
    (["--against", "flashcore_hopper", "--rounds", "1"], "--rounds"),
])
def test_cli_refuses_bad_ab_requests_in_one_line(args, words):
    from cli import cli
    r = CliRunner().invoke(cli, ["bench", *args])
    assert r.exit_code == 2, r.output
    assert words in r.output and "Traceback" not in r.output


@pytest.mark.gpu
def test_bench_against_times_two_entries_in_turns_and_records_them(results_tmp):
    from cli import cli
    from harness import records
    from harness.toolchain.device import require_gpu
    if require_gpu()["arch"] != "sm_90":
        pytest.skip("the Hopper entries need an sm_90 GPU")
    r = CliRunner().invoke(cli, ["bench", "--kernel", "flashcore_hopper_ovpp", "--against", "flashcore_hopper_ws",
                                 "--shape", "mission", "--rounds", "4"])
    assert r.exit_code == 0, r.output
    assert "t_B / t_A" in r.output
    rec = [x.data for x in records.read().records if x.get("kind") == "bench_ab"][-1]
    assert rec["kernel"] == "flashcore_hopper_ovpp" and rec["against"] == "flashcore_hopper_ws"
    us = rec["ab"]["us"]
    assert all(len(v) == 4 and min(v) > 0 for v in us.values())
    lo, mid, hi = (rec["ab"]["ratio_b_over_a"][k] for k in ("min", "median", "max"))
    assert 0 < lo <= mid <= hi
