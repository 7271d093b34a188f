"""GPU tests of the input probes (harness/check/probes.py, harness/run/probe_sweep.py): the
clean kernels raise no alarm over their coverage sets, and probes alone (no debug flag) place
the seeded bugs: at least 10 of flashcore_fused's 13 in their flag-based stage, and every
seeded bug of the outsider kernel."""

from pathlib import Path

import pytest

from debug_modes import BUGS
from harness.check.shapes import Shape
from harness.run import probe_sweep

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parent.parent
FUSED = ROOT / "kernels" / "flashcore_fused.toml"
OUTSIDER = ROOT / "kernels" / "outsider" / "attention.toml"


@pytest.mark.parametrize("spec", [FUSED, OUTSIDER], ids=["flashcore_fused", "outsider"])
@pytest.mark.parametrize("seed", [11, 12])
def test_clean_kernels_raise_no_probe_alarm(spec, seed):
    rep = probe_sweep.sweep(spec, seed=seed, isolate=False, show=False)
    assert rep.clean, "; ".join(f"{o.case.label}: {o.stage} {o.detail}" for o in rep.failing)


def test_probes_alone_place_at_least_10_of_the_13_fused_bugs():
    placed, misses = 0, []
    for bug, b in BUGS.items():
        rep = probe_sweep.sweep(FUSED, seed=1, bugs=(bug,), isolate=False, show=False, shrink_budget=4)
        if rep.stage == b.stage:
            placed += 1
        else:
            misses.append(f"{bug}: flags {b.stage}, probes {rep.stage}")
    assert placed >= 10, misses


@pytest.mark.parametrize("bug,stage,says", [("TAIL_KEYS", "qk", "weight"), ("OOB_WRITE", "pv", "outside"),
                                            ("HANG", "all", "HANG")])
def test_probes_place_the_outsider_bugs(bug, stage, says):
    rep = probe_sweep.sweep(OUTSIDER, seed=1, bugs=(bug,), isolate=bug == "HANG", show=False, shrink_budget=4)
    assert rep.stage == stage, "; ".join(f"{o.case.label}: {o.stage} {o.detail}" for o in rep.outcomes)
    assert any(says in o.detail for o in rep.failing)


def test_probes_catch_the_outsider_race_where_it_strikes():
    """The WAR race strikes at the one coverage shape where a warp idles in a query tile with a
    next key tile (81 rows). On the H200 it strikes either the same way at both launches (the
    probes then see rows that differ although every score is equal: PV) or differently (an
    output that moves: a race, glue); both were seen on the device. Either way, only there."""
    rep = probe_sweep.sweep(OUTSIDER, seed=1, bugs=("RACE",), isolate=False, show=False, shrink_budget=4)
    assert [o.case.shape.Sq for o in rep.failing] == [81], "; ".join(f"{o.case.label}: {o.detail}" for o in rep.outcomes)
    o = rep.failing[0]
    assert (o.stage, "race" in o.detail) in (("glue", True), ("pv", False)) and (o.stage == "glue" or "rows differ" in o.detail)


def test_smoking_gun_without_a_flag():
    pc = probe_sweep.smoking_gun(OUTSIDER, Shape(1, 2, 81, 81, 64), seed=3, show=False)
    u, oh = pc.results["uniform"], pc.results["onehot"]
    assert u.passed and oh.passed and u.spread <= u.worst.tol and abs(float(oh.key_weight.mean()) - 1) < 1e-3
    pc = probe_sweep.smoking_gun(OUTSIDER, Shape(1, 2, 81, 81, 64), seed=3, bugs=("TAIL_KEYS",), show=False)
    assert not pc.results["uniform"].passed and pc.results["onehot"].kind == "diluted"


CALLABLE_BUG = str(Path(__file__).resolve().parent / "kernels" / "callables.py") + ":drops_last_key"


def test_probes_diagnose_a_python_callable():
    """A callable has no flags: its diagnosis is the probes'. SDPA is clean over the coverage
    set; a callable that drops the last key is placed in QK with the key it loses."""
    rep = probe_sweep.sweep("harness.run.callable_kernel:sdpa", seed=3, isolate=False, show=False)
    assert rep.clean, [(o.case.label, o.detail) for o in rep.failing]
    stage, probe, words, _ = probe_sweep.diagnose_shape(CALLABLE_BUG, Shape(1, 2, 80, 80, 64), seed=3, isolate=False,
                                                        show=False)
    assert stage == "qk" and "79" in words, (stage, probe, words)


def test_smoking_gun_of_a_python_callable():
    pc = probe_sweep.smoking_gun("harness.run.callable_kernel:sdpa", Shape(1, 2, 81, 81, 64), seed=3, show=False)
    assert pc.status == "ok" and all(r.passed for r in pc.results.values())
