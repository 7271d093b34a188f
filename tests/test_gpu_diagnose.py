"""GPU tests of the bug-finding tools: every seeded bug is caught and placed in its stage;
the clean kernel is never flagged over 20 fresh seeds x the kernel issue's shapes; the clean
kernel is clean under the four sanitizer tools; racecheck reports the missing barrier."""

import pytest

from debug_modes import BUGS
from harness.run.diagnose import diagnose, smoking_gun
from harness.check.inputs import fresh_seed
from harness.check.shapes import Shape
from tests.gpu_cases import SHAPES

pytestmark = pytest.mark.gpu

BUG_SHAPES = [("mission", Shape(1, 8, 512, 512, 64)), ("odd", Shape(1, 4, 1000, 1000, 64))]


@pytest.mark.parametrize("shape_label,shape", BUG_SHAPES, ids=[s[0] for s in BUG_SHAPES])
# NO_BARRIER's race does not show in the numbers on the mission shape (one block per SM);
# racecheck catches it there (test_racecheck_reports_missing_barrier), diagnose on a loaded
# GPU (test_race_shows_as_moving_output).
# Bugs that show only at some shape features (BUGS[b].shows_when) are invisible here by design;
# the coverage sweep's tests (test_gpu_coverage.py) and the long-shape tests place them.
@pytest.mark.parametrize("bug", sorted(b for b in BUGS if BUGS[b].found_by == "diagnose" and not BUGS[b].shows_when))
def test_seeded_bug_is_caught_and_placed(bug, shape_label, shape):
    b = BUGS[bug]
    d = diagnose(shape, inputs=b.needs_input, seed=fresh_seed(), bugs=(bug,), record=False, isolate=True, show=False)
    assert not d.clean, f"BUG_{bug} not caught on {shape_label}"
    assert d.stage in b.stages, f"BUG_{bug} placed in {d.stage}, expected {b.stages}"


def test_race_shows_as_moving_output():
    """With several blocks per SM the missing barrier strikes: the stage that reads the raced
    buffer fails and its output differs between two launches on the same inputs."""
    d = diagnose(Shape(4, 16, 1024, 1024, 64), seed=fresh_seed(), bugs=("NO_BARRIER",), record=False,
                 isolate=True, show=False)
    assert not d.clean and d.stage in BUGS["NO_BARRIER"].stages
    assert any(m.extra.get("nondeterministic") for m in d.failing.metrics)


@pytest.mark.parametrize("seed_index", range(20))
@pytest.mark.parametrize("label,shape,causal", SHAPES, ids=[s[0] for s in SHAPES])
def test_clean_kernel_never_flagged(label, shape, causal, seed_index):
    d = diagnose(shape, causal=causal, inputs="randn", seed=fresh_seed(), record=False, isolate=False, show=False)
    assert d.clean, f"clean kernel flagged at {d.stage} on {label}: " + \
        "; ".join(f"{m.output} {m.max_abs:.3e}>{m.tol:.3e}" for r in d.results for m in r.metrics if not m.passed)


def test_smoking_gun_clean_and_bugged():
    sg = smoking_gun(Shape(1, 8, 512, 512, 64), record=False, show=False)
    assert sg.passed and sg.row_spread == 0.0
    bad = smoking_gun(Shape(1, 8, 512, 512, 64), record=False, show=False, bugs=("PV_FIRST_TILE",))
    assert not bad.passed


@pytest.mark.parametrize("tool", ["memcheck", "racecheck", "synccheck", "initcheck"])
def test_clean_kernel_is_clean_under_sanitizer(tool):
    from harness.run.sanitize import find_sanitizer, sanitize
    try:
        find_sanitizer()
    except Exception as e:
        pytest.skip(str(e))
    res = sanitize(tool, "full")
    assert res.clean, dict(res.hazards)


def test_racecheck_reports_missing_barrier():
    from harness.run.sanitize import find_sanitizer, sanitize
    try:
        find_sanitizer()
    except Exception as e:
        pytest.skip(str(e))
    res = sanitize("racecheck", "full", bugs=("NO_BARRIER",))
    assert not res.clean
    assert any("flashcore_fused.cu" in k for k in res.hazards), dict(res.hazards)


def _feature_shapes():
    """A small shape with each shape feature, lengths from the kernel registry's small tiles."""
    from kernels.registry import DEFAULT
    t = DEFAULT.small_tiles[64]
    bm, bn = 16 * t["m_frags"] * t["nwarps"], t["block_n"]
    return {
        "sk_tail": Shape(2, 2, 2 * bm, 2 * bn - 27, 64),      # Sk not a multiple of the key tile
        "sk_short": Shape(1, 2, bm, bn - 24, 64),             # all keys in one partial tile
        "sq_lt_sk": Shape(1, 2, bm, 4 * bn + 11, 64),         # more key tiles than query rows span
        "b_gt_1": Shape(2, 2, 2 * bm, 2 * bn, 64),
        "d128": Shape(1, 2, 2 * bm, 2 * bn, 128),
        "sq_tail": Shape(1, 2, 2 * bm - 27, 2 * bn, 64),      # a partial last query tile
    }


SHAPE_BUGS = sorted(b for b in BUGS if BUGS[b].shows_when)


@pytest.mark.parametrize("bug", SHAPE_BUGS)
def test_shape_dependent_bug_placed_where_its_feature_is(bug):
    """docs/DESIGN.md "Stage boundaries": the tail-masking bugs are QK's (the QK check sees the
    padded columns), not the glue's; each shape bug is placed in its stage at a shape with its
    feature, and the clean kernel passes that shape."""
    b = BUGS[bug]
    shape = _feature_shapes()[b.shows_when]
    d = diagnose(shape, seed=fresh_seed(), bugs=(bug,), record=False, isolate=False, show=False)
    assert not d.clean and d.stage in b.stages, f"BUG_{bug} at {shape.label}: {d.stage}, expected {b.stages}"
    assert diagnose(shape, seed=fresh_seed(), record=False, isolate=False, show=False).clean
