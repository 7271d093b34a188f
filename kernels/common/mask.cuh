// kernels/common/mask.cuh -- score masking of one key tile, in the m16n8 fragment layout
// (common/util.cuh): the tail (keys >= the first invalid key, so the zero-filled rows of a
// partial K tile and the padded columns Skp - Sk score -inf) and, with IS_CAUSAL, the keys above
// the diagonal (key j visible to query i iff j <= i, top-left aligned as SDPA's is_causal).
// Both kernels mask the same way; what differs is which bound they pass (each kernel's seeded
// bugs live at its call site: BUG_TAIL_MASK / BUG_TAIL_UNMASKED / BUG_SHORT_UNMASKED in
// flashcore_fused.cu, BUG_CAUSAL_MASK_ROW in flashcore_hopper.cu).
//
// Requires: IS_CAUSAL and BLOCK_N defined before inclusion.
#ifndef FLASHCORE_COMMON_MASK_CUH
#define FLASHCORE_COMMON_MASK_CUH
#include "util.cuh"

#if !defined(IS_CAUSAL) || !defined(BLOCK_N)
#error "common/mask.cuh needs IS_CAUSAL and BLOCK_N"
#endif

// Does key tile [kv0, kv0 + BLOCK_N) need masking? It does when it reaches kv_limit (the tail)
// or, causal, when its last key lies above the diagonal of first_row (the first query row of the
// rows that share this test: a tile that no row of them sees in full). Only such tiles pay for
// mask_tile's compares; the rest of the sweep runs unmasked.
// A macro, not a function returning bool: as a function, nvcc lays the short-circuit's branches
// out differently and the sm_80 kernel's SASS changes (measured); as a macro the condition is the
// caller's own `if`, exactly as the kernels wrote it before it was shared.
#define TILE_NEEDS_MASK(kv0, kv_limit, first_row) \
    ((kv0) + BLOCK_N > (kv_limit) || (IS_CAUSAL && (kv0) + BLOCK_N - 1 > (first_row)))

// Tail (key >= kv_limit) and causal (key > query) masking to -inf of one fragment's scores.
// row_base = this thread's first row (absolute query index), kv0 = the tile's first key.
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

#endif  // FLASHCORE_COMMON_MASK_CUH
