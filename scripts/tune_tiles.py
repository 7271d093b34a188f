"""Time kernel versions x tile configurations on the bench suite (GPU), SDPA flash beside them.

Usage: python scripts/tune_tiles.py [name=path.cu ...]
Each extra name=path is an older kernel source to time against the working tree's (A/B in one
process, one GPU). Every (source, config) is first checked for correctness on an odd shape,
causal and not; then one line per (shape, source, config): median us, TFLOP/s, ratio to SDPA
flash, registers.
"""

import os
import sys

from harness.run.bench import SUITE, bench_one
from harness.run.gpu import run_mode
from harness.check.shapes import Shape
from harness.toolchain.variant import SMALL_TILES, tiles_for

# Candidate tiles per head dim; the tile table's choice for each shape is always timed too.
CONFIGS = {
    64: [dict(m_frags=2, nwarps=4, block_n=64, kv_stages=2)],
    128: [dict(m_frags=2, nwarps=4, block_n=64, kv_stages=1), dict(m_frags=2, nwarps=4, block_n=32, kv_stages=2)],
}
SOURCES = {"new": None} | dict(a.split("=", 1) for a in sys.argv[1:])


def use_source(path):
    if path:
        os.environ["FLASHCORE_KERNEL"] = path
    else:
        os.environ.pop("FLASHCORE_KERNEL", None)


def configs_for(shape):
    base = tiles_for(shape)
    return [base] + [c for c in CONFIGS[shape.D] if c != base and base is not SMALL_TILES[shape.D]]


for name, path in SOURCES.items():
    use_source(path)
    for d in CONFIGS:
        for cfg in CONFIGS[d] + [SMALL_TILES[d]]:
            for causal in (False, True):
                try:
                    r = run_mode("full", Shape(2, 3, 1000, 777, d), causal=causal, seed=3, **cfg)
                    msg = "ok" if r.passed else "FAIL " + r.message
                except Exception as e:   # a fault here must not end the sweep
                    msg = f"ERROR {type(e).__name__}: {str(e).splitlines()[0]}"
                print(f"check {name} d={d} {cfg} causal={causal}: {msg}", flush=True)

for label, shape, causal in SUITE:
    flash = None
    for name, path in SOURCES.items():
        use_source(path)
        for cfg in configs_for(shape):
            try:   # SDPA flash is timed once per shape, beside the first row
                row = bench_one(label, shape, causal, "full", with_sdpa=flash is None, **cfg)
            except Exception as e:
                print(f"{label:24s} {name:4s} {cfg} ERROR {type(e).__name__}", flush=True)
                continue
            flash = flash or row.sdpa.get("sdpa_flash")
            ratio = f"{flash.median_us / row.kernel.median_us:5.2f}x" if flash else "  -  "
            print(f"{label:24s} {name:4s} {cfg} {row.kernel.median_us:9.1f} us {row.tflops:6.1f} TFLOP/s "
                  f"{ratio} flash({flash.median_us if flash else float('nan'):.1f} us) regs={row.resources['registers']}",
                  flush=True)
