"""Tile choices of a registry kernel, timed (issue 25: "tile shapes per head dim and causal"):
for each large shape of the bench suite (those forward() gives a Hopper entry), `full` at every (block_n, kv_stages) given, CUDA
events (harness/run/bench.do_bench, the method of `flashcore bench`), beside SDPA cuDNN and
flash in the same process; before timing, each tile choice is checked with `full` at a tail
shape (1,2,333x333, and causal) against the float64 reference. Information for the registry's
tile table: the chosen tiles go there, and the GPU suite then runs them.

    python scripts/tile_sweep.py --kernel flashcore_hopper_ws --tiles 128x2 --tiles 128x3 ...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@click.command()
@click.option("--kernel", default="flashcore_hopper_ws", show_default=True)
@click.option("--tiles", "tile_list", multiple=True, required=True,
              help="BLOCK_NxKV_STAGES[xNWARPS], e.g. 128x3, or 96x3x12 (three consumer warpgroups)")
@click.option("--d", "head_dims", multiple=True, type=int, help="only these head dims")
def main(kernel, tile_list, head_dims):
    os.environ["FLASHCORE_REGISTRY_KERNEL"] = kernel
    from harness.check.shapes import Shape
    from harness.run import bench, gpu
    from harness.toolchain.variant import Variant
    from kernels import registry
    # nwarps None: the entry's tile table (e.g. 8, two consumer warpgroups)
    tiles = [(tuple(int(x) for x in t.split("x")) + (None,))[:3] for t in tile_list]
    for label, shape, causal in bench.SUITE:
        # the shapes forward() gives a Hopper entry (registry.product_kernel): the large ones
        hopper_shape = registry.product_kernel("sm_90", shape.B, shape.H, shape.Sq, shape.Sk, shape.D,
                                               causal) is not registry.DEFAULT
        if not hopper_shape or (head_dims and shape.D not in head_dims):
            continue
        sdpa = None
        for bn, st, nw in tiles:
            kw = dict(block_n=bn, kv_stages=st, **({"nwarps": nw} if nw else {}))
            name = f"{bn}x{st}" + (f"x{nw}" if nw else "")
            try:
                Variant("full", shape.D, causal, **kw)
            except Exception as e:
                print(f"{label} {name}: refused: {str(e).splitlines()[0]}")
                continue
            small = gpu.run_mode("full", Shape(1, 2, 333, 333, shape.D), causal=causal, reference_device="cpu",
                                 **kw)
            ok = small.status == "ok" and all(m.passed for m in small.metrics)
            if not ok:
                print(f"{label} {name}: FAILS at 1,2,333,{shape.D}: {small.status} {small.message}")
                continue
            row = bench.bench_one(label, shape, causal, with_sdpa=sdpa is None, **kw)
            sdpa = row.sdpa if sdpa is None else sdpa
            cu, fl = sdpa.get("sdpa_cudnn"), sdpa.get("sdpa_flash")
            t = row.kernel
            print(f"{label:24s} {name:>8s}  {t.median_us:8.1f} us ({t.p10_us:.1f}-{t.p90_us:.1f})  "
                  f"{row.tflops:6.1f} TFLOP/s  regs {row.resources['registers']}"
                  + (f"  {cu.median_us / t.median_us:5.2f}x cuDNN ({cu.median_us:.1f} us)" if cu else "")
                  + (f"  {fl.median_us / t.median_us:5.2f}x flash" if fl else ""), flush=True)


if __name__ == "__main__":
    main()
