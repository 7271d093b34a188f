// kernels/common/util.cuh -- the scalar helpers both attention kernels use (the sm_80 mma.sync
// kernel flashcore_fused.cu and the sm_90a wgmma kernel flashcore_hopper.cu): the 32-bit type,
// the shared-memory address of a pointer, exp2, the reduction over the four lanes of a fragment
// row, and the two-element output store. One definition each, so the engines cannot drift apart
// in them (kernels/common/ holds the code whose arithmetic both kernels must share).
//
// Why the stage code can be shared at all (the layout every header of kernels/common/ assumes):
// a thread's scores s[nt][e] are row r + lane/4 + 8*(e/2) and key column nt*8 + 2*(lane%4) + (e%2)
// of its warp's 16-row slice. That is the mma.sync m16n8 C layout of the sm_80 kernel AND, per warp,
// the wgmma m64nN fp32 accumulator layout of the sm_90a kernel (warp i of a warpgroup holds rows
// 16i..16i+15). The headers are templates over the fragment count (the sm_80 kernel's N_FRAG
// tiles per 16-row fragment, the sm_90a kernel's BLOCK_N/8 per warp), not macros of one kernel.
//
// Included with #include "common/util.cuh" (relative to kernels/, found through the -I<kernels/>
// the harness passes; harness/toolchain/compiler.py kernel_sources hashes it into the cache key).
// kernels/hopper/ptx.cuh reaches it as "../common/util.cuh": hence include guards in kernels/common/,
// not #pragma once alone (two spellings of one path).
#ifndef FLASHCORE_COMMON_UTIL_CUH
#define FLASHCORE_COMMON_UTIL_CUH
#include <cuda_fp16.h>

typedef unsigned int u32;   // NVRTC has no <stdint.h>

#define LOG2E 1.4426950408889634f
#define NEG_INF (-__int_as_float(0x7f800000))

// The 32-bit shared-window address PTX's shared-memory operands take.
__device__ __forceinline__ u32 smem_u32(const void* p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}

// 2^x in one MUFU.EX2 (flush-to-zero: the softmax's exponents are <= 0, denormals are noise).
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Sum over the 4 threads (lane%4) that share a row of an m16n8 fragment.
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
}

// Two adjacent output columns of one row: fp16 (the default) or fp32 (FP32_P's out_t).
__device__ __forceinline__ void store_out2(half* p, float x, float y) { *reinterpret_cast<__half2*>(p) = __floats2half2_rn(x, y); }
__device__ __forceinline__ void store_out2(float* p, float x, float y) { *reinterpret_cast<float2*>(p) = make_float2(x, y); }

#endif  // FLASHCORE_COMMON_UTIL_CUH
