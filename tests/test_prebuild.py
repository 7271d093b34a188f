"""Compile ahead: the variants a sweep launches become cubins on disk, built in parallel by
the parent, once per source hash and flag set; an edit rebuilds exactly the changed ones."""

import shutil

import pytest

from harness.toolchain import compiler, prebuild
from harness.toolchain.variant import Variant

pytestmark = pytest.mark.prebuild


def test_prebuild_builds_once_and_then_finds_the_cubins(cubin_cache):
    vs = [Variant("full", 64, arch="sm_90"), Variant("pv_only", 64, arch="sm_90"), Variant("full", 64, arch="sm_90")]
    first = prebuild.prebuild(vs)
    assert (first.built, first.cached, first.failed) == (2, 0, [])
    for v in vs:
        p = prebuild.cached_cubin(v)
        assert p is not None and p.read_bytes()[:4] == b"\x7fELF"
    again = prebuild.prebuild(vs)
    assert (again.built, again.cached) == (0, 2)


def test_an_edit_rebuilds_only_what_it_changed(cubin_cache, tmp_path, monkeypatch):
    v = Variant("full", 64, arch="sm_90")
    prebuild.prebuild([v])
    shutil.copytree(compiler.KERNEL_FILE.parent / "common", tmp_path / "common")   # the headers it includes
    edited = tmp_path / "flashcore_fused.cu"
    edited.write_text(compiler.KERNEL_FILE.read_text() + "\n// an edit\n")
    monkeypatch.setenv("FLASHCORE_KERNEL", str(edited))
    assert prebuild.cached_cubin(v) is None            # the source hash is in the key
    r = prebuild.prebuild([v])
    assert (r.built, r.cached) == (1, 0)


def test_a_compile_error_is_left_to_the_launch(cubin_cache, tmp_path, monkeypatch):
    shutil.copytree(compiler.KERNEL_FILE.parent / "common", tmp_path / "common")
    broken = tmp_path / "flashcore_fused.cu"
    broken.write_text(compiler.KERNEL_FILE.read_text().replace("const int warp =", "const int warp = nope +", 1))
    monkeypatch.setenv("FLASHCORE_KERNEL", str(broken))
    r = prebuild.prebuild([Variant("full", 64, arch="sm_90")])
    assert r.built == 0 and len(r.failed) == 1 and "nope" in r.failed[0]


def test_prebuilding_can_be_switched_off(cubin_cache, monkeypatch):
    monkeypatch.setenv(prebuild.ENV_OFF, "1")
    r = prebuild.prebuild([Variant("full", 64, arch="sm_90")])
    assert r.built == 0 and not cubin_cache.exists()


def test_background_prebuild_lets_the_first_case_go_while_later_cases_compile(cubin_cache, monkeypatch):
    """prebuild.start: variants build in the order given, wait() returns once the ones asked for
    are built, close() reports them all; a compile error is reported, not raised. Stand-in
    builds (no NVRTC): the point is the order and the waiting."""
    import threading
    import time
    order, release = [], threading.Event()

    def fake_build(v):
        if v.head_dim == 128:           # the later case's variants: held back until released
            release.wait(5)
        if v.mode == "qk_only" and v.head_dim == 128:
            raise compiler.CompileError("qk_only D=128: compilation failed")
        order.append(v.label)
    monkeypatch.setattr(prebuild, "_build", fake_build)
    first = [Variant(m, 64, arch="sm_90") for m in ("qk_only", "full")]
    later = [Variant(m, 128, arch="sm_90") for m in ("qk_only", "full")]
    b = prebuild.start(first + later, jobs=2)
    t0 = time.monotonic()
    b.wait(first)                           # returns while the D=128 builds are still held
    assert time.monotonic() - t0 < 4 and set(order) == {v.label for v in first}
    release.set()
    b.wait(later)                           # a failed build is waited for like the others
    done = b.close()
    assert (done.built, done.cached) == (3, 0) and len(done.failed) == 1 and "qk_only D=128" in done.failed[0]


def test_background_prebuild_switched_off_waits_for_nothing(cubin_cache, monkeypatch):
    monkeypatch.setenv(prebuild.ENV_OFF, "1")
    b = prebuild.start([Variant("full", 64, arch="sm_90")])
    b.wait([Variant("full", 64, arch="sm_90")])
    assert b.close().built == 0


def test_sweeps_wait_for_each_case_s_own_variants(monkeypatch):
    """session.prebuild_for(background=True): the variants listed per (shape, causal), in case
    order, and wait(shape, causal) asks the build for exactly that case's."""
    from harness.check.shapes import Shape
    from harness.run import session
    started, waited = [], []

    class FakeBuilding:
        def wait(self, vs):
            waited.append([v.label for v in vs])

        def close(self):
            pass
    monkeypatch.setattr(prebuild, "enabled", lambda: True)
    monkeypatch.setattr(prebuild, "start", lambda vs: started.append([v.label for v in vs]) or FakeBuilding())
    a, b = Shape(1, 1, 64, 64, 64), Shape(1, 1, 64, 64, 128)
    builds = session.prebuild_for([(a, False), (b, True)], ["qk_only", "uniform_p", "full"], (), {"arch": "sm_90"},
                                  background=True)
    builds.wait(b, True)
    assert len(started) == 1 and len(started[0]) == 6 and all("D=64" in x for x in started[0][:3])
    assert waited == [started[0][3:]] and all("D=128" in x for x in waited[0])
    # uniform_p has no causal form: in a sweep of several modes it runs non-causal
    assert ["causal" in x for x in waited[0]] == [True, False, True]
