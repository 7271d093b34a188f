// kernels/hopper/ptx.cuh -- sm_90a building blocks: TMA tensor-map loads, mbarriers, wgmma
// shared-memory descriptors and the fences that order register code around wgmma.
// Everything here is a thin, documented wrapper around one PTX instruction; no policy.
#pragma once
#include "../common/util.cuh"      // u32, smem_u32 (shared with the sm_80 kernel)

typedef unsigned long long u64;

// The CUtensorMap the host encodes (harness/toolchain/tma.py): 128 opaque bytes. cuda.h declares
// it alignas(64) (the TMA instruction needs a 64-byte aligned operand); CuPy copies the NumPy
// structured value into the parameter buffer at the offset the cubin's parameter table gives.
struct __align__(64) TmaDesc { u64 opaque[16]; };

// A wrong mbarrier phase or a wrong expect_tx byte count is a hang, not a wrong number: every
// wait is bounded and traps (a fault the harness reports) after this many polls. Each failed
// try_wait suspends the thread for the hardware's time limit first: measured on an H200
// (scripts/hopper_selfcheck.py --trap-check, a K map with half the expected box), 2^20 polls
// faulted after 4.7 s (~4.5 us per poll), 2^24 and 2^28 did not fault within 45 s (2^28 would be
// ~20 min, past the harness's 300 s worker timeout). 2^21 ~ 10 s: far beyond any legitimate
// wait (one tile load or one tile of another warpgroup's compute: microseconds), well inside it.
// MBAR_SPIN_LIMIT 0: unbounded (a stuck wait spins until the process is killed; the seeded hang
// BUG_EMPTY_COUNT builds this way, so that it reads as the harness's HANG, not as a trap).
#ifndef MBAR_SPIN_LIMIT
#define MBAR_SPIN_LIMIT (1u << 21)
#endif

// ---------------------------------------------------------------- named barriers
// bar.sync / bar.arrive on hardware barrier `id` (1..15; 0 is __syncthreads) that completes once
// `count` threads (a multiple of 32) have arrived or synced: the consumer warpgroups' turns.
__device__ __forceinline__ void named_bar_sync(u32 id, u32 count) {
    asm volatile("bar.sync %0, %1;" :: "r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(u32 id, u32 count) {
    asm volatile("bar.arrive %0, %1;" :: "r"(id), "r"(count) : "memory");
}

// ---------------------------------------------------------------- mbarrier
__device__ __forceinline__ void mbar_init(u64* bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(smem_u32(bar)), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the async proxy (TMA) before any copy signals them.
__device__ __forceinline__ void mbar_fence_init() {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
// Generic-proxy writes to shared memory (the barriers' init) ordered before the async proxy's
// (TMA) accesses that this thread issues next: EARLY_LOADS issues copies before __syncthreads.
__device__ __forceinline__ void fence_proxy_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
// One arrival that also announces `bytes` of transaction the TMA copies will complete.
__device__ __forceinline__ void mbar_arrive_expect_tx(u64* bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;"
                 :: "r"(smem_u32(bar)), "r"(bytes) : "memory");
}
// One plain arrival (the consumers' "this stage is free again").
__device__ __forceinline__ void mbar_arrive(u64* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(u64* bar, u32 parity) {
    u32 done;
    asm volatile("{\n.reg .pred p;\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 "selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(smem_u32(bar)), "r"(parity) : "memory");
    return done != 0;
}
// Waits until the phase of parity `parity` has completed; traps after MBAR_SPIN_LIMIT polls
// (MBAR_SPIN_LIMIT 0: never).
__device__ __forceinline__ void mbar_wait(u64* bar, u32 parity) {
#if MBAR_SPIN_LIMIT == 0
    while (!mbar_try_wait(bar, parity)) {
    }
#else
    u32 polls = 0;
    while (!mbar_try_wait(bar, parity)) {
        if (++polls == MBAR_SPIN_LIMIT) __trap();
    }
#endif
}
// ROLLED_POLLS=1 (version 26): the bounded poll loops stay rolled. Unrolled, ptxas lays out 32
// try_wait/branch pairs per wait (64 instructions), two of them inside the item-boundary key loop
// (its K/V and next-Q waits), and every iteration jumps over them (Nsight Compute at 6c13dfc:
// no_instruction stalls at the jump targets and the loop head).
#ifndef ROLLED_POLLS
#define ROLLED_POLLS 0
#endif
#if ROLLED_POLLS
#define POLL_LOOP _Pragma("unroll 1")
#else
#define POLL_LOOP
#endif
// The same wait without the trap: false once MBAR_SPIN_LIMIT polls have failed (never with
// MBAR_SPIN_LIMIT 0), and the caller traps where that costs nothing. A `trap` reachable inside
// a loop whose live values exceed the launch's register count (65536 / NTHREADS) makes ptxas
// spill them there, though setmaxnreg.inc granted more: the consumers' key loop of the
// producer-warpgroup build (168 at 384 threads) waits on every tile's full barrier, and with
// mbar_wait's trap in it ptxas spilled 808 bytes at D = 128, BLOCK_N = 160 (0 without, highest
// register R199). kernels/NOTES.md (part 2, "the 168-register ceiling") has the measurements.
__device__ __forceinline__ bool mbar_wait_bounded(u64* bar, u32 parity) {
#if MBAR_SPIN_LIMIT == 0
    POLL_LOOP
    while (!mbar_try_wait(bar, parity)) {
    }
#else
    u32 polls = 0;
    POLL_LOOP
    while (!mbar_try_wait(bar, parity)) {
        if (++polls == MBAR_SPIN_LIMIT) return false;
    }
#endif
    return true;
}

// ---------------------------------------------------------------- TMA
// One box of a 3-D tensor map (coordinates innermost first: column, row, head) into shared
// memory, completing `bytes of the box` of transaction on `bar`. Out-of-bounds elements (rows
// past S of this head) are written as zeros and still count toward the transaction.
__device__ __forceinline__ void tma_load_3d(void* dst, const TmaDesc* map, u64* bar, int c0, int c1, int c2) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4}], [%5];"
                 :: "r"(smem_u32(dst)), "l"((u64)map), "r"(c0), "r"(c1), "r"(c2), "r"(smem_u32(bar))
                 : "memory");
}
// The same box brought into L2 only (no shared memory, no barrier): a later tma_load_3d of it
// then waits for L2, not DRAM (version 22's Q, reloaded a tile before it is needed).
__device__ __forceinline__ void tma_prefetch_l2_3d(const TmaDesc* map, int c0, int c1, int c2) {
    asm volatile("cp.async.bulk.prefetch.tensor.3d.L2.global.tile [%0, {%1, %2, %3}];"
                 :: "l"((u64)map), "r"(c0), "r"(c1), "r"(c2) : "memory");
}
__device__ __forceinline__ void tma_prefetch_desc(const TmaDesc* map) {
    asm volatile("prefetch.tensormap [%0];" :: "l"((u64)map) : "memory");
}

// ---------------------------------------------------------------- wgmma
// Shared-memory matrix descriptor, 128-byte swizzle (layout type 1 in bits 62-63). Addresses and
// byte offsets are encoded >> 4 in 14-bit fields; the swizzle atoms (8 rows x 128 bytes) must be
// 1024-byte aligned so the base-offset field stays 0.
//   K-major (Q, K):  lbo unused (16), sbo = 1024 (next 8-row group); +32 bytes per k16 step inside
//                    a 64-column panel, the next panel for k >= 64.
//   MN-major (V, trans-b): lbo = panel stride (next 64 columns of D), sbo = 1024 (next 8 keys);
//                    +2048 bytes per 16 keys.
__device__ __forceinline__ u64 smem_desc(const void* p, u32 lbo_bytes, u32 sbo_bytes) {
    return (u64)((smem_u32(p) & 0x3FFFF) >> 4) | ((u64)((lbo_bytes & 0x3FFFF) >> 4) << 16)
         | ((u64)((sbo_bytes & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}
// The descriptor of the operand `bytes` further on, from one already made: the address field is the
// low 14 bits of the low word, in 16-byte units, and every valid shared address is below 2^18, so
// the add cannot carry out of the field and the high word (LBO's neighbour SBO, the swizzle) stays.
// smem_desc per k16 step costs ptxas four dependent uniform ops (and, shift, or, move) on the path
// to each HGMMA; this is one UIADD3 on the low word (kernels/NOTES.md, version 8).
__device__ __forceinline__ u64 smem_desc_plus(u64 desc, u32 bytes) {
    // the pair is joined in PTX: written as (desc & high) | lo, NVVM widened the add to 64 bits
    // and ptxas emitted its carry (UIADD3.X) and the high word's OR at every step
    const u32 lo = (u32)desc + (bytes >> 4), hi = (u32)(desc >> 32);
    u64 d;
    asm("mov.b64 %0, {%1, %2};" : "=l"(d) : "r"(lo), "r"(hi));
    return d;
}
// Orders this warpgroup's prior register writes (accumulators, A fragments) before the next
// wgmma reads them. Needed before every GEMM whose D or A registers were touched by ordinary code.
// setmaxnreg: a warpgroup gives up (dec) or takes (inc) registers; every thread of the warpgroup
// executes it. ptxas drops it unless the kernel has __launch_bounds__(NTHREADS, 1).
template <u32 N> __device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" :: "n"(N)); }
template <u32 N> __device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" :: "n"(N)); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(N) : "memory"); }

// Holds the next wgmma.wait_group below the code that computed a and b. ptxas's list scheduler
// treats WARPGROUP.DEPBAR as a ready instruction with no inputs and issues it in the first slot where
// nothing else can issue (a latency or MUFU-throughput bubble), however long the wait then blocks the
// warp; register fences are empty asm and never reach ptxas. ptxas does not move a shared-memory
// store across a wait_group (the in-flight wgmma reads shared memory), so a store whose predicate
// reads a and b keeps the wait below them. The predicate is "a or b is NaN": the store does not
// execute for finite values, and when it does it writes `scratch`, a word nothing reads. (A predicate
// ptxas can prove false, such as "a sum of ex2 results < 0", is deleted with the store.)
// Measured in kernels/NOTES.md (version 4, second build) and scripts/wait_hoist_repro.cu.
__device__ __forceinline__ void hold_wait_below(float a, float b, float* scratch) {
    asm volatile("{\n.reg .pred p;\nsetp.nan.f32 p, %1, %2;\n@p st.shared.f32 [%0], %1;\n}\n"
                 :: "r"(smem_u32(scratch)), "f"(a), "f"(b) : "memory");
}

// x, made to depend on dep for ptxas: an FFMA x + dep*0 it cannot fold (dep*0 is NaN for an
// infinite or NaN dep, so the product is not 0 to it). With dep a wgmma accumulator read after
// wgmma_wait, whatever reads the result issues below that wait: the way to keep code below a
// WARPGROUP.DEPBAR that ptxas would otherwise issue above it (version 30, MID_WAIT). For a finite
// dep the value is x exactly; an O that is already inf or NaN makes it NaN, as the output is.
__device__ __forceinline__ float after_wait(float x, float dep) {
    float r;
    asm volatile("fma.rn.f32 %0, %1, 0f00000000, %2;" : "=f"(r) : "f"(dep), "f"(x));
    return r;
}

// A compiler-only fence on one register: the asm "rewrites" it, so (a) reads of a wgmma result
// cannot be hoisted above the wgmma_wait that precedes this fence, and (b) ordinary writes to an
// accumulator / A register are materialised before the wgmma_fence that follows it (otherwise
// ptxas sinks them past the fence and injects a warpgroup.arrive: warning C7519).
__device__ __forceinline__ void reg_fence(float& r) { asm volatile("" : "+f"(r) :: "memory"); }
__device__ __forceinline__ void reg_fence(u32& r) { asm volatile("" : "+r"(r) :: "memory"); }
template <int NF>
__device__ __forceinline__ void reg_fence(float (&d)[NF][4]) {
#pragma unroll
    for (int i = 0; i < NF; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) reg_fence(d[i][e]);
}
template <int KS>
__device__ __forceinline__ void reg_fence(u32 (&a)[KS][4]) {
#pragma unroll
    for (int i = 0; i < KS; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) reg_fence(a[i][e]);
}
