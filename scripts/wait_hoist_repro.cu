// scripts/wait_hoist_repro.cu -- the smallest kernel that shows why version 4 (flashcore_hopper_ov)
// ran its exp2s after P(j).V(j) had finished instead of under it (kernels/NOTES.md, "part 2 version
// 4, second build"), and the fix the kernel uses (hopper/ptx.cuh, hold_wait_below).
// One warpgroup, version 4's loop shape without masking, shuffles, barriers or a producer: issue
// S(j+1) = Q.K^T (m64n128k16) and O += P(j).V (8 x m64n64k16, P from registers), wait_group 1,
// 64 exp2s of S(j+1) and their sum, wait_group 0, O *= l, pack P(j+1). Shared memory is never
// written (the numbers are garbage): only the SASS matters.
//
//   NVD=.venv/lib/python3.11/site-packages/nvidia/cu13/bin/nvdisasm
//   nvcc -cubin -arch=sm_90a -std=c++17 -ftz=true -Ikernels [-DPIN | -DPIN_LT0 | ...] \
//        -o t.cubin scripts/wait_hoist_repro.cu
//   $NVD -c t.cubin | grep -E 'DEPBAR|MUFU.EX2|STS'
// and count the MUFU.EX2 between `WARPGROUP.DEPBAR.LE gsb0, 0x1` and `... 0x0` (64 = all of them).
//
// Measured (nvcc 13.0.88, CPU box; EX2s of the loop between the two waits, of 64):
//   (none)      10   the wait sits after the last independent FMUL, where only MUFU-throughput
//                    and FADD-latency stalls are left
//   -DNO_EX2     -   no exp2 (p = s*c + 1): the wait sits after the last independent FFMA, where
//                    only the serial FADD chain of the sum is left
//   -DSERIAL     3   each exp2 reads the previous sum: the wait sits at the first MUFU-latency
//                    stall, 8 instructions after wait_group 1
//   -DNO_OFENCE  10  without the asm("" : "+f"(o)) fences on O: the same SASS (empty asm never
//                    reaches ptxas)
//   -DNO_RESCALE 10  no O *= l after the wait: nothing after it touches an in-flight register,
//                    and the wait still comes early
//   -DPIN_STG    10  a global store of the sum before the wait: does not hold it
//   -DPIN_LT0    10  a shared store predicated on "sum < 0": ptxas proves that false for a sum of
//                    ex2 results and deletes the store
//   -DPIN        64  a shared store predicated on "sum is NaN" (never true for finite scores):
//                    the wait stays below it, so below every exp2 (FSETP.NAN, @P STS, DEPBAR)
//   -DPIN_ALWAYS 64  the same store unpredicated
// So ptxas issues the wait in the first slot where every other ready instruction waits on a latency,
// as if WARPGROUP.DEPBAR cost nothing (it blocks the warp until P.V completes); no register hazard
// puts it there. A shared-memory store is not moved across it, which gives the wait an input.
#include "hopper/ptx.cuh"
#include "hopper/wgmma.cuh"
#define NF 16   // 128 keys: S is float[16][4]
#define DF 8    // D = 64:   O is float[8][4]

__device__ __forceinline__ float ex2(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }
__device__ __forceinline__ u32 pk(float a, float b) { __half2 h = __floats2half2_rn(a, b); return *reinterpret_cast<u32*>(&h); }

extern "C" __global__ void __launch_bounds__(128, 1) wait_hoist_repro(float* out, int n, float c) {
    extern __shared__ __align__(1024) unsigned char sm[];
    __shared__ float pin_word;
    const u64 dq = smem_desc(sm, 16, 1024), dk = smem_desc(sm + 16384, 16, 1024), dv = smem_desc(sm + 32768, 16384, 1024);
    float o[DF][4], s[NF][4];
    for (int i = 0; i < DF; ++i) for (int e = 0; e < 4; ++e) o[i][e] = 0.f;
    wgmma_fence(); wgmma_ss_zero(s, dq, dk); wgmma_commit(); wgmma_wait<0>(); reg_fence(s);
    float l = 0.f;
    for (int j = 0; j < n; ++j) {
        u32 a[NF / 2][4];
        for (int kk = 0; kk < NF / 2; ++kk) {
            a[kk][0] = pk(s[2 * kk][0], s[2 * kk][1]);     a[kk][1] = pk(s[2 * kk][2], s[2 * kk][3]);
            a[kk][2] = pk(s[2 * kk + 1][0], s[2 * kk + 1][1]); a[kk][3] = pk(s[2 * kk + 1][2], s[2 * kk + 1][3]);
        }
        reg_fence(a);
#ifndef NO_OFENCE
        reg_fence(o);
#endif
        float sn[NF][4];
        wgmma_fence();
        wgmma_ss_zero(sn, dq + j, dk);                       // S(j+1)
        wgmma_commit();
        for (int kk = 0; kk < NF / 2; ++kk) wgmma_rs_acc(o, a[kk], dv + 128 * kk);   // O += P(j).V(j)
        wgmma_commit();
        wgmma_wait<1>();                                     // S(j+1) landed, P(j).V(j) in flight
        reg_fence(sn);
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < NF; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
#if defined(NO_EX2)
                sn[i][e] = sn[i][e] * c + 1.f;
#elif defined(SERIAL)
                sn[i][e] = ex2(sn[i][e] * c + sum);
#else
                sn[i][e] = ex2(sn[i][e] * c);
#endif
                sum += sn[i][e];
            }
        l = l * c + sum;
#if defined(PIN)
        asm volatile("{\n.reg .pred p;\nsetp.nan.f32 p, %1, %1;\n@p st.shared.f32 [%0], %1;\n}\n"
                     :: "r"(smem_u32(&pin_word)), "f"(sum) : "memory");
#elif defined(PIN_LT0)
        asm volatile("{\n.reg .pred p;\nsetp.lt.f32 p, %1, 0f00000000;\n@p st.shared.f32 [%0], %1;\n}\n"
                     :: "r"(smem_u32(&pin_word)), "f"(sum) : "memory");
#elif defined(PIN_ALWAYS)
        asm volatile("st.shared.f32 [%0], %1;" :: "r"(smem_u32(&pin_word)), "f"(sum) : "memory");
#elif defined(PIN_STG)
        asm volatile("st.global.f32 [%0], %1;" :: "l"(out + 4096 + threadIdx.x), "f"(sum) : "memory");
#endif
        wgmma_wait<0>();                                     // P(j).V(j) retired
        reg_fence(o);
#ifndef NO_RESCALE
        for (int i = 0; i < DF; ++i) for (int e = 0; e < 4; ++e) o[i][e] *= l;
#endif
        for (int i = 0; i < NF; ++i) for (int e = 0; e < 4; ++e) s[i][e] = sn[i][e];
    }
    for (int i = 0; i < DF; ++i) for (int e = 0; e < 4; ++e) out[threadIdx.x * 32 + i * 4 + e] = o[i][e];
    out[threadIdx.x] += l + s[3][1];
}
