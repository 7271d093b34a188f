"""Compilation: the exact options the run time hands to cupy.RawModule, a cache key over the
kernel and everything it includes, and a GPU-free NVRTC path that reports resources.

* CuPy's kernel cache key ignores the contents of #included files, so the sha256 of the
  source and of every local include is passed as -DFLASHCORE_SRC_HASH=...: an edit to any
  of them changes the options and thereby the key.
* NVRTC does not find crt/mma.h among the pip headers: find_cuda_include() looks for a
  toolkit include directory that holds it (env vars, nvcc's location, CuPy's CUDA path,
  the nvidia wheels) and passes it with -I.
* cupy.cuda.compiler needs a driver; cupy.cuda.nvrtc does not, so compile_check() uses
  the latter (the same compiler the run time uses) and reads ptxas' -v report.
* cupy.cuda.nvrtc.getCUBIN() returns the cubin one byte short (it treats the size as a
  string's, terminator included: seen with CuPy 13/14 and NVRTC 13.0, 77279 of 77280 bytes),
  which nvdisasm rejects as an invalid ELF. cubin() asks libnvrtc itself for the size.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.errors import CompileError, UsageError
from harness.toolchain.device import await_cupy_import
from harness.toolchain.variant import Variant

from kernels import registry
from kernels.registry import DEFAULT as KERNEL

KERNEL_FILE = KERNEL.path


def kernel_file(path=None, kernel: str | None = None) -> Path:
    """The kernel source in use: path, else $FLASHCORE_KERNEL (git bisect points it into a
    worktree; it stands for the default kernel, or for the entry whose file has its name), else
    the registry entry's file (kernels/flashcore_fused.cu by default)."""
    if path:
        return Path(path)
    entry = registry.get(kernel) if kernel else registry.current()
    env = os.environ.get("FLASHCORE_KERNEL")
    if env and (entry is KERNEL or Path(env).name == entry.path.name):
        return Path(env)
    return entry.path
KERNEL_NAME = KERNEL.entry
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def kernel_sources(path: Path | None = None) -> dict:
    """{path: text} of the kernel and every local file it includes, recursively."""
    seen: dict = {}
    path = kernel_file(path)

    def walk(p: Path):
        p = p.resolve()
        if p in seen:
            return
        if not p.is_file():
            raise UsageError(f"kernel source not found: {p}")
        seen[p] = p.read_text()
        for inc in INCLUDE_RE.findall(seen[p]):
            walk(p.parent / inc)

    walk(Path(path))
    return seen


def _stamp(paths) -> tuple | None:
    """(mtime_ns, size, inode) of each file, None where one is gone."""
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            return None
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


_HASHES: dict = {}   # resolved kernel path -> (its files, their stamps, the hash)


def source_hash(path: Path | None = None) -> str:
    """sha256 over the kernel source and everything it includes (names and contents).
    Every call is of the files as they are now, but the files are read and hashed again only
    where one of them changed its stamp (mtime, size or inode: a save, an editor's rename):
    a sweep asks for it per variant and per launch (issue 26: 0.10 s of a warm `run --debug all`
    in one process on the H200 at 844a1fa, 1.8 s summed over the threads of a cold diagnose's)."""
    key = Path(kernel_file(path)).resolve()
    cached = _HASHES.get(key)
    if cached is not None and _stamp(cached[0]) == cached[1]:
        return cached[2]
    # stamped between two reads: cached only if nothing changed while the hashed copy was read
    before = _stamp(sorted(kernel_sources(key)))
    sources = kernel_sources(key)
    files = tuple(sorted(sources))
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + sources[p].encode() + b"\0")
    digest = h.hexdigest()
    if before is not None and before == _stamp(files):
        _HASHES[key] = (files, before, digest)
    return digest


def cuda_roots():
    """Candidate CUDA toolkit roots, most specific first: $CUDA_PATH/$CUDA_HOME/$CUDA_ROOT, the
    nvcc on PATH, CuPy's, /usr/local/cuda(-*), and the nvidia-* wheels (nvidia/<pkg>/)."""
    for var in ("CUDA_PATH", "CUDA_HOME", "CUDA_ROOT"):
        if os.environ.get(var):
            yield Path(os.environ[var])
    nvcc = shutil.which("nvcc")
    if nvcc:
        yield Path(nvcc).resolve().parent.parent
    try:
        await_cupy_import()
        import cupy
        p = cupy.cuda.get_cuda_path()
        if p:
            yield Path(p)
    except Exception:   # no CuPy, or no toolkit it knows of
        pass
    yield Path("/usr/local/cuda")
    yield from (Path(p) for p in sorted(glob.glob("/usr/local/cuda-*"), reverse=True))
    try:
        import nvidia
        for base in nvidia.__path__:
            yield from (Path(p) for p in sorted(glob.glob(os.path.join(base, "*"))))
    except Exception:
        pass


@functools.lru_cache(maxsize=1)
def find_cuda_include() -> Path:
    """A CUDA include directory that holds crt/mma.h (and cuda_fp16.h)."""
    for root in cuda_roots():
        cand = root / "include"
        if (cand / "crt" / "mma.h").is_file() and (cand / "cuda_fp16.h").is_file():
            return cand
    raise UsageError("no CUDA include directory with crt/mma.h found; set CUDA_PATH to the toolkit")


def runtime_options(variant: Variant, path: Path | None = None) -> tuple:
    """The option tuple passed to cupy.RawModule (CuPy adds the arch of the current device)."""
    path = kernel_file(path, variant.kernel)
    opts = ["-std=c++17", "-lineinfo", f"-I{find_cuda_include()}", f"-I{Path(path).resolve().parent}",
            f"-DFLASHCORE_SRC_HASH={source_hash(path)[:16]}"]
    if variant.arch.endswith("a"):
        # arch-specific instructions (wgmma, setmaxnreg): CuPy appends the device's plain arch,
        # and NVRTC builds for the "a" form when the options carry it too (../shared/hopper/NOTES.md)
        opts.append(f"-arch={variant.arch}")
    opts += [f"-D{d}" for d in variant.defines]
    return tuple(opts)


def cache_key(variant: Variant, path: Path | None = None) -> str:
    return hashlib.sha256(("\0".join(runtime_options(variant, path))).encode()).hexdigest()[:16]


@dataclass
class Resources:
    variant: str
    arch: str
    registers: int
    smem_static: int
    smem_dynamic: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int
    cubin_bytes: int
    # ptxas warnings that mean lost speed on sm_90a (../shared/hopper/NOTES.md): C7513, wgmma
    # serialised by a register write; C7519, warpgroup.arrive injected; and any other note that
    # the wgmmas are serialised (C7512: too few registers, seen at 160-key tiles, where ptxas
    # serialised every wgmma of the function and printed no C7513). A compile check fails on them.
    wgmma_warnings: tuple = ()

    @property
    def spill_bytes(self) -> int:
        return self.spill_stores + self.spill_loads

    def to_dict(self) -> dict:
        return asdict(self)


def _int(pattern: str, log: str) -> int:
    m = re.search(pattern, log)
    return int(m.group(1)) if m else 0


# "(C75nn) ... wgmma.mma_async instructions are serialized due to ...": every such reason, by code
_WGMMA_SERIALISED = re.compile(r"\((C75\d\d)\)[^\n]*serialized")


def parse_ptxas(log: str) -> dict:
    return {
        "registers": _int(r"Used (\d+) registers", log),
        "smem_static": _int(r"(\d+) bytes smem", log),
        "stack_bytes": _int(r"(\d+) bytes stack frame", log),
        "spill_stores": _int(r"(\d+) bytes spill stores", log),
        "spill_loads": _int(r"(\d+) bytes spill loads", log),
        "wgmma_warnings": tuple(sorted(set(re.findall(r"\b(C75(?:13|19))\b", log))
                                       | set(_WGMMA_SERIALISED.findall(log)))),
    }


def format_compile_log(log: str, sources: dict) -> str:
    """The compiler's log with each error's source line quoted beneath it."""
    by_name = {p.name: text.splitlines() for p, text in sources.items()}
    main = next(iter(sources), None)
    if main is not None:   # CuPy compiles the main file under a cache name (<hash>.cubin.cu): give it back its own
        log = re.sub(r"[\w./-]*\.cubin\.cu", main.name, log)
    out = []
    for line in log.splitlines():
        out.append(line)
        m = re.match(r"(.+?)\((\d+)\): (error|warning)", line)
        if m and Path(m.group(1)).name in by_name:
            lines = by_name[Path(m.group(1)).name]
            n = int(m.group(2))
            if 1 <= n <= len(lines):
                out.append(f"    {n:5d} | {lines[n - 1]}")
    return "\n".join(out)


def _nvrtc():
    await_cupy_import()
    try:
        from cupy.cuda import nvrtc
        nvrtc.getVersion()
        return nvrtc
    except Exception as e:   # no CuPy or no libnvrtc
        raise UsageError(f"NVRTC is not available ({type(e).__name__}: {e}); install flashcore[cuda13] or [cuda12]") from None


def compile_cubin(variant: Variant, path: Path | None = None, extra_options: tuple = ()) -> tuple:
    """(Resources, cubin bytes) of one variant compiled for variant.arch with NVRTC, with the
    run time's options (no GPU needed): the cubin is the code the harness runs. extra_options:
    appended (a measuring build's -D, scripts/phase_clocks.py)."""
    nvrtc = _nvrtc()
    path = kernel_file(path, variant.kernel)
    sources = kernel_sources(path)
    main_src = sources[Path(path).resolve()]
    opts = [f"--gpu-architecture={variant.arch}", "--ptxas-options=-v", "-ftz=true"]
    opts += [o for o in runtime_options(variant, path) if not o.startswith("-arch=")]
    opts += list(extra_options)
    prog = nvrtc.createProgram(main_src, Path(path).name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, opts)
        except Exception:
            log = nvrtc.getProgramLog(prog)
            raise CompileError(f"{variant.label}: compilation failed\n{format_compile_log(log, sources)}") from None
        log = nvrtc.getProgramLog(prog)
        cubin = _whole_cubin(nvrtc, prog)
    finally:
        nvrtc.destroyProgram(prog)
    return Resources(variant=variant.label, arch=variant.arch, smem_dynamic=variant.smem_bytes,
                     cubin_bytes=len(cubin), **parse_ptxas(log)), cubin


def compile_source(source: str, name: str, arch: str, options=()) -> bytes:
    """The whole cubin of a self-contained source (no include of ours) for arch, with NVRTC and
    the flags CuPy would add (-ftz=true): the harness's own small modules."""
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(source, name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", "-ftz=true", *options])
        except Exception:
            raise CompileError(f"{name}: compilation failed\n{nvrtc.getProgramLog(prog)}") from None
        return _whole_cubin(nvrtc, prog)
    finally:
        nvrtc.destroyProgram(prog)


def compile_check(variant: Variant, path: Path | None = None) -> Resources:
    """Compile one variant for variant.arch with NVRTC (no GPU needed) and read the resources."""
    return compile_cubin(variant, path)[0]


def _whole_cubin(nvrtc, prog) -> bytes:
    """The cubin NVRTC wrote, every byte (see the module docstring: CuPy's getCUBIN drops one).
    libnvrtc is already loaded by CuPy, so dlopen by its soname returns that same library."""
    import ctypes
    major = nvrtc.getVersion()[0]
    try:
        lib = ctypes.CDLL(f"libnvrtc.so.{major}")
    except OSError:
        raise UsageError(f"libnvrtc.so.{major} could not be opened to read the whole cubin") from None
    n = ctypes.c_size_t()
    if lib.nvrtcGetCUBINSize(ctypes.c_void_p(prog), ctypes.byref(n)) != 0:
        raise UsageError("nvrtcGetCUBINSize failed")
    buf = ctypes.create_string_buffer(n.value)
    if lib.nvrtcGetCUBIN(ctypes.c_void_p(prog), buf) != 0:
        raise UsageError("nvrtcGetCUBIN failed")
    return buf.raw
