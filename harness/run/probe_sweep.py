"""`diagnose --probes`: stage isolation without debug flags, from input probes whose exact
attention is known in closed form (harness/check/probes.py), over one shape or the coverage set.

Every probe is launched on the kernel as written (harness/run/asis.py: guard margins, repeat
launch, deadline), judged by the floor rule against its exact answer, and read for evidence:
which keys reached which rows, with what weight; which row's answer a row holds. The stage
is decided from which probes fail and what they show (decide(); docs/DESIGN.md §10):

  1. uniform or onehot fails: keys that take weight though they do not exist, or keys lost at
     the end of the key loop -> QK (masking, the key loop); rows that differ although every
     score is equal -> PV (the O store, row addressing); else -> PV (P.V or the normaliser),
     with the keys the onehot view names;
  2. dominant fails: rows holding another row's answer -> PV (the O store); Inf/NaN rows ->
     softmax (exp overflows: the row max); failures only where the dominant key lies past the
     first key tile -> glue (the rescale); else -> QK;
  3. identity or large fails -> softmax;
  4. only the plain random check fails -> glue.
A race (an output that moves between two launches) or a write outside an output is named as
such whatever the stage.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from harness.toolchain.device import runtime_arch
from harness.toolchain.user_kernel import UserVariant
from harness.check import metrics as met
from harness.check import probes as pr
from harness.check import spec_reference as sref
from harness.check.shapes import Shape
from harness.errors import UsageError
from kernels import spec as kspec

PROBE_SEED_OFFSET = {name: i * 7919 for i, name in enumerate(pr.ORDER)}


def kernel_of(ref):
    """A spec'd kernel (a Spec, or the path of its spec) or a Python callable (module:function,
    harness/run/callable_kernel.py): the probes need only inputs in and O (and LSE) out."""
    from harness.run import callable_kernel as ck
    if isinstance(ref, (kspec.Spec, ck.CallableKernel)):
        return ref
    if ck.is_callable_ref(str(ref)):
        ck.load(str(ref))                  # one line now if it does not import
        return ck.CallableKernel(str(ref))
    return kspec.load(ref)


def _is_callable(kernel) -> bool:
    from harness.run.callable_kernel import CallableKernel
    return isinstance(kernel, CallableKernel)


def validate_kernel(kernel, shape: Shape, causal: bool, bugs=()) -> None:
    """Before any GPU work: the shape inside the declared domain, the bugs declared."""
    kernel.check_domain(shape.B, shape.H, shape.Sq, shape.Sk, shape.D, causal)
    if _is_callable(kernel):
        if bugs:
            raise UsageError(f"{kernel.ref} is a Python callable: it has no seeded bugs to switch on")
        return
    UserVariant(kernel, "full", shape.D, causal, tuple(bugs))


@dataclass
class ProbeResult:
    probe: str
    shape: Shape
    causal: bool
    status: str = "ok"                 # ok | fault | hang | compile_error
    message: str = ""
    passed: bool = True
    metrics: list = field(default_factory=list)     # StageMetrics of O (and LSE), one per launch
    kind: str = "ok"                   # what the evidence shows (probes.describe_weights, dominant_reading)
    words: str = ""
    moved: int = 0                     # elements that moved between two launches
    outside: int = 0                   # elements written outside an output
    sample: object = None              # uniform: O[0, 0, :4, :8] and the expected row, the row spread
    expected_row: object = None
    spread: float = 0.0
    key_weight: object = None          # onehot: per key, the mean weight it reached the rows with (1 = right)

    @property
    def worst(self):
        return max(self.metrics, key=lambda m: m.err_over_floor, default=None)


def _rounded_inputs(l: pr.Launch, dtype: str) -> dict:
    nd = sref.np_dtype(dtype)
    return {"q": l.q.astype(nd), "k": l.k.astype(nd), "v": l.v.astype(nd)}


def run_probe(spec, name: str, shape: Shape, causal: bool = False, seed: int = 0, bugs=(), scale=None,
              hang_s=None) -> ProbeResult:
    """One probe on one shape: every launch it needs, judged and read."""
    from harness.run import asis, callable_kernel
    from harness.run.gpu import VERDICTS, verdict_status
    spec = kernel_of(spec)
    probe = pr.PROBES[name]
    res = ProbeResult(name, shape, causal)
    if causal and not probe.causal_ok:
        res.words = "skipped: no causal form"
        return res
    if _is_callable(spec):
        def execute(_, shape, scale, host, hang_s, deterministic):
            return callable_kernel.execute(spec.ref, shape, scale, host, causal, deterministic)
        variant = None
    else:
        execute = asis.execute
        variant = UserVariant(spec, "full", shape.D, causal, tuple(bugs), runtime_arch())
    scale = 1.0 / math.sqrt(shape.D) if scale is None else float(scale)
    rng = np.random.default_rng(seed + PROBE_SEED_OFFSET.get(name, 0))
    launches = probe.build(shape, causal, rng, scale) if name in ("dominant", "large") else probe.build(shape, causal, rng)
    dtype = spec.buffer_dtype(spec.role_arg("q"))
    out_dtype = spec.precision.get("output") or spec.buffer_dtype(spec.role_arg("o"))
    p_dtype = spec.precision.get("p") or spec.dtype
    outs, fails = [], []
    for n, l in enumerate(launches):
        host = _rounded_inputs(l, dtype)
        try:
            ex = execute(variant, shape, scale, host, hang_s, deterministic=n == 0)
        except VERDICTS as e:
            res.status, res.message, res.passed = verdict_status(e), str(e).splitlines()[0], False
            return res
        q64, k64, v64 = (host[x].astype(np.float32).astype(np.float64) for x in "qkv")
        exact = sref.exact(q64, k64, v64, scale, causal)
        kp = sref.kernel_precision(q64, k64, v64, scale, causal, spec.block_n, p_dtype, out_dtype)
        exact, kp = (sref.in_convention(r, spec.lse_base, spec.m_form) for r in (exact, kp))
        got = ex.got["o"]
        sm, _ = met.compare(f"probe:{name}", "O", probe.stage, np.ascontiguousarray(got), exact["o"], kp["o"])
        res.metrics.append(sm)
        res.moved += sum(ex.moved.values())
        res.outside += sum(n_out for n_out, _ in ex.outside.values())
        if "lse" in ex.got and name in ("uniform", "large"):
            sl, _ = met.compare(f"probe:{name}", "LSE", probe.stage, ex.got["lse"], exact["lse"], kp["lse"])
            res.metrics.append(sl)
        outs.append(got.astype(np.float64))
        fails.append(np.abs(got.astype(np.float64) - exact["o"]).max(axis=-1) > sm.tol)
    res.passed = all(m.passed for m in res.metrics) and res.moved == 0 and res.outside == 0
    with warnings.catch_warnings():       # all-NaN slices (unwritten rows, keys not launched) are read as such
        warnings.simplefilter("ignore", RuntimeWarning)
        if name == "uniform" and outs:
            res.sample, res.expected_row = outs[0][0, 0, :4, :8], exact["o"][0, 0, 0, :8]
            spread = outs[0].max(axis=-2) - outs[0].min(axis=-2)
            res.spread = float(np.nanmax(spread)) if not causal and np.isfinite(spread).any() else float("nan")
        if name == "onehot" and outs:
            w = pr.key_weights(outs, launches, shape.Sq, shape.Sk, causal)
            want = pr.expected_weights(shape.Sq, shape.Sk, causal)
            res.key_weight = np.nanmean(np.where(want > 0, w, np.nan), axis=(0, 1, 2))
    _read(res, spec, launches, outs, fails, shape, causal)
    return res


def _read(res: ProbeResult, spec, launches, outs, fails, shape, causal):
    """What the failing probe shows, in a kernel author's words."""
    if res.moved:
        res.kind, res.words = "race", f"{res.moved} elements differ between two launches on the same inputs: a race"
        return
    if res.outside:
        res.kind, res.words = "outside", f"{res.outside} elements written outside the outputs"
        return
    if res.passed:
        return
    tol = max(m.tol for m in res.metrics)
    if res.probe == "onehot":
        w = pr.key_weights(outs, launches, shape.Sq, shape.Sk, causal)
        n = pr.visible_counts(shape.Sq, shape.Sk, causal)
        res.kind, res.words = pr.describe_weights(w, pr.expected_weights(shape.Sq, shape.Sk, causal),
                                                  max(tol * float(n.max()), 0.002), spec.block_n)
    elif res.probe == "uniform":
        same = pr.rows_identical(outs[0], tol) if not causal else False
        res.kind = "same_wrong" if same else "rows_differ"
        res.words = ("every row is the same wrong value" if same else
                     "rows differ although every score is equal")
    elif res.probe == "dominant":
        v = launches[0].v
        res.kind, res.words = pr.dominant_reading(outs[0], v, launches[0].perm, tol, spec.block_n, fails[0])
    else:
        w = res.worst
        res.kind, res.words = "wrong", f"O err/floor {w.err_over_floor:.3g}" + (f", {w.n_nonfinite} NaN/Inf" if w.n_nonfinite else "")


def decide(results: dict, plain=None) -> tuple:
    """(stage, probe, words) from the probes' results (see the module docstring); (None, None,
    "") when every probe and the plain check pass. plain: the RunResult of the random check."""
    for r in results.values():
        if r.status != "ok":
            return ("all", r.probe, f"{r.status.upper()} in probe {r.probe}: {r.message}")
    for r in results.values():
        if r.kind in ("race", "outside"):
            return ("glue" if r.kind == "race" else "pv", r.probe, r.words)
    u, oh = results.get("uniform"), results.get("onehot")
    if (u and not u.passed) or (oh and not oh.passed):
        if oh and oh.kind in ("diluted", "lost_tail"):
            return "qk", "onehot", oh.words
        if u and not u.passed and u.kind == "rows_differ" and (oh is None or oh.passed or oh.kind == "wrong"):
            return "pv", "uniform", u.words + ": the O store or the row addressing"
        if oh and not oh.passed:
            return "pv", "onehot", oh.words + " (P.V or the normaliser)"
        return "pv", "uniform", u.words + ": P.V or the normaliser"
    d = results.get("dominant")
    if d and not d.passed:
        stage = {"moved": "pv", "rescale": "glue", "overflow": "softmax"}.get(d.kind, "qk")
        return stage, "dominant", d.words
    for name in ("identity", "large"):
        r = results.get(name)
        if r and not r.passed:
            return "softmax", name, f"{name} probe: {r.words}: the softmax's P (exp, row max, row sum)"
    if plain is not None and not plain.passed:
        return "glue", "random", "every probe passes and random inputs fail: the glue (rescale, hand-off, synchronisation)"
    return None, None, ""


def run_all(spec, shape: Shape, causal=False, seed=0, bugs=(), names=pr.ORDER, plain: bool = True):
    """Every probe (and the plain random check) on one shape: ({name: ProbeResult}, plain RunResult)."""
    from harness.run.asis import run_spec
    from harness.run.callable_kernel import run_callable
    spec = kernel_of(spec)
    results = {n: run_probe(spec, n, shape, causal, seed, bugs) for n in names}
    if not plain:
        return results, None
    if _is_callable(spec):
        return results, run_callable(spec.ref, shape, causal, seed=seed)
    return results, run_spec(spec, "full", shape, causal, seed=seed, bugs=bugs)


# ------------------------------------------------------------------ in a worker, over shapes
@dataclass
class ProbeCase:
    """Every probe of one case, as a worker sends it back (status hang/fault: the worker goes)."""
    results: dict
    plain: object = None
    status: str = "ok"
    message: str = ""


def run_case(case: dict) -> ProbeCase:
    """The worker's side (harness/run/worker.py)."""
    shape = Shape(**case["shape"])
    results, plain = run_all(case["spec"], shape, case.get("causal", False), case.get("seed", 0),
                             tuple(case.get("bugs", ())), tuple(case.get("names", pr.ORDER)), case.get("plain", True))
    bad = next((r for r in results.values() if r.status in ("hang", "fault")), None)
    if bad is None and plain is not None and plain.status in ("hang", "fault"):
        return ProbeCase(results, plain, plain.status, plain.message)
    return ProbeCase(results, plain, bad.status if bad else "ok", bad.message if bad else "")


def run_cases(cases: list, isolate: bool = True) -> list:
    from harness.run import runs
    from harness.run.asis_sweep import CASE_TIMEOUT_S
    if not isolate:
        return [run_case(c) for c in cases]
    return runs.run_isolated(cases, lambda c, message: ProbeCase({}, None, "fault", message), CASE_TIMEOUT_S)


def make_case(spec_path, shape: Shape, causal=False, seed=0, bugs=(), names=pr.ORDER, plain=True) -> dict:
    from dataclasses import asdict
    return dict(probes=True, spec=str(spec_path), shape=asdict(shape), causal=causal, seed=seed, bugs=list(bugs),
                names=list(names), plain=plain)


def verdict_of(pc: ProbeCase) -> tuple:
    if pc.status != "ok" and not pc.results:
        return "all", None, f"{pc.status}: {pc.message.splitlines()[0] if pc.message else ''}"
    return decide(pc.results, pc.plain)


def probe_table(pc: ProbeCase, title: str):
    from rich.markup import escape
    from rich.table import Table
    from harness.show.report import fmt, verdict
    t = Table(title=escape(title), title_justify="left")
    for c in ("probe", "closed form", "exercises", "O max abs", "floor", "err/floor", "verdict", "what it shows"):
        t.add_column(c)
    for name, r in pc.results.items():
        p = pr.PROBES[name]
        w = r.worst
        if r.status != "ok":
            t.add_row(name, p.closed_form, p.exercises, "-", "-", "-", f"[bold red]{r.status.upper()}[/]", r.message[:60])
            continue
        t.add_row(name, escape(p.closed_form), p.exercises, fmt(w.max_abs) if w else "-", fmt(w.floor) if w else "-",
                  fmt(w.err_over_floor, ".2f") if w else "-", verdict(r.passed), escape(r.words or "-"))
    if pc.plain is not None:
        pm = max(pc.plain.metrics, key=lambda m: m.err_over_floor, default=None)
        t.add_row("random", "float64 attention", "everything (the glue)", fmt(pm.max_abs) if pm else "-",
                  fmt(pm.floor) if pm else "-", fmt(pm.err_over_floor, ".2f") if pm else "-",
                  verdict(pc.plain.passed) if pc.plain.status == "ok" else f"[bold red]{pc.plain.status.upper()}[/]", "-")
    return t


def diagnose_shape(spec_path, shape: Shape, causal=False, seed=0, bugs=(), isolate=True, show=True):
    """Every probe on one shape: the table and the verdict line; returns (stage, probe, words, ProbeCase)."""
    from harness.run.diagnose import STAGE_TEXT
    from harness.show.report import console
    from harness.run import session
    spec = kernel_of(spec_path)
    validate_kernel(spec, shape, causal, bugs)
    session.device_facts(isolate)        # no GPU: one line (exit 2), not a table of faults
    pc = run_cases([make_case(spec.spec_path, shape, causal, seed, bugs)], isolate)[0]
    stage, probe, words = verdict_of(pc)
    if show:
        console.print(probe_table(pc, f"diagnose --probes {spec.name} {shape.label}{' causal' if causal else ''} "
                                      f"seed={seed}" + "".join(f" +BUG_{b}" for b in bugs)))
        if stage is None:
            console.print("[bold green]no probe fails[/]")
        else:
            console.print(f"[bold red]first failing stage: {STAGE_TEXT.get(stage, stage)}[/]  (probe {probe})")
            console.print(f"  {words}")
    return stage, probe, words, pc


def sweep(spec_path, cases=None, seed=None, bugs=(), record=False, isolate=True, show=True, shrink_budget=None):
    """diagnose --probes without --shape: every coverage case, then stage, separating feature,
    smallest failing shape and the command that reproduces it (harness/run/coverage.py)."""
    from harness.check import coverage as cov
    from harness.check.inputs import fresh_seed
    from harness.run import coverage as rc
    from harness.run.asis_sweep import coverage_cases, validate
    spec = kernel_of(spec_path)
    spec_path = spec.spec_path
    if _is_callable(spec):
        cases = cov.coverage_set(spec) if cases is None else list(cases)
        for c in cases:
            validate_kernel(spec, c.shape, c.causal, bugs)
    else:
        cases = coverage_cases(spec) if cases is None else list(cases)
        validate(spec, ["full"], [(c.shape, c.causal) for c in cases], bugs)
    seed = fresh_seed() if seed is None else seed
    if isolate:
        from harness.run import pool
        pool.prestart(1)
    from harness.run import session
    session.device_facts(isolate)

    def per_case(c):
        pc = run_cases([make_case(spec_path, c.shape, c.causal, seed, bugs)], isolate)[0]
        stage, probe, words = verdict_of(pc)
        feats = cov.features_of(c, spec)
        if stage is None:
            return rc.Outcome(c, feats, False)
        return rc.Outcome(c, feats, True, stage, probe or "random", words)

    def still_fails(c, probe):
        names = () if probe == "random" else (probe,)
        pc = run_cases([make_case(spec_path, c.shape, c.causal, seed, bugs, names, plain=probe == "random")], isolate)[0]
        return verdict_of(pc)[0] is not None

    outcomes = rc.run_sweep(cases, per_case, show, "diagnose --probes", spec)
    rep = rc.conclude("diagnose", outcomes, still_fails, bugs, "randn", seed, spec,
                      shrink_budget or rc.SHRINK_BUDGET, kernel=str(spec_path))
    if rep.repro:
        rep.repro = rep.repro.replace("flashcore diagnose", "flashcore diagnose --probes", 1)
    if show:
        from harness.run import session
        rc.print_report(rep, bugs, "probes", session.device_facts(isolate), None, spec)
    return rep


def smoking_gun(spec_path, shape: Shape, seed=0, bugs=(), isolate=True, show=True) -> ProbeCase:
    """The uniform-attention test for any kernel: Q = 0 (P = 1/Sk without a flag), the row
    spread and the error against mean V, and the one-hot view: which keys reach O, by tile."""
    from rich.table import Table
    from harness.show.report import console, smoking_gun_tables
    from harness.run import session
    spec = kernel_of(spec_path)
    validate_kernel(spec, shape, False, bugs)
    session.device_facts(isolate)
    pc = run_cases([make_case(spec.spec_path, shape, False, seed, bugs, ("uniform", "onehot"), plain=False)], isolate)[0]
    if not show:
        return pc
    console.print(f"[bold]Smoking gun[/] (Q = 0, no flag): every score is equal, so every output row must equal the "
                  f"column mean of V.\nshape {shape.label}, seed {seed}, {spec.name}" + "".join(f" +BUG_{b}" for b in bugs))
    u, oh = pc.results.get("uniform"), pc.results.get("onehot")
    if u is None or u.status != "ok":
        console.print(f"[bold red]{(u.status if u else pc.status).upper()}[/]: {(u.message if u else pc.message)}")
        return pc
    w = u.worst
    for table in smoking_gun_tables(u.expected_row, u.sample, 8, u.spread, w.max_abs, w.floor, w.tol, u.passed):
        console.print(table)
    if oh is not None and oh.key_weight is not None:
        kt = Table(title="one-hot keys (Q = 0, V = e_j in blocks of D keys): the weight each key reaches O with "
                         "(1 = right)", title_justify="left")
        for c in ("key tile", "keys", "min weight", "max weight", "keys off"):
            kt.add_column(c)
        kw = oh.key_weight
        for t0 in range(0, shape.Sk, spec.block_n):
            seg = kw[t0:t0 + spec.block_n]
            seen = seg[~np.isnan(seg)]
            if not seen.size:
                continue
            off = int(np.sum(np.abs(seen - 1.0) > 0.02))
            kt.add_row(str(t0 // spec.block_n), f"{t0}-{min(shape.Sk, t0 + spec.block_n) - 1}", f"{seen.min():.3f}",
                       f"{seen.max():.3f}", str(off))
        console.print(kt)
        if not oh.passed:
            console.print(f"  {oh.words}")
    return pc
