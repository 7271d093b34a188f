"""The product path: forward(q, k, v) on torch CUDA tensors or CuPy arrays.

Apart from the harness path (harness/run/): no references, no poison, no records.

Set-up is paid once per process, never per call:
* each kernel's source is read and hashed once (loader.KernelSource, on its first compile);
* each variant is compiled once per (device, kernel, D, causal, tiles) (_FUNCTIONS); the kernel
  is the registry's choice for the device and problem (product_entry: the sm_90a kernel for
  large problems on a Hopper GPU, flashcore_fused elsewhere);
* each problem's validated launch (variant, grid, block, shared memory) is cached per input
  metadata: shapes, dtypes, devices and causal (_plan).
The per-call path is a cache hit, the output allocation and the launch (cuLaunchKernel over the
plan's argument block, packed once: toolchain/launcher.py): it reads no file, hashes nothing and
queries no device property. reload() forgets all three, so that a kernel
file edited after the first call is picked up (as it is by a new process). The harness path
(run, diagnose, bisect) keeps compiling from the file as it is, through loader.get_kernel.

torch: an eager call launches on the caller's current CUDA stream with outputs from torch's
allocator, so it can be captured in a CUDA graph. Under torch.compile (and for tensor
subclasses such as fake tensors) forward() calls the custom ops flashcore::attention and
flashcore::attention_lse instead, whose fake implementations give the output shapes.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from dataclasses import dataclass

import numpy as np

from debug_modes.registry import KERNEL_PARAMS, kernel_scalars
from harness.toolchain import device as _device
from harness.toolchain import counter, loader, tma
from harness.toolchain.launcher import Launcher
from harness.toolchain.variant import Variant, tiles_for
from harness.check.shapes import SUPPORTED_HEAD_DIMS, Shape
from harness.errors import UsageError
from kernels import registry

MAX_GRID_YZ = 65535   # H and B are gridDim.y and gridDim.z

# ------------------------------------------------------------------ the kernel's arguments
# forward() fills the first five pointer parameters; the debug modes' buffers stay null.
if KERNEL_PARAMS[:5] != ("Q", "K", "V", "O", "LSE"):
    raise ImportError(f"harness.api.kernel_args assumes Q, K, V, O, LSE first; KERNEL_PARAMS is {KERNEL_PARAMS}")
N_PTRS = 5                                # the pointers a call writes
_NULLS = (0,) * (len(KERNEL_PARAMS) - N_PTRS)
SCALE_SLOT = len(KERNEL_PARAMS) + 3       # kernel_scalars: H, Sq, Sk, scale, row0, n_rows


def kernel_args(q: int, k: int, v: int, o: int, lse: int, H: int, Sq: int, Sk: int, scale: float) -> tuple:
    """flashcore_fwd's arguments, built here and nowhere else on the product path:
    (Q, K, V, O, LSE, S_in, P_in, S_out, P_out, M_out, L_out, int H, int Sq, int Sk,
    float scale, int row0, int n_rows). Pointers are ints, 0 for null.

    row0, n_rows: the window of query rows one launch computes (the debug modes run windows);
    forward() computes every row, row0 = 0, n_rows = Sq. A kernel built before the window
    existed ignores the two trailing values: the driver reads as many parameters as the
    kernel declares."""
    return (q, k, v, o, lse) + _NULLS + kernel_scalars(H, Sq, Sk, scale, 0, Sq)


# ------------------------------------------------------------------ validation (one line each)
def check_inputs(kind, qm, km, vm) -> tuple:
    """(device, B, H, Sq, Sk, D) of valid inputs, from their metadata (shape, dtype, device) as
    kind.meta() gives it; a one-line UsageError for anything forward() cannot run."""
    devices = {}
    for name, (shape, dtype, dev) in (("q", qm), ("k", km), ("v", vm)):
        index = kind.device_index(dev)
        if index is None:
            raise UsageError(f"{name}: a tensor on {kind.device_label(dev)}; forward() needs CUDA tensors (e.g. .cuda())")
        if kind.dtype_name(dtype) != "float16":
            raise UsageError(f"{name}: dtype {kind.dtype_name(dtype)}; forward() takes float16")
        if len(shape) != 4:
            raise UsageError(f"{name}: shape {tuple(shape)} is not 4-D [B,H,S,D]")
        if any(n == 0 for n in shape):
            raise UsageError(f"{name}: shape {tuple(shape)} has a zero-size dimension")
        devices[name] = index
    if len(set(devices.values())) > 1:
        raise UsageError("q, k, v are on different devices: " +
                         ", ".join(f"{n} {kind.device_label(m[2])}" for n, m in (("q", qm), ("k", km), ("v", vm))))
    (B, H, Sq, D), ks, vs = tuple(qm[0]), tuple(km[0]), tuple(vm[0])
    if ks != vs or ks[:2] != (B, H) or ks[3] != D:
        raise UsageError(f"shapes do not match: q {tuple(qm[0])}, k {ks}, v {vs}; "
                         f"k and v must be [B,H,Sk,D] with q's B, H and D")
    if D not in SUPPORTED_HEAD_DIMS:
        raise UsageError(f"unsupported head dim {D}; forward() supports {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    if B > MAX_GRID_YZ or H > MAX_GRID_YZ:
        raise UsageError(f"B={B}, H={H}: each must be at most {MAX_GRID_YZ} (they are grid dimensions)")
    return devices["q"], B, H, Sq, ks[2], D


def _scale(scale) -> float:
    s = float(scale)
    if not math.isfinite(s):
        raise UsageError(f"scale must be a finite number, got {scale!r}")
    return s


# ------------------------------------------------------------------ set-up, cached
@dataclass(frozen=True)
class Plan:
    """One validated problem, ready to launch: its compiled variant, launch geometry and the
    launcher that holds its argument block."""
    variant: Variant
    fn: object
    launcher: Launcher
    device: int
    grid: tuple
    block: tuple
    smem: int
    H: int
    Sq: int
    Sk: int
    o_shape: tuple
    lse_shape: tuple
    scale: float       # the default, 1/sqrt(D)
    ring: object = None   # the device's counter.Ring where the kernel takes a work-item counter


# forward() launches, per device and problem, the registry entry kernels/registry.py's
# product_kernel() names (the fastest measured there: the sm_90a kernel for large problems on a
# Hopper GPU, flashcore_fused elsewhere), whatever kernel the harness has in use (--kernel).
_SOURCES: dict = {}     # kernel name -> loader.KernelSource, read and hashed once
_FUNCTIONS: dict = {}   # (device, kernel, D, causal, tiles) -> (Variant, compiled function)
_DEVICE_FACTS: dict = {}  # device -> (its arch "sm_90", its SM count), asked once: each plan needs them


def _function(kind, device: int, entry, arch: str, D: int, causal: bool, tiles: dict):
    """The variant and its compiled function; each kernel read and hashed once per process."""
    key = (device, entry.name, D, causal, tuple(sorted(tiles.items())))
    if key not in _FUNCTIONS:
        if entry.name not in _SOURCES:
            _SOURCES[entry.name] = loader.KernelSource.read(kernel=entry.name)
        variant = Variant("full", D, causal, arch=arch, kernel=entry.name, **tiles)
        with kind.on_device(device):   # a module is loaded into the context of the current device
            _FUNCTIONS[key] = (variant, loader.compile_function(variant, _SOURCES[entry.name]))
    return _FUNCTIONS[key]


def product_entry(device_arch: str, shape: Shape, causal: bool):
    """(registry entry, arch to build it for) that forward() launches for this problem."""
    entry = registry.product_kernel(device_arch, shape.B, shape.H, shape.Sq, shape.Sk, shape.D, causal)
    arch = entry.arch_on(device_arch) if entry is not registry.DEFAULT else _device.arch_for(device_arch)
    return entry, arch


def _maps(variant: Variant, first: int, B: int, H: int, Sq: int, Sk: int, D: int) -> tuple:
    """The placeholder values of an entry's TMA map arguments (from argument index `first` on)
    and the launcher's rule for each: (argument index, pointer index, TiledMap), re-encoded in
    the block when that pointer changes."""
    names = tma.mapped_buffers(variant.entry)
    rules = tuple((first + j, "QKV".index(n), tma.TiledMap(B * H, Sq if n == "Q" else Sk, D,
                                                          tma.box_rows(n, variant.q_box_rows, variant.block_n)))
                  for j, n in enumerate(names))
    return tuple(tma.null_desc() for _ in names), rules


@functools.lru_cache(maxsize=4096)
def _plan(kind, qm, km, vm, causal: bool) -> Plan:
    """The launch of valid inputs with this metadata (kind.meta()); cached, so that a repeated
    call neither validates nor looks a variant up again (a bad input raises every time)."""
    device, B, H, Sq, Sk, D = check_inputs(kind, qm, km, vm)
    shape = Shape(B, H, Sq, Sk, D)
    if device not in _DEVICE_FACTS:
        facts = _device.device_facts(device)
        _DEVICE_FACTS[device] = (facts["arch"], facts["sms"])
    device_arch, sms = _DEVICE_FACTS[device]
    entry, arch = product_entry(device_arch, shape, causal)
    variant, fn = _function(kind, device, entry, arch, D, causal, tiles_for(shape, entry.name))
    # a persistent variant's grid is per SM of the plan's device, not of the current one
    grid, block, scale = variant.grid(shape, sms=sms), (variant.threads,), 1.0 / math.sqrt(D)
    args = kernel_args(0, 0, 0, 0, 0, H, Sq, Sk, scale)
    placeholders, rules = _maps(variant, len(args), B, H, Sq, Sk, D)
    args += placeholders
    ring = counter_slot = None
    if counter.takes_counter(variant.entry):   # the kernel's last parameter: a word per call
        ring, counter_slot = counter.ring(_device.cupy(), device), len(args)
        args += (0,)
    launcher = Launcher(fn, grid, block, variant.smem_bytes, args, N_PTRS, SCALE_SLOT, rules, counter_slot)
    return Plan(variant, fn, launcher, device, grid, block, variant.smem_bytes,
                H, Sq, Sk, (B, H, Sq, D), (B, H, Sq), scale, ring)


def reload():
    """Forget the kernel source, the compiled variants and the cached launches: the next
    forward() reads the kernel file again ($FLASHCORE_KERNEL included). Call it after editing
    the kernel in a long-lived process; a new process reads the file anyway."""
    _SOURCES.clear()
    _FUNCTIONS.clear()
    _DEVICE_FACTS.clear()
    _plan.cache_clear()


# ------------------------------------------------------------------ the two kinds of array
class _CudaKind:
    """What forward() needs of an array library; both real kinds switch devices through CuPy
    (the same CUDA runtime state torch uses)."""

    dtypes: dict = {}

    @functools.cached_property
    def cp(self):
        return _device.cupy()

    def on_device(self, device: int):
        return self.cp.cuda.Device(device)

    def current_device(self) -> int:
        return self.cp.cuda.runtime.getDevice()

    def traced(self, q) -> bool:
        """True where the inputs are being traced (torch.compile): no eager launch then."""
        return False

    def launch(self, plan: Plan, ptrs: tuple, scale: float):
        """Launch the plan with the five pointers (Q, K, V, O, LSE) on the current stream."""
        stream = self.stream_ptr(plan.device)
        if plan.ring is None:
            plan.launcher(ptrs, scale, stream)
            return
        word, keep = self.counter_word(plan)
        plan.launcher(ptrs, scale, stream, word)
        del keep                  # a word from the caller's allocator: freed in stream order

    def counter_word(self, plan: Plan) -> tuple:
        """(address, owner) of this call's zeroed work-item word: the ring's next
        (harness/toolchain/counter.py)."""
        return plan.ring.take(), None


class _CuPy(_CudaKind):
    def __init__(self):
        self.dtypes = {"float16": np.float16, "float32": np.float32}

    def meta(self, x):
        return (x.shape, x.dtype, x.data.device_id)

    def dtype_name(self, dtype) -> str:
        return np.dtype(dtype).name

    def device_index(self, dev):
        return dev

    def device_label(self, dev) -> str:
        return f"cuda:{dev}"

    def contiguous(self, x):
        return self.cp.ascontiguousarray(x)

    def empty(self, like, shape, dtype: str):
        return self.cp.empty(shape, self.dtypes[dtype])

    def ptr(self, x) -> int:
        return x.data.ptr

    def stream_ptr(self, device: int) -> int:
        return self.cp.cuda.get_current_stream().ptr   # CuPy's current stream (of the current device)


class _Torch(_CudaKind):
    def __init__(self):
        import torch
        if not hasattr(torch.library, "custom_op"):
            raise UsageError(f"torch {torch.__version__} has no torch.library.custom_op; forward() needs torch 2.4 or newer")
        self.torch = torch
        self.Tensor = torch.Tensor
        self.dtypes = {"float16": torch.float16, "float32": torch.float32}
        # inductor's own way to the current stream: one C call, no Stream object
        self.raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        compiler = getattr(torch, "compiler", None)
        self.is_compiling = getattr(compiler, "is_compiling", None) or torch._dynamo.is_compiling
        self.ops = _register_torch_ops(torch, self)

    def traced(self, q) -> bool:
        # A subclass (FakeTensor, FunctionalTensor, ...) has no memory to launch on.
        return type(q) is not self.Tensor or self.is_compiling()

    def meta(self, x):
        return (x.shape, x.dtype, x.device)

    def dtype_name(self, dtype) -> str:
        return str(dtype).removeprefix("torch.")

    def device_index(self, dev):
        return dev.index if dev.type == "cuda" else None

    def device_label(self, dev) -> str:
        return str(dev)

    def contiguous(self, x):
        return x.contiguous()

    def empty(self, like, shape, dtype: str):
        return like.new_empty(shape, dtype=self.dtypes[dtype])   # torch's allocator: graph-capture safe

    def ptr(self, x) -> int:
        return x.data_ptr()

    def stream_ptr(self, device: int) -> int:
        """torch's current stream of the device, as a raw CUDA stream pointer."""
        return self.raw_stream(device) if self.raw_stream else self.torch.cuda.current_stream(device).cuda_stream

    def counter_word(self, plan: Plan) -> tuple:
        """The ring's next word, except under CUDA graph capture: a graph may be replayed beside
        any later launch, so a captured launch's word comes from torch's allocator (the graph's
        pool), zeroed by a memset captured with it."""
        if self.torch.cuda.is_current_stream_capturing():
            w = self.torch.zeros(counter.WORDS, dtype=self.torch.int32, device=f"cuda:{plan.device}")
            return w.data_ptr(), w
        return plan.ring.take(), None

    def traced_forward(self, q, k, v, causal: bool, scale, lse: bool):
        if lse:
            return self.ops.attention_lse(q, k, v, causal, scale)
        return self.ops.attention(q, k, v, causal, scale)


OP_SCHEMA = "(Tensor q, Tensor k, Tensor v, bool causal, float? scale) -> "


def _register_torch_ops(torch, kind: _Torch):
    """flashcore::attention -> O and flashcore::attention_lse -> (O, LSE) as torch custom ops:
    the eager implementation is forward()'s own launch; the fake one checks the inputs as
    forward() does and gives the output shapes (torch.compile traces through it)."""
    ns = torch.ops.flashcore
    if hasattr(ns, "attention"):      # this process registered them already (module reloaded)
        return ns

    def attention(q, k, v, causal, scale):
        return _eager(kind, q, k, v, causal, scale, False)

    def attention_lse(q, k, v, causal, scale):
        return _eager(kind, q, k, v, causal, scale, True)

    def fake(q, k, v, causal, scale):
        check_inputs(kind, kind.meta(q), kind.meta(k), kind.meta(v))
        return q.new_empty(q.shape)

    def fake_lse(q, k, v, causal, scale):
        return fake(q, k, v, causal, scale), q.new_empty(q.shape[:3], dtype=torch.float32)

    for name, fn, fake_fn, ret in (("attention", attention, fake, "Tensor"),
                                   ("attention_lse", attention_lse, fake_lse, "(Tensor, Tensor)")):
        op = torch.library.custom_op(f"flashcore::{name}", fn, mutates_args=(), device_types="cuda",
                                     schema=OP_SCHEMA + ret)
        op.register_fake(fake_fn)
    return ns


def register_torch_ops():
    """Register the custom ops (once) and return torch.ops.flashcore. forward() does it on its
    first torch tensor, and importing this module does it where torch is already imported."""
    return _kind_for_module("torch").ops


# ------------------------------------------------------------------ forward
_KINDS: dict = {}      # array type -> kind (exact types; tests may add a fake kind here)
_BY_MODULE: dict = {}  # "torch" | "cupy" -> kind


def _kind_for_module(module: str):
    if module not in _BY_MODULE:
        kind = _BY_MODULE[module] = _Torch() if module == "torch" else _CuPy()
        # The exact type now, so that a torch.compile trace of forward() finds its kind by a
        # lookup and mutates nothing.
        _KINDS[kind.Tensor if module == "torch" else kind.cp.ndarray] = kind
    return _BY_MODULE[module]


def _resolve(x, name: str):
    """The kind of an array whose exact type was not seen before (a one-line error if none)."""
    for module, cls in (("torch", "Tensor"), ("cupy", "ndarray")):
        lib = sys.modules.get(module)
        if lib is not None and isinstance(x, getattr(lib, cls)):
            kind = _kind_for_module(module)
            _KINDS[type(x)] = kind
            return kind
    if isinstance(x, np.ndarray):
        raise UsageError(f"{name}: a NumPy (host) array; forward() needs torch CUDA tensors or CuPy arrays")
    raise UsageError(f"{name}: a {type(x).__module__}.{type(x).__name__}; forward() needs torch CUDA tensors or CuPy arrays")


def forward(q, k, v, causal: bool = False, scale: float | None = None, lse: bool = False):
    """Attention forward. q [B,H,Sq,D], k and v [B,H,Sk,D], float16, on one CUDA device: torch
    tensors (on the current stream) or CuPy arrays. Returns O [B,H,Sq,D] float16 of the same
    kind, and LSE [B,H,Sq] float32 (natural log) with lse=True. scale defaults to 1/sqrt(D).
    Bad inputs raise a one-line UsageError."""
    kind = _KINDS.get(type(q)) or _resolve(q, "q")
    if (_KINDS.get(type(k)) or _resolve(k, "k")) is not kind or (_KINDS.get(type(v)) or _resolve(v, "v")) is not kind:
        raise UsageError(f"q, k, v are of different kinds ({', '.join(type(x).__name__ for x in (q, k, v))}); pass one kind")
    if kind.traced(q):
        return kind.traced_forward(q, k, v, bool(causal), None if scale is None else _scale(scale), bool(lse))
    return _eager(kind, q, k, v, causal, scale, lse)


def _eager(kind, q, k, v, causal, scale, lse):
    plan = _plan(kind, kind.meta(q), kind.meta(k), kind.meta(v), bool(causal))
    scale = plan.scale if scale is None else _scale(scale)
    if kind.current_device() == plan.device:
        return _launch(kind, plan, q, k, v, scale, lse)
    with kind.on_device(plan.device):
        return _launch(kind, plan, q, k, v, scale, lse)


def _launch(kind, plan: Plan, q, k, v, scale: float, lse: bool):
    q, k, v = kind.contiguous(q), kind.contiguous(k), kind.contiguous(v)
    o = kind.empty(q, plan.o_shape, "float16")
    l = kind.empty(q, plan.lse_shape, "float32") if lse else None
    try:
        kind.launch(plan, (kind.ptr(q), kind.ptr(k), kind.ptr(v), kind.ptr(o), 0 if l is None else kind.ptr(l)), scale)
    except ValueError as e:     # a TMA map the driver cannot encode (an address not 16-byte aligned)
        raise UsageError(f"forward(): {e}") from None
    return (o, l) if lse else o


def _register_if_installed():
    """Register the custom ops at import where torch is installed: registering them later,
    inside a torch.compile trace of forward(), would be traced itself and fail. A torch that
    cannot (too old) must not break the import for CuPy users: its first use raises."""
    if importlib.util.find_spec("torch") is None:
        return
    try:
        register_torch_ops()
    except Exception:
        _BY_MODULE.pop("torch", None)


_register_if_installed()
