"""`flashcore bench --against B`: two registry kernels timed in turns in one process, so that a
difference of a few per cent is read against the same clocks, the same inputs and the same
thermal state, where two separate bench runs drift by about as much (kernels/NOTES.md: readings
of one kernel in successive calls differ by up to 2 %).

Method: both kernels are prepared on the same inputs and each launched once (compiled, run);
then `rounds` rounds each time both with bench.do_bench, in the order A, B in even rounds and
B, A in odd ones, so neither always runs second. Per round the ratio t_B / t_A (> 1: A is
faster); reported: each kernel's median over the rounds' medians, and the ratio's median and
range over the rounds. The range is the answer's spread: a median ratio inside it of 1.0 is
not a difference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from harness.check.shapes import Shape

ROUNDS = 6


@dataclass
class ABRow:
    label: str
    shape: Shape
    causal: bool
    kernels: tuple            # (A, B) registry names
    us: dict                  # name -> [median us of each round]
    flops: float

    def median_us(self, name: str) -> float:
        return float(np.median(self.us[name]))

    def ratios(self) -> list:
        a, b = self.kernels
        return [tb / ta for ta, tb in zip(self.us[a], self.us[b])]

    def ratio(self) -> float:
        """t_B / t_A over the rounds, median: > 1 means A is faster."""
        return float(np.median(self.ratios()))

    def to_dict(self) -> dict:
        r = self.ratios()
        return {"label": self.label, "shape": asdict(self.shape), "causal": self.causal,
                "kernels": list(self.kernels), "us": self.us, "flops": self.flops,
                "ratio_b_over_a": {"median": float(np.median(r)), "min": min(r), "max": max(r)}}


def interleaved(timers: dict, rounds: int = ROUNDS) -> dict:
    """{name: [one timing per round]} of two callables (name -> () -> us), in the order
    A, B / B, A / ... (timers' order is A, B)."""
    names = list(timers)
    if len(names) != 2:
        raise ValueError("two kernels, A and B")
    out = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            out[n].append(float(timers[n]()))
    return out


def ab_row(label: str, shape: Shape, causal: bool, a: str, b: str, rounds: int = ROUNDS, seed: int = 0) -> ABRow:
    """Both kernels' full mode on the same inputs (the seed), timed in turns."""
    import cupy as cp
    from harness.run.bench import _fits_l2, do_bench
    from harness.run.gpu import prepare
    launchers = {}
    for name in (a, b):
        pre = prepare("full", shape, causal, "randn", seed, kernel=name)
        pre.launch()                       # compile, check it runs
        launchers[name] = pre.timed_launcher()
    cp.cuda.runtime.deviceSynchronize()
    flush = _fits_l2(shape)
    timers = {n: (lambda f=f: do_bench(f, warmup_ms=10.0, rep_ms=100.0, flush_l2=flush).median_us)
              for n, f in launchers.items()}
    us = interleaved(timers, rounds)
    cp.cuda.runtime.deviceSynchronize()   # a fault during timing surfaces here
    return ABRow(label, shape, causal, (a, b), us, shape.flops(causal))


def rich_table(rows: list):
    from rich.table import Table
    a, b = rows[0].kernels
    t = Table(title=f"A = {a}, B = {b}: timed in turns, {len(rows[0].us[a])} rounds, medians of each "
                    "round's CUDA-event median; t_B / t_A > 1: A is faster")
    for c in ("case", "B,H,S,D", "causal", "A us", "A TFLOP/s", "B us", "B TFLOP/s", "t_B / t_A (range)"):
        t.add_column(c, justify="left" if c in ("case", "B,H,S,D") else "right")
    for r in rows:
        ta, tb, rs = r.median_us(a), r.median_us(b), r.ratios()
        t.add_row(r.label, r.shape.label, "yes" if r.causal else "", f"{ta:.1f}", f"{r.flops / ta / 1e6:.1f}",
                  f"{tb:.1f}", f"{r.flops / tb / 1e6:.1f}", f"{r.ratio():.3f} ({min(rs):.3f}-{max(rs):.3f})")
    return t
