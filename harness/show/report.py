"""Rich rendering of modes, resources and stage-isolated error tables."""

from __future__ import annotations

import math
import sys

from rich.console import Console
from rich.table import Table

import shutil

# Wide tables stay readable in logs and CI, where there is no terminal to size them by.
console = Console(highlight=False, width=None if sys.stdout.isatty() else max(shutil.get_terminal_size((200, 24)).columns, 200))


def fmt(x, spec=".2e") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    return format(x, spec)


def verdict(ok: bool, text_ok="PASS", text_bad="FAIL") -> str:
    return f"[green]{text_ok}[/]" if ok else f"[bold red]{text_bad}[/]"


def error_table(results, title: str) -> Table:
    """One row per output buffer of every result: the stage-isolated error table. `rows` is
    the query rows checked (docs/DESIGN.md §7): all, or the windows of a long problem."""
    t = Table(title=title, title_justify="left")
    for col in ("mode", "stage", "out", "rows", "max abs", "mean abs", "rel L2", "floor", "err/floor",
                "NaN", "unwritten", "worst (b,h,i,j)", "verdict"):
        t.add_column(col, justify="right" if col not in ("mode", "stage", "out", "rows", "verdict") else "left")
    for r in results:
        if r.status != "ok":
            t.add_row(r.variant.mode, "-", "-", "-", *["-"] * 8, f"[bold red]{r.status.upper()}[/] {r.message[:60]}")
            continue
        rows = getattr(r, "rows_text", "all")
        for m in r.metrics:
            t.add_row(m.mode, m.stage, m.output, rows, fmt(m.max_abs), fmt(m.mean_abs), fmt(m.rel_l2), fmt(m.floor),
                      fmt(m.err_over_floor, ".2f"), str(m.n_nonfinite), str(m.n_unwritten),
                      ",".join(map(str, m.worst_index)), verdict(m.passed) + _extra(m))
    if any(getattr(r, "reference_device", "gpu") == "cpu" for r in results):
        t.caption = "references and metrics computed on the host (NumPy; --reference-device gpu puts them on the device)"
    return t


def _extra(m) -> str:
    """What the verdict column adds beyond the error: spread, race, writes outside the window."""
    extra = f" spread {fmt(m.extra['row_spread'])}" if "row_spread" in m.extra else ""
    if m.extra.get("nondeterministic"):
        extra += f" [red]RACE: {m.extra['nondeterministic']} elements differ between two launches[/]"
    if m.extra.get("written_outside"):
        where = (f" the buffer (first at element {m.extra['outside_offset']} from its start)"
                 if "outside_offset" in m.extra else " the window")
        extra += f" [red]{m.extra['written_outside']} elements written outside{where}[/]"
    if m.extra.get("written_outside_other"):
        extra += f" [red]writes outside {', '.join(m.extra['written_outside_other'])}[/]"
    if m.extra.get("read_outside"):
        extra += f" [red]reads past the end of {', '.join(m.extra['read_outside'])} (NaN from its guard margin)[/]"
    return extra


def sass_table(rows, title=None) -> Table:
    """The title states the result: what every row passed, or how many failed."""
    bad = [r for r in rows if not r.ok]
    title = title or ("SASS (NVRTC cubin + nvdisasm): " + (
        f"{len(bad)} of {len(rows)} variants FAIL (local memory or tensor cores not as expected)" if bad
        else "nothing in local memory, tensor cores reported (a spec'd kernel's are not judged)"
        if rows and all(r.expects_hmma is None for r in rows)
        else "tensor cores in use where expected, nothing in local memory"))
    t = Table(title=title, title_justify="left")
    for col in ("variant", "instructions", "HMMA/HGMMA", "LDSM", "LDL+STL", "check"):
        t.add_column(col, justify="left" if col in ("variant", "check") else "right")
    for r in rows:
        t.add_row(r.variant, str(r.instructions), str(r.hmma), str(r.ldsm), str(r.local), verdict(r.ok, r.verdict, r.verdict))
    return t


def resources_table(rows, title="Resources (NVRTC, ptxas -v)") -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("variant", "arch", "regs", "smem static", "smem dynamic", "stack", "spill bytes", "budget"):
        t.add_column(col, justify="left" if col in ("variant", "arch", "budget") else "right")
    for r in rows:
        t.add_row(r.variant, r.arch, str(r.registers), str(r.smem_static), str(r.smem_dynamic), str(r.stack_bytes),
                  str(r.spill_bytes), verdict(r.spill_bytes == 0 and not r.wgmma_warnings, "ok (0 spills)",
                                              "SPILLS" if r.spill_bytes else "WGMMA SERIALISED " + ",".join(r.wgmma_warnings)))
    return t


def smoking_gun_tables(expected_row, rows, n_cols: int, spread, max_err, floor, tol, passed) -> tuple:
    """The smoking gun's two tables: the expected row (mean V) over the first rows the kernel
    wrote, then spread, error, floor and verdict (flag-based and Q = 0 forms alike)."""
    t = Table(title=f"b=0 h=0, first {n_cols} columns", title_justify="left")
    t.add_column("row")
    for c in range(min(n_cols, len(expected_row))):
        t.add_column(f"d{c}", justify="right")
    t.add_row("expected (mean V)", *[f"{x:+.5f}" for x in expected_row[:n_cols]])
    for i, row in enumerate(rows):
        t.add_row(f"kernel row {i}", *[f"{x:+.5f}" for x in row[:n_cols]])
    s = Table(show_header=False)
    s.add_row("max row spread (max over rows - min over rows)", fmt(spread))
    s.add_row("max |kernel - expected row|", fmt(max_err))
    s.add_row("precision floor / tolerance", f"{fmt(floor)} / {fmt(tol)}")
    s.add_row("verdict", verdict(passed))
    return t, s
