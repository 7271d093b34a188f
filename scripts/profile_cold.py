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
import re
import sys
import tempfile
import threading
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


_KERNEL_NAME = re.compile(r"__global__\s+(?:__launch_bounds__\([^)]*\)\s*)?void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)")


def _logged(fn, log: list, what):
    """fn, logging each call as (thread, seconds, what(first argument), when it ended)."""
    def timed(first, *args, **kw):
        t0 = time.perf_counter()
        try:
            return fn(first, *args, **kw)
        finally:
            t1 = time.perf_counter()
            log.append((threading.current_thread().name, t1 - t0, what(first), t1))
    return timed


def _log_compiles(log: list):
    """Log every compilation, in every thread, with the kernels it builds (cProfile's counts do
    not say which kernel, nor which thread): CuPy's NVRTC entry point, and the variants' own
    prebuild (NVRTC directly, not through CuPy)."""
    from cupy.cuda import compiler
    from harness.toolchain import prebuild
    compiler._compile_using_nvrtc_no_warning = _logged(
        compiler._compile_using_nvrtc_no_warning, log,
        lambda source: ",".join(dict.fromkeys(_KERNEL_NAME.findall(source) or ["?"]))[:90])
    prebuild._build = _logged(prebuild._build, log, lambda variant: f"prebuild {variant.label}")


@click.command()
@click.option("--what", type=click.Choice(["diagnose", "run-pv", "run-all"]), default="diagnose", show_default=True)
@click.option("--shape", default="mission", show_default=True, help="for run-pv / run-all")
@click.option("--top", type=int, default=25, show_default=True)
@click.option("--warm", is_flag=True, help="keep this machine's caches (what a warm run spends its time on)")
def main(what, shape, top, warm):
    tmp = "this machine's caches" if warm else tempfile.mkdtemp(prefix="flashcore-cold-")
    if not warm:
        os.environ.update(CUPY_CACHE_DIR=os.path.join(tmp, "cupy"), FLASHCORE_CUBIN_CACHE=os.path.join(tmp, "cubins"),
                          FLASHCORE_WARMUP="0")
    from harness.check.shapes import parse_shape
    compiles: list = []
    _log_compiles(compiles)
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
    print(f"{what}{'' if what == 'diagnose' else ' ' + shape}: {wall:.2f} s {'warm' if warm else 'cold'}, "
          f"in one process (caches: {tmp})")
    print(f"NVRTC compilations, every thread: {len(compiles)}, {sum(c[1] for c in compiles):.2f} s summed "
          f"(in the order they ended, with the time since the start)")
    for thread, sec, names, ended in compiles:
        print(f"  {sec:6.2f} s  ends {ended - t0:6.2f} s  {thread:<26} {names}")
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
