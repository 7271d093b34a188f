"""The GPU-free compile check of every variant: mode x head dim x causal x arch."""

from __future__ import annotations

import itertools

from debug_modes import BUGS
from debug_modes.registry import get_mode
from harness.build import compiler
from harness import records
from harness.errors import CompileError
from harness.show.report import console
from harness.build.variant import Variant


def variants(modes, head_dims, causals, archs, bugs=()):
    for mode, d, c, arch in itertools.product(modes, head_dims, causals, archs):
        if c and not get_mode(mode).allows_causal:
            continue
        yield Variant(mode=mode, head_dim=d, causal=c, bugs=tuple(bugs), arch=arch)


def sweep(modes, head_dims, causals, archs, bugs=(), check=None):
    """Run check (default: compile_check, NVRTC resources; or sass.summarize) on each variant;
    returns (rows, failure messages). Variants are all validated before the first compilation."""
    check = check or compiler.compile_check
    vs = list(variants(modes, head_dims, causals, archs, bugs))
    rows, failures = [], []
    for v in vs:
        try:
            rows.append(check(v))
        except CompileError as e:
            failures.append(str(e))
    return rows, failures


def print_bugs():
    from rich.table import Table
    t = Table(title="Seeded bugs (-DBUG_<NAME>; none is on by default)", title_justify="left")
    for c in ("name", "stage", "shows with inputs", "caught by", "what it breaks"):
        t.add_column(c)
    for b in BUGS.values():
        t.add_row(b.name, b.stage, b.needs_input, b.found_by, b.description)
    console.print(t)


def record(rows):
    for r in rows:
        records.append(records.new_record("compile", kernel_sha256=compiler.source_hash(), device=None,
                                          **r.to_dict()))
