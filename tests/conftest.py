"""GPU tests carry @pytest.mark.gpu and skip, with the reason, where no CUDA GPU is present."""

import functools
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.lru_cache(maxsize=1)
def gpu_missing_reason():
    try:
        from harness.gpu import require_gpu
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
        from harness import records, runs
        from harness.gpu import require_gpu
        rec = runs.run_record(result, require_gpu())
        rec["source"] = "gpu-suite"
        records.append(rec)
    return record
