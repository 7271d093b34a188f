"""GPU tests carry @pytest.mark.gpu and skip, with the reason, where no CUDA GPU is present."""

import functools
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.lru_cache(maxsize=1)
def gpu_missing_reason():
    try:
        from harness.toolchain.device import require_gpu
        require_gpu()
        return None
    except Exception as e:
        return str(e).splitlines()[0]


def pytest_collection_modifyitems(config, items):
    reason = None
    for item in items:
        if "gpu" in item.keywords:
            reason = reason or gpu_missing_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"needs a CUDA GPU: {reason}"))


@pytest.fixture(autouse=True)
def _default_registry_kernel(monkeypatch):
    """Every test starts with flashcore_fused in use; a test that sets another is undone."""
    monkeypatch.delenv("FLASHCORE_REGISTRY_KERNEL", raising=False)


@pytest.fixture(autouse=True)
def _no_prebuild_on_fakes(request, monkeypatch):
    """CPU tests fake the GPU: a prebuild there would compile the real coverage set for
    nothing (harness/toolchain/prebuild.py has its own tests). GPU tests prebuild, as users do."""
    if "gpu" not in request.keywords and "prebuild" not in request.keywords:
        monkeypatch.setenv("FLASHCORE_NO_PREBUILD", "1")


@pytest.fixture
def cubin_cache(tmp_path, monkeypatch):
    """An empty cubin cache of this test's own, prebuilding on (harness/toolchain/prebuild.py)."""
    from harness.toolchain import prebuild
    monkeypatch.setenv(prebuild.ENV_DIR, str(tmp_path / "cubins"))
    monkeypatch.delenv(prebuild.ENV_OFF, raising=False)
    return tmp_path / "cubins"


@pytest.fixture
def results_tmp(tmp_path, monkeypatch):
    """Records go to a temporary results/ so tests never touch the real history."""
    monkeypatch.setenv("FLASHCORE_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


@pytest.fixture
def suite_recorder():
    """Records each GPU-suite result to results/ when FLASHCORE_RECORD_SUITE=1 (set by
    scripts/gpu_suite.sh), so the suite's run joins the history."""
    def record(result):
        if os.environ.get("FLASHCORE_RECORD_SUITE") != "1":
            return
        from harness import records
        from harness.run import runs
        from harness.toolchain.device import require_gpu
        rec = runs.run_record(result, require_gpu())
        rec["source"] = "gpu-suite"
        records.append(rec)
    return record


def pytest_sessionfinish(session, exitstatus):
    """With FLASHCORE_RECORD_SUITE=1, one summary record of the GPU suite's outcome."""
    if os.environ.get("FLASHCORE_RECORD_SUITE") != "1" or hasattr(session.config, "workerinput"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    counts = {k: len(v) for k, v in (reporter.stats.items() if reporter else []) if k in ("passed", "failed", "error", "skipped")}
    try:
        from harness.toolchain import compiler
        from harness import records
        from harness.toolchain.device import require_gpu
        device = require_gpu()
    except Exception:
        return
    records.append(records.new_record("suite", device=device["device"], driver=device["driver"], cupy=device["cupy"],
                                      kernel_sha256=compiler.source_hash(), exit_status=int(exitstatus),
                                      counts=counts, failed=[r.nodeid for r in reporter.stats.get("failed", [])]))
