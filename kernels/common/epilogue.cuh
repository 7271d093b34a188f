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
__device__ __forceinline__ float finish_row(float m, float& l, float scale, float* LSE, size_t bh, int frag_row,
                                            int h, DebugRows w, int lane) {
    l = quad_sum(l);
    const float inv = 1.f / l;
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

#endif  // FLASHCORE_COMMON_EPILOGUE_CUH
