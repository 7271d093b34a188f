// flashcore_hopper.cu -- the sm_90a (Hopper) forward pass: TMA loads, wgmma tensor cores,
// fp16 in, fp32 accumulate. Same contract, debug modes and outputs as kernels/flashcore_fused.cu
// (the sm_80 mma.sync kernel); only the engine differs. Compile with --gpu-architecture=sm_90a
// (wgmma does not exist on plain sm_90).
//
// Structure (part 1: correct, plain schedule; part 2 adds warp specialisation / overlap):
//   * A block owns BLOCK_M = 64*CONSUMER_WGS query rows of one (b, h); consumer warpgroup w owns
//     rows 64w..64w+63 (warp w*4+i of it: 16 rows, the mma.sync-shaped slice of the wgmma
//     m64 accumulator). There is no producer warpgroup yet: thread 0 issues every TMA copy.
//   * Q tile: TMA into shared memory once (128-byte swizzle, 64-column panels), mbarrier bar_q.
//   * K/V tiles: KV_STAGES shared-memory stages. Stage s has a "full" mbarrier (thread 0's
//     arrive.expect_tx + the TMA transaction bytes) and an "empty" mbarrier (one arrival per
//     consumer warp once its wgmma reads of the stage have completed). Thread 0 refills stage s
//     with tile j+KV_STAGES after the empty phase of tile j completes, so KV_STAGES-1 tiles are
//     in flight while tile j is computed.
//   * Per key tile j, per warpgroup: S = Q.K_j^T by wgmma SS (K-major descriptors, N = BLOCK_N),
//     wait; masking and the online softmax in the fp32 S registers (the sm_80 kernel's code:
//     kernels/common/, below); P packed to fp16 A fragments after the wait (no C7513);
//     O += P.V_j by wgmma RS (V MN-major, trans-b), wait; arrive on stage j's empty barrier.
//   * Epilogue: O = O_acc / l straight from registers to global memory; LSE = scale*m + ln l.
//
// Layout: Q [B,H,Sq,D], K/V [B,H,Sk,D], O [B,H,Sq,D], all contiguous; fp16 (O fp32 with FP32_P).
// Causal masking is top-left aligned (key j visible to query i iff j <= i), as SDPA's is_causal.
// No atomics: every output element is written by exactly one thread (bitwise reproducible).
//
// Macros (-D; each tile macro has a default):
//   HEAD_DIM      64 or 128 (required; checked in kernels/common/flags.cuh)
//   IS_CAUSAL     0 or 1 (default 0, from kernels/common/flags.cuh)
//   BLOCK_N       keys per K/V tile, a multiple of 16 in [32, 256] (default 128)
//   KV_STAGES     K/V shared-memory stages, >= 1 (default 2; >= 2 overlaps loads with compute)
//   CONSUMER_WGS  consumer warpgroups, 1..4 (default 2): BLOCK_M = 64*CONSUMER_WGS rows
//   PRODUCER_WG   0 (default): thread 0 issues every TMA copy, NTHREADS = 128*CONSUMER_WGS;
//                 1: a producer warpgroup after the consumers does (setmaxnreg PRODUCER_REGS /
//                 CONSUMER_REGS), NTHREADS = 128*(CONSUMER_WGS+1) (registry: flashcore_hopper_ws)
//   PINGPONG      1: the consumer warpgroups' GEMMs take turns (version 3, flashcore_hopper_pp;
//                 with OVERLAP_QK, one turn per tile for QK(j+1) and P(j).V(j): version 6,
//                 flashcore_hopper_ovpp)
//   OVERLAP_QK    1: S(j+1) = Q.K(j+1)^T issued before P(j).V(j), tile j+1's softmax between
//                 wait_group 1 and 0 (version 4, flashcore_hopper_ov; full and fp32_p only;
//                 hopper/ptx.cuh hold_wait_below keeps ptxas from issuing wait_group 0 above the exp2s)
//   PERSISTENT    1: one block per SM (grid (max(1, min(SMs / B, work items per batch)), B)) runs
//                 work items (query tile, b, h) one after another, the K/V ring running on across
//                 them, so the next item's loads overlap this one's last P.V and epilogue
//                 (version 5, flashcore_hopper_ps; non-causal, not softmax_only: PERSISTENT_SCHEDULE)
//   WIDE_O_STORE  1: the epilogue stores O 16 bytes per thread after a quad transpose
//                 (common/epilogue.cuh store_o_half_wide; version 18, flashcore_hopper_wo)
//   STAGED_O_STORE 1: the epilogue writes O into the shared memory of its warpgroup's Q rows and
//                 stores whole rows from there (version 20, flashcore_hopper_wos; non-persistent)
//   EARLY_LOADS   1: thread 0 issues Q and K/V tiles 0 .. KV_STAGES-1 right after the barriers'
//                 init, before __syncthreads (version 19, flashcore_hopper_woel; non-persistent)
//   ITEM_OVERLAP  1: with PERSISTENT and TILE_COUNTER, the boundary between two work items runs as
//                 one more key-loop iteration: the next item's S(0) and softmax(0) beside this
//                 item's last P.V, in a second Q buffer (version 21, flashcore_hopper_io; full and
//                 fp32_p, the overlapped schedule's modes; ITEM_OVERLAP_ON below)
//                 2: the same with one Q buffer, each warpgroup's 64 rows reloaded on a barrier of
//                 their own once its last Q.K^T retired (version 22, flashcore_hopper_iow; needs
//                 Q_BOX_ROWS = 64: the host's Q map then has 64-row boxes)
//   Q_BOX_ROWS    rows of one TMA box of Q (default BLOCK_M; the registry's q_box_rows)
//   Q_PREFETCH    1: with ITEM_OVERLAP, the producer prefetches the next item's Q into L2 as it
//                 takes the item, an item before it loads it (flashcore_hopper_iowp)
//   FAST_INV_EPILOGUE  1: the epilogue's 1/l by the approximate reciprocal (finish_row<true>, which
//                 version 21 uses inside its loop) instead of IEEE division, whose slow path is a
//                 call (version 23, flashcore_hopper_woelf)
//   MBAR_SPIN_LIMIT  polls before a stuck mbarrier wait traps (default 2^21, ~10 s on an H200;
//                    hopper/ptx.cuh says how it was measured)
//   -- debug modes (kernels/flashcore_fused.cu, docs/DESIGN.md section 2): each changes only where
//      one stage reads its input or writes its output; the stage code is the code full runs
//   DEBUG_QK_ONLY       write S = scale*Q*K^T (masked = -inf) fp32 [B,H,n_rows,Skp] to S_out
//   DEBUG_SOFTMAX_ONLY  read exact S from S_in; write m, l [B,H,Sq] and normalised P to P_out
//   DEBUG_PV_ONLY       read exact P from P_in; alpha = 1, l = 1; write O
//   UNIFORM_P           P = 1/Sk made in the kernel; no QK, no softmax, no rescale; write O
//   FP32_P              as full, P split into two fp16 halves (hi + lo) so P.V sees fp32 P;
//                       O written as fp32 so the fp16 output cast does not hide P's precision
//   -- seeded bugs (must-fail cases for the harness, debug_modes/hopper_bugs.py; none is on by
//      default; each #ifdef below says what it breaks and where stage bisection places it)
//   BUG_K_DESC_SBO      QK: K descriptor's stride-byte offset in halves (512) instead of bytes (1024)
//   BUG_CAUSAL_MASK_ROW QK: causal mask-skip test made with the block's last row (the last
//                       warpgroup's), not its first: the diagonal tile is left unmasked (causal)
//   BUG_EMPTY_COUNT     HANG (placed QK): empty barriers expect one arrival per thread, only lane 0
//                       of each warp arrives: the first refill deadlocks (waits unbounded here)
//   BUG_V_KSTEP         PV: V's k16 slice advanced by 8 keys (1024 B) instead of 16 (2048 B)
//   BUG_V_DESC_LBO      PV: V descriptor's leading-byte offset 128 B (row-major habit) instead of
//                       the 64-column panel stride (shows at D = 128 only)
//   BUG_V_TAIL_COORD    PV: the last V box pulled back inside the head (row Sk - BLOCK_N), so V's
//                       rows no longer line up with P's columns (shows when Sk % BLOCK_N != 0)
//   BUG_RESCALE_AFTER_PV glue: O rescaled by alpha after the P.V wgmma, not before it: the tile's
//                       own product is scaled too (and the first tile's, alpha = 0, is lost)
//
// Arguments: EXACTLY flashcore_fused.cu's 17 (Q, K, V, O, LSE, S_in, P_in, S_out, P_out, M_out,
// L_out, H, Sq, Sk, scale, row0, n_rows; null pointers for the buffers a mode does not use),
// THEN three `const __grid_constant__ TmaDesc` (128 bytes, 64-aligned), encoded on the host by
// harness/toolchain/tma.py encode_bhsd as 3-D maps (D, S, B*H), 128-byte swizzle, box 64 columns:
//   tmQ: over Q with box_rows = BLOCK_M   (used when the mode reads Q: full, qk_only, fp32_p)
//   tmK: over K with box_rows = BLOCK_N   (full, qk_only, fp32_p)
//   tmV: over V with box_rows = BLOCK_N   (full, pv_only, uniform_p, fp32_p)
// A mode that does not read a tensor gets tma.null_desc() and never touches it. The kernel issues
// HEAD_DIM/64 boxes per tile (column coordinates 0 and 64 at D=128) and expects exactly
// box_rows*64*2 bytes per box: a descriptor with another box size traps at the bounded wait.
// Grid (ceil(n_rows / BLOCK_M), H, B) (the persistent schedule: PERSISTENT above), block NTHREADS. Only the query rows of the window
// [row0, min(row0 + n_rows, Sq)) are stored (row0 % BLOCK_M == 0); rows past it are computed
// (TMA zero-fills them), never stored. Debug matrices hold the window's rows (row i at i - row0)
// at the padded width Skp = ceil(Sk / BLOCK_N) * BLOCK_N (padded columns: -inf in S, 0 in P).
// O, LSE, M_out, L_out are indexed by absolute row.
//
// Dynamic shared memory (bytes), the launch's shared_mem and max_dynamic_shared_size_bytes
// (scripts/hopper_selfcheck.py smem_bytes() is the same formula):
//     SMEM_BYTES = 1024                                   (slack to align the base to 1024 B:
//                                                          128-byte swizzle atoms)
//                + Q_BUFS * 64*CONSUMER_WGS * HEAD_DIM * 2 (Q tile, fp16; two with ITEM_OVERLAP)
//                + KV_STAGES * 2 * BLOCK_N * HEAD_DIM * 2 (K and V stages, fp16)
// (the same in every mode, so one number per tile config) plus 8*(1+2*KV_STAGES) bytes of static
// shared memory for the mbarriers (+4 in OVERLAP_QK's full and fp32_p: hold_wait_below's word; +8 in the persistent schedule: bar_q_free). Opt-in limit on sm_90: 227 KB = 232448 bytes in all.
//   D=64,  BLOCK_N=128, 2 stages:  82,944     D=128, BLOCK_N=128, 2 stages: 164,864
//   D=64,  BLOCK_N=128, 3 stages: 115,712     D=128, BLOCK_N=64,  3 stages: 132,096
//
// Tiles (this plain schedule; part 2 re-tunes with overlap). CONSUMER_WGS = 2 (128 rows).
// Defaults BLOCK_N = 128, KV_STAGES = 2: the configuration every GPU correctness case ran at.
// Measured (scripts/hopper_selfcheck.py --bench, H200, full, 4,16,2048x2048, one process, one
// run each, +-7% run to run):
//   D=64:  128x2 242 us (284 TFLOP/s), 128x3 224, 192x2 215, 64x3 211 (326 TFLOP/s)
//   D=128: 128x2 319 us (431 TFLOP/s), 128x3 289 (475 TFLOP/s), 192x2 298, 64x3 362
// Recommended: D=128 BLOCK_N=128, KV_STAGES=3 (230,400 + 64 static <= 232,448 bytes: fits);
// D=64 BLOCK_N=64 or 128, KV_STAGES=3 (the D=64 spread is within the noise). More stages pay
// because thread 0 refills a stage only after the slowest warpgroup releases it.
// Registers of every variant: scripts/hopper_selfcheck.py --compile-only, tests/test_hopper_compile.py.
//
// Shared code: the per-warp wgmma m64nN fp32 accumulator is the mma.sync m16n8 C layout, so the
// stage code is the sm_80 kernel's own, from kernels/common/ (both kernels include it): score
// masking (mask.cuh), the online softmax and O rescale (softmax.cuh), P packing into fp16 A
// fragments and FP32_P's hi+lo split (pack_p.cuh), the debug matrices' window / padded-width I/O
// (debug_io.cuh), the debug modes' stand-ins for a stage (debug_stages.cuh), the row finish and O
// store (epilogue.cuh), the scalar helpers (util.cuh) and the flag contract (flags.cuh: HEAD_DIM,
// IS_CAUSAL, which stages a mode runs, out_t). kernels/hopper/ holds the sm_90a engine only: PTX
// wrappers (ptx.cuh) and the wgmma instructions (wgmma.cuh); every seeded bug of this kernel
// stays in this file.

#include "common/flags.cuh"     // HEAD_DIM, IS_CAUSAL, USES_QK / USES_PV, out_t (shared contract)
#ifndef BLOCK_N
#define BLOCK_N 128                         // keys per K/V tile (wgmma N of Q.K^T)
#endif
#ifndef KV_STAGES
#define KV_STAGES 2                         // K/V shared-memory stages
#endif
#ifndef CONSUMER_WGS
#define CONSUMER_WGS 2                      // consumer warpgroups (64 query rows each)
#endif
#if BLOCK_N % 16 != 0 || BLOCK_N < 32 || BLOCK_N > 256
#error "BLOCK_N must be a multiple of 16 in [32, 256] (wgmma N, k16 slices of P.V; TMA box rows <= 256)"
#endif
#if KV_STAGES < 1
#error "KV_STAGES must be >= 1"
#endif
#if CONSUMER_WGS < 1 || CONSUMER_WGS > 4
#error "CONSUMER_WGS must be 1..4 (BLOCK_M = 64*CONSUMER_WGS <= 256: one TMA box of Q)"
#endif

#ifndef PRODUCER_WG
#define PRODUCER_WG 0                       // 1: a producer warpgroup issues every TMA copy
#endif
#if PRODUCER_WG != 0 && PRODUCER_WG != 1
#error "PRODUCER_WG must be 0 or 1"
#endif
#ifndef PINGPONG
#define PINGPONG 0                          // 1: the two consumer warpgroups take turns at the tensor cores
#endif
#if PINGPONG && (CONSUMER_WGS < 2 || CONSUMER_WGS > 3 || !PRODUCER_WG)
#error "PINGPONG needs two or three consumer warpgroups and the producer warpgroup"
#endif
#ifndef OVERLAP_QK
#define OVERLAP_QK 0                        // 1: S(j+1) = Q.K(j+1)^T in flight during softmax(j) (version 4)
#endif
#if OVERLAP_QK && !PRODUCER_WG
#error "OVERLAP_QK needs the producer warpgroup (PRODUCER_WG=1)"
#endif
#ifndef DESC_STEP
#define DESC_STEP 0                         // 1: each k16 step's descriptor is the first's plus its offset (version 8)
#endif
// A GEMM operand's descriptor at `off` halves past `base`: built from the address (DESC_STEP=0,
// versions 1-7) or stepped from base's (hopper/ptx.cuh smem_desc_plus; ptxas builds base's once).
#if DESC_STEP
#define OPERAND_DESC(base, off, lbo, sbo) smem_desc_plus(smem_desc((base), (lbo), (sbo)), (u32)(off) * 2u)
#else
#define OPERAND_DESC(base, off, lbo, sbo) smem_desc((base) + (off), (lbo), (sbo))
#endif
#ifndef WIDE_O_STORE
#define WIDE_O_STORE 0                      // 1: O stored 16 bytes per thread after a quad transpose (version 18)
#endif
#ifndef STAGED_O_STORE
#define STAGED_O_STORE 0                    // 1: O through shared memory, whole rows per store (version 20)
#endif
#if STAGED_O_STORE && (PERSISTENT || !PRODUCER_WG || CONSUMER_WGS != 2)
#error "STAGED_O_STORE reuses Q's shared memory: non-persistent, two consumer warpgroups"
#endif
#ifndef EARLY_LOADS
#define EARLY_LOADS 0                       // 1: thread 0 issues Q and the first K/V stages before __syncthreads (version 19)
#endif
#ifndef PERSISTENT
#define PERSISTENT 0                        // 1: a block runs work item after work item (version 5)
#endif
// Version 17 (kernels/NOTES.md): K and V in pipelines of their own (FA3's), KV_SPLIT=1. Each stage
// keeps its K and V tiles, but each has its own full and empty barriers: K(j) is released once
// Q.K(j)^T has retired and V(j) once P(j).V(j) has, and the producer runs K one tile ahead of V.
// The overlap then needs two stages, not three, and 144-key tiles fit at D = 128 (181 KB; 160 and
// 176 keys run out of registers, kernels/NOTES.md).
#ifndef KV_SPLIT
#define KV_SPLIT 0
#endif
#if KV_SPLIT && (!PRODUCER_WG || PERSISTENT || KV_STAGES < 2)
#error "KV_SPLIT needs the producer warpgroup, the non-persistent schedule and two stages or more"
#endif
#if EARLY_LOADS && (!PRODUCER_WG || PERSISTENT || KV_SPLIT)
#error "EARLY_LOADS is for the non-persistent producer schedule with shared K/V stages"
#endif
#if PERSISTENT && !PRODUCER_WG
#error "PERSISTENT needs the producer warpgroup (PRODUCER_WG=1)"
#endif
#ifndef TILE_COUNTER
#define TILE_COUNTER 0                      // 1: persistent blocks take work items from a counter (version 9)
#endif
#if TILE_COUNTER && !PERSISTENT
#error "TILE_COUNTER needs PERSISTENT=1"
#endif
#ifndef ITEM_OVERLAP
#define ITEM_OVERLAP 0                      // 1: the item boundary as one more loop iteration (version 21)
#endif
#if ITEM_OVERLAP && !TILE_COUNTER
#error "ITEM_OVERLAP needs PERSISTENT=1 and TILE_COUNTER=1"
#endif
#ifndef FAST_INV_EPILOGUE
#define FAST_INV_EPILOGUE 0                 // 1: the epilogue's 1/l by MUFU.RCP, as version 21's (version 23)
#endif
#ifndef Q_PREFETCH
#define Q_PREFETCH 0                        // 1: the producer brings the next item's Q into L2 (version 22)
#endif
#ifndef Q_BOX_ROWS
#define Q_BOX_ROWS (64 * CONSUMER_WGS)      // BLOCK_M: one box per panel
#endif
#if (64 * CONSUMER_WGS) % Q_BOX_ROWS != 0 || (ITEM_OVERLAP == 2 && Q_BOX_ROWS != 64)
#error "Q_BOX_ROWS divides BLOCK_M (ITEM_OVERLAP=2: 64, one warpgroup's rows)"
#endif
// The persistent schedule runs where the tiles are all alike: non-causal, and every mode with a
// K/V pipeline (softmax_only has none). Causal keeps one block per query tile, heaviest first,
// so that the hardware's block scheduler balances the unequal tiles. The host's grid follows
// the same rule (harness/toolchain/variant.py Variant.persistent).
#if PERSISTENT && !IS_CAUSAL && !defined(DEBUG_SOFTMAX_ONLY)
#define PERSISTENT_SCHEDULE 1
#else
#define PERSISTENT_SCHEDULE 0
#endif
// The overlapped schedule runs where one warpgroup computes both GEMMs and the softmax: full and
// FP32_P. The debug modes run one GEMM (or none) per tile and keep the plain schedule.
#define OVERLAP_SCHEDULE (OVERLAP_QK && USES_QK && USES_PV)
// Version 21 (kernels/NOTES.md): where the persistent blocks run the overlapped schedule, the
// item boundary is one more iteration of the key loop. The iteration that would run the last
// tile's P.V alone issues the next item's Q'.K'(0)^T beside it (K'(0) is the ring's next stage:
// the ring runs on across items), runs softmax(0) on it with fresh m, l while P.V runs, then
// stores this item's O and carries on with the next item's tile 0, so that each item's
// prologue (Q's wait, S(0), softmax(0)) runs under the previous item's last GEMM. Q.K'(0)^T is
// issued right after this item's last Q.K^T retired, so the next Q has a buffer of its own
// (Q_BUFS = 2): the producer loads it once the item before last is past its last Q.K^T.
#if ITEM_OVERLAP && PERSISTENT_SCHEDULE && OVERLAP_SCHEDULE
#define ITEM_OVERLAP_ON 1
#else
#define ITEM_OVERLAP_ON 0
#endif
// The Q barriers: ITEM_OVERLAP=1 keeps two buffers (item k in k % 2, bar_q[k % 2]); =2 one
// buffer whose warpgroup wg rows are reloaded on bar_q[wg] (Q_SPLIT); else one buffer, bar_q[0].
// Q_BAR(k), Q_PAR(k): the barrier and parity of item k's Q for this warpgroup; Q_BUF(k) its buffer.
#define Q_SPLIT (ITEM_OVERLAP_ON && ITEM_OVERLAP == 2)
#define Q_BUFS (ITEM_OVERLAP_ON && !Q_SPLIT ? 2 : 1)
#define Q_BARS (Q_SPLIT ? CONSUMER_WGS : Q_BUFS)
#define ITEM_SLOTS (ITEM_OVERLAP_ON ? 2 : 1)       // item k's number in item_slot[k % ITEM_SLOTS]
// PACK_AT_END=1 (version 24): the overlapped key loop packs P(j+1) at the end of iteration j,
// after its rescale (the same place in the instruction stream as the next iteration's top), so
// the back edge carries P's 32 registers instead of S's 64.
#ifndef PACK_AT_END
#define PACK_AT_END 0
#endif
#if Q_SPLIT
#define Q_BAR(k) (wg)
#define Q_PAR(k) ((u32)(k) & 1u)
#define Q_BUF(k) 0
#else
#define Q_BAR(k) ((k) % Q_BUFS)
#define Q_PAR(k) ((u32)((k) / Q_BUFS) & 1u)
#define Q_BUF(k) ((k) % Q_BUFS)
#endif
#if ITEM_OVERLAP_ON
#define ITEM_CONST                          // the consumers move on to the next item inside the key loop
#else
#define ITEM_CONST const
#endif
// Version 11 (kernels/NOTES.md), two moves off a warpgroup's chain in the overlapped loop, from
// PHASE_CLOCKS at d7f093a (the chain: pack, K/V wait, turn, softmax, rescale; no turn waits):
// RESCALE_IN_TURN=1: O's rescale by tile j's alpha runs inside the turn, between Q.K(j+1)^T's
//   issue and P(j).V(j)'s, where the warp otherwise waits for the tensor pipe to take the HGMMAs,
//   instead of after P(j-1).V(j-1) retired (O is not in flight there either);
// KV_PROBE_EARLY=1: the K/V(j+1) barrier is probed before P(j) is packed, so the probe's latency
//   (91 clocks of the chain, constant) runs under the pack; a miss falls back to the wait.
#ifndef RESCALE_IN_TURN
#define RESCALE_IN_TURN 0
#endif
#ifndef KV_PROBE_EARLY
#define KV_PROBE_EARLY 0
#endif
// Version 13 (kernels/NOTES.md), cuDNN's order as its SASS shows it (ncu-src-d7f093a-cudnn-*):
// SOFTMAX_TURNS=1 with PINGPONG=1 in the plain schedule: the two warpgroups take turns at the
// softmax (exp2s, row sums, O's rescale), not at the GEMM issue, so that one warpgroup's exp2s
// never share the SMSPs with the other's, and each one's GEMMs and waits run beside the other's
// softmax. Full and fp32_p only (the modes that run both GEMMs and the softmax).
// Version 14: the same turns in the overlapped schedule (OVERLAP_QK=1): Q.K(j+1)^T and P(j).V(j)
// are issued outside any turn, and the turn holds softmax(j+1) while P(j).V(j) runs (O's rescale
// stays after P.V's wait, O being in flight during the turn). SOFTMAX_TURNS=2 there: only the exp2s
// and sums take the turn; the row max runs before it, as in cuDNN's loop.
#ifndef SOFTMAX_TURNS
#define SOFTMAX_TURNS 0
#endif
#if SOFTMAX_TURNS < 0 || SOFTMAX_TURNS > 2 || (SOFTMAX_TURNS == 2 && !OVERLAP_QK)
#error "SOFTMAX_TURNS is 0, 1, or 2 with OVERLAP_QK=1"
#endif
// Version 27: ITEM_OVERLAP with SOFTMAX_TURNS (version 14's turns on version 21): each warpgroup
// takes one turn per key-loop iteration, the boundary's included, and both warpgroups run the
// same items, so the turns stay paired.
#if ITEM_OVERLAP && RESCALE_IN_TURN
#error "ITEM_OVERLAP rescales O after P.V"
#endif
#define SOFTMAX_TURNS_ON (SOFTMAX_TURNS && PINGPONG && USES_QK && USES_PV)
// Version 30 (kernels/NOTES.md): MID_WAIT=1 waits for P(j).V(j) between the two row halves of
// softmax(j+1), after row half 0's exp2s instead of after both, so that O's 32 rescale FMULs (and,
// with PACK_AT_END, P(j+1)'s F2FPs) are free to issue among row half 1's exp2s, as cuDNN's turn has
// them, instead of in a serial tail after the last one. P(j).V(j) was issued right after
// Q.K(j+1)^T, so it has had the mask, the row max and 32 exp2s' time to retire.
#ifndef MID_WAIT
#define MID_WAIT 0
#endif
#if defined(BUG_RESCALE_AFTER_PV)
#define MID_WAIT_ON 0                       // the seeded bug keeps its own rescale order
#else
#define MID_WAIT_ON (MID_WAIT && !SOFTMAX_TURNS_ON && !RESCALE_IN_TURN)
#endif
#if defined(BUG_RESCALE_AFTER_PV)
#define RESCALE_IN_TURN_ON 0                // the seeded bug keeps its own rescale order
#else
#define RESCALE_IN_TURN_ON RESCALE_IN_TURN
#endif
// PHASE_CLOCKS (a measuring build, not a debug mode; scripts/phase_clocks.py): lane 0 of each
// consumer warp reads the SM clock at PHASE_N points of each key-loop iteration j (tile j's P
// packed and tile j+1's GEMMs issued, softmax and P.V wait) and stores them, for j < PHASE_TILES,
// at L_out viewed as u32 [block][warp][j][PHASE_N]: where a warp's time goes, tile by tile, and
// how the two warpgroups' turns interleave. Only the overlapped schedule (the loop below) has the
// markers; full mode only (it writes no L_out of its own). A persistent block marks one of its
// items, its second (PHASE_ITEM: past the first item's cold start, before the last wave), and
// version 21's boundary iteration (j = -1 once the next item is taken) is not stored.
#ifdef PHASE_CLOCKS
#if !OVERLAP_SCHEDULE
#error "PHASE_CLOCKS marks the overlapped key loop only"
#endif
#define PHASE_N 8
#define PHASE_TILES 64
#define PHASE_ITEM 1
#if PERSISTENT_SCHEDULE
#define PHASE_STORED(j) (it == PHASE_ITEM && (j) >= 0 && (j) < PHASE_TILES)
#else
#define PHASE_STORED(j) ((j) < PHASE_TILES)
#endif
#define PHASE_MARK(k) asm volatile("mov.u32 %0, %%clock;" : "=r"(ph_clk[k]) :: "memory")
#define PHASE_SLOT(k) (&ph_clk[k])          // a mark taken inside a callee
#else
#define PHASE_MARK(k) ((void)0)
#define PHASE_SLOT(k) ((unsigned*)nullptr)
#endif
#define BLOCK_M (64 * CONSUMER_WGS)         // query rows per block
#define CONSUMER_THREADS (128 * CONSUMER_WGS)
#define NWARPS (CONSUMER_THREADS / 32)      // consumer warps (the producer's come after them)
#define NTHREADS (CONSUMER_THREADS + 128 * PRODUCER_WG)
#if PRODUCER_WG
// setmaxnreg moves registers from the producer (one thread issues TMA) to the consumers (the
// S and O accumulators): 128*PRODUCER_REGS + CONSUMER_THREADS*CONSUMER_REGS <= 65536, multiples
// of 8 in [24, 256]. At 2 consumer warpgroups: 128*24 + 256*240 = 64512 (FA3's split).
#ifndef PRODUCER_REGS
#define PRODUCER_REGS 24
#endif
#ifndef CONSUMER_REGS
#define CONSUMER_REGS (CONSUMER_WGS == 1 ? 256 : CONSUMER_WGS == 2 ? 240 : CONSUMER_WGS == 3 ? 160 : 120)
#endif
// The pool setmaxnreg redistributes is the block's launch allocation, NTHREADS times the launch
// bound's registers (65536 / NTHREADS, in multiples of 8: 168 at 384 threads), not the SM's 65536:
// a split past it leaves the consumers' setmaxnreg.inc waiting forever (5b2a979: 128*32 + 256*240
// = 65536 > 64512, every launch hung).
static_assert(128 * PRODUCER_REGS + CONSUMER_THREADS * CONSUMER_REGS <= (65536 / NTHREADS) / 8 * 8 * NTHREADS,
              "setmaxnreg split exceeds the block's register allocation");
#endif
#define PANELS (HEAD_DIM / 64)              // 64-column (128-byte) swizzle panels per tile
#define N_FRAG (BLOCK_N / 8)                // n8 tiles of S per thread
#define D_FRAG (HEAD_DIM / 8)               // n8 tiles of O per thread
#define P_KS (BLOCK_N / 16)                 // k16 slices of P.V
#define K_STEPS (HEAD_DIM / 16)             // k16 steps of Q.K^T
#define Q_TILE_HALVES (BLOCK_M * HEAD_DIM)
#define KV_TILE_HALVES (BLOCK_N * HEAD_DIM)
#define SMEM_BYTES (1024 + Q_BUFS * 2 * Q_TILE_HALVES + KV_STAGES * 2 * 2 * KV_TILE_HALVES)

#if defined(BUG_EMPTY_COUNT) && !defined(MBAR_SPIN_LIMIT)
// BUG_EMPTY_COUNT (below, at the barrier init) deadlocks; its waits are unbounded so that the launch
// never completes and the harness's deadline (device.HANG_S, 10 s) reads it as HANG. With the
// default bound the waits would trap at ~10 s (a FAULT), racing that deadline.
#if PERSISTENT_SCHEDULE
// The persistent schedule with unbounded waits (no exit from the item loop but its end) spilled
// 104 bytes at D = 128 (NVRTC 13.0; 0 with any bound): 2^32 - 1 polls, about 5.7 h at the ~4.8 us
// per poll of the default bound's 2^21 in ~10 s, is as good as none against that deadline.
#define MBAR_SPIN_LIMIT 0xFFFFFFFFu
#elif BLOCK_N > 128
// Version 17's 144-key tiles (flashcore_hopper_kv144) spilled 248 bytes with unbounded waits and
// 592 (and C7512) with the bound above; 2^24 polls (~80 s, 8x the default's ~10 s, far past the
// HANG deadline) compiles at 0 (NVRTC 13.0).
#define MBAR_SPIN_LIMIT 0x1000000u
#else
#define MBAR_SPIN_LIMIT 0
#endif
#endif
#include "hopper/ptx.cuh"
#include "common/util.cuh"
#include "common/mask.cuh"
#include "common/softmax.cuh"
#include "common/pack_p.cuh"
#include "common/debug_io.cuh"
#include "common/debug_stages.cuh"
#include "common/epilogue.cuh"
#include "hopper/wgmma.cuh"

#if STAGED_O_STORE
// Where warp i (0..3) of warpgroup wg stages its 16 output rows (16 * HEAD_DIM halves): in the
// bytes of its warpgroup's own Q rows, rows 64wg.. of each 64-column panel (8 KB a panel; two
// warps to a panel at D = 128, four at D = 64), which only this warpgroup's wgmmas read.
__device__ __forceinline__ half* staging_rows(half* sQ, int wg, int i) {
    constexpr int per_panel = 64 * 64 / (16 * HEAD_DIM);
    return sQ + (i / per_panel) * BLOCK_M * 64 + wg * 64 * 64 + (i % per_panel) * 16 * HEAD_DIM;
}
#endif

// BLOCK_CLOCKS (a measuring build, not a debug mode; scripts/block_clocks.py): where a block's
// time goes outside the key loop. PHASE_CLOCKS cuts a block's first and last iterations, its
// prologue (Q's load, S(0) and its softmax) and its epilogue, and the gaps between one block and
// the next on an SM are in no block at all. Lane 0 of each consumer warp stores the SM clock at
// [k] and the global timer (ns, comparable across SMs) at [8 + k] of a row of L_out, seen as
// u64 [block][consumer warp][BLOCK_ITEMS][BLOCK_WORDS], at seven marks per work item: 0 the item
// starts (the warp, where a block runs one item), 1 Q has landed, 2 the prologue's softmax is
// done (the loop starts), 3 the last P.V has retired, 4 the epilogue starts (after warpgroup 0's
// last turn, where a block runs one item), 5 both row halves' l and LSE are done (finish_row),
// 6 O is stored. Mark 0 also stores the SM's id at [7].
// A persistent block's items past the BLOCK_ITEMS-th are not marked. Full mode, the overlapped
// schedule only. Version 21 (ITEM_OVERLAP) marks an item's 0, 1 and 2 at one instant, after the
// previous item's store: its Q wait and prologue ran inside that item's last iteration (the
// block's first item keeps all three).
#ifdef BLOCK_CLOCKS
#if !OVERLAP_SCHEDULE
#error "BLOCK_CLOCKS marks the overlapped schedule only"
#endif
#ifdef PHASE_CLOCKS
#error "BLOCK_CLOCKS and PHASE_CLOCKS both write L_out: one measuring build at a time"
#endif
#define BLOCK_WORDS 16
#define BLOCK_ITEMS (PERSISTENT_SCHEDULE ? 32 : 1)
struct BlockMark {
    u64 clk, gt;
};
__device__ __forceinline__ BlockMark block_now() {
    BlockMark t;
    asm volatile("mov.u64 %0, %%clock64;" : "=l"(t.clk) :: "memory");
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t.gt) :: "memory");
    return t;
}
__device__ __forceinline__ void block_put(float* L_out, int k, BlockMark t, int warp, int lane, int item) {
    if (lane != 0 || item >= BLOCK_ITEMS) return;
    const size_t blk = blockIdx.x + (size_t)gridDim.x * (blockIdx.y + (size_t)gridDim.y * blockIdx.z);
    u64* row = reinterpret_cast<u64*>(L_out) + ((blk * NWARPS + warp) * BLOCK_ITEMS + item) * BLOCK_WORDS;
    row[k] = t.clk;
    row[8 + k] = t.gt;
    if (k == 0) {
        u32 sm;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
        row[7] = sm;
    }
}
#if PERSISTENT_SCHEDULE
#define BLOCK_MARK(k) block_put(L_out, k, block_now(), warp, lane, it)
#else
#define BLOCK_MARK(k) block_put(L_out, k, block_now(), warp, lane, 0)
#endif
#else
#define BLOCK_MARK(k) ((void)0)
#endif

// Transaction bytes of one K/V stage (the tensors this mode reads) and of the Q tile.
#define KV_STAGE_TX ((USES_QK + USES_PV) * KV_TILE_HALVES * 2)
#define KV_TILE_TX (KV_TILE_HALVES * 2)       // one K or V tile (KV_SPLIT's barriers count one each)
#define Q_TX (Q_TILE_HALVES * 2)

// ---------------------------------------------------------------- turns (PINGPONG)
// Consumer warpgroup w issues a GEMM only on its turn: it syncs on barrier 1 + w, which the
// other warpgroup's arrival completes, issues, and then arrives on the other's barrier. So the two
// warpgroups' GEMMs alternate, and each one's softmax runs while the other's GEMM is on the
// tensor cores, instead of both meeting at the exp unit at once (FA3's inter-warpgroup
// ping-pong). Both warpgroups of a block run the same tiles (n_iter is per block), so each takes
// the same number of turns; the last warpgroup grants warpgroup 0 the first turn, and warpgroup 0
// takes one turn more at the end, so that no barrier is left with arrivals pending. Three
// consumer warpgroups (version 24) take their turns round robin, 0 -> 1 -> 2 -> 0 (FA3's order at
// D = 64), so each softmax has two other warpgroups' GEMMs to run beside.
#define TURN_THREADS 256
__device__ __forceinline__ void turn_begin(int wg) {
#if PINGPONG
    named_bar_sync(1 + wg, TURN_THREADS);
#else
    (void)wg;
#endif
}
__device__ __forceinline__ void turn_end(int wg) {
#if PINGPONG
#if CONSUMER_WGS == 2
    named_bar_arrive(1 + (wg ^ 1), TURN_THREADS);
#else
    named_bar_arrive(1 + (wg + 1 == CONSUMER_WGS ? 0 : wg + 1), TURN_THREADS);   // round robin (FA3's)
#endif
#else
    (void)wg;
#endif
}

// ---------------------------------------------------------------- per-warp arrivals
// One arrival per consumer warp (the empty and bar_q_free barriers count warps): the warp
// reconverges, then its lane 0 arrives.
__device__ __forceinline__ void warp_arrive(u64* bar, int lane) {
    __syncwarp();
    if (lane == 0) mbar_arrive(bar);
}

// ---------------------------------------------------------------- loads (thread 0 only)
// The first V row of tile t's box.
__device__ __forceinline__ int v_row(int t, int Sk) {
#ifdef BUG_V_TAIL_COORD
    // BUG_V_TAIL_COORD (PV; shows when Sk % BLOCK_N != 0): the tail tile's V box is pulled back
    // so that it ends at the head's last row (a 2-D-map habit, where a box past the end reads
    // the next head). Stage s then holds rows Sk-BLOCK_N.. while P's columns are keys
    // t*BLOCK_N..: the valid keys of the tail multiply the wrong V rows (Sk < BLOCK_N: a
    // negative start, rows zero-filled ahead of the keys). K is loaded right (qk_only and
    // softmax_only compile to the clean cubins and pass); pv_only and uniform_p read V through
    // this box and fail at a key tail: stage bisection must place it in PV.
    return min(t * BLOCK_N, Sk - BLOCK_N);
#else
    (void)Sk;
    return t * BLOCK_N;
#endif
}
// Panel p of tile t of K (V) into stage `slot`: a box of 64 columns x BLOCK_N rows at
// +p*BLOCK_N*64 halves, every box 1024-aligned (BLOCK_N*128 bytes, BLOCK_N % 8 == 0).
__device__ __forceinline__ void load_k_panel(half* sK, const TmaDesc* tmK, u64* full, int slot, int p, int t, int bh) {
    tma_load_3d(sK + slot * KV_TILE_HALVES + p * BLOCK_N * 64, tmK, full, p * 64, t * BLOCK_N, bh);
}
__device__ __forceinline__ void load_v_panel(half* sV, const TmaDesc* tmV, u64* full, int slot, int p, int t, int bh,
                                             int Sk) {
    tma_load_3d(sV + slot * KV_TILE_HALVES + p * BLOCK_N * 64, tmV, full, p * 64, v_row(t, Sk), bh);
}
// Tile t of K and/or V into stage `slot` (PANELS boxes each), on one barrier.
__device__ __forceinline__ void issue_kv(half* sK, half* sV, u64* full, const TmaDesc* tmK, const TmaDesc* tmV,
                                         int slot, int t, int bh, int Sk) {
    (void)Sk;
    mbar_arrive_expect_tx(full, KV_STAGE_TX);
#pragma unroll
    for (int p = 0; p < PANELS; ++p) {
#if USES_QK
        load_k_panel(sK, tmK, full, slot, p, t, bh);
#endif
#if USES_PV
        load_v_panel(sV, tmV, full, slot, p, t, bh, Sk);
#endif
    }
}
#if KV_SPLIT
// KV_SPLIT: K and V of tile t each on their own barrier (the modes that read them).
__device__ __forceinline__ void issue_k(half* sK, u64* full, const TmaDesc* tmK, int slot, int t, int bh) {
    mbar_arrive_expect_tx(full, KV_TILE_TX);
#pragma unroll
    for (int p = 0; p < PANELS; ++p) load_k_panel(sK, tmK, full, slot, p, t, bh);
}
__device__ __forceinline__ void issue_v(half* sV, u64* full, const TmaDesc* tmV, int slot, int t, int bh, int Sk) {
    mbar_arrive_expect_tx(full, KV_TILE_TX);
#pragma unroll
    for (int p = 0; p < PANELS; ++p) load_v_panel(sV, tmV, full, slot, p, t, bh, Sk);
}
#endif

// The Q tile of rows q0.. (PANELS boxes), in the modes that run Q.K^T.
__device__ __forceinline__ void issue_q(half* sQ, u64* bar_q, const TmaDesc* tmQ, int q0, int bh) {
#if USES_QK
    mbar_arrive_expect_tx(bar_q, Q_TX);
#pragma unroll
    for (int p = 0; p < PANELS; ++p)
#pragma unroll
        for (int r = 0; r < BLOCK_M; r += Q_BOX_ROWS)
            tma_load_3d(sQ + p * BLOCK_M * 64 + r * 64, tmQ, bar_q, p * 64, q0 + r, bh);
#else
    (void)sQ; (void)bar_q; (void)tmQ; (void)q0; (void)bh;
#endif
}

#if Q_SPLIT
// Version 22: warpgroup wg's 64 rows of the Q tile at q0 (one 64-row box per panel) on its own barrier.
__device__ __forceinline__ void issue_q_rows(half* sQ, u64* bar_q_wg, const TmaDesc* tmQ, int q0, int bh, int wg) {
    mbar_arrive_expect_tx(bar_q_wg, Q_TX / CONSUMER_WGS);
#pragma unroll
    for (int p = 0; p < PANELS; ++p)
        tma_load_3d(sQ + p * BLOCK_M * 64 + wg * 64 * 64, tmQ, bar_q_wg, p * 64, q0 + 64 * wg, bh);
}
#endif

// The Q tile at q0 into L2 ahead of its load (Q_PREFETCH): the producer's prefetch, one item
// early, of the Q that version 22 reloads only once the previous item's last Q.K^T retired.
__device__ __forceinline__ void prefetch_q_l2(const TmaDesc* tmQ, int q0, int bh) {
#pragma unroll
    for (int p = 0; p < PANELS; ++p)
#pragma unroll
        for (int r = 0; r < BLOCK_M; r += Q_BOX_ROWS) tma_prefetch_l2_3d(tmQ, p * 64, q0 + r, bh);
}

// Q and K/V tiles 0 .. KV_STAGES-1 into stages 0 .., each on its own barrier: what thread 0
// issues before any consumer waits, in version 1 (no producer) and with EARLY_LOADS (version 19).
__device__ __forceinline__ void issue_first_loads(half* sQ, half* sK, half* sV, u64* bar_q, u64* bar_full,
                                                  const TmaDesc* tmQ, const TmaDesc* tmK, const TmaDesc* tmV,
                                                  int q0, int bh, int n_iter, int Sk) {
    issue_q(sQ, bar_q, tmQ, q0, bh);
    for (int t = 0; t < KV_STAGES && t < n_iter; ++t) issue_kv(sK, sV, &bar_full[t], tmK, tmV, t, t, bh, Sk);
}

#if TILE_COUNTER
// Version 9's work-item counter: tile_counter[0] the next item, [1] the blocks that found none
// left. A trailing parameter, one pair of words per launch (the launch paths give each launch
// its own: harness/api.py's ring, harness/run/gpu.py's fresh zeros), zero when the launch starts;
// the last block to finish taking items sets both back to zero, so a word handed on to a later
// launch on the same stream is zero again when it starts. (A module global, zero at load, was
// version 9's first build: two launches on two streams would have shared it.) A launch that traps
// leaves its word dirty, but the trap kills the context, and the word with it.
// The item handoff in every mode: the Q tile where Q.K^T runs, else a bare arrival on bar_q.
__device__ __forceinline__ void issue_q_or_arrive(half* sQ, u64* bar_q, const TmaDesc* tmQ, int q0, int bh) {
#if USES_QK
    issue_q(sQ, bar_q, tmQ, q0, bh);
#else
    (void)sQ; (void)tmQ; (void)q0; (void)bh;
    mbar_arrive(bar_q);
#endif
}
#if ITEM_OVERLAP_ON
// Versions 21 and 22, the producer: item `it` (number `item`; -1: none left, a bare arrival) goes
// to its Q buffer once the consumers of that buffer are past the last Q.K^T of the item it last
// held (bar_q_free), and its number to item_slot[it % 2] after that wait: the consumers read a
// slot at the boundary before that item (version 21: two items back; version 22: one item back,
// on either warpgroup's barrier, the two warpgroups at most a turn apart), so the slot is free.
__device__ __forceinline__ void issue_item_q(half* sQ, u64* bar_q, u64* bar_q_free, int* item_slot,
                                             const TmaDesc* tmQ, int it, int item, int q0, int bh) {
#if Q_SPLIT
#pragma unroll
    for (int wg = 0; wg < CONSUMER_WGS; ++wg) {
        if (it > 0) mbar_wait(&bar_q_free[wg], (u32)(it - 1) & 1u);
        if (wg == 0) *(volatile int*)&item_slot[it % ITEM_SLOTS] = item;
        if (item < 0) mbar_arrive(&bar_q[wg]);
        else issue_q_rows(sQ, &bar_q[wg], tmQ, q0, bh, wg);
    }
#else
    const int qb = it % Q_BUFS;
    if (it >= Q_BUFS) mbar_wait(&bar_q_free[qb], (u32)((it - Q_BUFS) / Q_BUFS) & 1u);
    *(volatile int*)&item_slot[it % ITEM_SLOTS] = item;
    if (item < 0) mbar_arrive(&bar_q[qb]);
    else issue_q(sQ + qb * Q_TILE_HALVES, &bar_q[qb], tmQ, q0, bh);
#endif
}
#endif
// Called once per block, by the producer thread, after its last take (which found no item):
// every block's takes are done when the done count reaches the grid, and only then is it reset.
__device__ __forceinline__ void release_tile_counter(unsigned int* tile_counter, unsigned int blocks) {
    __threadfence();                                // this block's last take before its done
    if (atomicAdd(&tile_counter[1], 1u) == blocks - 1) {
        atomicExch(&tile_counter[0], 0u);
        atomicExch(&tile_counter[1], 0u);
    }
}
#endif

// ---------------------------------------------------------------- stage 1: QK
// s = Q_w . K_j^T (raw; the scale sits in the exp2 argument) for this warpgroup's 64 rows.
// k16 step k reads panel k/4 at +32 bytes per step inside it (K-major, 128-byte swizzle).
// qk_issue: the wgmma batch, committed as one group and not waited for (the overlapped schedule
// waits for it with PV(j) still in flight); qk_tile: issue and wait, the plain schedule.
// TURN = false: the caller holds the turn (version 6 issues QK(j+1) and P(j).V(j) in one turn).
template <bool TURN = true>
__device__ __forceinline__ void qk_issue(float (&s)[N_FRAG][4], const half* sQw, const half* sKj, int wg) {
    if (TURN) turn_begin(wg);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < K_STEPS; ++k) {
        const int p = k / 4, kk = k % 4;
        const u64 da = OPERAND_DESC(sQw, p * BLOCK_M * 64 + kk * 16, 16, 1024);
#ifdef BUG_K_DESC_SBO
        // BUG_K_DESC_SBO (QK): K's stride-byte offset (the step to the next 8-key group) given in
        // halves, 8 rows x 64 = 512, not in bytes (1024): key groups 1.. of every tile are read
        // from the middle of the wrong swizzle atoms, so S is wrong for keys >= 8 of each tile.
        // Only qk_tile reads this descriptor: qk_only fails; softmax_only, pv_only and uniform_p
        // (no QK GEMM: S or P injected or made) compile to the clean cubins and pass. Stage: QK.
        const u64 db = OPERAND_DESC(sKj, p * BLOCK_N * 64 + kk * 16, 16, 512);
#else
        const u64 db = OPERAND_DESC(sKj, p * BLOCK_N * 64 + kk * 16, 16, 1024);
#endif
        if (k == 0) wgmma_ss_zero(s, da, db);
        else        wgmma_ss_acc(s, da, db);
    }
    wgmma_commit();
    if (TURN) turn_end(wg);
}
template <bool TURN = true>
__device__ __forceinline__ void qk_tile(float (&s)[N_FRAG][4], const half* sQw, const half* sKj, int wg) {
    qk_issue<TURN>(s, sQw, sKj, wg);
    wgmma_wait<0>();
    reg_fence(s);                           // no read of S above the wait
}

// ---------------------------------------------------------------- stage 3: PV
// o += P.V_j: P from the S registers as fp16 A fragments (FP32_P: plus the fp16 remainders in
// a second product, so P.V sees fp32 P). Packed only after QK's wait and before the fence, so no
// register of an in-flight wgmma is written (C7513) and no write sinks past the fence (C7519).
// V's k16 slice kk starts 16 rows (2048 bytes) further; LBO = panel stride (next 64 columns of D).
#ifdef BUG_V_KSTEP
// BUG_V_KSTEP (PV): V's k16 slice kk starts kk*1024 bytes in (one swizzle atom, 8 keys per step)
// instead of kk*2048 (16 keys): slice kk >= 1 multiplies P's keys 16kk..16kk+15 with V rows
// 8kk..8kk+15, so O is wrong wherever a tile has more than 16 valid keys. Only pv_tile reads V:
// qk_only and softmax_only compile to the clean cubins and pass; pv_only and uniform_p fail (a P
// that cannot be wrong still meets the wrong rows). Stage: PV.
#define V_KSTEP_HALVES (8 * 64)
#else
#define V_KSTEP_HALVES (16 * 64)
#endif
#ifdef BUG_V_DESC_LBO
// BUG_V_DESC_LBO (PV; shows at D = 128): V's leading-byte offset, the step to the next 64 columns
// of D, set to 128 bytes, as if V were row-major [BLOCK_N][HEAD_DIM], instead of the stride of the
// TMA's 64-column panels (BLOCK_N*128 bytes). At D = 64 the n64 product spans one 64-column
// swizzle atom and never steps by LBO (the cubin differs, the numbers do not); at D = 128 output
// columns 64..127 are computed from V's first panel (columns 0..63), one key row on. Only the P.V
// descriptors change: qk_only and softmax_only compile to the clean cubins; pv_only and uniform_p
// fail at D = 128. Stage: PV.
#define V_LBO_BYTES 128
#else
#define V_LBO_BYTES (BLOCK_N * 128)
#endif
// P's A fragments (FP32_P: hi and lo halves), packed and fenced before any wgmma_fence.
struct PFrags {
    u32 a[P_KS][4];
#ifdef FP32_P
    u32 lo[P_KS][4];
#endif
};
__device__ __forceinline__ void pack_p_frags(PFrags& f, const float (&p)[N_FRAG][4]) {
    pack_p(f.a, p);
#ifdef FP32_P
    pack_p_lo(f.lo, p, f.a);
    reg_fence(f.lo);
#endif
    reg_fence(f.a);
}
// A (compiler-level) use of P's fragments after the P.V wait, so NVVM keeps them P(j)'s until then.
// It was tried against ptxas hoisting wait_group 0 above the overlapped softmax and did not
// change the SASS (an empty asm never reaches ptxas); kept as the statement of intent.
__device__ __forceinline__ void keep_p_frags(PFrags& f) {
    reg_fence(f.a);
#ifdef FP32_P
    reg_fence(f.lo);
#endif
}
// The P.V wgmma batch, one committed group, not waited for.
template <bool TURN = true>
__device__ __forceinline__ void pv_issue(float (&o)[D_FRAG][4], const PFrags& f, const half* sVj, int wg) {
    if (TURN) turn_begin(wg);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < P_KS; ++kk)
        wgmma_rs_acc(o, f.a[kk], OPERAND_DESC(sVj, kk * V_KSTEP_HALVES, V_LBO_BYTES, 1024));
#ifdef FP32_P
#pragma unroll
    for (int kk = 0; kk < P_KS; ++kk)
        wgmma_rs_acc(o, f.lo[kk], OPERAND_DESC(sVj, kk * V_KSTEP_HALVES, V_LBO_BYTES, 1024));
#endif
    wgmma_commit();
    if (TURN) turn_end(wg);
}
template <bool TURN = true>
__device__ __forceinline__ void pv_tile(float (&o)[D_FRAG][4], const float (&p)[N_FRAG][4], const half* sVj, int wg) {
    PFrags f;
    pack_p_frags(f, p);
    reg_fence(o);                           // the alpha rescale lands before the fence
    pv_issue<TURN>(o, f, sVj, wg);
    wgmma_wait<0>();
    reg_fence(o);
}

// ---------------------------------------------------------------- one key tile: the stages
struct TileCtx {
    int lane, q0, row_base, Sk;
    float scale, sl2;      // sl2 = scale * log2(e): the exp2 multiplier for raw scores
    DebugRows w;           // the window of rows the debug matrices hold
    float* S_out;          // this (b, h)'s [rows, Skp] slices for the debug modes
    const float* P_in;
};

// Masking for key tile t, applied only to tiles that reach the tail or the diagonal.
__device__ __forceinline__ void mask_scores(float (&s)[N_FRAG][4], int t, const TileCtx& c) {
    const int kv0 = t * BLOCK_N;
#ifdef BUG_CAUSAL_MASK_ROW
    // BUG_CAUSAL_MASK_ROW (QK; shows with causal masking): "does this tile reach past the
    // diagonal?" asked of the block's LAST row, q0 + BLOCK_M - 1 (the last warpgroup's last row:
    // the bound the tile-skip n_iter rightly uses), instead of its first row q0, which every
    // warpgroup must respect. At the default tiles (BLOCK_M = BLOCK_N = 128) the diagonal tile of
    // each query block goes unmasked unless it is the Sk tail tile: its rows see later keys.
    // mask_scores runs in qk_only (which writes S, masks included): qk_only fails; softmax_only,
    // pv_only, uniform_p compile to the clean cubins and pass. Stage: QK.
    if (TILE_NEEDS_MASK(kv0, c.Sk, c.q0 + BLOCK_M - 1))
#else
    if (TILE_NEEDS_MASK(kv0, c.Sk, c.q0))
#endif
        mask_tile(s, kv0, c.row_base, c.lane, c.Sk);
}

// Stage 2 for key tile j: masked raw scores s -> P (or the debug mode's stand-in), o rescaled.
__device__ __forceinline__ void scores_to_p(float (&s)[N_FRAG][4], float (&o)[D_FRAG][4],
                                            float (&m)[2], float (&l)[2], int j, const TileCtx& c) {
#if defined(DEBUG_QK_ONLY) || defined(DEBUG_PV_ONLY) || defined(UNIFORM_P)
    const int kv0 = j * BLOCK_N, lane = c.lane;
#endif
#if defined(DEBUG_QK_ONLY)
    store_scaled_s(s, c.scale, c.S_out, kv0, c.row_base, lane, c.w);
#elif defined(DEBUG_PV_ONLY)
    load_s_frag(s, c.P_in, kv0, c.row_base, lane, c.w, 0.f);  // alpha = l = 1
#elif defined(UNIFORM_P)
    uniform_p_tile(s, kv0, lane, c.Sk);
#else
    float alpha[2];
    softmax_update(s, m, l, alpha, c.sl2, j == 0);
    rescale_o(o, alpha);
#endif
}

// ---------------------------------------------------------------- the softmax as the turn
#if SOFTMAX_TURNS_ON
// Registers move freely across bar.sync/bar.arrive in ptxas, so a softmax that must lie inside its
// turn is pinned there: it reads a shared zero loaded after the sync (every exp2 waits on the row
// max, which reads it), and its row sums are stored (never, in fact: hold_wait_below's NaN test;
// a NaN row's goes to a sink that nothing reads) before the arrival.
__device__ __forceinline__ float turn_zero(const float* pin) {
    float z;
    asm volatile("ld.volatile.shared.f32 %0, [%1];" : "=f"(z) : "r"(smem_u32(pin)) : "memory");
    return z;
}
#endif
#if SOFTMAX_TURNS_ON && OVERLAP_SCHEDULE
// Version 14: the online softmax of one tile in this warpgroup's turn (SOFTMAX_TURNS=2: the row
// max before it). clk (PHASE_CLOCKS): the SM clock once the turn is taken.
__device__ __forceinline__ void softmax_in_turn(float (&s)[N_FRAG][4], float (&m)[2], float (&l)[2],
                                                float (&alpha)[2], float sl2, bool first, int wg,
                                                const float* pin, float* sink, unsigned* clk) {
#if SOFTMAX_TURNS == 2
    float mx[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) mx[h] = softmax_row_max(s, m, h, first);
    hold_wait_below(mx[0], mx[1], sink);    // the max before the sync (ptxas sank it into the turn)
#endif
    turn_begin(wg);
    if (clk) asm volatile("mov.u32 %0, %%clock;" : "=r"(*clk) :: "memory");
    const float z = turn_zero(pin);
#if SOFTMAX_TURNS == 2
#pragma unroll
    for (int h = 0; h < 2; ++h) softmax_exp(s, m, l, alpha, mx[h] + z, h, sl2);
#else
    s[0][0] += z;
    softmax_update(s, m, l, alpha, sl2, first);
#endif
    hold_wait_below(l[0], l[1], sink);
    turn_end(wg);
}
#endif

// ---------------------------------------------------------------- the kernel

// Rows >= min(Sq, row0 + n_rows) are computed, never stored (formed where it is used).
#define ROW_END min(Sq, row0 + n_rows)

#if USES_PV
// ---------------------------------------------------------------- epilogue
// One work item's end for this warp's 16 rows: O = O_acc / l (l = 1 where no softmax ran), LSE =
// scale*m + ln(l) (m is the max of the raw scores), with BLOCK_CLOCKS' marks 4-6. The kernel calls
// it once per item; version 21 (ITEM_OVERLAP) also at each item boundary inside its key loop.
template <bool FAST_INV = false>   // finish_row's: true where the call sits inside the key loop
__device__ __forceinline__ void store_item(const float (&o)[D_FRAG][4], float (&m)[2], float (&l)[2], out_t* O,
                                           float* LSE, float* L_out, half* sQ, int bh, int q0, int row_base,
                                           int row0, int n_rows, int Sq, float scale, DebugRows w, int warp, int lane,
                                           int it) {
    (void)m; (void)l; (void)L_out; (void)sQ; (void)q0; (void)it; (void)scale; (void)LSE;
    BLOCK_MARK(4);                                  // 4: the epilogue starts (warpgroup 0: the last turn taken)
#if STAGED_O_STORE && !defined(FP32_P)
    // Version 20: O goes through the shared memory of this warpgroup's own Q rows (free once all
    // four of its warps are past their last wgmma: the named barrier), so that each global store
    // writes whole rows (common/epilogue.cuh stage_o_half, store_staged_rows).
    named_bar_sync(3 + (warp >> 2), 128);
    half* sOw = staging_rows(sQ, warp >> 2, warp & 3);
#endif
    out_t* Ob = O + (size_t)bh * Sq * HEAD_DIM;
#ifdef BLOCK_CLOCKS
    // The measuring build finishes both row halves (l, LSE) before either half's stores, so that
    // mark 5 falls between them; the entries interleave them (finish, store, finish, store),
    // and their SASS differs when reordered, so the reorder is this build's alone.
    float inv_pre[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) inv_pre[h] = finish_row<FAST_INV>(m[h], l[h], scale, LSE, (size_t)bh, row_base, h, w, lane);
    BLOCK_MARK(5);                                  // 5: l and LSE are done
#endif
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#if defined(DEBUG_PV_ONLY) || defined(UNIFORM_P)
        const float inv = 1.f;
#elif defined(BLOCK_CLOCKS)
        const float inv = inv_pre[h];               // (BLOCK_CLOCKS runs full mode only)
#else
        const float inv = finish_row<FAST_INV>(m[h], l[h], scale, LSE, (size_t)bh, row_base, h, w, lane);
#endif
        const int row_w = row_base + 8 * h;
#if STAGED_O_STORE && !defined(FP32_P)
        stage_o_half(sOw, o, h, inv, lane);         // this warp's 16 rows, in shared memory (below)
        (void)row_w;
#elif WIDE_O_STORE
        store_o_half_wide(Ob + (size_t)row_w * HEAD_DIM, o, h, inv, lane, row_w < ROW_END);
#else
        if (row_w < ROW_END) store_o_half(Ob + (size_t)row_w * HEAD_DIM, o, h, inv, lane);
#endif
    }
#if STAGED_O_STORE && !defined(FP32_P)                // (FP32_P's float O keeps the direct stores)
    __syncwarp();                                   // the warp's 16 staged rows, read back whole
    store_staged_rows<HEAD_DIM>(Ob, sOw, q0 + 16 * warp, ROW_END, lane);
#endif
    BLOCK_MARK(6);                                  // 6: O is stored (issued)
}
#endif

extern "C" __global__ void __launch_bounds__(NTHREADS, 1)
flashcore_fwd(const half* __restrict__ Q, const half* __restrict__ K, const half* __restrict__ V,
              out_t* __restrict__ O, float* __restrict__ LSE,
              const float* __restrict__ S_in, const float* __restrict__ P_in,
              float* __restrict__ S_out, float* __restrict__ P_out,
              float* __restrict__ M_out, float* __restrict__ L_out,
              int H, int Sq, int Sk, float scale, int row0, int n_rows,
              const __grid_constant__ TmaDesc tmQ, const __grid_constant__ TmaDesc tmK,
              const __grid_constant__ TmaDesc tmV
#if TILE_COUNTER
              , unsigned int* __restrict__ tile_counter   // version 9: this launch's two words, zero
#endif
              ) {
    // Q, K, V arrive through the tensor maps; the pointers stay in the signature (the contract).
    (void)Q; (void)K; (void)V;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
#if PERSISTENT_SCHEDULE
    // Version 5: work item `item` is query tile item % n_qb of (b, h) = item / n_qb; this block
    // runs items item0, item0 + item_stride, ... (gridDim.y = B, so n_items needs no B argument).
    // q0, bh, row_base and debug_off are the item's (WORK_ITEM, in the loops below; ITEM_TILE the producer's).
    const int n_tiles = (Sk + BLOCK_N - 1) / BLOCK_N;
    const DebugRows w{row0, n_rows, Sq, Sk};
    const int n_iter = n_tiles;                     // non-causal: every item sweeps every key tile
    const int n_qb = (n_rows + BLOCK_M - 1) / BLOCK_M;
    const int n_items = n_qb * H * (int)gridDim.y;
    const int item0 = (int)(blockIdx.y * gridDim.x + blockIdx.x), item_stride = (int)(gridDim.x * gridDim.y);
    (void)item0; (void)item_stride;                 // the static schedule's (TILE_COUNTER takes items from a counter)
#define ITEM_TILE(item)                           /* the producer's half of WORK_ITEM */ \
    const int q0 = row0 + ((item) % n_qb) * BLOCK_M;                                     \
    const int bh = (item) / n_qb;
#define WORK_ITEM(item)                                                                  \
    ITEM_CONST int q0 = row0 + ((item) % n_qb) * BLOCK_M;                                \
    ITEM_CONST int bh = (item) / n_qb;                                                   \
    ITEM_CONST int row_base = q0 + 16 * warp + (lane >> 2);                              \
    ITEM_CONST size_t debug_off = (size_t)bh * n_rows * w.Skp();                         \
    (void)row_base; (void)debug_off;
#else
    // Causal: the heaviest query tiles (last rows) start first for load balance.
    const int q0 = row0 + (IS_CAUSAL ? (gridDim.x - 1 - blockIdx.x) : blockIdx.x) * BLOCK_M;   // row0 % BLOCK_M == 0
    const int bh = blockIdx.z * H + blockIdx.y;
    // This thread's rows: row_base and row_base + 8. Warp `warp` is warp warp%4 of warpgroup
    // warp/4, whose 64 rows start at 64*(warp/4): 16*warp covers both.
    const int row_base = q0 + 16 * warp + (lane >> 2);

    const int n_tiles = (Sk + BLOCK_N - 1) / BLOCK_N;
    const DebugRows w{row0, n_rows, Sq, Sk};
    const size_t debug_off = (size_t)bh * n_rows * w.Skp();   // this (b, h)'s window of a debug matrix
#if IS_CAUSAL && !defined(DEBUG_QK_ONLY) && !defined(DEBUG_SOFTMAX_ONLY)
    // Tiles wholly above the diagonal contribute P = 0: skip them. The debug modes that
    // write [rows, Skp] matrices sweep every tile so that every element is written.
    const int n_iter = min(n_tiles, (q0 + BLOCK_M + BLOCK_N - 1) / BLOCK_N);
#else
    const int n_iter = n_tiles;
#endif
#endif  // PERSISTENT_SCHEDULE

#ifdef DEBUG_SOFTMAX_ONLY
    // Stage 2 alone: exact S in, the same online update, then a second sweep for P
    // (common/debug_stages.cuh). No shared memory, no tensor cores (the tensor maps are null and unused).
#if PRODUCER_WG
    if (warp >= NWARPS) return;                 // nothing to load: the producer warpgroup leaves
#endif
    softmax_only_stage<1, N_FRAG>(S_in + debug_off, P_out + debug_off, M_out, L_out, (size_t)bh, Sq, n_iter,
                                  row_base, lane, w);
    (void)tmQ; (void)tmK; (void)tmV;
    return;
#else
    extern __shared__ __align__(16) unsigned char smem_raw[];
    // The 128-byte swizzle repeats every 1024 bytes and the wgmma descriptors assume atoms at
    // 1024-byte boundaries (base offset 0): align the base (the formula's 1024 bytes of slack).
    unsigned char* smem = (unsigned char*)(((size_t)smem_raw + 1023) & ~(size_t)1023);
    half* sQ = reinterpret_cast<half*>(smem);       // [Q_BUFS][PANELS][BLOCK_M][64]
    half* sK = sQ + Q_BUFS * Q_TILE_HALVES;         // [KV_STAGES][PANELS][BLOCK_N][64]
    half* sV = sK + KV_STAGES * KV_TILE_HALVES;     // [KV_STAGES][PANELS][BLOCK_N][64]
    __shared__ __align__(8) u64 bar_q[Q_BARS];     // item k's Q landed on bar_q[Q_BAR(k)]
    __shared__ __align__(8) u64 bar_full[KV_STAGES];
    __shared__ __align__(8) u64 bar_empty[KV_STAGES];
#if KV_SPLIT
    // bar_full / bar_empty are K's, these V's
    __shared__ __align__(8) u64 bar_full_v[KV_STAGES];
    __shared__ __align__(8) u64 bar_empty_v[KV_STAGES];
#endif
#if PERSISTENT_SCHEDULE
    __shared__ __align__(8) u64 bar_q_free[Q_BARS]; // the consumers of bar_q[b] are past that item's last Q.K^T
#endif
#if PERSISTENT_SCHEDULE && TILE_COUNTER
    __shared__ int item_slot[ITEM_SLOTS];           // item k's number (k % ITEM_SLOTS); -1: none left
#endif
#if SOFTMAX_TURNS_ON
    __shared__ float turn_pin;                      // versions 13, 14: a zero that pins the softmax in its turn
    __shared__ float turn_sink;                     // their hold_wait_below's store target, never read (a NaN
                                                    // stored at turn_pin would reach every row of the block)
#endif

#if defined(BLOCK_CLOCKS) && !PERSISTENT_SCHEDULE
    if (warp < NWARPS) BLOCK_MARK(0);               // 0: this consumer warp starts
#endif
    if (tid == 0) {
#if USES_QK
        tma_prefetch_desc(&tmQ);
        tma_prefetch_desc(&tmK);
#endif
#if USES_PV
        tma_prefetch_desc(&tmV);
#endif
#pragma unroll
        for (int b = 0; b < Q_BARS; ++b) mbar_init(&bar_q[b], 1);
#if SOFTMAX_TURNS_ON
        turn_pin = 0.f;
#endif
#if PERSISTENT_SCHEDULE
#pragma unroll
        for (int b = 0; b < Q_BARS; ++b) mbar_init(&bar_q_free[b], Q_SPLIT ? 4 : NWARPS);   // one arrival per warp it serves
#endif
#pragma unroll
        for (int st = 0; st < KV_STAGES; ++st) {
            mbar_init(&bar_full[st], 1);            // thread 0's arrive.expect_tx (+ the bytes)
#ifdef BUG_EMPTY_COUNT
            // BUG_EMPTY_COUNT (a HANG; placed QK): the empty barrier expects one arrival per
            // consumer THREAD (CONSUMER_THREADS) while only lane 0 of each warp arrives (NWARPS): the phase
            // never completes, thread 0 waits forever before the first refill (tile KV_STAGES) and
            // every other warp waits forever on that tile's full barrier. Needs more key tiles than
            // stages (Sk > KV_STAGES*BLOCK_N, as at the mission shape); the waits are unbounded in
            // this build (MBAR_SPIN_LIMIT 0 above), so the launch never returns: HANG. Every mode
            // with a K/V pipeline hangs; softmax_only has none (clean cubin, passes). Bisection
            // names the first mode that is not ok: qk_only, so the stage reported is QK.
            mbar_init(&bar_empty[st], CONSUMER_THREADS);
#else
            mbar_init(&bar_empty[st], NWARPS);      // one arrival per consumer warp
#endif
#if KV_SPLIT
            mbar_init(&bar_full_v[st], 1);
            mbar_init(&bar_empty_v[st], NWARPS);
#endif
        }
        mbar_fence_init();
#if EARLY_LOADS
        // Version 19: Q and the first KV_STAGES tiles are issued here, by the thread that set up
        // the barriers, instead of by the producer after __syncthreads and setmaxnreg: BLOCK_CLOCKS
        // put ~2,700 clocks between a block's start and its Q landing (kernels/NOTES.md).
        fence_proxy_async_smem();
        issue_first_loads(sQ, sK, sV, &bar_q[0], bar_full, &tmQ, &tmK, &tmV, q0, bh, n_iter, Sk);
#endif
    }
    __syncthreads();                                // barriers initialised before anyone waits
#if PRODUCER_WG
    if (warp >= NWARPS) {
        // The producer warpgroup: its registers go to the consumers, and one thread issues every
        // copy: Q, then tile t into stage t % KV_STAGES as soon as the consumers released the
        // stage's previous tile (t - KV_STAGES), without waiting behind any consumer's compute.
        setmaxnreg_dec<PRODUCER_REGS>();
        if (warp == NWARPS && lane == 0) {
#if PERSISTENT_SCHEDULE
            // K/V tile g of the block (over all its items) goes to stage g % KV_STAGES; the next
            // item's Q waits only for the consumers' last Q.K^T of this one (bar_q_free).
            int g = 0, it = 0;
#if TILE_COUNTER && ITEM_OVERLAP_ON
            // Versions 21 and 22: items from the counter as in version 9 (below); from the second
            // item on, its Q follows its first K/V tile, whose stage frees earlier (KV_STAGES
            // tiles back) than the Q buffer can (version 22: the previous item's last Q.K^T).
            // issue_item_q waits for the buffer and hands the item over in item_slot.
            int item = (int)atomicAdd(&tile_counter[0], 1u);
            for (;; ++it) {
                if (item >= n_items) {
                    issue_item_q(sQ, bar_q, bar_q_free, item_slot, &tmQ, it, -1, 0, 0);
                    break;
                }
                ITEM_TILE(item)
                if (it == 0) issue_item_q(sQ, bar_q, bar_q_free, item_slot, &tmQ, it, item, q0, bh);
                const int next = (int)atomicAdd(&tile_counter[0], 1u);
#if Q_PREFETCH
                if (next < n_items) prefetch_q_l2(&tmQ, row0 + (next % n_qb) * BLOCK_M, next / n_qb);
#endif
                for (int t = 0; t < n_iter; ++t, ++g) {
                    const int slot = g % KV_STAGES;
                    if (g >= KV_STAGES) mbar_wait(&bar_empty[slot], (u32)(g / KV_STAGES - 1) & 1u);
                    issue_kv(sK, sV, &bar_full[slot], &tmK, &tmV, slot, t, bh, Sk);
                    if (t == 0 && it > 0) issue_item_q(sQ, bar_q, bar_q_free, item_slot, &tmQ, it, item, q0, bh);
                }
                item = next;
            }
#else
#if TILE_COUNTER
            // Version 9: the next item is whichever the counter gives (taken one item ahead, so
            // that its latency hides behind this item's loads) and is handed to the consumers
            // in item_slot: written before bar_q's arrival (release), read after its wait
            // (acquire). -1 and a bare arrival when none is left.
            int item = (int)atomicAdd(&tile_counter[0], 1u);
            for (;; ++it) {
                if (it > 0) mbar_wait(&bar_q_free[0], (u32)(it - 1) & 1u);
                *(volatile int*)&item_slot[0] = item < n_items ? item : -1;
                if (item >= n_items) {
                    mbar_arrive(&bar_q[0]);
                    break;
                }
                ITEM_TILE(item)
                issue_q_or_arrive(sQ, &bar_q[0], &tmQ, q0, bh);
                const int next = (int)atomicAdd(&tile_counter[0], 1u);
#else
            for (int item = item0; item < n_items; item += item_stride, ++it) {
                ITEM_TILE(item)
                if (it > 0) mbar_wait(&bar_q_free[0], (u32)(it - 1) & 1u);
                issue_q(sQ, &bar_q[0], &tmQ, q0, bh);
#endif
                for (int t = 0; t < n_iter; ++t, ++g) {
                    const int slot = g % KV_STAGES;
                    if (g >= KV_STAGES) mbar_wait(&bar_empty[slot], (u32)(g / KV_STAGES - 1) & 1u);
                    issue_kv(sK, sV, &bar_full[slot], &tmK, &tmV, slot, t, bh, Sk);
                }
#if TILE_COUNTER
                item = next;
#endif
            }
#endif  // TILE_COUNTER && ITEM_OVERLAP_ON
#if TILE_COUNTER
            release_tile_counter(tile_counter, gridDim.x * gridDim.y);
#endif
#elif KV_SPLIT
            // K runs one tile ahead of V: K(t+1) is wanted with V(t) (Q.K(t+1)^T beside P(t).V(t))
            issue_q(sQ, &bar_q[0], &tmQ, q0, bh);
            for (int t = 0; t <= n_iter; ++t) {
#if USES_QK
                if (t < n_iter) {
                    const int slot = t % KV_STAGES;
                    if (t >= KV_STAGES) mbar_wait(&bar_empty[slot], (u32)(t / KV_STAGES - 1) & 1u);
                    issue_k(sK, &bar_full[slot], &tmK, slot, t, bh);
                }
#endif
#if USES_PV
                if (t >= 1) {
                    const int tv = t - 1, slot = tv % KV_STAGES;
                    if (tv >= KV_STAGES) mbar_wait(&bar_empty_v[slot], (u32)(tv / KV_STAGES - 1) & 1u);
                    issue_v(sV, &bar_full_v[slot], &tmV, slot, tv, bh, Sk);
                }
#endif
            }
#else
#if EARLY_LOADS
            for (int t = KV_STAGES; t < n_iter; ++t) {     // Q and tiles 0 .. KV_STAGES-1 were issued by thread 0
#else
            issue_q(sQ, &bar_q[0], &tmQ, q0, bh);
            for (int t = 0; t < n_iter; ++t) {
#endif
                const int slot = t % KV_STAGES;
                if (t >= KV_STAGES) mbar_wait(&bar_empty[slot], (u32)(t / KV_STAGES - 1) & 1u);
                issue_kv(sK, sV, &bar_full[slot], &tmK, &tmV, slot, t, bh, Sk);
            }
#endif
        }
        return;
    }
    setmaxnreg_inc<CONSUMER_REGS>();
#else
    if (tid == 0) issue_first_loads(sQ, sK, sV, &bar_q[0], bar_full, &tmQ, &tmK, &tmV, q0, bh, n_iter, Sk);
    __syncwarp();                                   // warp 0 reconverges before warp-collective code
#endif

#if PERSISTENT_SCHEDULE
    // Version 5: the block's work items, one after another. Stage and parity come from the
    // block's running K/V tile count (KV_G), as in the producer's loop.
#if Q_SPLIT
    // Version 22 rebuilds sQw (wg's rows) and picks bar_q[wg] at each item boundary inside the
    // key loop: from warp >> 2, ptxas took both for vector values and built every HGMMA's
    // descriptors in vector registers, 48 R2UR in the loop against version 21's 16 (b6ef2dc: 3,282
    // clocks a tile against version 19's 2,615). Shuffled from lane 0 it knows wg warp-uniform (as
    // DESC_STEP's sQw below).
    const int wg = __shfl_sync(0xFFFFFFFFu, warp >> 2, 0);
#else
    const int wg = warp >> 2;                       // this consumer warpgroup
#endif
    bool stuck = false;
    int kv_base = 0, it = 0;
    // PINGPONG: the turns run on across items (both warpgroups take n_iter + 1 per item), so
    // warpgroup 0's first turn is granted once, here, and warpgroup 1's last arrival is taken
    // once, after the item loop.
    if (wg == CONSUMER_WGS - 1) turn_end(CONSUMER_WGS - 1);
#if TILE_COUNTER
    for (;; ++it, kv_base += n_iter) {
#ifdef BLOCK_CLOCKS
    const BlockMark item_start = block_now();       // mark 0, stored once the item is known to be one
#endif
    if (!mbar_wait_bounded(&bar_q[Q_BAR(it)], Q_PAR(it))) {   // the producer's item (and its Q) is in
        stuck = true;
        break;
    }
    const int item = *(volatile int*)&item_slot[it % ITEM_SLOTS];
    if (item < 0) break;
#ifdef BLOCK_CLOCKS
    block_put(L_out, 0, item_start, warp, lane, it);   // 0: the item starts
    BLOCK_MARK(1);                                  // 1: its Q has landed
#endif
    WORK_ITEM(item)
#else
    for (int item = item0; item < n_items; item += item_stride, ++it, kv_base += n_iter) {
    BLOCK_MARK(0);                                  // 0: the item starts
    WORK_ITEM(item)
#endif
#define KV_G(j) (kv_base + (j))
#define ITEM_IT it                           // the block's item count (BLOCK_CLOCKS' row)
#else
#define KV_G(j) (j)
#define ITEM_IT 0
#endif
    float o[D_FRAG][4];
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < D_FRAG; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[i][e] = 0.f;
    ITEM_CONST TileCtx ctx{lane, q0, row_base, Sk, scale, scale * LOG2E, w,
                      S_out ? S_out + debug_off : nullptr, P_in ? P_in + debug_off : nullptr};
#if USES_QK
#if DESC_STEP
    // The warpgroup index shuffled from lane 0, as CUTLASS's canonical_warp_group_idx: ptxas then
    // knows it warp-uniform and holds sQw's descriptors in uniform registers, where from warp >> 2
    // it kept them in vector registers and moved each pair over (R2UR) before every Q.K^T HGMMA.
    const half* sQw = sQ + __shfl_sync(0xFFFFFFFFu, warp >> 2, 0) * 64 * 64;
#else
    const half* sQw = sQ + (warp >> 2) * 64 * 64;   // this warpgroup's 64 rows of panel 0
#endif
#if PERSISTENT_SCHEDULE && TILE_COUNTER
    // this item's Q tile landed with bar_q's phase, waited for at the top of the item
#elif PERSISTENT_SCHEDULE
    if (!mbar_wait_bounded(&bar_q[0], (u32)it & 1u)) {   // this item's Q tile has landed
        stuck = true;
        break;
    }
    BLOCK_MARK(1);                                  // 1: Q has landed
#else
    mbar_wait(&bar_q[0], 0);
    BLOCK_MARK(1);                                  // 1: Q has landed
#endif
#endif
#if !PERSISTENT_SCHEDULE
    const int wg = warp >> 2;                       // this consumer warpgroup
    if (wg == CONSUMER_WGS - 1) turn_end(CONSUMER_WGS - 1);                       // PINGPONG: warpgroup 0 takes the first turn
#endif

#if PRODUCER_WG && !PERSISTENT_SCHEDULE
    // A stuck wait leaves the loop and traps after it: a trap inside the loop holds the loop's
    // live registers to the launch's 168 (65536 / 384) instead of setmaxnreg's CONSUMER_REGS, and
    // ptxas spills the rest (hopper/ptx.cuh, mbar_wait_bounded).
    bool stuck = false;
#endif
#if OVERLAP_SCHEDULE
    // Version 4 (OVERLAP_QK=1): FA3's intra-warpgroup overlap. Per tile j the warpgroup issues
    // S(j+1) = Q.K(j+1)^T and then O += P(j).V(j), waits for the first group only (wait_group 1),
    // and runs tile j+1's masking and exp2 in the s_next registers while P(j).V(j) is still on the
    // tensor cores; then it waits for P.V, releases stage j and rescales O by tile j+1's alpha.
    // Live together: s_next (fp32), P(j)'s A fragments and O. Neither the softmax nor the mask
    // writes a register that the in-flight P.V reads (its A fragments and O), so no C7513; O
    // is rescaled only after wait_group 0. K and V of one tile share a stage, so stage j is released
    // only after P(j).V(j): the stage of tile j+1 is held meanwhile (KV_STAGES >= 3 keeps a load
    // in flight; registry entry flashcore_hopper_ov).
    if (n_iter > 0) {
        __shared__ float wait_pin;                  // hold_wait_below's store target; never read
        float s[N_FRAG][4];
        float alpha[2];
#if PERSISTENT_SCHEDULE
        const int slot0 = KV_G(0) % KV_STAGES;
        if (!mbar_wait_bounded(&bar_full[slot0], (u32)(KV_G(0) / KV_STAGES) & 1u)) {
            stuck = true;
            break;                                  // out of the item loop: the trap is after it
        }
        qk_tile<!SOFTMAX_TURNS_ON>(s, sQw, sK + slot0 * KV_TILE_HALVES, wg);
#if ITEM_OVERLAP_ON
        if (n_iter == 1) warp_arrive(&bar_q_free[Q_BAR(it)], lane);   // its only Q.K^T has retired
#endif
#else
        mbar_wait(&bar_full[0], 0);                 // before the loop: a trap here costs nothing
        qk_tile<!SOFTMAX_TURNS_ON>(s, sQw, sK, wg);    // version 14: the turns are the softmaxes
#if KV_SPLIT
        warp_arrive(&bar_empty[0], lane);           // K(0) is read
#endif
#endif
        mask_scores(s, 0, ctx);
        // alpha = 0 and O = 0: no rescale needed
#if SOFTMAX_TURNS_ON
        softmax_in_turn(s, m, l, alpha, ctx.sl2, true, wg, &turn_pin, &turn_sink, nullptr);
#else
        softmax_update(s, m, l, alpha, ctx.sl2, true);
#endif
        // Tiles 0 .. n_iter-2 overlap with the next tile's QK; the last tile (below) runs P.V alone.
        // The loop body has no condition on "is there a next tile", so s_next always replaces s and
        // both share registers (with the condition inside, ptxas kept s alive beside s_next and
        // spilled: 80 bytes at D = 128, 128 keys).
        BLOCK_MARK(2);                              // 2: the prologue's softmax is done
#if PACK_AT_END
        PFrags f;                                   // P(j), packed at the end of the iteration before
        pack_p_frags(f, s);
#endif
        int j = 0;
#if ITEM_OVERLAP_ON
        // The boundary iteration leaves the key loop at its end, and the finished item's O is
        // stored after it, in the pass loop: with the store inside the key loop (b6ef2dc to
        // 0a17663), ptxas laid its ~600 instructions between the loop's hot paths, and every tile
        // jumped over them (Nsight Compute: no_instruction stalls at both jumps' targets). O is
        // then not rescaled in that iteration (alpha 1): it is stored, and zeroed for the next item.
        for (bool more = true; more;) {             // a pass: the key loop up to the next item boundary
        bool boundary = false;
        // The finished item's rows, m and l, for its store after the pass: set at the boundary
        // only, and declared in the pass, so that no other iteration holds them live.
        int q0_d, bh_d, rb_d, it_d;
        float m_d[2], l_d[2];
        for (;; ++j) {
            // Version 21: at the item's last tile, the next item's tile 0 takes tile j+1's place.
            // Its Q is in the other buffer, its K/V in the ring's next stage; m and l start afresh
            // (so alpha(0) = 0), and this item's m, l and rows are kept for its store below.
            if (j + 1 == n_iter) {
                // (this item's bar_q_free arrival was made as its last Q.K^T landed, below)
                if (!mbar_wait_bounded(&bar_q[Q_BAR(it + 1)], Q_PAR(it + 1))) {
                    stuck = true;
                    break;
                }
                const int next = *(volatile int*)&item_slot[(it + 1) % ITEM_SLOTS];
                if (next < 0) break;                // the block's last tile: P.V alone, after the loop
                boundary = true;
                q0_d = q0; bh_d = bh; rb_d = row_base; it_d = it;
                m_d[0] = m[0]; m_d[1] = m[1]; l_d[0] = l[0]; l_d[1] = l[1];
                m[0] = m[1] = NEG_INF;
                l[0] = l[1] = 0.f;
                ++it;
                kv_base += n_iter;                  // KV_G(j) stays this tile's, KV_G(j + 1) is the next item's 0
                j = -1;
                q0 = row0 + (next % n_qb) * BLOCK_M;
                bh = next / n_qb;
                row_base = q0 + 16 * warp + (lane >> 2);
                debug_off = (size_t)bh * n_rows * w.Skp();
                ctx.q0 = q0;
                ctx.row_base = row_base;
                ctx.S_out = S_out ? S_out + debug_off : nullptr;
                ctx.P_in = P_in ? P_in + debug_off : nullptr;
#if !Q_SPLIT
                sQw = sQ + Q_BUF(it) * Q_TILE_HALVES + wg * 64 * 64;
#endif
                // (version 22's one buffer: sQw stays as it was set, loop-invariant, so ptxas
                // builds its Q descriptors once, before the loop, as version 19's, and not from a
                // pointer reassigned here before every Q.K^T: 4 more instructions a k-step)
            }
#else
        for (; j + 1 < n_iter; ++j) {
#endif
#ifdef PHASE_CLOCKS
            unsigned ph_clk[PHASE_N];
#endif
            PHASE_MARK(0);                          // 0: the iteration starts (tile j's P to pack)
            const int slot = KV_G(j) % KV_STAGES, slot_n = KV_G(j + 1) % KV_STAGES;
            const u32 parity_n = (u32)(KV_G(j + 1) / KV_STAGES) & 1u;
#if KV_PROBE_EARLY
            const bool kv_ready = mbar_try_wait(&bar_full[slot_n], parity_n);   // answered under the pack
#else
            const bool kv_ready = false;            // the wait below polls from the start
#endif
#if !PACK_AT_END
            PFrags f;
            pack_p_frags(f, s);
#endif
            reg_fence(o);                           // the alpha rescale lands before the fence
            PHASE_MARK(1);                          // 1: P(j) packed
            if (!kv_ready && !mbar_wait_bounded(&bar_full[slot_n], parity_n)) {
                stuck = true;
                break;
            }
#if KV_SPLIT
            // bar_full[slot_n] above is K(j+1)'s; P(j).V(j) waits for V(j) too
            if (!mbar_wait_bounded(&bar_full_v[slot], (u32)(KV_G(j) / KV_STAGES) & 1u)) {
                stuck = true;
                break;
            }
#endif
            PHASE_MARK(2);                          // 2: K/V tile j+1 has landed
            float s_next[N_FRAG][4];
#if SOFTMAX_TURNS_ON
            // Version 14: both GEMMs issued outside any turn; the turn is the softmax, below.
            // Its marks 3-6 (scripts/phase_clocks.py names them by the entry): 3 both GEMMs
            // issued, 4 S(j+1) landed, 5 the turn taken (in softmax_in_turn), 6 the softmax done
            // and the turn handed on.
            qk_issue<false>(s_next, sQw, sK + slot_n * KV_TILE_HALVES, wg);
            pv_issue<false>(o, f, sV + slot * KV_TILE_HALVES, wg);
            PHASE_MARK(3);                          // 3 (version 14): both GEMMs issued
#else
            // PINGPONG (version 6, FA3's schedule): both GEMMs in one turn, so that this
            // warpgroup's softmax of tile j+1 runs while the other's two GEMMs are issued and run
            turn_begin(wg);
            PHASE_MARK(3);                          // 3: the turn is this warpgroup's
            qk_issue<false>(s_next, sQw, sK + slot_n * KV_TILE_HALVES, wg);
#if RESCALE_IN_TURN_ON
            rescale_o(o, alpha);                    // tile j's alpha, under Q.K(j+1)^T (O is not in flight)
            reg_fence(o);                           // before pv_issue's wgmma fence
#endif
            pv_issue<false>(o, f, sV + slot * KV_TILE_HALVES, wg);
            turn_end(wg);
            PHASE_MARK(4);                          // 4: both GEMMs issued, the turn handed on
#endif
            wgmma_wait<1>();                        // S(j+1) has landed; P(j).V(j) may still run
            reg_fence(s_next);
#if ITEM_OVERLAP_ON
            // the item's last Q.K^T has retired: its Q buffer (version 22: this warpgroup's rows)
            // may be refilled while tile j+1's softmax and P.V run (at a boundary, j = -1 and the
            // item is the next one: its tile 0 is its last where it has one tile)
            if (j + 2 == n_iter) warp_arrive(&bar_q_free[Q_BAR(it)], lane);
#endif
#if SOFTMAX_TURNS_ON
            PHASE_MARK(4);                          // 4 (version 14): S(j+1) has landed
#else
            PHASE_MARK(5);                          // 5: S(j+1) has landed
#endif
            mask_scores(s_next, j + 1, ctx);
            float alpha_n[2];
            // P(j+1) and its row sums are done before the wait in NVVM's order (the fence) and in
            // ptxas's (hold_wait_below: l reads every exp2 of the tile). Without the second, ptxas
            // issued the wait in the first stall of the row max, so only the mask and part of the
            // max ran under P(j).V(j) (kernels/NOTES.md, version 4 second build).
#if SOFTMAX_TURNS_ON
            softmax_in_turn(s_next, m, l, alpha_n, ctx.sl2, false, wg, &turn_pin, &turn_sink, PHASE_SLOT(5));
            reg_fence(s_next);                      // (softmax_in_turn holds the wait below its sums)
            PHASE_MARK(6);                          // 6 (version 14): the softmax done, the turn handed on
#else
#if MID_WAIT_ON
            // Version 30: row half 0's max and exp2s, then the wait (held below their sum), then
            // row half 1's, which do not read O: ptxas may issue them before the wait is answered.
            softmax_exp(s_next, m, l, alpha_n, softmax_row_max(s_next, m, 0, false), 0, ctx.sl2);
            hold_wait_below(l[0], alpha_n[0], &wait_pin);
            PHASE_MARK(6);                          // 6: row half 0 of tile j+1 is done
#else
            softmax_update(s_next, m, l, alpha_n, ctx.sl2, false);
            reg_fence(s_next);
            hold_wait_below(l[0], l[1], &wait_pin);
            PHASE_MARK(6);                          // 6: the softmax of tile j+1 is done
#endif
#endif
            wgmma_wait<0>();
            reg_fence(o);
#if MID_WAIT_ON
            // O's row half 0 rescaled first in the source, ptxas's tie-break, so that its FMULs
            // fill the MUFU issue gaps of row half 1's exp2s (which read sl2 through O: below the
            // wait; the row max is free to run above it). At a boundary O is kept (alpha 1).
            {
                const float sl2_1 = after_wait(ctx.sl2, o[0][0]);
#if ITEM_OVERLAP_ON
                rescale_o_half(o, boundary ? 1.f : alpha_n[0], 0);
#else
                rescale_o_half(o, alpha_n[0], 0);
#endif
                softmax_exp(s_next, m, l, alpha_n, softmax_row_max(s_next, m, 1, false), 1, sl2_1);
            }
            reg_fence(s_next);
#endif
            PHASE_MARK(7);                          // 7: P(j).V(j) has retired
#ifdef PHASE_CLOCKS
            if (lane == 0 && PHASE_STORED(j)) {
                const size_t blk = blockIdx.x + (size_t)gridDim.x * (blockIdx.y + (size_t)gridDim.y * blockIdx.z);
                unsigned* dst = reinterpret_cast<unsigned*>(L_out) + ((blk * NWARPS + warp) * PHASE_TILES + j) * PHASE_N;
#pragma unroll
                for (int k = 0; k < PHASE_N; ++k) dst[k] = ph_clk[k];
            }
#endif
            keep_p_frags(f);                        // P(j)'s registers stay P(j)'s until P.V retired
            // This warp's wgmma reads of stage j are complete: release it.
#if KV_SPLIT
            warp_arrive(&bar_empty_v[slot], lane);  // V(j), and K(j+1), whose Q.K^T retired at wait_group 1
            warp_arrive(&bar_empty[slot_n], lane);
#else
            warp_arrive(&bar_empty[slot], lane);
#endif
#if ITEM_OVERLAP_ON
            // The boundary's O is stored as it is, after the loop: the rescale below leaves it
            // (its alpha, the next item's first, is 0; O is zeroed after the store instead).
#if defined(BUG_RESCALE_AFTER_PV)
            if (boundary) alpha[0] = alpha[1] = 1.f;        // the bug's late rescale, by tile j's alpha
#elif !RESCALE_IN_TURN_ON
            if (boundary) alpha_n[0] = alpha_n[1] = 1.f;
#endif
#endif
#ifdef BUG_RESCALE_AFTER_PV
            // BUG_RESCALE_AFTER_PV in this schedule (the plain schedule's glue bug, below): tile j's
            // alpha applied after P(j).V(j) retired, O_j = alpha_j (O_{j-1} + P_j V_j), instead of
            // tile j+1's before P(j+1).V(j+1); the first tile's product (alpha = 0) is lost.
            rescale_o(o, alpha);
            alpha[0] = alpha_n[0]; alpha[1] = alpha_n[1];
#elif RESCALE_IN_TURN_ON
            alpha[0] = alpha_n[0]; alpha[1] = alpha_n[1];   // applied in the next turn (or before the last P.V)
#elif MID_WAIT_ON
            rescale_o_half(o, alpha_n[1], 1);       // (row half 0 was rescaled under row half 1's exp2s)
#else
            rescale_o(o, alpha_n);
#endif
#if PACK_AT_END
            pack_p_frags(f, s_next);                // P(j+1): the loop carries its 32 halves, not S's 64 floats
#else
#pragma unroll
            for (int i = 0; i < N_FRAG; ++i)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[i][e] = s_next[i][e];
#endif
#if ITEM_OVERLAP_ON
            if (boundary) break;                    // the finished item's store, below
#endif
        }
#if ITEM_OVERLAP_ON
        // (no break out of this loop: the item loop's break made ptxas hold the key loop to the
        // launch's 168 registers, below)
        more = boundary && !stuck;                  // else stuck, or the block's last item: its last tile below
        if (more) {                                 // the finished item's O, then O = 0 for the next
#ifdef BLOCK_CLOCKS
            block_put(L_out, 3, block_now(), warp, lane, it_d);   // 3: its last P.V has retired
#endif
            store_item<true>(o, m_d, l_d, O, LSE, L_out, sQ, bh_d, q0_d, rb_d, row0, n_rows, Sq, scale, w, warp,
                             lane, it_d);
#pragma unroll
            for (int i = 0; i < D_FRAG; ++i)
#pragma unroll
                for (int e = 0; e < 4; ++e) o[i][e] = 0.f;
#ifdef BLOCK_CLOCKS
            // 0, 1, 2 of the next item: its Q wait and prologue ran inside this iteration
            const BlockMark t_next = block_now();
            for (int k = 0; k < 3; ++k) block_put(L_out, k, t_next, warp, lane, it);
#endif
            ++j;                                    // (the key loop's increment, which the break skipped)
        }
        }   // the next pass
#endif
        if (!stuck) {                               // the last tile: P.V with nothing to overlap
#if PERSISTENT_SCHEDULE && !ITEM_OVERLAP_ON              // (version 21 arrived at the loop's last iteration)
            warp_arrive(&bar_q_free[0], lane);         // every Q.K^T of the item is done: the next Q may load now
#endif
            const int slot = KV_G(j) % KV_STAGES;
#if RESCALE_IN_TURN_ON
            rescale_o(o, alpha);                    // the last tile's alpha (the loop left it unapplied)
#endif
#if KV_SPLIT
            if (!mbar_wait_bounded(&bar_full_v[slot], (u32)(KV_G(j) / KV_STAGES) & 1u)) stuck = true;
            if (!stuck) {
#endif
#if PACK_AT_END
            reg_fence(o);                           // the last alpha rescale lands before the fence
            pv_issue<!SOFTMAX_TURNS_ON>(o, f, sV + slot * KV_TILE_HALVES, wg);
            wgmma_wait<0>();
            reg_fence(o);
#else
            pv_tile<!SOFTMAX_TURNS_ON>(o, s, sV + slot * KV_TILE_HALVES, wg);   // version 14: turns are softmaxes
#endif
#if KV_SPLIT
            warp_arrive(&bar_empty_v[slot], lane);
            }
#else
            warp_arrive(&bar_empty[slot], lane);
#endif
#ifdef BUG_RESCALE_AFTER_PV
            rescale_o(o, alpha);
#endif
        }
        BLOCK_MARK(3);                              // 3: the last P.V has retired
        (void)alpha;
    }
#else
    for (int j = 0; j < n_iter; ++j) {
        const int slot = KV_G(j) % KV_STAGES;
        const u32 parity = (u32)(KV_G(j) / KV_STAGES) & 1u;   // the (j / KV_STAGES)-th use of this stage
#if KV_SPLIT
        // K(j) and V(j) on barriers of their own, each where the mode reads it
        if ((USES_QK && !mbar_wait_bounded(&bar_full[slot], parity)) ||
            (USES_PV && !mbar_wait_bounded(&bar_full_v[slot], parity))) {
            stuck = true;
            break;
        }
#elif PRODUCER_WG
        if (!mbar_wait_bounded(&bar_full[slot], parity)) {   // tile j's bytes have landed
            stuck = true;
            break;
        }
#else
        mbar_wait(&bar_full[slot], parity);             // tile j's bytes have landed
#endif
        float s[N_FRAG][4];
#if USES_QK
        qk_tile<!SOFTMAX_TURNS_ON>(s, sQw, sK + slot * KV_TILE_HALVES, wg);   // version 13: no GEMM turn
        mask_scores(s, j, ctx);
#endif
#if defined(BUG_RESCALE_AFTER_PV) && USES_QK && USES_PV
        // BUG_RESCALE_AFTER_PV (glue): O's alpha rescale moved past the P.V wgmma (to keep ordinary
        // register writes off the accumulator around the async product): scores_to_p rescales a
        // stand-in of ones (= alpha per row), applied to O after P.V retired, so
        // O_j = alpha_j (O_{j-1} + P_j V_j): the tile's own product is rescaled too, and the first
        // tile's (alpha = 0) is lost. Only full and fp32_p rescale O: qk_only, softmax_only,
        // pv_only (alpha = 1) and uniform_p compile to the clean cubins and pass; full fails.
        // Stage: glue.
        float alpha_o[D_FRAG][4];
#pragma unroll
        for (int i = 0; i < D_FRAG; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) alpha_o[i][e] = 1.f;
        scores_to_p(s, alpha_o, m, l, j, ctx);
        pv_tile(o, s, sV + slot * KV_TILE_HALVES, wg);
#pragma unroll
        for (int i = 0; i < D_FRAG; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[i][e] *= alpha_o[i][e];
#elif SOFTMAX_TURNS_ON
        // Version 13: the softmax is the turn, pinned inside it (turn_zero, hold_wait_below).
        turn_begin(wg);
        s[0][0] += turn_zero(&turn_pin);
        scores_to_p(s, o, m, l, j, ctx);
        hold_wait_below(l[0], l[1], &turn_sink);
        turn_end(wg);
        pv_tile<false>(o, s, sV + slot * KV_TILE_HALVES, wg);
#else
        scores_to_p(s, o, m, l, j, ctx);
#if USES_PV
        pv_tile(o, s, sV + slot * KV_TILE_HALVES, wg);
#endif
#endif
        // This warp's wgmma reads of the stage are complete (wait_group 0 above): release it.
#if KV_SPLIT
        if (USES_QK) warp_arrive(&bar_empty[slot], lane);
        if (USES_PV) warp_arrive(&bar_empty_v[slot], lane);
#else
        warp_arrive(&bar_empty[slot], lane);
#endif
#if !PRODUCER_WG
        // Thread 0 refills the stage with tile j + KV_STAGES once every warp has released it.
        if (tid == 0 && j + KV_STAGES < n_iter) {
            mbar_wait(&bar_empty[slot], parity);
            issue_kv(sK, sV, &bar_full[slot], &tmK, &tmV, slot, j + KV_STAGES, bh, Sk);
        }
        __syncwarp();
#endif
    }
#endif  // OVERLAP_SCHEDULE
#if PERSISTENT_SCHEDULE
    if (stuck) break;                               // the trap is after the item loop
#if !OVERLAP_SCHEDULE
    warp_arrive(&bar_q_free[0], lane);                 // every Q.K^T of the item has completed
#else
    if (n_iter == 0) {                              // no key tile: no Q.K^T was issued
        warp_arrive(&bar_q_free[0], lane);
    }
#endif
#elif PRODUCER_WG
    if (stuck) __trap();                            // the bounded wait's fault, outside the loop
#endif
    (void)m; (void)l;
#if !PERSISTENT_SCHEDULE
    if (wg == 0) turn_begin(0);                     // PINGPONG: warpgroup 1's last arrival, taken
#endif

#if USES_PV
    store_item<ITEM_OVERLAP_ON || FAST_INV_EPILOGUE>(o, m, l, O, LSE, L_out, sQ, bh, q0, row_base, row0, n_rows, Sq, scale, w, warp, lane, ITEM_IT);
#endif
    // Version 21 leaves this loop at its top: its key loop ran every item of the block and read
    // the producer's -1 in the next buffer, which the top reads again (the same barrier phase,
    // complete). A `break` here instead made ptxas hold the key loop to the launch's 168
    // registers (the trap after the loop then counts as inside it, hopper/ptx.cuh): 392 bytes of
    // spills at D = 128, none this way.
#if PERSISTENT_SCHEDULE
    }   // the next work item
    if (stuck) __trap();                            // the bounded wait's fault, outside the loops
    if (wg == 0) turn_begin(0);                     // PINGPONG: warpgroup 1's last arrival, taken
#endif
#undef KV_G
#undef ITEM_IT
#endif  // !DEBUG_SOFTMAX_ONLY
}
