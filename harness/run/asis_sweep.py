"""`run --kernel SPEC` and `diagnose --kernel SPEC`: a spec'd kernel (kernels/spec.py) over one
shape or over the coverage set its own tiles and domain define, every case in a worker
process (a fault or a hang is that case's verdict, and the sweep goes on).

Stage isolation for a kernel checked as written comes from its own declared debug flags: each
flag names the stage it isolates (qk, softmax, pv), so `diagnose` runs the flags in data-flow
order and then the kernel as written; the first failing stage is the earliest flag that fails,
"glue" when every flag passes and the kernel fails, and "all" for a kernel that declares no
flag (no stage can be told apart from the others without one: issue 22's input probes).
"""

from __future__ import annotations

from dataclasses import asdict

from harness import records
from harness.toolchain import compiler
from harness.check import coverage as cov
from harness.check.coverage import Case
from harness.check.inputs import fresh_seed
from harness.check.shapes import Shape
from harness.errors import UsageError
from harness.run import coverage as rc
from harness.run import pool, runs, session
from harness.show.report import console, error_table
from kernels import spec as kspec

CASE_TIMEOUT_S = 120.0     # compile + launches; a hung launch is caught sooner, inside the worker (device.HANG_S)
STAGE_RANK = {s: i for i, s in enumerate(kspec.STAGES)}


def stage_modes(spec: kspec.Spec) -> list:
    """The modes diagnose runs: the declared flags by stage (data-flow order), then full."""
    return [f.flag for f in sorted(spec.flags, key=lambda f: STAGE_RANK[f.stage])] + ["full"]


def spec_modes(spec: kspec.Spec, debug: str) -> list:
    """--debug for a spec'd kernel: full, all (its flags then full), or its own flags by name."""
    if debug == "all":
        return stage_modes(spec)
    return ["full" if m.strip() == "full" else spec.flag(m.strip()).flag for m in debug.split(",")]


def mode_stage(spec, mode: str) -> str:
    if mode == "full":
        return "glue" if spec.flags else "all"
    return spec.flag(mode).stage


def make_case(spec_path, mode, shape: Shape, causal=False, **kw) -> dict:
    return dict(spec=str(spec_path), mode=mode, shape=asdict(shape), causal=causal, **kw)


def run_cases(cases: list, isolate: bool = True) -> list:
    """Each case's RunResult; isolated, in the harness's worker (faults and hangs reported)."""
    if not isolate:
        return [run_one(c) for c in cases]
    return runs.run_isolated(cases, _lost, CASE_TIMEOUT_S)


def run_one(case: dict):
    """The worker's side (harness/run/worker.py): one case in this process."""
    from harness.run.asis import run_spec
    kw = {k: v for k, v in case.items() if k not in ("spec", "shape", "mode")}
    return run_spec(case["spec"], case["mode"], Shape(**case["shape"]), **kw)


def _lost(case, message):
    from harness.toolchain.user_kernel import UserVariant
    from harness.run.gpu import RunResult
    spec = kspec.load(case["spec"])
    shape = Shape(**case["shape"])
    v = UserVariant(spec, case["mode"], shape.D, case.get("causal", False), tuple(case.get("bugs", ())))
    return RunResult(v, shape, case.get("scale") or 0.0, case.get("inputs", "randn"), case.get("seed") or 0,
                     status="fault", message=message)


def record_of(r, spec: kspec.Spec, device: dict) -> dict:
    return runs.run_record(r, device, kernel_sha256=compiler.source_hash(spec.source), kernel=spec.name,
                           kernel_spec=str(spec.spec_path) if spec.spec_path else None)


def validate(spec: kspec.Spec, modes, shapes_causal, bugs=()):
    """Usage errors before any GPU work: modes declared, shapes inside the domain, bugs known."""
    from harness.toolchain.user_kernel import UserVariant
    for m in modes:
        for shape, causal in shapes_causal:
            spec.check_domain(shape.B, shape.H, shape.Sq, shape.Sk, shape.D, causal)
            UserVariant(spec, m, shape.D, causal, tuple(bugs))


def run_modes(spec_path, modes, shape: Shape, causal=False, inputs="randn", seed=None, scale=None, bugs=(),
              record=True, isolate=True, show=True, title=None, keep_outputs=False) -> list:
    spec = kspec.load(spec_path)
    validate(spec, modes, [(shape, causal)], bugs)
    if isolate:
        pool.prestart(1)
    device = session.device_facts(isolate)
    seed = fresh_seed() if seed is None else seed
    cases = [make_case(spec_path, m, shape, causal, inputs=inputs, seed=seed, scale=scale, bugs=list(bugs),
                       keep_outputs=keep_outputs) for m in modes]
    results = run_cases(cases, isolate)
    if record:
        for r in results:
            records.append(record_of(r, spec, device))
    if show:
        t = title or (f"{spec.name} {shape.label}{' causal' if causal else ''}  inputs={inputs} seed={seed}  "
                      f"{device.get('device')}" + "".join(f" +BUG_{b}" for b in bugs))
        console.print(error_table(results, t))
        for r in results:
            if r.status != "ok":
                console.print(f"[bold red]{r.status.upper()}[/] {r.variant.mode}: {r.message.splitlines()[0]}")
        n_fail = sum(not r.passed for r in results)
        console.print(f"[bold]{'all checks pass' if not n_fail else f'{n_fail} of {len(results)} modes FAIL'}[/]")
    return results


def coverage_cases(spec: kspec.Spec, head_dim=None, causal_only=False) -> list:
    return cov.coverage_set(spec, None if head_dim is None else (head_dim,), True if causal_only else None)


def sweep(spec_path, command: str, modes=None, cases=None, inputs="randn", seed=None, scale=None, bugs=(),
          record=True, isolate=True, show=True, shrink_budget: int = rc.SHRINK_BUDGET) -> rc.Report:
    """run/diagnose without --shape for a spec'd kernel: every coverage case, the verdict
    (stage, separating feature, smallest failing shape, the command that reproduces it)."""
    spec = kspec.load(spec_path)
    modes = stage_modes(spec) if modes is None else list(modes)
    cases = coverage_cases(spec) if cases is None else list(cases)
    if not cases:
        raise UsageError(f"{spec.name}: the coverage set is empty for these options")
    validate(spec, modes, [(c.shape, c.causal) for c in cases], bugs)
    if isolate:
        pool.prestart(1)
    device = session.device_facts(isolate)
    seed = fresh_seed() if seed is None else seed

    def results_of(c: Case, ms, keep):
        rs = run_cases([make_case(spec_path, m, c.shape, c.causal, inputs=inputs, seed=seed, scale=scale,
                                  bugs=list(bugs), keep_outputs=keep) for m in ms], isolate)
        if record:
            for r in rs:
                records.append(record_of(r, spec, device))
        return rs

    def per_case(c: Case) -> rc.Outcome:
        rs = results_of(c, modes, command == "diagnose")
        bad = next((r for r in rs if not r.passed), None)
        feats = cov.features_of(c, spec)
        if bad is None:
            return rc.Outcome(c, feats, False)
        m = bad.variant.mode
        return rc.Outcome(c, feats, True, mode_stage(spec, m), m, rc.result_detail(bad),
                          [h for f in bad.folds for h in getattr(f, "hints", [])], list(bad.folds))

    outcomes = rc.run_sweep(cases, per_case, show, command, spec)
    rep = rc.conclude(command, outcomes, lambda c, m: not results_of(c, [m], False)[0].passed, bugs, inputs, seed,
                      spec, shrink_budget, kernel=str(spec_path))
    if show:
        rc.print_report(rep, bugs, inputs, device, modes if command == "run" else None, spec)
    return rep
