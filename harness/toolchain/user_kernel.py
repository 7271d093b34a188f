"""A kernel brought with a spec (kernels/spec.py), compiled as its author wrote it.

The source goes through harness/toolchain/prep.py (host code, torch includes and the like cut, line
numbers kept), then NVRTC with the spec's options, the variant's -D flags and a name
expression for the entry, so a C++ entry (templates included) is found by its lowered name as
well as an extern "C" one. CuPy's cache key ignores #included files, so the hash of the source
and its local includes is one of the options (as for flashcore_fused, compiler.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.toolchain import compiler
from harness.errors import CompileError, UsageError
from kernels.spec import Spec

DEFAULT_SMEM = 48 * 1024
_FUNCS: dict = {}


@dataclass(frozen=True)
class UserVariant:
    """(spec, mode, head dim, causal, seeded bugs, arch): what one compilation is. mode is
    "full" (the kernel as written) or one of the spec's own debug flags."""
    spec: Spec
    mode: str = "full"
    head_dim: int = 64
    causal: bool = False
    bugs: tuple = field(default_factory=tuple)
    arch: str = "sm_90"

    def __post_init__(self):
        if self.mode != "full":
            self.spec.flag(self.mode)           # raises for an undeclared flag
        if self.head_dim not in self.spec.head_dims:
            raise UsageError(f"{self.spec.name} supports head dim {', '.join(map(str, self.spec.head_dims))}, "
                             f"not {self.head_dim}")
        if self.causal and not self.spec.causal:
            raise UsageError(f"{self.spec.name} declares no causal masking ([domain] causal = false)")
        unknown = [b for b in self.bugs if self.spec.bugs and b not in self.spec.bugs]
        if unknown:
            raise UsageError(f"{self.spec.name} declares no seeded bug {unknown[0]!r}; its bugs: {', '.join(self.spec.bugs)}")

    @property
    def defines(self) -> list:
        s = self.spec
        d = list(s.defines)
        if s.head_dim_define:
            d.append(f"{s.head_dim_define}={self.head_dim}")
        if s.causal:
            d.append(f"{s.causal_define}={int(self.causal)}")
        if self.mode != "full":
            d.append(s.flag(self.mode).flag)
        d += [f"BUG_{b}" for b in sorted(self.bugs)]
        return d

    @property
    def label(self) -> str:
        s = f"{self.spec.name} {self.mode} D={self.head_dim}{' causal' if self.causal else ''} {self.arch}"
        return s + "".join(f" +BUG_{b}" for b in sorted(self.bugs))

    # what the localisation folds read (harness/check/localise.py)
    @property
    def block_m(self) -> int:
        return self.spec.block_m

    @property
    def block_n(self) -> int:
        return self.spec.block_n

    @property
    def warp_rows(self) -> int:
        return self.spec.block_m


def prepared_source(spec: Spec):
    """The source NVRTC gets (prep.prepare: host code cut, line numbers kept)."""
    from harness.toolchain import prep
    try:
        text = spec.source.read_text()
    except FileNotFoundError:
        raise UsageError(f"{spec.name}: kernel source not found: {spec.source}") from None
    return prep.prepare(text, spec.source.name, include_dir=spec.source.resolve().parent)


# nvcc options a spec may carry (its author's build line) that NVRTC does not take: what
# stands in for each (None: nothing needed). Seen with NVRTC 13.0: "unrecognized option".
NVCC_ONLY = {
    "--expt-relaxed-constexpr": None,    # prep compiles with -default-device: constexpr helpers are device code
    "-expt-relaxed-constexpr": None,
    "--expt-extended-lambda": "--extended-lambda",
    "-O3": None, "-O2": None,            # NVRTC optimises by default
    "-lineinfo": None,                   # already given
}


def nvrtc_options(opts) -> list:
    out = []
    for o in opts:
        if o in NVCC_ONLY:
            if NVCC_ONLY[o]:
                out.append(NVCC_ONLY[o])
        elif o.startswith("-Xptxas="):
            out.append("--ptxas-options=" + o.split("=", 1)[1])
        else:
            out.append(o)
    return out


def options(variant: UserVariant, prepared) -> tuple:
    spec = variant.spec
    opts = ["-std=c++17", "-lineinfo", f"-I{compiler.find_cuda_include()}", f"-I{spec.source.resolve().parent}",
            f"-DFLASHCORE_SRC_HASH={compiler.source_hash(spec.source)[:16]}"]
    opts += [o for o in prepared.options if o not in opts]
    opts += [o for o in nvrtc_options(spec.options) if o not in opts]
    opts += [f"-D{d}" for d in variant.defines]
    return tuple(opts)


def _log_error(variant: UserVariant, log: str, prepared) -> CompileError:
    sources = compiler.kernel_sources(variant.spec.source)
    cut = f"\n(FlashCore cut before compiling: {'; '.join(prepared.removed)})" if prepared.removed else ""
    return CompileError(f"{variant.label}: compilation failed\n{compiler.format_compile_log(log, sources)}{cut}")


def compile_cubin(variant: UserVariant) -> tuple:
    """(Resources, cubin bytes): NVRTC, no GPU, the options the run time uses; the cubin whole
    (compiler._whole_cubin), so that nvdisasm reads the code that runs."""
    nvrtc = compiler._nvrtc()
    prepared = prepared_source(variant.spec)
    opts = [f"--gpu-architecture={variant.arch}", "--ptxas-options=-v", "-ftz=true", *options(variant, prepared)]
    prog = nvrtc.createProgram(prepared.text, variant.spec.source.name, [], [])
    try:
        nvrtc.addNameExpression(prog, variant.spec.entry)
        try:
            nvrtc.compileProgram(prog, opts)
        except Exception:
            raise _log_error(variant, nvrtc.getProgramLog(prog), prepared) from None
        log = nvrtc.getProgramLog(prog)
        cubin = compiler._whole_cubin(nvrtc, prog)
    finally:
        nvrtc.destroyProgram(prog)
    return compiler.Resources(variant=variant.label, arch=variant.arch, smem_dynamic=0, cubin_bytes=len(cubin),
                              **compiler.parse_ptxas(log)), cubin


def compile_check(variant: UserVariant) -> compiler.Resources:
    """NVRTC, no GPU: registers, shared memory, spills of the entry, as compiler.compile_check."""
    return compile_cubin(variant)[0]


def get_function(variant: UserVariant):
    """The compiled entry for the current device (cupy.RawModule, cached per options)."""
    from harness.toolchain.device import cupy
    cp = cupy()
    prepared = prepared_source(variant.spec)
    opts = options(variant, prepared)
    key = (str(variant.spec.source.resolve()), variant.spec.entry, opts)
    if key not in _FUNCS:
        try:
            mod = cp.RawModule(code=prepared.text, options=opts, backend="nvrtc", name_expressions=[variant.spec.entry])
            fn = mod.get_function(variant.spec.entry)
        except cp.cuda.compiler.CompileException as e:
            raise _log_error(variant, str(e), prepared) from None
        except cp.cuda.driver.CUDADriverError as e:
            raise CompileError(f"{variant.label}: entry {variant.spec.entry!r} not loadable ({e}); "
                               f"is [kernel] entry the __global__ function's name (with its template arguments)?") from None
        _FUNCS[key] = fn
    return _FUNCS[key]


def resources(variant: UserVariant, smem: int) -> dict:
    fn = get_function(variant)
    return {"registers": int(fn.num_regs), "smem_static": int(fn.shared_size_bytes), "smem_dynamic": smem,
            "local_bytes": int(fn.local_size_bytes)}


def allow_smem(fn, smem: int, arch_limit: int | None = None):
    """Dynamic shared memory above 48 KB must be opted into per function."""
    if smem > DEFAULT_SMEM:
        try:
            fn.max_dynamic_shared_size_bytes = smem
        except Exception as e:
            raise UsageError(f"the kernel asks for {smem} B of dynamic shared memory, which this device refuses ({e})") from None


def find_spec(kernel: str) -> Path:
    """--kernel PATH: a spec file, or a .cu with its spec beside it (same stem, .toml)."""
    p = Path(kernel)
    if p.suffix == ".cu":
        for cand in (p.with_suffix(".toml"), p.with_name(p.stem + ".flashcore.toml")):
            if cand.is_file():
                return cand
        raise UsageError(f"no spec beside {p} ({p.with_suffix('.toml').name}): write one with "
                         f"`flashcore kernel init {p}`")
    if not p.is_file():
        raise UsageError(f"kernel spec not found: {p}")
    return p
