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
// The update in two halves per row half h, so that a caller can put a barrier between the row
// max and the exp2s (the sm_90a kernel's SOFTMAX_TURNS=2, kernels/flashcore_hopper.cu): the max of
// tile and running max, then P, the sums and alpha from it. softmax_update runs the two per h in
// the order it always had.
template <int NF>
__device__ __forceinline__ float softmax_row_max(const float (&s)[NF][4], const float (&m)[2], int h,
                                                 bool first_tile) {
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
    (void)first_tile;
    return mx;
}
template <int NF>
__device__ __forceinline__ void softmax_exp(float (&s)[NF][4], float (&m)[2], float (&l)[2],
                                            float (&alpha)[2], float mx, int h, float sl2) {
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
            const float p = fast_exp2(fmaf(s[nt][2 * h + e], sl2, -ms));
            s[nt][2 * h + e] = p;
            sumk[(2 * nt + e) % SOFTMAX_ILP] += p;
        }
    float sum = sumk[0];
#pragma unroll
    for (int k = 1; k < SOFTMAX_ILP; ++k) sum += sumk[k];
    l[h] = l[h] * alpha[h] + sum;
    m[h] = mx;
}
template <int NF>
__device__ __forceinline__ void softmax_update(float (&s)[NF][4], float (&m)[2], float (&l)[2],
                                               float (&alpha)[2], float sl2, bool first_tile) {
#pragma unroll
    for (int h = 0; h < 2; ++h) softmax_exp(s, m, l, alpha, softmax_row_max(s, m, h, first_tile), h, sl2);
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

// O_acc *= a on row half h only: the halves apart, so that a caller can rescale one half while the
// other half's exp2s still run (the sm_90a kernel's MID_WAIT, version 30).
template <int DF>
__device__ __forceinline__ void rescale_o_half(float (&o)[DF][4], float a, int h) {
#pragma unroll
    for (int i = 0; i < DF; ++i) {
        o[i][2 * h] *= a; o[i][2 * h + 1] *= a;
    }
}

#endif  // FLASHCORE_COMMON_SOFTMAX_CUH
