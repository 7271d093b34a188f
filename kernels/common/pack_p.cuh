// kernels/common/pack_p.cuh -- P (fp32, in the S registers) to the fp16 A operand of P.V.
// The m16n8 accumulator layout of two adjacent n8 tiles 2kk, 2kk+1 (common/util.cuh) is the
// m16k16 A-fragment layout of mma.sync and of wgmma RS alike, so P never leaves the registers:
// key slice kk is four half2 packs. FP32_P adds the hi+lo split: the fp16 remainders
// p - fp16(p) of the same pairs, multiplied in a second product so that P.V sees fp32 P.
// The sm_80 kernel packs one slice at a time (its A registers are reused per slice, which keeps
// D = 128 free of spills); the sm_90a kernel packs the whole tile before one wgmma batch.
#ifndef FLASHCORE_COMMON_PACK_P_CUH
#define FLASHCORE_COMMON_PACK_P_CUH
#include "util.cuh"

__device__ __forceinline__ u32 pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<u32*>(&h);
}
// The fp16 remainder (x - fp16(x), y - fp16(y)) of a pair already packed as hi.
__device__ __forceinline__ u32 pack_lo(float x, float y, u32 hi) {
    const float2 h = __half22float2(*reinterpret_cast<const __half2*>(&hi));
    return pack_half2(x - h.x, y - h.y);
}

// Key slice kk (n8 tiles 2kk, 2kk+1) of one fragment's P as an fp16 A fragment.
template <int NF>
__device__ __forceinline__ void pack_p_slice(u32 (&a)[4], const float (&p)[NF][4], int kk) {
    a[0] = pack_half2(p[2 * kk][0], p[2 * kk][1]);
    a[1] = pack_half2(p[2 * kk][2], p[2 * kk][3]);
    a[2] = pack_half2(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    a[3] = pack_half2(p[2 * kk + 1][2], p[2 * kk + 1][3]);
}
// FP32_P: the remainders of slice kk, from the hi fragment pack_p_slice made. lo may be hi
// itself (the sm_80 kernel overwrites hi in place: element i is read before it is written).
template <int NF>
__device__ __forceinline__ void pack_p_lo_slice(u32 (&lo)[4], const float (&p)[NF][4], int kk, const u32 (&hi)[4]) {
    lo[0] = pack_lo(p[2 * kk][0], p[2 * kk][1], hi[0]);
    lo[1] = pack_lo(p[2 * kk][2], p[2 * kk][3], hi[1]);
    lo[2] = pack_lo(p[2 * kk + 1][0], p[2 * kk + 1][1], hi[2]);
    lo[3] = pack_lo(p[2 * kk + 1][2], p[2 * kk + 1][3], hi[3]);
}

// Every key slice of the tile (NF / 2 of them), and their remainders, in the same order.
template <int NF>
__device__ __forceinline__ void pack_p(u32 (&a)[NF / 2][4], const float (&p)[NF][4]) {
#pragma unroll
    for (int kk = 0; kk < NF / 2; ++kk) pack_p_slice(a[kk], p, kk);
}
template <int NF>
__device__ __forceinline__ void pack_p_lo(u32 (&lo)[NF / 2][4], const float (&p)[NF][4], const u32 (&hi)[NF / 2][4]) {
#pragma unroll
    for (int kk = 0; kk < NF / 2; ++kk) pack_p_lo_slice(lo[kk], p, kk, hi[kk]);
}

#endif  // FLASHCORE_COMMON_PACK_P_CUH
