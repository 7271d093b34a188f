"""The pass rule, poison detection and the metrics on planted errors."""

import numpy as np

from harness.check import metrics as met


def _case(seed=0, shape=(2, 3, 40, 64)):
    rng = np.random.default_rng(seed)
    exact = rng.standard_normal(shape)
    kp = exact.astype(np.float16)                       # a floor of fp16 rounding
    return exact, kp


def test_kernel_precision_output_passes_with_ratio_one():
    exact, kp = _case()
    m, err = met.compare("full", "O", "x", kp.copy(), exact, kp)
    assert m.passed and m.err_over_floor == 1.0 and m.n_unwritten == 0 and m.n_nonfinite == 0
    assert err.shape == exact.shape


def test_planted_error_fails_and_is_located():
    exact, kp = _case()
    bad = kp.copy()
    bad[1, 2, 17, 5] += np.float16(0.5)
    m, _ = met.compare("full", "O", "x", bad, exact, kp)
    assert not m.passed and m.worst_index == (1, 2, 17, 5) and m.n_over_tol == 1


def test_unwritten_elements_are_counted_apart_from_nan():
    exact, kp = _case()
    out = met.poison(exact.shape, np.float16)
    out[..., :32] = kp[..., :32]
    out[0, 0, 0, 0] = np.float16(np.nan)                # a computed NaN, not the poison
    m, _ = met.compare("full", "O", "x", out, exact, kp)
    assert not m.passed
    assert m.n_unwritten == exact[..., 32:].size
    assert m.n_nonfinite == 1


def test_masked_infinities_match_and_mismatch():
    exact = np.array([[0.5, -np.inf], [1.0, 2.0]])
    kp = exact.astype(np.float32)
    good = kp.copy()
    m, _ = met.compare("qk_only", "S", "QK", good, exact, kp)
    assert m.passed
    bad = kp.copy()
    bad[1, 1] = -np.inf                                 # masked where it should not be
    m, _ = met.compare("qk_only", "S", "QK", bad, exact, kp)
    assert not m.passed and m.n_nonfinite == 1


def test_row_spread():
    o = np.tile(np.arange(8, dtype=np.float16), (1, 1, 5, 1))
    assert met.row_spread(o) == 0.0
    o[0, 0, 3, 2] += 1
    assert met.row_spread(o) == 1.0
