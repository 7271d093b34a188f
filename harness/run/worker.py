"""The harness's worker process (see pool.py).

python -m harness.run.worker --serve            the long-lived worker: cases over pipes
python -m harness.run.worker CASE_JSON OUT      one case in this process, the result pickled to OUT
"""

import json
import os
import pickle
import signal
import sys
import time

from harness.errors import FlashCoreError
from harness.run import pool
from harness.run.runs import _failed, run_case


# Test-only: a case carrying "test_hook" never touches the GPU. The hooks stand in for a kernel
# that faults, crashes the process, hangs or raises, so that CI proves on a CPU that such a case
# is reported and the sweep goes on (tests/test_worker.py). The message names the worker's pid.
def _hook_result(case, status="ok", nbytes=0):
    import numpy as np
    r = _failed(case, status, f"pid {os.getpid()}")
    if nbytes:
        r.outputs["O"] = np.arange(nbytes // 4, dtype=np.float32)   # a big payload through the pipe
    return r


def _raise(case):
    raise RuntimeError("raised by test hook")


def _gpu_fault(case):
    """A real kernel fault (a store through a null pointer): the CUDA context is poisoned, as
    after a faulting variant."""
    from harness.toolchain.device import cupy
    cp = cupy()
    k = cp.RawKernel('extern "C" __global__ void store_null(int* p) { *p = 1; }', "store_null")
    try:
        k((1,), (1,), (0,))
        cp.cuda.runtime.deviceSynchronize()
    except (cp.cuda.runtime.CUDARuntimeError, cp.cuda.driver.CUDADriverError) as e:
        return _failed(case, "fault", f"pid {os.getpid()}: {e}")
    return _hook_result(case)


def _gpu_hang(case):
    """A real hung launch (a kernel that spins for 30 s, bounded so that it ends even if the
    process's teardown did not end it), waited for as every launch is (device.wait)."""
    from harness.toolchain.device import cupy, wait
    from harness.errors import Hang
    cp = cupy()
    k = cp.RawKernel('extern "C" __global__ void spin(long long cycles) { long long t0 = clock64(); '
                     'while (clock64() - t0 < cycles) { } }', "spin")
    k((1,), (1,), (cp.int64(30 * 2_000_000_000),))
    try:
        wait("spin", case.get("hang_s", 2.0))
    except Hang as e:
        return _failed(case, "hang", f"pid {os.getpid()}: {e}")
    return _hook_result(case)


TEST_HOOKS = {
    "gpu_hang": _gpu_hang,
    "ok": _hook_result,
    "fault": lambda case: _hook_result(case, "fault"),
    "big": lambda case: _hook_result(case, nbytes=case.get("nbytes", 64 << 20)),
    "crash": lambda case: os.kill(os.getpid(), signal.SIGSEGV),
    "hang": lambda case: time.sleep(1e9),
    "sleep": lambda case: time.sleep(case["seconds"]) or _hook_result(case),
    "raise": _raise,
    "gpu_fault": _gpu_fault,
    "env": lambda case: _failed(case, "ok", os.environ.get(case["var"], "")),
    "where": lambda case: _failed(case, "ok", sys.modules["harness"].__file__),
}


def run_one(case: dict):
    hook = case.get("test_hook")
    if hook is not None:
        return TEST_HOOKS[hook](case)
    if "callable" in case:          # a kernel built another way, through a Python callable
        from harness.run.callable_kernel import run_one as run_callable_case
        return run_callable_case(case)
    if case.get("probes"):          # input probes on a kernel as written (harness/run/probe_sweep.py)
        from harness.run.probe_sweep import run_case as run_probe_case
        return run_probe_case(case)
    if "spec" in case:              # a kernel checked as written (harness/run/asis.py)
        from harness.run.asis_sweep import run_one as run_spec_case
        return run_spec_case(case)
    return run_case(case, isolate=False)


def boot():
    """Device facts and a CUDA context, made while the parent validates; (facts, None), or
    (None, error) where there is no GPU (the worker still serves: the parent decides)."""
    try:
        from harness.toolchain.device import cupy, require_gpu
        facts = require_gpu()
        cupy().zeros(1)        # the CUDA context and CuPy's pool, now rather than in the first case
        import harness.run.gpu  # noqa: F401  the GPU path and the references, imported now too
        return facts, None
    except FlashCoreError as e:
        return None, e


def _free_device_memory():
    """Hand CuPy's cached blocks back between cases: a fresh process per case used to, and
    several workers (pytest -n 8) share one GPU."""
    cp = sys.modules.get("cupy")
    if cp is not None:
        try:
            cp.get_default_memory_pool().free_all_blocks()
        except Exception:   # no GPU (test hooks), or a context already lost
            pass


def _die_with_parent(parent: int):
    """Linux: the kernel kills this process when the parent dies, so that a case that hangs
    on the GPU cannot outlive a parent that was killed. (The parent's spawning thread is
    meant: the harness spawns from its main thread.)"""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except Exception:   # not Linux: the worker still exits at end of input
        return
    if os.getppid() != parent:   # the parent died before the call
        os._exit(1)


def serve(parent: int | None = None):
    if parent is not None:
        _die_with_parent(parent)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)   # a stray print must not land between two replies
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle: it kills us
    requests = sys.stdin.buffer
    pool.send(replies, ("ready", *boot()))
    while True:
        msg = pool.recv_blocking(requests)
        if msg is None or msg[0] == "exit":
            return
        try:
            if len(msg) > 2:
                pool.apply_case_env(msg[2])
            result = run_one(msg[1])
        except BaseException as e:   # reported for this case; a fresh worker takes the next one
            pool.send(replies, ("error", f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"))
            return
        pool.send(replies, ("result", result))
        if result.status == "fault":   # the CUDA context is poisoned after a kernel fault
            return
        if result.status == "hang":    # a kernel still runs: no clean exit (it would wait for it); the parent kills us
            replies.flush()
            os._exit(3)
        del result
        _free_device_memory()


def main():
    if sys.argv[1:] == ["--serve"]:
        serve()
        return
    case, out = json.loads(sys.argv[1]), sys.argv[2]
    result = run_one(case)
    with open(out, "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    main()
