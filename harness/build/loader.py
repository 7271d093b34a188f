"""A variant compiled for the current device: cupy.RawModule over the kernel source with the
variant's -D flags (compiled once per process, cached on disk by CuPy under compiler.cache_key,
which hashes the source and its includes)."""

from __future__ import annotations

from harness.build import compiler
from harness.build.device import cupy, runtime_arch
from harness.build.variant import Variant

DEFAULT_SMEM = 48 * 1024
_MODULES: dict = {}


def get_kernel(variant: Variant):
    """The compiled flashcore_fwd for a variant, compiled from the kernel file as it is now."""
    key = compiler.cache_key(variant)
    if key not in _MODULES:
        cp = cupy()
        src = compiler.kernel_file().read_text()
        try:
            mod = cp.RawModule(code=src, options=compiler.runtime_options(variant), backend="nvrtc")
            fn = mod.get_function(compiler.KERNEL_NAME)
        except cp.cuda.compiler.CompileException as e:
            log = compiler.format_compile_log(str(e), compiler.kernel_sources())
            raise compiler.CompileError(f"{variant.label}: compilation failed\n{log}") from None
        if variant.smem_bytes > DEFAULT_SMEM:
            fn.max_dynamic_shared_size_bytes = variant.smem_bytes
        _MODULES[key] = fn
    return _MODULES[key]


def kernel_resources(variant: Variant) -> dict:
    fn = get_kernel(variant)
    return {"registers": int(fn.num_regs), "smem_static": int(fn.shared_size_bytes),
            "smem_dynamic": variant.smem_bytes, "local_bytes": int(fn.local_size_bytes)}


def runtime_variant(mode="full", head_dim=64, causal=False, bugs=(), **kw) -> Variant:
    """A Variant for the current device's arch (resources and records name it)."""
    return Variant(mode=mode, head_dim=head_dim, causal=causal, bugs=tuple(bugs), arch=runtime_arch(), **kw)
