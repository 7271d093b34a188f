// kernels/common/softmax.cuh -- the online softmax of one 16-row fragment over one key tile
// (FlashAttention-2's update, in exp2), in the m16n8 fragment layout (common/util.cuh): the
// running row max m, the per-thread partial row sums l, the rescale factor alpha of O, and the
// O rescale itself. Both kernels run this exact arithmetic, so the softmax_only stage check of
// one kernel speaks for the other's code too.
//
// The sm_80 kernel's seeded bug BUG_P_OVERFLOW (debug_modes/bugs.py) lives here with the code it
// breaks; the sm_90a kernel's registry entry does not list it (debug_modes/hopper_bugs.py), so
// the harness never builds that kernel with it.
#ifndef FLASHCORE_COMMON_SOFTMAX_CUH
#define FLASHCORE_COMMON_SOFTMAX_CUH
#include "util.cuh"

// In: masked scores s in units where softmax(s * sl2 / log2(e)) is wanted: raw Q.K^T with
// sl2 = scale*log2(e) in the full kernel, already-scaled S with sl2 = log2(e) in softmax_only.
// Out: s overwritten by P = exp2(s*sl2 - m*sl2) (fp32, unnormalised; one FFMA + ex2 per score),
// per-thread partial row sums l, running max m (units of s) and the rescale factor alpha for O.
// first_tile: this is key tile 0 (read only by BUG_P_OVERFLOW).
//
// SOFTMAX_ILP: independent chains per row half for the max and the sum. 1 (the default, every
// kernel's order since the start): one serial chain each, NF FMNMX and 2*NF FADD deep, each
// waiting on the last (Nsight Compute at 106cbd4: the sm_90a kernel's warps stall on fixed-latency
// dependencies 48-54 M warp-cycles more than cuDNN's). k > 1: k chains, then combined; the max is
// the same in any order, the sum rounds in another (fp32, inside every mode's tolerance).
#ifndef SOFTMAX_ILP
#define SOFTMAX_ILP 1
#endif
// EXP2_POLY_EVERY: k > 0 computes every k-th score's exp2 on the FMA pipe (exp2_poly below)
// instead of the MUFU unit, which does 16 exp2 per SM per clock, one warp instruction per 8
// clocks on each SMSP: a warp's softmax of 64 rows x 128 keys is at least 512 clocks of ex2,
// as long as the other warpgroup's whole Q.K^T + P.V at D = 64 (kernels/NOTES.md, version 10).
// Only where P is rounded to fp16 (the polynomial's 2.7e-6 relative error is 1 % of fp16's
// rounding): FP32_P and softmax_only (checked at fp32's floor) keep ex2 for every score, so their
// checks see the ex2 path only, and the full mode's check is the one that sees the polynomial.
#ifndef EXP2_POLY_EVERY
#define EXP2_POLY_EVERY 0
#endif
#if EXP2_POLY_EVERY && !defined(FP32_P) && !defined(DEBUG_SOFTMAX_ONLY)
#define EXP2_POLY_K EXP2_POLY_EVERY
#else
#define EXP2_POLY_K 0
#endif
// 2^x for x <= 0 on the FMA pipe: x = j + f, j = round(x), |f| <= 1/2 (the 1.5 * 2^23 shifter),
// 2^f by a degree-4 polynomial (relative error <= 2.7e-6 in fp32, fitted for this file), 2^j
// added to the exponent field. x below -126 (masked scores are -inf) gives exactly 0, as ex2
// does under ftz.
__device__ __forceinline__ float exp2_poly(float x) {
    const float xc = fmaxf(x, -126.f);
    const float t = xc + 12582912.f;                // round to nearest: j in the low mantissa bits
    const float f = xc - (t - 12582912.f);
    float p = fmaf(9.570610709e-03f, f, 5.591790378e-02f);
    p = fmaf(p, f, 2.402473241e-01f);
    p = fmaf(p, f, 6.931217909e-01f);
    p = fmaf(p, f, 9.999992847e-01f);
    const int j = __float_as_int(t) - 0x4B400000;
    const float y = __int_as_float(__float_as_int(p) + (j << 23));
    return x < -126.f ? 0.f : y;
}
template <int NF>
__device__ __forceinline__ void softmax_update(float (&s)[NF][4], float (&m)[2], float (&l)[2],
                                               float (&alpha)[2], float sl2, bool first_tile) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float mxk[SOFTMAX_ILP];
#pragma unroll
        for (int k = 0; k < SOFTMAX_ILP; ++k) mxk[k] = m[h];
#pragma unroll
        for (int nt = 0; nt < NF; ++nt)
            mxk[nt % SOFTMAX_ILP] = fmaxf(mxk[nt % SOFTMAX_ILP], fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
        float mx = mxk[0];
#pragma unroll
        for (int k = 1; k < SOFTMAX_ILP; ++k) mx = fmaxf(mx, mxk[k]);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
#ifdef BUG_P_OVERFLOW
        // BUG_P_OVERFLOW (softmax, sm_80 kernel): the row max frozen after the first tile (alpha
        // = 1), so P = exp(S - m_first) overflows fp16 once a later logit is 11 larger.
        if (!first_tile) mx = m[h];
#endif
        const float m_use = (mx == NEG_INF) ? 0.f : mx;   // a row with no key yet: keep exp finite
        alpha[h] = fast_exp2((m[h] - m_use) * sl2);        // m[h] = -inf on the first tile -> 0
        const float ms = m_use * sl2;
        float sumk[SOFTMAX_ILP];
#pragma unroll
        for (int k = 0; k < SOFTMAX_ILP; ++k) sumk[k] = 0.f;
#pragma unroll
        for (int nt = 0; nt < NF; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float arg = fmaf(s[nt][2 * h + e], sl2, -ms);
                const float p = (EXP2_POLY_K && (2 * nt + e) % (EXP2_POLY_K ? EXP2_POLY_K : 1) == 0)
                                    ? exp2_poly(arg) : fast_exp2(arg);
                s[nt][2 * h + e] = p;
                sumk[(2 * nt + e) % SOFTMAX_ILP] += p;
            }
        float sum = sumk[0];
#pragma unroll
        for (int k = 1; k < SOFTMAX_ILP; ++k) sum += sumk[k];
        l[h] = l[h] * alpha[h] + sum;
        m[h] = mx;
    }
}

// O_acc *= alpha: row half h (elements 2h, 2h+1) of each n8 tile of O by alpha[h].
template <int DF>
__device__ __forceinline__ void rescale_o(float (&o)[DF][4], const float (&alpha)[2]) {
#pragma unroll
    for (int i = 0; i < DF; ++i) {
        o[i][0] *= alpha[0]; o[i][1] *= alpha[0];
        o[i][2] *= alpha[1]; o[i][3] *= alpha[1];
    }
}

#endif  // FLASHCORE_COMMON_SOFTMAX_CUH
