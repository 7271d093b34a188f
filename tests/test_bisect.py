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


def new_repo(r):
    """An empty git repository with kernels/ and a committer."""
    (r / "kernels").mkdir(parents=True)
    git(r, "init", "-q")
    git(r, "config", "user.email", "t@t")
    git(r, "config", "user.name", "t")
    return r


@pytest.fixture
def repo(tmp_path):
    r = new_repo(tmp_path / "kernelrepo")
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


def test_bisect_measures_the_bad_end_and_names_no_culprit_when_it_passes(repo, results_tmp, monkeypatch):
    """git bisect run trusts --bad: at c2 nothing spills, so there is no regression to find."""
    r, shas = repo
    monkeypatch.chdir(r)
    res = CliRunner().invoke(cli, ["bisect", "--good", shas["c0"], "--bad", shas["c2"], "--metric", "spills"])
    assert res.exit_code == 1, res.output
    assert "no regression: BAD passes (spills 0, threshold the pass rule)" in res.output
    assert "first bad commit" not in res.output
    steps = [x for x in records.read().records if x.get("kind") == "bisect_step"]
    assert [s.git_commit for s in steps] == [shas["c0"], shas["c2"]] and {s.verdict for s in steps} == {"good"}


def test_bisect_regs_over_a_threshold_nothing_exceeds_is_no_regression(repo, results_tmp, monkeypatch):
    r, shas = repo
    monkeypatch.chdir(r)
    res = CliRunner().invoke(cli, ["bisect", "--good", shas["c0"], "--bad", shas["c5"], "--metric", "regs",
                                   "--threshold", "1000"])
    assert res.exit_code == 1 and "no regression: BAD passes (regs" in res.output and "first bad" not in res.output


def test_bisect_stops_when_good_fails(repo, results_tmp, monkeypatch):
    r, shas = repo
    monkeypatch.chdir(r)
    res = CliRunner().invoke(cli, ["bisect", "--good", shas["c3 spills"], "--bad", shas["c5"], "--metric", "spills"])
    assert res.exit_code == 1 and "GOOD fails the criterion (spills" in res.output and "first bad" not in res.output


def test_bisect_an_end_that_does_not_compile_is_an_error(repo, results_tmp, monkeypatch):
    r, shas = repo
    monkeypatch.chdir(r)
    res = CliRunner().invoke(cli, ["bisect", "--good", shas["c1 broken"], "--bad", shas["c5"], "--metric", "spills"])
    assert res.exit_code == 2 and "--good" in res.output and "cannot be measured" in res.output


def test_a_culprit_is_reported_only_when_it_and_its_parent_were_measured(repo):
    from harness.track.bisect import _verified
    r, shas = repo
    c3, c2 = shas["c3 spills"], shas["c2"]
    step = lambda c, v: records.Record({"git_commit": c, "verdict": v})
    assert _verified(r, c3, [step(c2, "good"), step(c3, "bad")], {}, "").outcome == "found"
    res = _verified(r, c3, [step(c2, "good")], {}, "")
    assert res.outcome == "unverified" and res.first_bad is None and "never measured" in res.message
    res = _verified(r, c3, [step(c3, "bad")], {}, "")
    assert res.outcome == "unverified" and "parent" in res.message


SPEC = """
[kernel]
source = "k.cu"
entry = "flashcore_fwd"
[launch]
grid = [1]
block = [32]
[[args]]
name = "o"
role = "o"
[[args]]
name = "q"
role = "q"
[[args]]
name = "k"
role = "k"
[[args]]
name = "v"
role = "v"
"""


def test_bisect_a_spec_d_kernel_reads_its_spec_at_every_commit(tmp_path, results_tmp, monkeypatch):
    """--kernel SPEC: the same spec path in the worktree at each commit; the kernel starts
    spilling at c3, and c1 has no spec (skipped, never blamed)."""
    r = new_repo(tmp_path / "userrepo")
    shas = {}
    for name, src, with_spec in [("c0", OK % "1.0f", True), ("c1 no spec", OK % "2.0f", False), ("c2", OK % "3.0f", True),
                                 ("c3 spills", SPILL, True), ("c4", SPILL.replace("+ 1.0f", "+ 2.0f"), True)]:
        (r / "kernels" / "k.cu").write_text(src)
        spec = r / "kernels" / "k.toml"
        if with_spec:
            spec.write_text(SPEC)
        elif spec.exists():
            spec.unlink()
        git(r, "add", "-A")
        git(r, "commit", "-qm", name)
        shas[name] = git(r, "rev-parse", "HEAD")
    monkeypatch.chdir(r)
    res = CliRunner().invoke(cli, ["bisect", "--kernel", "kernels/k.toml", "--good", shas["c0"], "--bad", shas["c4"],
                                   "--metric", "spills", "--shape", "1,1,64,64"])
    assert res.exit_code == 0, res.output
    assert f"first bad commit: {shas['c3 spills'][:12]} c3 spills" in res.output
    steps = [x for x in records.read().records if x.get("kind") == "bisect_step"]
    assert all(s.get("kernel") == "k" for s in steps if s.verdict != "skip")
    res = CliRunner().invoke(cli, ["bisect", "--kernel", "kernels/k.toml", "--good", shas["c0"], "--bad", shas["c4"],
                                   "--metric", "regs", "--threshold", "1000", "--shape", "1,1,64,64"])
    assert res.exit_code == 1 and "no regression: BAD passes" in res.output
