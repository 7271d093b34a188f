"""Where a cold command's time goes (issue "The research loop"): a fresh machine's first default
`diagnose` (the coverage set) or `run`, in ONE process (isolate=False, so that what the worker
would compile, CuPy's elementwise and reduction kernels, is inside the profile), with empty CuPy
and cubin caches and no background compile (FLASHCORE_WARMUP=0), under cProfile.

Prints the wall time, CuPy's kernel compilations (count and seconds), the variants' NVRTC
prebuild, and the top functions by cumulative time: what to cut to bring the cold start to the
issue's targets (the coverage set's 23 s at 8cab791 is not its 18 variant compiles).

    python scripts/profile_cold.py [--what diagnose|run-pv|run-all] [--shape mission] [--top 25]
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _compile_rows(stats: pstats.Stats) -> list:
    """(ncalls, cumulative s, where) of CuPy's compile entry points seen in the profile."""
    rows = []
    for (file, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():
        if "cupy" in file and "compile" in name.lower():
            rows.append((nc, ct, f"{Path(file).name}:{line}({name})"))
    return sorted(rows, key=lambda r: -r[1])


@click.command()
@click.option("--what", type=click.Choice(["diagnose", "run-pv", "run-all"]), default="diagnose", show_default=True)
@click.option("--shape", default="mission", show_default=True, help="for run-pv / run-all")
@click.option("--top", type=int, default=25, show_default=True)
def main(what, shape, top):
    tmp = tempfile.mkdtemp(prefix="flashcore-cold-")
    os.environ.update(CUPY_CACHE_DIR=os.path.join(tmp, "cupy"), FLASHCORE_CUBIN_CACHE=os.path.join(tmp, "cubins"),
                      FLASHCORE_WARMUP="0")
    from harness.check.shapes import parse_shape
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    if what == "diagnose":
        from harness.run.coverage import diagnose_coverage
        diagnose_coverage(seed=1, record=False, isolate=False, show=False)
    else:
        from debug_modes.registry import DATAFLOW_ORDER
        from harness.run.session import run_modes
        modes = ["pv_only"] if what == "run-pv" else list(DATAFLOW_ORDER)
        run_modes(modes, parse_shape(shape), seed=1, record=False, isolate=False, show=False)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    print(f"{what}{'' if what == 'diagnose' else ' ' + shape}: {wall:.2f} s cold, in one process (caches under {tmp})")
    print("CuPy compile entry points (calls, cumulative s):")
    for nc, ct, where in _compile_rows(stats)[:8]:
        print(f"  {nc:5d}  {ct:7.2f} s  {where}")
    for (file, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():
        if file.endswith("prebuild.py") and name == "prebuild":
            print(f"variants' NVRTC prebuild: {ct:.2f} s over {nc} call(s)")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
