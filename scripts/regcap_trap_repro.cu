// scripts/regcap_trap_repro.cu -- the smallest kernel that shows why flashcore_hopper_ws's consumer
// code stayed at the launch's 168 registers (kernels/NOTES.md, part 2: "the 168-register ceiling").
// A producer warpgroup (setmaxnreg.dec 24) and two consumer warpgroups (setmaxnreg.inc 240), 384
// threads, __launch_bounds__(384, 1): ptxas reports 168 registers (65536 / 384) either way. The
// consumers carry LIVE floats through a loop that polls a flag each iteration. With TRAP_IN_LOOP
// the poll is bounded and traps (as hopper/ptx.cuh's mbar_wait did); without it the poll spins.
//
//   NVD=.venv/lib/python3.11/site-packages/nvidia/cu13/bin/nvdisasm
//   nvcc -cubin -arch=sm_90a -Xptxas -v -DLIVE=200 [-DTRAP_IN_LOOP] -o t.cubin scripts/regcap_trap_repro.cu
//   $NVD -c t.cubin | grep -oE '\bR[0-9]+\b' | sort -V | tail -1
//
// Measured (nvcc 13.0.88, CPU box):
//   LIVE  no trap                 TRAP_IN_LOOP
//   150   0 spill, highest R155   0 spill, R157
//   160   -                       8 bytes spilled
//   170   -                       84 bytes spilled
//   180   -                       204 bytes spilled
//   200   0 spill, R205           368 bytes spilled (highest R235)
//   220   0 spill, R225           528 bytes spilled
// The same trap with 256 threads and no setmaxnreg (launch budget 255): LIVE 200, 0 spills.
// `trap; exit;` instead of __trap(): the same 368 bytes. A `break` out of the poll instead of the
// trap (the trap after the loop): 0 spills, R206 -- the fix kernels/flashcore_hopper.cu uses.
#ifndef LIVE
#define LIVE 200
#endif
__device__ __forceinline__ bool poll(unsigned* flag) { return *(volatile unsigned*)flag != 0; }

extern "C" __global__ void __launch_bounds__(384, 1) regcap_trap_repro(float* out, unsigned* flag, int n) {
    const int warp = threadIdx.x >> 5;
    if (warp >= 8) {                                   // the producer warpgroup
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;");
        if (threadIdx.x == 256) *flag = 1;
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;");
    float acc[LIVE];
#pragma unroll
    for (int i = 0; i < LIVE; ++i) acc[i] = out[threadIdx.x + 384 * i];
    for (int j = 0; j < n; ++j) {
#ifdef TRAP_IN_LOOP
        unsigned polls = 0;
        while (!poll(flag))
            if (++polls == (1u << 21)) __trap();
#else
        while (!poll(flag)) {
        }
#endif
#pragma unroll
        for (int i = 0; i < LIVE; ++i) acc[i] = acc[i] * acc[(i + 1) % LIVE] + 1.f;
    }
#pragma unroll
    for (int i = 0; i < LIVE; ++i) out[threadIdx.x + 384 * i] = acc[i];
}
