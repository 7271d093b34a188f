"""Compile ahead, in parallel, once: the variants a sweep will launch, as cubins on disk.

Without this, each isolated worker compiled its variants through CuPy one after another, on
the first launch of each (issue 26: after an edit the default `diagnose` recompiled every
variant of the coverage set serially). Here the parent process, which never touches CUDA,
compiles what is missing with NVRTC on one thread per CPU (NVRTC releases the GIL:
harness/toolchain/compile_sweep.py), before the first launch; the workers then load the
cubin (cupy.RawModule(path=...)) and compile nothing.

The cubin is keyed by compiler.cache_key (the source hash with its includes, and every -D
flag) and the arch, so an edit rebuilds exactly the variants whose source changed and a
cubin is never stale. It is NVRTC's whole cubin (compiler._whole_cubin), built with the
options the run time gives CuPy plus -ftz=true, which CuPy adds itself.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError
from harness.toolchain import compiler
from harness.toolchain.variant import Variant

ENV_DIR = "FLASHCORE_CUBIN_CACHE"
ENV_OFF = "FLASHCORE_NO_PREBUILD"


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or Path.home() / ".cache" / "flashcore" / "cubins")


def enabled() -> bool:
    return os.environ.get(ENV_OFF, "") in ("", "0")


def cubin_path(variant: Variant) -> Path:
    return cache_dir() / f"{compiler.cache_key(variant)}-{variant.arch}.cubin"


def cached_cubin(variant: Variant) -> Path | None:
    """The prebuilt cubin of a variant, where there is one (and prebuilding is on)."""
    if not enabled():
        return None
    p = cubin_path(variant)
    return p if p.is_file() else None


def _write_whole(path: Path, data: bytes) -> None:
    """Written whole, then renamed: readers (other processes, other threads) never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _build(variant: Variant) -> None:
    _, cubin = compiler.compile_cubin(variant)
    _write_whole(cubin_path(variant), cubin)


@dataclass
class Prebuilt:
    built: int
    cached: int
    failed: list          # compile errors: left to the launch, which reports them as that case's verdict
    seconds: float


def prebuild(variants, jobs: int | None = None) -> Prebuilt:
    """Compile every variant that has no cubin yet, concurrently; returns what it did."""
    return start(variants, jobs).close()


def _try_build(variant: Variant) -> str | None:
    """Build one variant; a compile error is returned (left to the launch), not raised."""
    try:
        _build(variant)
        return None
    except compiler.CompileError as e:
        return str(e)


class Building:
    """A prebuild under way (start): the missing variants compile in the order given, the first
    alone (compile_sweep: NVRTC's first use loads libnvrtc-builtins), the rest on a thread pool,
    all on a thread of their own, so that start() returns at once and the caller goes on (the
    worker boots meanwhile). wait(variants) returns once those are built. A sweep waits per
    case, so its first case launches while the later cases' variants still compile (issue 26:
    compiling overlapped with the first launches). close() waits for the rest and says what was
    done; cancel() drops the builds not begun (a guessed arch that was wrong)."""

    def __init__(self, unique: list, missing: list, jobs: int | None):
        self._t0, self._n, self._missing = time.perf_counter(), len(unique), len(missing)
        self._futures = {v: Future() for v in missing}
        if missing:
            # CuPy imported here, on the caller's thread: imported by the build thread while
            # the caller imports it too (an in-process run's require_gpu) it failed with
            # ImportError on the H200 at d897419 (a partly initialised module)
            try:
                compiler._nvrtc()
            except UsageError:   # no NVRTC: each build reports it, as before
                pass
        self._thread = threading.Thread(target=self._run, args=(missing, jobs), daemon=True,
                                        name="flashcore-prebuild")
        self._thread.start()

    def _run(self, missing: list, jobs: int | None) -> None:
        from concurrent.futures import ThreadPoolExecutor
        from harness.toolchain.compile_sweep import default_jobs
        if not missing:
            return
        self._settle(missing[0])
        with ThreadPoolExecutor(max_workers=jobs or default_jobs()) as ex:
            for v in missing[1:]:
                ex.submit(self._settle, v)

    def _settle(self, v: Variant) -> None:
        f = self._futures[v]
        if not f.set_running_or_notify_cancel():
            return
        try:
            f.set_result(_try_build(v))
        except BaseException as e:   # not a compile error (those are results): raised by wait
            f.set_exception(e)

    def wait(self, variants) -> None:
        for v in variants:
            f = self._futures.get(v)
            if f is not None and not f.cancelled():
                f.result()

    def cancel(self) -> None:
        for f in self._futures.values():
            f.cancel()

    def close(self) -> Prebuilt:
        self._thread.join()
        results = [f.result() for f in self._futures.values() if not f.cancelled()]
        failed = [w for w in results if w]
        return Prebuilt(len(results) - len(failed), self._n - self._missing, failed, time.perf_counter() - self._t0)


def start(variants, jobs: int | None = None) -> Building:
    """prebuild() that returns at once (after the first missing variant): wait on the result.
    Prebuilding off: nothing to build, wait and close return at once."""
    if not enabled():
        return Building([], [], jobs)
    unique = list(dict.fromkeys(variants))
    return Building(unique, [v for v in unique if cached_cubin(v) is None], jobs)


# The arch the last sweep on this machine ran on, beside the cubins: a sweep starts compiling
# for it at once instead of after its worker's boot has said which device it has (issue 26:
# after an edit, `run --debug all` compiled only after the worker's CUDA context was up, 0.95 s
# on the H200). A wrong guess is compiled again for the right arch (session.facts_and_builds).
ARCH_FILE = "last-device-arch"


def last_arch() -> str | None:
    try:
        arch = (cache_dir() / ARCH_FILE).read_text().strip()
    except OSError:
        return None
    return arch if arch.startswith("sm_") else None


def remember_arch(arch: str) -> None:
    if not enabled() or not arch or arch == last_arch():
        return
    try:
        _write_whole(cache_dir() / ARCH_FILE, (arch + "\n").encode())
    except OSError:     # a read-only cache: no guess next time, nothing else lost
        pass


def source_cubin(source: str, name: str, arch: str, options=()) -> Path:
    """The cubin of one of the harness's own self-contained modules (run/launch_counts.py), built
    once per machine into the cubin cache, keyed by the source, options, arch and NVRTC's
    version. Why not CuPy's RawModule(code=...): CuPy's cache lookup itself compiles an empty
    program with NVRTC once per process and option set (its cache key names the compiler's
    version), which cost the harness's worker 0.28 s before its first case on the H200 at
    d897419; a cubin loads with no NVRTC at all."""
    import hashlib
    nv = ".".join(map(str, compiler._nvrtc().getVersion()))
    key = hashlib.sha256("\0".join((source, name, arch, nv, *options)).encode()).hexdigest()[:16]
    path = cache_dir() / f"{name}-{key}-{arch}.cubin"
    if not path.is_file():
        _write_whole(path, compiler.compile_source(source, name, arch, options))
    return path
