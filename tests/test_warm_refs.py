"""The cold-machine rule of --reference-device auto (harness/run/warm_refs.py): a mid-sized
problem is judged on the host while CuPy's cache lacks the device checks' kernels, and the
first such run starts one background compile of them; no GPU needed (NumPy stands in for CuPy,
a recorder for the detached process)."""

import types

import numpy as np
import pytest

from harness.check.shapes import Shape
from harness.run import gpu, warm_refs

# mid-sized: past AUTO_HOST_WORK (2**27, the mission shape), within COLD_HOST_WORK (2**28)
MID = Shape(1, 8, 512, 512, 128)


def test_auto_takes_the_host_for_mid_sized_problems_only_while_the_device_is_cold():
    cold, warm = (lambda: True), (lambda: False)
    assert gpu.reference_device_of(None, MID, cold) == "cpu"
    assert gpu.reference_device_of(None, MID, warm) == "gpu"
    assert gpu.reference_device_of(None, MID) == "gpu"                          # no rule: warm
    assert gpu.reference_device_of(None, Shape(1, 8, 4096, 4096, 128), cold) == "gpu"   # past COLD_HOST_WORK
    assert gpu.reference_device_of(None, Shape(1, 1, 64, 64, 64), warm) == "cpu"        # small: the host anyway
    assert gpu.reference_device_of("gpu", MID, cold) == "gpu"                   # asked for: kept
    assert gpu.reference_device_of(None, Shape(1, 8, 512, 512, 64), cold) == "cpu"      # the mission shape: the host
    assert gpu.reference_device_of(None, Shape(1, 8, 512, 512, 64), warm) == "cpu"      # warm too


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path / "cupy"))
    monkeypatch.delenv(warm_refs.ENV_OFF, raising=False)
    started = []
    monkeypatch.setattr(warm_refs.subprocess, "Popen", lambda argv, **kw: started.append((argv, kw)))
    return started


def test_start_launches_one_detached_warm_up_and_the_marker_ends_it(cache, monkeypatch):
    assert warm_refs.start("sm_90", MID, False)
    argv, kw = cache[0]
    assert argv[2:] == ["harness.run.warm_refs", "1,8,512,128", "512", "0", "sm_90", argv[-1]]
    assert argv[-1].endswith(".warming") and warm_refs.marker("sm_90").name + ".warming" == argv[-1].rsplit("/", 1)[1]
    assert kw["start_new_session"] and kw["stdout"] is warm_refs.subprocess.DEVNULL
    assert not warm_refs.start("sm_90", MID, False) and len(cache) == 1     # its lock: one at a time
    calls = []
    monkeypatch.setattr(gpu, "warm_device_checks", lambda shape, causal: calls.append((shape, causal)))
    assert warm_refs.main(argv[3:]) == 0
    assert calls == [(MID, False)] and warm_refs.is_warm("sm_90")
    assert not warm_refs.start("sm_90", MID, False) and len(cache) == 1     # warm: nothing to do
    assert not warm_refs.is_warm("sm_80")                                        # per arch


def test_warm_up_can_be_turned_off_and_a_stale_lock_is_taken_over(cache, monkeypatch):
    monkeypatch.setenv(warm_refs.ENV_OFF, "0")
    assert not warm_refs.start("sm_90", MID, True) and cache == []
    monkeypatch.delenv(warm_refs.ENV_OFF)
    lock = warm_refs._beside("sm_90", ".warming")
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    assert not warm_refs.start("sm_90", MID, True)
    import os
    os.utime(lock, (0, 0))                         # a warm-up that died long ago
    assert warm_refs.start("sm_90", MID, True) and len(cache) == 1


def test_a_failed_warm_up_leaves_no_marker_and_frees_its_lock(cache, monkeypatch):
    warm_refs.start("sm_90", MID, False)
    argv = cache[0][0]

    def boom(shape, causal):
        raise RuntimeError("no GPU")
    monkeypatch.setattr(gpu, "warm_device_checks", boom)
    with pytest.raises(RuntimeError):
        warm_refs.main(argv[3:])
    assert not warm_refs.is_warm("sm_90") and not warm_refs._beside("sm_90", ".warming").exists()
    assert "RuntimeError: no GPU" in warm_refs._beside("sm_90", ".failed").read_text()


def test_warm_device_checks_runs_every_mode_s_checks(monkeypatch):
    """The warm-up's path through references, metrics and folds, with NumPy standing in for
    CuPy: every mode and both causal forms run to the end (a broken path would leave the
    device cold for ever, silently)."""
    shim = types.SimpleNamespace(asarray=np.asarray, array=np.array,
                                 cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(deviceSynchronize=lambda: None)))
    monkeypatch.setattr(gpu, "_cupy", lambda: shim)
    judged = []
    real = gpu.judge
    monkeypatch.setattr(gpu, "judge", lambda r, *a, **kw: judged.append(real(r, *a, **kw)))
    for causal in (False, True):
        gpu.warm_device_checks(Shape(1, 2, 200, 300, 64), causal)
    from debug_modes.registry import MODES
    n = len(MODES) + sum(1 for m in MODES.values() if m.allows_causal)
    assert len(judged) == n
    # the failing path, folds included (uniform_p is judged by its row spread and a perturbed
    # first rows may stay inside it: its folds are the one path left to the first failure)
    assert all(not r.passed and r.folds for r in judged if r.variant.mode != "uniform_p")


def test_run_mode_s_rule_starts_the_compile_only_after_a_case_it_sent_to_the_host(cache, monkeypatch):
    from harness.toolchain import device
    monkeypatch.setattr(device, "require_gpu", lambda: {"arch": "sm_90"})
    small = gpu._DeviceChecksCold(Shape(1, 1, 64, 64, 64), False)
    assert gpu.reference_device_of(None, small.shape, small) == "cpu"
    small.start_if_cold()                       # never asked: a small shape starts nothing
    assert cache == []
    cold = gpu._DeviceChecksCold(MID, True)
    assert gpu.reference_device_of(None, MID, cold) == "cpu" and cache == []   # not before judging
    cold.start_if_cold()
    assert len(cache) == 1 and cache[0][0][3:6] == ["1,8,512,128", "512", "1"]
