"""The research loop's per-command costs (issue 26), CPU only: each saving keeps what it saves
exact. The source hash is cached only while no file changed; the host references computed on
threads are bit for bit the serial loop's; a draw of inputs handed out again is the same and
read-only; a sweep's compile starts for the last arch seen and is redone for another."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from debug_modes.registry import DATAFLOW_ORDER, get_mode
from harness.check import stages
from harness.check.inputs import make_inputs
from harness.check.shapes import Shape
from harness.toolchain import compiler, prebuild
from harness.toolchain.variant import Variant, tiles_for


# ------------------------------------------------------------------ source hash
@pytest.fixture
def kernel_tree(tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "inc.cuh").write_text("#define X 1\n")
    k = tmp_path / "k.cu"
    k.write_text('#include "common/inc.cuh"\nextern "C" __global__ void f() {}\n')
    return k, tmp_path / "common" / "inc.cuh"


def test_source_hash_follows_an_edit_of_an_include_of_the_same_size(kernel_tree):
    k, inc = kernel_tree
    h0 = compiler.source_hash(k)
    assert compiler.source_hash(k) == h0
    st = inc.stat()
    inc.write_text("#define X 2\n")                       # same size
    os.utime(inc, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))   # a save moves the mtime
    assert compiler.source_hash(k) != h0
    inc.write_text("#define X 1\n")
    os.utime(inc, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000))
    assert compiler.source_hash(k) == h0                  # the content decides, not the stamp


def test_source_hash_reads_nothing_while_nothing_changed(kernel_tree, monkeypatch):
    k, inc = kernel_tree
    compiler.source_hash(k)
    reads = []
    monkeypatch.setattr(compiler, "kernel_sources", lambda p=None: reads.append(p) or {})
    compiler.source_hash(k)
    assert reads == []
    inc.write_text("#define X 10\n")                      # another size: read again
    compiler.source_hash(k)
    assert reads


def test_source_hash_of_a_new_include_line(kernel_tree):
    k, inc = kernel_tree
    h0 = compiler.source_hash(k)
    (inc.parent / "more.cuh").write_text("#define Y 1\n")
    k.write_text('#include "common/inc.cuh"\n#include "common/more.cuh"\nextern "C" __global__ void f() {}\n')
    h1 = compiler.source_hash(k)
    assert h1 != h0
    (inc.parent / "more.cuh").write_text("#define Y 22\n")
    assert compiler.source_hash(k) != h1


# ------------------------------------------------------------------ host references on threads
def _equal(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("mode", DATAFLOW_ORDER)
@pytest.mark.parametrize("causal", [False, True])
def test_host_references_on_threads_are_the_serial_loop_bit_for_bit(mode, causal, monkeypatch):
    if causal and not get_mode(mode).allows_causal:
        pytest.skip(f"{mode} has no causal form")
    shape = Shape(2, 3, 96, 80, 64)
    q, k, v = make_inputs(shape, "randn", 7)
    variant = Variant(mode, shape.D, causal, **tiles_for(shape))
    sk_pad, scale = variant.padded_keys(shape.Sk), shape.D ** -0.5

    def build():
        inj = stages.injected_inputs(mode, q, k, v, causal, scale, sk_pad)
        return inj, stages.stage_references(mode, q, k, v, causal, scale, variant.block_n, inj, sk_pad)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")     # as in the worker: our threads on
    seen = []
    real = stages.each_block

    def watched(body, items, xp):
        seen.append(threading.current_thread().name)
        return real(body, items, xp)
    monkeypatch.setattr(stages, "each_block", watched)
    inj_t, refs_t = build()
    if mode != "uniform_p":
        assert seen and stages._host_pool() is not None or (os.cpu_count() or 1) == 1
    monkeypatch.setattr(stages, "_host_pool", lambda: None)       # the serial loop
    inj_s, refs_s = build()
    assert inj_t.keys() == inj_s.keys() and all(_equal(inj_t[n], inj_s[n]) for n in inj_t)
    assert refs_t.keys() == refs_s.keys()
    for name in refs_t:
        assert _equal(refs_t[name][0], refs_s[name][0]) and _equal(refs_t[name][1], refs_s[name][1]), name


def test_each_block_runs_on_several_threads_and_raises_a_body_s_error(monkeypatch):
    if stages._host_pool() is None:
        pytest.skip("one CPU: no pool")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    names, gate = set(), threading.Barrier(2, timeout=5)

    def body(i):
        names.add(threading.current_thread().name)
        gate.wait()                                  # two bodies at once, or this times out
    stages.each_block(body, range(2), np)
    assert len(names) == 2
    with pytest.raises(ZeroDivisionError):
        stages.each_block(lambda i: 1 / (i - 1), range(3), np)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "8")     # BLAS on its own threads: ours stay off
    names.clear()
    stages.each_block(lambda i: names.add(threading.current_thread().name), range(4), np)
    assert names == {threading.current_thread().name}


# ------------------------------------------------------------------ inputs drawn once per seed
def test_a_draw_handed_out_again_is_the_same_and_each_caller_s_own():
    s = Shape(1, 2, 64, 64, 64)
    a = make_inputs(s, "randn", 3)
    b = make_inputs(s, "randn", 3)
    c = make_inputs(s, "randn", 4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    keep = a[0][0, 0, 0, 0]
    a[0][0, 0, 0, 0] = 7                              # a caller's write reaches no other caller
    assert make_inputs(s, "randn", 3)[0][0, 0, 0, 0] == keep == b[0][0, 0, 0, 0]
    d = make_inputs(s, "randn", 4)                    # after another seed: drawn again, the same values
    assert all(np.array_equal(x, y) for x, y in zip(c, d))


# ------------------------------------------------------------------ the compile starts before the worker says
def test_the_last_arch_is_remembered_beside_the_cubins(cubin_cache):
    assert prebuild.last_arch() is None
    prebuild.remember_arch("sm_90")
    assert prebuild.last_arch() == "sm_90" and (cubin_cache / prebuild.ARCH_FILE).is_file()
    (cubin_cache / prebuild.ARCH_FILE).write_text("garbage\n")
    assert prebuild.last_arch() is None


@pytest.mark.parametrize("real", ["sm_90", "sm_80"])
def test_a_sweep_compiles_for_the_last_arch_while_the_worker_boots(cubin_cache, monkeypatch, real):
    """facts_and_builds: with sm_90 remembered, the builds for sm_90 start before the device
    facts arrive; the worker then says sm_90 (kept) or sm_80 (dropped, built again for sm_80)."""
    from harness.run import session
    prebuild.remember_arch("sm_90")
    built, facts_asked = [], threading.Event()

    def fake_build(v):
        built.append((v.arch, v.mode, facts_asked.is_set()))
    monkeypatch.setattr(prebuild, "_build", fake_build)

    def facts(isolate):
        time.sleep(0.3)         # the worker's boot
        facts_asked.set()
        return {"arch": real, "device": "fake"}
    monkeypatch.setattr(session, "device_facts", facts)
    shape = Shape(1, 1, 64, 64, 64)
    device, builds = session.facts_and_builds([(shape, False)], ["qk_only", "full"], (), True)
    builds.wait(shape, False, "full")
    builds.close()
    assert device["arch"] == real and prebuild.last_arch() == real
    early = [b for b in built if b[0] == "sm_90" and not b[2]]
    assert early, built                                   # compiled before the facts came
    if real == "sm_80":
        assert {m for a, m, _ in built if a == "sm_80"} == {"qk_only", "full"}


def test_run_modes_sends_each_mode_once_its_own_variant_is_built(cubin_cache, monkeypatch):
    """run_modes: the first mode's case goes while a later mode's variant is still compiling."""
    from harness.run import runs, session
    prebuild.remember_arch("sm_90")
    release, log = threading.Event(), []

    def fake_build(v):
        if v.mode == "full":
            release.wait(5)
        log.append(f"built {v.mode}")
    monkeypatch.setattr(prebuild, "_build", fake_build)
    monkeypatch.setattr(session, "device_facts", lambda isolate: {"arch": "sm_90", "device": "fake"})

    def fake_case(case, isolate=False):
        log.append(f"ran {case['mode']}")
        if case["mode"] == "qk_only":
            release.set()
        return runs._failed(case, "ok", "")
    monkeypatch.setattr(runs, "run_case", fake_case)
    session.run_modes(["qk_only", "full"], Shape(1, 1, 64, 64, 64), seed=1, record=False, isolate=False, show=False)
    assert log.index("ran qk_only") < log.index("built full") < log.index("ran full"), log


def test_the_build_thread_finds_nvrtc_imported_by_the_caller(cubin_cache, monkeypatch):
    """prebuild.start imports NVRTC (CuPy) on the caller's thread before its own starts: both
    importing CuPy at once failed with ImportError on the H200 (d897419)."""
    where = []
    monkeypatch.setattr(compiler, "_nvrtc", lambda: where.append(threading.current_thread().name))
    monkeypatch.setattr(prebuild, "_build", lambda v: where.append("build " + threading.current_thread().name))
    b = prebuild.start([Variant("full", 64, arch="sm_90")])
    b.close()
    assert where[0] == threading.current_thread().name and where[1].startswith("build flashcore-prebuild"), where


# ------------------------------------------------------------------ the worker starts before parsing
@pytest.mark.parametrize("argv, starts", [
    ("run --debug all --shape mission", True),
    ("run --debug qk_only,pv_only --shape 1,2,128,64", True),
    ("run --debug pv_only --shape mission", False),          # one mode, one shape: in this process
    ("run --debug pv_only --shape mission --isolate", True),
    ("run --debug=pv_only", True),                            # the coverage set
    ("run --debug all --shape mission --no-isolate", False),
    ("diagnose", True), ("diagnose --help", False), ("modes", False), ("bench --suite", False),
])
def test_the_cli_starts_the_worker_before_it_parses_for_a_command_that_uses_one(argv, starts, monkeypatch):
    import cli
    from harness.run import pool
    from harness.toolchain import device
    started = []
    monkeypatch.setattr(pool, "prestart", lambda n=1: started.append(n))
    monkeypatch.setattr(device, "import_cupy_ahead", lambda: started.append("cupy"))
    monkeypatch.setattr(device, "driver_present", lambda: True)
    cli.early_worker(argv.split())
    assert started == ([1, "cupy"] if starts else []) or (starts and started[-1] == "cupy")
    monkeypatch.setattr(device, "driver_present", lambda: False)   # no driver: never
    started.clear()
    cli.early_worker(argv.split())
    assert started == []


def test_cupy_imported_ahead_is_waited_for_by_every_use(monkeypatch):
    """device.import_cupy_ahead: a thread imports CuPy; device.cupy(), compiler._nvrtc() and
    the include search wait for it, so that no two threads import CuPy at once."""
    from harness.toolchain import device
    gate, order = threading.Event(), []

    class Slow(threading.Thread):
        def run(self):
            gate.wait(5)
            order.append("imported")
    t = Slow(daemon=True)
    monkeypatch.setattr(device, "_IMPORTER", [t])
    t.start()
    threading.Timer(0.2, gate.set).start()
    device.await_cupy_import()
    order.append("used")
    assert order == ["imported", "used"]
