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
import time
from dataclasses import dataclass
from pathlib import Path

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


def _build(variant: Variant) -> None:
    _, cubin = compiler.compile_cubin(variant)
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".part")   # written whole, then renamed: readers never see half
    with os.fdopen(fd, "wb") as f:
        f.write(cubin)
    os.replace(tmp, cubin_path(variant))


@dataclass
class Prebuilt:
    built: int
    cached: int
    failed: list          # compile errors: left to the launch, which reports them as that case's verdict
    seconds: float


def prebuild(variants, jobs: int | None = None) -> Prebuilt:
    """Compile every variant that has no cubin yet, concurrently; returns what it did."""
    from harness.toolchain.compile_sweep import sweep
    t0 = time.perf_counter()
    unique = list(dict.fromkeys(variants))
    if not enabled():
        return Prebuilt(0, 0, [], 0.0)
    missing = [v for v in unique if cached_cubin(v) is None]
    _, failures = sweep(missing, check=_build, jobs=jobs) if missing else ([], [])
    return Prebuilt(len(missing) - len(failures), len(unique) - len(missing), failures, time.perf_counter() - t0)
