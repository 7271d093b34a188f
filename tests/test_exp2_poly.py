"""common/softmax.cuh exp2_poly (version 10's FMA-pipe exp2), emulated in fp32 on the host from
the header's own constants: the shifter's rounding, the degree-4 polynomial in fused
multiply-adds (each rounded once to fp32: the float64 product of two fp32 values is exact), the
exponent-field add, and the zero below -126. The error bound is the one the header states."""
import re
from pathlib import Path

import numpy as np

HEADER = Path(__file__).resolve().parents[1] / "kernels" / "common" / "softmax.cuh"
F32 = np.float32


def _body() -> str:
    text = HEADER.read_text()
    return text[text.index("float exp2_poly(float x)"):].split("\n}\n", 1)[0]


def _fma(a, b, c):
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(F32)


def exp2_poly(x: np.ndarray) -> np.ndarray:
    body = _body()
    coeffs = [F32(float(v)) for v in re.findall(r"([0-9.]+e[-+][0-9]+)f", body)]
    assert len(coeffs) == 5, coeffs              # highest power first, as Horner reads them
    shifter = F32(12582912.0)
    xc = np.maximum(x, F32(-126.0))
    t = (xc + shifter).astype(F32)
    f = (xc - (t - shifter).astype(F32)).astype(F32)
    p = _fma(np.full_like(f, coeffs[0]), f, np.full_like(f, coeffs[1]))
    for c in coeffs[2:]:
        p = _fma(p, f, np.full_like(f, c))
    j = t.view(np.int32) - np.int32(0x4B400000)
    y = (p.view(np.int32) + (j << 23)).view(F32)
    return np.where(x < F32(-126.0), F32(0.0), y)


def test_relative_error_is_within_the_stated_bound():
    rng = np.random.default_rng()
    x = np.concatenate([rng.uniform(-126, 0, 400_000), rng.uniform(-4, 0, 400_000),
                        np.arange(-126, 1, dtype=np.float64), -np.arange(0, 126, 0.5) - 0.5]).astype(F32)
    exact = np.exp2(x.astype(np.float64))
    rel = np.abs(exp2_poly(x).astype(np.float64) - exact) / exact
    assert rel.max() <= 2.7e-6, rel.max()
    assert "2.7e-6" in HEADER.read_text()        # the bound the header states is this one
    assert abs(float(exp2_poly(np.array([0.0], F32))[0]) - 1) <= 2.7e-6


def test_masked_scores_give_exactly_zero():
    x = np.array([-np.inf, -1e30, -126.5, -200.0], F32)
    assert (exp2_poly(x) == 0).all()
    assert exp2_poly(np.array([-126.0], F32))[0] > 0


def test_a_wrong_coefficient_breaks_the_bound():
    """The check can fail: the emulation with the linear term off by 1e-4 misses the bound."""
    global _body
    real = _body
    try:
        _body = lambda: real().replace("6.931217909e-01f", "6.932217909e-01f")
        x = np.linspace(-10, 0, 100_001, dtype=F32)
        rel = np.abs(exp2_poly(x).astype(np.float64) - np.exp2(x.astype(np.float64))) / np.exp2(x.astype(np.float64))
        assert rel.max() > 2.7e-6
    finally:
        _body = real
