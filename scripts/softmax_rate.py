"""How long the kernels' own softmax of one 128-key tile takes on an SMSP with nothing else on it.

PHASE_CLOCKS (scripts/phase_clocks.py) reads the sm_90a kernel's softmax phase at 1,183-1,557
clocks per tile at D = 128 (version 6), and at 1,258-1,390 with the other warpgroup's softmax held
off by a named-barrier turn (version 14): 2-3x the 528 clocks its 66 MUFU.EX2 take at 8 clocks
each (scripts/mufu_rate.py). This times softmax_update of kernels/common/softmax.cuh itself, the
same code on the same [16][4] register tile, in a loop, with one or two warps per SMSP and no
tensor-core work, GEMM issue or barrier beside it. Close to 528: the code is at its floor and the
kernel's phase is long because of what shares the SMSP with it. Far above: the code's own
schedule (its dependency chains under in-order issue) is the cost.

Each step first makes fresh scores from the last P (one FFMA per score, counted in the
"FFMA only" row, timed alone), then runs the update; RESCALE=1 adds O's rescale by alpha
(64 FMUL at D = 128) and PACK=1 P's fp16 packing (32 F2FP), the work version 6 runs in phases
of their own; the last two builds split the row max and sum into SOFTMAX_ILP chains (version 7).

    python scripts/softmax_rate.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ITERS = 512
COMMON = Path(__file__).resolve().parent.parent / "kernels" / "common"
SOURCE = r"""
#include "softmax.cuh"
#include "pack_p.cuh"
#define NF 16                                   // n8 tiles of S per thread: 128 keys
#define DF 16                                   // n8 tiles of O per thread: D = 128
extern "C" __global__ void softmax_rate(float* out, long long* clocks, int iters, float sl2) {
    float s[NF][4], o[DF][4];
    const float lane = 0.01f * (threadIdx.x % 32);
#pragma unroll
    for (int i = 0; i < NF; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) { s[i][e] = lane + 0.07f * i - 0.3f * e; o[i][e] = 1.f; }
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
    unsigned packed = 0u;
    __syncthreads();
    long long t0 = clock64();
    for (int it = 0; it < iters; ++it) {
#pragma unroll
        for (int i = 0; i < NF; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[i][e] = fmaf(s[i][e], -0.75f, lane - 0.11f * e);   // fresh scores (bounded)
#if UPDATE
        float alpha[2];
        softmax_update(s, m, l, alpha, sl2, it == 0);
#if RESCALE
        rescale_o(o, alpha);
#endif
#if PACK
        unsigned a[NF / 2][4];
        pack_p(a, s);
#pragma unroll
        for (int k = 0; k < NF / 2; ++k) packed ^= a[k][0] ^ a[k][1] ^ a[k][2] ^ a[k][3];
#endif
#endif
    }
    long long t1 = clock64();
    float acc = l[0] + l[1] + __uint_as_float(packed & 0x3f7fffffu);
#if UPDATE
    acc += m[0] + m[1];                         // -inf until the first update
#endif
#pragma unroll
    for (int i = 0; i < NF; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc += s[i][e] + o[i][e];
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
    if (threadIdx.x % 32 == 0) clocks[blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32] = t1 - t0;
}
"""
# (name, UPDATE, RESCALE, PACK, SOFTMAX_ILP)
BUILDS = (("FFMA only (fresh scores)", 0, 0, 0, 1), ("+ softmax_update", 1, 0, 0, 1),
          ("+ O rescale (64 FMUL)", 1, 1, 0, 1), ("+ P pack (32 F2FP)", 1, 1, 1, 1),
          ("softmax_update, 2 chains", 1, 0, 0, 2), ("softmax_update, 4 chains", 1, 0, 0, 4))


def options(update: int, rescale: int, pack: int, ilp: int = 1) -> tuple:
    from harness.toolchain.compiler import find_cuda_include
    return (f"-I{find_cuda_include()}", f"-I{COMMON}", "-std=c++17",
            f"-DUPDATE={update}", f"-DRESCALE={rescale}", f"-DPACK={pack}", f"-DSOFTMAX_ILP={ilp}")


def measure(cp, fn, sms: int, warps_per_smsp: int) -> float:
    """Median clocks per step of one warp, with warps_per_smsp warps on each SMSP of every SM."""
    threads = 128 * warps_per_smsp
    out = cp.empty(sms * threads, dtype=cp.float32)
    clocks = cp.zeros(sms * threads // 32, dtype=cp.int64)
    sl2 = np.float32(1.4426950408889634 / np.sqrt(128.0))
    for _ in range(2):                          # the second launch is read
        fn((sms,), (threads,), (out, clocks, np.int32(ITERS), sl2))
    cp.cuda.Device().synchronize()
    assert bool(cp.isfinite(out).all()), "the timed loop produced non-finite values"
    return float(np.median(cp.asnumpy(clocks))) / ITERS


def main() -> int:
    import cupy as cp
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    print(f"{name}, {sms} SMs: clocks per 128-key tile of one warp (D = 128 register tile), "
          f"median over warps, {ITERS} steps; the MUFU floor is 66 x 8 = 528")
    for label, *build in BUILDS:
        fn = cp.RawModule(code=SOURCE, options=options(*build) + ("-ftz=true",)).get_function("softmax_rate")
        row = [f"{measure(cp, fn, sms, w):.0f}" for w in (1, 2)]
        print(f"  {label:26s} 1, 2 warps per SMSP: {', '.join(row)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
