// kernels/common/debug_io.cuh -- reads and writes of the debug modes' [rows, keys] fp32 matrices
// (S_out, P_out, S_in, P_in: docs/DESIGN.md "Stage boundaries"), in the m16n8 fragment layout
// (common/util.cuh), and the window / padded-width logic that places them. The seams
// flash-attention's shared sm80/sm90 headers lack: both kernels read and write these matrices
// with this code, so one harness check of the layout covers both.
//
// The matrices hold a window of query rows (row i of the problem at i - row0) at the tile-padded
// width Skp = ceil(Sk / BLOCK_N) * BLOCK_N: every column of every key tile, padding included (the
// softmax consumes the padded columns of the tail tile, so the QK check must see them as -inf and
// P over them must be 0). Skp is a multiple of BLOCK_N, so each thread's column pair is 8-byte
// aligned. Rows past the window's end read as fill and are not stored. One row pointer per
// fragment row half: every element is that pointer plus a constant.
//
// Requires: BLOCK_N defined before inclusion.
#ifndef FLASHCORE_COMMON_DEBUG_IO_CUH
#define FLASHCORE_COMMON_DEBUG_IO_CUH
#include "util.cuh"

#ifndef BLOCK_N
#error "common/debug_io.cuh needs BLOCK_N"
#endif

// The window of rows the debug matrices hold. Holds the kernel's own arguments, not derived
// values: ptxas then re-reads them from the constant bank where they are used instead of keeping
// them in registers across the key loop.
struct DebugRows {
    int row0, n_rows, Sq, Sk;
    __device__ __forceinline__ int row_end() const { return min(Sq, row0 + n_rows); }
    __device__ __forceinline__ int Skp() const { return (Sk + BLOCK_N - 1) / BLOCK_N * BLOCK_N; }
};

// One fragment's columns kv0.. of rows row_base, row_base + 8 from src (fill past the window).
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
// One fragment's columns kv0.. of rows row_base, row_base + 8 to dst (rows past the window: none).
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

#endif  // FLASHCORE_COMMON_DEBUG_IO_CUH
