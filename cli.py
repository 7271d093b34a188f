"""flashcore: the command line, a thin layer over the harness API.

Exit codes: 0 success, 1 a check failed, 2 bad usage or missing hardware. Every error is
one line on stderr, never a traceback.
"""

from __future__ import annotations

import functools
import sys

import click

from harness.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, FlashCoreError, UsageError


class FlashCoreGroup(click.Group):
    """Turns click usage errors and FlashCoreErrors into one line and the right exit code."""

    def main(self, args=None, prog_name=None, **extra):
        extra.pop("standalone_mode", None)
        early_worker(sys.argv[1:] if args is None else list(args))
        import os
        from kernels.registry import ENV_KERNEL
        saved = os.environ.get(ENV_KERNEL)    # --kernel NAME sets it for this command and its workers only
        try:
            rv = super().main(args=args, prog_name=prog_name or "flashcore", standalone_mode=False, **extra)
        except click.UsageError as e:
            _die(e.format_message(), EXIT_USAGE)
        except click.Abort:
            _die("aborted", 130)
        except FlashCoreError as e:
            _die(str(e), e.exit_code)
        except KeyboardInterrupt:
            _die("interrupted", 130)
        finally:
            if saved is None:
                os.environ.pop(ENV_KERNEL, None)
            else:
                os.environ[ENV_KERNEL] = saved
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


def uses_worker(argv: list) -> bool:
    """Whether the command will send its checks to the harness's worker process: diagnose, and
    run unless it is one mode on one --shape of a registry kernel (that runs in this process)
    or --no-isolate. Read from the raw arguments, before click parses them: a wrong answer
    only costs a worker started for nothing, or one started later."""
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] not in ("run", "diagnose") or {"--no-isolate", "-h", "--help"} & set(argv):
        return False
    if words[0] == "diagnose" or "--isolate" in argv:
        return True
    opt = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    if "--shape" not in opt or "--kernel" in opt:
        return True         # the coverage set, or a kernel as written: in workers
    debug = "full"
    for i, a in enumerate(argv):
        if a == "--debug" and i + 1 < len(argv):
            debug = argv[i + 1]
        elif a.startswith("--debug="):
            debug = a.split("=", 1)[1]
    return debug == "all" or "," in debug


def early_worker(argv: list) -> None:
    """Start the worker now, before this process imports the harness and parses (0.3-0.5 s):
    it boots Python, CuPy and the CUDA context (0.8-1.0 s on the H200) meanwhile, instead of
    after (issue 26, the edit-to-verdict loop). Nothing where no NVIDIA driver is installed:
    the command says so itself, with no worker."""
    if not uses_worker(argv):
        return
    from harness.toolchain.device import driver_present, import_cupy_ahead
    if driver_present():
        from harness.run import pool
        pool.prestart(pool.default_jobs())
        import_cupy_ahead()     # this process compiles the variants (NVRTC, through CuPy)


def _die(message: str, code: int):
    lines = str(message).strip().splitlines() or ["error"]
    click.echo(f"flashcore: error: {lines[0]}", err=True)
    if len(lines) > 1:   # a compile log: the first line is the message, the rest the evidence
        click.echo("\n".join(lines[1:]), err=True)
    sys.exit(code)


@click.group(cls=FlashCoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """FlashCore: stage-isolated checks, bisection and regression tracking for a fused
    FlashAttention-style CUDA kernel (kernels/flashcore_fused.cu)."""


# ------------------------------------------------------------------ shared option parsing
BUILTIN_KERNEL = "flashcore_fused"
kernel_option = click.option(
    "--kernel", "kernel", default=None,
    help="the kernel to check: a registry kernel (flashcore_fused, the default; kernels/registry.py), a spec file "
         "(.toml, kernels/spec.py), or a .cu with its spec beside it")


def _user_spec(kernel, allow_callable: bool = False):
    """--kernel: None for a registry kernel (flashcore_fused, or another entry of
    kernels/registry.py, which becomes the kernel in use for this process and its workers),
    else the loaded spec of a kernel checked as written. Any other bare name is looked up as a
    spec file. module:function is a Python callable: only run and diagnose take one
    (allow_callable); elsewhere one line says so."""
    from kernels import registry
    if kernel in (None, BUILTIN_KERNEL) or kernel in registry.KERNELS:
        import os
        if kernel in (None, BUILTIN_KERNEL):
            os.environ.pop(registry.ENV_KERNEL, None)
        else:
            os.environ[registry.ENV_KERNEL] = kernel
        return None
    from harness.run.callable_kernel import is_callable_ref
    if is_callable_ref(kernel):
        if not allow_callable:
            raise UsageError(f"--kernel {kernel}: a Python callable is checked by run and diagnose only; this command "
                             f"needs the kernel's .cu and a spec (flashcore kernel init FILE.cu)")
        return kernel
    from harness.toolchain.user_kernel import find_spec
    from kernels.spec import load
    return load(find_spec(kernel))


def _no_builtin_options(kernel, **opts):
    """Options that belong to flashcore_fused's own machinery, refused with a spec'd kernel."""
    for name, value in opts.items():
        if value:
            raise UsageError(f"--{name.replace('_', '-')} is for flashcore_fused's debug modes; "
                             f"{kernel} is checked as written (its spec's flags: flashcore kernel show)")


def _spec_modes(spec, debug):
    from harness.run.asis_sweep import spec_modes
    return spec_modes(spec, debug)


def _modes_arg(debug: str) -> list:
    from debug_modes.registry import modes_of
    return modes_of(debug)


def _bug_names(bugs, known, unknown) -> tuple:
    from debug_modes.bugs import bug_names
    return bug_names(bugs, known, unknown)


def _bugs_arg(bugs) -> tuple:
    """--bug for a registry kernel: the bugs the kernel in use implements."""
    from debug_modes import bugs_of
    from kernels import registry
    known = bugs_of(registry.current())
    return _bug_names(bugs, known, lambda b: f"unknown bug {b!r}; valid bugs: {', '.join(known)}")


def _finite(v, name):
    import math
    if v is not None and not math.isfinite(v):
        raise click.BadParameter(f"{name} must be a finite number, got {v}")
    return v


def _shape_arg(shape: str, sk, head_dim):
    from harness.check.shapes import parse_shape
    return parse_shape(shape, sk, head_dim)


# run and diagnose: without --shape they sweep the coverage set (harness/check/coverage.py),
# where --head-dim and --causal pick the coverage shapes with that head dim / with causal masking.
shape_options = [
    click.option("--shape", default=None,
                 help="mission | short | long | B,H,S,D (default: the coverage set, every pair of shape features)"),
    click.option("--sk", type=int, default=None, help="key/value length when it differs from Sq (needs --shape)"),
    click.option("--head-dim", type=int, default=None,
                 help="override D of the shape (64 or 128); without --shape: the coverage shapes with this D"),
    click.option("--causal", is_flag=True, help="causal (top-left) masking; without --shape: the causal coverage shapes"),
]


def with_shape_options(f):
    for opt in reversed(shape_options):
        f = opt(f)
    return f


def _coverage_cases(sk, head_dim, causal, modes):
    """The coverage cases for run/diagnose without --shape (validated before any GPU work)."""
    from harness.run.coverage import cases_for
    if sk is not None:
        raise UsageError("--sk needs --shape: without it the coverage set chooses its own key lengths")
    return cases_for(head_dim, causal, modes)


check_options = [
    click.option("--reference-device", type=click.Choice(["auto", "gpu", "cpu"]), default="auto", show_default=True,
                 help="where the float64 references and the metrics run (cpu: the NumPy host path; auto: the host "
                      "for small problems, where it is cheapest, the device for long sequences)"),
    click.option("--rows", default=None,
                 help="query rows the [rows, keys] modes check: all, or query-tile indices such as 0,5,-1 "
                      "(default: every row when the matrices are small, else the first, a middle and the last tile)"),
]


def with_check_options(f):
    """--reference-device and --rows, checked before the GPU is touched and handed to every
    mode of the command (and its worker processes) as run_mode's defaults, so the command's
    body does not carry them (docs/DESIGN.md §7)."""
    @functools.wraps(f)
    def wrapper(*args, reference_device, rows, **kw):
        from harness.run import gpu
        from debug_modes.registry import ISOLATED
        if rows and kw.get("kernel") not in (None, BUILTIN_KERNEL):
            raise UsageError("--rows is for flashcore_fused's windowed debug modes; a spec'd kernel is checked whole")
        if rows and kw.get("shape") is None:
            raise UsageError("--rows needs --shape: the coverage shapes are small and checked whole")
        if rows:
            modes_ = _modes_arg(kw["debug"]) if "debug" in kw else ISOLATED
            gpu.validate_rows(modes_, _shape_arg(kw["shape"], kw.get("sk"), kw.get("head_dim")), rows)
        with gpu.check_settings(reference_device, rows):
            return f(*args, **kw)
    for opt in reversed(check_options):
        wrapper = opt(wrapper)
    return wrapper


# ------------------------------------------------------------------ modes
@cli.command()
def modes():
    """Table of the debug modes: flag, stage, buffers read and written, reference."""
    from rich.table import Table
    from debug_modes.registry import DATAFLOW_ORDER, MODES
    from harness.show.report import console
    t = Table(title="Debug modes (data-flow order)", title_justify="left")
    for c in ("mode", "flag", "stage", "reads", "writes", "judged by", "what it isolates"):
        t.add_column(c)
    for name in DATAFLOW_ORDER:
        m = MODES[name]
        t.add_row(name, m.flag or "-", m.stage, ", ".join(b.param for b in m.reads),
                  ", ".join(f"{b.param} {b.dtype} [{b.dims}]" for b in m.writes), m.judged_by, m.description)
    console.print(t)


# ------------------------------------------------------------------ compile
@cli.command()
@click.option("--debug", "debug", default="all", show_default=True, help="mode, comma list, or all")
@click.option("--arch", default="all", show_default=True, help="sm_80 | sm_90 | all")
@click.option("--head-dim", type=int, multiple=True, help="64 and/or 128 (default both)")
@click.option("--causal/--no-causal", "causal", default=None, help="only causal / only non-causal (default both)")
@click.option("--bug", "bugs", multiple=True, help="compile with seeded bug(s) switched on")
@click.option("--list-bugs", is_flag=True, help="list the seeded bugs and exit")
@click.option("--record/--no-record", default=False, help="append the resources to results/")
@click.option("--sass", is_flag=True, help="also disassemble NVRTC's cubin (nvdisasm): HMMA present, no local memory")
@kernel_option
def compile(debug, arch, head_dim, causal, bugs, list_bugs, record, sass, kernel):
    """Compile variants with NVRTC (no GPU needed) and report registers, shared memory and
    spills; exit 1 on a compile error or any spill byte (with --sass: or a variant without
    HMMA or with local-memory instructions)."""
    from harness.toolchain import compile_sweep
    from harness.show.report import console, resources_table
    spec = _user_spec(kernel)
    if spec is not None:
        return _compile_spec(spec, debug, arch, head_dim, causal, bugs, list_bugs, record, sass)
    modes_, bugs_ = _modes_arg(debug), _bugs_arg(bugs)   # validated first, also for --list-bugs
    if list_bugs:
        if debug != "all" or arch != "all" or head_dim or causal is not None or bugs or record or sass:
            raise UsageError("--list-bugs takes no other option: it lists the seeded bugs and compiles nothing")
        compile_sweep.print_bugs()
        return EXIT_OK
    archs = compile_sweep.archs_arg(arch)
    head_dims = list(head_dim) or [64, 128]
    causals = [False, True] if causal is None else [causal]
    variants = compile_sweep.variants(modes_, head_dims, causals, archs, bugs_)   # raises when none is left
    if sass:   # one build per variant serves both tables
        from harness.toolchain.sass import disassembler, resources_and_summary
        if not disassembler():
            raise UsageError("--sass needs nvdisasm (pip install nvidia-cuda-nvdisasm) or cuobjdump on PATH")
        pairs, failures = compile_sweep.sweep(variants, check=resources_and_summary)
        rows, srows = [r for r, _ in pairs], [x for _, x in pairs]
    else:
        rows, failures = compile_sweep.sweep(variants)
    console.print(resources_table(rows))
    for f in failures:
        click.echo(f, err=True)
    if record:
        compile_sweep.record(rows)
    spills = [r for r in rows if r.spill_bytes or r.wgmma_warnings]
    for r in spills:
        if r.spill_bytes:
            click.echo(f"flashcore: {r.variant}: {r.spill_bytes} spill bytes (ptxas -v)", err=True)
        if r.wgmma_warnings:
            click.echo(f"flashcore: {r.variant}: ptxas warns {', '.join(r.wgmma_warnings)} (wgmma serialised)", err=True)
    bad_sass = _sass_report(srows) if sass else []
    return EXIT_CHECK_FAILED if failures or spills or bad_sass else EXIT_OK


def _sass_check(variants, summarize) -> list:
    """compile --sass: each variant's SASS summarised (summarize: sass.summarize_user for a spec'd
    kernel), the table printed, each failure named on stderr; returns the failures."""
    from harness.toolchain import compile_sweep
    srows, sfail = compile_sweep.sweep(variants, check=summarize)
    for f in sfail:
        click.echo(f, err=True)
    return sfail + _sass_report(srows)


def _sass_report(srows) -> list:
    """The SASS table printed and each variant that fails it named on stderr; returns those."""
    from harness.show.report import console, sass_table
    console.print(sass_table(srows))
    bad = [r for r in srows if not r.ok]
    for r in bad:
        click.echo(f"flashcore: {r.variant}: SASS check failed: {r.verdict}", err=True)
    return bad


def _compile_spec(spec, debug, arch, head_dim, causal, bugs, list_bugs, record, sass):
    """compile --kernel SPEC: the kernel as written and each declared flag, NVRTC, no GPU."""
    from rich.table import Table
    from harness.toolchain import user_kernel
    from harness.show.report import console, resources_table
    if list_bugs:
        t = Table(title=f"{spec.name}: seeded bugs (-DBUG_<NAME>)", title_justify="left")
        t.add_column("name")
        t.add_column("what it breaks")
        for b, what in spec.bugs.items():
            t.add_row(b, what)
        console.print(t)
        return EXIT_OK
    archs = ["sm_80", "sm_90"] if arch == "all" else [arch]
    if any(not a.startswith("sm_") for a in archs):
        raise UsageError(f"unknown arch {arch!r}")
    variants = [user_kernel.UserVariant(spec, m, d, c, _spec_bugs(spec, bugs), a)
                for m in _spec_modes(spec, debug) for d in (list(head_dim) or spec.head_dims)
                for c in ([False, True] if causal is None and spec.causal else [bool(causal)]) for a in archs]
    from harness.toolchain import compile_sweep
    rows, failures = compile_sweep.sweep(variants, user_kernel.compile_check)
    if rows:
        console.print(resources_table(rows, f"{spec.name}: resources (NVRTC, ptxas -v)"))
    for f in failures:
        click.echo(f, err=True)
    if record:
        from harness import records
        from harness.toolchain import compiler
        for r in rows:
            records.append(records.new_record("compile", kernel=spec.name, kernel_sha256=compiler.source_hash(spec.source),
                                              device=None, **r.to_dict()))
    bad_sass = []
    if sass:
        from harness.toolchain.sass import summarize_user
        bad_sass = _sass_check(variants, summarize_user)
    return EXIT_CHECK_FAILED if failures or bad_sass or any(r.spill_bytes for r in rows) else EXIT_OK


# ------------------------------------------------------------------ run
@cli.command()
@click.option("--debug", "debug", default="full", show_default=True, help="mode, comma list, or all (data-flow order)")
@with_shape_options
@with_check_options
@click.option("--inputs", default="randn", show_default=True, help="randn | large | uniform | identical_rows | onehot_keys")
@click.option("--seed", type=int, default=None, help="input seed (default: fresh, printed and recorded)")
@click.option("--scale", type=float, default=None, callback=lambda c, p, v: _finite(v, "--scale"),
              help="softmax scale (default 1/sqrt(D))")
@click.option("--bug", "bugs", multiple=True, help="switch on a seeded bug (must-fail check)")
@click.option("--record/--no-record", default=True, show_default=True, help="append run records to results/")
@click.option("--isolate/--no-isolate", default=None,
              help="run in harness worker processes, replaced after a fault (default: on for several modes, and always on in the coverage sweep)")
@kernel_option
def run(debug, shape, sk, head_dim, causal, inputs, seed, scale, bugs, record, isolate, kernel):
    """Run debug mode(s) on a GPU against the float64 references; print the stage-isolated
    error table. Without --shape: every shape of the coverage set, one row per shape, the
    shape features that separate failing from passing shapes and the smallest failing shape.
    Exit 0 when every check passes, 1 when one fails, 2 without a GPU."""
    from harness.run import session
    from harness.check.inputs import INPUT_SETS
    if inputs not in INPUT_SETS:
        raise UsageError(f"unknown input set {inputs!r}; valid: {', '.join(INPUT_SETS)}")
    spec = _user_spec(kernel, allow_callable=True)
    if isinstance(spec, str):
        return _check_callable("run", spec, debug, shape, sk, head_dim, causal, inputs, seed, scale, bugs, record)
    if spec is not None:
        return _check_spec("run", spec, _spec_modes(spec, debug), shape, sk, head_dim, causal, inputs, seed, scale,
                           bugs, record, True if isolate is None else isolate)
    modes_ = _modes_arg(debug)
    bugs_ = _bugs_arg(bugs)
    if shape is None:
        from harness.run.coverage import run_coverage
        cases = _coverage_cases(sk, head_dim, causal, modes_)
        rep = run_coverage(modes_, cases, inputs=inputs, seed=seed, scale=scale, bugs=bugs_, record=record,
                           isolate=True if isolate is None else isolate)
        return EXIT_OK if rep.clean else EXIT_CHECK_FAILED
    shp = _shape_arg(shape, sk, head_dim)
    results = session.run_modes(modes_, shp, causal=causal, inputs=inputs, seed=seed, scale=scale,
                                bugs=bugs_, record=record, isolate=isolate)
    return EXIT_OK if all(r.passed for r in results) else EXIT_CHECK_FAILED


# ------------------------------------------------------------------ diagnose, smoking gun, sanitize
@cli.command()
@with_shape_options
@with_check_options
@click.option("--inputs", default="randn", show_default=True, help="input set")
@click.option("--seed", type=int, default=None, help="input seed (default: fresh)")
@click.option("--bug", "bugs", multiple=True, help="switch on a seeded bug")
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="also write the heat maps as PNG (coverage sweep: those of the shape shrinking starts from)")
@click.option("--record/--no-record", default=True, show_default=True)
@click.option("--probes", is_flag=True,
              help="stage isolation from input probes with closed-form answers, no debug flag (the default for a "
                   "spec'd kernel that declares no flag); for flashcore_fused, through kernels/flashcore_fused.toml")
@kernel_option
def diagnose(shape, sk, head_dim, causal, inputs, seed, bugs, png, record, kernel, probes):
    """Stage bisection: run every isolated mode in data-flow order, name the first failing
    stage (or the glue), and fold its error onto tiles, warps and fragments. Without --shape:
    at every shape of the coverage set, one row per shape, then the stage, the shape features
    that separate failing from passing shapes, the smallest failing shape and the command that
    reproduces it. Exit 0 when no stage fails, 1 otherwise."""
    from harness.run.diagnose import diagnose as run_diagnose
    from harness.check.inputs import INPUT_SETS
    if inputs not in INPUT_SETS:
        raise UsageError(f"unknown input set {inputs!r}; valid: {', '.join(INPUT_SETS)}")
    if png:
        from harness.track.history import check_png_path
        check_png_path(png)       # before the GPU work, not after it
    spec = _user_spec(kernel, allow_callable=True)
    if isinstance(spec, str):
        # a callable has no flags: its diagnosis is the probes' (run --kernel gives the plain full check)
        if inputs != "randn":
            raise UsageError("--inputs does not apply to a probe diagnosis: each probe builds its own inputs")
        from harness.run.callable_kernel import CallableKernel, load
        load(spec)
        return _diagnose_probes(CallableKernel(spec), shape, sk, head_dim, causal, seed, bugs)
    if probes and spec is None:
        from kernels.registry import KERNELS_DIR
        from kernels.spec import load
        spec = load(KERNELS_DIR / "flashcore_fused.toml")
    if spec is not None and (probes or not spec.flags):
        if inputs != "randn":
            raise UsageError("--inputs does not apply to --probes: each probe builds its own inputs")
        return _diagnose_probes(spec, shape, sk, head_dim, causal, seed, bugs)
    if spec is not None:
        from harness.run.asis_sweep import stage_modes
        return _check_spec("diagnose", spec, stage_modes(spec), shape, sk, head_dim, causal, inputs, seed, None,
                           bugs, record, True, png)
    bugs_ = _bugs_arg(bugs)
    if shape is None:
        from harness.run.coverage import diagnose_coverage
        from harness.run.diagnose import BISECT_MODES
        cases = _coverage_cases(sk, head_dim, causal, BISECT_MODES)
        rep = diagnose_coverage(cases, inputs=inputs, seed=seed, bugs=bugs_, record=record, png=png)
        return EXIT_OK if rep.clean else EXIT_CHECK_FAILED
    d = run_diagnose(_shape_arg(shape, sk, head_dim), causal=causal, inputs=inputs, seed=seed,
                     bugs=bugs_, record=record, png=png)
    return EXIT_OK if d.clean else EXIT_CHECK_FAILED


def _check_callable(command, ref, debug, shape, sk, head_dim, causal, inputs, seed, scale, bugs, record):
    """run/diagnose --kernel module:function: the full-mode check (a callable has no flags or bugs)."""
    from harness.run import callable_kernel
    if debug not in ("full", "all"):
        raise UsageError(f"--debug {debug}: a Python callable has no debug flags; it is checked as a whole (full)")
    if bugs:
        raise UsageError("--bug: a Python callable has no seeded bugs (they are -D switches of a .cu)")
    if shape is None and sk is not None:
        raise UsageError("--sk needs --shape: without it the coverage set chooses its own key lengths")
    shp = _shape_arg(shape, sk, head_dim) if shape is not None else None
    ok = callable_kernel.check(ref, command, shp, causal, head_dim, inputs, seed, scale, record)
    return EXIT_OK if ok else EXIT_CHECK_FAILED


def _spec_bugs(spec, bugs) -> tuple:
    return _bug_names(bugs, spec.bugs, lambda b: f"{spec.name} declares no seeded bug {b!r}" + (
        f"; its bugs: {', '.join(spec.bugs)}" if spec.bugs else " (its spec has no [bugs])"))


def _check_spec(command, spec, modes, shape, sk, head_dim, causal, inputs, seed, scale, bugs, record, isolate,
                png=None):
    """run/diagnose --kernel SPEC: one shape, or the coverage set of the spec's tiles and domain."""
    from harness.run import asis_sweep
    bugs_ = _spec_bugs(spec, bugs)
    if shape is None:
        if sk is not None:
            raise UsageError("--sk needs --shape: without it the coverage set chooses its own key lengths")
        cases = asis_sweep.coverage_cases(spec, head_dim, causal)
        rep = asis_sweep.sweep(spec.spec_path, command, modes, cases, inputs=inputs, seed=seed, scale=scale,
                               bugs=bugs_, record=record, isolate=isolate)
        if png and rep.start is not None and rep.start.folds:
            from harness.show import heatmap
            heatmap.save_png(rep.start.folds, png, f"{spec.name} {rep.start.case.label}")
        return EXIT_OK if rep.clean else EXIT_CHECK_FAILED
    shp = _shape_arg(shape, sk, head_dim)
    results = asis_sweep.run_modes(spec.spec_path, modes, shp, causal, inputs, seed, scale, bugs_, record, isolate,
                                   keep_outputs=command == "diagnose")
    if command == "diagnose":
        from harness.run.diagnose import STAGE_TEXT
        from harness.show import heatmap
        from harness.show.report import console
        bad = next((r for r in results if not r.passed), None)
        if bad is None:
            console.print("[bold green]no stage fails[/]")
        else:
            stage = asis_sweep.mode_stage(spec, bad.variant.mode)
            console.print(f"[bold red]first failing stage: {STAGE_TEXT.get(stage, stage)}[/]  (mode {bad.variant.mode})")
            for f in bad.folds:
                console.print(heatmap.render_folds(f))
            if png and bad.folds:
                heatmap.save_png(bad.folds, png, f"{spec.name} {shp.label}: first failing stage {stage}")
    return EXIT_OK if all(r.passed for r in results) else EXIT_CHECK_FAILED


def _diagnose_probes(spec, shape, sk, head_dim, causal, seed, bugs):
    """A probe diagnosis of a spec'd kernel, or of a Python callable (a CallableKernel)."""
    from harness.check.inputs import fresh_seed
    from harness.run import asis_sweep, probe_sweep
    from harness.run.callable_kernel import CallableKernel
    if isinstance(spec, CallableKernel):
        if bugs:
            raise UsageError(f"--bug: {spec.ref} is a Python callable, it has no seeded bugs")
        bugs_ = ()
    else:
        bugs_ = _spec_bugs(spec, bugs)
    seed = fresh_seed() if seed is None else seed
    if shape is None:
        if sk is not None:
            raise UsageError("--sk needs --shape: without it the coverage set chooses its own key lengths")
        if isinstance(spec, CallableKernel):
            from harness.check import coverage as cov
            cases = cov.coverage_set(spec, None if head_dim is None else (head_dim,), True if causal else None)
        else:
            cases = asis_sweep.coverage_cases(spec, head_dim, causal)
        rep = probe_sweep.sweep(spec.spec_path, cases, seed, bugs_)
        return EXIT_OK if rep.clean else EXIT_CHECK_FAILED
    stage, _, _, _ = probe_sweep.diagnose_shape(spec.spec_path, _shape_arg(shape, sk, head_dim), causal, seed, bugs_)
    return EXIT_OK if stage is None else EXIT_CHECK_FAILED


@cli.command("smoking-gun")
@click.option("--shape", default="mission", show_default=True, help="mission | short | long | B,H,S,D")
@click.option("--sk", type=int, default=None, help="key/value length when it differs from Sq")
@click.option("--seed", type=int, default=None, help="input seed (default: fresh)")
@click.option("--bug", "bugs", multiple=True, help="switch on a seeded bug")
@click.option("--record/--no-record", default=True, show_default=True)
@kernel_option
def smoking_gun(shape, sk, seed, bugs, record, kernel):
    """The uniform-attention test (P = 1/Sk): every output row must equal the column mean
    of V. Prints the expected row, the first rows written, the row spread and the verdict.
    With --kernel: Q = 0 gives P = 1/Sk without a flag, and the one-hot view says which keys
    reach O."""
    spec = _user_spec(kernel, allow_callable=True)
    if spec is not None:
        from harness.check.inputs import fresh_seed
        from harness.run.probe_sweep import smoking_gun as probe_sg
        if isinstance(spec, str):         # a Python callable: Q = 0 all the same
            if bugs:
                raise UsageError(f"--bug: {spec} is a Python callable, it has no seeded bugs")
            pc = probe_sg(spec, _shape_arg(shape, sk, None), fresh_seed() if seed is None else seed, ())
            return EXIT_OK if pc.status == "ok" and all(r.passed for r in pc.results.values()) else EXIT_CHECK_FAILED
        pc = probe_sg(spec.spec_path, _shape_arg(shape, sk, spec.head_dims[0] if shape == "mission" else None),
                      fresh_seed() if seed is None else seed, _spec_bugs(spec, bugs))
        ok = pc.status == "ok" and all(r.passed for r in pc.results.values())
        return EXIT_OK if ok else EXIT_CHECK_FAILED
    from harness.run.diagnose import smoking_gun as run_sg
    sg = run_sg(_shape_arg(shape, sk, None), seed=seed, record=record, bugs=_bugs_arg(bugs))
    return EXIT_OK if sg.passed else EXIT_CHECK_FAILED


@cli.command()
@click.option("--tool", required=True, help="memcheck | racecheck | synccheck | initcheck")
@click.option("--debug", "debug", default="full", show_default=True, help="mode to run")
@click.option("--bug", "bugs", multiple=True, help="switch on a seeded bug")
@click.option("--shape", default="1,2,128,64", show_default=True, help="small: the sanitizer is slow")
@click.option("--sk", type=int, default=None, help="key length (default 256; with --kernel: Sq)")
@click.option("--causal", is_flag=True)
@kernel_option
def sanitize(tool, debug, bugs, shape, sk, causal, kernel):
    """Run one variant under compute-sanitizer (pool off, -lineinfo) and summarise each
    hazard with kernel file:line. Exit 1 on any hazard, 2 without compute-sanitizer."""
    from rich.table import Table
    from harness.show.report import console
    from harness.run.sanitize import TOOLS, sanitize as run_sanitize
    if tool not in TOOLS:
        raise UsageError(f"unknown tool {tool!r}; valid: {', '.join(TOOLS)}")
    spec = _user_spec(kernel)
    if spec is not None:
        modes_ = _spec_modes(spec, "full" if debug == "full" else debug)
        bugs = _spec_bugs(spec, bugs)
    else:
        modes_, bugs = _modes_arg(debug), _bugs_arg(bugs)
        sk = 256 if sk is None else sk
    if len(modes_) != 1:
        raise UsageError("sanitize runs one mode at a time")
    res = run_sanitize(tool, modes_[0], bugs, _shape_arg(shape, sk, None), causal,
                       spec_path=spec.spec_path if spec is not None else None)
    who = f"{spec.name} " if spec is not None else ""
    t = Table(title=f"compute-sanitizer --tool {tool}: {who}{modes_[0]}" + "".join(f" +BUG_{b}" for b in bugs),
              title_justify="left")
    t.add_column("hazard @ kernel file:line")
    t.add_column("count", justify="right")
    for k, n in res.hazards.most_common():
        t.add_row(k, str(n))
    console.print(t)
    console.print(f"ERROR SUMMARY: {res.error_summary}  ->  " + ("[green]clean[/]" if res.clean else "[bold red]HAZARDS[/]"))
    return EXIT_OK if res.clean else EXIT_CHECK_FAILED


# ------------------------------------------------------------------ bench
@cli.command()
@click.option("--shape", default=None, help="mission | short | long | B,H,S,D (default mission)")
@click.option("--sk", type=int, default=None)
@click.option("--suite", is_flag=True, help="the benchmark suite (7 shapes)")
@click.option("--debug", "debug", default="full", show_default=True, help="time a debug variant instead")
@click.option("--causal", is_flag=True)
@click.option("--nwarps", type=int, default=None, help="warps per block (default: the tile table)")
@click.option("--no-sdpa", is_flag=True, help="skip PyTorch SDPA")
@click.option("--no-wall", is_flag=True, help="skip the wall-per-call loops of forward() and SDPA")
@click.option("--markdown", type=click.Path(dir_okay=False), default=None, help="write the table as Markdown (BENCHMARKS.md)")
@click.option("--record/--no-record", default=True, show_default=True)
@click.option("--against", default=None, metavar="ENTRY",
              help="a second registry kernel, timed in turns with --kernel's on the same inputs (A/B)")
@click.option("--rounds", type=click.IntRange(2, 50), default=6, show_default=True, help="A/B rounds (--against)")
@kernel_option
def bench(shape, sk, suite, debug, causal, nwarps, no_sdpa, no_wall, markdown, record, against, rounds, kernel):
    """Time the kernel with CUDA events (median, p10-p90) beside PyTorch SDPA's flash and
    cuDNN backends in the same process; report us, TFLOP/s, % of fp16 peak and ratios; and the
    wall time per call of forward() and of SDPA's default backend from a Python loop."""
    import datetime
    from harness.run import bench as b
    from harness import records
    from harness.toolchain.device import require_gpu
    from harness.show.report import console
    if suite and shape:
        raise UsageError("--suite and --shape exclude each other")
    spec = _user_spec(kernel)
    if against is not None:
        return _bench_ab(spec, against, shape, sk, suite, causal, debug, nwarps, rounds, record)
    if spec is not None:
        _no_builtin_options(spec.name, nwarps=nwarps, debug=debug != "full")
        return _bench_spec(spec, shape, sk, suite, causal, no_sdpa, markdown, record)
    modes_ = _modes_arg(debug)
    if len(modes_) != 1:
        raise UsageError("bench times one mode at a time")
    cases = _bench_cases(suite, shape, sk, causal)
    for _, shp, c in cases:   # validate before the GPU
        from harness.toolchain.variant import Variant
        Variant(modes_[0], shp.D, c, **({"nwarps": nwarps} if nwarps else {}))
    device = require_gpu()
    from kernels import registry
    from harness import api   # the product path, handed to the harness's bench (they do not import each other)
    rows = []
    for label, shp, c in cases:
        # forward()'s wall where forward() launches the kernel in use (it picks per device and shape)
        wall = (modes_[0] == "full" and not no_wall and nwarps is None
                and api.product_entry(device["arch"], shp, c)[0] is registry.current())
        row = b.bench_one(label, shp, c, modes_[0], with_sdpa=not no_sdpa, nwarps=nwarps,
                          forward=api.forward if wall else None)
        rows.append(row)
        if record:
            from harness.toolchain import compiler
            records.append(records.new_record("bench", mode=modes_[0], shape=row.to_dict()["shape"],
                                              kernel=registry.current().name,
                                              shape_label=shp.label, causal=c, device=device["device"],
                                              driver=device["driver"], cupy=device["cupy"],
                                              kernel_sha256=compiler.source_hash(), latency=row.to_dict(),
                                              resources=row.resources))
    console.print(b.rich_table(rows, device))
    if markdown:
        cmd = ("flashcore bench " + ("" if registry.current() is registry.DEFAULT else f"--kernel {registry.current().name} ")
               + ("--suite" if suite else f"--shape {shape or 'mission'}"))
        today = datetime.date.today().isoformat()
        with open(markdown, "w") as f:
            f.write("# Benchmarks\n\n" + b.markdown(rows, device, today, cmd))
        console.print(f"written {markdown}")
    return EXIT_OK


def _bench_cases(suite, shape, sk, causal) -> list:
    """(label, shape, causal) of each case bench times: the suite, or the one shape asked for."""
    from harness.run import bench as b
    return b.SUITE if suite else [(shape or "mission", _shape_arg(shape or "mission", sk, None), causal)]


def _bench_ab(spec, against, shape, sk, suite, causal, debug, nwarps, rounds, record):
    """bench --kernel A --against B: two registry kernels' full mode timed in turns in one process
    (harness/run/ab.py), every case recorded as one "bench_ab" record."""
    from harness.run import ab
    from harness import records
    from harness.toolchain.device import require_gpu
    from harness.show.report import console
    from kernels import registry
    if spec is not None:
        raise UsageError("--against compares two registry kernels; --kernel names a kernel checked as written")
    if against not in registry.KERNELS:
        raise UsageError(f"--against: no registry kernel {against!r} (kernels/registry.py has {', '.join(registry.KERNELS)})")
    if debug != "full" or nwarps is not None:
        raise UsageError("--against times the full mode at each entry's own tiles: drop --debug and --nwarps")
    a = registry.current().name
    if a == against:
        raise UsageError(f"--against {against} is the kernel in use: name another (--kernel picks A)")
    device = require_gpu()
    rows = []
    for label, shp, c in _bench_cases(suite, shape, sk, causal):
        row = ab.ab_row(label, shp, c, a, against, rounds)
        rows.append(row)
        if record:
            records.append(records.new_record("bench_ab", mode="full", shape=row.to_dict()["shape"], kernel=a,
                                              against=against, shape_label=shp.label, causal=c,
                                              device=device["device"], driver=device["driver"], ab=row.to_dict()))
    console.print(ab.rich_table(rows))
    return EXIT_OK


def _bench_spec(spec, shape, sk, suite, causal, no_sdpa, markdown, record):
    """bench --kernel SPEC: the kernel as written, timed beside SDPA; suite shapes outside its
    declared domain are left out with one line each."""
    import datetime
    from harness.run import bench as b
    from harness import records
    from harness.toolchain import compiler
    from harness.toolchain.device import require_gpu
    from harness.show.report import console
    if suite:
        cases = []
        for label, shp, c in b.SUITE:
            try:
                spec.check_domain(shp.B, shp.H, shp.Sq, shp.Sk, shp.D, c)
                cases.append((label, shp, c))
            except UsageError as e:
                click.echo(f"flashcore: {label} left out: {e}", err=True)
        if not cases:
            raise UsageError(f"no suite shape is inside {spec.name}'s declared domain: use --shape")
    else:
        shp = _shape_arg(shape or "mission", sk, None)
        spec.check_domain(shp.B, shp.H, shp.Sq, shp.Sk, shp.D, causal)
        cases = [(shape or "mission", shp, causal)]
    device = require_gpu()
    rows = []
    for label, shp, c in cases:
        row = b.bench_spec(label, spec, shp, c, with_sdpa=not no_sdpa)
        rows.append(row)
        if record:
            records.append(records.new_record("bench", mode="full", shape=row.to_dict()["shape"], shape_label=shp.label,
                                              causal=c, device=device["device"], driver=device["driver"],
                                              cupy=device["cupy"], kernel=spec.name,
                                              kernel_sha256=compiler.source_hash(spec.source),
                                              latency=row.to_dict(), resources=row.resources))
    console.print(b.rich_table(rows, device))
    if markdown:
        cmd = f"flashcore bench --kernel {spec.spec_path} " + ("--suite" if suite else f"--shape {shape or 'mission'}")
        with open(markdown, "w") as f:
            f.write(f"# Benchmarks: {spec.name}\n\n" + b.markdown(rows, device, datetime.date.today().isoformat(), cmd))
        console.print(f"written {markdown}")
    return EXIT_OK


# ------------------------------------------------------------------ regression tracking
def _shape_label(shape: str | None):
    return _shape_arg(shape, None, None).label if shape else None


@cli.command()
@click.option("--mode", default="full", show_default=True)
@click.option("--shape", default="mission", show_default=True, help="shape name or B,H,S,D ('any' for all)")
@click.option("--metric", default="max_err", show_default=True, help="max_err | err_floor | latency | tflops | vs_flash | vs_cudnn | regs | spills | smem")
@click.option("--causal", is_flag=True, help="the causal runs (default: the non-causal ones)")
@click.option("--png", type=click.Path(dir_okay=False), default=None, help="also plot the journey")
@click.option("--kernel", "kernel", default="flashcore_fused", show_default=True,
              help="whose journey: flashcore_fused, or a spec'd kernel's name or spec file")
def history(mode, shape, metric, causal, png, kernel):
    """The journey, oldest commit first: one row per commit (its newest record) with the
    metric and a bar, from the run records in results/."""
    from harness.track import history as h
    from harness.show.report import console
    from debug_modes.registry import get_mode
    user = _user_spec(kernel, allow_callable=True)
    kernel_name = user if isinstance(user, str) else (user.name if user else kernel)
    if not user:
        get_mode(mode)
    if metric not in h.METRICS:
        raise UsageError(f"unknown metric {metric!r}; valid: {', '.join(h.METRICS)}")
    if png:
        h.check_png_path(png)     # before the work: a bad path is one line now, not a traceback after it
    label = None if shape == "any" else _shape_label(shape)
    points, damaged = h.journey(metric, mode, label, causal, kernel=kernel_name)
    for d in damaged:
        click.echo(f"flashcore: warning: skipped damaged record {d}", err=True)
    title = (f"history: {metric} of {kernel_name} {mode}{' causal' if causal else ''} on {label or 'any shape'} "
             f"({len(points)} commits)")
    if not points:
        console.print(f"{title}: no records ({h.no_records_hint(metric)})")
        return EXIT_OK
    console.print(h.history_table(points, metric, title))
    if png:
        h.save_png(points, metric, png, title)
        console.print(f"written {png}")
    return EXIT_OK


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--kernel", "kernel", default="flashcore_fused", show_default=True,
              help="whose records, for two commits: a registry kernel, or a spec'd kernel's name or spec file")
def compare(a, b, kernel):
    """Two commits (hash or rev) or two run ids side by side, metric by metric, with the change."""
    from harness.track import history as h
    from harness.show.report import console
    user = _user_spec(kernel, allow_callable=True)
    kernel_name = user if isinstance(user, str) else (user.name if user else kernel)
    damaged: list = []
    try:
        rows = h.compare(a, b, damaged=damaged, kernel=kernel_name)
    finally:      # the skipped lines are named even where compare finds nothing
        for d in damaged:
            click.echo(f"flashcore: warning: skipped damaged record {d}", err=True)
    if not rows:
        raise UsageError(f"{a} and {b} have no case in common")
    console.print(h.compare_table(rows, a, b))
    return EXIT_OK


@cli.command()
@click.option("--mode", default="full", show_default=True)
@click.option("--shape", default="mission", show_default=True)
@click.option("--causal", is_flag=True)
@click.option("--against", default=None, help="baseline: a git revision with records in results/, or a records file")
@click.option("--max-error", type=click.FloatRange(min=0), default=None, help="largest max abs error allowed")
@click.option("--max-slowdown", type=click.FloatRange(min=0), default=None, help="largest latency increase over the baseline, percent")
@click.option("--max-regs", type=click.IntRange(min=1, max=255), default=None, help="largest register count allowed (sm_90)")
@click.option("--no-spills", is_flag=True, help="fail on any spill byte")
@kernel_option
def check(mode, shape, causal, against, max_error, max_slowdown, max_regs, no_spills, kernel):
    """Regression gate: exit 0 nothing regressed, 1 something did, 125 could not decide (no GPU
    for a GPU metric, no baseline): `git bisect run` reads 125 as skip. 2 is bad usage."""
    from rich.table import Table
    from harness.track.gate import check as run_check
    from harness.show.report import console, verdict
    from debug_modes.registry import get_mode
    spec = _user_spec(kernel)
    if spec is None:
        get_mode(mode)
    shp = _shape_arg(shape, None, spec.head_dims[0] if spec is not None and shape == "mission" else None)
    res = run_check(mode, shp, causal, against, max_error, max_slowdown, max_regs, no_spills, spec)
    t = Table(title=f"check {mode} {shape}" + (f" against {against}" if against else ""), title_justify="left")
    for c in ("check", "result", "detail"):
        t.add_column(c)
    for f in res.findings:
        t.add_row(f.name, "[yellow]UNDECIDED[/]" if f.ok is None else verdict(f.ok, "ok", "REGRESSED"), f.detail)
    console.print(t)
    return res.exit_code


@cli.command("bisect")
@click.option("--good", required=True, help="a revision known good")
@click.option("--bad", required=True, help="a revision known bad")
@click.option("--mode", default="full", show_default=True)
@click.option("--shape", default="mission", show_default=True)
@click.option("--causal", is_flag=True)
@click.option("--metric", default="max_err", show_default=True, help="max_err (GPU) | spills | regs | smem (no GPU)")
@click.option("--threshold", type=float, default=None,
              help="bad when the metric exceeds it (max_err: err/floor; default: the pass rule; spills: 0)")
@kernel_option
def bisect_cmd(good, bad, mode, shape, causal, metric, threshold, kernel):
    """Find the first bad commit with git bisect run, in a throw-away worktree; every step
    is recorded. Both ends are measured first. Exit 0 when a first bad commit is found (measured
    bad, its parent measured good), 1 when none is (BAD passes, GOOD fails, or skips leave
    several candidates), 2 on bad usage."""
    from rich.table import Table
    from harness.track.bisect import bisect
    from harness.show.report import console
    from debug_modes.registry import get_mode
    spec = _user_spec(kernel)
    if spec is None:
        get_mode(mode)
    r = bisect(good, bad, mode, shape, metric, threshold, causal, spec=spec.spec_path if spec else None)
    t = Table(title=f"{metric} along the bisection path", title_justify="left")
    for c in ("step", "commit", "subject", metric, "verdict"):
        t.add_column(c)
    for i, s in enumerate(r.steps, 1):
        v = s.get("value")
        t.add_row(str(i), (s.get("git_commit") or "")[:10], (s.get("git_subject") or "")[:50],
                  "-" if v is None else f"{v:.4g}", s.get("verdict"))
    console.print(t)
    if r.outcome == "found":
        console.print(f"[bold]first bad commit: {r.first_bad[:12]} {r.subject}[/]  (measured bad; its parent measured good)")
        console.print(r.diffstat)
        return EXIT_OK
    if r.outcome == "candidates":
        console.print("[bold yellow]skipped commits leave several candidates:[/] " + ", ".join(c[:10] for c in r.candidates))
        return EXIT_CHECK_FAILED
    click.echo(f"flashcore: {r.message}", err=True)     # no_regression, good_fails, unverified: no culprit
    return EXIT_CHECK_FAILED


# ------------------------------------------------------------------ kernels brought by a user
@cli.group()
def kernel():
    """A kernel checked as its author wrote it: its spec (kernels/spec.py) beside its .cu."""


@kernel.command("init")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--entry", default=None, help="the __global__ function (when the file has several)")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="the spec file (default: SOURCE with .toml)")
@click.option("--force", is_flag=True, help="overwrite an existing spec")
def kernel_init(source, entry, output, force):
    """Read the kernel's __global__ signature and write a proposed spec: roles guessed from the
    names and types, every guess that could be wrong marked "OPEN QUESTION"."""
    from pathlib import Path
    from harness.toolchain.signature import propose_spec
    from harness.show.report import console
    src = Path(source)
    if not src.is_file():
        raise UsageError(f"kernel source not found: {src}")
    out = Path(output) if output else src.with_suffix(".toml")
    if out.exists() and not force:
        raise UsageError(f"{out} exists: --force overwrites it")
    text = propose_spec(src, entry)
    out.write_text(text)
    n_open = text.count("OPEN QUESTION")
    console.print(f"written {out}: {n_open} open question(s) marked 'OPEN QUESTION'; then: flashcore kernel check {out}")
    return EXIT_OK


@kernel.command("check")
@click.argument("spec")
def kernel_check(spec):
    """Compile the kernel, launch one tiny shape, and say in plain words what it did (outputs
    written, NaN, faults, hangs, writes outside, error against the float64 reference), or what
    in the spec is wrong. Exit 0 when every finding is fine."""
    from harness.toolchain.device import require_gpu
    from harness.toolchain.user_kernel import find_spec
    from harness.run.kernel_check import check
    from harness.show.report import console
    path = find_spec(spec)
    try:
        require_gpu()
        gpu = True
    except FlashCoreError:
        gpu = False
    findings = check(path, gpu)
    for ok, text in findings:
        mark = {True: "[green]ok  [/]", False: "[bold red]FAIL[/]", None: "[yellow]--  [/]"}[ok]
        console.print(f"{mark} {text}")
    if any(ok is False for ok in (f[0] for f in findings)):
        return EXIT_CHECK_FAILED
    return EXIT_OK if gpu else EXIT_USAGE


# ------------------------------------------------------------------ watch
@cli.command()
@click.argument("command", type=click.Choice(["run", "diagnose"]), default="run")
@click.option("--debug", "debug", default="full", show_default=True,
              help="watch run: mode, comma list, or all (diagnose runs every stage)")
@with_shape_options
@check_options[0]           # --reference-device and --rows: handed to run_watch, which applies them to every run
@check_options[1]
@click.option("--inputs", default="randn", show_default=True, help="randn | large | uniform | identical_rows | onehot_keys")
@click.option("--seed", type=int, default=None, help="input seed (default: drawn once, printed, kept for every re-run)")
@click.option("--scale", type=float, default=None, callback=lambda c, p, v: _finite(v, "--scale"),
              help="watch run: softmax scale (default 1/sqrt(D))")
@click.option("--bug", "bugs", multiple=True, help="switch on a seeded bug")
@click.option("--record/--no-record", default=False, show_default=True, help="append every re-run's records to results/")
@click.option("--probes", is_flag=True, help="watch diagnose: stage isolation from input probes (as diagnose --probes)")
@click.option("--noise", type=click.FloatRange(min=1, min_open=True), default=None,
              help="err/floor moves are printed beyond this factor (default 2: the seed-to-seed spread, harness/run/watch.py)")
@click.option("--poll", type=click.FloatRange(min=0.05), default=0.5, show_default=True, help="seconds between polls")
@click.option("--debounce", type=click.FloatRange(min=0), default=0.3, show_default=True,
              help="seconds a change must hold still before the re-run")
@click.option("--max-cycles", type=click.IntRange(min=1), default=None, hidden=True, help="stop after this many runs")
@kernel_option
def watch(command, debug, shape, sk, head_dim, causal, reference_device, rows, inputs, seed, scale, bugs, record,
          probes, noise, poll, debounce, max_cycles, kernel):
    """Re-run `run` (default) or `diagnose` on every save of the kernel, its #include "..."
    files and its spec, and print only what changed since the last verdict: a case newly
    failing or passing, err/floor moved beyond noise, the first failing stage. A compile error
    is one line and the watch goes on; Ctrl-C ends it. Exit: the last verdict's (0 all pass)."""
    from harness.run.watch import NOISE, run_watch
    opts = dict(kernel=kernel, shape=shape, sk=sk, head_dim=head_dim, causal=causal, inputs=inputs, seed=seed,
                bugs=bugs, record=record, reference_device=reference_device, rows=rows)
    if command == "run":
        if probes:
            raise UsageError("--probes is for flashcore watch diagnose")
        opts.update(debug=debug, scale=scale)
    else:
        if debug != "full" or scale is not None:
            raise UsageError("--debug and --scale are for flashcore watch run: diagnose runs every stage")
        opts.update(probes=probes)
    return run_watch(command, opts, emit=click.echo, poll_s=poll, debounce_s=debounce, max_cycles=max_cycles,
                     noise=NOISE if noise is None else noise)


def main():
    cli.main()


if __name__ == "__main__":
    main()
