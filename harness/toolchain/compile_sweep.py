"""The GPU-free compile check of every variant: mode x head dim x causal x arch."""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

from debug_modes import bugs_of
from debug_modes.registry import get_mode
from harness.toolchain import compiler
from harness import records
from harness.errors import CompileError, UsageError
from kernels import registry
from harness.show.report import console
from harness.toolchain.variant import Variant


def archs_arg(arch: str) -> list:
    """--arch: one arch the kernel lists, or all of them."""
    KERNEL = registry.current()
    if arch == "all":
        return list(KERNEL.archs)
    if arch not in KERNEL.archs:
        raise UsageError(f"unknown arch {arch!r}; valid: {', '.join(KERNEL.archs)}, all")
    return [arch]


def variants(modes, head_dims, causals, archs, bugs=()) -> list:
    """Every valid variant of the product, validated before anything compiles. Raises when the
    options leave none (e.g. uniform_p, which has no causal form, with --causal), so a sweep
    never compiles nothing in silence."""
    KERNEL = registry.current()
    out, skipped = [], []
    for d in head_dims:
        if d not in KERNEL.head_dims:
            raise UsageError(f"unsupported head dim {d}; the kernel supports {', '.join(map(str, KERNEL.head_dims))}")
    for mode, d, c, arch in itertools.product(modes, head_dims, causals, archs):
        if c and not get_mode(mode).allows_causal:
            skipped.append(mode)
            continue
        # Both tile tables: the small tiles are what the mission shape and every coverage shape run.
        seen = set()
        for tiles in (KERNEL.tiles[d], KERNEL.small_tiles[d]):
            v = Variant(mode=mode, head_dim=d, causal=c, bugs=tuple(bugs), arch=arch, **tiles)
            if v not in seen:
                seen.add(v)
                out.append(v)
    if not out:
        why = f": {', '.join(sorted(set(skipped)))} has no causal form" if skipped else ""
        raise UsageError("these options select no variant to compile" + why)
    return out


def default_jobs() -> int:
    """Threads for a sweep: $FLASHCORE_COMPILE_JOBS, else one per CPU. NVRTC releases the GIL
    (measured here: 8 variants in 3.27 s one at a time, 1.63 s on two threads on 2 cores), and
    each variant is its own NVRTC program, so they compile side by side."""
    try:
        return max(1, int(os.environ.get("FLASHCORE_COMPILE_JOBS", "0")) or (os.cpu_count() or 1))
    except ValueError:
        return os.cpu_count() or 1


def sweep(vs, check=None, jobs: int | None = None):
    """Run check (default: compile_check, NVRTC resources; or sass.summarize) on each variant,
    concurrently on `jobs` threads; returns (rows in the variants' order, failure messages)."""
    check = check or compiler.compile_check

    def one(v):
        try:
            r = check(v)
            return (v if r is None else r), None
        except CompileError as e:
            return None, str(e)

    vs = list(vs)
    # The first compilation runs alone: NVRTC loads libnvrtc-builtins on first use, and two
    # threads doing that at once failed here ("failed to open libnvrtc-builtins.so.13.0").
    done = [one(v) for v in vs[:1]]
    with ThreadPoolExecutor(max_workers=jobs or default_jobs()) as ex:
        done += list(ex.map(one, vs[1:]))
    return [r for r, _ in done if r is not None], [f for _, f in done if f is not None]


def print_bugs():
    from rich.table import Table
    entry = registry.current()
    t = Table(title=f"{entry.name}: seeded bugs (-DBUG_<NAME>; none is on by default)", title_justify="left")
    for c in ("name", "stage", "shows with inputs", "caught by", "what it breaks"):
        t.add_column(c)
    for b in bugs_of(entry).values():
        t.add_row(b.name, b.stage, b.needs_input, b.found_by, b.description)
    console.print(t)


def record(rows):
    for r in rows:
        records.append(records.new_record("compile", kernel_sha256=compiler.source_hash(), device=None,
                                          **r.to_dict()))
