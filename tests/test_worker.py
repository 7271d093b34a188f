"""The harness's worker process on CPU: one worker serves many cases; a case that faults,
crashes the worker, hangs past its timeout or raises is reported for that case (status fault)
and the next case still runs, in a fresh worker; results of any size come back intact; a
changed environment gets a fresh worker; the one-shot entry point still works; without a GPU
the worker's device error is the parent's one-line error. The failures are the worker's
test hooks (harness/run/worker.py), which never touch the GPU."""

import json
import os
import pickle
import time
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.errors import FlashCoreError, NoGPUError
from harness.run import pool, runs
from tests.conftest import gpu_missing_reason

SHAPE = dict(B=1, H=2, Sq=16, Sk=16, D=64)
HANG_TIMEOUT_S = 8   # a case's limit; the "ok" cases must finish well inside it on a loaded 2-core CI machine


def case(hook, **kw):
    return dict(mode="full", shape=SHAPE, test_hook=hook, **kw)


def pid_of(r) -> int:
    assert r.message.startswith("pid "), r.message
    return int(r.message.split()[1])


@pytest.fixture(autouse=True)
def fresh_worker():
    pool.retire(graceful=False)
    yield
    pool.retire(graceful=False)


def test_one_worker_serves_many_cases():
    rs = [runs.run_case(case("ok")) for _ in range(4)]
    assert [r.status for r in rs] == ["ok"] * 4
    assert len({pid_of(r) for r in rs}) == 1


@pytest.mark.parametrize("hook,needle", [
    ("crash", "worker killed by SIGSEGV"),
    ("raise", "RuntimeError: raised by test hook"),
    ("fault", "pid "),
])
def test_a_failed_case_is_reported_and_the_next_runs_in_a_fresh_worker(hook, needle):
    first = runs.run_case(case("ok"))
    bad = runs.run_case(case(hook))
    after = runs.run_case(case("ok"))
    assert bad.status == "fault" and needle in bad.message and "\n" not in bad.message
    assert after.status == "ok" and pid_of(after) != pid_of(first)


def test_a_hang_is_reported_after_its_timeout_and_the_sweep_goes_on():
    first = runs.run_case(case("ok"))
    hung = runs.run_case(case("hang"), timeout=HANG_TIMEOUT_S)
    assert hung.status == "fault" and f"timed out after {HANG_TIMEOUT_S} s (hang?)" in hung.message
    assert runs.run_case(case("ok")).status == "ok"
    assert pid_of(runs.run_case(case("ok"))) != pid_of(first)


def test_a_sweep_with_failures_reports_each_case():
    sweep = ["ok", "crash", "ok", "hang", "fault", "raise", "ok"]
    got = [runs.run_case(case(h), timeout=HANG_TIMEOUT_S).status for h in sweep]
    assert got == ["ok", "fault", "ok", "fault", "fault", "fault", "ok"]


def test_cases_run_at_once_in_several_workers():
    seconds, jobs = 2.0, 3
    pool.prestart(jobs)
    for w in pool._WORKERS[:jobs]:   # booted: the time below is the cases'
        w.ready()
    t0 = time.monotonic()
    rs = runs.run_cases([case("sleep", seconds=seconds)] * jobs, jobs=jobs)
    elapsed = time.monotonic() - t0
    assert [r.status for r in rs] == ["ok"] * jobs
    assert len({pid_of(r) for r in rs}) == jobs
    assert elapsed < 2 * seconds, elapsed      # one after the other would take jobs * seconds


def test_a_parallel_sweep_reports_each_case_in_order():
    sweep = ["ok", "hang", "crash", "ok", "fault", "raise", "ok", "ok"]
    rs = runs.run_cases([case(h) for h in sweep], timeout=HANG_TIMEOUT_S, jobs=3)
    assert [r.status for r in rs] == ["ok", "fault", "fault", "ok", "fault", "fault", "ok", "ok"]
    assert "timed out" in rs[1].message and "SIGSEGV" in rs[2].message and "raised by test hook" in rs[5].message
    assert all(r.variant.mode == "full" for r in rs)


def test_a_worker_s_blas_runs_on_one_thread(monkeypatch):
    for var in pool.BLAS_THREADS:
        monkeypatch.delenv(var, raising=False)
    rs = runs.run_cases([case("env", var="OPENBLAS_NUM_THREADS")] * 2, jobs=2)
    assert {r.message for r in rs} == {str(pool.WORKER_BLAS_THREADS)} == {"1"}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")   # the user's choice stands
    assert {r.message for r in runs.run_cases([case("env", var="OMP_NUM_THREADS")] * 2, jobs=2)} == {"3"}


def test_default_jobs(monkeypatch):
    monkeypatch.delenv("FLASHCORE_JOBS", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert pool.default_jobs() == 1   # one worker unless asked
    monkeypatch.setenv("FLASHCORE_JOBS", "4")
    assert pool.default_jobs() == 4
    monkeypatch.setenv("FLASHCORE_JOBS", "many")
    with pytest.raises(FlashCoreError, match="FLASHCORE_JOBS"):
        pool.default_jobs()


def test_a_large_result_comes_back_intact():
    nbytes = 48 << 20
    r = runs.run_case(case("big", nbytes=nbytes))
    assert r.status == "ok" and r.outputs["O"].nbytes == nbytes
    assert np.array_equal(r.outputs["O"][-3:], np.arange(nbytes // 4 - 3, nbytes // 4, dtype=np.float32))


def test_a_changed_environment_gets_a_fresh_worker(monkeypatch):
    monkeypatch.setenv("FLASHCORE_TEST_VAR", "one")
    assert runs.run_case(case("env", var="FLASHCORE_TEST_VAR")).message == "one"
    monkeypatch.setenv("FLASHCORE_TEST_VAR", "two")
    assert runs.run_case(case("env", var="FLASHCORE_TEST_VAR")).message == "two"


def test_case_settings_travel_with_the_case_and_keep_the_worker(monkeypatch):
    """pool.CASE_ENV (--kernel NAME, --reference-device, --rows) is what a command sets after
    cli.py started its worker: the worker takes each case's settings, set or unset, and stays."""
    monkeypatch.delenv("FLASHCORE_ROWS", raising=False)
    pid0 = pid_of(runs.run_case(case("ok")))
    monkeypatch.setenv("FLASHCORE_ROWS", "0,5")
    assert runs.run_case(case("env", var="FLASHCORE_ROWS")).message == "0,5"
    monkeypatch.delenv("FLASHCORE_ROWS")
    assert runs.run_case(case("env", var="FLASHCORE_ROWS")).message == ""
    assert pid_of(runs.run_case(case("ok"))) == pid0          # one worker throughout


def test_worker_runs_this_checkout(tmp_path, monkeypatch):
    """The worker imports the harness the parent runs, even from a directory that holds
    another `harness` package."""
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "__init__.py").write_text("raise ImportError('the decoy harness')\n")
    monkeypatch.chdir(tmp_path)
    r = runs.run_case(case("where"))
    assert r.status == "ok", r.message
    assert r.message == str(Path(pool.ROOT) / "harness" / "__init__.py")


def test_one_shot_entry_point(tmp_path):
    out = tmp_path / "r.pkl"
    p = subprocess.run([sys.executable, "-m", "harness.run.worker", json.dumps(case("ok")), str(out)],
                       cwd=pool.ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    with open(out, "rb") as f:
        assert pickle.load(f).status == "ok"


@pytest.mark.skipif(gpu_missing_reason() is None, reason="a GPU is present")
def test_device_facts_without_gpu_is_the_workers_one_line_error():
    with pytest.raises(NoGPUError) as e:
        pool.device_facts()
    assert "no" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(gpu_missing_reason() is None, reason="a GPU is present")
def test_run_all_without_gpu_is_one_line_exit_2():
    from click.testing import CliRunner
    from cli import cli
    r = CliRunner().invoke(cli, ["run", "--debug", "all", "--no-record"])
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("flashcore: error: no"), r.output


# ------------------------------------------------------------------ scripts/time_harness.py
def _time_harness():
    from tests.scripts import load_script
    return load_script("time_harness")


def test_time_harness_commands_and_shapes_as_data():
    th = _time_harness()
    assert th.argv_for("run-all", "mission", False, ["fc"]) == ["fc", "run", "--debug", "all", "--shape", "mission", "--no-record"]
    assert th.argv_for("diagnose", "1,8,512,128", True, ["fc"]) == ["fc", "diagnose", "--shape", "1,8,512,128"]
    assert th.argv_for("run-all-1job", "mission", False, ["fc"])[-1] == "--no-record"
    assert th.COMMANDS["run-all-1job"][1] == {"FLASHCORE_JOBS": "1"}
    assert th.expand_shapes(["mission", "1,8,{S},128"], [256, 1024]) == ["mission", "1,8,256,128", "1,8,1024,128"]


def test_time_harness_times_a_command_and_writes_markdown(tmp_path, capsys):
    th = _time_harness()
    md = tmp_path / "t.md"
    assert th.main(["--command", "startup", "--warm", "2", "--markdown", str(md)]) == 0
    lines = [l for l in md.read_text().splitlines() if l.startswith("|")]
    assert lines[0] == "| " + " | ".join(th.HEADERS) + " |" and len(lines) == 3
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[0] == "startup" and cells[-1] == "0" and float(cells[2]) > 0 and float(cells[3]) > 0
    assert "startup" in capsys.readouterr().out


@pytest.mark.gpu
def test_a_real_kernel_fault_is_reported_and_the_next_mode_runs():
    """On the GPU: real modes around a real kernel fault (a store through a null pointer, which
    poisons the CUDA context): the fault is that case's result, the modes after it pass in a
    fresh worker."""
    real = dict(shape=dict(B=1, H=8, Sq=512, Sk=512, D=64), inputs="randn", seed=1)
    before = runs.run_case(dict(real, mode="qk_only"))
    fault = runs.run_case(case("gpu_fault"))
    after = [runs.run_case(dict(real, mode=m)) for m in ("pv_only", "full")]
    assert before.passed, before.message
    assert fault.status == "fault" and ("illegal" in fault.message.lower() or "error" in fault.message.lower()), fault.message
    assert all(r.passed for r in after), [r.message for r in after]


@pytest.mark.skipif(gpu_missing_reason() is None, reason="a GPU is present")
def test_session_sweep_goes_on_and_records_every_mode(monkeypatch, results_tmp):
    """run_modes through the workers on a machine without a GPU: told device facts, every
    mode's case fails in its worker (NoGPUError there), each is reported and recorded, in
    data-flow order."""
    from debug_modes.registry import DATAFLOW_ORDER
    from harness import records
    from harness.check.shapes import Shape
    from harness.run import session
    monkeypatch.setattr(pool, "device_facts", lambda: {"device": "fake GPU", "driver": 0, "cupy": "0"})
    rs = session.run_modes(list(reversed(DATAFLOW_ORDER)), Shape(1, 2, 64, 64, 64), seed=1, show=False)
    assert [r.variant.mode for r in rs] == list(DATAFLOW_ORDER)
    assert all(r.status == "fault" and "NoGPUError" in r.message for r in rs), [r.message for r in rs]
    recs = records.read().records
    assert [r.get("mode") for r in recs] == list(DATAFLOW_ORDER) and all(r.get("status") == "fault" for r in recs)


def test_time_harness_judges_each_target_on_its_own_kind_of_run():
    """Issue 26's targets: cold for the first run on a fresh machine, edit for the run after an
    edit; a run that was not made is "not run", never "met"."""
    th = _time_harness()
    t = th.Timing("diagnose-coverage", "-", [], 3.66, warm_s=[2.6, 2.8], codes=[0], edit_s=[4.5, 6.5])
    assert th.target_cell(t) == "cold <= 15 s met; edit <= 5 s MISSED"      # the edit median is 5.5
    t = th.Timing("diagnose-coverage", "-", [], float("nan"), warm_s=[2.6], codes=[0])
    assert th.target_cell(t) == "cold <= 15 s not run; edit <= 5 s not run"
    t = th.Timing("run-all", "mission", [], 4.3, warm_s=[3.3], codes=[0, 2], edit_s=[1.5])
    assert th.target_cell(t) == "edit <= 2 s runs failed"
    assert th.target_cell(th.Timing("startup", "-", [], 1.0)) == "-"
