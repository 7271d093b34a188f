// kernels/common/debug_stages.cuh -- what the debug modes (debug_modes/registry.py) run in place
// of a stage's input or output, in the m16n8 fragment layout (common/util.cuh). Each mode changes
// only where one stage reads its input or writes its output (docs/DESIGN.md); the stage code is
// the code full runs (common/mask.cuh, softmax.cuh, pack_p.cuh). Shared so that both kernels
// expose the same seams: the harness checks one contract, not two look-alikes.
//   DEBUG_QK_ONLY       store_scaled_s: the stage's output is scaled S (masked = -inf) to S_out
//   DEBUG_SOFTMAX_ONLY  softmax_only_stage: exact S from S_in, the online update, m, l, P to P_out
//   DEBUG_PV_ONLY       load_s_frag(P_in) (common/debug_io.cuh): exact P in, alpha = l = 1
//   UNIFORM_P           uniform_p_tile: P = 1/Sk made in the kernel (0 in the padded columns)
//
// Requires: BLOCK_N defined before inclusion (common/debug_io.cuh).
#ifndef FLASHCORE_COMMON_DEBUG_STAGES_CUH
#define FLASHCORE_COMMON_DEBUG_STAGES_CUH
#include "util.cuh"
#include "softmax.cuh"
#include "debug_io.cuh"

// DEBUG_QK_ONLY: the raw scores times the softmax scale, written at the padded width.
template <int NF>
__device__ __forceinline__ void store_scaled_s(float (&s)[NF][4], float scale, float* S_out, int kv0,
                                               int row_base, int lane, DebugRows w) {
#pragma unroll
    for (int nt = 0; nt < NF; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] *= scale;     // the stage's output is scaled S
    store_s_frag(S_out, s, kv0, row_base, lane, w);
}

// UNIFORM_P: P = 1/Sk on the tile's valid keys, 0 past Sk (no QK, no softmax, no rescale).
template <int NF>
__device__ __forceinline__ void uniform_p_tile(float (&s)[NF][4], int kv0, int lane, int Sk) {
    const float inv_sk = 1.f / (float)Sk;
#pragma unroll
    for (int nt = 0; nt < NF; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            s[nt][e] = (kv0 + nt * 8 + (lane & 3) * 2 + (e & 1) < Sk) ? inv_sk : 0.f;
}

// DEBUG_SOFTMAX_ONLY, the whole stage for MF 16-row fragments of NF n8 tiles (rows row_base +
// 16 mf, + 8): exact S in from Sb, the same online update as full, then a second sweep for the
// normalised P to Pb; m and l (the quad's total) to M_out, L_out at bh * Sq + row. No shared
// memory, no tensor cores. Sb and Pb are this (b, h)'s windows of S_in and P_out.
template <int MF, int NF>
__device__ __forceinline__ void softmax_only_stage(const float* Sb, float* Pb, float* M_out, float* L_out,
                                                   size_t bh, int Sq, int n_iter, int row_base, int lane,
                                                   DebugRows w) {
    float m[MF][2], l[MF][2], alpha[MF][2];
#pragma unroll
    for (int mf = 0; mf < MF; ++mf) { m[mf][0] = m[mf][1] = NEG_INF; l[mf][0] = l[mf][1] = 0.f; }
    float s[NF][4];
    for (int j = 0; j < n_iter; ++j) {
#pragma unroll
        for (int mf = 0; mf < MF; ++mf) {
            load_s_frag(s, Sb, j * BLOCK_N, row_base + mf * 16, lane, w, NEG_INF);
            softmax_update(s, m[mf], l[mf], alpha[mf], LOG2E, j == 0);   // S_in is already scaled
        }
    }
    float inv[MF][2], ms[MF][2];
#pragma unroll
    for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            l[mf][h] = quad_sum(l[mf][h]);
            inv[mf][h] = 1.f / l[mf][h];
            ms[mf][h] = (m[mf][h] == NEG_INF ? 0.f : m[mf][h]) * LOG2E;
            const int row = row_base + mf * 16 + 8 * h;
            if (row < w.row_end() && (lane & 3) == 0) { M_out[bh * Sq + row] = m[mf][h]; L_out[bh * Sq + row] = l[mf][h]; }
        }
    }
    for (int j = 0; j < n_iter; ++j) {
#pragma unroll
        for (int mf = 0; mf < MF; ++mf) {
            load_s_frag(s, Sb, j * BLOCK_N, row_base + mf * 16, lane, w, NEG_INF);
#pragma unroll
            for (int nt = 0; nt < NF; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    s[nt][e] = fast_exp2(fmaf(s[nt][e], LOG2E, -ms[mf][e >> 1])) * inv[mf][e >> 1];
            store_s_frag(Pb, s, j * BLOCK_N, row_base + mf * 16, lane, w);
        }
    }
}

#endif  // FLASHCORE_COMMON_DEBUG_STAGES_CUH
