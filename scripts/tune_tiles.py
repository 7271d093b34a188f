"""Time tile configurations of the full kernel on the bench suite (GPU). Each config is first
checked for correctness on an odd shape; prints one line per (shape, config)."""

import itertools
import sys

from harness.bench import SUITE, bench_one
from harness.gpu import run_mode
from harness.shapes import Shape

CONFIGS = {
    64: [dict(m_frags=2, nwarps=4, block_n=64), dict(m_frags=1, nwarps=4, block_n=64),
         dict(m_frags=1, nwarps=8, block_n=64), dict(m_frags=2, nwarps=4, block_n=32),
         dict(m_frags=1, nwarps=2, block_n=64)],
    128: [dict(m_frags=2, nwarps=4, block_n=32), dict(m_frags=1, nwarps=4, block_n=64),
          dict(m_frags=2, nwarps=8, block_n=32), dict(m_frags=1, nwarps=4, block_n=32)],
}
for d, cfgs in CONFIGS.items():
    for cfg in cfgs:
        for causal in (False, True):
            r = run_mode("full", Shape(2, 3, 1000, 777, d), causal=causal, seed=3, **cfg)
            print(f"check d={d} {cfg} causal={causal}: {'ok' if r.passed else 'FAIL ' + r.message}", flush=True)
for label, shape, causal in SUITE:
    for cfg in CONFIGS[shape.D]:
        row = bench_one(label, shape, causal, "full", with_sdpa=False, **cfg)
        print(f"{label:24s} {cfg} {row.kernel.median_us:9.1f} us {row.tflops:6.1f} TFLOP/s regs={row.resources['registers']}",
              flush=True)
