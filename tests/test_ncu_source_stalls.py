"""scripts/ncu_source_stalls.py on the committed per-instruction export of version 6 (0ab3415):
the kernel and its instructions are read, each reason's samples per opcode add up to the
reason's column, and the numbers kernels/NOTES.md quotes (version 8's reason) come out of it."""

from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
CSV = ROOT / "results" / "logs" / "ncu-src-0ab3415-ovpp-4x16x2048x128-h200.csv.gz"


def _module():
    return load_script("ncu_source_stalls")


def test_reads_every_instruction_and_sums_by_opcode():
    p = _module().parse(str(CSV))
    assert p["kernel"] == "flashcore_fwd" and len(p["lines"]) == 2384
    assert p["samples"] == pytest.approx(24574)
    wait = p["reasons"]["wait"]
    assert sum(wait.values()) == pytest.approx(sum(c["wait"] for _, _, _, c in p["lines"]))
    # kernels/NOTES.md, version 8: the descriptor rebuild's uniform ops hold a fifth of `wait`
    uniform = wait["ULOP3"] + wait["UMOV"] + wait["USHF"]
    assert wait["MUFU"] == 2638 and uniform == 635 + 442 + 347
    assert 0.2 <= uniform / sum(wait.values()) <= 0.21


def test_report_lists_reasons_and_hot_lines():
    text = _module().report(str(CSV), top_lines=3)
    lines = text.splitlines()
    assert lines[0].startswith("flashcore_fwd: 24574 samples, 2384 instructions")
    assert lines[2].startswith("wait") and "MUFU 2638" in lines[2]
    assert len([l for l in lines if l.startswith("  ")]) == 3


def test_loop_phases_cut_the_key_loop_at_its_markers():
    """kernels/NOTES.md ("What stands between"): the softmax is over half of a consumer warp's
    samples in the key loop and the turn about a third; the phases and the rest add up to all."""
    mod = _module()
    p = mod.parse(str(CSV))
    ph = mod.loop_phases(p)
    assert sum(ph.values()) == pytest.approx(p["samples"])
    loop = sum(v for k, v in ph.items() if k != "outside")
    assert ph["softmax"] == 9467 and ph["turn"] == 5526 and loop == 17447
    assert 0.5 < ph["softmax"] / loop < 0.6 and 0.3 < ph["turn"] / loop < 0.35
