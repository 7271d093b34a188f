"""The coverage set, on CPU: it covers every pair of shape features that can occur
together, and its lengths come from the kernel's tile table."""

from __future__ import annotations

from dataclasses import replace

import pytest

from debug_modes import BUGS
from harness.check import coverage as cov
from harness.check.coverage import FEATURES, Case
from harness.check.shapes import NAMED, Shape
from harness.errors import UsageError
from kernels import registry


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
    # the registry's default is looked up when called, so a kernel swapped in is the one checked
    monkeypatch.setattr(registry, "DEFAULT", OTHER_TILES)
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
