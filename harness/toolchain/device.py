"""The CUDA device in use: CuPy imported on demand, and the facts every record names.

Nothing here compiles or launches; the layers above ask for the device through this module
so that a machine without a GPU gets one line (NoGPUError, exit 2), never a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time

from harness.errors import Hang, NoGPUError

# A launch of a checked problem takes milliseconds to tens of milliseconds (1,8,65536,128 full:
# ~40 ms on an H200): one that runs for HANG_S seconds is a hang. compute-sanitizer and other slow
# hosts raise it through $FLASHCORE_HANG_S.
HANG_S = 10.0


def hang_seconds() -> float:
    try:
        return float(os.environ.get("FLASHCORE_HANG_S", HANG_S))
    except ValueError:
        return HANG_S

# Archs the kernels are built for; a newer device runs the sm_80 build.
RUNTIME_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")


_IMPORTER: list = []    # the thread importing CuPy ahead of its first use (import_cupy_ahead)


def import_cupy_ahead() -> None:
    """Import CuPy on a thread of its own, now: cli.py, for a command whose process will compile
    (NVRTC through CuPy) while its worker boots. The import took 0.3-0.5 s of the parent's path
    to its first compile after an edit (issue 26). Every use of CuPy here waits for that thread
    first (await_cupy_import): CuPy imported by two threads at once failed with ImportError."""
    if "cupy" in sys.modules or _IMPORTER:
        return
    # not a daemon: a command that stops early (a usage error) waits for the import to end
    # rather than finalising the interpreter under it
    t = threading.Thread(target=_import_quietly, name="flashcore-import-cupy")
    _IMPORTER.append(t)
    t.start()


def _import_quietly() -> None:
    try:
        import cupy  # noqa: F401
    except Exception:   # the caller's own import says what is wrong, in one line
        pass


def await_cupy_import() -> None:
    """Return once the import started by import_cupy_ahead is over (at once without one)."""
    if _IMPORTER and _IMPORTER[0] is not threading.current_thread():
        _IMPORTER[0].join()


def cupy():
    await_cupy_import()
    try:
        import cupy as cp
        return cp
    except Exception as e:
        raise NoGPUError(f"no GPU: CuPy is not importable ({type(e).__name__}); install flashcore[cuda13]") from None


@functools.lru_cache(maxsize=None)
def _facts(device_id: int) -> dict:
    cp = cupy()
    props = cp.cuda.runtime.getDeviceProperties(device_id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {
        "device": name,
        "arch": f"sm_{props['major']}{props['minor']}",
        "sms": int(props["multiProcessorCount"]),
        "driver": cp.cuda.runtime.driverGetVersion(),
        "runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cupy": cp.__version__,
    }


_HAS_DEVICE: list = []   # a device was found in this process (the count cannot drop in it)


def require_gpu() -> dict:
    """Device facts for the record (queried once per device and process); NoGPUError (exit 2)
    where there is no CUDA GPU. The device count too is asked once per process once one was
    found (a warm `run --debug all` asked seven times: 0.11 s in all on the H200 at 844a1fa)."""
    cp = cupy()
    if _HAS_DEVICE:
        return dict(_facts(cp.cuda.Device().id))
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        if not driver_present():   # the runtime says "insufficient driver" where there is none at all
            raise NoGPUError("no CUDA GPU here: no NVIDIA driver (libcuda) on this machine") from None
        raise NoGPUError(f"no CUDA GPU available ({str(e).splitlines()[0][:120]})") from None
    if n < 1:
        raise NoGPUError("no CUDA GPU available")
    _HAS_DEVICE.append(True)
    return dict(_facts(cp.cuda.Device().id))


def driver_present() -> bool:
    """Whether this machine has the NVIDIA driver library at all (no CUDA call, no CuPy)."""
    import ctypes
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def wait(label: str, hang_s: float | None = None):
    """Wait for the work queued on the current stream, with a deadline: Hang past it (the
    context stays busy, so the process that launched must be replaced). A fault surfaces here
    as CuPy's CUDA error, for the caller to turn into its verdict."""
    cp = cupy()
    hang_s = hang_seconds() if hang_s is None else hang_s
    ev = cp.cuda.Event()
    ev.record()
    t0, pause = time.monotonic(), 1e-5
    while not ev.done:
        if time.monotonic() - t0 > hang_s:
            raise Hang(f"HANG: {label}: the launch did not finish within {hang_s:g} s")
        time.sleep(pause)
        pause = min(pause * 2, 2e-3)
    cp.cuda.runtime.deviceSynchronize()


def device_facts(device_id: int) -> dict:
    """The facts of one device, queried once per process (the product path asks per device, not
    per call: getDeviceProperties costs about a millisecond)."""
    return dict(_facts(device_id))


def arch_for(arch: str) -> str:
    """The arch a device's variants are built for: its own where we build for it, else sm_80."""
    return arch if arch in RUNTIME_ARCHS else "sm_80"


def runtime_arch() -> str:
    """The arch the current device's variants are built for."""
    return arch_for(require_gpu()["arch"])
