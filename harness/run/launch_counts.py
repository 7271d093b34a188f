"""The launch side's bookkeeping on the device, in one small raw module: the poison fill, the
race check's count of elements that moved between two launches, and the count of elements
written outside the launched window.

Why not CuPy's own `full`, `!=`, `~` and `count_nonzero`: each is a generated kernel that
NVRTC compiles on a machine's first use, per dtype, and count_nonzero goes through CUB, whose
passes are specialised per array size. Profiled on the H200 at cd5c7f8 (`python
scripts/profile_cold.py --what diagnose`, results/logs/profile-cold-cd5c7f8-h200.log): a fresh
machine's first default `diagnose` spent 19 s of its 26 s compiling ten CUB count_nonzero
passes, one after another on the main thread, and 1.3 s more on eight elementwise kernels.
This module has no include, compiled once in 0.15 s there (profile-cold-52fd77e-h200.log),
into a cubin of the cubin cache that later processes load (prebuild.source_cubin).

Bits, not values: the poison is a NaN (metrics.POISON_BITS), and a kernel's output is
compared with itself bit for bit, so every kernel here works on the unsigned view.
"""

from __future__ import annotations

import numpy as np

from harness.check import metrics as met
from harness.toolchain.device import cupy as _cupy

_SOURCE = r"""
typedef unsigned long long u64;

// One count per warp: a thread's own count, summed down the warp, one atomicAdd by lane 0.
__device__ __forceinline__ void add_warp(u64 *count, u64 mine) {
    for (int d = 16; d > 0; d /= 2) mine += __shfl_down_sync(0xffffffffu, mine, d);
    if ((threadIdx.x & 31) == 0 && mine) atomicAdd(count, mine);
}

template <typename T>
__device__ void fill(T *out, T value, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = value;
}

template <typename T>
__device__ void count_ne(const T *a, const T *b, u64 n, u64 *count) {
    u64 mine = 0;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        mine += a[i] != b[i];
    add_warp(count, mine);
}

// Elements of a [..., n_rows, row_len] array that no longer hold the poison, with their row
// (index / row_len) % n_rows outside [row0, row1).
template <typename T>
__device__ void count_written_outside(const T *a, T poison, u64 n, u64 row_len, u64 n_rows, u64 row0,
                                      u64 row1, u64 *count) {
    u64 mine = 0;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 row = (i / row_len) % n_rows;
        mine += a[i] != poison && (row < row0 || row >= row1);
    }
    add_warp(count, mine);
}

#define FOR_BITS(NAME, T)                                                                         \
extern "C" __global__ void fill_##NAME(T *out, T value, u64 n) { fill(out, value, n); }           \
extern "C" __global__ void count_ne_##NAME(const T *a, const T *b, u64 n, u64 *count) {           \
    count_ne(a, b, n, count); }                                                                   \
extern "C" __global__ void count_written_outside_##NAME(const T *a, T poison, u64 n, u64 row_len, \
        u64 n_rows, u64 row0, u64 row1, u64 *count) {                                             \
    count_written_outside(a, poison, n, row_len, n_rows, row0, row1, count); }

FOR_BITS(u16, unsigned short)
FOR_BITS(u32, unsigned int)
"""
_NAME = {np.dtype(np.uint16): "u16", np.dtype(np.uint32): "u32"}
_THREADS = 256
_MAX_BLOCKS = 4096        # grid-stride beyond: enough to fill any current GPU
_module = None


def _load():
    """The module, from its cubin in the cubin cache (built on this machine's first use: no
    NVRTC in a worker after that, harness/toolchain/prebuild.source_cubin), else through CuPy
    where no cubin can be made for this device (an arch NVRTC cannot target, no cache dir)."""
    cp = _cupy()
    try:
        from harness.toolchain import prebuild
        from harness.toolchain.device import require_gpu
        return cp.RawModule(path=str(prebuild.source_cubin(_SOURCE, "launch_counts", require_gpu()["arch"],
                                                           ("-std=c++17",))))
    except Exception:   # any failure of the fast path leaves the path that always worked
        return cp.RawModule(code=_SOURCE, options=("-std=c++17",))


def _fn(kind: str, bits_dtype):
    global _module
    if _module is None:
        _module = _load()
    return _module.get_function(f"{kind}_{_NAME[np.dtype(bits_dtype)]}")


def _grid(n: int) -> tuple:
    return (max(1, min(_MAX_BLOCKS, -(-n // _THREADS))),)


def _bits(a):
    """The unsigned view of a contiguous fp16/fp32 device array."""
    if not a.flags.c_contiguous:
        raise ValueError("launch_counts works on contiguous arrays")
    return a.view(met.UINT_OF[a.dtype])


def poisoned(shape_tuple, dtype):
    """A device array of shape_tuple filled with the poison NaN of metrics.POISON_BITS."""
    cp = _cupy()
    dtype = np.dtype(dtype)
    bits = cp.empty(shape_tuple, dtype=met.UINT_OF[dtype])
    if bits.size:
        _fn("fill", bits.dtype)(_grid(bits.size), (_THREADS,), (bits, met.POISON_BITS[dtype], np.uint64(bits.size)))
    return bits.view(dtype)


def _count(kind: str, bits, *args) -> int:
    cp = _cupy()
    count = cp.zeros(1, dtype=np.uint64)        # zeros: a memset, no kernel
    if bits.size:
        _fn(kind, bits.dtype)(_grid(bits.size), (_THREADS,), (bits, *args, count))
    return int(count.get()[0])


def count_moved(a, b) -> int:
    """Elements whose bits differ between two contiguous arrays of one shape and dtype."""
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"count_moved: {a.shape} {a.dtype} against {b.shape} {b.dtype}")
    ba, bb = _bits(a), _bits(b)
    return _count("count_ne", ba, bb, np.uint64(ba.size))


def count_written_outside(out, row0: int, n: int) -> int:
    """Elements of a contiguous [B, H, Sq, ...] output that are no longer poison outside rows
    [row0, row0 + n): the contract says a launch writes its window only."""
    bits = _bits(out)
    n_rows = out.shape[2]
    row_len = int(np.prod(out.shape[3:], dtype=np.int64)) if out.ndim > 3 else 1
    return _count("count_written_outside", bits, met.POISON_BITS[out.dtype], np.uint64(bits.size),
                  np.uint64(row_len), np.uint64(n_rows), np.uint64(row0), np.uint64(row0 + n))


def copy(a):
    """A device copy of a contiguous array by memcpy (CuPy's copy may launch a kernel)."""
    cp = _cupy()
    out = cp.empty_like(a)
    if a.nbytes:
        out.data.copy_from_device(a.data, a.nbytes)
    return out
