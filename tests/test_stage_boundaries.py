"""The stage-boundary rule (docs/DESIGN.md, "Stage boundaries"): [rows, keys] references and
injected inputs carry the tile-padded key width, with what the previous stage must produce
there (S = -inf, P = 0), so a kernel that leaves the tail tile's padded keys unmasked fails QK."""

import numpy as np
import pytest

from debug_modes import BUGS, MODES
from harness.toolchain.variant import Variant
from harness.check import metrics as met
from harness.check import stages
from harness.check.inputs import make_inputs
from harness.check.shapes import Shape

SHAPE = Shape(1, 2, 40, 100, 64)     # Sk = 100: a tail tile of 36 keys, padded to 128


def _pad():
    return Variant("qk_only", 64).padded_keys(SHAPE.Sk)


def test_padded_width_is_whole_key_tiles():
    v = Variant("qk_only", 64)
    assert v.padded_keys(100) == 128 and v.padded_keys(128) == 128 and v.padded_keys(1) == v.block_n


@pytest.mark.parametrize("mode,name,fill", [("softmax_only", "S_in", -np.inf), ("pv_only", "P_in", 0.0)])
def test_injected_inputs_padded_with_what_the_previous_stage_must_produce(mode, name, fill):
    q, k, v = make_inputs(SHAPE, "randn", 3)
    inj = stages.injected_inputs(mode, q, k, v, False, 0.125, _pad())[name]
    assert inj.shape == (1, 2, 40, 128)
    assert np.all(inj[..., SHAPE.Sk:] == fill)
    assert np.all(np.isfinite(inj[..., :SHAPE.Sk]))


def test_qk_reference_requires_minus_inf_in_padded_columns():
    q, k, v = make_inputs(SHAPE, "randn", 4)
    exact, kp = stages.stage_references("qk_only", q, k, v, False, 0.125, 64, {}, _pad())["S"]
    assert exact.shape == kp.shape == (1, 2, 40, 128)
    assert np.all(np.isneginf(exact[..., SHAPE.Sk:])) and np.all(np.isneginf(kp[..., SHAPE.Sk:]))
    # A kernel that leaves the padded keys unmasked (score q.0 = 0) fails the QK check.
    unmasked = kp.copy()
    unmasked[..., SHAPE.Sk:] = 0.0
    m, _ = met.compare("qk_only", "S", "QK", unmasked, exact, kp)
    assert not m.passed and m.n_over_tol == 2 * 40 * (128 - SHAPE.Sk)
    m_ok, _ = met.compare("qk_only", "S", "QK", kp, exact, kp)
    assert m_ok.passed


def test_softmax_reference_has_zero_p_in_padded_columns():
    q, k, v = make_inputs(SHAPE, "randn", 5)
    inj = stages.injected_inputs("softmax_only", q, k, v, False, 0.125, _pad())
    refs = stages.stage_references("softmax_only", q, k, v, False, 0.125, 64, inj, _pad())
    exact, kp = refs["P"]
    assert exact.shape == (1, 2, 40, 128)
    assert np.all(exact[..., SHAPE.Sk:] == 0) and np.all(kp[..., SHAPE.Sk:] == 0)
    np.testing.assert_allclose(exact.sum(-1), 1.0, rtol=1e-12)


def test_matrix_buffers_are_windowed_and_padded():
    for m in MODES.values():
        for b in m.reads + m.writes:
            if b.param in ("S_in", "P_in", "S_out", "P_out"):
                assert b.is_matrix and b.shape_for(SHAPE, 16, 128) == (1, 2, 16, 128)
    assert {n for n, m in MODES.items() if m.windowed} == {"qk_only", "softmax_only", "pv_only"}


def test_shape_dependent_bugs_name_their_feature():
    assert {b.name for b in BUGS.values() if b.shows_when} >= {"TAIL_UNMASKED", "SHORT_UNMASKED", "KV_LOOP_SQ",
                                                               "BATCH_OFFSET", "D128_COLS", "Q_TAIL_SWAP"}
    assert BUGS["TAIL_UNMASKED"].stage == BUGS["SHORT_UNMASKED"].stage == "qk"
