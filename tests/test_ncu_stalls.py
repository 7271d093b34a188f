"""scripts/ncu_stalls.py on two committed Nsight Compute logs: every kernel of the log is found
(the C++-named ones, "void ...<...>(...)", too), with the warps its grid launched, and its
per-warp stall ratios scaled by them (kernels/NOTES.md quotes these totals)."""

from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "results" / "logs"


def _module():
    return load_script("ncu_stalls")


def test_every_kernel_of_a_log_with_its_warps_and_totals():
    k = _module().parse(str(LOGS / "ncu-a0370f5-ov-cudnn-4x16x2048x128-h200.txt"))
    names = [x["name"] for x in k]
    assert len(k) == 3 and names[0] == "flashcore_fwd" and names[1].startswith("pytorch_flash::flash_fwd_kernel")
    assert names[2].startswith("cudnn_generated_")
    # grids (16, 16, 4) x 384 threads, (16, 4, 16) x 128 and (132, 1, 1) x 384
    assert [x["warps"] for x in k] == [1024 * 12, 1024 * 4, 132 * 12]
    ours, cudnn = k[0], k[2]
    # per-warp ratio 9,921.12 (the log's line) times 12,288 warps, in millions
    assert ours["wait"] == pytest.approx(9921.12 * 12288 / 1e6)
    assert ours["us"] == pytest.approx(247.78) and cudnn["us"] == pytest.approx(223.1)
    assert ours["inst"] == pytest.approx(75.4e6, rel=0.01) and cudnn["ipc"] == pytest.approx(1.72)


def test_a_kernel_alone_is_not_overwritten_by_the_next():
    k = _module().parse(str(LOGS / "ncu-106cbd4-ovpp-cudnn-4x16x2048x64-h200.txt"))
    assert [x["name"][:13] for x in k] == ["flashcore_fwd", "cudnn_generat"]
    assert k[0]["wait"] > k[1]["wait"] > 0 and k[0]["us"] != k[1]["us"]
