"""GPU: a throw-away history where a seeded bug switches on at a known commit is bisected to
that commit with --metric max_err."""

import shutil

import pytest
from click.testing import CliRunner

from cli import cli
from harness.toolchain.compiler import KERNEL_FILE
from tests.test_bisect import git

pytestmark = pytest.mark.gpu


def test_bisect_max_err_finds_the_commit_that_switches_a_bug_on(tmp_path, results_tmp, monkeypatch):
    r = tmp_path / "hist"
    (r / "kernels").mkdir(parents=True)
    git(r, "init", "-q")
    git(r, "config", "user.email", "t@t")
    git(r, "config", "user.name", "t")
    src = KERNEL_FILE.read_text()
    shutil.copytree(KERNEL_FILE.parent / "common", r / "kernels" / "common")   # the headers it includes
    shas = {}
    for i in range(6):
        text = src + f"\n// revision {i}\n"
        if i >= 3:                      # commit 3 switches the bug on
            text = "#define BUG_PV_FIRST_TILE\n" + text
        (r / "kernels" / "flashcore_fused.cu").write_text(text)
        git(r, "add", "-A")
        git(r, "commit", "-qm", f"rev {i}" + (" (bug on)" if i == 3 else ""))
        shas[i] = git(r, "rev-parse", "HEAD")
    monkeypatch.chdir(r)
    res = CliRunner().invoke(cli, ["bisect", "--good", shas[0], "--bad", shas[5], "--metric", "max_err",
                                   "--shape", "1,2,256,64"])
    assert res.exit_code == 0, res.output
    assert f"first bad commit: {shas[3][:12]} rev 3 (bug on)" in res.output
