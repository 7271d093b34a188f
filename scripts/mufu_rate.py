"""The exp2 unit's rate on this GPU, measured: clocks per warp-wide MUFU.EX2 on one SMSP.

The softmax's floor is its exp2s (kernels/NOTES.md): 64 per thread per 128-key tile at D = 128.
Whether one costs 8 clocks of an SMSP (16 per SM per clock, FA3 paper's 3.9 TFLOPS on an H100)
or more decides whether a 1,200-clock softmax phase is near its floor or far from it. Each warp
runs ILP independent chains x = ex2(-x) (ex2.approx.ftz.f32, the kernel's fast_exp2), alone or
with an FFMA and an FADD per exp2 as the softmax has them; blocks of 4 * W warps put W warps on
each SMSP of every SM. Printed: clocks per warp-instruction of MUFU.EX2 per SMSP.

    python scripts/mufu_rate.py
"""

from __future__ import annotations

import sys

import numpy as np

ITERS = 2048
ILP = 16
SOURCE = r"""
extern "C" __global__ void mufu_rate(float* out, long long* clocks, int iters) {
    float x[ILP], acc = 0.f;
#pragma unroll
    for (int i = 0; i < ILP; ++i) x[i] = 0.25f + 0.01f * (threadIdx.x % 32) + 0.001f * i;
    __syncthreads();
    long long t0 = clock64();
    for (int it = 0; it < iters; ++it) {
#pragma unroll
        for (int i = 0; i < ILP; ++i) {
            float a = x[i];
            float y;
#if MIX
            a = fmaf(a, -0.72134752f, 0.125f);                  // the softmax's FFMA (x*sl2 - m*sl2)
            asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(a));
#else
            asm volatile("{\n.reg .f32 t;\nneg.f32 t, %1;\nex2.approx.ftz.f32 %0, t;\n}" : "=f"(y) : "f"(a));
#endif
#if MIX
            acc += y;                                           // its row-sum FADD
#endif
            x[i] = y;
        }
    }
    long long t1 = clock64();
    float s = acc;
#pragma unroll
    for (int i = 0; i < ILP; ++i) s += x[i];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
    if (threadIdx.x % 32 == 0) clocks[blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32] = t1 - t0;
}
"""


def measure(cp, fn, sms: int, warps_per_smsp: int) -> float:
    threads = 128 * warps_per_smsp              # 4 SMSPs per SM, warps spread over them
    out = cp.empty(sms * threads, dtype=cp.float32)
    clocks = cp.zeros(sms * threads // 32, dtype=cp.int64)
    for _ in range(2):                          # the second launch is read
        fn((sms,), (threads,), (out, clocks, np.int32(ITERS)))
    cp.cuda.Device().synchronize()
    per_warp = float(np.median(cp.asnumpy(clocks))) / (ITERS * ILP)   # clocks per MUFU of one warp
    return per_warp / warps_per_smsp            # per MUFU warp-instruction on one SMSP


def main() -> int:
    import cupy as cp
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    fns = {mix: cp.RawModule(code=SOURCE, options=(f"-DILP={ILP}", f"-DMIX={mix}", "-ftz=true")).get_function("mufu_rate")
           for mix in (0, 1)}
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    print(f"{name}, {sms} SMs: clocks per warp-wide MUFU.EX2 on one SMSP ({ILP} chains per warp, {ITERS} steps)")
    for mix, fn in fns.items():
        row = [f"{measure(cp, fn, sms, w):.2f}" for w in (1, 2, 4)]
        print(f"  {'ex2 + FFMA + FADD' if mix else 'ex2 alone':18s} 1, 2, 4 warps per SMSP: {', '.join(row)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
