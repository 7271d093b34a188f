// flashcore_fused.cu -- fused FlashAttention-2-style forward pass, fp16 in, fp32 accumulate.
//
// Layout: Q [B,H,Sq,D], K/V [B,H,Sk,D], O [B,H,Sq,D], all fp16 and contiguous.
// One thread block owns BLOCK_M = 16*M_FRAGS*NWARPS query rows and sweeps the
// key/value tiles of BLOCK_N = 64 keys. Tensor cores through mma.sync.m16n8k16 with
// ldmatrix; P stays in registers between the two products; online softmax with exp2.
// No atomics: every output element is written by exactly one thread, so results are
// bitwise reproducible run to run.
//
// Causal masking is top-left aligned (key j is visible to query i iff j <= i), the
// convention of torch.nn.functional.scaled_dot_product_attention(is_causal=True).
//
// Macros read by this file (the harness passes them with -D; see debug_modes/):
//   HEAD_DIM            64 or 128 (required; checked in kernels/common/flags.cuh)
//   IS_CAUSAL           0 or 1 (default 0, from kernels/common/flags.cuh)
//   NWARPS              warps per block (default 4)
//   M_FRAGS             16-row fragments per warp, 1 or 2 (default 1): a warp owns 16*M_FRAGS rows
//   KV_STAGES           K/V shared-memory buffers, 1 or 2 (default 2: tile j+2 loads during tile j)
//   BLOCK_N             keys per K/V tile, a multiple of 16 (default 64)
//   -- debug modes: each changes only where one stage reads its input or writes its output
//   DEBUG_QK_ONLY       write S = scale*Q*K^T (masked = -inf) as fp32 [B,H,Sq,Sk] to S_out
//   DEBUG_SOFTMAX_ONLY  read exact S from S_in; write m, l [B,H,Sq] and normalised P to P_out
//   DEBUG_PV_ONLY       read exact P from P_in; alpha = 1, l = 1; write O
//   UNIFORM_P           P = 1/Sk made in the kernel; no QK, no softmax, no rescale; write O
//   FP32_P              as full, P split into two fp16 halves (hi + lo) so P.V sees fp32 P;
//                       O written as fp32 so the fp16 output cast does not hide P's precision
//   -- seeded bugs (must-fail cases for the harness; none is on by default)
//   BUG_KT_LAYOUT       QK: K tile read with the transposed ldmatrix layout
//   BUG_TAIL_MASK       QK: sequence-tail bound off by one (the last valid key is masked)
//   BUG_NO_RESCALE      glue: O accumulator not rescaled by alpha when the row max moves
//   BUG_PV_FIRST_TILE   PV: P.V accumulated for the first key tile only
//   BUG_FRAG_SWAP       PV: accumulator fragment rows swapped (c0,c1 <-> c2,c3) when O is stored
//   BUG_NO_BARRIER      glue: the next K/V tile is issued without the barrier that ends the
//                       other warps' reads of the buffer it overwrites (a shared-memory race)
//   BUG_P_OVERFLOW      softmax: row max frozen after the first key tile (alpha = 1), so P is
//                       exp(S - m_first), which overflows fp16 once a later logit is 11 larger
//   -- seeded bugs that show only at some shapes (the coverage set must find them)
//   BUG_TAIL_UNMASKED   QK: the tail mask bound is the tile-padded length, so the zero-padded keys
//                       of the last key tile score 0 instead of -inf (shows when Sk % BLOCK_N != 0)
//   BUG_SHORT_UNMASKED  QK: masking skipped when the whole key range fits in one partial tile
//                       (shows when Sk < BLOCK_N)
//   BUG_KV_LOOP_SQ      QK: key-tile loop bound from min(Sq, Sk) (a self-attention habit), so keys
//                       beyond Sq's tiles are never visited (shows when Sq < Sk by a tile)
//   BUG_BATCH_OFFSET    PV: the O store drops the batch offset (shows when B > 1)
//   BUG_D128_COLS       PV: the P.V loop stops one 16-column block short at HEAD_DIM 128
//   BUG_Q_TAIL_SWAP     PV: in a partial (tail) query tile the two 8-row halves of each fragment
//                       are stored swapped (shows when Sq % BLOCK_M != 0)
//
// Arguments (the kernel contract, README "Kernel contract", docs/DESIGN.md):
//   Q, K, V, O, LSE, S_in, P_in, S_out, P_out, M_out, L_out, H, Sq, Sk, scale, row0, n_rows
//   (null pointers for the buffers a mode does not use). Only the query rows of the window
//   [row0, min(row0 + n_rows, Sq)) are computed and stored; row0 is a multiple of BLOCK_M and the
//   grid is (ceil(n_rows / BLOCK_M), H, B). The [rows, keys] debug matrices (S_out, P_out, S_in,
//   P_in) hold only the window's rows (row i at i - row0) at the tile-padded width
//   Skp = ceil(Sk / BLOCK_N) * BLOCK_N: the softmax consumes the padded columns of the tail tile,
//   so the QK check must see them (-inf), and P over them must be 0. O, LSE, M_out and L_out are
//   indexed by absolute row.
//
// Shared code: the stage code the sm_90a kernel (flashcore_hopper.cu) runs too is in
// kernels/common/, included below: score masking (mask.cuh), the online softmax and O rescale
// (softmax.cuh; BUG_P_OVERFLOW's #ifdef is there, with the code it breaks), P packing into fp16 A
// fragments and FP32_P's hi+lo split (pack_p.cuh), the debug matrices' window / padded-width I/O
// (debug_io.cuh), the debug modes' stand-ins for a stage (debug_stages.cuh: DEBUG_QK_ONLY's S,
// DEBUG_SOFTMAX_ONLY's whole stage, UNIFORM_P's P), the row finish and O store (epilogue.cuh),
// the scalar helpers (util.cuh) and the flag contract (flags.cuh: HEAD_DIM, IS_CAUSAL, which
// stages a mode runs, out_t). This file keeps the mma.sync engine: cp.async tile loads, ldmatrix
// fragments, the Q.K^T and P.V products, the key loop and its seeded bugs but BUG_P_OVERFLOW.

#include <cuda_fp16.h>
// HEAD_DIM, IS_CAUSAL, USES_QK / USES_PV (the stages a debug mode runs) and out_t: the flag
// contract both kernels decode the same way.
#include "common/flags.cuh"

#ifndef NWARPS
#define NWARPS 4
#endif

#ifndef M_FRAGS
#define M_FRAGS 1                           // 16-row fragments per warp: 2 reuses every K/V fragment twice
#endif
#ifndef KV_STAGES
#define KV_STAGES 2                         // K/V buffers: 2 = double-buffered, 1 = single
#endif
#define WARP_M (16 * M_FRAGS)               // query rows per warp
#define BLOCK_M (WARP_M * NWARPS)
// Q fragments live in registers when they fit beside the accumulators; else re-read per k-step.
#define Q_IN_REGS (HEAD_DIM * M_FRAGS <= 128)
#ifndef BLOCK_N
#define BLOCK_N 64                          // keys per tile (multiple of 16)
#endif
#define NTHREADS (32 * NWARPS)
#define SMEM_PAD 8                          // halves: 16 bytes per row, breaks ldmatrix bank conflicts
#define SMEM_LD (HEAD_DIM + SMEM_PAD)
#define N_FRAG (BLOCK_N / 8)                // n8 tiles of S per warp
#define D_FRAG (HEAD_DIM / 8)               // n8 tiles of O per warp
#define K_STEPS (HEAD_DIM / 16)             // k16 steps of Q.K^T

#ifdef BUG_KV_LOOP_SQ
#define NITER_CONST                         // the seeded bug lowers the loop bound after the fact
#else
#define NITER_CONST const
#endif

// The stage code shared with the sm_90a kernel (kernels/common/; it reads IS_CAUSAL and BLOCK_N above).
#include "common/util.cuh"          // u32, smem_u32, fast_exp2, quad_sum, store_out2, LOG2E, NEG_INF
#include "common/mask.cuh"          // mask_scores: TILE_NEEDS_MASK, mask_tile
#include "common/softmax.cuh"       // scores_to_p: softmax_update (+BUG_P_OVERFLOW), rescale_o
#include "common/pack_p.cuh"        // pv_tile: pack_p_slice, pack_p_lo_slice (FP32_P)
#include "common/debug_io.cuh"      // DebugRows, load_s_frag (DEBUG_PV_ONLY), store_s_frag
#include "common/debug_stages.cuh"  // store_scaled_s, softmax_only_stage, uniform_p_tile
#include "common/epilogue.cuh"      // finish_row, store_o_half

// ---------------------------------------------------------------- PTX helpers (sm_80 mma.sync engine)
// 16-byte async copy; src_bytes = 0 fills the destination with zeros (padding rows).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(smem_u32(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(u32 r[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 r[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
// D = A(16x16, row) * B(16x8, col) + D, fp16 operands, fp32 accumulators. Not volatile: a pure
// register operation, so the compiler may interleave it with the ldmatrix and softmax work
// around it (the ldmatrix asm stays volatile: it reads shared memory and must not cross a barrier).
__device__ __forceinline__ void mma16816(float d[4], const u32 a[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// D = A * B with C = 0 (ptxas reads the zero register: no accumulator clearing per tile).
__device__ __forceinline__ void mma16816_zc(float d[4], const u32 a[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.f));
}

// ---------------------------------------------------------------- tile loads
// Copies rows [row0, row0+ROWS) of a [S, HEAD_DIM] fp16 matrix into shared memory,
// zero-filling rows >= S (their scores are masked and their V rows contribute 0).
// Each thread owns one 16-byte column chunk and every ROWS_PER_PASS-th row, so all its
// addresses are one base plus compile-time offsets: a few instructions per copy, not the
// divide, modulo and 64-bit multiply a flat chunk loop costs on every tile.
#define CHUNKS (HEAD_DIM / 8)                   // 16-byte chunks per row
#define ROWS_PER_PASS (NTHREADS / CHUNKS)       // rows one pass of the block covers
template <int ROWS>
__device__ __forceinline__ void load_tile(half* sdst, const half* gsrc, int row0, int S) {
    static_assert(NTHREADS % CHUNKS == 0 && ROWS % ROWS_PER_PASS == 0, "tile rows must be a multiple of NTHREADS/CHUNKS");
    const int r = threadIdx.x / CHUNKS;         // this thread's first row; its column is (tid % CHUNKS) * 8
    half* d = sdst + threadIdx.x * 8 + r * SMEM_PAD;          // = r * SMEM_LD + column
    const half* g = gsrc + (row0 * HEAD_DIM + threadIdx.x * 8);  // = (row0 + r) * HEAD_DIM + column
    if (row0 + ROWS <= S) {                     // the whole tile is inside the matrix
#pragma unroll
        for (int i = 0; i < ROWS / ROWS_PER_PASS; ++i)
            cp_async16(d + i * ROWS_PER_PASS * SMEM_LD, g + i * ROWS_PER_PASS * HEAD_DIM, 16);
    } else {                                    // the tail tile: rows >= S are zero-filled
#pragma unroll 1
        for (int i = 0; i < ROWS / ROWS_PER_PASS; ++i) {
            const bool ok = row0 + r + i * ROWS_PER_PASS < S;
            cp_async16(d + i * ROWS_PER_PASS * SMEM_LD, ok ? g + i * ROWS_PER_PASS * HEAD_DIM : gsrc, ok ? 16 : 0);
        }
    }
}

// ---------------------------------------------------------------- stage 1: QK
// A-operand of Q for fragment mf, k-step kd, from the warp's rows of the Q tile.
__device__ __forceinline__ void load_q_frag(u32 a[4], const half* sQw, int mf, int kd, int lane) {
    const int mat = lane >> 3, r = lane & 7;
    ldmatrix_x4(a, sQw + (mf * 16 + (mat & 1) * 8 + r) * SMEM_LD + kd * 16 + (mat >> 1) * 8);
}

// All of the warp's Q fragments into registers, where they fit (else qk_tile re-reads them).
__device__ __forceinline__ void load_q_regs(u32 qf[M_FRAGS][K_STEPS][4], const half* sQw, int lane) {
#if USES_QK && Q_IN_REGS
#pragma unroll
    for (int mf = 0; mf < M_FRAGS; ++mf)
#pragma unroll
        for (int kd = 0; kd < K_STEPS; ++kd) load_q_frag(qf[mf][kd], sQw, mf, kd, lane);
#endif
}

// The K fragment of k-step kd and key block nn (16 keys x 16 dims, B operand of two mma).
__device__ __forceinline__ void load_k_frag(u32 b[4], const half* sK, int kd, int nn, int lane) {
    const int mat = lane >> 3, r = lane & 7;
    const half* p = sK + (nn * 16 + (mat >> 1) * 8 + r) * SMEM_LD + kd * 16 + (mat & 1) * 8;
#ifdef BUG_KT_LAYOUT
    ldmatrix_x4_trans(b, p);
#else
    ldmatrix_x4(b, p);
#endif
}

// The A operands (Q) of k-step kd for every row fragment: from registers or shared memory.
__device__ __forceinline__ void load_a_frags(u32 a[M_FRAGS][4], const u32 qf[M_FRAGS][K_STEPS][4],
                                             const half* sQw, int kd, int lane) {
#pragma unroll
    for (int mf = 0; mf < M_FRAGS; ++mf) {
#if Q_IN_REGS
#pragma unroll
        for (int i = 0; i < 4; ++i) a[mf][i] = qf[mf][kd][i];
#else
        load_q_frag(a[mf], sQw, mf, kd, lane);
#endif
    }
}

// s[mf][nt][e]: row mf*16 + lane/4 + 8*(e/2) of this warp, key column nt*8 + (lane%4)*2 + (e%2).
// Raw scores Q.K^T: the softmax scale is folded into its exp2 argument (one FFMA per score).
// Each K fragment is loaded once and used for all M_FRAGS row fragments; the fragments of
// step it+1 are loaded before the mma of step it (two register buffers), so shared-memory
// latency hides behind tensor work instead of stalling the next mma.
__device__ __forceinline__ void qk_tile(float s[M_FRAGS][N_FRAG][4], const u32 qf[M_FRAGS][K_STEPS][4],
                                        const half* sQw, const half* sK, int lane) {
    constexpr int NN = BLOCK_N / 16, STEPS = K_STEPS * NN;
    u32 a[2][M_FRAGS][4], b[2][4];
    load_a_frags(a[0], qf, sQw, 0, lane);
    load_k_frag(b[0], sK, 0, 0, lane);
#pragma unroll
    for (int it = 0; it < STEPS; ++it) {
        const int kd = it / NN, nn = it % NN;
        if (it + 1 < STEPS) {
            if ((it + 1) % NN == 0) load_a_frags(a[(kd + 1) & 1], qf, sQw, kd + 1, lane);
            load_k_frag(b[(it + 1) & 1], sK, (it + 1) / NN, (it + 1) % NN, lane);
        }
#pragma unroll
        for (int mf = 0; mf < M_FRAGS; ++mf) {
            if (kd == 0) {                      // the first k-step starts from C = 0
                mma16816_zc(s[mf][2 * nn], a[0][mf], b[it & 1][0], b[it & 1][1]);
                mma16816_zc(s[mf][2 * nn + 1], a[0][mf], b[it & 1][2], b[it & 1][3]);
            } else {
                mma16816(s[mf][2 * nn], a[kd & 1][mf], b[it & 1][0], b[it & 1][1]);
                mma16816(s[mf][2 * nn + 1], a[kd & 1][mf], b[it & 1][2], b[it & 1][3]);
            }
        }
    }
}

// ---------------------------------------------------------------- stage 3: PV
#if defined(BUG_D128_COLS) && HEAD_DIM == 128
#define PV_DN (HEAD_DIM / 16 - 1)               // the bug: the last 16 columns get no P.V
#else
#define PV_DN (HEAD_DIM / 16)
#endif
// o += A.V[kk*16 : kk*16+16, :] for one 16-key slice; each V fragment (transposed ldmatrix)
// is loaded once and used for all M_FRAGS row fragments.
__device__ __forceinline__ void pv_mma(float o[M_FRAGS][D_FRAG][4], const u32 a[M_FRAGS][4], const half* sV,
                                       int kk, int lane) {
    const int mat = lane >> 3, r = lane & 7;
    const half* base = sV + (kk * 16 + (mat & 1) * 8 + r) * SMEM_LD + (mat >> 1) * 8;
    u32 b[2][4];                                // fragment dn+1 loads while dn multiplies
    ldmatrix_x4_trans(b[0], base);
#pragma unroll
    for (int dn = 0; dn < PV_DN; ++dn) {
        if (dn + 1 < PV_DN) ldmatrix_x4_trans(b[(dn + 1) & 1], base + (dn + 1) * 16);
#pragma unroll
        for (int mf = 0; mf < M_FRAGS; ++mf) {
            mma16816(o[mf][2 * dn], a[mf], b[dn & 1][0], b[dn & 1][1]);
            mma16816(o[mf][2 * dn + 1], a[mf], b[dn & 1][2], b[dn & 1][3]);
        }
    }
}

// o += P.V for one key tile. P comes from the S registers as fp16 A fragments, one 16-key slice
// at a time (common/pack_p.cuh); with FP32_P the remainder p - fp16(p) is multiplied in a second
// product so P.V sees fp32 P.
__device__ __forceinline__ void pv_tile(float o[M_FRAGS][D_FRAG][4], const float p[M_FRAGS][N_FRAG][4],
                                        const half* sV, int lane) {
#pragma unroll
    for (int kk = 0; kk < BLOCK_N / 16; ++kk) {
        u32 a[M_FRAGS][4];
#pragma unroll
        for (int mf = 0; mf < M_FRAGS; ++mf) pack_p_slice(a[mf], p[mf], kk);
        pv_mma(o, a, sV, kk, lane);
#ifdef FP32_P
        // Second pass with the remainders, packed over the hi fragment in place; V fragments
        // re-read so that a and a_lo are not live together (keeps the D=128 variant free of spills).
#pragma unroll
        for (int mf = 0; mf < M_FRAGS; ++mf) pack_p_lo_slice(a[mf], p[mf], kk, a[mf]);
        pv_mma(o, a, sV, kk, lane);
#endif
    }
}

// ---------------------------------------------------------------- one key tile: the stages
struct TileCtx {
    int lane, q0, row_base, kv_limit, Sq, Sk;
    float scale, sl2;      // sl2 = scale * log2(e): the exp2 multiplier for raw scores
    DebugRows w;           // the window of rows the debug matrices hold
    float* S_out;          // this (b, h)'s [rows, Skp] slices for the debug modes
    const float* P_in;
};

#define FOR_MF _Pragma("unroll") for (int mf = 0; mf < M_FRAGS; ++mf)

// Stage 1 for key tile t: raw scores Q.K_t^T (no-op in the modes without QK).
__device__ __forceinline__ void qk_scores(float s[M_FRAGS][N_FRAG][4], const u32 qf[M_FRAGS][K_STEPS][4],
                                          const half* sQw, const half* sKt, const TileCtx& c) {
#if USES_QK
    qk_tile(s, qf, sQw, sKt, c.lane);
#endif
}

// Masking for key tile t, applied only to tiles that reach the tail or the diagonal. kv_limit is
// the first invalid key: Sk (BUG_TAIL_MASK: Sk - 1, the classic off-by-one; BUG_TAIL_UNMASKED:
// the padded width); the diagonal test is the block's first row q0 (common/mask.cuh).
__device__ __forceinline__ void mask_scores(float s[M_FRAGS][N_FRAG][4], int t, const TileCtx& c) {
#if USES_QK
    const int kv0 = t * BLOCK_N;
#ifdef BUG_SHORT_UNMASKED
    if (c.Sk < BLOCK_N) return;                 // the bug: "one tile, nothing to mask"
#endif
    if (TILE_NEEDS_MASK(kv0, c.kv_limit, c.q0)) {
        FOR_MF mask_tile(s[mf], kv0, c.row_base + mf * 16, c.lane, c.kv_limit);
    }
#endif
}

// Stage 2 for key tile j: masked raw scores s -> P (or the debug mode's stand-in), o rescaled.
__device__ __forceinline__ void scores_to_p(float s[M_FRAGS][N_FRAG][4], float o[M_FRAGS][D_FRAG][4],
                                            float m[M_FRAGS][2], float l[M_FRAGS][2], float alpha[M_FRAGS][2],
                                            int j, const TileCtx& c) {
#if defined(DEBUG_QK_ONLY) || defined(DEBUG_PV_ONLY) || defined(UNIFORM_P)
    const int kv0 = j * BLOCK_N, lane = c.lane;
#endif
#if defined(DEBUG_QK_ONLY)
    FOR_MF store_scaled_s(s[mf], c.scale, c.S_out, kv0, c.row_base + mf * 16, lane, c.w);
#elif defined(DEBUG_PV_ONLY)
    FOR_MF load_s_frag(s[mf], c.P_in, kv0, c.row_base + mf * 16, lane, c.w, 0.f);   // alpha = l = 1
#elif defined(UNIFORM_P)
    FOR_MF uniform_p_tile(s[mf], kv0, lane, c.Sk);
#else
    FOR_MF {
        softmax_update(s[mf], m[mf], l[mf], alpha[mf], c.sl2, j == 0);
#ifndef BUG_NO_RESCALE
        rescale_o(o[mf], alpha[mf]);
#endif
    }
#endif
}

// Stage 3 for key tile j (BUG_PV_FIRST_TILE: only the first tile's product is accumulated).
__device__ __forceinline__ void pv_stage(float o[M_FRAGS][D_FRAG][4], const float p[M_FRAGS][N_FRAG][4],
                                         const half* sVj, int j, int lane) {
#if USES_PV
#ifdef BUG_PV_FIRST_TILE
    if (j == 0)
#endif
    pv_tile(o, p, sVj, lane);
#endif
}

// The K and V tiles of key tile t into buffer slot (the modes without QK or PV skip one).
__device__ __forceinline__ void load_kv(half* sK, half* sV, const half* Kb, const half* Vb, int slot, int t, int Sk) {
#if USES_QK
    load_tile<BLOCK_N>(sK + slot * BLOCK_N * SMEM_LD, Kb, t * BLOCK_N, Sk);
#endif
#if USES_PV
    load_tile<BLOCK_N>(sV + slot * BLOCK_N * SMEM_LD, Vb, t * BLOCK_N, Sk);
#endif
}

// ---------------------------------------------------------------- the kernel

extern "C" __global__ void __launch_bounds__(NTHREADS, 1)
flashcore_fwd(const half* __restrict__ Q, const half* __restrict__ K, const half* __restrict__ V,
              out_t* __restrict__ O, float* __restrict__ LSE,
              const float* __restrict__ S_in, const float* __restrict__ P_in,
              float* __restrict__ S_out, float* __restrict__ P_out,
              float* __restrict__ M_out, float* __restrict__ L_out,
              int H, int Sq, int Sk, float scale, int row0, int n_rows) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    half* sQ = reinterpret_cast<half*>(smem_raw);
    half* sK = sQ + BLOCK_M * SMEM_LD;       // KV_STAGES K tiles
    half* sV = sK + KV_STAGES * BLOCK_N * SMEM_LD;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    // Causal: the heaviest query tiles (last rows) start first for load balance.
    const int q0 = row0 + (IS_CAUSAL ? (gridDim.x - 1 - blockIdx.x) : blockIdx.x) * BLOCK_M;   // row0 % BLOCK_M == 0
    // Rows >= min(Sq, row0 + n_rows) are computed, never stored. Recomputed where used (from
    // the constant bank) rather than held in a register across the key loop: D=128 has none to spare.
#define ROW_END min(Sq, row0 + n_rows)
    const size_t bh = (size_t)blockIdx.z * H + blockIdx.y;
    const half* Qb = Q + bh * Sq * HEAD_DIM;
    const half* Kb = K + bh * Sk * HEAD_DIM;
    const half* Vb = V + bh * Sk * HEAD_DIM;
    const half* sQw = sQ + warp * WARP_M * SMEM_LD;          // this warp's Q rows
    // This thread's rows: row_base + mf*16 and row_base + mf*16 + 8.
    const int row_base = q0 + warp * WARP_M + (lane >> 2);

    const int n_tiles = (Sk + BLOCK_N - 1) / BLOCK_N;
    const DebugRows w{row0, n_rows, Sq, Sk};
    const size_t debug_off = bh * (size_t)n_rows * w.Skp();   // this (b, h)'s window of a debug matrix
#ifdef BUG_TAIL_MASK
    const int kv_limit = Sk - 1;
#elif defined(BUG_TAIL_UNMASKED)
    const int kv_limit = w.Skp();               // the bug: the padded keys stay visible
#else
    const int kv_limit = Sk;
#endif
#if IS_CAUSAL && !defined(DEBUG_QK_ONLY) && !defined(DEBUG_SOFTMAX_ONLY)
    // Tiles wholly above the diagonal contribute P = 0: skip them. The debug modes that
    // write [Sq,Sk] matrices sweep every tile so that every element is written.
    NITER_CONST int n_iter = min(n_tiles, (q0 + BLOCK_M + BLOCK_N - 1) / BLOCK_N);
#else
    NITER_CONST int n_iter = n_tiles;
#endif
#ifdef BUG_KV_LOOP_SQ
    n_iter = min(n_iter, (min(Sq, Sk) + BLOCK_N - 1) / BLOCK_N);   // the bug
#endif

#ifdef DEBUG_SOFTMAX_ONLY
    // Stage 2 alone: exact S in, the same online update, then a second sweep for P (common/debug_stages.cuh).
    softmax_only_stage<M_FRAGS, N_FRAG>(S_in + debug_off, P_out + debug_off, M_out, L_out, bh, Sq, n_iter,
                                        row_base, lane, w);
    return;
#endif

    float o[M_FRAGS][D_FRAG][4];
    float m[M_FRAGS][2], l[M_FRAGS][2], alpha[M_FRAGS][2];
    FOR_MF {
#pragma unroll
        for (int i = 0; i < D_FRAG; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[mf][i][e] = 0.f;
        m[mf][0] = m[mf][1] = NEG_INF;
        l[mf][0] = l[mf][1] = 0.f;
        alpha[mf][0] = alpha[mf][1] = 1.f;
    }
    u32 qf[M_FRAGS][K_STEPS][4];
    const TileCtx ctx{lane, q0, row_base, kv_limit, Sq, Sk, scale, scale * LOG2E, w,
                      S_out ? S_out + debug_off : nullptr, P_in ? P_in + debug_off : nullptr};

#if KV_STAGES == 2
    // ---- two K and two V buffers: tile t lives in buffer t % 2; the loads of tile j+2 are
    // issued at the end of iteration j, so each tile has a whole iteration to land.
#if USES_QK
    load_tile<BLOCK_M>(sQ, Qb, q0, Sq);
#endif
    load_kv(sK, sV, Kb, Vb, 0, 0, Sk);
    cp_async_commit();
    if (n_iter > 1) load_kv(sK, sV, Kb, Vb, 1, 1, Sk);
    cp_async_commit();                          // (an empty group keeps the counting uniform)
    for (int j = 0; j < n_iter; ++j) {
        cp_async_wait<1>();                     // tile j landed (tile j+1 may still fly)
        __syncthreads();                        // ... and is visible to every warp
        if (j == 0) load_q_regs(qf, sQw, lane);
        float s[M_FRAGS][N_FRAG][4];
        qk_scores(s, qf, sQw, sK + (j & 1) * BLOCK_N * SMEM_LD, ctx);
        mask_scores(s, j, ctx);
        scores_to_p(s, o, m, l, alpha, j, ctx);
        pv_stage(o, s, sV + (j & 1) * BLOCK_N * SMEM_LD, j, lane);
#ifndef BUG_NO_BARRIER
        __syncthreads();                        // every warp is done reading buffer j % 2 ...
#endif
        // ... so tile j+2 may overwrite it (BUG_NO_BARRIER: without that barrier, a fast
        // warp's copies land on a K/V tile that slower warps are still reading).
        if (j + 2 < n_iter) load_kv(sK, sV, Kb, Vb, j & 1, j + 2, Sk);
        cp_async_commit();
    }
#else
    // ---- single K and V buffers (fewer registers, half the shared memory):
    // V_j is loaded while QK_j and the softmax run, K_{j+1} while PV_j runs.
#if USES_QK
    load_tile<BLOCK_M>(sQ, Qb, q0, Sq);
    load_tile<BLOCK_N>(sK, Kb, 0, Sk);
#endif
    cp_async_commit();
    for (int j = 0; j < n_iter; ++j) {
        cp_async_wait<0>();
        __syncthreads();                        // K_j visible; every warp is done with V_{j-1}
#if USES_PV
        load_tile<BLOCK_N>(sV, Vb, j * BLOCK_N, Sk);
        cp_async_commit();
#endif
        if (j == 0) load_q_regs(qf, sQw, lane);
        float s[M_FRAGS][N_FRAG][4];
        qk_scores(s, qf, sQw, sK, ctx);
        mask_scores(s, j, ctx);
        scores_to_p(s, o, m, l, alpha, j, ctx);
#ifdef BUG_NO_BARRIER
        if (USES_QK && j + 1 < n_iter) load_tile<BLOCK_N>(sK, Kb, (j + 1) * BLOCK_N, Sk);   // the bug
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
#else
        cp_async_wait<0>();
        __syncthreads();                        // V_j visible; every warp is done reading K_j
        if (USES_QK && j + 1 < n_iter) load_tile<BLOCK_N>(sK, Kb, (j + 1) * BLOCK_N, Sk);   // overlaps PV
        cp_async_commit();
#endif
        pv_stage(o, s, sV, j, lane);
    }
#endif

#if USES_PV
    // ---- epilogue: O = O_acc / l (l = 1 where no softmax ran), optional LSE = scale*m + log(l)
    // (m is the max of the raw scores)
#ifdef BUG_BATCH_OFFSET
    out_t* Ob = O + (size_t)blockIdx.y * Sq * HEAD_DIM;   // the bug: batch offset dropped
#else
    out_t* Ob = O + bh * Sq * HEAD_DIM;
#endif
#ifdef BUG_Q_TAIL_SWAP
    const bool tail_tile = q0 + BLOCK_M > Sq;
#endif
    FOR_MF {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#if defined(DEBUG_PV_ONLY) || defined(UNIFORM_P)
            const float inv = 1.f;
#else
            const float inv = finish_row(m[mf][h], l[mf][h], scale, LSE, bh, row_base + mf * 16, h, w, lane);
#endif
#ifdef BUG_FRAG_SWAP
            const int row_w = row_base + mf * 16 + 8 * (1 - h);
#elif defined(BUG_Q_TAIL_SWAP)
            const int row_w = row_base + mf * 16 + 8 * (tail_tile ? 1 - h : h);
#else
            const int row_w = row_base + mf * 16 + 8 * h;
#endif
            if (row_w < ROW_END) store_o_half(Ob + (size_t)row_w * HEAD_DIM, o[mf], h, inv, lane);
        }
    }
#endif
}
