"""GPU tests of the coverage sweep (`flashcore diagnose` / `run` without --shape):
- each shape-dependent seeded bug passes at the mission shape (the old default's false
  confidence) and the default sweep names its stage and its separating feature, and the
  shrunk shape it prints still fails there;
- the bugs the mission shape caught are still caught, in their stage;
- the clean kernel over the coverage set x input sets x seeds (>= 100 shape diagnoses) never
  raises a false alarm;
- speed: the whole default sweep <= 10 s warm, one shape <= 5 s (isolated, as the CLI runs).
In-test sweeps run with isolate=False (cheap); none of these bugs faults."""

import math
import time

import pytest

from debug_modes import BUGS
from harness.check import coverage as cov
from harness.check.inputs import fresh_seed
from harness.check.shapes import Shape
from harness.run.coverage import diagnose_coverage, run_coverage
from harness.run.diagnose import diagnose

pytestmark = pytest.mark.gpu

MISSION = Shape(1, 8, 512, 512, 64)
SHAPE_BUGS = sorted(b for b in BUGS if BUGS[b].shows_when)
MISSION_BUGS = sorted(b for b in BUGS if not BUGS[b].shows_when and BUGS[b].found_by == "diagnose")

FALSE_ALARM_INPUTS = ("randn", "large", "uniform")
N_CASES = len(cov.coverage_set())
FALSE_ALARM_SEEDS = max(2, math.ceil(100 / (N_CASES * len(FALSE_ALARM_INPUTS))))   # >= 100 shape diagnoses


def _summary(rep) -> str:
    rows = "; ".join(f"{o.case.label}: {o.stage or 'pass'} {o.detail}".strip() for o in rep.outcomes)
    attr = rep.attribution.text() if rep.attribution else "-"
    return f"seed {rep.seed}, stage {rep.stage}, attribution: {attr}; shrunk: {rep.shrunk and rep.shrunk.case.label}; {rows}"


@pytest.mark.parametrize("bug", SHAPE_BUGS)
def test_shape_bug_passes_at_the_mission_shape(bug):
    """The issue's finding, kept: the old default (mission shape) sees nothing."""
    d = diagnose(MISSION, inputs=BUGS[bug].needs_input, seed=fresh_seed(), bugs=(bug,), record=False,
                 isolate=False, show=False)
    assert d.clean, f"BUG_{bug} shows at the mission shape ({d.stage}): its shows_when is wrong"


@pytest.mark.parametrize("bug", SHAPE_BUGS)
def test_default_sweep_names_stage_and_feature(bug):
    b = BUGS[bug]
    rep = diagnose_coverage(inputs=b.needs_input, seed=fresh_seed(), bugs=(bug,), record=False, isolate=False,
                            show=False)
    assert not rep.clean, f"BUG_{bug} not caught by the coverage sweep: {_summary(rep)}"
    assert rep.stage in b.stages, f"BUG_{bug} placed in {rep.stage}, expected {b.stages}: {_summary(rep)}"
    assert b.shows_when in rep.attribution.features, f"BUG_{bug}: separating feature not named: {_summary(rep)}"
    # the shrunk shape keeps the feature, and diagnose there (what the repro command runs) fails in the stage
    shrunk = rep.shrunk.case
    assert b.shows_when in cov.features_of(shrunk), _summary(rep)
    assert f"--bug {bug}" in rep.repro and f"--seed {rep.seed}" in rep.repro
    d = diagnose(shrunk.shape, causal=shrunk.causal, inputs=b.needs_input, seed=rep.seed, bugs=(bug,), record=False,
                 isolate=False, show=False)
    assert d.stage in b.stages, f"BUG_{bug} at the shrunk shape {shrunk.label}: {d.stage}"


def test_batch_bug_is_named_by_run_without_shape():
    rep = run_coverage(["full"], seed=fresh_seed(), bugs=("BATCH_OFFSET",), record=False, isolate=False, show=False)
    assert not rep.clean and rep.mode == "full" and "b_gt_1" in rep.attribution.features, _summary(rep)


@pytest.mark.parametrize("bug", MISSION_BUGS)
def test_default_sweep_still_catches_the_mission_bugs(bug):
    b = BUGS[bug]
    rep = diagnose_coverage(inputs=b.needs_input, seed=fresh_seed(), bugs=(bug,), record=False, isolate=False,
                            show=False)
    assert not rep.clean and rep.stage in b.stages, f"BUG_{bug}: {_summary(rep)}"


@pytest.mark.parametrize("seed_index", range(FALSE_ALARM_SEEDS))
@pytest.mark.parametrize("inputs", FALSE_ALARM_INPUTS)
def test_clean_kernel_no_false_alarm_over_the_coverage_set(inputs, seed_index):
    rep = diagnose_coverage(inputs=inputs, seed=fresh_seed(), record=False, isolate=False, show=False)
    assert rep.clean, f"clean kernel flagged: {_summary(rep)}"


def test_default_sweep_is_fast_warm():
    """Isolated, as the CLI runs it; the first sweep warms compile caches and workers."""
    diagnose_coverage(seed=1, record=False, show=False)
    t0 = time.perf_counter()
    rep = diagnose_coverage(seed=2, record=False, show=False)
    sweep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    d = diagnose(MISSION, seed=3, record=False, show=False)
    one_s = time.perf_counter() - t0
    assert rep.clean and d.clean
    assert sweep_s <= 10.0, f"coverage sweep of {N_CASES} shapes took {sweep_s:.1f} s warm (limit 10 s)"
    assert one_s <= 5.0, f"one-shape diagnose took {one_s:.1f} s warm (limit 5 s)"
