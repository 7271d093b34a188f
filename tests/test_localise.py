"""Folds and hint rules on synthetic error arrays with planted patterns."""

import numpy as np
import pytest

from harness.show import heatmap

from harness.check import localise
from harness.run.sanitize import parse

BM, BN = 64, 64


def noise(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 0.5, shape)   # all within tol = 1


def hints_of(err, output="O"):
    return " | ".join(localise.fold(err, 1.0, output, BM, BN).hints)


def test_clean_error_has_no_pattern():
    assert hints_of(noise((1, 2, 256, 64))) == "no element over tolerance"


def test_one_tile():
    e = noise((1, 2, 256, 64))
    e[0, 1, 64 + 3, 16 + 5] = 50
    f = localise.fold(e, 1.0, "O", BM, BN)
    assert f.tiles.shape == (4, 4) and f.tiles[1, 1] == 50
    assert "one tile only" in " ".join(f.hints)


def test_tail_tile():
    e = noise((1, 1, 100, 100))                      # Sq = Sk = 100: the last tiles are partial
    e[0, 0, :, 99] = 5                               # last key column wrong (tail mask)
    assert "the last (tail) key tile only" in hints_of(e, "S")


def test_one_warp():
    e = noise((1, 2, 256, 64))
    for blk in range(4):
        e[:, :, blk * 64 + 32: blk * 64 + 48, :] = 7  # warp 2 of every block
    h = hints_of(e)
    assert "one warp: only rows owned by warp 2" in h


def test_fragment_periodic():
    e = noise((1, 2, 256, 64))
    e[:, :, 0::16, :] = 9                            # rows 0 of every fragment...
    e[:, :, 8::16, :] = 9                            # ...and 8: a c0c1/c2c3 swap looks like this
    h = hints_of(e)
    assert "fragment-periodic" in h and "rows 0,8" in h


def test_key_tiles_after_the_first():
    e = noise((1, 2, 128, 256))
    e[..., 64:] = 3
    assert "key tiles after the first" in hints_of(e, "P")


def test_all_rows_alike_but_wrong():
    row = np.linspace(2, 5, 64)
    e = np.broadcast_to(row, (1, 2, 128, 64)).copy()
    assert "all rows alike but wrong" in hints_of(e)


def test_nan_row_is_named():
    e = noise((1, 2, 128, 64))
    e[0, 1, 77, :] = np.inf
    assert "NaN/Inf from a row" in hints_of(e) and "first at (b=0, h=1, row 77)" in hints_of(e)


def test_heatmap_renders_and_pools():
    from rich.console import Console
    e = noise((1, 1, 8192, 128))
    e[0, 0, 4000, 3] = 1e5
    f = localise.fold(e, 1.0, "O", BM, BN)
    c = Console(record=True, width=200)
    c.print(heatmap.render_folds(f))
    text = c.export_text()
    assert "max-pooled" in text and "hints:" in text


def test_png_needs_matplotlib_or_writes(tmp_path):
    pytest.importorskip("matplotlib")
    e = noise((1, 1, 128, 64))
    e[0, 0, 3, 3] = 9
    p = heatmap.save_png([localise.fold(e, 1.0, "O", BM, BN)], str(tmp_path / "m.png"))
    assert (tmp_path / "m.png").stat().st_size > 1000 and p


SANITIZER_OUT = """========= COMPUTE-SANITIZER
========= Error: Race reported between Write access at flashcore_fwd+0x1a30 in /tmp/x/flashcore_fused.cu:134
=========     and Read access at flashcore_fwd+0x2f40 in /tmp/x/flashcore_fused.cu:101 [2048 hazards]
=========
========= Invalid __global__ write of size 4 bytes
=========     at flashcore_fwd+0x4b0 in /tmp/x/flashcore_fused.cu:250
=========     by thread (3,0,0) in block (0,0,0)
=========     Address 0x7f00 is out of bounds
=========
========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)
========= ERROR SUMMARY: 2 errors
"""


def test_sanitizer_output_is_summarised_with_file_line():
    hazards, n = parse(SANITIZER_OUT)
    assert n == 2
    keys = list(hazards)
    assert any("Race reported" in k and "flashcore_fused.cu:134" in k and "flashcore_fused.cu:101" in k for k in keys)
    assert any("Invalid __global__ write" in k and "flashcore_fused.cu:250" in k for k in keys)


def test_clean_sanitizer_output():
    hazards, n = parse("========= COMPUTE-SANITIZER\nFLASHCORE_TARGET_OK\n========= ERROR SUMMARY: 0 errors\n")
    assert not hazards and n == 0


def test_fragment_row_swap_is_named_from_outputs():
    rng = np.random.default_rng(5)
    exact = rng.standard_normal((1, 2, 64, 64))
    got = exact.copy()
    idx = np.arange(64)
    got = got[:, :, idx ^ 8, :]                       # rows r and r^8 swapped in every fragment
    err = np.abs(got - exact)
    f = localise.fold(err, 1e-3, "O", BM, BN, got, exact)
    assert "holds row i^8" in f.hints[0] and "c0,c1 <-> c2,c3" in f.hints[0]
    f = localise.fold(np.abs(got[..., idx ^ 3] - exact), 1e-3, "O", BM, BN, got[..., idx ^ 3], exact)
    assert not any("holds row" in h for h in f.hints)  # a different mess: no false claim


# ---- hints that must not hold vacuously, and the masking hint (docs/DESIGN.md "Stage boundaries")
def _qk_unmasked(Sq, Sk, Skp):
    """An S where the padded keys of the tail tile were left unmasked (score 0, not -inf)."""
    rng = np.random.default_rng(0)
    exact = np.full((1, 1, Sq, Skp), -np.inf)
    exact[..., :Sk] = rng.standard_normal((Sq, Sk))
    got = exact.astype(np.float32)
    got[..., Sk:] = 0.0
    return got, exact


def test_masking_hint_names_scores_left_visible_and_no_vacuous_hints():
    from harness.check import localise, metrics as met
    got, exact = _qk_unmasked(1, 1, 64)
    m, err = met.compare("qk_only", "S", "QK", got, exact, exact)
    f = localise.fold(err, m.tol, "qk_only/S", 64, 64, got, exact, n_keys=1)
    assert f.hints[0].startswith("masking: 63 score(s) left visible") and "key 1)" in f.hints[0]
    # one row, one query tile, one key tile: no fragment permutation, no "tail tile only", no NaN row
    assert not any(h.startswith(("fragment mapping", "the last (tail)", "NaN/Inf", "one warp", "fragment-periodic"))
                   for h in f.hints), f.hints


def test_tail_key_tile_hint_with_several_key_tiles():
    from harness.check import localise, metrics as met
    got, exact = _qk_unmasked(64, 161, 192)
    m, err = met.compare("qk_only", "S", "QK", got, exact, exact)
    f = localise.fold(err, m.tol, "qk_only/S", 64, 64, got, exact, n_keys=161)
    assert any(h.startswith("the last (tail) key tile only (keys 128-160 valid, 161-191 padding)") for h in f.hints), f.hints
    assert f.hints[0].startswith("masking:") and not any(h.startswith("fragment mapping") for h in f.hints)


def test_masking_hint_names_over_masking():
    from harness.check import localise
    exact = np.zeros((1, 1, 32, 64))
    got = exact.astype(np.float32)
    got[0, 0, 5, 7] = -np.inf
    assert localise.masking_hint(got, exact, np.arange(32)).startswith("masking: 1 score(s) masked that must not be")
    assert localise.masking_hint(exact.astype(np.float32), exact, np.arange(32)) is None
