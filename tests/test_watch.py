"""`flashcore watch` on CPU: the watched files (kernel, quoted includes, spec), the verdict
snapshot of RunResults, the change lines and their noise rule, and the loop itself driven by a
fake run and a fake clock (its sleep makes the edits at the planned moments), so every test is
fast and deterministic; run_watch with the GPU path faked (session.run_modes, diagnose). The
loop over the real GPU path was run on the H200 (the watch issue's report has the log)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.check.metrics import StageMetrics
from harness.check.shapes import Shape
from harness.errors import CompileError, UsageError
from harness.run import watch as w
from harness.run.gpu import RunResult
from harness.toolchain.variant import Variant
from kernels.registry import KERNELS_DIR

MISSION = "1,8,512,64"


# ------------------------------------------------------------------ fakes
def res(mode="full", e=0.9, passed=None, status="ok", message="", shape=MISSION, causal=False, output="O"):
    """A RunResult-like object: what the loop and the adapter read of one."""
    passed = (e is not None and e <= 2.0) if passed is None else passed
    metrics = [] if e is None else [SimpleNamespace(output=output, err_over_floor=e)]
    return SimpleNamespace(mode=mode, shape=shape, causal=causal, status=status, message=message,
                           passed=passed and status == "ok", metrics=metrics)


def snap(*results, headline=""):
    return w.snapshot(results, headline)


class FakeTime:
    """sleep() advances the clock and runs the edits planned up to the new time; past `limit`
    it raises KeyboardInterrupt (the loop must end cleanly on it)."""

    def __init__(self, limit=200.0):
        self.t, self.events, self.limit = 0.0, [], limit

    def at(self, t, fn):
        self.events.append((t, fn))
        self.events.sort(key=lambda e: e[0])

    def sleep(self, dt):
        self.t += dt
        while self.events and self.events[0][0] <= self.t:
            self.events.pop(0)[1]()
        if self.t > self.limit:
            raise KeyboardInterrupt

    def clock(self):
        return self.t


class Script:
    """run_once returning (or raising) the scripted outcomes in turn; after each run the next
    step's edit is made `gap` seconds later (a save), so run i answers edit i."""

    def __init__(self, ft: FakeTime, outcomes, edits=(), gap=2.0):
        self.ft, self.outcomes, self.edits, self.gap, self.calls = ft, list(outcomes), list(edits), gap, 0

    def __call__(self):
        i = self.calls
        self.calls += 1
        if i < len(self.edits):
            self.ft.at(self.ft.t + self.gap, self.edits[i])
        out = self.outcomes[min(i, len(self.outcomes) - 1)]
        if isinstance(out, BaseException):
            raise out
        return snap(*out) if isinstance(out, (list, tuple)) else out


def loop_fn(files_fn, script, ft, **kw):
    """The loop with the fake clock: (emitted lines, the last verdict)."""
    lines = []
    last = w.watch(files_fn, script, lines.append, sleep=ft.sleep, clock=ft.clock, **kw)
    return lines, last


def loop(files, script, ft, **kw):
    return loop_fn(lambda: files, script, ft, **kw)


def cycles_of(lines):
    """The lines after each re-run's '-- ... changed' line, cycle by cycle (cycle 0: the first run)."""
    out = [[]]
    for ln in lines:
        if ln.startswith("-- "):
            out.append([])
        elif not ln.startswith("watching") and ln != "watch stopped":
            out[-1].append(ln)
    return out


def edit(path: Path, text: str):
    return lambda: path.write_text(text)


def append(path: Path, text: str):
    return lambda: path.write_text(path.read_text() + text)


@pytest.fixture
def kernel(tmp_path):
    k = tmp_path / "k.cu"
    k.write_text('#include "common.cuh"\n#include <cuda_fp16.h>\n__global__ void f() {}\n')
    (tmp_path / "common.cuh").write_text('#include "sub/deep.h"\n#define TILE 64\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.h").write_text("#define DEEP 1\n")
    return k


# ------------------------------------------------------------------ watched files
def test_watched_files_kernel_and_quoted_includes_recursively(kernel, tmp_path):
    files = w.watched_files(kernel)
    assert files == [kernel.resolve(), (tmp_path / "common.cuh").resolve(), (tmp_path / "sub" / "deep.h").resolve()]


def test_watched_files_a_missing_include_is_watched_for_its_appearing(tmp_path):
    k = tmp_path / "k.cu"
    k.write_text('#include "later.cuh"\n')
    assert w.watched_files(k) == [k.resolve(), (tmp_path / "later.cuh").resolve()]
    assert dict(w.fingerprint(w.watched_files(k)))[str((tmp_path / "later.cuh").resolve())] is None


def test_watched_files_spec_its_source_and_includes(tmp_path):
    shutil.copy(KERNELS_DIR / "outsider" / "attention.toml", tmp_path / "attention.toml")
    src = (KERNELS_DIR / "outsider" / "attention.cu").read_text()
    (tmp_path / "attention.cu").write_text('#include "tiles.cuh"\n' + src)
    (tmp_path / "tiles.cuh").write_text("#define BR 64\n")
    want = [(tmp_path / n).resolve() for n in ("attention.toml", "attention.cu", "tiles.cuh")]
    assert w.watched_files(tmp_path / "attention.toml") == want
    assert w.watched_files(tmp_path / "attention.cu") == want        # a .cu: its spec beside it


def test_watched_files_builtin_kernel_follows_flashcore_kernel(kernel, monkeypatch):
    monkeypatch.setenv("FLASHCORE_KERNEL", str(kernel))
    assert w.watched_files(None)[0] == kernel.resolve()
    monkeypatch.delenv("FLASHCORE_KERNEL")
    assert w.watched_files(None)[0] == (KERNELS_DIR / "flashcore_fused.cu").resolve()


# ------------------------------------------------------------------ the snapshot of real results
def metric(mode, output, e, passed=True):
    return StageMetrics(mode=mode, output=output, stage="PV", max_abs=e * 1e-3, mean_abs=1e-5, rel_l2=1e-4,
                        floor=1e-3, atol=1e-6, tol=2e-3, err_over_floor=e, n_over_tol=0 if passed else 7,
                        n_nonfinite=0, n_unwritten=0, n_elements=100, worst_index=(0, 0, 1, 2), passed=passed)


def run_result(mode, outputs, status="ok", message="", causal=False, shape=Shape(1, 8, 512, 512, 64)):
    r = RunResult(Variant(mode, shape.D, causal), shape, 0.125, "randn", 7, status=status, message=message)
    r.metrics = [metric(mode, o, e, p) for o, e, p in outputs]
    return r


def test_snapshot_of_run_results():
    s = w.snapshot([run_result("qk_only", [("S", 0.8, True)]),
                    run_result("full", [("O", 0.9, True), ("LSE", 1.3, True)], causal=True),
                    run_result("softmax_only", [("P", 9.5, False), ("m", 0.5, True)]),
                    run_result("pv_only", [], "compile_error",
                               "pv_only d64: compilation failed\nk.cu(12): error: expected a \";\"\n   12 | x")])
    c = s.cases
    assert list(c) == [("qk_only", MISSION, False), ("full", MISSION, True), ("softmax_only", MISSION, False),
                       ("pv_only", MISSION, False)]
    assert c[("full", MISSION, True)] == w.CaseVerdict("full 1,8,512,64 causal", True, 1.3, "ok", "pass", "LSE")
    bad = c[("softmax_only", MISSION, False)]
    assert (bad.passed, bad.err_over_floor, bad.output) == (False, 9.5, "P") and "P err/floor 9.5" in bad.text
    ce = c[("pv_only", MISSION, False)]
    assert (ce.passed, ce.err_over_floor, ce.status) == (False, None, "compile_error")
    assert ce.text == 'compile error: k.cu(12): error: expected a ";"'
    assert s.n_fail == 2 and not s.passed


def test_snapshot_of_probe_like_results():
    p = SimpleNamespace(probe="onehot", shape=Shape(1, 2, 100, 100, 64), causal=False, status="ok", message="",
                        passed=True, metrics=[SimpleNamespace(output="O", err_over_floor=0.4)])
    assert list(w.snapshot([p]).cases) == [("probe onehot", "1,2,100,64", False)]


# ------------------------------------------------------------------ changes and noise
def test_changes_nothing_changed_is_empty():
    a = snap(res("qk_only", 0.8), res("full", 0.9))
    assert w.changes(a, snap(res("qk_only", 0.8), res("full", 0.9))) == []


def test_changes_newly_failing_and_newly_passing():
    ok, bad = snap(res("qk_only", 0.8), res("full", 0.9)), snap(res("qk_only", 0.8), res("full", 40.0))
    assert w.changes(ok, bad) == ["FAILS now: full 1,8,512,64: O err/floor 40 (was 0.9)"]
    assert w.changes(bad, ok) == ["passes now: full 1,8,512,64: O err/floor 0.9 (was: O err/floor 40)"]


def test_changes_err_floor_beyond_noise_is_printed_within_is_not():
    base = snap(res("full", 0.6))
    assert w.changes(base, snap(res("full", 1.1))) == []                 # x1.8: seed-to-seed spread
    assert w.changes(base, snap(res("full", 0.35))) == []                # /1.7
    assert w.changes(base, snap(res("full", 1.5))) == ["err/floor moved: full 1,8,512,64: O 0.6 -> 1.5 (x2.5), still passes"]
    assert w.changes(base, snap(res("full", 0.2))) == ["err/floor moved: full 1,8,512,64: O 0.6 -> 0.2 (/3), still passes"]
    assert w.changes(base, snap(res("full", 1.1)), noise=1.5) != []      # noise is a parameter
    assert w.changes(snap(res("full", 0.0)), snap(res("full", 0.15))) == []   # both at the reference's rounding
    failing = snap(res("full", 10.0))
    assert w.changes(failing, snap(res("full", 15.0))) == []
    assert w.changes(failing, snap(res("full", 1e3))) == ["still FAILS, worse: full 1,8,512,64: err/floor 10 -> 1e+03 (x1e+02)"]


def test_changes_new_and_removed_cases_and_the_verdict():
    a = snap(res("qk_only", 0.8), res("full", 0.9), headline="no stage fails")
    b = snap(res("full", 0.9), res("fp32_p", 0.7), headline="first failing stage: softmax")
    assert w.changes(a, b) == ["new case: fp32_p 1,8,512,64: pass, O err/floor 0.7", "case gone: qk_only 1,8,512,64",
                               "verdict: first failing stage: softmax (was: no stage fails)"]


def test_changes_one_compile_error_is_one_line_for_every_case():
    ok = snap(*(res(m, 0.8) for m in ("qk_only", "softmax_only", "pv_only", "uniform_p", "full")))
    log = "{} d64: compilation failed\nk.cu(40): error: identifier \"acc\" is undefined\n   40 |   acc += 1;"
    broken = snap(*(res(m, None, status="compile_error", message=log.format(m))
                    for m in ("qk_only", "softmax_only", "pv_only", "uniform_p", "full")))
    assert w.changes(ok, broken) == ["FAILS now in 5 cases (qk_only 1,8,512,64, softmax_only 1,8,512,64, "
                                     "pv_only 1,8,512,64 +2 more): compile error: k.cu(40): error: "
                                     "identifier \"acc\" is undefined"]
    back = w.changes(broken, ok)
    assert len(back) == 1 and back[0].startswith("passes now in 5 cases")
    assert "5 FAIL -- compile error: k.cu(40)" in w.summary(broken)


def test_changes_a_compile_error_after_a_failure_is_still_one_line():
    before = snap(res("qk_only", 0.8), res("pv_only", 30.0), res("full", 45.0))
    msg = "{} d64: compilation failed\nk.cu(9): error: expected an expression"
    after = snap(*(res(m, None, status="compile_error", message=msg.format(m)) for m in ("qk_only", "pv_only", "full")))
    assert w.changes(before, after) == ["FAILS now in 3 cases (qk_only 1,8,512,64, pv_only 1,8,512,64, "
                                        "full 1,8,512,64): compile error: k.cu(9): error: expected an expression"]
    one = w.changes(snap(res("full", 45.0)), snap(res("full", None, status="fault", message="full: kernel fault: x")))
    assert one == ["still FAILS, differently: full 1,8,512,64: fault: full: kernel fault: x (was: O err/floor 45)"]


def test_a_cupy_compile_log_names_the_kernel_file_so_variants_group():
    logs = [f"{m} d64: compilation failed\n/tmp/tmp{t}/{h * 40}.cubin.cu(726): error: expected an expression"
            for m, t, h in (("qk_only", "hp3_rhc7", "3"), ("full", "uv1crye0", "2"))]
    s = w.snapshot([res(m, None, status="compile_error", message=log) for m, log in zip(("qk_only", "full"), logs)],
                   source="k.cu")
    assert {c.text for c in s.cases.values()} == {"compile error: k.cu(726): error: expected an expression"}
    assert w.changes(snap(res("qk_only", 0.6), res("full", 0.9)), s) == [
        "FAILS now in 2 cases (qk_only 1,8,512,64, full 1,8,512,64): compile error: k.cu(726): error: expected an expression"]


def test_summary_line():
    assert w.summary(snap(res("qk_only", 0.8), res("full", 1.2))) == \
        "2 cases, all pass; worst O err/floor 1.2 (full 1,8,512,64)"
    s = w.summary(snap(res("qk_only", 0.8), res("full", 30.0), headline="first failing stage: the glue"))
    assert s == "2 cases, 1 FAIL; first failing stage: the glue -- full 1,8,512,64: O err/floor 30"


# ------------------------------------------------------------------ the loop
def test_first_run_prints_the_verdict_then_max_cycles_ends(kernel):
    ft = FakeTime()
    script = Script(ft, [[res("qk_only", 0.8), res("full", 0.9)]])
    lines, last = loop([kernel], script, ft, max_cycles=1)
    assert lines == ["watching k.cu (Ctrl-C stops)", "verdict: 2 cases, all pass; worst O err/floor 0.9 (full 1,8,512,64)"]
    assert script.calls == 1 and last.passed


def test_an_edit_that_changes_nothing_prints_no_change(kernel):
    ft = FakeTime()
    same = [res("qk_only", 0.8), res("full", 0.9)]
    script = Script(ft, [same, same], [append(kernel, "// a comment\n")])
    lines, _ = loop([kernel], script, ft, max_cycles=2)
    assert lines[-2:] == ["-- k.cu changed: re-running", "no change (2 cases, all pass)"]
    assert script.calls == 2


def test_rewriting_the_same_text_runs_nothing(kernel):
    ft = FakeTime(limit=30)
    script = Script(ft, [[res("full", 0.9)]])
    text = kernel.read_text()
    ft.at(3.0, edit(kernel, text))                   # an editor's save without edits (same content, new mtime)
    ft.at(6.0, edit(kernel, text + "x"))             # two writes that end where they began
    ft.at(6.1, edit(kernel, text))
    lines, _ = loop([kernel], script, ft)
    assert script.calls == 1 and lines[-1] == "watch stopped"   # KeyboardInterrupt: a clean end


def test_newly_failing_then_passing_stage_is_printed(kernel):
    ft = FakeTime()
    good = [res("qk_only", 0.8), res("softmax_only", 0.7), res("full", 0.9)]
    bad = [res("qk_only", 0.8), res("softmax_only", 55.0), res("full", 80.0)]
    script = Script(ft, [good, bad, good], [append(kernel, "// bug\n"), append(kernel, "// fix\n")])
    lines, _ = loop([kernel], script, ft, max_cycles=3)
    c = cycles_of(lines)
    assert c[1] == ["FAILS now: softmax_only 1,8,512,64: O err/floor 55 (was 0.7)",
                    "FAILS now: full 1,8,512,64: O err/floor 80 (was 0.9)"]
    assert c[2] == ["passes now: softmax_only 1,8,512,64: O err/floor 0.7 (was: O err/floor 55)",
                    "passes now: full 1,8,512,64: O err/floor 0.9 (was: O err/floor 80)"]


def test_err_floor_beyond_noise_printed_within_noise_not(kernel):
    ft = FakeTime()
    script = Script(ft, [[res("full", 0.6)], [res("full", 1.0)], [res("full", 0.4)]],
                    [append(kernel, "// reorder\n"), append(kernel, "// reorder more\n")])
    lines, _ = loop([kernel], script, ft, max_cycles=3)
    c = cycles_of(lines)
    assert c[1] == ["no change (1 case, all pass)"]                        # 0.6 -> 1.0: within noise
    assert c[2] == ["err/floor moved: full 1,8,512,64: O 1 -> 0.4 (/2.5), still passes"]


def test_err_floor_drift_is_judged_against_the_last_verdict(kernel):
    ft = FakeTime()
    script = Script(ft, [[res("full", 0.5)], [res("full", 1.6)]], [append(kernel, "// x\n")])
    lines, _ = loop([kernel], script, ft, max_cycles=2)
    assert cycles_of(lines)[1] == ["err/floor moved: full 1,8,512,64: O 0.5 -> 1.6 (x3.2), still passes"]


def test_a_compile_error_is_one_line_and_the_loop_goes_on(kernel):
    ft = FakeTime()
    good = [res("full", 0.9)]
    err = CompileError("full d64: compilation failed\nk.cu(3): error: expected a \";\"\n    3 | __global__ void f() {}")
    script = Script(ft, [good, err, good, [res("full", 70.0)]],
                    [append(kernel, "oops\n"), edit(kernel, kernel.read_text()), append(kernel, "// bug\n")])
    lines, last = loop([kernel], script, ft, max_cycles=4)
    c = cycles_of(lines)
    assert c[1] == ['error: k.cu(3): error: expected a ";" -- watching for the next save']
    assert c[2] == ["no change (1 case, all pass)"]          # compared with the verdict before the error
    assert c[3] == ["FAILS now: full 1,8,512,64: O err/floor 70 (was 0.9)"]
    assert script.calls == 4 and not last.passed


def test_a_first_run_that_errors_keeps_watching(kernel):
    ft = FakeTime()
    script = Script(ft, [UsageError("kernel spec k.toml: not valid TOML (line 3)"), [res("full", 0.9)]],
                    [append(kernel, "// fixed\n")])
    lines, _ = loop([kernel], script, ft, max_cycles=2)
    c = cycles_of(lines)
    assert c[0] == ["error: kernel spec k.toml: not valid TOML (line 3) -- watching for the next save"]
    assert c[1] == ["verdict (first since the error): 1 case, all pass; worst O err/floor 0.9 (full 1,8,512,64)"]


def test_an_edit_of_an_included_header_reruns(kernel, tmp_path):
    ft = FakeTime()
    header = tmp_path / "sub" / "deep.h"
    script = Script(ft, [[res("full", 0.9)], [res("full", 50.0)]], [append(header, "#define DEEP 2\n")])
    lines, _ = loop(w.watched_files(kernel), script, ft, max_cycles=2)
    assert "-- deep.h changed: re-running" in lines
    assert cycles_of(lines)[1] == ["FAILS now: full 1,8,512,64: O err/floor 50 (was 0.9)"]


def test_a_new_include_is_watched_from_the_next_poll(kernel, tmp_path):
    """files_fn is asked on every poll: an include added by an edit is watched at once."""
    ft = FakeTime(limit=40)
    extra = tmp_path / "extra.cuh"
    extra.write_text("#define E 1\n")
    script = Script(ft, [[res("full", 0.9)]] * 3,
                    [lambda: kernel.write_text('#include "extra.cuh"\n' + kernel.read_text()), append(extra, "// e\n")])
    lines, _ = loop_fn(lambda: w.watched_files(kernel), script, ft, max_cycles=3)
    assert [ln for ln in lines if ln.startswith("--")] == ["-- k.cu, extra.cuh changed: re-running",
                                                           "-- extra.cuh changed: re-running"]


def test_debounce_coalesces_two_quick_writes_into_one_run(kernel):
    ft = FakeTime(limit=20)
    script = Script(ft, [[res("full", 0.9)], [res("full", 0.9)]])
    ft.at(2.0, append(kernel, "// first write\n"))
    ft.at(2.2, append(kernel, "// second write, 0.2 s later: within debounce_s\n"))
    lines, _ = loop([kernel], script, ft, poll_s=0.5, debounce_s=0.3)
    assert script.calls == 2                                   # the first run and one re-run
    assert lines.count("-- k.cu changed: re-running") == 1
    assert "// second write" in kernel.read_text()


def test_writes_further_apart_than_debounce_run_twice(kernel):
    ft = FakeTime(limit=20)
    script = Script(ft, [[res("full", 0.9)]] * 3)
    ft.at(2.0, append(kernel, "// one\n"))
    ft.at(8.0, append(kernel, "// two\n"))
    loop([kernel], script, ft, poll_s=0.5, debounce_s=0.3)
    assert script.calls == 3


def test_a_spec_that_does_not_parse_still_has_its_edits_seen(kernel, tmp_path):
    """While files_fn fails (the spec being edited), the last file list is polled and the error
    counts as a change, so the run that says what is wrong happens."""
    state = {"broken": False}

    def files_fn():
        if state["broken"]:
            raise UsageError("kernel spec k.toml: not valid TOML")
        return [kernel]

    ft = FakeTime(limit=30)
    script = Script(ft, [[res("full", 0.9)], UsageError("kernel spec k.toml: not valid TOML"), [res("full", 0.9)]],
                    [lambda: state.update(broken=True), lambda: state.update(broken=False)])
    lines, _ = loop_fn(files_fn, script, ft)
    assert script.calls == 3
    assert "error: kernel spec k.toml: not valid TOML -- watching for the next save" in lines


def test_keyboard_interrupt_during_a_run_ends_cleanly(kernel):
    ft = FakeTime()
    script = Script(ft, [[res("full", 0.9)], KeyboardInterrupt()], [append(kernel, "// x\n")])
    lines, last = loop([kernel], script, ft)
    assert lines[-1] == "watch stopped" and last.passed


# ------------------------------------------------------------------ run_watch: options and wiring (CPU, fake GPU path)
def test_plan_refuses_bad_options_before_any_gpu_work():
    with pytest.raises(UsageError, match="no option --png"):
        w.plan("diagnose", {"png": "x.png"})
    with pytest.raises(UsageError, match="Python callable"):
        w.plan("run", {"kernel": "tests.naive_spec:attention"})
    with pytest.raises(UsageError, match="--sk needs --shape"):
        w.plan("run", {"sk": 256})
    with pytest.raises(UsageError, match="unknown bug"):
        w.plan("run", {"shape": "mission", "bugs": ("NOPE",)})
    with pytest.raises(UsageError, match="unknown input set"):
        w.plan("diagnose", {"inputs": "zeros"})
    with pytest.raises(UsageError, match="watch runs run or diagnose"):
        w.plan("bench", {})
    with pytest.raises(UsageError, match="--inputs does not apply to --probes"):
        w.plan("diagnose", {"probes": True, "inputs": "large"})


def test_run_watch_run_one_shape_with_a_fake_gpu_path(kernel, monkeypatch):
    """run_watch('run', ...) calls session.run_modes with a fixed seed and no records, watches
    $FLASHCORE_KERNEL and its includes, and prints verdict and changes of the RunResults."""
    from harness.run import session
    monkeypatch.setenv("FLASHCORE_KERNEL", str(kernel))
    calls = []
    outcomes = iter([0.8, 0.8, 30.0])

    def fake_run_modes(modes, shape, causal=False, **kw):
        calls.append((modes, shape.label, causal, kw))
        e = next(outcomes)
        return [run_result(m, [("O", e, e <= 2)], shape=shape) for m in modes]

    monkeypatch.setattr(session, "run_modes", fake_run_modes)
    ft = FakeTime()
    ft.at(2.0, append(kernel, "// no-op\n"))
    ft.at(6.0, lambda: (kernel.parent / "common.cuh").write_text('#include "sub/deep.h"\n#define TILE 32\n'))
    lines = []
    rc = w.run_watch("run", {"debug": "softmax_only,full", "shape": "mission", "seed": 11}, lines.append,
                     max_cycles=3, sleep=ft.sleep, clock=ft.clock)
    assert rc == 1
    assert lines[0] == "run flashcore_fused --debug softmax_only,full --shape mission seed=11"
    assert lines[1] == "watching k.cu, common.cuh, deep.h (Ctrl-C stops)"
    assert lines[2].startswith("verdict: 2 cases, all pass")
    assert lines[4] == "no change (2 cases, all pass)"
    assert lines[5] == "-- common.cuh changed: re-running"
    assert lines[6].startswith("FAILS now: softmax_only 1,8,512,64")
    modes, label, causal, kw = calls[0]
    assert (modes, label, causal) == (["softmax_only", "full"], MISSION, False)
    assert kw["seed"] == 11 and kw["record"] is False and kw["isolate"] is True and kw["show"] is False
    assert {c[3]["seed"] for c in calls} == {11}


def test_run_watch_keeps_one_drawn_seed(monkeypatch, kernel):
    from harness.run import session
    monkeypatch.setenv("FLASHCORE_KERNEL", str(kernel))
    seeds = []
    monkeypatch.setattr(session, "run_modes", lambda modes, shape, **kw: seeds.append(kw["seed"]) or
                        [run_result(m, [("O", 0.5, True)], shape=shape) for m in modes])
    ft = FakeTime()
    ft.at(2.0, append(kernel, "// x\n"))
    assert w.run_watch("run", {"shape": "1,2,128,64"}, lambda s: None, max_cycles=2, sleep=ft.sleep,
                       clock=ft.clock) == 0
    assert len(seeds) == 2 and seeds[0] == seeds[1] and seeds[0] is not None


def test_run_watch_diagnose_headline_with_a_fake_gpu_path(monkeypatch, kernel):
    from harness.run import diagnose as dg
    monkeypatch.setenv("FLASHCORE_KERNEL", str(kernel))
    rounds = iter([{}, {"softmax_only": 40.0, "full": 60.0}])

    def fake_diagnose(shape, causal=False, **kw):
        bad = next(rounds)
        rs = [run_result(m, [("O", bad.get(m, 0.7), m not in bad)], shape=shape) for m in dg.BISECT_MODES]
        return dg.Diagnosis(rs, *reversed(dg.bisect_stages(rs)))

    monkeypatch.setattr(dg, "diagnose", fake_diagnose)
    ft = FakeTime()
    ft.at(2.0, append(kernel, "// bug\n"))
    lines = []
    assert w.run_watch("diagnose", {"shape": "mission", "seed": 3}, lines.append, max_cycles=2,
                       sleep=ft.sleep, clock=ft.clock) == 1
    assert lines[2].startswith("verdict: 5 cases, all pass; no stage fails")
    assert lines[-1] == "verdict: first failing stage: softmax (row max, row sum, P) (was: no stage fails)"


def test_run_watch_coverage_set_runs_every_case(monkeypatch, kernel):
    from harness.run import coverage, session
    monkeypatch.setenv("FLASHCORE_KERNEL", str(kernel))
    shapes = []
    monkeypatch.setattr(session, "run_modes", lambda modes, shape, causal=False, **kw: shapes.append((shape, causal))
                        or [run_result(m, [("O", 0.5, True)], shape=shape, causal=causal) for m in modes])
    lines = []
    w.run_watch("run", {"head_dim": 64}, lines.append, max_cycles=1)
    want = coverage.cases_for(64, False, ["full"])
    assert shapes == [(c.shape, c.causal) for c in want]
    assert lines[2].startswith(f"verdict: {len(want)} cases, all pass")


def test_diagnose_headline_names_a_compile_error_not_the_first_stage():
    assert w._stage_headline([None, None]) == "no stage fails"
    assert w._stage_headline(["softmax"]) == "first failing stage: softmax (row max, row sum, P)"
    assert w._stage_headline(["glue", None, "glue"]) == "first failing stage: the glue (at 2 of 3 shapes)"
    broken = res("qk_only", None, status="compile_error", message="x\nk.cu(1): error: y")
    assert w._stage_of("qk", broken) == w.COMPILE and w._stage_of("qk", res("qk_only", 9.0)) == "qk"
    assert w._stage_headline([w.COMPILE]) == "the kernel does not compile"
