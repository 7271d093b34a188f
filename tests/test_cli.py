"""The CLI through click's test runner: help, tables, and one-line errors with exit 2."""

import pytest
from click.testing import CliRunner

from cli import cli
from tests.conftest import gpu_missing_reason

COMMANDS = ["modes", "compile", "run", "diagnose", "smoking-gun", "sanitize", "bench", "history", "compare", "check", "bisect", "watch"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("cmd", [[]] + [[c] for c in COMMANDS])
def test_help(cmd):
    r = invoke(*cmd, "--help")
    assert r.exit_code == 0 and "Usage:" in r.output


def test_modes_table_lists_every_mode():
    r = invoke("modes")
    assert r.exit_code == 0
    for m in ("qk_only", "softmax_only", "pv_only", "uniform_p", "full", "fp32_p"):
        assert m in r.output


def test_compile_one_mode_reports_resources():
    r = invoke("compile", "--debug", "qk_only", "--arch", "sm_90", "--head-dim", "64", "--no-causal")
    assert r.exit_code == 0, r.output
    assert "qk_only D=64 sm_90" in r.output and "ok (0 spills)" in r.output


def test_compile_lists_bugs():
    r = invoke("compile", "--list-bugs")
    assert r.exit_code == 0 and "KT_LAYOUT" in r.output and "NO_BARRIER" in r.output


@pytest.mark.parametrize("args,needle", [
    (["run", "--debug", "nope"], "valid modes: qk_only, softmax_only, pv_only, uniform_p, full, fp32_p"),
    (["run", "--head-dim", "96"], "unsupported head dim 96"),
    (["run", "--shape", "0,8,512,64"], "B must be a positive integer"),
    (["run", "--shape", "1,8,-5,64"], "Sq must be a positive integer"),
    (["run", "--shape", "mission", "--sk", "0"], "Sk must be a positive integer"),
    (["run", "--shape", "1,8,x,64"], "must be integers"),
    (["run", "--inputs", "zeros"], "unknown input set"),
    (["run", "--bug", "NOPE"], "valid bugs"),
    (["compile", "--arch", "sm_70"], "unknown arch"),
    (["compile", "--debug", "nope"], "valid modes"),
    (["compile", "--head-dim", "32"], "unsupported head dim"),
    (["run", "--seed", "x"], "not a valid integer"),
    (["run", "--debug", "uniform_p", "--causal"], "no causal form"),
])
def test_bad_input_one_line_exit_2(args, needle):
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("flashcore: error:"), r.output
    assert needle in lines[0]


@pytest.mark.skipif(gpu_missing_reason() is None, reason="a GPU is present")
def test_run_without_gpu_is_one_line_exit_2():
    r = invoke("run", "--debug", "pv_only")
    assert r.exit_code == 2
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]


def test_options_that_cannot_be_honoured_are_one_line_before_any_work():
    from click.testing import CliRunner
    from cli import cli
    for args in (["diagnose", "--shape", "mission", "--png", "/nonexistent/dir/h.png"],
                 ["diagnose", "--shape", "mission", "--png", "h.txt"],
                 ["run", "--shape", "mission", "--scale", "nan"]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and r.output.startswith("flashcore: error:") and len(r.output.strip().splitlines()) == 1, (args, r.output)


def test_no_gpu_error_names_the_missing_driver_not_an_upgrade():
    """Where there is no NVIDIA driver at all, the runtime says "insufficient driver"; the one
    line must not send a user without a GPU to upgrade one."""
    import ctypes
    from tests.conftest import gpu_missing_reason
    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("a driver is here")
    except OSError:
        pass
    reason = gpu_missing_reason()
    assert reason and "no NVIDIA driver" in reason and "insufficient" not in reason, reason
