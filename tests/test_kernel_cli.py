"""--kernel on the command line, without a GPU: the outsider kernel compiles as written (NVRTC),
`kernel init` proposes a spec that loads, and every bad input is one line and exit 2 before any
GPU work."""

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli
from kernels import spec as kspec

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "kernels" / "outsider" / "attention.toml"
CU = ROOT / "kernels" / "outsider" / "attention.cu"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_compile_kernel_builds_the_kernel_and_each_flag_as_written():
    r = invoke("compile", "--kernel", SPEC, "--arch", "sm_80")
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    for mode in ("full", "DEBUG_UNIFORM_P", "DEBUG_QK_TILE0"):
        assert f"attention {mode} D=64 sm_80" in flat
    r = invoke("compile", "--kernel", CU, "--list-bugs")          # the .cu finds its spec beside it
    assert r.exit_code == 0 and all(b in r.output for b in ("TAIL_KEYS", "RACE", "OOB_WRITE", "HANG"))


def test_compile_kernel_with_a_seeded_bug_and_a_compile_error(tmp_path):
    r = invoke("compile", "--kernel", SPEC, "--arch", "sm_80", "--debug", "full", "--bug", "OOB_WRITE")
    assert r.exit_code == 0 and "+BUG_OOB_WRITE" in r.output, r.output
    d = tmp_path / "k"
    shutil.copytree(CU.parent, d)
    (d / "attention.cu").write_text(CU.read_text().replace("s *= softmax_scale;", "s *= softmax_scal;"))
    r = invoke("compile", "--kernel", d / "attention.toml", "--arch", "sm_80", "--debug", "full")
    assert r.exit_code == 1 and "softmax_scal" in r.output and "compilation failed" in r.output


@pytest.mark.parametrize("args,says", [
    (["run", "--kernel", "nope.toml"], "kernel spec not found: nope.toml"),
    (["run", "--kernel", "x.cu"], "no spec beside x.cu"),
    (["run", "--kernel", SPEC, "--debug", "DEBUG_NOPE"], "declares no debug flag 'DEBUG_NOPE'"),
    (["run", "--kernel", SPEC, "--bug", "FRAG_SWAP"], "declares no seeded bug 'FRAG_SWAP'"),
    (["run", "--kernel", SPEC, "--shape", "1,1,64,64", "--sk", "32"], "self-attention only"),
    (["run", "--kernel", SPEC, "--shape", "1,1,64,128"], "supports head dim 64, not 128"),
    (["run", "--kernel", SPEC, "--shape", "1,1,64,64", "--causal"], "no causal masking"),
    (["run", "--kernel", SPEC, "--shape", "mission", "--rows", "0"], "--rows is for flashcore_fused"),
    (["diagnose", "--kernel", SPEC, "--sk", "5"], "--sk needs --shape"),
    (["kernel", "init", "nope.cu"], "kernel source not found"),
    (["kernel", "check", "nope.toml"], "kernel spec not found"),
])
def test_bad_kernel_inputs_are_one_line(args, says):
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("flashcore: error:") and says in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_kernel_init_proposes_a_spec_that_loads(tmp_path):
    cu = tmp_path / "attention.cu"
    shutil.copy(CU, cu)
    r = invoke("kernel", "init", cu)
    assert r.exit_code == 0, r.output
    spec = kspec.load(cu.with_suffix(".toml"))
    assert spec.entry.startswith("flash_fwd_kernel") and [a.role for a in spec.buffers if a.role in "qkvo"] == \
        ["q", "k", "v", "o"]
    assert invoke("kernel", "init", cu).exit_code == 2                      # no overwrite without --force
    assert invoke("kernel", "init", cu, "--force").exit_code == 0


def test_kernel_check_without_a_gpu_compiles_and_says_it_did_not_launch():
    from tests.conftest import gpu_missing_reason
    if not gpu_missing_reason():
        pytest.skip("a GPU is here: the launch is tested in test_gpu_asis.py")
    r = invoke("kernel", "check", SPEC)
    assert r.exit_code == 2 and "compiles for sm_80" in r.output and "not launched" in r.output, r.output


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_a_naive_kernel_of_each_dtype_compiles(tmp_path, dtype):
    from tests import naive_spec
    spec = naive_spec.write(tmp_path, dtype)
    assert kspec.load(spec).dtype == dtype
    r = invoke("compile", "--kernel", spec, "--arch", "sm_80", "--bug", "READ_PAST")
    assert r.exit_code == 0, r.output
    assert "D=128" in r.output


@pytest.mark.parametrize("args,says", [
    (["run", "--kernel", "no_such_module:attention", "--shape", "mission"], "importing no_such_module failed"),
    (["run", "--kernel", "harness.run.callable_kernel:nothing", "--shape", "mission"], "has no callable 'nothing'"),
    (["run", "--kernel", "missing.py:attention"], "no file missing.py"),
    (["compile", "--kernel", "harness.run.callable_kernel:sdpa"], "needs the kernel's .cu and a spec"),
    (["sanitize", "--tool", "memcheck", "--kernel", "harness.run.callable_kernel:sdpa"], "needs the kernel's .cu and a spec"),
    (["smoking-gun", "--kernel", "harness.run.callable_kernel:sdpa", "--bug", "X"], "no seeded bugs"),
    (["diagnose", "--kernel", "harness.run.callable_kernel:sdpa", "--bug", "X"], "no seeded bugs"),
    (["diagnose", "--kernel", "harness.run.callable_kernel:sdpa", "--inputs", "large"], "does not apply"),
    (["run", "--kernel", "harness.run.callable_kernel:sdpa", "--debug", "qk_only"], "has no debug flags"),
    (["run", "--kernel", "harness.run.callable_kernel:sdpa", "--bug", "X"], "no seeded bugs"),
])
def test_a_python_callable_kernel_bad_inputs_are_one_line(args, says):
    r = invoke(*args)
    assert r.exit_code == 2 and says in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_history_of_a_callable_kernel_reads_its_records(results_tmp):
    r = invoke("history", "--kernel", "harness.run.callable_kernel:sdpa", "--shape", "any")
    assert r.exit_code == 0 and "harness.run.callable_kernel:sdpa" in r.output and "no records" in r.output


def test_check_gates_a_spec_d_kernel_on_its_resources(results_tmp):
    r = invoke("check", "--kernel", SPEC, "--no-spills")
    assert r.exit_code == 0 and "0 spill bytes" in r.output, r.output
    r = invoke("check", "--kernel", SPEC, "--max-regs", "10")
    assert r.exit_code == 1 and "REGRESSED" in r.output and "limit 10" in r.output
    r = invoke("check", "--kernel", SPEC, "--shape", "1,1,64,64", "--causal", "--no-spills")
    assert r.exit_code == 2 and "no causal" in r.output


def test_compile_sass_kernel_disassembles_the_kernel_as_written():
    from harness.toolchain.sass import disassembler
    if disassembler() is None:
        pytest.skip("no nvdisasm or cuobjdump here")
    r = invoke("compile", "--kernel", SPEC, "--arch", "sm_90", "--debug", "full", "--sass")
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert "nothing in local memory" in flat and "attention full D=64 sm_90" in flat and "no tensor cores" in flat


@pytest.mark.parametrize("args,says", [
    (("bench", "--kernel", SPEC, "--nwarps", "4"), "--nwarps is for flashcore_fused"),
    (("bench", "--kernel", SPEC, "--shape", "1,2,64,128"), "supports head dim 64"),
    (("bench", "--kernel", SPEC, "--shape", "1,2,64,64", "--sk", "128"), "self-attention only"),
    (("bench", "--kernel", "m:f"), "checked by run and diagnose only"),
    (("sanitize", "--tool", "memcheck", "--kernel", SPEC, "--debug", "nope"), "no debug flag 'nope'"),
    (("sanitize", "--tool", "memcheck", "--kernel", SPEC, "--bug", "NOPE"), "declares no seeded bug"),
    (("sanitize", "--tool", "memcheck", "--kernel", SPEC, "--shape", "1,2,64,64", "--sk", "32"), "self-attention only"),
])
def test_bench_and_sanitize_kernel_bad_inputs_are_one_line(args, says):
    r = invoke(*args)
    assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output


def test_bench_suite_kernel_leaves_out_what_the_domain_excludes():
    r = invoke("bench", "--kernel", SPEC, "--suite", "--no-record")
    # no GPU here: the suite is filtered by the declared domain first, then the GPU is asked for
    assert "4x16x2048 d128 left out" in r.output and "mission left out" not in r.output, r.output
