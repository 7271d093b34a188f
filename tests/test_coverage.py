"""The coverage set and the coverage sweep, on CPU: the set covers every pair of shape
features that can occur together, its lengths come from the kernel's tile table, and the
verdict (stage, attribution, shrinking, the repro command) is right on synthetic outcomes
from fake runners. The GPU side is tests/test_gpu_coverage.py."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from cli import cli
from debug_modes import BUGS
from harness.check import coverage as cov
from harness.check.coverage import FEATURES, Case
from harness.check.shapes import NAMED, Shape
from harness.errors import FlashCoreError, UsageError
from harness.run import coverage as rc
from kernels import registry
from tests.conftest import gpu_missing_reason


def case(B, H, Sq, Sk, D=64, causal=False):
    return Case(Shape(B, H, Sq, Sk, D), causal)


# A kernel with other tiles: 128-row query tiles and 128-key tiles at D = 64, 64 rows and
# 32 keys at D = 128, and one table for every size.
OTHER_TILES = replace(
    registry.FLASHCORE_FUSED, name="other",
    tiles={64: dict(m_frags=2, nwarps=4, block_n=128, kv_stages=2), 128: dict(m_frags=1, nwarps=4, block_n=32, kv_stages=3)},
    small_tiles={64: dict(m_frags=2, nwarps=4, block_n=128, kv_stages=2), 128: dict(m_frags=1, nwarps=4, block_n=32, kv_stages=3)},
)


def wide_pool(spec=None, top=300):
    """Many more shapes than the set draws from: every length to 70, then every 8th (and a few
    tails) to `top`, B, H in {1, 2}, both head dims and maskings; the valid ones."""
    lengths = sorted(set(range(1, 71)) | set(range(72, top, 8)) | {129, 161, 193, 225, 257, 289})
    spec_ = spec or registry.DEFAULT
    return [c for D in spec_.head_dims for B in (1, 2) for H in (1, 2) for causal in (False, True)
            for Sq in lengths for Sk in lengths
            for c in [case(B, H, Sq, Sk, D, causal)] if cov.valid(c, spec)]


@pytest.fixture(scope="module")
def wide_features():
    """The features of every case of the wide pool (computed once: the pool is large)."""
    return [cov.features_of(c) for c in wide_pool()]


# ------------------------------------------------------------------ the set
def test_every_combination_that_can_occur_is_covered(wide_features):
    """All pairs: for every two features, each present/absent combination some valid shape has
    (in a pool far wider than the set's own candidates) is in some shape of the set."""
    cases = cov.coverage_set()
    have = frozenset().union(*(cov.combos(cov.features_of(c)) for c in cases))
    want = frozenset().union(*(cov.combos(f) for f in set(wide_features)))
    assert not want - have, sorted(cov.describe_combo(k) for k in want - have)


def test_every_pair_that_can_cooccur_occurs_together(wide_features):
    cases = cov.coverage_set()
    together = {frozenset((f, g)) for c in cases for f in cov.features_of(c) for g in cov.features_of(c) if f != g}
    possible = {frozenset((f, g)) for fs in set(wide_features) for f in fs for g in fs if f != g}
    assert possible - together == set()
    # the brief's pairs, by name, are among them
    for f, g in [("b_gt_1", "h_gt_1"), ("sq_lt_sk", "causal"), ("sk_tail", "d128"), ("sq_tail", "sk_tail"),
                 ("sq_one", "causal"), ("sk_short", "d128"), ("sq_gt_sk", "b_gt_1")]:
        assert frozenset((f, g)) in together, (f, g)
    # and the pairs no shape can have are the ones the definitions exclude
    assert frozenset(("sq_lt_sk", "sq_gt_sk")) not in possible and frozenset(("sq_one", "sq_multi")) not in possible


def test_every_feature_present_and_absent():
    cases = cov.coverage_set()
    for name in FEATURES:
        have = [name in cov.features_of(c) for c in cases]
        assert any(have) and not all(have), name


def test_set_is_small_tiny_and_deterministic():
    cases = cov.coverage_set()
    assert 6 <= len(cases) <= 20
    assert len(set(cases)) == len(cases)
    for c in cases:
        s = c.shape
        assert s.B <= 2 and s.H <= 3 and s.D in (64, 128)
        assert s.Sq <= 4 * 64 and s.Sk <= 4 * 64           # a few tiles at most
    assert cov.coverage_set() == cases


def test_mission_shape_is_not_enough():
    """The old default has few features: most of the set's are absent from it."""
    mission = case(*NAMED["mission"][:3], NAMED["mission"][2], NAMED["mission"][3])
    absent = set(FEATURES) - cov.features_of(mission)
    for bug in BUGS.values():
        if bug.shows_when:
            assert bug.shows_when in absent, bug.name


def test_every_shows_when_names_a_feature():
    for bug in BUGS.values():
        assert not bug.shows_when or bug.shows_when in FEATURES, bug.name


def test_features_of_small_cases():
    assert cov.features_of(case(1, 1, 1, 1)) == {"sq_one", "sq_short", "sk_short", "sq_tail", "sk_tail"}
    assert cov.features_of(case(2, 3, 128, 192, 128, True)) == {
        "b_gt_1", "h_gt_1", "sq_lt_sk", "causal", "d128", "sq_multi", "sk_multi", "sk_reuse"}
    assert "sk_tail" in cov.features_of(case(1, 1, 64, 97)) and "sq_tail" not in cov.features_of(case(1, 1, 64, 97))


def test_valid_needs_whole_tiles_between_sq_and_sk():
    assert cov.valid(case(1, 1, 97, 97))
    assert not cov.valid(case(1, 1, 1, 33))       # Sq < Sk inside one key tile: no loop sees it
    assert not cov.valid(case(1, 1, 64, 33))
    assert cov.valid(case(1, 1, 1, 97)) and cov.valid(case(1, 1, 97, 33))


def test_unknown_head_dim_is_a_usage_error():
    with pytest.raises(UsageError, match="unsupported head dim 96"):
        cov.coverage_set(head_dims=(96,))


def test_restrictions_keep_all_pairs_within_them():
    for kw in (dict(head_dims=(128,)), dict(causal=True), dict(causal=False)):
        cases = cov.coverage_set(**kw)
        assert cases and not cov.uncovered(cases, cov.candidates(None, **kw)), kw
        if "head_dims" in kw:
            assert {c.shape.D for c in cases} == {128}
        else:
            assert {c.causal for c in cases} == {kw["causal"]}


# ------------------------------------------------------------------ lengths from the tile table
def test_lengths_derive_from_the_tile_table():
    bm, bn, stages = cov.tile_edges(None, 1, 1, 1, 64)
    assert (bm, bn) == (64, 64)                     # the small table at coverage sizes
    assert cov.candidate_lengths(None, 64) == cov.lengths_for(bm, bn, stages)
    assert cov.lengths_for(64, 64, 2) == [1, 33, 64, 97, 128, 161, 192, 225]
    assert cov.lengths_for(128, 64, 1) == [1, 33, 64, 128, 161, 256, 289]


def test_other_tiles_give_other_lengths_and_features(monkeypatch):
    default = cov.coverage_set()
    other = cov.coverage_set(OTHER_TILES)
    assert other != default
    assert cov.candidate_lengths(OTHER_TILES, 64) == cov.lengths_for(128, 128, 2) == [1, 65, 128, 193, 256, 321, 384, 449]
    assert cov.candidate_lengths(OTHER_TILES, 128) == cov.lengths_for(64, 32, 3)
    for c in other:
        fx = cov.facts(c, OTHER_TILES)
        assert c.shape.Sq in cov.candidate_lengths(OTHER_TILES, c.shape.D)
        assert ("sk_tail" in cov.features_of(c, OTHER_TILES)) == (c.shape.Sk % fx.block_n != 0)
        assert ("sq_tail" in cov.features_of(c, OTHER_TILES)) == (c.shape.Sq % fx.block_m != 0)
    # 64 keys are a tail for 128-key tiles, not for the registry's 64-key tiles
    assert "sk_tail" in cov.features_of(case(1, 1, 64, 64), OTHER_TILES)
    assert "sk_tail" not in cov.features_of(case(1, 1, 64, 64))
    assert not cov.uncovered(other, wide_pool(OTHER_TILES, top=460)[::7], OTHER_TILES)
    # the kernel in use is looked up when called, so a kernel swapped in is the one checked
    monkeypatch.setitem(registry.KERNELS, "other_tiles", replace(OTHER_TILES, name="other_tiles"))
    monkeypatch.setenv(registry.ENV_KERNEL, "other_tiles")
    assert cov.coverage_set() == other


def test_features_use_the_tiles_picked_for_that_shape():
    """A table that switches at two 128-row blocks: 1x1 heads get 64-row tiles, 2x3 heads
    128-row ones, so Sq = 64 is a query tail only for the larger shape."""
    switching = replace(
        registry.FLASHCORE_FUSED, name="switching", small_below_blocks=2,
        tiles={64: dict(m_frags=2, nwarps=4, block_n=64, kv_stages=2), 128: dict(m_frags=2, nwarps=4, block_n=64, kv_stages=1)},
        small_tiles={64: dict(m_frags=1, nwarps=4, block_n=64, kv_stages=2), 128: dict(m_frags=1, nwarps=4, block_n=64, kv_stages=2)})
    assert "sq_tail" not in cov.features_of(case(1, 1, 64, 64), switching)
    assert "sq_tail" in cov.features_of(case(2, 3, 64, 64), switching)
    assert cov.tile_choices(switching, 64) == {(64, 64, 2), (128, 64, 2)}
    assert 128 + 33 in cov.candidate_lengths(switching, 64)


# ------------------------------------------------------------------ attribution
def outcomes_where(fails, cases=None, stage="qk", mode="qk_only"):
    cases = cov.coverage_set() if cases is None else cases
    out = []
    for c in cases:
        f = fails(c)
        out.append(rc.Outcome(c, cov.features_of(c), f, stage if f else None, mode if f else None))
    return out


def test_attribution_exact_single_feature():
    outs = outcomes_where(lambda c: c.shape.B > 1)
    a = rc.attribute(outs)
    n_with = sum(c.shape.B > 1 for c in cov.coverage_set())
    assert a.exact and a.literals == (("b_gt_1", True),) and a.features == ("b_gt_1",)
    assert a.text() == f"fails at every shape with B > 1 ({n_with}/{n_with}) and at none without (0/{len(outs) - n_with})"


def test_attribution_absent_feature():
    a = rc.attribute(outcomes_where(lambda c: not c.causal))
    assert a.exact and a.literals == (("causal", False),) and a.features == ()
    assert "non-causal" in a.text()


def test_attribution_two_features_together():
    cases = [case(1, 1, 64, 64), case(2, 1, 64, 64), case(1, 1, 97, 97), case(2, 1, 97, 97),
             case(1, 1, 97, 97, 128), case(2, 1, 64, 64, 128), case(1, 3, 97, 97), case(2, 3, 97, 97)]
    outs = outcomes_where(lambda c: c.shape.B > 1 and c.shape.Sq % 64 != 0, cases)
    a = rc.attribute(outs)
    assert a.exact and set(a.literals) == {("b_gt_1", True), ("sq_tail", True)}
    assert "B > 1 and Sq not a multiple of the BLOCK_M-row query tile" in a.text()
    assert "(2/2)" in a.text(64, 64) and "the 64-row query tile" in a.text(64, 64)


def test_attribution_closest_names_exceptions():
    flaky = case(1, 1, 1, 1)
    outs = outcomes_where(lambda c: c.shape.D == 128 or c == flaky)
    a = rc.attribute(outs)
    assert not a.exact and a.literals == (("d128", True),)
    assert a.fail_without == 1 and a.exceptions == ["1,1,1,64 fails"]
    assert a.text().startswith("no feature separates exactly; closest:")


def test_attribution_none_or_every_shape():
    assert rc.attribute(outcomes_where(lambda c: False)) is None
    a = rc.attribute(outcomes_where(lambda c: True))
    assert a.literals == () and a.exact and "no shape feature separates" in a.text()


def test_attribution_skips_features_that_do_not_vary():
    cases = [case(1, 1, 64, 64), case(2, 1, 64, 64)]
    preds = rc.predicates(outcomes_where(lambda c: True, cases))
    assert {p[0][0] for p in preds} == {"b_gt_1"}


def test_attribution_reports_ties():
    cases = [case(1, 1, 64, 64), case(2, 3, 64, 64)]          # B and H always together: aliased
    a = rc.attribute(outcomes_where(lambda c: c.shape.B > 1, cases))
    assert a.literals == (("b_gt_1", True),) and (("h_gt_1", True),) in a.also
    assert "equally: H > 1" in a.text()


def test_main_stage_most_common_then_earliest():
    outs = outcomes_where(lambda c: c.shape.B > 1, stage="pv", mode="pv_only")
    outs[0] = rc.Outcome(outs[0].case, outs[0].features, True, "qk", "qk_only")
    assert rc.main_stage(outs) == ("pv", "pv_only")
    tie = [rc.Outcome(case(1, 1, 64, 64), frozenset(), True, "glue", "full"),
           rc.Outcome(case(1, 1, 97, 97), frozenset(), True, "softmax", "softmax_only")]
    assert rc.main_stage(tie) == ("softmax", "softmax_only")
    assert rc.main_stage(outcomes_where(lambda c: False)) == (None, None)


# ------------------------------------------------------------------ shrinking
class CountingRunner:
    def __init__(self, fails):
        self.fails, self.calls = fails, []

    def __call__(self, c):
        self.calls.append(c)
        return self.fails(c)


def test_shrink_to_the_smallest_case_keeping_the_feature():
    run = CountingRunner(lambda c: c.shape.B > 1)
    s = rc.shrink(case(2, 3, 225, 192, 64, True), (("b_gt_1", True),), run)
    assert s.case == case(2, 1, 1, 1, 64, False)
    assert len(run.calls) == s.runs == len(set(run.calls))      # no case runs twice
    assert not s.out_of_budget


def test_shrink_two_features_and_d128():
    fails = lambda c: c.shape.D == 128 and c.shape.Sk % 64 != 0
    s = rc.shrink(case(2, 3, 161, 161, 128, True), (("d128", True), ("sk_tail", True)), CountingRunner(fails))
    assert s.case.shape.D == 128 and s.case.shape.Sk % 64 != 0 and fails(s.case)
    assert (s.case.shape.B, s.case.shape.H, s.case.causal) == (1, 1, False)
    assert s.case.shape.Sk == 1 and s.case.shape.Sq == 1


def test_shrink_respects_the_budget():
    run = CountingRunner(lambda c: True)
    s = rc.shrink(case(2, 3, 225, 192, 128, True), (), run, budget=3)
    assert len(run.calls) == 3 and s.out_of_budget


def test_shrink_stops_where_nothing_smaller_fails():
    start = case(2, 3, 97, 97)
    run = CountingRunner(lambda c: c == start)
    s = rc.shrink(start, (), run)
    assert s.case == start and s.runs == len(rc.reductions(start)) > 0


@pytest.mark.parametrize("c", cov.coverage_set(), ids=lambda c: c.label)
def test_reductions_are_smaller_valid_and_keep_the_predicate(c):
    feats = cov.features_of(c)
    for name in sorted(feats)[:3]:
        keep = ((name, True),)
        for r in rc.reductions(c, keep):
            assert r.cost < c.cost or (r.causal is False and c.causal)
            assert cov.valid(r) and name in cov.features_of(r)


def test_repro_command_parses_and_names_everything():
    cmd = rc.repro_command("diagnose", case(1, 1, 1, 97, 128, True), ("TAIL_UNMASKED",), "large", 7)
    assert cmd == "flashcore diagnose --shape 1,1,1,128 --sk 97 --causal --bug TAIL_UNMASKED --inputs large --seed 7"
    args = cmd.split()[2:]
    ctx = cli.commands["diagnose"].make_context("diagnose", args)
    assert ctx.params["shape"] == "1,1,1,128" and ctx.params["sk"] == 97 and ctx.params["causal"]
    run_cmd = rc.repro_command("run", case(2, 1, 64, 64), (), "randn", 3, mode="pv_only")
    assert run_cmd == "flashcore run --debug pv_only --shape 2,1,64,64 --sk 64 --seed 3"
    cli.commands["run"].make_context("run", run_cmd.split()[2:])


# ------------------------------------------------------------------ the seeded bugs, as a model
# Where each shape-dependent seeded bug shows, read from kernels/flashcore_fused.cu (a model of
# the kernel, checked for real by tests/test_gpu_coverage.py): the default sweep's verdict on
# these outcomes must name the bug's stage and its shows_when feature.
def _tiles(f, n):
    return -(-n // f)


VISIBLE = {
    # padded keys score 0 instead of -inf; top-left causal masking hides them unless a query
    # row reaches past Sk (Sq > Sk)
    "TAIL_UNMASKED": lambda f: f.Sk % f.block_n != 0 and (not f.causal or f.Sq > f.Sk),
    "SHORT_UNMASKED": lambda f: f.Sk < f.block_n,
    # qk_only sweeps every key tile, so the columns past Sq's tiles stay unwritten
    "KV_LOOP_SQ": lambda f: _tiles(f.block_n, f.Sq) < _tiles(f.block_n, f.Sk),
    "BATCH_OFFSET": lambda f: f.B > 1,
    "D128_COLS": lambda f: f.D == 128,
    "Q_TAIL_SWAP": lambda f: f.Sq % f.block_m != 0,
}
MODE_OF_STAGE = {"qk": "qk_only", "softmax": "softmax_only", "pv": "pv_only", "glue": "full"}


def test_model_covers_every_shape_dependent_bug():
    assert set(VISIBLE) == {b for b, bug in BUGS.items() if bug.shows_when}


@pytest.mark.parametrize("bug", sorted(VISIBLE))
def test_modelled_bug_is_named_by_the_default_sweep(bug):
    b = BUGS[bug]
    vis = lambda c: VISIBLE[bug](cov.facts(c))
    outs = outcomes_where(vis, stage=b.stage, mode=MODE_OF_STAGE[b.stage])
    assert not vis(case(*NAMED["mission"][:3], NAMED["mission"][2], NAMED["mission"][3])), "shows at the mission shape"
    assert any(o.failed for o in outs) and not all(o.failed for o in outs)
    rep = rc.conclude("diagnose", outs, lambda c, m: vis(c), (bug,), "randn", 5)
    assert rep.stage == b.stage
    assert b.shows_when in rep.attribution.features, rep.attribution.text()
    assert b.shows_when in cov.features_of(rep.shrunk.case) and vis(rep.shrunk.case)
    assert f"--bug {bug}" in rep.repro and "--seed 5" in rep.repro
    if bug != "TAIL_UNMASKED":          # the causal mask hides the tail at causal Sq <= Sk
        assert rep.attribution.exact and rep.attribution.literals == ((b.shows_when, True),)


# ------------------------------------------------------------------ the sweep with fake GPU parts
def fake_metric(failed):
    return SimpleNamespace(output="O", err_over_floor=900.0 if failed else 1.0, n_unwritten=12 if failed else 0,
                           n_nonfinite=0, extra={}, passed=not failed)


def fake_result(mode, failed, status="ok", message=""):
    return SimpleNamespace(variant=SimpleNamespace(mode=mode), passed=not failed and status == "ok", status=status,
                           message=message, metrics=[fake_metric(failed)])


@pytest.fixture
def fake_gpu(monkeypatch):
    """diagnose / run_modes / run_case replaced by a model: BATCH_OFFSET fails pv_only at B > 1;
    one case faults. Records what ran."""
    import harness.toolchain.device as device
    import harness.run.diagnose as diag
    import harness.run.runs as runs
    import harness.run.session as session
    log = SimpleNamespace(diagnosed=[], single=[], bugs=set())
    fault = case(1, 1, 1, 1)

    def fails(c, bugs):
        return "BATCH_OFFSET" in bugs and c.shape.B > 1

    def fake_diagnose(shape, causal=False, inputs="randn", seed=None, bugs=(), record=True, isolate=True, show=True, png=None, prebuild=True):
        c = Case(shape, causal)
        log.diagnosed.append((c, isolate, record))
        log.bugs.update(bugs)
        if c == fault and "BATCH_OFFSET" in bugs:
            r = fake_result("qk_only", True, "fault", "kernel fault: illegal address")
            return SimpleNamespace(clean=False, stage="qk", failing=r, folds=[], results=[r])
        if fails(c, bugs):
            r = fake_result("pv_only", True)
            return SimpleNamespace(clean=False, stage="pv", failing=r,
                                   folds=[SimpleNamespace(hints=["batch 1 only"])], results=[r])
        return SimpleNamespace(clean=True, stage=None, failing=None, folds=[], results=[])

    def fake_run_modes(modes, shape, causal=False, inputs="randn", seed=None, scale=None, bugs=(), record=True,
                       isolate=None, show=True, title=None, keep_outputs=False, prebuild=True):
        return [fake_result(m, m == "full" and fails(Case(shape, causal), bugs)) for m in modes]

    def fake_run_case(c, isolate=True):
        s = c["shape"]
        log.single.append((c["mode"], isolate))
        return fake_result(c["mode"], fails(Case(Shape(**s), c["causal"]), c["bugs"]))

    facts = dict(device="FakeGPU", driver="0", cupy="0", arch="sm_90")
    monkeypatch.setattr(device, "require_gpu", lambda: facts)
    monkeypatch.setattr(session, "device_facts", lambda isolate: facts)   # isolated: a worker would tell them
    monkeypatch.setattr(diag, "diagnose", fake_diagnose)
    monkeypatch.setattr(session, "run_modes", fake_run_modes)
    monkeypatch.setattr(runs, "run_case", fake_run_case)
    log.fault = fault
    return log


def test_diagnose_coverage_end_to_end_on_fakes(fake_gpu):
    rep = rc.diagnose_coverage(bugs=("BATCH_OFFSET",), seed=11, record=False, show=False)
    cases = cov.coverage_set()
    assert [c for c, _, _ in fake_gpu.diagnosed] == cases
    assert all(iso for _, iso, _ in fake_gpu.diagnosed)                 # every case isolated by default
    assert all(iso for _, iso in fake_gpu.single)
    fault = next(o for o in rep.outcomes if o.case == fake_gpu.fault)
    assert fault.failed and fault.stage == "qk" and fault.detail.startswith("fault: kernel fault")
    assert rep.stage == "pv" and rep.mode == "pv_only"
    assert "b_gt_1" in rep.attribution.features
    assert rep.shrunk.case.shape.B == 2 and rep.shrunk.case.shape.H == 1
    assert {m for m, _ in fake_gpu.single} == {"pv_only"}               # shrinking runs the failing stage only
    assert rep.repro.startswith("flashcore diagnose --shape 2,1,") and "--bug BATCH_OFFSET --seed 11" in rep.repro
    assert rep.start.hints == ["batch 1 only"]


def test_diagnose_coverage_clean_runs_no_shrinking(fake_gpu):
    rep = rc.diagnose_coverage(seed=1, record=False, show=False, isolate=False)
    assert rep.clean and rep.shrunk is None and rep.repro is None and not fake_gpu.single
    assert not any(iso for _, iso, _ in fake_gpu.diagnosed)


def test_run_coverage_end_to_end_on_fakes(fake_gpu):
    rep = rc.run_coverage(["full", "qk_only"], bugs=("BATCH_OFFSET",), seed=2, record=False, show=False)
    assert rep.mode == "full" and rep.attribution.literals == (("b_gt_1", True),)
    assert rep.repro.startswith("flashcore run --debug full --shape 2,1,")


def test_run_coverage_uniform_p_alone_runs_non_causal_cases():
    assert {c.causal for c in rc.cases_for(modes=["uniform_p"])} == {False}
    assert {c.causal for c in rc.cases_for(modes=["uniform_p", "full"])} == {False, True}


def test_false_alarm_sweep_has_at_least_100_cases():
    from tests import test_gpu_coverage as g
    assert g.N_CASES * len(g.FALSE_ALARM_INPUTS) * g.FALSE_ALARM_SEEDS >= 100
    assert set(g.FALSE_ALARM_INPUTS) == {"randn", "large", "uniform"}


def test_sweep_goes_on_after_a_harness_error():
    def per_case(c):
        if c.shape.B > 1:
            raise FlashCoreError("buffer too large")
        return rc.Outcome(c, cov.features_of(c), False)
    outs = rc.run_sweep(cov.coverage_set(), per_case)
    assert len(outs) == len(cov.coverage_set())
    bad = [o for o in outs if o.failed]
    assert bad and all(o.stage == "error" and "buffer too large" in o.detail for o in bad)

    def no_runs(c, m):
        raise AssertionError("nothing to rerun for a harness error")
    rep = rc.conclude("diagnose", outs, no_runs)
    assert rep.stage == "error" and rep.mode is None and rep.shrunk.runs == 0
    assert rep.repro.startswith("flashcore diagnose --shape 2,")


def test_report_prints_table_and_verdict(fake_gpu):
    with rc.console.capture() as cap:
        rc.diagnose_coverage(bugs=("BATCH_OFFSET",), seed=11, record=False, show=True)
    text = cap.get()
    for needle in ("coverage set", "first failing stage: PV", "separating feature:", "B > 1",
                   "smallest failing shape:", "reproduce: flashcore diagnose --shape 2,1,", "FAIL", "PASS"):
        assert needle in text, needle
    with rc.console.capture() as cap:
        rc.diagnose_coverage(seed=1, record=False, show=True)
    assert f"no stage fails at any of the {len(cov.coverage_set())} coverage shapes" in cap.get()
    with rc.console.capture() as cap:
        rc.run_coverage(["full"], bugs=("BATCH_OFFSET",), seed=4, record=False, show=True)
    text = cap.get()
    assert "first failing mode: full" in text and "reproduce: flashcore run --debug full --shape 2,1," in text


# ------------------------------------------------------------------ the command line
def invoke(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("args,needle", [
    (["diagnose", "--sk", "640"], "--sk needs --shape"),
    (["run", "--sk", "640"], "--sk needs --shape"),
    (["diagnose", "--head-dim", "96"], "unsupported head dim 96"),
    (["diagnose", "--bug", "NOPE"], "valid bugs"),
    (["diagnose", "--inputs", "zeros"], "unknown input set"),
])
def test_sweep_usage_errors_one_line_exit_2(args, needle):
    r = invoke(*args)
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and needle in lines[0], r.output


@pytest.mark.skipif(gpu_missing_reason() is None, reason="a GPU is present")
@pytest.mark.parametrize("cmd", [["diagnose"], ["run"], ["run", "--debug", "all"]])
def test_sweep_without_gpu_is_one_line_exit_2(cmd):
    r = invoke(*cmd)
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "no CUDA GPU" in lines[0], r.output


@pytest.fixture
def fake_sweeps(monkeypatch):
    calls = []

    def fake(kind, clean):
        def f(*args, **kw):
            calls.append((kind, args, kw))
            return SimpleNamespace(clean=clean)
        return f
    monkeypatch.setattr(rc, "diagnose_coverage", fake("diagnose", False))
    monkeypatch.setattr(rc, "run_coverage", fake("run", True))
    return calls


def test_cli_without_shape_sweeps_the_coverage_set(fake_sweeps):
    r = invoke("diagnose", "--bug", "batch_offset", "--head-dim", "128", "--seed", "3", "--no-record")
    assert r.exit_code == 1, r.output                                       # a failing sweep exits 1
    kind, args, kw = fake_sweeps[-1]
    assert kind == "diagnose" and kw["bugs"] == ("BATCH_OFFSET",) and kw["seed"] == 3 and kw["record"] is False
    assert args[0] and {c.shape.D for c in args[0]} == {128}
    r = invoke("run", "--debug", "all", "--causal")
    assert r.exit_code == 0, r.output
    kind, args, kw = fake_sweeps[-1]
    assert kind == "run" and args[0] == ["qk_only", "softmax_only", "pv_only", "uniform_p", "full", "fp32_p"]
    assert {c.causal for c in args[1]} == {True} and kw["isolate"] is True


def test_cli_with_shape_runs_one_shape(fake_sweeps, monkeypatch):
    import harness.run.diagnose as diag
    seen = []
    monkeypatch.setattr(diag, "diagnose", lambda shape, **kw: seen.append(shape) or SimpleNamespace(clean=True))
    r = invoke("diagnose", "--shape", "mission")
    assert r.exit_code == 0 and seen == [Shape(1, 8, 512, 512, 64)] and not fake_sweeps
