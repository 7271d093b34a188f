"""References against direct loop formulas, their properties, and the precision floor."""

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from harness.check import reference as ref

from harness.check import stages
from harness.check import metrics as met
from harness.check.inputs import make_inputs
from harness.check.shapes import Shape


def loop_attention(q, k, v, scale, causal):
    """Plain loops, float64: S, m, l, P, O, LSE for one head."""
    Sq, Sk, D = q.shape[0], k.shape[0], v.shape[1]
    S = np.full((Sq, Sk), -math.inf)
    for i in range(Sq):
        for j in range(Sk):
            if causal and j > i:
                continue
            S[i, j] = scale * sum(float(q[i, d]) * float(k[j, d]) for d in range(q.shape[1]))
    m = [max(S[i]) for i in range(Sq)]
    l = [sum(math.exp(S[i, j] - m[i]) for j in range(Sk)) for i in range(Sq)]
    P = np.array([[math.exp(S[i, j] - m[i]) / l[i] for j in range(Sk)] for i in range(Sq)])
    O = np.array([[sum(P[i, j] * float(v[j, d]) for j in range(Sk)) for d in range(D)] for i in range(Sq)])
    lse = np.array([m[i] + math.log(l[i]) for i in range(Sq)])
    return S, np.array(m), np.array(l), P, O, lse


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sq,sk", [(5, 7), (6, 6), (9, 4)])
def test_exact_references_match_loops(sq, sk, causal):
    rng = np.random.default_rng(sq * 100 + sk)
    q, k, v = (rng.standard_normal((n, 8)).astype(np.float16) for n in (sq, sk, sk))
    scale = 0.37
    S, m, l, P, O, lse = loop_attention(q, k, v, scale, causal)
    s = ref.exact_scores(q, k, scale, causal)
    assert np.array_equal(np.isneginf(s), np.isneginf(S))
    np.testing.assert_allclose(s[np.isfinite(S)], S[np.isfinite(S)], rtol=1e-12, atol=1e-12)
    m2, l2, p2 = ref.exact_softmax(s)
    np.testing.assert_allclose(m2, m, rtol=1e-12)
    np.testing.assert_allclose(l2, l, rtol=1e-12)
    np.testing.assert_allclose(p2, P, rtol=1e-12, atol=1e-15)
    o2, lse2 = ref.exact_attention(q, k, v, scale, causal)
    np.testing.assert_allclose(o2, O, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lse2, lse, rtol=1e-12)


def test_uniform_p_reference_is_column_mean():
    rng = np.random.default_rng(3)
    v = rng.standard_normal((11, 8)).astype(np.float16)
    o = ref.uniform_p_output(v, 6)
    for i in range(6):
        for d in range(8):
            assert o[i, d] == pytest.approx(sum(float(v[j, d]) for j in range(11)) / 11, rel=1e-12)
    assert np.ptp(o, axis=0).max() == 0.0          # rows identical
    kp = ref.kp_uniform(v, 6)
    assert np.ptp(kp.astype(np.float64), axis=0).max() == 0.0


@settings(max_examples=25, deadline=None)
@given(sq=st.integers(1, 40), sk=st.integers(1, 150), causal=st.booleans(),
       scale=st.floats(0.05, 1.0), seed=st.integers(0, 2**31 - 1))
def test_softmax_properties(sq, sk, causal, scale, seed):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((n, 64)).astype(np.float16) for n in (sq, sk, sk))
    s = ref.exact_scores(q, k, scale, causal)
    # -inf exactly where a key is invisible (j > i under causal), nowhere else
    expect_masked = np.arange(sk)[None, :] > np.arange(sq)[:, None] if causal else np.zeros((sq, sk), bool)
    assert np.array_equal(np.isneginf(s), expect_masked)
    _, _, p = ref.exact_softmax(s)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(p[expect_masked] == 0)
    # the kernel-precision reference stays close to the exact one (fp16 rounding scale)
    o, _ = ref.exact_attention(q, k, v, scale, causal)
    kp, _ = ref.kp_attention(q, k, v, scale, causal, 64)
    assert np.abs(kp.astype(np.float64) - o).max() <= 4e-3 * max(1.0, np.abs(o).max())
    mk, lk, pk = ref.kp_softmax(s.astype(np.float32), 64)
    np.testing.assert_allclose(pk.sum(axis=1, dtype=np.float64), 1.0, rtol=1e-5)


def _floor(mode, shape, inputs="randn", seed=0, causal=False):
    q, k, v = make_inputs(shape, inputs, seed)
    scale = 1 / math.sqrt(shape.D)
    inj = stages.injected_inputs(mode, q, k, v, causal, scale)
    refs = stages.stage_references(mode, q, k, v, causal, scale, 64, inj)
    exact, kp = refs["O"]
    return float(met.abs_error(kp, exact).max())


def test_floor_fp16_p_is_order_1e3_and_fp32_p_far_smaller():
    mission = Shape(1, 8, 512, 512, 64)
    f16 = _floor("full", mission)
    f32 = _floor("fp32_p", mission)
    assert 1e-4 <= f16 <= 1e-2, f16          # fp16 P (and fp16 O) explain ~1e-3 at most
    assert f32 < f16 / 50, (f32, f16)          # fp32 P: far smaller
    assert _floor("full", mission, "large") <= 1e-2


def test_exact_attention_memory_stays_sane_at_8192():
    """One head at S = 8192 must not build the [S, S] float64 matrix (512 MiB)."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((8192, 64)).astype(np.float16) for _ in range(3))
    tracemalloc.start()
    ref.exact_attention(q, k, v, 0.125, True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 200 * 2**20, peak / 2**20


def test_inputs_are_fresh_fp16_and_reproducible():
    s = Shape(1, 2, 33, 40, 64)
    a = make_inputs(s, "randn", 1)
    b = make_inputs(s, "randn", 1)
    c = make_inputs(s, "randn", 2)
    assert all(x.dtype == np.float16 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert np.abs(a[0]).max() > 0                  # never zeros
    q, _, _ = make_inputs(s, "large", 1)
    assert np.abs(q.astype(np.float32)).max() > 20
    q, _, _ = make_inputs(s, "identical_rows", 1)
    assert np.ptp(q.astype(np.float32), axis=2).max() == 0


def test_each_mode_names_its_reference_as_data_and_it_covers_what_the_mode_writes():
    """A mode's reference is part of its data (Mode.reference, Mode.injects): the builder it
    names exists and returns exactly the outputs the mode writes."""
    import numpy as np
    from debug_modes.registry import MODES
    from harness.check import stages
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, n, 64)).astype(np.float16) for n in (33, 70, 70))
    for m in MODES.values():
        assert m.reference in stages.REFERENCES, m.name
        inj = stages.injected_inputs(m.name, q, k, v, False, 0.125, 128)
        assert set(inj) == ({m.injects} if m.injects else set()), m.name
        refs = stages.stage_references(m.name, q, k, v, False, 0.125, 64, inj, 128)
        assert set(refs) == {b.output for b in m.writes}, m.name


def test_fp32_truncation_by_mantissa_bits_matches_the_rounded_rule_everywhere():
    """reference._trunc32's host form (clear 29 mantissa bits) equals the round-then-step-back
    rule bit for bit: normal values, fp32 subnormals, overflow, zeros, infinities and NaN."""
    from harness.check.reference import _trunc32, _trunc32_rounded
    rng = np.random.default_rng(7)
    x = rng.standard_normal(20000) * rng.choice([1e-45, 1e-40, 1e-30, 1.0, 1e3, 3.4e38, 1e39], size=20000)
    x[:8] = [0.0, -0.0, np.inf, -np.inf, np.nan, 3.4028235677973366e38, -3.4028235677973366e38, 2.0 ** -149]
    with np.errstate(over="ignore"):
        a, b = _trunc32(x), _trunc32_rounded(x)
    assert a.dtype == b.dtype == np.float32
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.array_equal(a.view(np.int32)[~np.isnan(a)], b.view(np.int32)[~np.isnan(b)])
    assert np.abs(a[np.isfinite(x) & np.isfinite(a)]).max() > 1e38      # the edge cases were reached
