"""Stage bisection (`flashcore diagnose`) and the smoking-gun report.

Every isolated mode runs in data-flow order (none stops the sweep), then full. The first
isolated stage that fails is where the bug lives; if every isolated stage passes and full
fails, the bug is in the glue: rescale, hand-off between stages, synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.show import heatmap

from harness.run import session
from harness.show.report import console, smoking_gun_tables

BISECT_MODES = ("qk_only", "softmax_only", "pv_only", "uniform_p", "full")
STAGE_OF_MODE = {"qk_only": "qk", "softmax_only": "softmax", "pv_only": "pv", "uniform_p": "pv", "full": "glue"}
STAGE_TEXT = {
    "qk": "QK (scores and masking)",
    "softmax": "softmax (row max, row sum, P)",
    "pv": "PV (P.V and the O store)",
    "glue": "the glue: every isolated stage passes and full fails (rescale, hand-off, synchronisation)",
    "all": "the kernel as a whole (it declares no debug flag that isolates a stage)",
}


@dataclass
class Diagnosis:
    results: list
    failing: object = None           # the RunResult the verdict rests on
    stage: str | None = None         # qk | softmax | pv | glue | None (clean)
    folds: list = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.stage is None


def bisect_stages(results) -> tuple:
    """(stage, failing result) from results in BISECT_MODES order; (None, None) when clean."""
    by_mode = {r.variant.mode: r for r in results}
    for mode in BISECT_MODES[:-1]:
        r = by_mode.get(mode)
        if r is not None and not r.passed:
            return STAGE_OF_MODE[mode], r
    full = by_mode.get("full")
    if full is not None and not full.passed:
        return "glue", full
    return None, None


def localise_result(r) -> list:
    """Folds of every failing output of a result: run_mode computed them where the error
    arrays were (keep_outputs=True), so that no full-size array crosses the process boundary."""
    return list(r.folds)


def diagnose(shape, causal=False, inputs="randn", seed=None, bugs=(), record=True, isolate=True,
             show=True, png=None, prebuild=True) -> Diagnosis:
    results = session.run_modes(BISECT_MODES, shape, causal=causal, inputs=inputs, seed=seed, bugs=bugs,
                                record=record, isolate=isolate, show=show, keep_outputs=True, prebuild=prebuild,
                                title=f"diagnose {shape.label}{' causal' if causal else ''} inputs={inputs}"
                                      + "".join(f" +BUG_{b}" for b in bugs))
    stage, failing = bisect_stages(results)
    d = Diagnosis(results, failing, stage)
    if failing is not None and failing.status == "ok":
        d.folds = localise_result(failing)
    if show:
        print_diagnosis(d)
    if png and d.folds:
        heatmap.save_png(d.folds, png, f"{shape.label}: first failing stage {stage}")
        console.print(f"heat maps written to {png}")
    return d


def print_diagnosis(d: Diagnosis):
    if d.clean:
        console.print("[bold green]no stage fails[/]")
        return
    mode = d.failing.variant.mode
    console.print(f"[bold red]first failing stage: {STAGE_TEXT[d.stage]}[/]  (mode {mode})")
    if d.failing.status != "ok":
        console.print(f"  {d.failing.status}: {d.failing.message}")
    elif d.failing.rows_checked is not None:
        console.print(f"  rows checked: {rows_checked_text(d.failing)}")
    moved = {m.output: m.extra.get("nondeterministic", 0) for m in d.failing.metrics}
    if any(moved.values()):
        console.print(f"[bold red]  the output moved between two launches on the same inputs ({moved}): a race. "
                      f"Next: flashcore sanitize --tool racecheck --debug {mode}[/]")
    for f in d.folds:
        console.print(heatmap.render_folds(f))


def rows_checked_text(r) -> str:
    """Which query rows a windowed mode checked, in words (docs/DESIGN.md §7)."""
    Sq, bm = r.shape.Sq, r.variant.block_m
    if r.rows_checked is None or r.rows_text == "all":
        return f"all {Sq} query rows, every key"
    tiles = [t for a, b in r.rows_checked for t in range(a // bm, -(-b // bm))]
    per_row = ", ".join(m.output for m in r.metrics if "written_outside" in m.extra)
    return (f"query rows {r.rows_text} of {Sq} (query tiles {', '.join(map(str, tiles))} of {-(-Sq // bm)}, "
            f"{bm} rows each), every key tile"
            + (f"; {per_row} checked on these rows only (its input exists only there)" if per_row else "")
            + "; --rows asks for more")


# ------------------------------------------------------------------ the smoking gun
@dataclass
class SmokingGun:
    result: object
    expected_row: np.ndarray       # column means of V, [D] (first batch/head)
    first_rows: np.ndarray         # [rows, D] as the kernel wrote them
    row_spread: float
    max_err: float
    floor: float
    tol: float
    passed: bool


def smoking_gun(shape, seed=None, record=True, show=True, bugs=(), n_rows=4, n_cols=8) -> SmokingGun:
    from harness.toolchain.device import require_gpu
    from harness.run.gpu import run_mode
    from harness import records
    from harness.run import runs
    device = require_gpu()
    r = run_mode("uniform_p", shape, inputs="randn", seed=seed, bugs=bugs, keep_outputs=True)
    if record:
        records.append(runs.run_record(r, device))
    if r.status != "ok":
        sg = SmokingGun(r, np.array([]), np.array([]), float("nan"), float("inf"), 0.0, 0.0, False)
    else:
        m = r.metrics[0]
        sg = SmokingGun(r, r.expected["O"][0, 0, 0], r.outputs["O"][0, 0, :n_rows].astype(np.float64),
                        m.extra["row_spread"], m.max_abs, m.floor, m.tol, m.passed)
    if show:
        print_smoking_gun(sg, shape, n_cols)
    return sg


def print_smoking_gun(sg: SmokingGun, shape, n_cols=8):
    r = sg.result
    console.print(f"[bold]Smoking gun[/]: P = 1/Sk everywhere, so every output row must equal the column mean of V.\n"
                  f"shape {shape.label}, seed {r.seed}, {r.variant.label}")
    if r.status != "ok":
        console.print(f"[bold red]{r.status.upper()}[/]: {r.message}")
        return
    for table in smoking_gun_tables(sg.expected_row, sg.first_rows, n_cols, sg.row_spread, sg.max_err, sg.floor,
                                    sg.tol, sg.passed):
        console.print(table)
