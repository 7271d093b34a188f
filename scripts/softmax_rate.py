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

The second table puts the same softmax (warpgroup 0, one warp per SMSP) beside warpgroup 1 of
the same block (the other warp on each SMSP, as the kernel's other consumer warpgroup), which is
idle, issues FFMAs, or issues the kernel's GEMM pattern: a group of eight m64n128k16 HGMMAs from
shared memory, committed, with the previous group waited for (wait_group 1), so that the HGMMAs
queue for a busy tensor pipe as the kernel's "issue QK(j+1)+PV(j)" phase does (600-1,000 clocks).

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
BESIDE = r"""
#include "softmax.cuh"
#include "wgmma.cuh"
#define NF 16
// Warpgroup 0: the softmax loop, timed. Warpgroup 1: COMPANION 0 nothing, 1 FFMAs, 2 groups of
// GROUP HGMMAs (IN_FLIGHT left at each wait), until warpgroup 0 is done (a shared flag).
extern "C" __global__ void __launch_bounds__(256, 1) softmax_beside(float* out, long long* clocks, int iters, float sl2) {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char* smem = (unsigned char*)(((size_t)smem_raw + 1023) & ~(size_t)1023);
    __shared__ volatile int done;
    for (int i = threadIdx.x; i < (64 + 128) * 64 / 2; i += blockDim.x) ((u32*)smem)[i] = 0x3c003c00u;  // fp16 ones
    if (threadIdx.x == 0) done = 0;
    __syncthreads();
    const int wg = threadIdx.x / 128;
    const float lane = 0.01f * (threadIdx.x % 32);
    if (wg == 0) {
        float s[NF][4];
#pragma unroll
        for (int i = 0; i < NF; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[i][e] = lane + 0.07f * i - 0.3f * e;
        float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
        long long t0 = clock64();
        for (int it = 0; it < iters; ++it) {
#pragma unroll
            for (int i = 0; i < NF; ++i)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[i][e] = fmaf(s[i][e], -0.75f, lane - 0.11f * e);
            float alpha[2];
            softmax_update(s, m, l, alpha, sl2, it == 0);
        }
        long long t1 = clock64();
        asm volatile("bar.sync 1, 128;" ::: "memory");     // warpgroup 0 only
        if (threadIdx.x == 0) done = 1;
        float acc = l[0] + l[1] + m[0] + m[1];
#pragma unroll
        for (int i = 0; i < NF; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc += s[i][e];
        out[blockIdx.x * 256 + threadIdx.x] = acc;
        if (threadIdx.x % 32 == 0) clocks[blockIdx.x * 4 + threadIdx.x / 32] = t1 - t0;
    } else {
        float acc = 0.f;
#if COMPANION == 1
        float x[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) x[i] = lane + i;
        while (!done) {
#pragma unroll
            for (int r = 0; r < 16; ++r)
#pragma unroll
                for (int i = 0; i < 8; ++i) x[i] = fmaf(x[i], 0.999f, 0.001f);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) acc += x[i];
#elif COMPANION == 2
        float d[NF][4];
        const u64 da = smem_desc(smem, 16, 1024), db = smem_desc(smem + 64 * 128, 16, 1024);
        wgmma_fence();
        wgmma_ss_zero(d, da, db);
        wgmma_commit();
        int groups = 0;
        for (;;) {
            // the exit must be the whole warpgroup's (wgmma is warpgroup-collective)
            u32 stop;
            asm volatile("{\n.reg .pred p, q;\nsetp.ne.u32 q, %1, 0;\nbarrier.red.or.pred p, 2, 128, q;\n"
                         "selp.u32 %0, 1, 0, p;\n}" : "=r"(stop) : "r"((u32)done) : "memory");
            if (stop) break;
            wgmma_fence();
#pragma unroll
            for (int k = 0; k < GROUP; ++k) wgmma_ss_acc(d, smem_desc_plus(da, 32 * (k % 4)), smem_desc_plus(db, 32 * (k % 4)));
            wgmma_commit();
            wgmma_wait<IN_FLIGHT>();
            ++groups;
        }
        wgmma_wait<0>();
        reg_fence(d);
        if (threadIdx.x == 128) clocks[gridDim.x * 4 + blockIdx.x] = (long long)groups * GROUP;   // HGMMAs issued
#pragma unroll
        for (int i = 0; i < NF; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc += d[i][e];
#endif
        out[blockIdx.x * 256 + threadIdx.x] = acc;
    }
}
"""
BESIDE_SMEM = 1024 + (64 + 128) * 64 * 2
# (COMPANION: 0 idle, 1 FFMAs, 2 HGMMAs; HGMMAs per group; groups left in flight at each wait)
COMPANIONS = ((0, 8, 1), (1, 8, 1), (2, 8, 1), (2, 8, 0), (2, 2, 0), (2, 1, 0), (2, 16, 1))
SL2 = np.float32(1.4426950408889634 / np.sqrt(128.0))   # the exp2 multiplier at D = 128


def companion_label(companion: int, group: int, in_flight: int) -> str:
    if companion < 2:
        return ("idle", "FFMA stream")[companion]
    return f"HGMMA groups ({group} x m64n128k16, wait_group {in_flight})"

# (name, UPDATE, RESCALE, PACK, SOFTMAX_ILP)
BUILDS = (("FFMA only (fresh scores)", 0, 0, 0, 1), ("+ softmax_update", 1, 0, 0, 1),
          ("+ O rescale (64 FMUL)", 1, 1, 0, 1), ("+ P pack (32 F2FP)", 1, 1, 1, 1),
          ("softmax_update, 2 chains", 1, 0, 0, 2), ("softmax_update, 4 chains", 1, 0, 0, 4))


def _includes() -> tuple:
    from harness.toolchain.compiler import find_cuda_include
    return (f"-I{find_cuda_include()}", f"-I{COMMON}", f"-I{COMMON.parent / 'hopper'}", "-std=c++17")


def options(update: int, rescale: int, pack: int, ilp: int = 1) -> tuple:
    return _includes() + (f"-DUPDATE={update}", f"-DRESCALE={rescale}", f"-DPACK={pack}", f"-DSOFTMAX_ILP={ilp}")


def beside_options(companion: int, group: int = 8, in_flight: int = 1) -> tuple:
    return _includes() + (f"-DCOMPANION={companion}", f"-DGROUP={group}", f"-DIN_FLIGHT={in_flight}")


def _run(cp, fn, sms: int, threads: int, clock_words: int, shared_mem: int = 0):
    """Two launches of one block per SM (the second is read); the clocks array, on the host."""
    out = cp.empty(sms * threads, dtype=cp.float32)
    clocks = cp.zeros(clock_words, dtype=cp.int64)
    for _ in range(2):
        fn((sms,), (threads,), (out, clocks, np.int32(ITERS), SL2), shared_mem=shared_mem)
    cp.cuda.Device().synchronize()
    assert bool(cp.isfinite(out).all()), "the timed loop produced non-finite values"
    return cp.asnumpy(clocks)


def measure_beside(cp, fn, sms: int) -> tuple:
    """(median clocks per step of warpgroup 0's warps, HGMMAs warpgroup 1 issued per 1,000 of
    those clocks), one block of two warpgroups per SM."""
    fn.max_dynamic_shared_size_bytes = BESIDE_SMEM
    c = _run(cp, fn, sms, 256, sms * 5, BESIDE_SMEM)
    loop = float(np.median(c[:sms * 4]))
    return loop / ITERS, 1000.0 * float(np.median(c[sms * 4:])) / loop


def measure(cp, fn, sms: int, warps_per_smsp: int) -> float:
    """Median clocks per step of one warp, with warps_per_smsp warps on each SMSP of every SM."""
    threads = 128 * warps_per_smsp
    return float(np.median(_run(cp, fn, sms, threads, sms * threads // 32))) / ITERS


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
    print("softmax_update (warpgroup 0) beside warpgroup 1 of the same block, clocks per tile "
          "(one m64n128k16 HGMMA is 64 clocks of the SM's tensor pipe at 4,096 FLOP per clock: "
          "15.6 per 1,000 clocks keep it busy):")
    for companion in COMPANIONS:
        fn = cp.RawModule(code=BESIDE, options=beside_options(*companion) + ("-ftz=true", "-arch=sm_90a"),
                          ).get_function("softmax_beside")
        per_tile, rate = measure_beside(cp, fn, sms)
        print(f"  beside {companion_label(*companion):45s} {per_tile:5.0f}   (warpgroup 1: {rate:5.1f} HGMMAs per 1,000 clocks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
