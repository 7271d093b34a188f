// A naive attention forward for the tests of kernels checked as written: one thread per query
// row, two passes over the keys (max, then sum and P.V) in fp32; I/O in the element type ELEM_T
// (half, __nv_bfloat16 or float: -DT=...), layout [B, H, S, D], D = HEAD_DIM, extern "C" entry.
// The grid is (cdiv(Sq, 64), H, B) with 64 threads; O and LSE (natural log) are written.
//   -DBUG_READ_PAST  the key loop runs to Sk inclusive: one key past the end of K and V.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#ifndef ELEM_T
#define ELEM_T half
#endif
#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif

__device__ __forceinline__ float to_f(half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ void store(half* p, float x) { *p = __float2half_rn(x); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }
__device__ __forceinline__ void store(float* p, float x) { *p = x; }

extern "C" __global__ void naive_attention(const ELEM_T* q, const ELEM_T* k, const ELEM_T* v, ELEM_T* o, float* lse,
                                           int Sq, int Sk, float scale) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int h = blockIdx.y, b = blockIdx.z, H = gridDim.y;
    if (i >= Sq) return;
    const size_t bh = (size_t)b * H + h;
    const ELEM_T* qi = q + (bh * Sq + i) * HEAD_DIM;
    const ELEM_T* kb = k + bh * Sk * HEAD_DIM;
    const ELEM_T* vb = v + bh * Sk * HEAD_DIM;
    int n = Sk;
#ifdef BUG_READ_PAST
    n = Sk + 1;
#endif
    float m = -INFINITY;
    for (int j = 0; j < n; ++j) {
        float s = 0.f;
        for (int x = 0; x < HEAD_DIM; ++x) s += to_f(qi[x]) * to_f(kb[(size_t)j * HEAD_DIM + x]);
        m = fmaxf(m, s * scale);
    }
    float acc[HEAD_DIM];
    for (int x = 0; x < HEAD_DIM; ++x) acc[x] = 0.f;
    float l = 0.f;
    for (int j = 0; j < n; ++j) {
        float s = 0.f;
        for (int x = 0; x < HEAD_DIM; ++x) s += to_f(qi[x]) * to_f(kb[(size_t)j * HEAD_DIM + x]);
        const float p = expf(s * scale - m);
        l += p;
        for (int x = 0; x < HEAD_DIM; ++x) acc[x] += p * to_f(vb[(size_t)j * HEAD_DIM + x]);
    }
    for (int x = 0; x < HEAD_DIM; ++x) store(o + (bh * Sq + i) * HEAD_DIM + x, acc[x] / l);
    lse[bh * Sq + i] = m + logf(l);
}
