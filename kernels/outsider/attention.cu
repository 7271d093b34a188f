// attention.cu -- a minimal fused attention forward (flash-attention style online softmax), fp32.
//
// Written in the style of the "flash-attention-minimal" repos: one thread block per (batch, head),
// one thread per query row of a tile, K/V tiles staged in shared memory, l and m kept in global
// buffers that the host pre-initialises (l = 0, m = -inf, O = 0).
//
//   Q, K, V, O : float32 [B, N, H, d]   (row (b, n, h) is d contiguous floats)
//   l, m       : float32 [B, H, N]      on exit m = max_j s_ij, l = sum_j exp(s_ij - m_i),
//                                       s_ij = softmax_scale * q_i . k_j; O = softmax(s) V
//   launch     : grid (B, H), block (Br), dynamic smem (Br*d + 2*Bc*d + Br*Bc) * sizeof(float)
//   only d = 64; self-attention (Sq = Sk = N), non-causal, any N >= 1.
//   needs --expt-relaxed-constexpr (cdiv is a host constexpr function used in device code).
//
// Debug flags (stage checks):
//   -DDEBUG_UNIFORM_P  P_ij = 1 for every valid key (no exp): O = column mean of V, l = N.
//   -DDEBUG_QK_TILE0   write the scaled scores s_ij of the first key tile (j < min(Bc, N)) into
//                      O[b, i, h, j]; the other columns of O are left as they were (0).
//
// Seeded bugs (must-fail checks; all off by default):
//   -DBUG_TAIL_KEYS  the last key tile is treated as full: padded keys j >= N are not masked,
//                    they score 0 (zero K) and take softmax weight. Wrong only when N % Bc != 0.
//   -DBUG_RACE       the __syncthreads() that ends the reads of a K/V tile is missing: a warp whose
//                    rows are all past N (a partial last query tile) skips the work and loads the
//                    next tile over the one the other warp still reads (WAR race on shared memory;
//                    strikes when a query tile has a warp with no row left and Tc >= 2).
//   -DBUG_OOB_WRITE  the O store is not bounded by N: rows n in [N, Tr*Br) of the tail query tile
//                    are written, past the end of O for b = B-1 (only when N % Br != 0).
//   -DBUG_HANG       the full-tile fast path `continue`s without advancing the key tile: the
//                    kernel never finishes when a full tile precedes the last (Tc >= 2, N > 32).

#include <cuda_runtime.h>
#include <cmath>
#include <cstdint>
#include <torch/types.h>

constexpr int Bc = 32;   // keys per tile
constexpr int Br = 64;   // query rows per tile = threads per block (two warps)
constexpr int d = 64;    // head dim

constexpr int cdiv(int a, int b) { return (a + b - 1) / b; }

// S = scale * q K_j^T for this thread's row, stored in column tx of S (S[y * Br + tx]).
// Returns the max of the tile's scores. Keys y >= kv_valid are masked (-inf) when MASK.
template <bool MASK>
__device__ __forceinline__ float tile_scores(const float (&q)[d], const float* Kj, float* S, const int tx,
                                             const int kv_valid, const float softmax_scale) {
    float tile_max = -INFINITY;
    for (int y = 0; y < Bc; y++) {
        float s = 0.f;
#pragma unroll
        for (int x = 0; x < d; x++) s += q[x] * Kj[y * d + x];
        s *= softmax_scale;
        if (MASK && y >= kv_valid) s = -INFINITY;
        S[y * Br + tx] = s;
        tile_max = fmaxf(tile_max, s);
    }
    return tile_max;
}

// Online softmax update with the tile's scores in S, then acc = alpha * acc + P V_j.
template <bool MASK>
__device__ __forceinline__ void tile_softmax_pv(const float* Vj, float* S, const int tx, const int kv_valid,
                                                const float tile_max, float& row_m, float& row_l,
                                                float (&acc)[d]) {
    const float m_new = fmaxf(row_m, tile_max);
#ifdef DEBUG_UNIFORM_P
    const float alpha = 1.f;                      // P does not depend on m: nothing to rescale
#else
    const float alpha = expf(row_m - m_new);      // row_m = -inf on the first tile: alpha = 0
#endif
    float tile_l = 0.f;
    for (int y = 0; y < Bc; y++) {
        const bool valid = !MASK || y < kv_valid;
#ifdef DEBUG_UNIFORM_P
        const float p = valid ? 1.f : 0.f;
#else
        const float p = valid ? expf(S[y * Br + tx] - m_new) : 0.f;
#endif
        S[y * Br + tx] = p;
        tile_l += p;
    }
    row_l = alpha * row_l + tile_l;
    row_m = m_new;

#pragma unroll
    for (int x = 0; x < d; x++) acc[x] *= alpha;
    for (int y = 0; y < Bc; y++) {
        const float p = S[y * Br + tx];
#pragma unroll
        for (int x = 0; x < d; x++) acc[x] += p * Vj[y * d + x];
    }
}

template <int HEAD_D>
__global__ void flash_fwd_kernel(const float* Q, const float* K, const float* V, const int N, const int H,
                                 const int Tc, const int Tr, const float softmax_scale,
                                 float* l, float* m, float* O) {
    static_assert(HEAD_D == d, "this kernel is written for d = 64");
    const int tx = threadIdx.x;
    const int b = blockIdx.x;
    const int h = blockIdx.y;

    // BSHD: (b, n, h, x) at ((b * N + n) * H + h) * d + x.  l, m: (b, h, n) at (b * H + h) * N + n
    const int64_t row_stride = (int64_t)H * d;
    const int64_t qkv_offset = ((int64_t)b * N * H + h) * d;
    const int64_t lm_offset = ((int64_t)b * H + h) * N;

    extern __shared__ float sram[];
    float* Qi = sram;              // Br x d
    float* Kj = Qi + Br * d;       // Bc x d
    float* Vj = Kj + Bc * d;       // Bc x d
    float* S = Vj + Bc * d;        // Bc x Br (column tx belongs to thread tx)

    for (int i = 0; i < Tr; i++) {
        // Q_i, zero-padded past N; element e of the tile by thread e % Br (coalesced)
        for (int it = 0; it < cdiv(Br * d, Br); it++) {
            const int e = it * Br + tx;
            const int r = e / d, c = e % d;
            const int n = i * Br + r;
            if (e < Br * d) Qi[e] = (n < N) ? Q[qkv_offset + n * row_stride + c] : 0.f;
        }
        __syncthreads();

        const int row = i * Br + tx;
        float q[d];
#pragma unroll
        for (int x = 0; x < d; x++) q[x] = Qi[tx * d + x];

        float row_m = -INFINITY, row_l = 0.f;
        float acc[d];
#pragma unroll
        for (int x = 0; x < d; x++) acc[x] = 0.f;
        if (row < N) {
            row_m = m[lm_offset + row];
            row_l = l[lm_offset + row];
#pragma unroll
            for (int x = 0; x < d; x++) acc[x] = O[qkv_offset + row * row_stride + x];
        }

        int j = 0;
        while (j < Tc) {
            // K_j, V_j, zero-padded past N
            for (int it = 0; it < cdiv(Bc * d, Br); it++) {
                const int e = it * Br + tx;
                const int r = e / d, c = e % d;
                const int n = j * Bc + r;
                if (e < Bc * d) {
                    Kj[e] = (n < N) ? K[qkv_offset + n * row_stride + c] : 0.f;
                    Vj[e] = (n < N) ? V[qkv_offset + n * row_stride + c] : 0.f;
                }
            }
            __syncthreads();   // the tile is loaded by every thread and read by every thread

#ifdef BUG_TAIL_KEYS
            const int kv_valid = Bc;                     // every tile assumed full
#else
            const int kv_valid = min(Bc, N - j * Bc);    // keys of this tile that exist
#endif

#ifdef DEBUG_QK_TILE0
            // stage check: the scores of the first key tile, into O[b, row, h, 0 : min(Bc, N)]
            tile_scores<true>(q, Kj, S, tx, kv_valid, softmax_scale);
            if (row < N) {
                for (int y = 0; y < kv_valid; y++) O[qkv_offset + row * row_stride + y] = S[y * Br + tx];
            }
            __syncthreads();
            break;
#else
            // Every tile but the last is full and skips the masking; the last (may be partial)
            // takes the masked path. Rows past N (a partial last query tile) skip the work.
            const bool full = j < Tc - 1;
            if (row < N) {
                if (full) {
                    const float tile_max = tile_scores<false>(q, Kj, S, tx, Bc, softmax_scale);
                    tile_softmax_pv<false>(Vj, S, tx, Bc, tile_max, row_m, row_l, acc);
#ifdef BUG_HANG
                    continue;    // on to the next tile
#endif
                } else {
                    const float tile_max = tile_scores<true>(q, Kj, S, tx, kv_valid, softmax_scale);
                    tile_softmax_pv<true>(Vj, S, tx, kv_valid, tile_max, row_m, row_l, acc);
                }
            }
#ifndef BUG_RACE
            __syncthreads();   // otherwise a warp with no rows left races ahead and overwrites Kj, Vj
#endif
            j++;
#endif
        }

#ifndef DEBUG_QK_TILE0
        // normalise and write O, l, m
#ifdef BUG_OOB_WRITE
        {
#else
        if (row < N) {
#endif
#pragma unroll
            for (int x = 0; x < d; x++) O[qkv_offset + row * row_stride + x] = acc[x] / row_l;
        }
        if (row < N) {
            m[lm_offset + row] = row_m;
            l[lm_offset + row] = row_l;
        }
#endif
    }
}

torch::Tensor forward(torch::Tensor Q, torch::Tensor K, torch::Tensor V) {
    TORCH_CHECK(Q.is_cuda() && Q.scalar_type() == torch::kFloat32, "Q must be a float32 CUDA tensor");
    TORCH_CHECK(Q.dim() == 4 && Q.size(3) == d, "Q must be [B, N, H, 64]");
    TORCH_CHECK(K.sizes() == Q.sizes() && V.sizes() == Q.sizes(), "self-attention only: K, V like Q");
    Q = Q.contiguous();
    K = K.contiguous();
    V = V.contiguous();
    const int B = Q.size(0);
    const int N = Q.size(1);
    const int H = Q.size(2);

    const int Tc = cdiv(N, Bc);
    const int Tr = cdiv(N, Br);
    const float softmax_scale = 1.0f / sqrtf((float)d);

    auto O = torch::zeros_like(Q);
    auto l = torch::zeros({B, H, N}, Q.options());
    auto m = torch::full({B, H, N}, -INFINITY, Q.options());

    const int sram_size = (Br * d + 2 * Bc * d + Br * Bc) * sizeof(float);
    dim3 grid(B, H);
    dim3 block(Br);
    flash_fwd_kernel<d><<<grid, block, sram_size>>>(
        Q.data_ptr<float>(), K.data_ptr<float>(), V.data_ptr<float>(), N, H, Tc, Tr, softmax_scale,
        l.data_ptr<float>(), m.data_ptr<float>(), O.data_ptr<float>());
    return O;
}
