"""flashcore bisect on a throw-away git repository built here: the kernel starts spilling at
a known commit and one commit does not compile (it is skipped, never blamed)."""

import subprocess

import pytest
from click.testing import CliRunner

from cli import cli
from harness import records

OK = 'extern "C" __global__ void flashcore_fwd(float* o) { o[threadIdx.x] = %s; }\n'
# 48 live accumulators under a 32-register cap (launch bounds 1024 x 2): ptxas must spill.
SPILL = r'''
extern "C" __global__ void __launch_bounds__(1024, 2) flashcore_fwd(float* o) {
    float a[48];
#pragma unroll
    for (int i = 0; i < 48; ++i) a[i] = o[i * blockDim.x + threadIdx.x];
#pragma unroll
    for (int k = 0; k < 8; ++k)
#pragma unroll
        for (int i = 0; i < 48; ++i) a[i] = a[i] * a[(i + k + 1) % 48] + 1.0f;
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 48; ++i) s += a[i] * (i + 1);
    o[threadIdx.x] = s;
}
'''
BROKEN = 'extern "C" __global__ void flashcore_fwd(float* o) { o[threadIdx.x] = not_declared; }\n'


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "kernelrepo"
    (r / "kernels").mkdir(parents=True)
    git(r, "init", "-q")
    git(r, "config", "user.email", "t@t")
    git(r, "config", "user.name", "t")
    shas = {}
    for name, src in [("c0", OK % "1.0f"), ("c1 broken", BROKEN), ("c2", OK % "2.0f"), ("c3 spills", SPILL),
                      ("c4", SPILL.replace("+ 1.0f", "+ 2.0f")), ("c5", SPILL.replace("+ 1.0f", "+ 3.0f"))]:
        (r / "kernels" / "flashcore_fused.cu").write_text(src)
        git(r, "add", "-A")
        git(r, "commit", "-qm", name)
        shas[name] = git(r, "rev-parse", "HEAD")
    (r / "uncommitted.txt").write_text("the user's work")
    return r, shas


def test_bisect_spills_names_the_known_commit_and_skips_the_broken_one(repo, results_tmp, monkeypatch):
    r, shas = repo
    monkeypatch.chdir(r)
    res = CliRunner().invoke(cli, ["bisect", "--good", shas["c0"], "--bad", shas["c5"], "--metric", "spills"])
    assert res.exit_code == 0, res.output
    assert f"first bad commit: {shas['c3 spills'][:12]} c3 spills" in res.output
    steps = [x for x in records.read().records if x.get("kind") == "bisect_step"]
    assert steps, "every step is recorded"
    for s in steps:
        if s.git_commit == shas["c1 broken"]:
            assert s.verdict == "skip"
        if s.git_commit == shas["c3 spills"]:
            assert s.verdict == "bad" and s.value > 0
    # the user's checkout is untouched and the worktree is gone
    assert (r / "uncommitted.txt").read_text() == "the user's work"
    assert git(r, "rev-parse", "HEAD") == shas["c5"]
    assert len(git(r, "worktree", "list").splitlines()) == 1


def test_bisect_bad_inputs(repo, results_tmp, monkeypatch):
    r, shas = repo
    monkeypatch.chdir(r)
    res = CliRunner().invoke(cli, ["bisect", "--good", "nope", "--bad", shas["c5"], "--metric", "spills"])
    assert res.exit_code == 2 and res.output.startswith("flashcore: error: git rev-parse")
    res = CliRunner().invoke(cli, ["bisect", "--good", shas["c0"], "--bad", shas["c5"], "--metric", "cycles"])
    assert res.exit_code == 2 and "valid: max_err, spills, regs, smem" in res.output
