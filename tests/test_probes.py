"""The input probes on the host: each closed form holds for the float64 reference of its own
inputs, and the readings name what synthetic kernel outputs show (keys lost at the tail, keys
diluted by unmasked padding, keys P.V skips, rows holding another row's answer, the rescale)."""

import numpy as np
import pytest

from harness.check import probes as pr
from harness.check import spec_reference as sref
from harness.check.shapes import Shape

SHAPE = Shape(2, 3, 81, 97, 64)


@pytest.mark.parametrize("causal", [False, True])
def test_closed_forms_hold_for_the_exact_reference(causal):
    rng = np.random.default_rng(0)
    n = pr.visible_counts(SHAPE.Sq, SHAPE.Sk, causal)
    (u,) = pr.PROBES["uniform"].build(SHAPE, causal, rng)
    ex = sref.exact(u.q, u.k, u.v, 0.125, causal)
    if causal:
        mean = np.cumsum(u.v, axis=2)[:, :, np.minimum(np.arange(SHAPE.Sq), SHAPE.Sk - 1)] / n[:, None]
    else:
        mean = np.broadcast_to(u.v.mean(axis=2, keepdims=True), (SHAPE.B, SHAPE.H, SHAPE.Sq, SHAPE.D))
    assert np.allclose(ex["o"], mean, atol=1e-12) and np.allclose(ex["lse"], np.log(n), atol=1e-12)
    for l in pr.PROBES["onehot"].build(SHAPE, causal, rng):
        o = sref.exact(l.q, l.k, l.v, 0.125, causal)["o"]
        w = pr.key_weights([o], [l], SHAPE.Sq, SHAPE.Sk, causal)[..., l.keys]
        assert np.allclose(w, pr.expected_weights(SHAPE.Sq, SHAPE.Sk, causal)[:, l.keys], atol=1e-12)
    (d,) = pr.PROBES["dominant"].build(SHAPE, causal, rng, 0.125)
    o = sref.exact(d.q, d.k, d.v, 0.125, causal)["o"]
    assert np.allclose(o, np.take_along_axis(d.v, d.perm[..., None], axis=2), atol=1e-5)
    for l in pr.PROBES["identity"].build(SHAPE, causal, rng):
        ex = sref.exact(l.q, l.k, l.v, 0.125, causal)
        p = np.exp(ex["s"] - ex["m"][..., None]) / ex["l"][..., None]
        assert np.allclose(ex["o"][..., : l.keys.stop - l.keys.start], p[..., l.keys], atol=1e-12)


def _weights(f, causal=False):
    launches = pr.PROBES["onehot"].build(SHAPE, causal, np.random.default_rng(0))
    n = pr.visible_counts(SHAPE.Sq, SHAPE.Sk, causal)[:, None]
    outs = []
    for l in launches:
        j = np.arange(l.keys.start, l.keys.stop)
        o = np.zeros((SHAPE.B, SHAPE.H, SHAPE.Sq, SHAPE.D))
        o[..., j - l.keys.start] = f(j)[None, :] / n
        outs.append(o.astype(np.float16).astype(np.float64))
    return pr.key_weights(outs, launches, SHAPE.Sq, SHAPE.Sk, causal), pr.expected_weights(SHAPE.Sq, SHAPE.Sk, causal)


@pytest.mark.parametrize("f,kind,says", [
    (lambda j: np.ones(len(j)), "ok", "right weight"),
    (lambda j: np.full(len(j), 97 / 128), "diluted", "padded keys"),
    (lambda j: np.where(j == 96, 0, 97 / 96), "lost_tail", "keys 96 "),
    (lambda j: np.where(j >= 64, 0, 97 / 64), "lost_tail", "keys 64-96"),
    (lambda j: np.where(j >= 64, 0, 1.0), "pv_lost", "P.V skips them"),
    (lambda j: np.where(j == 5, 2.0, 1.0), "doubled", "keys 5 (key tile 0, positions 5"),
])
def test_key_weights_are_read_in_words(f, kind, says):
    w, want = _weights(f)
    got_kind, words = pr.describe_weights(w, want, 0.002, 64)
    assert got_kind == kind and says in words, words


def test_dominant_readings():
    shape = Shape(1, 2, 128, 128, 64)
    (d,) = pr.PROBES["dominant"].build(shape, False, np.random.default_rng(3), 0.125)
    right = np.take_along_axis(d.v, d.perm[..., None], axis=2)
    swapped = right[:, :, np.arange(128) ^ 8]
    fail = np.abs(swapped - right).max(-1) > 1e-3
    assert pr.dominant_reading(swapped, d.v, d.perm, 1e-4, 64, fail)[0] == "moved"
    late = right.copy()
    late[d.perm >= 64] += 0.3                              # wrong only where the max moves
    fail = np.abs(late - right).max(-1) > 1e-3
    assert pr.dominant_reading(late, d.v, d.perm, 1e-4, 64, fail)[0] == "rescale"
    garbage = right + np.random.default_rng(1).standard_normal(right.shape)
    fail = np.abs(garbage - right).max(-1) > 1e-3
    assert pr.dominant_reading(garbage, d.v, d.perm, 1e-4, 64, fail)[0] == "scores"
    inf = right.copy()
    inf[d.perm >= 64] = np.inf
    fail = ~np.isfinite(inf).all(-1)
    assert pr.dominant_reading(inf, d.v, d.perm, 1e-4, 64, fail)[0] == "overflow"


def test_the_decision_procedure_names_stages():
    from harness.run.probe_sweep import ProbeResult, decide
    ok = lambda n: ProbeResult(n, SHAPE, False)                              # noqa: E731
    bad = lambda n, kind, words="": ProbeResult(n, SHAPE, False, passed=False, kind=kind, words=words)  # noqa: E731
    base = {n: ok(n) for n in pr.ORDER}
    assert decide(base)[0] is None
    assert decide({**base, "uniform": bad("uniform", "same_wrong"), "onehot": bad("onehot", "diluted")})[0] == "qk"
    assert decide({**base, "uniform": bad("uniform", "same_wrong"), "onehot": bad("onehot", "pv_lost")})[0] == "pv"
    assert decide({**base, "dominant": bad("dominant", "moved")})[0] == "pv"
    assert decide({**base, "dominant": bad("dominant", "rescale")})[0] == "glue"
    assert decide({**base, "dominant": bad("dominant", "scores")})[0] == "qk"
    assert decide({**base, "large": bad("large", "wrong")})[0] == "softmax"
    race = bad("dominant", "race", "12 elements differ between two launches on the same inputs: a race")
    assert decide({**base, "dominant": race})[0] == "glue"
