"""What `flashcore run` does, as an API: validate, run each mode (isolated in the worker
process, or here), print the error table, record every result."""

from __future__ import annotations

from debug_modes.registry import DATAFLOW_ORDER, get_mode
from harness import records
from harness.run import pool, runs
from harness.toolchain.device import require_gpu
from harness.show.report import console, error_table
from harness.toolchain.variant import Variant


def causal_for(mode: str, causal: bool, n_modes: int) -> bool:
    """A mode without a causal form (uniform_p) runs non-causal in a sweep of several modes;
    asked for alone, its Variant refuses causal (a usage error)."""
    return causal and (get_mode(mode).allows_causal or n_modes == 1)


def device_facts(isolate: bool) -> dict:
    """The device facts for the records. Isolated, a worker tells them: this process never
    initialises CUDA."""
    return pool.device_facts() if isolate else require_gpu()


def prebuild_for(cases, modes, bugs, device: dict, background: bool = False):
    """Compile ahead, in parallel, every variant the (shape, causal) cases will launch under
    the modes (harness/toolchain/prebuild.py); the workers then load cubins. A variant that
    fails to compile is left to its launch, which reports it as that case's verdict.
    background: return a CaseBuilds at once (its wait(shape, causal[, mode]) blocks until that
    case's variants, or that mode's, are built); else return None when all are built."""
    from harness.toolchain import prebuild
    from harness.toolchain.loader import runtime_variant
    from harness.toolchain.variant import tiles_for
    if not prebuild.enabled() or not device.get("arch"):
        return CaseBuilds(None, {}) if background else None
    per_case = {}
    for shape, causal in cases:
        vs = per_case.setdefault((shape, causal), {})
        for m in modes:
            c = causal_for(m, causal, len(modes))
            if c and not get_mode(m).allows_causal:
                continue
            vs[m] = runtime_variant(m, shape.D, c, tuple(bugs), device_arch=device["arch"], **tiles_for(shape))
    variants = [v for vs in per_case.values() for v in vs.values()]
    if background:
        return CaseBuilds(prebuild.start(variants), per_case)
    prebuild.prebuild(variants)
    return None


def facts_and_builds(cases, modes, bugs, isolate: bool):
    """(device facts, CaseBuilds under way) for a sweep. The compile starts before the facts
    come, for the arch that this machine's last sweep ran on (prebuild.last_arch), so that it
    overlaps the worker's boot (issue 26: after an edit it began only once the worker's CUDA
    context was up). Where the device turns out to be another arch, those builds are dropped
    and the right ones started."""
    from harness.toolchain import prebuild
    guess = prebuild.last_arch() if prebuild.enabled() else None
    early = prebuild_for(cases, modes, bugs, {"arch": guess}, background=True) if guess else None
    device = device_facts(isolate)
    if early is not None and device.get("arch") == guess:
        builds = early
    else:
        if early is not None:
            early.cancel()
        builds = prebuild_for(cases, modes, bugs, device, background=True)
    prebuild.remember_arch(device.get("arch"))
    return device, builds


class CaseBuilds:
    """A sweep's prebuild under way, waited for case by case (coverage.py's sweeps), or mode by
    mode within a case (run_modes)."""

    def __init__(self, building, per_case: dict):
        self.building, self.per_case = building, per_case

    def wait(self, shape, causal, mode: str | None = None) -> None:
        if self.building is not None:
            vs = self.per_case.get((shape, causal), {})
            self.building.wait(list(vs.values()) if mode is None else [vs[mode]] if mode in vs else [])

    def cancel(self) -> None:
        if self.building is not None:
            self.building.cancel()

    def close(self) -> None:
        if self.building is not None:
            self.building.close()


def run_modes(modes, shape, causal=False, inputs="randn", seed=None, scale=None, bugs=(),
              record=True, isolate=None, show=True, title=None, keep_outputs=False, prebuild=True):
    """Run the modes in data-flow order on one shape; returns the RunResults. prebuild: compile
    its variants ahead (a coverage sweep has done it for all its cases already)."""
    from harness.check.inputs import fresh_seed
    modes = sorted(set(modes), key=DATAFLOW_ORDER.index)
    causal_of = {m: causal_for(m, causal, len(modes)) for m in modes}
    isolate = len(modes) > 1 if isolate is None else isolate
    jobs = pool.default_jobs()
    if isolate:
        pool.prestart(jobs)   # the workers boot (CuPy, the CUDA context) while we validate
    for m in modes:   # validate every variant before touching the GPU
        Variant(m, shape.D, causal_of[m], tuple(bugs))
    if prebuild:    # each mode's case is sent once its own variant is built
        device, builds = facts_and_builds([(shape, causal)], modes, bugs, isolate)
    else:
        device, builds = device_facts(isolate), CaseBuilds(None, {})
    seed = fresh_seed() if seed is None else seed
    cases = [runs.make_case(m, shape, causal=causal_of[m], inputs=inputs, seed=seed, scale=scale, bugs=list(bugs),
                            keep_outputs=keep_outputs) for m in modes]
    try:
        results = runs.run_cases(cases, isolate=isolate, jobs=jobs,
                                 before=lambda i: builds.wait(shape, causal, modes[i]))
    finally:
        builds.close()
    if record:
        for r in results:
            records.append(runs.run_record(r, device))
    if show:
        t = title or (f"{shape.label}{' causal' if causal else ''}  inputs={inputs} seed={seed}  "
                      f"{device['device']}" + "".join(f" +BUG_{b}" for b in bugs))
        console.print(error_table(results, t))
        n_fail = sum(not r.passed for r in results)
        console.print(f"[bold]{'all checks pass' if not n_fail else f'{n_fail} of {len(results)} modes FAIL'}[/]")
    return results
