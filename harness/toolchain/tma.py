"""TMA tensor maps (CUtensorMap) for the sm_90a kernel, encoded through ctypes on libcuda.so.1.

No package beyond NumPy: the driver's own cuTensorMapEncodeTiled writes the 128 opaque bytes,
and the result is a NumPy structured value that CuPy passes *by value* to a kernel parameter
declared `const __grid_constant__ TmaDesc` (kernels/hopper/ptx.cuh:
`struct __align__(64) TmaDesc { unsigned long long opaque[16]; }`). CuPy copies the value's
bytes into the launch's parameter buffer at the offset the cubin's parameter table gives, so
only the encode call needs a 64-byte-aligned host buffer, not the value handed to CuPy.

The maps are 3-D over a contiguous fp16 [B, H, S, D] tensor viewed as (D, S, B*H), innermost
first: a box that runs past row S of one head is zero-filled by the copy engine (and those
bytes still count toward the mbarrier transaction), instead of reading the next head's rows
as a flat 2-D [B*H*S, D] map would (the harness's NaN poison would then reach P.V as 0*NaN).

Needs the NVIDIA driver (a GPU machine); on a CPU box every encode raises one RuntimeError.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from harness.toolchain import counter

# cuda.h enum values (CUDA 12/13)
_DT_FLOAT16 = 6                      # CU_TENSOR_MAP_DATA_TYPE_FLOAT16
_INTERLEAVE_NONE = 0
_SWIZZLE_128B = 3                    # CU_TENSOR_MAP_SWIZZLE_128B
_L2_PROMOTION_128B = 2               # CU_TENSOR_MAP_L2_PROMOTION_L2_128B
_OOB_FILL_ZERO = 0                   # CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE: out-of-bounds reads give 0

BOX_COLS = 64                        # halves: the 128-byte swizzle allows an inner box of <= 128 bytes
MAX_BOX_ROWS = 256                   # the copy engine's limit per box dimension

# 16 x u64 = 128 bytes, the size of CUtensorMap and of the kernel's TmaDesc.
TMA_DESC_DTYPE = np.dtype({"names": ["opaque"], "formats": [(np.uint64, (16,))]})
assert TMA_DESC_DTYPE.itemsize == 128


@functools.lru_cache(maxsize=1)
def _driver():
    """libcuda with cuTensorMapEncodeTiled's prototype set, initialised once."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise RuntimeError("TMA tensor maps need the NVIDIA driver: libcuda.so.1 not found (no GPU on this machine)") from None
    lib.cuInit.argtypes = [ctypes.c_uint]
    lib.cuInit.restype = ctypes.c_int
    fn = lib.cuTensorMapEncodeTiled
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p,                    # CUtensorMap* (64-byte aligned)
                   ctypes.c_int,                       # data type
                   ctypes.c_uint32,                    # rank
                   ctypes.c_void_p,                    # global address
                   ctypes.POINTER(ctypes.c_uint64),    # globalDim[rank]
                   ctypes.POINTER(ctypes.c_uint64),    # globalStrides[rank-1] (bytes, dims 1..)
                   ctypes.POINTER(ctypes.c_uint32),    # boxDim[rank]
                   ctypes.POINTER(ctypes.c_uint32),    # elementStrides[rank]
                   ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]   # interleave, swizzle, L2, OOB fill
    err = lib.cuInit(0)
    if err != 0:
        raise RuntimeError(f"TMA tensor maps need the NVIDIA driver: cuInit failed ({_error_name(lib, err)})")
    return lib


def _error_name(lib, err: int) -> str:
    name = ctypes.c_char_p()
    try:
        lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        if lib.cuGetErrorName(err, ctypes.byref(name)) == 0 and name.value:
            return f"{name.value.decode()} = {err}"
    except AttributeError:
        pass
    return f"CUresult {err}"


def _aligned_u64(n: int, align: int = 64) -> np.ndarray:
    """n uint64 in a NumPy buffer whose address is a multiple of `align` (the encoder's demand)."""
    raw = np.zeros(n + align // 8, dtype=np.uint64)
    off = (-raw.ctypes.data % align) // 8
    return raw[off:off + n]


class TiledMap:
    """The tensor map of one [B, H, S, D] fp16 geometry (see encode_bhsd), ready to encode for
    any device address: the dims, strides and box are built once, so an encode is one driver
    call (forward() re-encodes Q, K and V in place in its launch block when a pointer changes)."""

    def __init__(self, BH: int, S: int, D: int, box_rows: int):
        if D % BOX_COLS or D <= 0:
            raise ValueError(f"head dim {D} is not a multiple of {BOX_COLS} (the box is 64 halves wide)")
        if not 1 <= box_rows <= MAX_BOX_ROWS:
            raise ValueError(f"box_rows {box_rows} outside 1..{MAX_BOX_ROWS}")
        if BH <= 0 or S <= 0:
            raise ValueError(f"empty tensor: B*H = {BH}, S = {S}")
        self.geometry = (BH, S, D, box_rows)
        self._dims = (ctypes.c_uint64 * 3)(D, S, BH)
        self._strides = (ctypes.c_uint64 * 2)(D * 2, S * D * 2)
        self._box = (ctypes.c_uint32 * 3)(BOX_COLS, box_rows, 1)
        self._elem = (ctypes.c_uint32 * 3)(1, 1, 1)

    def encode_into(self, addr: int, ptr: int) -> None:
        """Write the 128 bytes of the map of the tensor at device address `ptr` at host address
        `addr` (128-byte aligned)."""
        if ptr % 16:
            raise ValueError(f"tensor address {ptr:#x} is not 16-byte aligned (TMA needs it)")
        lib = _driver()
        err = lib.cuTensorMapEncodeTiled(addr, _DT_FLOAT16, 3, ctypes.c_void_p(ptr), self._dims, self._strides,
                                         self._box, self._elem, _INTERLEAVE_NONE, _SWIZZLE_128B,
                                         _L2_PROMOTION_128B, _OOB_FILL_ZERO)
        if err != 0:
            BH, S, D, rows = self.geometry
            raise RuntimeError(f"cuTensorMapEncodeTiled failed ({_error_name(lib, err)}) for [BH={BH}, S={S}, D={D}] "
                               f"box {BOX_COLS}x{rows} at {ptr:#x}")


def encode_bhsd(ptr: int, BH: int, S: int, D: int, box_rows: int) -> np.ndarray:
    """The tensor map of a contiguous fp16 [B, H, S, D] tensor at device address `ptr`, as the
    kernel's `const __grid_constant__ TmaDesc` argument: a NumPy structured value of 128 bytes
    (shape (1,), dtype TMA_DESC_DTYPE; pass it in the kernel's argument tuple as is).

    Map: 3-D (D, S, B*H) innermost first, row stride D*2 bytes, head stride S*D*2 bytes,
    128-byte swizzle, L2 promotion 128 B, out-of-bounds elements read as zero (per head).
    Box: 64 columns (128 bytes, the most a 128-byte-swizzled box may span) x box_rows rows x 1
    head. The kernel uses box_rows = BLOCK_M for Q and BLOCK_N for K and V.

    How the kernel must issue it: one tile of box_rows rows x D columns of head bh is D/64 boxes,
    `cp.async.bulk.tensor.3d` at coordinates {64*p, row0, bh} for panel p = 0 .. D/64-1 (so a
    D=128 tile is TWO boxes, columns 0-63 and 64-127), each landing in its own 1024-byte-aligned
    shared-memory panel of box_rows*128 bytes (panel p at +p*box_rows*128 bytes), swizzled in
    128-byte rows with the pattern repeating every 8 rows. Every box completes box_rows*64*2
    transaction bytes on its mbarrier, the tail box included (rows >= S are zero-filled).
    """
    m = TiledMap(BH, S, D, box_rows)
    out = _aligned_u64(16, 128)     # cuda.h: CUtensorMap is alignas(64) (CUDA 12) / alignas(128) (CUDA 13)
    m.encode_into(out.ctypes.data, ptr)
    return out.copy().view(TMA_DESC_DTYPE)


def mapped_buffers(entry) -> tuple:
    """The buffers a registry entry's trailing parameters map ("tma:Q" -> "Q"), in order (a
    "counter" after them is no map); both
    launch paths (harness/run/gpu.py, harness/api.py) derive the maps from this and box_rows."""
    out = []
    for p in entry.trailing_params:
        if p == counter.PARAM:        # not a map: harness/toolchain/counter.py
            continue
        kind, _, name = p.partition(":")
        if kind != "tma" or not name:
            raise ValueError(f"{entry.name}: unknown trailing parameter {p!r}")
        out.append(name)
    return tuple(out)


def box_rows(buffer: str, q_rows: int, block_n: int) -> int:
    """A map's box: q_rows rows of Q (the variant's q_box_rows: a whole block_m-row tile, or one
    warpgroup's 64 rows where the entry loads them apart), block_n of K or V."""
    return q_rows if buffer == "Q" else block_n


def null_desc() -> np.ndarray:
    """An all-zero descriptor for a tensor the mode does not read (the kernel never touches it).
    Needs no driver."""
    return np.zeros(1, dtype=TMA_DESC_DTYPE)


def descs_for(q=None, k=None, v=None, *, block_m: int, block_n: int) -> tuple:
    """(tmQ, tmK, tmV) for CuPy [B, H, S, D] fp16 arrays, null where an array is None: the three
    trailing arguments of kernels/flashcore_hopper.cu (Q boxes of block_m rows, K/V of block_n)."""
    def one(x, rows):
        if x is None:
            return null_desc()
        B, H, S, D = x.shape
        if x.dtype != np.float16 or not x.flags.c_contiguous:
            raise ValueError("TMA maps are encoded for contiguous fp16 [B, H, S, D] arrays")
        return encode_bhsd(int(x.data.ptr), B * H, S, D, rows)
    return one(q, block_m), one(k, block_n), one(v, block_n)
