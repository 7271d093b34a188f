"""The array-module-generic references, metrics and folds on the host (NumPy):

- the host path gives bit for bit what the NumPy specification gave before the change
  (tests/legacy_numpy_spec.py, a frozen copy);
- references for windows of rows are the whole problem's, restricted to those rows;
- the device blocking policy (every head at once, row chunks by a budget) computes the same
  numbers, run here on NumPy dressed up as a device module;
- every xp function the check layer calls exists in CuPy;
- window planning, merged metrics with absolute worst indices, folds of stacked windows
  indexed by absolute row, the (b, h) and tail hints;
- a RunResult carries numbers and small folds only (it is pickled between processes).
"""

import pickle
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from debug_modes.registry import MODES
from harness.toolchain.variant import Variant
from harness.check import localise, metrics as met, reference as ref, stages, windows
from harness.check.inputs import make_inputs
from harness.check.shapes import Shape
from harness.check.xp import array_module, to_host
from harness.errors import UsageError
from harness.run import gpu
from tests import legacy_numpy_spec as legacy

ROOT = Path(__file__).resolve().parent.parent
ALL_MODES = ("qk_only", "softmax_only", "pv_only", "uniform_p", "full", "fp32_p")
SHAPES = [  # tails, Sq != Sk, B > 1, causal
    (Shape(1, 2, 40, 100, 64), False),
    (Shape(2, 3, 100, 100, 64), True),
    (Shape(1, 2, 130, 640, 128), True),
    (Shape(1, 1, 200, 1500, 64), False),
]


def _pad(shape):
    return Variant("qk_only", shape.D).padded_keys(shape.Sk)


def _refs(module, mode, q, k, v, causal, sk_pad, rows=None, new=True):
    if new:
        inj = module.injected_inputs(mode, q, k, v, causal, 0.125, sk_pad, rows)
        return inj, module.stage_references(mode, q, k, v, causal, 0.125, 64, inj, sk_pad, rows)
    inj = module.injected_inputs(mode, q, k, v, causal, 0.125, sk_pad)
    return inj, module.stage_references(mode, q, k, v, causal, 0.125, 64, inj, sk_pad)


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


# ------------------------------------------------------------------ host path = the old specification
@pytest.mark.parametrize("chunk", [None, 1 << 14], ids=["chunk-default", "chunk-small"])
@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("shape,causal", SHAPES, ids=[f"{s.label}{'-causal' if c else ''}" for s, c in SHAPES])
def test_host_path_is_bit_for_bit_the_old_numpy_spec(mode, shape, causal, chunk, monkeypatch):
    if mode == "uniform_p" and causal:
        pytest.skip("uniform_p has no causal form")
    if chunk:     # both at a budget small enough that the row chunks split every shape
        monkeypatch.setattr(legacy, "ROW_CHUNK_ELEMS", chunk)
        monkeypatch.setattr(ref, "ROW_CHUNK_ELEMS", chunk)
    q, k, v = make_inputs(shape, "randn", 11)
    inj_old, old = _refs(legacy, mode, q, k, v, causal, _pad(shape), new=False)
    inj_new, new = _refs(stages, mode, q, k, v, causal, _pad(shape))
    assert inj_old.keys() == inj_new.keys() and all(_same(inj_old[n], inj_new[n]) for n in inj_old)
    assert old.keys() == new.keys()
    for name in old:
        for i, kind in enumerate(("exact", "kernel-precision")):
            assert _same(old[name][i], new[name][i]), f"{mode} {name} {kind} differs from the old NumPy spec"


def test_attention_functions_take_rows_and_leading_axes():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 3, n, 64)).astype(np.float16) for n in (50, 70, 70))
    rows = np.array([3, 4, 40, 49])
    o, lse = ref.exact_attention(q, k, v, 0.2, True, rows)
    o_kp, lse_kp = ref.kp_attention(q, k, v, 0.2, True, 64, False, rows)
    for b in range(2):
        for h in range(3):
            o1, lse1 = legacy.exact_attention(q[b, h], k[b, h], v[b, h], 0.2, True)
            np.testing.assert_allclose(o[b, h], o1[rows], rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(lse[b, h], lse1[rows], rtol=1e-13)
            o2, lse2 = legacy.kp_attention(q[b, h], k[b, h], v[b, h], 0.2, True, 64)
            assert np.abs(o_kp[b, h].astype(float) - o2[rows].astype(float)).max() <= 2.0**-10
            np.testing.assert_allclose(lse_kp[b, h], lse2[rows], rtol=1e-6)


# ------------------------------------------------------------------ windows of rows
@pytest.mark.parametrize("mode", ["qk_only", "softmax_only", "pv_only"])
@pytest.mark.parametrize("causal", [False, True])
def test_window_references_are_the_whole_problems_rows(mode, causal):
    shape = Shape(2, 2, 300, 200, 64)                  # 64-row tiles: windows 0, 2 and the tail 4
    q, k, v = make_inputs(shape, "randn", 5)
    wins = windows.merge(windows.tile_window(t, shape.Sq, 64) for t in (0, 2, 4))
    rows = windows.row_index(wins)
    inj_w, win = _refs(stages, mode, q, k, v, causal, _pad(shape), rows)
    inj_a, whole = _refs(stages, mode, q, k, v, causal, _pad(shape))
    for n in inj_w:
        assert _same(inj_w[n], inj_a[n][:, :, rows])
    for name in whole:
        exact_w, kp_w = win[name]
        exact_a, kp_a = whole[name][0][:, :, rows], whole[name][1][:, :, rows]
        np.testing.assert_allclose(exact_w, exact_a, rtol=1e-13, atol=1e-300)
        # fp32 sums of D products: BLAS may order a smaller matrix's sums differently (fp32
        # ulps of the largest partial sum, ~8 here, at most)
        np.testing.assert_allclose(kp_w.astype(float), kp_a.astype(float), rtol=2**-20, atol=2**-16)


def test_causal_window_masks_by_absolute_row():
    shape = Shape(1, 1, 256, 256, 64)
    q, k, v = make_inputs(shape, "randn", 2)
    rows = np.arange(128, 192)
    s = stages.stage_references("qk_only", q, k, v, True, 0.125, 64, {}, 256, rows)["S"][0]
    assert s.shape == (1, 1, 64, 256)
    visible = np.isfinite(s[0, 0])
    assert np.array_equal(visible, np.arange(256)[None, :] <= rows[:, None])


def test_plan_whole_when_small_else_first_middle_last():
    assert windows.plan(512, 64, 8 * 512 * 4) == [(0, 512)]
    big = 8 * 16384 * 4                                  # a row of [1, 8, rows, 16384] fp32
    wins = windows.plan(16384 - 20, 128, big)
    assert wins == [(0, 128), (8192, 128), (16256, 16364 - 16256)]
    assert wins[-1][0] + wins[-1][1] == 16364           # the last window reaches Sq: the tail is in it
    assert all(r0 % 128 == 0 for r0, _ in wins)
    assert windows.describe(windows.ranges(wins), 16364) == "0-127,8192-8319,16256-16363"
    assert windows.describe([(0, 512)], 512) == "all"


def test_plan_requests():
    big = 8 * 65536 * 4
    assert windows.plan(1024, 128, big, "all") == [(0, 1024)]
    assert windows.plan(1024, 128, big, (1, 2, -1)) == [(128, 256), (896, 128)]   # adjacent tiles merged
    with pytest.raises(UsageError, match="out of range"):
        windows.plan(1024, 128, big, (8,))
    with pytest.raises(UsageError, match=r"ask for at most \d+ query tiles"):
        windows.plan(65536, 128, big, "all", "1,8,65536,128")
    assert windows.parse_rows("all") == "all" and windows.parse_rows("0,5,-1") == (0, 5, -1)
    assert windows.parse_rows(None) is None
    with pytest.raises(UsageError):
        windows.parse_rows("first")


def test_plan_windows_only_for_matrix_modes():
    shape = Shape(1, 8, 65536, 65536, 128)
    for mode in ALL_MODES:
        v = Variant(mode, 128, **gpu.tiles_for(shape))
        wins = gpu.plan_windows(mode, shape, v)
        if MODES[mode].windowed:
            assert len(wins) == 3 and sum(n for _, n in wins) == 3 * v.block_m
            checked = sum(n for _, n in wins) * gpu.row_bytes(mode, shape, v.padded_keys(shape.Sk))
            assert checked <= windows.MAX_CHECKED_BYTES
        else:
            assert wins == [(0, 65536)]


# ------------------------------------------------------------------ merged metrics, absolute indices
def _case(shape=(2, 3, 300, 64), seed=0):
    rng = np.random.default_rng(seed)
    exact = rng.standard_normal(shape)
    kp = exact.astype(np.float16)
    return exact, kp


def test_metrics_over_stacked_windows_are_the_metrics_of_those_rows():
    exact, kp = _case()
    got = kp.copy()
    got[1, 2, 270, 7] += np.float16(0.25)               # in the last window
    got[0, 0, 100, 3] += np.float16(4.0)                # outside every window: not checked
    wins = [(0, 64), (128, 64), (256, 44)]
    rows = windows.row_index(wins)
    m, err = met.compare("pv_only", "O", "PV", got[:, :, rows], exact[:, :, rows], kp[:, :, rows], rows=rows)
    assert m.worst_index == (1, 2, 270, 7)             # the absolute row
    assert m.n_over_tol == 1 and m.n_elements == 2 * 3 * len(rows) * 64
    ref_m, _ = met.compare("pv_only", "O", "PV", got[:, :, rows], exact[:, :, rows], kp[:, :, rows])
    assert ref_m.worst_index == (1, 2, 64 + 64 + (270 - 256), 7)        # the stacked index, without rows
    assert (m.max_abs, m.mean_abs, m.rel_l2, m.floor, m.tol) == (ref_m.max_abs, ref_m.mean_abs, ref_m.rel_l2,
                                                                  ref_m.floor, ref_m.tol)


def test_fold_of_stacked_windows_indexes_absolute_rows():
    rng = np.random.default_rng(3)
    full = rng.uniform(0, 0.5, (2, 2, 300, 256))
    full[1, 0, 270, 200] = 50.0                         # last window, key tile 3
    full[0, 1, 130:132, :] = 7.0                        # middle window, rows 2-3 of tile 2
    wins = [(0, 64), (128, 64), (256, 44)]
    rows = windows.row_index(wins)
    f = localise.fold(full[:, :, rows], 1.0, "qk_only/S", 64, 64, n_keys=256, row_ranges=windows.ranges(wins),
                      n_rows=300)
    only_checked = np.zeros_like(full)                  # the whole problem's fold, errors where checked
    only_checked[:, :, rows] = full[:, :, rows]
    g = localise.fold(only_checked, 1.0, "qk_only/S", 64, 64, n_keys=256)
    assert f.tiles.shape == g.tiles.shape == (5, 4)
    for t in (0, 2, 4):                                  # checked tiles: the whole problem's fold
        np.testing.assert_array_equal(f.tiles[t], g.tiles[t])
    assert np.isnan(f.tiles[[1, 3]]).all()              # unchecked tiles say so
    assert f.tiles[4, 3] == 50.0 and f.tiles[2].min() == 7.0
    np.testing.assert_array_equal(f.warps, g.warps)
    np.testing.assert_array_equal(f.fragment, g.fragment)
    np.testing.assert_array_equal(f.key_tiles, g.key_tiles)
    np.testing.assert_array_equal(f.bh, g.bh)
    assert f.row_ranges_text == "0-63,128-191,256-299"


def test_fold_nan_rows_are_absolute():
    e = np.zeros((1, 2, 128, 64))
    e[0, 1, 70, 5] = np.inf
    f = localise.fold(e, 1.0, "O", 64, 64, row_ranges=[(0, 64), (192, 256)], n_rows=256)
    assert f.nonfinite_rows == [(0, 1, 198)]


def _hints(e, output="S", **kw):
    return " | ".join(localise.fold(e, 1.0, output, 64, 64, **kw).hints)


def test_one_batch_one_head_hints():
    e = np.random.default_rng(0).uniform(0, 0.5, (2, 4, 128, 64))
    e[1] = 3.0
    h = _hints(e, "O")
    assert "one batch only: b=1" in h and "widespread" not in h
    e = np.random.default_rng(0).uniform(0, 0.5, (2, 4, 128, 64))
    e[:, 2] = 3.0
    assert "one head only: h=2" in _hints(e, "O")
    e = np.random.default_rng(0).uniform(0, 0.5, (1, 4, 128, 64))
    e[...] = 3.0
    h = _hints(e, "O")
    assert "one head" not in h and "one batch" not in h


def test_tail_key_tile_hint_at_the_padded_width():
    e = np.random.default_rng(1).uniform(0, 0.5, (1, 2, 128, 192))   # Sk = 150 at width 192
    e[..., 150:192] = 5.0                                            # the padded keys unmasked
    assert "the last (tail) key tile only (keys 128-149 valid, 150-191 padding)" in _hints(e, n_keys=150)
    assert "tail" not in _hints(e, n_keys=192)          # no tail: Sk a multiple of the tile
    f = localise.fold(e, 1.0, "qk_only/S", 64, 64, n_keys=150)
    assert f.key_tiles is not None and f.key_tail == 22


def test_tail_query_tile_hint():
    e = np.random.default_rng(1).uniform(0, 0.5, (1, 2, 100, 64))
    e[:, :, 64:] = 5.0
    assert "the last (tail) query tile only (rows 64-99)" in _hints(e, "O")


# ------------------------------------------------------------------ the device policy, on NumPy
class _DevArray(np.ndarray):
    """A host array that claims to live on a device (its type's module is cupy's)."""

    def get(self):
        return np.asarray(self)


_DevArray.__module__ = "cupy._test_fake"


@pytest.fixture
def fake_device(monkeypatch):
    """array_module() answers a module that is not numpy (so the device blocking policy
    applies) but computes with numpy; small budgets force row chunks and head groups."""
    fake = types.ModuleType("fake_cupy")
    fake.__getattr__ = lambda name: getattr(np, name)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(ref, "DEVICE_CHUNK_ELEMS", 1 << 14)
    return lambda a: np.ascontiguousarray(a).view(_DevArray)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_device_blocking_gives_the_host_numbers(fake_device, mode):
    shape, causal = Shape(2, 2, 200, 150, 64), mode != "uniform_p"
    q, k, v = make_inputs(shape, "randn", 9)
    rows = windows.row_index([(0, 64), (128, 64)]) if MODES[mode].windowed else None
    inj_h, host = _refs(stages, mode, q, k, v, causal, _pad(shape), rows)
    dq, dk, dv = (fake_device(a) for a in (q, k, v))
    assert array_module(dq) is sys.modules["cupy"]
    inj_d, dev = _refs(stages, mode, dq, dk, dv, causal, _pad(shape), rows)
    for n in inj_h:
        np.testing.assert_allclose(to_host(inj_d[n]), inj_h[n], rtol=1e-7)
    for name in host:
        exact_h, kp_h = host[name]
        np.testing.assert_allclose(to_host(dev[name][0]), exact_h, rtol=1e-12, atol=1e-300)
        # The kernel-precision reference holds fp32 sums whose order depends on the blocking;
        # through fp16 P that can move it by a part of the floor, never by more.
        floor = float(met.abs_error(kp_h, exact_h).max())
        scale = float(np.abs(exact_h[np.isfinite(exact_h)]).max())
        assert float(met.abs_error(to_host(dev[name][1]), kp_h.astype(float)).max()) <= floor + 2.0**-20 * scale
        m_h, _ = met.compare(mode, name, "x", kp_h, exact_h, kp_h, rows=rows)
        m_d, _ = met.compare(mode, name, "x", fake_device(kp_h), dev[name][0], dev[name][1], rows=rows)
        assert m_d.passed and m_h.passed and m_d.n_elements == m_h.n_elements


def test_every_array_function_the_check_layer_calls_exists_in_cupy():
    cp = pytest.importorskip("cupy")
    names = set()
    for f in list((ROOT / "harness" / "check").glob("*.py")) + [ROOT / "harness" / "run" / "gpu.py"]:
        names |= set(re.findall(r"\bxp\.([a-z_][a-z_0-9.]*)\(", f.read_text()))
    assert names >= {"where", "nextafter", "exp2", "take", "pad"}
    for n in sorted(names):
        obj = cp
        for part in n.split("."):
            assert hasattr(obj, part), f"cupy has no {n}"
            obj = getattr(obj, part)


# ------------------------------------------------------------------ what a RunResult carries
def _judged(shape, mode, plant, rows=None, keep_outputs=True):
    q, k, v = make_inputs(shape, "randn", 4)
    variant = Variant(mode, shape.D)
    sk_pad = variant.padded_keys(shape.Sk)
    row_index = None if rows is None else windows.row_index(rows)
    inj = stages.injected_inputs(mode, q, k, v, False, 0.125, sk_pad, row_index)
    refs = stages.stage_references(mode, q, k, v, False, 0.125, variant.block_n, inj, sk_pad, row_index)
    got = {name: np.array(kp) for name, (_, kp) in refs.items()}     # a copy: planting must not touch kp
    plant(got)
    m = MODES[mode]
    launched = gpu.Launched(got, {b.param: 0 for b in m.writes}, {b.param: 0 for b in m.writes})
    result = gpu.RunResult(variant, shape, 0.125, "randn", 4, reference_device="cpu",
                           rows_checked=None if rows is None else windows.ranges(rows))
    return gpu.judge(result, launched, refs, row_index, folds=True, keep_outputs=keep_outputs), got


def _plant_s(got):
    got["S"][0, 3, 5:9, 70:80] += 1.0


def test_run_result_carries_no_big_arrays():
    shape = Shape(1, 8, 512, 1000, 64)
    rows = [(0, 128), (384, 128)]                       # query tiles 0 and 3 of 128 rows
    result, got = _judged(shape, "qk_only", _plant_s, rows)
    assert got["S"].nbytes > 4 << 20
    assert not result.passed and [f.output for f in result.folds] == ["qk_only/S"]
    m = result.metrics[0]
    assert m.worst_index[2] in range(5, 9) and m.extra["rows_checked"] == [[0, 128], [384, 512]]
    assert result.outputs["S"].shape == result.expected["S"].shape == (1, 1, gpu.SAMPLE_ROWS, gpu.SAMPLE_COLS)
    size = len(pickle.dumps(result))
    assert size < 100_000, size
    arrays = [a for f in result.folds for a in (f.tiles, f.warps, f.fragment, f.key_tiles, f.bh) if a is not None]
    assert sum(a.nbytes for a in arrays) < 100_000
    assert "one head only: h=3" in " ".join(result.folds[0].hints)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_judge_every_mode_keeps_a_corner_of_each_output(mode):
    shape = Shape(1, 2, 200, 300, 64)
    rows = [(0, 128)] if MODES[mode].windowed else None
    result, _ = _judged(shape, mode, lambda got: None, rows)
    assert result.passed and not result.folds
    for b in MODES[mode].writes:
        out, exp = result.outputs[b.output], result.expected[b.output]
        assert out.shape == exp.shape and out.shape[:3] == (1, 1, gpu.SAMPLE_ROWS)
        assert isinstance(out, np.ndarray) and out.ndim == (3 if b.dims == "BHSq" else 4)


def test_judge_counts_writes_outside_the_window_and_races():
    shape = Shape(1, 2, 256, 256, 64)
    rows = [(0, 128)]
    result, _ = _judged(shape, "pv_only", lambda got: None, rows, keep_outputs=False)
    assert result.passed and result.metrics[0].extra["written_outside"] == 0
    q, k, v = make_inputs(shape, "randn", 4)
    variant = Variant("pv_only", 64)
    row_index = windows.row_index(rows)
    inj = stages.injected_inputs("pv_only", q, k, v, False, 0.125, 256, row_index)
    refs = stages.stage_references("pv_only", q, k, v, False, 0.125, 64, inj, 256, row_index)
    got = {"O": np.array(refs["O"][1])}
    bad = gpu.judge(gpu.RunResult(variant, shape, 0.125, "randn", 4, rows_checked=windows.ranges(rows)),
                    gpu.Launched(got, {"O": 3}, {"O": 17}), refs, row_index)
    m = bad.metrics[0]
    assert not bad.passed and m.extra["written_outside"] == 17 and m.extra["nondeterministic"] == 3
    assert bad.rows_text == "0-127"


# ------------------------------------------------------------------ settings and the command line
def test_check_settings_reach_run_mode_defaults_and_are_restored(monkeypatch):
    monkeypatch.delenv(gpu.ENV_REFERENCE_DEVICE, raising=False)
    monkeypatch.delenv(gpu.ENV_ROWS, raising=False)
    assert gpu.reference_device_of() == "auto" and gpu.rows_request_of() is None
    with gpu.check_settings("cpu", "0,-1"):
        assert gpu.reference_device_of() == "cpu" and gpu.rows_request_of() == (0, -1)
        assert gpu.reference_device_of("gpu") == "gpu"
    assert gpu.reference_device_of() == "auto" and gpu.rows_request_of() is None
    with pytest.raises(UsageError):
        gpu.reference_device_of("tpu")


def test_auto_reference_device_is_the_host_for_small_problems_and_the_device_for_long_ones(monkeypatch):
    monkeypatch.delenv(gpu.ENV_REFERENCE_DEVICE, raising=False)
    assert gpu.reference_device_of(None, Shape(2, 3, 128, 192, 128)) == "cpu"      # the coverage set's largest
    assert gpu.reference_device_of(None, Shape(1, 8, 512, 512, 64)) == "cpu"       # the mission shape: 2**27
    assert gpu.reference_device_of(None, Shape(1, 8, 1024, 1024, 64)) == "gpu"     # 2**29
    assert gpu.reference_device_of(None, Shape(1, 8, 16384, 16384, 128)) == "gpu"
    assert gpu.reference_device_of("gpu", Shape(1, 1, 64, 64, 64)) == "gpu"        # forcing either still works
    with gpu.check_settings("gpu"):
        assert gpu.reference_device_of(None, Shape(1, 1, 64, 64, 64)) == "gpu"


@pytest.mark.parametrize("args,needle", [
    (["diagnose", "--shape", "1,8,65536,128", "--rows", "all"], "ask for at most"),
    (["run", "--debug", "qk_only", "--shape", "1,8,16384,128", "--rows", "0,999"], "out of range"),
    (["run", "--shape", "mission", "--rows", "first"], "expected all or query-tile indices"),
    (["run", "--rows", "0"], "--rows needs --shape"),
    (["run", "--reference-device", "tpu"], "'tpu' is not one of"),
])
def test_cli_rows_errors_are_one_line_exit_2(args, needle):
    from cli import cli
    r = CliRunner().invoke(cli, args)
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("flashcore: error:"), r.output
    assert needle in lines[0]
