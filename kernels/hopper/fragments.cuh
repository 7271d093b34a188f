// kernels/hopper/fragments.cuh -- the per-fragment stage code of the attention forward pass:
// masking, the online softmax, P packing, and the debug-matrix I/O.
//
// Written for the m16n8 accumulator layout: s[nt][e] of a thread is row (its 16-row slice) +
// lane/4 + 8*(e/2), key column nt*8 + 2*(lane%4) + (e%2). That is the mma.sync C layout of the
// sm_80 kernel (kernels/flashcore_fused.cu) AND, per warp, the wgmma m64nN fp32 accumulator
// layout, so this is the same code, line for line in its arithmetic, as flashcore_fused.cu's
// mask_tile / softmax_update / quad_sum / pv_tile packing / load_s_frag / store_s_frag. A future
// refactor can make the sm_80 kernel include this header instead of its own copies (the
// templates take the fragment count instead of reading N_FRAG).
//
// Requires: BLOCK_N (keys per tile) defined before inclusion; cuda_fp16.h.
#pragma once
#include "ptx.cuh"

#ifndef BLOCK_N
#error "fragments.cuh needs BLOCK_N"
#endif

#define LOG2E 1.4426950408889634f
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ u32 pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<u32*>(&h);
}
// The fp16 remainder (x - fp16(x), y - fp16(y)) of a pair already packed as hi.
__device__ __forceinline__ u32 pack_lo(float x, float y, u32 hi) {
    const float2 h = __half22float2(*reinterpret_cast<const __half2*>(&hi));
    return pack_half2(x - h.x, y - h.y);
}
// Sum over the 4 threads (lane%4) that share a row.
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
}

// ---------------------------------------------------------------- stage 1: masking
// Tail (key >= kv_limit = Sk) and causal (key > query; top-left aligned as SDPA's is_causal)
// masking to -inf. row_base = this thread's first row (absolute query index).
template <int NF>
__device__ __forceinline__ void mask_tile(float (&s)[NF][4], int kv0, int row_base, int lane, int kv_limit) {
#pragma unroll
    for (int nt = 0; nt < NF; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int col = kv0 + nt * 8 + (lane & 3) * 2 + (e & 1);
            bool masked = col >= kv_limit;
#if IS_CAUSAL
            masked = masked || col > row_base + (e >> 1) * 8;
#endif
            if (masked) s[nt][e] = NEG_INF;
        }
}

// ---------------------------------------------------------------- stage 2: online softmax
// In: masked scores s in units where softmax(s * sl2 / log2(e)) is wanted: raw Q.K^T with
// sl2 = scale*log2(e) in the full kernel, already-scaled S with sl2 = log2(e) in softmax_only.
// Out: s overwritten by P = exp2(s*sl2 - m*sl2) (fp32, unnormalised; one FFMA + ex2 per score),
// per-thread partial row sums l, running max m (units of s) and the rescale factor alpha for O.
template <int NF>
__device__ __forceinline__ void softmax_update(float (&s)[NF][4], float (&m)[2], float (&l)[2],
                                               float (&alpha)[2], float sl2) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float mx = m[h];
#pragma unroll
        for (int nt = 0; nt < NF; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_use = (mx == NEG_INF) ? 0.f : mx;   // a row with no key yet: keep exp finite
        alpha[h] = fast_exp2((m[h] - m_use) * sl2);        // m[h] = -inf on the first tile -> 0
        const float ms = m_use * sl2;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < NF; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float p = fast_exp2(fmaf(s[nt][2 * h + e], sl2, -ms));
                s[nt][2 * h + e] = p;
                sum += p;
            }
        l[h] = l[h] * alpha[h] + sum;
        m[h] = mx;
    }
}

// O_acc *= alpha, row half h of each n8 tile.
template <int DF>
__device__ __forceinline__ void rescale_o(float (&o)[DF][4], const float (&alpha)[2]) {
#pragma unroll
    for (int i = 0; i < DF; ++i) {
        o[i][0] *= alpha[0]; o[i][1] *= alpha[0];
        o[i][2] *= alpha[1]; o[i][3] *= alpha[1];
    }
}

// ---------------------------------------------------------------- stage 3: P packing
// fp16 P as the A operand of the k16 slices of P.V: the m16n8 accumulator layout of the two
// adjacent n8 tiles 2kk, 2kk+1 is the m16k16 A-fragment layout (mma.sync and wgmma RS alike).
template <int NF>
__device__ __forceinline__ void pack_p(u32 (&a)[NF / 2][4], const float (&p)[NF][4]) {
#pragma unroll
    for (int kk = 0; kk < NF / 2; ++kk) {
        a[kk][0] = pack_half2(p[2 * kk][0], p[2 * kk][1]);
        a[kk][1] = pack_half2(p[2 * kk][2], p[2 * kk][3]);
        a[kk][2] = pack_half2(p[2 * kk + 1][0], p[2 * kk + 1][1]);
        a[kk][3] = pack_half2(p[2 * kk + 1][2], p[2 * kk + 1][3]);
    }
}
// FP32_P: the remainders p - fp16(p) of the pairs packed in hi, in the same order.
template <int NF>
__device__ __forceinline__ void pack_p_lo(u32 (&lo)[NF / 2][4], const float (&p)[NF][4], const u32 (&hi)[NF / 2][4]) {
#pragma unroll
    for (int kk = 0; kk < NF / 2; ++kk) {
        lo[kk][0] = pack_lo(p[2 * kk][0], p[2 * kk][1], hi[kk][0]);
        lo[kk][1] = pack_lo(p[2 * kk][2], p[2 * kk][3], hi[kk][1]);
        lo[kk][2] = pack_lo(p[2 * kk + 1][0], p[2 * kk + 1][1], hi[kk][2]);
        lo[kk][3] = pack_lo(p[2 * kk + 1][2], p[2 * kk + 1][3], hi[kk][3]);
    }
}

// ---------------------------------------------------------------- debug-matrix I/O
// The window's [rows, Skp] fp32 matrices in the S-fragment layout (row i of the problem at
// i - row0, row stride Skp = ceil(Sk / BLOCK_N) * BLOCK_N: every column of every key tile,
// padding included; Skp is a multiple of BLOCK_N, so each thread's column pair is 8-byte
// aligned). Rows past the window's end read as fill and are not stored. Holds the kernel's own
// arguments, not derived values (ptxas re-reads them from the constant bank where used).
struct DebugRows {
    int row0, n_rows, Sq, Sk;
    __device__ __forceinline__ int row_end() const { return min(Sq, row0 + n_rows); }
    __device__ __forceinline__ int Skp() const { return (Sk + BLOCK_N - 1) / BLOCK_N * BLOCK_N; }
};
template <int NF>
__device__ __forceinline__ void load_s_frag(float (&s)[NF][4], const float* src, int kv0,
                                            int row_base, int lane, DebugRows w, float fill) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = row_base + 8 * h, c0 = kv0 + (lane & 3) * 2;
        const bool row_ok = row < w.row_end();
        const float* p = src + (size_t)(row_ok ? row - w.row0 : 0) * w.Skp() + c0;
#pragma unroll
        for (int nt = 0; nt < NF; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e)
                s[nt][2 * h + e] = row_ok ? p[nt * 8 + e] : fill;
    }
}
template <int NF>
__device__ __forceinline__ void store_s_frag(float* dst, const float (&s)[NF][4], int kv0,
                                             int row_base, int lane, DebugRows w) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = row_base + 8 * h, c0 = kv0 + (lane & 3) * 2;
        if (row >= w.row_end()) continue;
        float* p = dst + (size_t)(row - w.row0) * w.Skp() + c0;
#pragma unroll
        for (int nt = 0; nt < NF; ++nt)
            *reinterpret_cast<float2*>(p + nt * 8) = make_float2(s[nt][2 * h], s[nt][2 * h + 1]);
    }
}

__device__ __forceinline__ void store_out2(half* p, float x, float y) { *reinterpret_cast<__half2*>(p) = __floats2half2_rn(x, y); }
__device__ __forceinline__ void store_out2(float* p, float x, float y) { *reinterpret_cast<float2*>(p) = make_float2(x, y); }
