"""The device references' CuPy kernels, compiled once per machine in the background.

Why: on a fresh machine the device path of the checks (references, metrics, folds on CuPy)
first compiles about 45 CuPy elementwise and reduction kernels, one after another, into CuPy's
kernel cache: 28 s of a cold `run --debug all --shape mission` on the H200 at 6a8fdfb, against
7.8 s with the same checks on the host (BENCHMARKS.md, "The research loop"). Warm, the device
path is the faster one beyond the problems auto gives the host anyway (gpu.AUTO_HOST_WORK, the
mission shape since f581df5). So `--reference-device auto` judges a mid-sized problem (up to
gpu.COLD_HOST_WORK) on the host while this machine's CuPy cache lacks the device kernels, and
the first such run starts one detached process that compiles them (warm(): the same
references and metrics, at the same shape, with no kernel launched: a user's kernel that
faults or hangs never runs here). When it is done it leaves a marker in CuPy's cache dir, and
later runs judge on the device. Clearing CuPy's cache removes the marker with the kernels.

FLASHCORE_WARMUP=0 turns the background compile off (the host path is kept until the
device path is warm by other means: `--reference-device gpu` once).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK_STALE_S = 600        # a warm-up that has not finished in this long is taken for dead
ENV_OFF = "FLASHCORE_WARMUP"


def cupy_cache_dir() -> Path:
    """CuPy's kernel cache (its own rule: $CUPY_CACHE_DIR, else ~/.cupy/kernel_cache)."""
    return Path(os.environ.get("CUPY_CACHE_DIR") or os.path.expanduser("~/.cupy/kernel_cache"))


@lru_cache(maxsize=None)
def _code_hash() -> str:
    """The code whose CuPy kernels the warm-up compiles: the references, metrics and folds
    (harness/check) and how run/gpu.py calls them (the launch side's own counts are a raw
    module, run/launch_counts.py, compiled by the first launch). An edit there may need others."""
    h = hashlib.sha256()
    for p in sorted((ROOT / "harness" / "check").glob("*.py")) + [ROOT / "harness" / "run" / "gpu.py"]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=None)
def _cupy_version() -> str:
    """CuPy's version (its kernels' cache keys change with it), without importing it where it is
    not imported yet (CuPy's import needs the driver)."""
    mod = sys.modules.get("cupy")
    if mod is not None:
        return mod.__version__
    from importlib import metadata
    for d in metadata.distributions():
        name = (d.metadata["Name"] or "").lower()
        if name == "cupy" or name.startswith("cupy-cuda"):
            return d.version
    return "unknown"


def marker(arch: str) -> Path:
    return cupy_cache_dir() / f"flashcore-device-refs-{_cupy_version()}-{arch}-{_code_hash()}"


def is_warm(arch: str) -> bool:
    return marker(arch).exists()


def _beside(arch: str, what: str) -> Path:
    """The lock (".warming") or the last failure (".failed") next to the marker."""
    m = marker(arch)
    return m.parent / (m.name + what)


def start(arch: str, shape, causal: bool) -> bool:
    """Start the detached warm-up unless one is running, it is done, or it is turned off.
    True if one was started."""
    if os.environ.get(ENV_OFF, "1") == "0" or is_warm(arch):
        return False
    lock = _beside(arch, ".warming")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        if time.time() - lock.stat().st_mtime < LOCK_STALE_S:
            return False
        lock.unlink()
    except FileNotFoundError:
        pass
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False                  # another worker got there first
    os.close(fd)
    s = shape
    argv = [sys.executable, "-m", "harness.run.warm_refs", f"{s.B},{s.H},{s.Sq},{s.D}", str(s.Sk), str(int(causal)),
            arch, str(lock)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.Popen(argv, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    return True


def main(argv: list) -> int:
    from harness.check.shapes import Shape
    from harness.run.gpu import warm_device_checks
    bhsd, sk, causal, arch, lock = argv
    B, H, Sq, D = (int(x) for x in bhsd.split(","))
    try:
        # both causal forms: a sweep runs both, and their masks are kernels of their own
        for c in sorted({bool(int(causal)), False}):
            warm_device_checks(Shape(B, H, Sq, int(sk), D), c)
        m = marker(arch)
        m.write_text(f"compiled by harness/run/warm_refs.py at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        return 0
    except BaseException as e:      # said where a user looking at CuPy's cache dir finds it
        _beside(arch, ".failed").write_text(f"{type(e).__name__}: {e}\n")
        raise
    finally:
        Path(lock).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
