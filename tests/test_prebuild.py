"""Compile ahead: the variants a sweep launches become cubins on disk, built in parallel by
the parent, once per source hash and flag set; an edit rebuilds exactly the changed ones."""

import shutil

import pytest

from harness.toolchain import compiler, prebuild
from harness.toolchain.variant import Variant

pytestmark = pytest.mark.prebuild


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(prebuild.ENV_DIR, str(tmp_path / "cubins"))
    monkeypatch.delenv(prebuild.ENV_OFF, raising=False)
    return tmp_path / "cubins"


def test_prebuild_builds_once_and_then_finds_the_cubins(cache):
    vs = [Variant("full", 64, arch="sm_90"), Variant("pv_only", 64, arch="sm_90"), Variant("full", 64, arch="sm_90")]
    first = prebuild.prebuild(vs)
    assert (first.built, first.cached, first.failed) == (2, 0, [])
    for v in vs:
        p = prebuild.cached_cubin(v)
        assert p is not None and p.read_bytes()[:4] == b"\x7fELF"
    again = prebuild.prebuild(vs)
    assert (again.built, again.cached) == (0, 2)


def test_an_edit_rebuilds_only_what_it_changed(cache, tmp_path, monkeypatch):
    v = Variant("full", 64, arch="sm_90")
    prebuild.prebuild([v])
    shutil.copytree(compiler.KERNEL_FILE.parent / "common", tmp_path / "common")   # the headers it includes
    edited = tmp_path / "flashcore_fused.cu"
    edited.write_text(compiler.KERNEL_FILE.read_text() + "\n// an edit\n")
    monkeypatch.setenv("FLASHCORE_KERNEL", str(edited))
    assert prebuild.cached_cubin(v) is None            # the source hash is in the key
    r = prebuild.prebuild([v])
    assert (r.built, r.cached) == (1, 0)


def test_a_compile_error_is_left_to_the_launch(cache, tmp_path, monkeypatch):
    shutil.copytree(compiler.KERNEL_FILE.parent / "common", tmp_path / "common")
    broken = tmp_path / "flashcore_fused.cu"
    broken.write_text(compiler.KERNEL_FILE.read_text().replace("const int warp =", "const int warp = nope +", 1))
    monkeypatch.setenv("FLASHCORE_KERNEL", str(broken))
    r = prebuild.prebuild([Variant("full", 64, arch="sm_90")])
    assert r.built == 0 and len(r.failed) == 1 and "nope" in r.failed[0]


def test_prebuilding_can_be_switched_off(cache, monkeypatch):
    monkeypatch.setenv(prebuild.ENV_OFF, "1")
    r = prebuild.prebuild([Variant("full", 64, arch="sm_90")])
    assert r.built == 0 and not cache.exists()
