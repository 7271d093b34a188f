"""The host references' time per mode at one shape, on threads (stages.each_block) and on one,
with the median of a few repeats: what the research loop's host path pays per check (issue 26).
Run it with OPENBLAS_NUM_THREADS=1 (as in the harness's worker) and without, to see both.

    python scripts/host_refs_timing.py [--shape mission] [--repeats 5]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@click.command()
@click.option("--shape", default="mission", show_default=True)
@click.option("--repeats", type=int, default=5, show_default=True)
def main(shape, repeats):
    from debug_modes.registry import DATAFLOW_ORDER
    from harness.check import stages
    from harness.check.inputs import make_inputs
    from harness.check.shapes import parse_shape
    from harness.toolchain.variant import Variant, tiles_for
    shp = parse_shape(shape)
    q, k, v = make_inputs(shp, "randn", 1)
    scale = shp.D ** -0.5
    pool = stages._host_pool

    def once(mode):
        var = Variant(mode, shp.D, False, **tiles_for(shp))
        t0 = time.perf_counter()
        inj = stages.injected_inputs(mode, q, k, v, False, scale, var.padded_keys(shp.Sk))
        stages.stage_references(mode, q, k, v, False, scale, var.block_n, inj, var.padded_keys(shp.Sk))
        return time.perf_counter() - t0
    total = {}
    blas = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "OpenBLAS's default"
    print(f"BLAS threads: {blas} (the harness's worker sets 1; stages.each_block uses threads only then)")
    on_one = stages.blas_on_one_thread
    stages.blas_on_one_thread = lambda: True     # both series whatever the BLAS setting
    for label, p in (("threads", pool), ("one thread", lambda: None)):
        stages._host_pool = p
        total[label] = 0.0
        for mode in DATAFLOW_ORDER:
            ts = [once(mode) for _ in range(repeats)]
            total[label] += statistics.median(ts)
            print(f"{shp.label} {mode:13s} {label:10s} median {statistics.median(ts) * 1e3:7.1f} ms "
                  f"(min {min(ts) * 1e3:.1f}, max {max(ts) * 1e3:.1f})")
    stages._host_pool, stages.blas_on_one_thread = pool, on_one
    print("sum of medians: " + ", ".join(f"{k} {v:.3f} s" for k, v in total.items()))


if __name__ == "__main__":
    main()
