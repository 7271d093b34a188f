"""The coverage sweep: what `flashcore diagnose` and `flashcore run` do without --shape.

Every case of the coverage set (harness/check/coverage.py) runs as `diagnose` (or `run`) runs
one shape, each mode isolated from faults (a fault or a hang is that case's result and the
sweep goes on). Then one table, a row per case, and the verdict:
  - the stage: the first failing stage most common among the failing cases;
  - attribution: the shape features (one, or two together) whose presence separates the
    failing cases from the passing ones, with counts; the closest when none does exactly;
  - shrinking: from the smallest failing case, smaller shapes that keep those features, each
    running only the failing stage's mode, while it still fails;
  - the one-line command that reproduces the smallest failing shape.
Attribution and shrinking are plain functions of outcomes and of a runner (tested on CPU).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable

from rich.table import Table

from debug_modes.registry import DATAFLOW_ORDER, get_mode
from harness.check import coverage as cov
from harness.check.coverage import FEATURES, NAMES, Case
from harness.check.shapes import Shape
from harness.errors import FlashCoreError
from harness.show.report import console, verdict

SHRINK_BUDGET = 24          # single-mode runs at most while shrinking
STAGE_ORDER = ("qk", "softmax", "pv", "glue")
STAGE_SHORT = {"qk": "QK", "softmax": "softmax", "pv": "PV", "glue": "glue"}


# ------------------------------------------------------------------ one case's outcome
@dataclass
class Outcome:
    case: Case
    features: frozenset
    failed: bool
    stage: str | None = None      # diagnose: qk | softmax | pv | glue; run: the failing mode's stage
    mode: str | None = None       # the first failing mode: what shrinking runs
    detail: str = ""              # what failed: the worst output, or the fault
    hints: list = field(default_factory=list)   # localisation hints of the failing mode (diagnose)
    folds: list = field(default_factory=list)


def result_detail(r) -> str:
    """One short phrase for a failing RunResult: the fault, or its worst output."""
    if r.status != "ok":
        return f"{r.status}: {r.message.splitlines()[0][:70] if r.message else ''}"
    bad = [m for m in r.metrics if not m.passed] or list(r.metrics)
    if not bad:
        return ""
    m = max(bad, key=lambda m: m.err_over_floor)
    parts = [f"{m.output} err/floor {m.err_over_floor:.3g}"]
    if m.n_unwritten:
        parts.append(f"{m.n_unwritten} unwritten")
    if m.n_nonfinite:
        parts.append(f"{m.n_nonfinite} NaN/Inf")
    if m.extra.get("nondeterministic"):
        parts.append("moves between launches (race)")
    if m.extra.get("written_outside"):
        parts.append(f"{m.extra['written_outside']} written outside {m.output}")
    if m.extra.get("read_outside"):
        parts.append(f"reads past {', '.join(m.extra['read_outside'])}")
    return ", ".join(parts)


# ------------------------------------------------------------------ attribution
Literal = tuple   # (feature name, present?)


@dataclass
class Attribution:
    literals: tuple               # the predicate: a conjunction of (feature, present?)
    exact: bool                   # failing cases == cases where the predicate holds
    fail_with: int                # failing cases where it holds
    n_with: int
    fail_without: int             # failing cases where it does not
    n_without: int
    exceptions: list = field(default_factory=list)   # cases that contradict it (labels)
    also: list = field(default_factory=list)          # other predicates that score the same

    @property
    def features(self) -> tuple:
        """The features whose presence the predicate names."""
        return tuple(n for n, present in self.literals if present)

    def describe(self, literals=None, block_m="BLOCK_M", block_n="BLOCK_N") -> str:
        lits = self.literals if literals is None else literals
        return " and ".join(FEATURES[n].text(p, block_m, block_n) for n, p in lits)

    def text(self, block_m="BLOCK_M", block_n="BLOCK_N") -> str:
        n_all = self.n_with + self.n_without
        if not self.literals:
            return f"fails at every shape ({self.fail_with}/{n_all}): no shape feature separates"
        what = self.describe(None, block_m, block_n)
        if self.exact:
            s = (f"fails at every shape with {what} ({self.fail_with}/{self.n_with}) "
                 f"and at none without ({self.fail_without}/{self.n_without})")
        else:
            s = (f"no feature separates exactly; closest: fails at {self.fail_with}/{self.n_with} shapes with "
                 f"{what} and at {self.fail_without}/{self.n_without} without (exceptions: {', '.join(self.exceptions)})")
        if self.also:
            s += "; equally: " + "; ".join(self.describe(p, block_m, block_n) for p in self.also)
        return s


def _holds(pred, feats) -> bool:
    return all((n in feats) == present for n, present in pred)


def _score(pred, outcomes) -> tuple:
    fn = sum(o.failed and not _holds(pred, o.features) for o in outcomes)   # failures it misses
    fp = sum(not o.failed and _holds(pred, o.features) for o in outcomes)   # passes it claims
    negatives = sum(not p for _, p in pred)
    # Fewest contradictions; then fewer missed failures (a feature every failure has is the
    # more useful statement); then the simpler predicate: fewer literals, fewer negations.
    return (fn + fp, fn, len(pred), negatives)


def predicates(outcomes) -> list:
    """Single features, present or absent, then pairs of them; only features that vary over
    the cases (a constant one separates nothing)."""
    n = len(outcomes)
    names = [f for f in NAMES if 0 < sum(f in o.features for o in outcomes) < n]
    lits = [(f, True) for f in names] + [(f, False) for f in names]
    return [(l,) for l in lits] + [(a, b) for a, b in combinations(lits, 2) if a[0] != b[0]]


def attribute(outcomes, max_also: int = 2) -> Attribution | None:
    """The shape features that separate failing from passing cases; None when none fails."""
    failing = [o for o in outcomes if o.failed]
    if not failing:
        return None
    if len(failing) == len(outcomes):
        return Attribution((), True, len(failing), len(outcomes), 0, 0)
    scored = sorted(((_score(p, outcomes), i, p) for i, p in enumerate(predicates(outcomes))))
    best_key, _, best = scored[0]
    also = [p for k, _, p in scored[1:] if k == best_key][:max_also]
    with_ = [o for o in outcomes if _holds(best, o.features)]
    without = [o for o in outcomes if not _holds(best, o.features)]
    exceptions = [f"{o.case.label} passes" for o in with_ if not o.failed] + \
                 [f"{o.case.label} fails" for o in without if o.failed]
    return Attribution(best, best_key[0] == 0, sum(o.failed for o in with_), len(with_),
                       sum(o.failed for o in without), len(without), exceptions[:3], also)


def main_stage(outcomes) -> tuple:
    """(stage, mode): the first failing stage most common among the failing cases (ties: the
    earlier stage), and the first failing mode most common among those."""
    failing = [o for o in outcomes if o.failed]
    if not failing:
        return None, None
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    stages = Counter(o.stage for o in failing)
    stage = min(stages, key=lambda s: (-stages[s], order.get(s, len(order)), str(s)))
    modes = Counter(o.mode for o in failing if o.stage == stage)
    mode = min(modes, key=lambda m: (-modes[m], DATAFLOW_ORDER.index(m) if m in DATAFLOW_ORDER else 99))
    return stage, mode


# ------------------------------------------------------------------ shrinking
def _with(case: Case, causal=None, **dims) -> Case | None:
    s = case.shape
    vals = dict(B=s.B, H=s.H, Sq=s.Sq, Sk=s.Sk, D=s.D)
    vals.update(dims)
    try:
        return Case(Shape(**vals), case.causal if causal is None else causal)
    except FlashCoreError:
        return None


def reductions(case: Case, keep=(), spec=None) -> list:
    """Smaller cases than `case` that keep the predicate `keep` and are valid coverage cases,
    the biggest steps first within each dimension: B to 1, H to 1, Sq and Sk together (when
    equal), Sq, Sk (each toward the smallest tile-edge length, half, one tile less), D, causal."""
    s = case.shape
    bm, bn, _ = cov.tile_edges(spec, s.B, s.H, s.Sq, s.D)
    edges = cov.candidate_lengths(spec, s.D)

    def shorter(L, tile):
        return sorted({x for x in (*edges, L // 2, L - tile) if 1 <= x < L})

    out = []
    if s.B > 1:
        out.append(_with(case, B=1))
    if s.H > 1:
        out.append(_with(case, H=1))
    if s.Sq == s.Sk:
        out += [_with(case, Sq=L, Sk=L) for L in shorter(s.Sq, min(bm, bn))]
    out += [_with(case, Sq=L) for L in shorter(s.Sq, bm)]
    out += [_with(case, Sk=L) for L in shorter(s.Sk, bn)]
    spec_dims = sorted(cov.kernel_spec(spec).head_dims)
    out += [_with(case, D=D) for D in spec_dims if D < s.D]
    if case.causal:
        out.append(_with(case, causal=False))
    return [c for c in out if c is not None and cov.valid(c, spec)
            and _holds(keep, cov.features_of(c, spec))]


@dataclass
class Shrunk:
    start: Case
    case: Case                    # the smallest case found that still fails
    runs: int                     # single-mode runs spent
    out_of_budget: bool = False


def shrink(start: Case, keep, still_fails: Callable[[Case], bool], spec=None,
           budget: int = SHRINK_BUDGET) -> Shrunk:
    """Greedy: take the first reduction that still fails and start over from it; stop when no
    reduction fails (or the budget of runs is spent). Each case is run at most once."""
    cur, runs, seen = start, 0, {start}
    while True:
        for cand in reductions(cur, keep, spec):
            if cand in seen:
                continue
            if runs >= budget:
                return Shrunk(start, cur, runs, True)
            seen.add(cand)
            runs += 1
            if still_fails(cand):
                cur = cand
                break
        else:
            return Shrunk(start, cur, runs)


def repro_command(command: str, case: Case, bugs=(), inputs="randn", seed=None, mode=None, kernel=None) -> str:
    """The one-line command that reruns one case; `mode` for `run` (diagnose runs them all);
    `kernel` the --kernel of a spec'd kernel."""
    s = case.shape
    parts = ["flashcore", command] + (["--kernel", kernel] if kernel else [])
    if mode:
        parts += ["--debug", mode]
    parts += ["--shape", f"{s.B},{s.H},{s.Sq},{s.D}", "--sk", str(s.Sk)]
    if case.causal:
        parts.append("--causal")
    for b in bugs:
        parts += ["--bug", b]
    if inputs != "randn":
        parts += ["--inputs", inputs]
    if seed is not None:
        parts += ["--seed", str(seed)]
    return " ".join(parts)


# ------------------------------------------------------------------ the sweep
@dataclass
class Report:
    command: str                  # diagnose | run
    outcomes: list
    seed: int | None
    stage: str | None = None
    mode: str | None = None
    attribution: Attribution | None = None
    shrunk: Shrunk | None = None
    repro: str | None = None

    @property
    def clean(self) -> bool:
        return not any(o.failed for o in self.outcomes)

    @property
    def failing(self) -> list:
        return [o for o in self.outcomes if o.failed]

    @property
    def start(self) -> Outcome | None:
        """The failing case shrinking started from (its folds and hints are shown)."""
        if self.shrunk is None:
            return None
        return next((o for o in self.outcomes if o.case == self.shrunk.start), None)


def smallest_failing(outcomes, stage, keep=()) -> Outcome | None:
    """The smallest failing case at the verdict's stage, preferring one where the predicate holds."""
    at_stage = sorted((o for o in outcomes if o.failed and o.stage == stage), key=lambda o: (o.case.cost, o.case.label))
    return next((o for o in at_stage if _holds(keep, o.features)), at_stage[0] if at_stage else None)


def conclude(command: str, outcomes, still_fails: Callable[[Case, str], bool], bugs=(), inputs="randn",
             seed=None, spec=None, shrink_budget: int = SHRINK_BUDGET, kernel=None) -> Report:
    """The verdict over the outcomes: stage, attribution, the shrunk case and its command.
    still_fails(case, mode) runs one mode on one case and says whether it fails."""
    rep = Report(command, list(outcomes), seed)
    if rep.clean:
        return rep
    rep.stage, rep.mode = main_stage(outcomes)
    rep.attribution = attribute(outcomes)
    keep = rep.attribution.literals if rep.attribution else ()
    start = smallest_failing(outcomes, rep.stage, keep)
    if not _holds(keep, start.features):
        keep = ()
    if rep.mode is None:    # harness errors, no mode to rerun: the smallest failing case as it is
        rep.shrunk = Shrunk(start.case, start.case, 0)
    else:
        rep.shrunk = shrink(start.case, keep, lambda c: still_fails(c, rep.mode), spec, shrink_budget)
    rep.repro = repro_command(command, rep.shrunk.case, bugs, inputs, seed, rep.mode if command == "run" else None,
                              kernel)
    return rep


def run_sweep(cases, per_case: Callable[[Case], Outcome], show: bool = False, what: str = "", spec=None) -> list:
    """Each case's outcome; a harness error on one case (not a kernel fault, which comes back
    as that case's result) is reported for that case and the sweep goes on."""
    out = []
    for i, c in enumerate(cases, 1):
        try:
            if show:   # a transient line (nothing in logs): which case the sweep is at
                with console.status(f"{what} {c.label} ({i}/{len(cases)})"):
                    out.append(per_case(c))
            else:
                out.append(per_case(c))
        except FlashCoreError as e:
            out.append(Outcome(c, cov.features_of(c, spec), True, "error", None, f"error: {str(e).splitlines()[0][:70]}"))
    return out


# ------------------------------------------------------------------ on the GPU
def _validate(cases, modes, bugs):
    """Every variant of the sweep, before the GPU is touched (usage errors first, exit 2)."""
    from harness.toolchain.variant import Variant
    from harness.run.session import causal_for
    for c in cases:
        for m in modes:
            Variant(m, c.shape.D, causal_for(m, c.causal, len(modes)), tuple(bugs))


def _single_mode_runner(inputs, seed, bugs, scale, record, isolate, device):
    """still_fails(case, mode): one mode on one case, isolated like every other run."""
    from harness import records
    from harness.run import runs

    def still_fails(case: Case, mode: str) -> bool:
        r = runs.run_case(runs.make_case(mode, case.shape, causal=case.causal and get_mode(mode).allows_causal,
                                         inputs=inputs, seed=seed, scale=scale, bugs=list(bugs), keep_outputs=False),
                          isolate=isolate)
        if record:
            records.append(runs.run_record(r, device))
        return not r.passed
    return still_fails


def cases_for(head_dim=None, causal_only=False, modes=None, spec=None) -> list:
    """The coverage set, restricted by --head-dim and --causal; without any mode that has a
    causal form, the non-causal cases only (the causal ones would repeat them)."""
    masks = True if causal_only else None
    if not causal_only and modes and not any(get_mode(m).allows_causal for m in modes):
        masks = False
    return cov.coverage_set(spec, None if head_dim is None else (head_dim,), masks)


def diagnose_coverage(cases=None, inputs="randn", seed=None, bugs=(), record=True, isolate=True, show=True,
                      png=None, shrink_budget: int = SHRINK_BUDGET) -> Report:
    """`flashcore diagnose` without --shape: stage bisection at every coverage case."""
    from harness.check.inputs import fresh_seed
    from harness.run.diagnose import BISECT_MODES, diagnose
    from harness.run.session import facts_and_builds
    cases = cases_for() if cases is None else list(cases)
    _validate(cases, BISECT_MODES, bugs)
    # every variant, in parallel, in case order: each case waits for its own only
    device, builds = facts_and_builds([(c.shape, c.causal) for c in cases], BISECT_MODES, bugs, isolate)
    seed = fresh_seed() if seed is None else seed

    def per_case(c: Case) -> Outcome:
        builds.wait(c.shape, c.causal)
        d = diagnose(c.shape, causal=c.causal, inputs=inputs, seed=seed, bugs=bugs, record=record,
                     isolate=isolate, show=False, prebuild=False)
        if d.clean:
            return Outcome(c, cov.features_of(c), False)
        return Outcome(c, cov.features_of(c), True, d.stage, d.failing.variant.mode, result_detail(d.failing),
                       [h for f in d.folds for h in getattr(f, "hints", [])], list(d.folds))

    try:
        outcomes = run_sweep(cases, per_case, show, "diagnose")
    finally:
        builds.close()
    rep = conclude("diagnose", outcomes, _single_mode_runner(inputs, seed, bugs, None, record, isolate, device),
                   bugs, inputs, seed, None, shrink_budget)
    if show:
        print_report(rep, bugs, inputs, device)
    if png and rep.start is not None and rep.start.folds:
        from harness.show import heatmap
        heatmap.save_png(rep.start.folds, png, f"{rep.start.case.label}: first failing stage {rep.stage}")
        console.print(f"heat maps of {rep.start.case.label} written to {png}")
    return rep


def run_coverage(modes, cases=None, inputs="randn", seed=None, scale=None, bugs=(), record=True, isolate=True,
                 show=True, shrink_budget: int = SHRINK_BUDGET) -> Report:
    """`flashcore run` without --shape: the modes at every coverage case."""
    from harness.check.inputs import fresh_seed
    from harness.run import session
    modes = sorted(set(modes), key=DATAFLOW_ORDER.index)
    cases = cases_for(modes=modes) if cases is None else list(cases)
    _validate(cases, modes, bugs)
    device, builds = session.facts_and_builds([(c.shape, c.causal) for c in cases], modes, bugs, isolate)
    seed = fresh_seed() if seed is None else seed

    def per_case(c: Case) -> Outcome:
        builds.wait(c.shape, c.causal)
        results = session.run_modes(modes, c.shape, causal=c.causal, inputs=inputs, seed=seed, scale=scale,
                                    bugs=bugs, record=record, isolate=isolate, show=False, prebuild=False)
        bad = next((r for r in results if not r.passed), None)   # results come in data-flow order
        if bad is None:
            return Outcome(c, cov.features_of(c), False)
        m = bad.variant.mode
        return Outcome(c, cov.features_of(c), True, get_mode(m).stage, m, result_detail(bad))

    try:
        outcomes = run_sweep(cases, per_case, show, "run")
    finally:
        builds.close()
    rep = conclude("run", outcomes, _single_mode_runner(inputs, seed, bugs, scale, record, isolate, device),
                   bugs, inputs, seed, None, shrink_budget)
    if show:
        print_report(rep, bugs, inputs, device, modes)
    return rep


# ------------------------------------------------------------------ the report
def tile_words(outcomes, spec=None) -> tuple:
    """(block_m, block_n) for feature labels: numbers when every case has the same tiles."""
    tiles = {cov.tile_edges(spec, o.case.shape.B, o.case.shape.H, o.case.shape.Sq, o.case.shape.D)[:2]
             for o in outcomes}
    return tiles.pop() if len(tiles) == 1 else ("BLOCK_M", "BLOCK_N")


def coverage_table(rep: Report, title: str) -> Table:
    t = Table(title=title, title_justify="left")
    first = "first failing stage" if rep.command == "diagnose" else "first failing mode"
    for col in ("#", "shape", "features", first, "what failed", "verdict"):
        t.add_column(col, justify="right" if col == "#" else "left")
    for i, o in enumerate(rep.outcomes, 1):
        tags = " ".join(FEATURES[n].tag for n in NAMES if n in o.features)
        where = "-" if not o.failed else (f"{STAGE_SHORT.get(o.stage, o.stage)} ({o.mode})" if rep.command == "diagnose"
                                          else f"{o.mode}")
        t.add_row(str(i), o.case.label, tags, where, o.detail or "-", verdict(not o.failed))
    return t


def print_report(rep: Report, bugs=(), inputs="randn", device=None, modes=None, spec=None):
    from harness.run.diagnose import STAGE_TEXT
    n = len(rep.outcomes)
    what = ("diagnose" if rep.command == "diagnose" else "run " + ",".join(modes or ())) + \
        (f" {spec.name}" if getattr(spec, "spec_path", None) else "")
    title = (f"{what}: coverage set, {n} shapes (every pair of {len(FEATURES)} shape features)  inputs={inputs} "
             f"seed={rep.seed}" + (f"  {device['device']}" if device else "") + "".join(f" +BUG_{b}" for b in bugs))
    console.print(coverage_table(rep, title))
    if rep.clean:
        console.print(f"[bold green]no {'stage' if rep.command == 'diagnose' else 'check'} fails at any of the "
                      f"{n} coverage shapes[/]")
        return
    bm, bn = tile_words(rep.outcomes, spec)
    if rep.command == "diagnose":
        where = f"first failing stage: {STAGE_TEXT.get(rep.stage, rep.stage)}"
    else:
        where = f"first failing mode: {rep.mode} (stage {rep.stage})"
    n_at = sum(o.stage == rep.stage for o in rep.failing)
    console.print(f"[bold red]{len(rep.failing)} of {n} coverage shapes FAIL; {where}[/] "
                  f"(at {n_at} of the {len(rep.failing)})")
    if rep.attribution is not None:
        console.print(f"[bold]separating feature:[/] {rep.attribution.text(bm, bn)}")
    start = rep.start
    if start is not None and start.hints:
        console.print(f"hints at {start.case.label}: " + "; ".join(start.hints[:3]))
    # The smallest shape has the fewest tiles, so tile-pattern hints ("the last key tile only")
    # can only show at a larger one: print the largest failing shape's hints too.
    richest = max((o for o in rep.failing if o.stage == rep.stage and o.hints),
                  key=lambda o: (o.case.cost, o.case.label), default=None)
    if richest is not None and richest is not start:
        console.print(f"hints at {richest.case.label} (the largest failing shape): " + "; ".join(richest.hints[:3]))
    s = rep.shrunk
    if s is not None:
        if s.runs == 0:
            how = "the smallest failing coverage shape; nothing smaller keeps the separating feature"
        else:
            how = (f"shrunk from {s.start.label} in {s.runs} run{'s' if s.runs > 1 else ''} of {rep.mode}"
                   + (", run budget spent" if s.out_of_budget else ""))
        console.print(f"[bold]smallest failing shape:[/] {s.case.label}  ({how})")
        console.print(f"[bold]reproduce:[/] {rep.repro}")
