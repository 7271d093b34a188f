// kernels/common/flags.cuh -- the -D flag contract both attention kernels read (docs/DESIGN.md,
// debug_modes/registry.py): the head dim and causal switch every variant carries, and what each
// debug mode means for the stages a build runs. One decoding for both kernels, so a mode cannot
// mean one thing on sm_80 and another on sm_90a.
//   HEAD_DIM            64 or 128 (required)
//   IS_CAUSAL           0 or 1 (default 0)
//   USES_QK             1 where the build computes Q.K^T: full, FP32_P, DEBUG_QK_ONLY (the modes
//                       that inject S or P, or make P, skip the product and the K loads)
//   USES_PV             1 where the build computes P.V: every mode but DEBUG_QK_ONLY and
//                       DEBUG_SOFTMAX_ONLY (which stop before it and write no O)
//   out_t               the element type of O: fp32 with FP32_P (so the fp16 output cast does not
//                       hide P's precision), else fp16
// The tile macros (BLOCK_N, KV_STAGES, ...) are each kernel's own: they follow its engine.
#ifndef FLASHCORE_COMMON_FLAGS_CUH
#define FLASHCORE_COMMON_FLAGS_CUH
#include <cuda_fp16.h>

#ifndef HEAD_DIM
#error "HEAD_DIM must be defined (64 or 128)"
#endif
#if HEAD_DIM != 64 && HEAD_DIM != 128
#error "HEAD_DIM must be 64 or 128"
#endif
#ifndef IS_CAUSAL
#define IS_CAUSAL 0
#endif

#if defined(DEBUG_QK_ONLY) || defined(FP32_P) || !(defined(DEBUG_SOFTMAX_ONLY) || defined(DEBUG_PV_ONLY) || defined(UNIFORM_P))
#define USES_QK 1
#else
#define USES_QK 0
#endif
#if defined(DEBUG_QK_ONLY) || defined(DEBUG_SOFTMAX_ONLY)
#define USES_PV 0
#else
#define USES_PV 1
#endif

#ifdef FP32_P
typedef float out_t;
#else
typedef half out_t;
#endif

#endif  // FLASHCORE_COMMON_FLAGS_CUH
