"""`flashcore watch`: re-run `run` or `diagnose` on every save of the kernel and print only what
changed since the last verdict.

The parts, each usable alone (tests/test_watch.py drives them on CPU with a fake run):
  watched_files(kernel)          the kernel source, its quoted includes (recursively, by the rule
                                 compiler.kernel_sources hashes them by) and its spec, if any
  snapshot(results, headline)    a verdict: per case (mode or probe, shape, causal) passed,
                                 err/floor and a status phrase, from the RunResult-like objects
                                 the run/diagnose API returns
  changes(previous, current)     one line per change: a case newly failing or passing, a new or a
                                 removed case, a failure of another kind, err/floor moved by more
                                 than NOISE, the diagnosis moving to another stage
  watch(files_fn, run_once, emit, ...)  the loop: run once, print the verdict in one line, poll the
                                 files' content hashes, debounce, re-run, print the changes
  run_watch(kind, options)       what the CLI calls: `flashcore watch` with run's or diagnose's options

Why polling with the stdlib and not watchfiles/watchdog: the set is a handful of small files
(a .cu, its headers, a TOML), so hashing them twice a second costs nothing; editors save by
writing a temporary file and renaming it over the old one, which breaks an inotify watch on
the file itself (a library copes by watching the directory: more machinery to get the same
answer) and can leave the mtime unchanged; content hashes see exactly "the text changed";
and the GPU machines install without network, so a new dependency would have to travel as a
wheel. A write that leaves the text as it was (touch, save without edits, undo) runs nothing.

The seed is drawn once and kept for every cycle (printed on the first line): with the same
inputs the kernel is bitwise deterministic, so a moved err/floor is the edit's doing, not the
draw's.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from harness.errors import EXIT_CHECK_FAILED, EXIT_OK, FlashCoreError, UsageError

# err/floor "moved" when the new value is more than NOISE times the old one or less than
# 1/NOISE of it. Why 2: a clean kernel's err/floor is a draw from the rounding of its inputs,
# and an edit that only re-associates arithmetic (a reordered sum, a contracted FMA) re-draws
# the rounding the way a new seed does. Measured on the H200 records (results/
# runs-nvidia-h200.jsonl: flashcore_fused's passing runs grouped by kernel hash, mode, shape
# and input set, 3 to 17 seeds a group; 86 groups, 2,876 seed pairs): the ratio of two
# seeds' err/floor has median 1.03, 95th percentile 1.46, 99th 1.73, largest 2.24
# (softmax_only, qk_only and fp32_p spread the most; pv_only and uniform_p sit at 1.00
# exactly); 4 % of pairs exceed 1.5, 0.24 % exceed 2. With tens of cases per verdict, 1.5
# would print a spurious line after most harmless edits; 2 almost never does, and a real
# regression (a lost rescale, a wrong mask) moves err/floor by orders of magnitude or fails
# outright (FRAG_SWAP on the H200: pv_only 1 -> 2.6e3). --noise sets it.
NOISE = 2.0
# Below a tenth of the floor the kernel matches the reference to within its own rounding:
# ratios there (0.01 -> 0.05) mean nothing, so both values are raised to this before comparing.
RATIO_BASE = 0.1
LIST_AT_MOST = 3               # cases named on one line before "+N more"


# ------------------------------------------------------------------ what to watch
def _walk_includes(path: Path) -> list:
    """The file and its quoted includes, recursively, by compiler.kernel_sources' rule (relative
    to the including file); a file that is missing is listed (its appearing is a change)."""
    from harness.toolchain.compiler import INCLUDE_RE
    seen: list = []

    def walk(p: Path):
        p = p.resolve()
        if p in seen:
            return
        seen.append(p)
        try:
            text = p.read_text(errors="replace")
        except OSError:
            return
        for inc in INCLUDE_RE.findall(text):
            walk(p.parent / inc)

    walk(Path(path))
    return seen


def kernel_and_includes(path: Path) -> list:
    """The kernel source and every local file it includes, as the compiler hashes them
    (compiler.kernel_sources); while an include is missing (being written), the lenient walk."""
    from harness.toolchain import compiler
    try:
        return list(compiler.kernel_sources(Path(path)))
    except (UsageError, OSError, UnicodeDecodeError):
        return _walk_includes(Path(path))


def watched_files(kernel=None) -> list:
    """The files whose edit changes the verdict: the kernel source, its quoted includes and the
    spec file if any. kernel: None (flashcore_fused, or $FLASHCORE_KERNEL), a loaded Spec, a spec
    file (.toml), or a .cu (its spec beside it when there is one, else the .cu alone)."""
    from harness.toolchain import compiler
    from kernels import spec as kspec
    if kernel is None:
        return kernel_and_includes(compiler.kernel_file())
    if isinstance(kernel, kspec.Spec):
        spec_file = [Path(kernel.spec_path).resolve()] if kernel.spec_path else []
        return spec_file + kernel_and_includes(kernel.source)
    p = Path(kernel)
    if p.suffix == ".cu":
        from harness.toolchain.user_kernel import find_spec
        try:
            p = find_spec(str(p))
        except UsageError:
            return kernel_and_includes(p)
    return watched_files(kspec.load(p))


def fingerprint(paths: Iterable) -> tuple:
    """((path, sha256 of its bytes or None when it cannot be read), ...): what a change is."""
    out = []
    for p in paths:
        try:
            digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
        except OSError:
            digest = None
        out.append((str(p), digest))
    return tuple(out)


def changed_names(before: tuple, after: tuple) -> list:
    """The file names whose hash differs between two fingerprints (added and removed included)."""
    a, b = dict(before), dict(after)
    return [Path(p).name for p in list(b) + [p for p in a if p not in b]
            if p != "<error>" and a.get(p, "-") != b.get(p, "-")]


# ------------------------------------------------------------------ a verdict
@dataclass(frozen=True)
class CaseVerdict:
    """One case of a verdict: passed, its worst err/floor (None without metrics: a fault, a
    compile error), the status of the result (ok | fault | hang | compile_error | ...) and a
    short phrase for humans (what failed, or 'pass')."""
    label: str
    passed: bool
    err_over_floor: float | None
    status: str = "ok"
    text: str = "pass"
    output: str | None = None      # the output err/floor is worst at


@dataclass
class Snapshot:
    """A verdict: the cases in their order, and the diagnosis in words ('' for run)."""
    cases: dict = field(default_factory=dict)     # case key -> CaseVerdict
    headline: str = ""

    @property
    def n_fail(self) -> int:
        return sum(not c.passed for c in self.cases.values())

    @property
    def passed(self) -> bool:
        return self.n_fail == 0


# CuPy compiles the kernel's text from a temporary file named by a hash of the text and the
# options (/tmp/tmpXXXX/<sha1>.cubin.cu), so every variant's log names another file.
CUPY_TEMP_SOURCE = re.compile(r"\S*?[0-9a-f]{40}\.cubin\.cu(?=\(\d+\))")


def one_line(message: str, source: str | None = None) -> str:
    """The line of a message that says what is wrong: in a compile log the first `file(line):
    error` line (CuPy's temporary file named as `source`, the kernel file it holds), else the
    first line."""
    lines = [ln.strip() for ln in str(message).strip().splitlines() if ln.strip()] or ["error"]
    err = next((ln for ln in lines[1:] if re.search(r"\(\d+\): (catastrophic )?error", ln)), None)
    return CUPY_TEMP_SOURCE.sub(source or "kernel", err) if err else lines[0]


def case_key(r) -> tuple:
    """(mode or probe, shape label, causal) of a RunResult (variant.mode, variant.causal), a
    ProbeResult (probe, causal) or anything with mode/shape/causal attributes."""
    v = getattr(r, "variant", None)
    mode = getattr(v, "mode", None) or getattr(r, "mode", None)
    if mode is None and getattr(r, "probe", None):
        mode = f"probe {r.probe}"
    causal = getattr(v, "causal", None) if v is not None else None
    causal = getattr(r, "causal", False) if causal is None else causal
    shape = getattr(r, "shape", "")
    return (str(mode or "?"), getattr(shape, "label", str(shape)), bool(causal))


def key_label(key: tuple) -> str:
    mode, shape, causal = key
    return f"{mode} {shape}" + (" causal" if causal else "")


def case_verdict(r, label: str = "", source: str | None = None) -> CaseVerdict:
    """The verdict of one result: passed, worst err/floor over its outputs, the status phrase
    (source: the kernel file's name, for compile logs)."""
    status = getattr(r, "status", "ok") or "ok"
    passed = bool(r.passed)
    if status != "ok":
        what = "compile error" if status == "compile_error" else status
        return CaseVerdict(label, False, None, status, f"{what}: {one_line(getattr(r, 'message', '') or status, source)}")
    metrics = list(getattr(r, "metrics", None) or [])
    worst = max(metrics, key=lambda m: m.err_over_floor, default=None)
    e = None if worst is None else float(worst.err_over_floor)
    out = None if worst is None else getattr(worst, "output", None)
    if passed:
        return CaseVerdict(label, True, e, status, "pass", out)
    from harness.run.coverage import result_detail
    try:
        text = result_detail(r) or "FAIL"
    except AttributeError:          # a result-like object without StageMetrics' fields
        text = f"{out} err/floor {_fmt(e)}" if worst is not None else "FAIL"
    return CaseVerdict(label, False, e, status, text, out)


def snapshot(results: Iterable, headline: str = "", source: str | None = None) -> Snapshot:
    """A Snapshot of RunResult-like objects (variant or mode, shape, status, message, passed,
    metrics with err_over_floor); a later result of the same case replaces an earlier one.
    source: the kernel file's name, for compile logs."""
    cases: dict = {}
    for r in results:
        k = case_key(r)
        cases[k] = case_verdict(r, key_label(k), source)
    return Snapshot(cases, headline)


# ------------------------------------------------------------------ what changed
def _fmt(e) -> str:
    if e is None:
        return "-"
    if math.isinf(e):
        return "inf"
    return f"{e:.3g}"


def moved(a: float | None, b: float | None, noise: float = NOISE) -> bool:
    """err/floor a -> b moved beyond noise (a relative factor; see NOISE)."""
    if a is None or b is None or a == b:
        return False
    if math.isinf(a) or math.isinf(b) or math.isnan(a) or math.isnan(b):
        return True
    lo, hi = sorted((max(a, RATIO_BASE), max(b, RATIO_BASE)))
    return hi > noise * lo


def _ratio(a, b) -> str:
    if a is None or b is None or math.isinf(a) or math.isinf(b):
        return ""
    r = max(b, RATIO_BASE) / max(a, RATIO_BASE)
    return f" (x{r:.2g})" if r >= 1 else f" (/{1 / r:.2g})"


def _names(labels: list) -> str:
    shown = ", ".join(labels[:LIST_AT_MOST])
    return shown + (f" +{len(labels) - LIST_AT_MOST} more" if len(labels) > LIST_AT_MOST else "")


def _err_text(c: CaseVerdict) -> str:
    return f"{c.output + ' ' if c.output else ''}err/floor {_fmt(c.err_over_floor)}"


def changes(previous: Snapshot, current: Snapshot, noise: float = NOISE) -> list:
    """One line per change from previous to current; [] when nothing changed. Cases that change
    the same way for the same reason share one line: a compile error fails every case with one
    message, and its line names them whether they passed or failed another way before."""
    items = []          # (group key or None, label, line)
    prev, cur = previous.cases, current.cases
    for k in list(cur) + [k for k in prev if k not in cur]:
        p, c = prev.get(k), cur.get(k)
        label = key_label(k)
        if p is None:
            items.append((("new", c.passed, c.text if c.status != "ok" else None), label,
                          f"new case: {label}: {'pass, ' + _err_text(c) if c.passed else c.text}"))
        elif c is None:
            items.append((("gone",), label, f"case gone: {label}"))
        elif p.passed and not c.passed:
            items.append((("fails", c.text) if c.status != "ok" else None, label,
                          f"FAILS now: {label}: {c.text}" + (f" (was {_fmt(p.err_over_floor)})" if c.status == "ok" else "")))
        elif not p.passed and c.passed:
            items.append((("passes", p.text) if p.status != "ok" else None, label,
                          f"passes now: {label}: {_err_text(c)} (was: {p.text})"))
        elif not p.passed:
            if p.status != c.status or (c.status != "ok" and p.text != c.text):
                # into a fault or a compile error: one group with the cases newly failing so
                items.append((("fails", c.text) if c.status != "ok" else None, label,
                              f"still FAILS, differently: {label}: {c.text} (was: {p.text})"))
            elif moved(p.err_over_floor, c.err_over_floor, noise):
                word = "worse" if c.err_over_floor > p.err_over_floor else "better"
                items.append((None, label, f"still FAILS, {word}: {label}: err/floor {_fmt(p.err_over_floor)} -> "
                                           f"{_fmt(c.err_over_floor)}{_ratio(p.err_over_floor, c.err_over_floor)}"))
        elif moved(p.err_over_floor, c.err_over_floor, noise):
            items.append((None, label, f"err/floor moved: {label}: {p.output + ' ' if p.output else ''}"
                                       f"{_fmt(p.err_over_floor)} -> {_fmt(c.err_over_floor)}"
                                       f"{_ratio(p.err_over_floor, c.err_over_floor)}, still passes"))
    lines = _grouped(items)
    if previous.headline != current.headline and current.headline:
        lines.append(f"verdict: {current.headline} (was: {previous.headline or '-'})")
    return lines


def _grouped(items: list) -> list:
    """Lines of the same group key become one line naming the cases."""
    by_key: dict = {}
    for key, label, _ in items:
        if key is not None:
            by_key.setdefault(key, []).append(label)
    out, done = [], set()
    for key, label, line in items:
        if key is None or len(by_key[key]) == 1:
            out.append(line)
            continue
        if key in done:
            continue
        done.add(key)
        labels = by_key[key]
        n = f"{len(labels)} cases ({_names(labels)})"
        kind = key[0]
        if kind == "fails":
            out.append(f"FAILS now in {n}: {key[1]}")
        elif kind == "passes":
            out.append(f"passes now in {n} (was: {key[1]})")
        elif kind == "gone":
            out.append(f"cases gone: {n}")
        else:
            out.append(f"new cases: {n}: " + ("pass" if key[1] else key[2] or "FAIL"))
    return out


def verdict_text(snap: Snapshot) -> str:
    """'5 cases, all pass' | '5 cases, 2 FAIL', with the diagnosis."""
    n = len(snap.cases)
    s = f"{n} case{'s' if n != 1 else ''}, " + ("all pass" if snap.passed else f"{snap.n_fail} FAIL")
    return s + (f"; {snap.headline}" if snap.headline else "")


def summary(snap: Snapshot) -> str:
    """The whole verdict in one line: counts, the diagnosis, what fails (cases failing for one
    reason together) or the worst err/floor when everything passes."""
    s = verdict_text(snap)
    if not snap.cases:
        return s
    if snap.passed:
        worst = max((c for c in snap.cases.values() if c.err_over_floor is not None),
                    key=lambda c: c.err_over_floor, default=None)
        return s + (f"; worst {_err_text(worst)} ({worst.label})" if worst else "")
    by_text: dict = {}
    for c in snap.cases.values():
        if not c.passed:
            by_text.setdefault(c.text if c.status != "ok" else ("", c.label), []).append(c)
    parts = []
    for key, cs in by_text.items():
        if isinstance(key, str):
            parts.append(f"{key} ({_names([c.label for c in cs])})")
        else:
            parts.append(f"{cs[0].label}: {cs[0].text}")
    shown = parts[:LIST_AT_MOST] + ([f"+{len(parts) - LIST_AT_MOST} more"] if len(parts) > LIST_AT_MOST else [])
    return s + " -- " + "; ".join(shown)


# ------------------------------------------------------------------ the loop
def _files_of(files_fn, last: list) -> tuple:
    """(files, error): files_fn's list, or the last one with the error while it fails (a spec
    being edited that does not parse yet: its edit is still seen, and the run says why)."""
    try:
        return [Path(p) for p in files_fn()], None
    except FlashCoreError as e:
        return list(last), one_line(str(e))


def watch(files_fn: Callable[[], Iterable], run_once: Callable[[], Snapshot], emit: Callable[[str], None] = print,
          poll_s: float = 0.5, debounce_s: float = 0.3, max_cycles: int | None = None,
          sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
          noise: float = NOISE) -> Snapshot | None:
    """Run once and emit the verdict in one line; then poll the files' content hashes every
    poll_s and, once a change has held still for debounce_s (an editor's two writes, a save of
    several files, make one run), run again and emit only what changed since the last verdict
    ('no change (...)' when nothing did). A FlashCoreError from a run (a compile error, a bad
    spec, a usage error) is emitted as one line and the loop goes on; the next verdict is
    compared with the last one that came. files_fn is asked on every poll (an edit can add an
    include). Ends after max_cycles runs, or on KeyboardInterrupt; returns the last verdict."""
    files: list = []
    last: Snapshot | None = None
    cycles = 0

    def cycle(first: bool):
        nonlocal last
        t0 = clock()
        try:
            snap = run_once()
        except FlashCoreError as e:
            emit(f"error: {one_line(str(e))} -- watching for the next save")
            return
        took = f" [{clock() - t0:.1f} s]" if clock() - t0 >= 0.05 else ""
        if last is None:
            emit(("verdict: " if first else "verdict (first since the error): ") + summary(snap) + took)
        else:
            lines = changes(last, snap, noise)
            if not lines:
                emit(f"no change ({verdict_text(snap)}){took}")
            for ln in lines:
                emit(ln)
        last = snap

    def current() -> tuple:
        nonlocal files
        files, err = _files_of(files_fn, files)
        return fingerprint(files) + ((("<error>", err),) if err else ())

    def next_change() -> tuple:
        """The fingerprint after the next change of content that holds still for debounce_s."""
        while True:
            sleep(poll_s)
            now = current()
            if now == state:
                continue
            while True:                      # debounce: until it holds still for debounce_s
                sleep(debounce_s)
                settled = current()
                if settled == now:
                    break
                now = settled
            if now != state:                 # not written and written back
                return now

    state = current()
    emit(f"watching {', '.join(p.name for p in files) or 'nothing'} (Ctrl-C stops)")
    try:
        while True:
            cycle(first=cycles == 0)
            cycles += 1
            if max_cycles is not None and cycles >= max_cycles:
                return last
            now = next_change()
            names = changed_names(state, now)
            state = now
            emit(f"-- {', '.join(names) or 'files'} changed: re-running")
    except KeyboardInterrupt:
        emit("watch stopped")
        return last


# ------------------------------------------------------------------ what the CLI calls
RUN_OPTIONS = dict(kernel=None, debug="full", shape=None, sk=None, head_dim=None, causal=False, inputs="randn",
                   seed=None, scale=None, bugs=(), record=False, isolate=True, reference_device=None, rows=None)
DIAGNOSE_OPTIONS = dict(kernel=None, shape=None, sk=None, head_dim=None, causal=False, inputs="randn", seed=None,
                        bugs=(), record=False, probes=False, reference_device=None, rows=None)


@dataclass
class Plan:
    """What run_watch watches and runs: validated before the loop starts."""
    title: str
    files: Callable[[], list]
    run_once: Callable[[], Snapshot]


def _bug_names(bugs, known, what: str) -> tuple:
    from debug_modes.bugs import bug_names
    return bug_names(bugs, known, lambda b: f"unknown bug {b!r}; {what}: {', '.join(known) or 'none'}")


COMPILE = "compile"   # a target's "stage" when the result the diagnosis rests on did not compile


def _stage_of(stage, failing) -> str | None:
    """A target's first failing stage, COMPILE when the result it rests on did not compile
    (bisection would name the first mode's stage, QK, for an error anywhere in the file)."""
    if failing is not None and getattr(failing, "status", "ok") == "compile_error":
        return COMPILE
    return stage


def _stage_headline(stages: list) -> str:
    """The diagnosis over the targets: 'no stage fails', the most common first failing stage,
    or that the kernel does not compile."""
    from harness.run.diagnose import STAGE_TEXT
    failing = [s for s in stages if s]
    if not failing:
        return "no stage fails"
    stage, n = Counter(failing).most_common(1)[0]
    where = f" (at {n} of {len(stages)} shapes)" if len(stages) > 1 else ""
    if stage == COMPILE:
        return f"the kernel does not compile{where}"
    return f"first failing stage: {STAGE_TEXT.get(stage, stage).split(':')[0]}{where}"


class _Lost:
    """A probe case whose worker was lost: one failing case of its own."""

    def __init__(self, shape, causal, status, message):
        self.mode, self.shape, self.causal, self.status, self.message = "probes", shape, causal, status, message
        self.passed, self.metrics = False, []


def plan(kind: str, options: dict) -> Plan:
    """Validate run's or diagnose's options (one-line UsageError, before any GPU work) and build
    the watch: the files and one run that returns a Snapshot. Options as `flashcore run` /
    `flashcore diagnose` name them (RUN_OPTIONS, DIAGNOSE_OPTIONS give the watch's defaults:
    no records, every case in a worker process)."""
    from harness.check.inputs import INPUT_SETS, fresh_seed
    from harness.check.shapes import parse_shape
    from harness.run import gpu
    if kind not in ("run", "diagnose"):
        raise UsageError(f"watch runs run or diagnose, not {kind!r}")
    defaults = RUN_OPTIONS if kind == "run" else DIAGNOSE_OPTIONS
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise UsageError(f"watch {kind} takes no option {', '.join('--' + u.replace('_', '-') for u in unknown)}")
    o = {**defaults, **{k: v for k, v in options.items() if v is not None}}
    if o["inputs"] not in INPUT_SETS:
        raise UsageError(f"unknown input set {o['inputs']!r}; valid: {', '.join(INPUT_SETS)}")
    if o["shape"] is None and o["sk"] is not None:
        raise UsageError("--sk needs --shape: without it the coverage set chooses its own key lengths")
    gpu.reference_device_of(o["reference_device"])
    seed = fresh_seed() if o["seed"] is None else int(o["seed"])
    shape = parse_shape(o["shape"], o["sk"], o["head_dim"]) if o["shape"] else None
    kernel = o["kernel"]
    from harness.run.callable_kernel import is_callable_ref
    if is_callable_ref(kernel):
        raise UsageError(f"--kernel {kernel}: watch needs a .cu to watch (a spec'd kernel or flashcore_fused); "
                         f"a Python callable is checked by run and diagnose")
    if kernel in (None, "flashcore_fused"):
        if kind == "diagnose" and o["probes"]:
            from kernels.registry import KERNELS_DIR
            return _spec_plan(kind, KERNELS_DIR / "flashcore_fused.toml", o, shape, seed)
        return _builtin_plan(kind, o, shape, seed)
    if o["rows"]:
        raise UsageError("--rows is for flashcore_fused's windowed debug modes; a spec'd kernel is checked whole")
    from harness.toolchain.user_kernel import find_spec
    return _spec_plan(kind, find_spec(kernel), o, shape, seed)


def _what(kind, o, seed, name="flashcore_fused") -> str:
    parts = [kind, name] + ([f"--debug {o['debug']}"] if o.get("debug", "full") != "full" else [])
    parts.append(f"--shape {o['shape']}" if o["shape"] else "coverage set")
    parts += ["--causal"] * bool(o["causal"]) + [f"--bug {b}" for b in o["bugs"] or ()]
    parts += [f"--inputs {o['inputs']}"] * (o["inputs"] != "randn") + ["--probes"] * bool(o.get("probes"))
    return " ".join(parts) + f" seed={seed}"


def _builtin_plan(kind, o, shape, seed) -> Plan:
    from debug_modes import bugs_of
    from kernels import registry
    BUGS = bugs_of(registry.current())
    from harness.run import gpu, session
    from harness.run.coverage import cases_for
    from harness.run.diagnose import BISECT_MODES, bisect_stages, diagnose
    from harness.toolchain import compiler
    from harness.toolchain.variant import Variant
    from debug_modes.registry import modes_of
    modes = modes_of(o["debug"]) if kind == "run" else list(BISECT_MODES)
    bugs = _bug_names(o["bugs"], BUGS, "valid bugs")
    if o["rows"] and shape is None:
        raise UsageError("--rows needs --shape: the coverage shapes are small and checked whole")
    targets = ([(shape, bool(o["causal"]))] if shape is not None else
               [(c.shape, c.causal) for c in cases_for(o["head_dim"], o["causal"], modes)])
    for s, c in targets:         # every variant, before the GPU (as run_modes and the sweeps do)
        for m in modes:
            Variant(m, s.D, session.causal_for(m, c, len(modes)), bugs)
    if o["rows"]:
        gpu.validate_rows(modes, shape, o["rows"])

    def run_once() -> Snapshot:
        results, stages = [], []
        with gpu.check_settings(o["reference_device"], o["rows"]):
            for s, c in targets:
                if kind == "run":
                    results += session.run_modes(modes, s, causal=c, inputs=o["inputs"], seed=seed, scale=o["scale"],
                                                 bugs=bugs, record=o["record"], isolate=o["isolate"], show=False)
                else:
                    d = diagnose(s, causal=c, inputs=o["inputs"], seed=seed, bugs=bugs, record=o["record"],
                                 isolate=True, show=False)
                    results += d.results
                    stages.append(_stage_of(*bisect_stages(d.results)))
        return snapshot(results, _stage_headline(stages) if kind == "diagnose" else "", compiler.kernel_file().name)

    return Plan(_what(kind, o, seed), lambda: watched_files(None), run_once)


def _spec_plan(kind, spec_path, o, shape, seed) -> Plan:
    from harness.run import asis_sweep, probe_sweep
    from kernels import spec as kspec
    spec = kspec.load(spec_path)

    def modes_of(sp):
        if kind == "run":
            from harness.run.asis_sweep import spec_modes
            return spec_modes(sp, o["debug"])
        return None if (o["probes"] or not sp.flags) else asis_sweep.stage_modes(sp)

    def targets_of(sp):
        if shape is not None:
            return [(shape, bool(o["causal"]))]
        cases = asis_sweep.coverage_cases(sp, o["head_dim"], o["causal"])
        if not cases:
            raise UsageError(f"{sp.name}: the coverage set is empty for these options")
        return [(c.shape, c.causal) for c in cases]

    def checked(sp):
        """The spec as it is now, its modes, targets and bugs, validated (at the start, and
        again each run: the spec is one of the watched files)."""
        modes, targets = modes_of(sp), targets_of(sp)
        bugs = _bug_names(o["bugs"], sp.bugs, f"{sp.name}'s bugs")
        asis_sweep.validate(sp, modes or ["full"], targets, bugs)
        return modes, targets, bugs

    if modes_of(spec) is None and o["inputs"] != "randn":
        raise UsageError("--inputs does not apply to --probes: each probe builds its own inputs")
    checked(spec)

    def run_once() -> Snapshot:
        sp = kspec.load(spec_path)
        modes, targets, bugs = checked(sp)
        results, stages = [], []
        for s, c in targets:
            if modes is None:               # the input probes
                pc = probe_sweep.run_cases([probe_sweep.make_case(spec_path, s, c, seed, bugs)], True)[0]
                if not pc.results:
                    results.append(_Lost(s, c, pc.status, pc.message))
                results += list(pc.results.values()) + ([pc.plain] if pc.plain is not None else [])
                bad = next((r for r in pc.results.values() if r.status == "compile_error"), None)
                stages.append(_stage_of(probe_sweep.verdict_of(pc)[0], bad))
                continue
            rs = asis_sweep.run_modes(spec_path, modes, s, c, o["inputs"], seed, o.get("scale"), bugs, o["record"],
                                      o.get("isolate", True), show=False)
            results += rs
            bad = next((r for r in rs if not r.passed), None)
            stages.append(None if bad is None else _stage_of(asis_sweep.mode_stage(sp, bad.variant.mode), bad))
        return snapshot(results, _stage_headline(stages) if kind == "diagnose" else "", sp.source.name)

    return Plan(_what(kind, o, seed, spec.name), lambda: watched_files(Path(spec_path)), run_once)


def run_watch(kind: str, options: dict, emit: Callable[[str], None] = print, **loop_kw) -> int:
    """`flashcore watch`: plan(kind, options) (usage errors now, exit 2), then the loop (watch's
    keyword arguments: poll_s, debounce_s, max_cycles, noise, sleep, clock). Returns the exit
    code of the last verdict: 0 when every case passed, 1 otherwise (or when none came)."""
    p = plan(kind, options)
    emit(p.title)
    last = watch(p.files, p.run_once, emit, **loop_kw)
    return EXIT_OK if last is not None and last.passed else EXIT_CHECK_FAILED
