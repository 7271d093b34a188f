"""A variant compiled for the current device: cupy.RawModule over the kernel source with the
variant's -D flags, cached on disk by CuPy under compiler.cache_key (which hashes the source
and its includes).

Two ways in:
* get_kernel(variant): the harness path. The kernel file as it is now: every call hashes the
  source (so an edit between two runs is never missed) and compiles once per cache key.
* KernelSource + compile_function(variant, source): the product path. The source read and
  hashed once (a snapshot); forward() caches the compiled function per variant itself, so
  nothing on its per-call path reads a file or hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.toolchain import compiler
from harness.toolchain.device import cupy, runtime_arch
from harness.toolchain.variant import Variant

DEFAULT_SMEM = 48 * 1024
_MODULES: dict = {}


def _compile(variant: Variant, src: str, options: tuple, path: Path | None = None):
    """The kernel function of one variant, loaded into the current device's context."""
    cp = cupy()
    try:
        mod = cp.RawModule(code=src, options=options, backend="nvrtc")
        fn = mod.get_function(variant.entry.entry)
    except cp.cuda.compiler.CompileException as e:
        log = compiler.format_compile_log(str(e), compiler.kernel_sources(path))
        raise compiler.CompileError(f"{variant.label}: compilation failed\n{log}") from None
    if variant.smem_bytes > DEFAULT_SMEM:
        fn.max_dynamic_shared_size_bytes = variant.smem_bytes
    return fn


def get_kernel(variant: Variant):
    """The compiled flashcore_fwd for a variant, compiled from the kernel file as it is now."""
    key = compiler.cache_key(variant)
    if key not in _MODULES:
        from harness.toolchain import prebuild
        cubin = prebuild.cached_cubin(variant)
        if cubin is not None:   # compiled ahead by the sweep's parent (harness/toolchain/prebuild.py)
            _MODULES[key] = _load_cubin(variant, cubin)
        else:
            path = compiler.kernel_file(None, variant.kernel)
            _MODULES[key] = _compile(variant, path.read_text(), compiler.runtime_options(variant), path)
    return _MODULES[key]


def _load_cubin(variant: Variant, cubin: Path):
    fn = cupy().RawModule(path=str(cubin)).get_function(variant.entry.entry)
    if variant.smem_bytes > DEFAULT_SMEM:
        fn.max_dynamic_shared_size_bytes = variant.smem_bytes
    return fn


@dataclass(frozen=True)
class KernelSource:
    """The kernel as read once: its text and the compile options up to the variant's -D flags
    (those carry the hash of the source and its includes: CuPy's own cache key ignores includes)."""
    path: Path
    text: str
    base_options: tuple

    def options(self, variant: Variant) -> tuple:
        return self.base_options + tuple(f"-D{d}" for d in variant.defines)

    @classmethod
    def read(cls, path: Path | None = None, kernel: str | None = None) -> "KernelSource":
        """Read and hash the kernel now (path, else $FLASHCORE_KERNEL, else the registry's file
        of `kernel`, default the kernel in use)."""
        path = compiler.kernel_file(path, kernel)
        # runtime_options() is the one definition of the options: the source hash and include
        # paths, then one -D per define of the variant. Cut the defines of a probe variant off
        # its end so that every variant shares one read and one hash.
        probe = Variant(kernel=kernel) if kernel else Variant()
        opts, tail = compiler.runtime_options(probe, path), tuple(f"-D{d}" for d in probe.defines)
        if opts[len(opts) - len(tail):] != tail:
            raise RuntimeError("compiler.runtime_options no longer ends with the variant's -D flags")
        return cls(Path(path), Path(path).read_text(), opts[:len(opts) - len(tail)])


def compile_function(variant: Variant, source: KernelSource, extra_options: tuple = ()):
    """The compiled flashcore_fwd for a variant from a source snapshot, for the current device
    (uncached here: the caller keeps it). extra_options: appended (a measuring build's -D,
    scripts/phase_clocks.py), as compiler.compile_cubin takes them."""
    return _compile(variant, source.text, source.options(variant) + tuple(extra_options), source.path)


def kernel_resources(variant: Variant) -> dict:
    fn = get_kernel(variant)
    return {"registers": int(fn.num_regs), "smem_static": int(fn.shared_size_bytes),
            "smem_dynamic": variant.smem_bytes, "local_bytes": int(fn.local_size_bytes)}


def runtime_variant(mode="full", head_dim=64, causal=False, bugs=(), device_arch: str | None = None, **kw) -> Variant:
    """A Variant for the current device's arch (resources and records name it): the entry's
    arch of that name, or its arch-specific form (sm_90 -> sm_90a) where it lists only that.
    device_arch: a device's arch as device facts give it (a parent that never touches CUDA)."""
    from kernels import registry
    from harness.toolchain.device import arch_for
    arch = runtime_arch() if device_arch is None else arch_for(device_arch)
    archs = (registry.get(kw["kernel"]) if kw.get("kernel") else registry.current()).archs
    if arch not in archs and arch + "a" in archs:
        arch += "a"
    return Variant(mode=mode, head_dim=head_dim, causal=causal, bugs=tuple(bugs), arch=arch, **kw)
