// kernels/common/epilogue.cuh -- the end of the key sweep for one 16-row fragment, in the m16n8
// fragment layout (common/util.cuh): each row's softmax total l (the quad's partial sums), its
// log-sum-exp, and O = O_acc / l stored two columns per thread. Both kernels finish the same way;
// where they differ (which row an O half goes to: the sm_80 kernel's seeded store bugs
// BUG_FRAG_SWAP, BUG_Q_TAIL_SWAP, BUG_BATCH_OFFSET) the caller chooses the row.
//
// The argument lists keep the kernels' original evaluation order, so the move left the machine
// code as it was (tests/test_shared_code.py says how that was checked): the row is formed inside
// finish_row after the quad sum, and the window bound is read there (w.row_end()), not passed in.
#ifndef FLASHCORE_COMMON_EPILOGUE_CUH
#define FLASHCORE_COMMON_EPILOGUE_CUH
#include "util.cuh"
#include "debug_io.cuh"   // DebugRows: the window of rows a block stores

// Row half h (row frag_row + 8h) of a fragment after the last key tile: l summed over the quad
// and, where LSE is given and the row is inside the window w, LSE = scale*m + ln(l) (m is the max
// of the raw scores) at bh * Sq + row. Returns 1/l, the O normaliser.
// FAST_INV: 1/l by the approximate reciprocal (MUFU.RCP alone, within 1 ulp; l >= 1, as the row's
// max contributes exp(0)), for a caller inside a key loop: 1.f / l is IEEE division, whose slow
// path is a subroutine call, and a call in the Hopper kernel's loop holds the loop to the launch's
// register count instead of setmaxnreg's (ptxas spilled 392 bytes at D = 128, version 21).
template <bool FAST_INV = false>
__device__ __forceinline__ float finish_row(float m, float& l, float scale, float* LSE, size_t bh, int frag_row,
                                            int h, DebugRows w, int lane) {
    l = quad_sum(l);
    const float inv = FAST_INV ? __fdividef(1.f, l) : 1.f / l;
    const int row = frag_row + 8 * h;
    if (LSE != nullptr && row < w.row_end() && (lane & 3) == 0) LSE[bh * w.Sq + row] = m * scale + logf(l);
    return inv;
}

// Row half h of one fragment's O accumulator (DF n8 tiles) times inv, to the output row that
// starts at orow (the caller tests the row against the window and forms the pointer).
template <int DF, typename T>
__device__ __forceinline__ void store_o_half(T* orow, const float (&o)[DF][4], int h, float inv, int lane) {
#pragma unroll
    for (int i = 0; i < DF; ++i)
        store_out2(orow + i * 8 + (lane & 3) * 2, o[i][2 * h] * inv, o[i][2 * h + 1] * inv);
}

// The same row half in 16-byte stores (the Hopper kernel's WIDE_O_STORE, version 18). Two columns
// per thread make each warp-wide store 8 rows x 4 bytes x 4 lanes: 8 lines touched for 128 bytes,
// and BLOCK_CLOCKS measured the epilogue at ~3,400 clocks per block at D = 128 (kernels/NOTES.md).
// Here the quad's four lanes first trade their words so that lane q holds all eight columns of
// n8 tile 4g+q (a 4 x 4 transpose of packed half2 words in two shuffle rounds, xor 1 then xor 2),
// and a warp's store covers 8 rows x 64 contiguous bytes. Every lane shuffles whether or not its
// row is stored (a quad shares its row, so `store` is quad-uniform, but the shuffles are
// warp-wide); `store` says whether this lane's row is inside the window. fp16 output only (the
// float output of FP32_P keeps the two-column form, store_o_half_wide's overload below).
template <int DF>
__device__ __forceinline__ void store_o_half_wide(half* orow, const float (&o)[DF][4], int h, float inv, int lane,
                                                  bool store) {
    static_assert(DF % 4 == 0, "the quad transpose takes n8 tiles four at a time");
    const bool odd = lane & 1, high = lane & 2;
#pragma unroll
    for (int g = 0; g < DF / 4; ++g) {
        u32 w[4];                                   // w[k]: this lane's two columns of tile 4g+k
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const __half2 x = __floats2half2_rn(o[4 * g + k][2 * h] * inv, o[4 * g + k][2 * h + 1] * inv);
            w[k] = *reinterpret_cast<const u32*>(&x);
        }
        // round 1 (xor 1): the words whose index differs from the lane in bit 0 change lanes
        {
            const u32 y0 = __shfl_xor_sync(0xffffffffu, odd ? w[0] : w[1], 1);
            const u32 y1 = __shfl_xor_sync(0xffffffffu, odd ? w[2] : w[3], 1);
            if (odd) { w[0] = y0; w[2] = y1; } else { w[1] = y0; w[3] = y1; }
        }
        // round 2 (xor 2): the same in bit 1; now w[k] is lane k's two columns of tile 4g+q
        {
            const u32 y0 = __shfl_xor_sync(0xffffffffu, high ? w[0] : w[2], 2);
            const u32 y1 = __shfl_xor_sync(0xffffffffu, high ? w[1] : w[3], 2);
            if (high) { w[0] = y0; w[1] = y1; } else { w[2] = y0; w[3] = y1; }
        }
        if (store) *reinterpret_cast<uint4*>(orow + (4 * g + (lane & 3)) * 8) = make_uint4(w[0], w[1], w[2], w[3]);
    }
}
template <int DF>
__device__ __forceinline__ void store_o_half_wide(float* orow, const float (&o)[DF][4], int h, float inv, int lane,
                                                  bool store) {
    if (store) store_o_half(orow, o, h, inv, lane);
}

// Staged rows (the Hopper kernel's STAGED_O_STORE, version 20): a warp's 16 rows x D halves in
// shared memory, row r at r*D halves, its 16-byte chunk c at chunk (c & ~7) | ((c ^ r) & 7). The
// XOR swizzle puts the two-column writes of one warp-wide store (8 rows, one chunk each) on 32
// distinct banks and keeps the whole-row reads at the fewest wavefronts.
template <int D>
__device__ __forceinline__ int staged_offset(int r, int chunk) {
    return r * D + ((chunk & ~7) | ((chunk ^ r) & 7)) * 8;
}
// Row half h of one fragment's O accumulator (DF n8 tiles) times inv, into the warp's staged rows
// (shared-space stores: the kernel's aligned shared pointer is a generic one to the compiler).
template <int DF>
__device__ __forceinline__ void stage_o_half(half* s, const float (&o)[DF][4], int h, float inv, int lane) {
    const int r = (lane >> 2) + 8 * h;
    const u32 base = smem_u32(s) + (lane & 3) * 4;
#pragma unroll
    for (int i = 0; i < DF; ++i) {
        const __half2 x = __floats2half2_rn(o[i][2 * h] * inv, o[i][2 * h + 1] * inv);
        asm volatile("st.shared.b32 [%0], %1;" :: "r"(base + staged_offset<DF * 8>(r, i) * 2),
                     "r"(*reinterpret_cast<const u32*>(&x)) : "memory");
    }
}
// The warp's 16 staged rows to output rows row0 .. row0+15 of O_bh (those below row_end), 16 bytes
// per lane: a warp-wide store writes 512 contiguous bytes (two rows at D = 128, four at 64).
template <int D>
__device__ __forceinline__ void store_staged_rows(half* O_bh, const half* s, int row0, int row_end, int lane) {
    constexpr int CHUNKS = D / 8, ROWS = 32 / CHUNKS;   // 16-byte chunks per row, rows per store
#pragma unroll
    for (int k = 0; k < 16 / ROWS; ++k) {
        const int r = k * ROWS + lane / CHUNKS, c = lane % CHUNKS;
        uint4 x;
        asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];" : "=r"(x.x), "=r"(x.y), "=r"(x.z), "=r"(x.w)
                     : "r"(smem_u32(s) + staged_offset<D>(r, c) * 2) : "memory");
        // (in asm: from the shared loads' outputs NVVM split the 16-byte store into four)
        if (row0 + r < row_end)
            asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" :: "l"(O_bh + (size_t)(row0 + r) * D + c * 8),
                         "r"(x.x), "r"(x.y), "r"(x.z), "r"(x.w) : "memory");
    }
}

#endif  // FLASHCORE_COMMON_EPILOGUE_CUH
