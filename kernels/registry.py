"""The kernels that speak FlashCore's own debug flags (docs/DESIGN.md, tier 3), as data.

An entry is the one place that says what such a kernel is: its source and entry point, the
archs it is built for, its tile tables, and, as expressions of the tile constants and the head
dim D, everything derived from them: rows per block, threads, dynamic shared memory, the -D
list, and the conditions a tile choice must meet. Like cupy's sgemm example, the derived values
are computed and asserted (harness/toolchain/variant.py) before anything is compiled.

The flag contract itself (the 17-parameter signature, the windows, the debug buffers) is
shared by every entry: it is what debug_modes/registry.py describes. A kernel with its own
signature and flags is described by a TOML spec instead (kernels/spec.py, tier 1 and 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.errors import UsageError
from kernels.spec import evaluate

KERNELS_DIR = Path(__file__).resolve().parent

# The tile constants every entry's table gives (the harness's localisation speaks of warps of
# 16-row fragments: a wgmma warpgroup of 64 rows is four such warps of one fragment each).
TILE_KEYS = ("m_frags", "nwarps", "block_n", "kv_stages")


@dataclass(frozen=True)
class KernelSpec:
    name: str
    file: str                     # relative to kernels/
    entry: str                    # the extern "C" __global__ function
    archs: dict                   # arch -> shared memory a block may opt into (bytes)
    tiles: dict                   # head dim -> tile constants (the -D values) for large shapes
    small_tiles: dict             # head dim -> tile constants for shapes with few query blocks
    small_below_blocks: int       # "few": fewer than this many 128-row blocks over B*H
    # Derived values, expressions over the tile constants, D and block_m (kernels/spec.py's evaluator).
    block_m: str = "16 * m_frags * nwarps"
    threads: str = "32 * nwarps"
    smem: str = "(block_m + 2 * kv_stages * block_n) * (D + 8) * 2"
    # -D flags from the tile constants: "MACRO=expression"
    tile_defines: tuple = ("NWARPS=nwarps", "BLOCK_N=block_n", "M_FRAGS=m_frags", "KV_STAGES=kv_stages")
    # (condition, what it means): a tile choice that breaks one is refused before compiling
    asserts: tuple = ()
    # tile values a mode forces on this kernel, whatever was asked (its register budget)
    mode_tiles: dict = field(default_factory=dict)
    head_dims: tuple = (64, 128)
    # The signature, the one place it is spelled: pointer parameters in order (null where a mode
    # does not use one), then the scalars, each with its C type, then arguments the launch
    # derives from the buffers ("tma:Q": a TMA tensor map of Q; "counter": a zeroed work-item
    # word of the launch's own, harness/toolchain/counter.py). The harness path (run/gpu.py)
    # and the product path (api.py) both build their arguments from these.
    pointer_params: tuple = ("Q", "K", "V", "O", "LSE", "S_in", "P_in", "S_out", "P_out", "M_out", "L_out")
    scalar_params: tuple = (("H", "int32"), ("Sq", "int32"), ("Sk", "int32"), ("scale", "float32"),
                            ("row0", "int32"), ("n_rows", "int32"))
    trailing_params: tuple = ()
    # The rows of one TMA box of Q (an expression, like block_m): a Q tile is block_m / q_box_rows
    # boxes per 64-column panel (version 22 loads each warpgroup's 64 rows on its own barrier)
    q_box_rows: str = "block_m"
    tensor_cores: str = "HMMA"    # the SASS opcode its matrix products compile to
    required_sass: tuple = ()     # opcodes every tensor-core variant must also contain (USETMAXREG)
    seeded_bugs: tuple | None = None   # the BUG_* switches it implements (None: every one of debug_modes/bugs.py)
    # Where forward() launches this entry instead of DEFAULT on a GPU of one of its archs: a
    # condition over B, H, Sq, Sk, D and causal (1/0), from measured bench runs ("": never).
    product_when: str = ""
    # One block per SM runs work items one after another (the kernel's PERSISTENT=1): the launch
    # grid is (max(1, min(SMs // B, query tiles * H)), B), not one block per query tile, in the
    # modes and masks the kernel runs persistently (Variant.persistent).
    persistent: bool = False
    # The persistent blocks take their work items from a counter (TILE_COUNTER=1), so a block more
    # than SMs // B per batch costs only its start, where a static schedule would give it a share:
    # the grid rounds SMs / B up, (min(ceil(SMs / B), query tiles * H), B).
    tile_counter: bool = False
    notes: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return KERNELS_DIR / self.file

    def arch_on(self, device_arch: str) -> str | None:
        """The arch this entry is built for on a device of `device_arch` ("sm_90" runs sm_90a
        code), or None where it does not run there."""
        for a in self.archs:
            if a == device_arch or a == device_arch + "a":
                return a
        return None

    def tiles_for(self, B: int, H: int, Sq: int, D: int) -> dict:
        """The tile table's choice for a problem shape (all modes of one shape share it)."""
        rows_blocks = B * H * -(-Sq // 128)
        return dict((self.small_tiles if rows_blocks < self.small_below_blocks else self.tiles)[D])

    # ---- derived values of one tile choice
    def names(self, tiles: dict, head_dim: int) -> dict:
        n = dict(tiles, D=head_dim)
        n["block_m"] = int(evaluate(self.block_m, n))
        n["threads"] = int(evaluate(self.threads, n))
        n["q_box_rows"] = int(evaluate(self.q_box_rows, n))
        return n

    def derived(self, tiles: dict, head_dim: int) -> dict:
        """block_m, threads, q_box_rows and smem_bytes of a tile choice."""
        n = self.names(tiles, head_dim)
        return dict(block_m=n["block_m"], threads=n["threads"], q_box_rows=n["q_box_rows"],
                    smem_bytes=int(evaluate(self.smem, n)))

    def defines(self, tiles: dict, head_dim: int) -> list:
        n = self.names(tiles, head_dim)
        out = []
        for d in self.tile_defines:
            macro, expr = d.split("=", 1)
            out.append(f"{macro}={int(evaluate(expr, n))}")
        return out

    def violations(self, tiles: dict, head_dim: int) -> list:
        """The asserts a tile choice breaks, in words."""
        n = self.names(tiles, head_dim)
        return [why for cond, why in self.asserts if not evaluate(cond, n)]


FLASHCORE_FUSED = KernelSpec(
    name="flashcore_fused",
    file="flashcore_fused.cu",
    entry="flashcore_fwd",
    archs={"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_89": 99 * 1024, "sm_90": 227 * 1024},
    # Chosen by scripts/tune_tiles.py on an H200 (kernels/NOTES.md): 32 query rows per warp;
    # D=128 keeps one K/V buffer: double buffering costs the registers that 64-key tiles need.
    tiles={64: dict(m_frags=2, nwarps=4, block_n=64, kv_stages=2),
           128: dict(m_frags=2, nwarps=4, block_n=64, kv_stages=1)},
    # Fewer than ~one block of 128 rows per SM (132 on an H100/H200): 64-row blocks double
    # the parallelism.
    small_tiles={64: dict(m_frags=1, nwarps=4, block_n=64, kv_stages=2),
                 128: dict(m_frags=1, nwarps=4, block_n=64, kv_stages=2)},
    small_below_blocks=132,
    # Q tile + kv_stages K and V tiles, fp16, rows padded by SMEM_PAD = 8 halves (bank conflicts).
    smem="(block_m + 2 * kv_stages * block_n) * (D + 8) * 2",
    asserts=(
        ("block_n % 16 == 0 and block_n >= 16", "block_n must be a positive multiple of 16"),
        ("kv_stages == 1 or kv_stages == 2", "kv_stages must be 1 or 2"),
        ("m_frags == 1 or m_frags == 2", "m_frags must be 1 or 2"),
        ("nwarps >= 1 and nwarps <= 16", "nwarps must be 1..16"),
        # load_tile: one 16-byte chunk per thread per pass, so whole passes per tile
        ("threads % (D // 8) == 0 and block_n % (threads // (D // 8)) == 0 and block_m % (threads // (D // 8)) == 0",
         "the tiles are not a multiple of the rows the block's threads copy per pass"),
    ),
    # the hi+lo products of fp32_p need the registers that 32 rows per warp or the pipelined loop use
    mode_tiles={"fp32_p": dict(m_frags=1, kv_stages=1)},
)

FLASHCORE_HOPPER = KernelSpec(
    name="flashcore_hopper",
    file="flashcore_hopper.cu",
    entry="flashcore_fwd",
    # wgmma and setmaxnreg exist on the arch-specific target only (../shared/hopper/NOTES.md)
    archs={"sm_90a": 227 * 1024},
    # Two consumer warpgroups of 64 rows (four warps of one 16-row fragment each, the mma.sync
    # C layout of the wgmma accumulator), 128-key tiles, two K/V stages: the configuration every
    # correctness case of scripts/hopper_selfcheck.py ran at on the H200 (kernels/NOTES.md).
    tiles={64: dict(m_frags=1, nwarps=8, block_n=128, kv_stages=2),
           128: dict(m_frags=1, nwarps=8, block_n=128, kv_stages=2)},
    small_tiles={64: dict(m_frags=1, nwarps=8, block_n=128, kv_stages=2),
                 128: dict(m_frags=1, nwarps=8, block_n=128, kv_stages=2)},
    small_below_blocks=0,
    # 1 KB alignment slack (128-byte swizzled tiles are 1024-byte aligned), the fp16 Q tile, and
    # kv_stages K and V tiles; no padding (the swizzle avoids the bank conflicts)
    smem="1024 + block_m * D * 2 + kv_stages * 2 * block_n * D * 2",
    tile_defines=("CONSUMER_WGS=nwarps // 4", "BLOCK_N=block_n", "KV_STAGES=kv_stages"),
    asserts=(
        ("m_frags == 1", "a wgmma warpgroup's warp holds one 16-row fragment (m_frags = 1)"),
        ("nwarps % 4 == 0 and nwarps >= 4 and nwarps <= 16", "nwarps must be whole warpgroups: 4, 8, 12 or 16"),
        ("block_n % 16 == 0 and block_n >= 32 and block_n <= 256", "block_n must be a multiple of 16 in [32, 256] (wgmma N, k16 slices of P.V)"),
        ("kv_stages >= 1", "kv_stages must be at least 1"),
    ),
    # the three TMA tensor maps of Q, K and V, after the scalars (harness/toolchain/tma.py)
    trailing_params=("tma:Q", "tma:K", "tma:V"),
    tensor_cores="HGMMA",
    # Hopper-class bugs (debug_modes/hopper_bugs.py): descriptors, mbarrier counts, TMA boxes
    # forward() launched this entry from 3ce187b to ff22ca8; flashcore_hopper_ws, measured faster
    # at every large shape (cd5c7f8), took its place
    product_when="",
    seeded_bugs=("K_DESC_SBO", "CAUSAL_MASK_ROW", "EMPTY_COUNT", "V_KSTEP", "V_DESC_LBO", "V_TAIL_COORD",
                 "RESCALE_AFTER_PV"),
)

# An entry that is another's file with more -D flags (and more tile asserts): the Hopper
# versions of part 2. product_when does not carry over: an entry becomes forward()'s only by
# naming its own measured condition.
def derived(base: KernelSpec, name: str, defines: tuple, asserts: tuple = (), product_when: str = "",
            **changes) -> KernelSpec:
    return replace(base, name=name, tile_defines=base.tile_defines + defines, asserts=base.asserts + asserts,
                   product_when=product_when, **changes)


# Part 2, version 2 (kernels/NOTES.md): the same file with a producer warpgroup (PRODUCER_WG=1)
# that issues every TMA copy while the consumers get its registers (setmaxnreg).
# bench --suite --kernel flashcore_hopper_ws at cd5c7f8 (H200, results/logs/ws-cd5c7f8-h200.log):
# 5-12 % faster than version 1 at every large shape and 1,8,1024,64 (17.4 against 18.5 us;
# flashcore_fused 19.1 at 48b77d5), slower at 1,8,512,64 (12.4 against flashcore_fused's 11.7).
# forward() launched it from cd5c7f8 to b46b5a0; version 4's second build, measured faster at
# every large shape, took its place (FLASHCORE_HOPPER_OV below).
FLASHCORE_HOPPER_WS = derived(
    FLASHCORE_HOPPER, "flashcore_hopper_ws", ("PRODUCER_WG=1",),
    threads="32 * nwarps + 128",
    required_sass=("USETMAXREG",),
    # fp32_p's hi + lo products at 128 keys spilled 12-24 bytes at D = 128 while the consumers' key
    # loop held mbar_wait's trap (which kept the loop at the launch's 168 registers, kernels/NOTES.md);
    # since the trap left the loop they compile at R206 with 0 spills, but 128 has not run on a GPU
    # in this entry: 64-key tiles stay until it has
    mode_tiles={"fp32_p": dict(block_n=64)},
)

# What PINGPONG=1 asks of a tile choice (versions 3 and 6).
PINGPONG_ASSERTS = (("nwarps == 8", "the ping-pong schedule takes two consumer warpgroups"),)

# Part 2, version 3 (kernels/NOTES.md): version 2 with the consumer warpgroups' GEMMs taking turns
# (PINGPONG=1, named barriers), so that one's softmax overlaps the other's GEMM. Measured 3-12 %
# slower than version 2 at ffda479 (results/logs/pp-ffda479-h200.log): forward() never launches
# it; --kernel flashcore_hopper_pp runs it.
FLASHCORE_HOPPER_PP = derived(FLASHCORE_HOPPER_WS, "flashcore_hopper_pp", ("PINGPONG=1",), PINGPONG_ASSERTS)

# Part 2, version 4 (kernels/NOTES.md): version 2 with FA3's intra-warpgroup overlap (OVERLAP_QK=1):
# S(j+1) = Q.K(j+1)^T is issued before P(j).V(j), so tile j+1's softmax has a GEMM in flight. K and
# V of a tile share a stage, released after P(j).V(j), so the stage of tile j+1 is held meanwhile:
# three stages keep a load in flight (D = 128: 230,400 bytes). The debug modes with one GEMM
# (qk_only, pv_only, uniform_p) and softmax_only keep the plain schedule. Measured on the H200 at
# 2e2931b (results/logs/ov-2e2931b-h200.log): -1 to +5 % against version 2 at D = 128, 10-11 %
# slower at D = 64. ptxas had issued the P.V wait above the overlapped exp2s; the second build
# holds it below them (hopper/ptx.cuh hold_wait_below, kernels/NOTES.md "version 4, second
# build"): measured at a0370f5 and 958a675 (results/logs/ov-a0370f5-h200.log, ps-958a675-h200.log)
# at 501-504 TFLOP/s at 4,16,2048,128 (version 2: 482 at 2e2931b), 568-577 at 2,16,8192,128 (527),
# 377-380 at 4,16,2048,64 (363), 335 at 16,16,1024,64 (325), 391-392 causal (374), and 17.7-17.8
# us at 1,8,1024,64. forward() launched it from 0b643d8 to c58c5bb; version 6, measured faster at
# every suite shape, took its place (FLASHCORE_HOPPER_OVPP below).
FLASHCORE_HOPPER_OV = derived(
    FLASHCORE_HOPPER_WS, "flashcore_hopper_ov", ("OVERLAP_QK=1",),
    tiles={64: dict(m_frags=1, nwarps=8, block_n=128, kv_stages=3),
           128: dict(m_frags=1, nwarps=8, block_n=128, kv_stages=3)},
)

# Part 2, version 5 (kernels/NOTES.md): version 4, persistent (PERSISTENT=1). Nsight Compute at
# a0370f5 (results/logs/ncu-a0370f5-ov-cudnn-*): cuDNN's kernel runs 132 blocks, one per SM, where
# version 4 runs 1024 blocks in 7.8 waves, each paying its Q and first K/V loads before any
# tensor work and storing O with no load in flight. Here the next item's Q and K/V load during
# this item's last P.V and epilogue. Non-causal only (causal keeps version 4's schedule).
FLASHCORE_HOPPER_PS = derived(FLASHCORE_HOPPER_OV, "flashcore_hopper_ps", ("PERSISTENT=1",), persistent=True)

# Part 2, version 6 (kernels/NOTES.md): version 4 with version 3's turns (PINGPONG=1), FA3's whole
# schedule: per tile a warpgroup issues QK(j+1) and P(j).V(j) in one turn, then runs tile j+1's
# softmax while the other warpgroup's pair is issued. Nsight Compute at a0370f5 found cuDNN's
# warps waiting at named barriers where version 4's wait on dependencies. Measured on the H200 at
# c58c5bb in two calls, version 4 benched beside it in both (results/logs/ovpp-c58c5bb-h200.log,
# ovpp-ab-c58c5bb-h200.log): 520-521 TFLOP/s at 4,16,2048,128 (version 4: 500-501), 575-577 at
# 2,16,8192,128 (561-562), 376-380 at 4,16,2048,64 (374-375), 338 at 16,16,1024,64 (334-335),
# 407-409 causal (388-390), 17.2-17.4 us at 1,8,1024,64 (17.7-17.8): forward() launches it where
# version 4 was launched, in work B*H*Sq*Sk.
# forward() launched it there from 878c8c6 to bc57c76; version 19 (FLASHCORE_HOPPER_WOEL below),
# measured faster at every suite shape, has its place (HOPPER_WHEN). (No `not` in the expressions.)
# Since this commit version 21 (FLASHCORE_HOPPER_IO below) has its D = 64 share (IO_WHEN), and
# version 19 every D = 128 problem, the short key sweeps included (version 9's before: measured
# faster only at D = 64).
# Since 2026-12-04 version 22 (FLASHCORE_HOPPER_IOW below) has the same share at D = 128 (IOW_WHEN),
# so version 19 keeps the causal problems, the long key sweeps and the smaller problems.
HOPPER_WHEN = ("B * H * Sq * Sk >= 4 * 1024 * 1024 and "
               "(causal == 1 or Sk > 2048 or B * H * Sq * Sk < 64 * 1024 * 1024)")
FLASHCORE_HOPPER_OVPP = derived(FLASHCORE_HOPPER_OV, "flashcore_hopper_ovpp", ("PINGPONG=1",), PINGPONG_ASSERTS)

# Part 2, version 7 (kernels/NOTES.md): version 6 with the softmax's row max and row sum in four
# independent chains each (SOFTMAX_ILP=4, common/softmax.cuh) instead of one serial chain.
# Nsight Compute at 106cbd4 (results/logs/ncu-106cbd4-ovpp-cudnn-*): version 6's warps stall on
# fixed-latency dependencies 48-54 M warp-cycles more than cuDNN's, the largest gap left.
# Measured at 5143d79 beside version 6 (results/logs/ilp-5143d79-h200.log): even at D = 128,
# 0.7-1.1 % slower at D = 64; forward() does not launch it.
FLASHCORE_HOPPER_ILP = derived(FLASHCORE_HOPPER_OVPP, "flashcore_hopper_ilp", ("SOFTMAX_ILP=4",))

# Part 2, version 8 (kernels/NOTES.md): version 6 with each k16 step's wgmma descriptor stepped
# from the operand's first (DESC_STEP=1, hopper/ptx.cuh smem_desc_plus) instead of rebuilt from
# its address. Nsight Compute's per-instruction sampling of version 6 at 0ab3415
# (results/logs/ncu-src-0ab3415-*) put a fifth of the fixed-latency stalls at D = 128 on the
# uniform ops that rebuild them, between the HGMMAs of one batch. The turn's instructions fell
# from 137 to 80 at D = 128 (101 to 61 at D = 64), but measured at 2f57607 beside version 6
# (results/logs/ds-2f57607-h200.log) it is even: -1.4 to +0.8 %. forward() does not launch it.
FLASHCORE_HOPPER_DS = derived(FLASHCORE_HOPPER_OVPP, "flashcore_hopper_ds", ("DESC_STEP=1",))

# Part 2, version 9 (kernels/NOTES.md): version 6, persistent, with the work items taken from a
# counter (PERSISTENT=1, TILE_COUNTER=1): version 5's overlap of one item's end with the next
# item's loads, without its static schedule, whose slowest SM set the time (14 % past the average
# at D = 64, 958a675). The turns run on across items. Measured in two calls beside version 6
# (results/logs/dyn-944eb16-h200.log, poly-a5b85cf-h200.log): +4.2 and +5.1 % at 16,16,1024,64
# (355-356 TFLOP/s against 339-341), even at 4,16,2048 (-0.8 to +0.2 %), -1.3 to -2.1 % at
# 2,16,8192,128, and slower at the mission shapes (13.0-13.6 us against 11.6-12.5 at 1,8,512,64).
# The counter is a word of each launch's own, the last parameter (harness/toolchain/counter.py).
# forward() launches it at the short key sweeps of large non-causal problems, where it was
# measured faster (16,16,1024,64: B*H*Sq*Sk = 256M); version 6 stays at 2048 keys and more (even
# or faster there) and below 64M (the mission shapes, where version 9 was slower).
# forward() launched it there from c79d13c to this commit; version 21 (FLASHCORE_HOPPER_IO below),
# measured 3.5-6 % faster there, took its place (IO_WHEN).
FLASHCORE_HOPPER_DYN = derived(FLASHCORE_HOPPER_OVPP, "flashcore_hopper_dyn", ("PERSISTENT=1", "TILE_COUNTER=1"),
                               persistent=True, tile_counter=True,
                               trailing_params=FLASHCORE_HOPPER_OVPP.trailing_params + ("counter",))

# Part 2, version 11 (kernels/NOTES.md): version 6 with O's rescale moved into the turn, under
# Q.K(j+1)^T's issue (RESCALE_IN_TURN=1), and the next tile's barrier probed under the pack of P
# (KV_PROBE_EARLY=1). PHASE_CLOCKS at d7f093a (results/logs/clocks-d7f093a-h200.log): a warp's
# iteration is pack, K/V wait (91 clocks), turn (never waited for), issue (725-919, the HGMMAs
# taken as the tensor pipe frees), softmax (1183-1557) and rescale, one after another.
# Measured at ff8a4a0 beside version 6 (results/logs/rt-ff8a4a0-h200.log): 2.5-3.7 % slower at
# every suite shape. The probe took 70-78 clocks off the K/V wait, but the first warpgroup's
# softmax grew by 237 (the other's rescale FMULs now run beside it). forward() does not launch it.
FLASHCORE_HOPPER_RT = derived(FLASHCORE_HOPPER_OVPP, "flashcore_hopper_rt", ("RESCALE_IN_TURN=1", "KV_PROBE_EARLY=1"))

# Part 2, version 12 (kernels/NOTES.md): version 6 with the early K/V probe alone (KV_PROBE_EARLY=1),
# version 11's half that shortened the chain without adding work beside the other softmax.
# Measured at d91f132 in turns with version 6 (results/logs/kp-d91f132-h200.log): even, 0.981-1.019;
# the K/V wait fell by 70 clocks and the GEMM issue grew by as much. forward() does not launch it.
FLASHCORE_HOPPER_KP = derived(FLASHCORE_HOPPER_OVPP, "flashcore_hopper_kp", ("KV_PROBE_EARLY=1",))

# Part 2, version 13 (kernels/NOTES.md): cuDNN's order, read from its SASS at d7f093a: version 3's
# ping-pong with the turn around the softmax (exp2s, sums, O's rescale) instead of the GEMM
# issues (SOFTMAX_TURNS=1), no intra-warpgroup overlap. Measured at ab11721 in turns
# (results/logs/st-ab11721-h200.log): 1.063x version 3 at 4,16,2048,128 (495 against 468 TFLOP/s),
# but 0.935x and 0.941x version 6 at 4,16,2048 D = 128 and 64. forward() does not launch it.
FLASHCORE_HOPPER_ST = derived(FLASHCORE_HOPPER_PP, "flashcore_hopper_st", ("SOFTMAX_TURNS=1",))

# Part 2, version 14 (kernels/NOTES.md): version 13's order on version 6's overlap: Q.K(j+1)^T and
# P(j).V(j) are issued outside any turn and the turn holds softmax(j+1) while P(j).V(j) runs, so the
# two warpgroups' exp2 phases never share the SMSPs (PHASE_CLOCKS at d7f093a: version 6's overlap,
# and warpgroup 0's softmax 32 % longer than warpgroup 1's). SOFTMAX_TURNS=1: the whole softmax in
# the turn; =2 (flashcore_hopper_ovst2): the row max before it, as in cuDNN's loop.
FLASHCORE_HOPPER_OVST = derived(FLASHCORE_HOPPER_OVPP, "flashcore_hopper_ovst", ("SOFTMAX_TURNS=1",))
FLASHCORE_HOPPER_OVST2 = derived(FLASHCORE_HOPPER_OVPP, "flashcore_hopper_ovst2", ("SOFTMAX_TURNS=2",))

# Part 2, version 15 (kernels/NOTES.md), FA4's lazy rescale, measured at c6038e4 and taken out:
# +0.6-1.5 % at the large shapes, but O's error 1.07-2.67x the floor at the mission shape (2 of 6
# seeds fail the floor rule): P up to 2^8 rounds where the kernel-precision reference does not.

# Part 2, version 16 (kernels/NOTES.md): version 14 (the turn around the softmax, on the overlap)
# with the row max and sum in four chains (SOFTMAX_ILP=4, version 7's). scripts/softmax_rate.py at
# d8bb63a: the softmax alone on an SMSP takes ~860 clocks per tile with one warp (latency-bound:
# the max, then the exp2s, then the sum tail) and 694 per tile with two (the MUFU 76 % busy).
# Version 7 changed nothing in version 6, whose two softmaxes overlap (the second regime); in
# version 14's turn one softmax runs alone (the first), where shorter chains should tell.
FLASHCORE_HOPPER_OVSTI = derived(FLASHCORE_HOPPER_OVST, "flashcore_hopper_ovsti", ("SOFTMAX_ILP=4",))

# Part 2, version 17 (kernels/NOTES.md): version 6 with K and V in pipelines of their own
# (KV_SPLIT=1, FA3's): K(j) released once Q.K(j)^T retired, V(j) once P(j).V(j) did, K loaded one
# tile ahead of V, so that the overlap runs on two stages where version 6 holds three.
# flashcore_hopper_kv144: the same with 144-key tiles at D = 128 (181,248 bytes of shared memory;
# three shared stages would take 254,976). FA3's 176 and 160 spill 2.5 KB here and ptxas serialises
# every wgmma (C7512, every full-mode build at D = 128); 144 compiles at 0 spills.
# scripts/softmax_rate.py (kernels/NOTES.md, "What slows the softmax"): a tile's softmax takes
# ~1,310 clocks beside a full tensor pipe whatever the issue order, so more keys per tile spread
# its fixed costs. Measured at b1b8105 (H200, in turns with version 6): _kv 0.95-0.98x, _kv144
# 0.94-0.98x at the large shapes (the K and V waits, +90-120 clocks an iteration); forward()
# launches neither.
KV_SPLIT_ASSERTS = (("kv_stages >= 2", "K and V in pipelines of their own take two stages or more"),)
FLASHCORE_HOPPER_KV = derived(
    FLASHCORE_HOPPER_OVPP, "flashcore_hopper_kv", ("KV_SPLIT=1",), KV_SPLIT_ASSERTS,
    tiles={64: dict(m_frags=1, nwarps=8, block_n=128, kv_stages=2),
           128: dict(m_frags=1, nwarps=8, block_n=128, kv_stages=2)},
)
FLASHCORE_HOPPER_KV144 = derived(
    FLASHCORE_HOPPER_KV, "flashcore_hopper_kv144", (),
    tiles={**FLASHCORE_HOPPER_KV.tiles, 128: dict(FLASHCORE_HOPPER_KV.tiles[128], block_n=144)},
)

# Part 2, version 18 (kernels/NOTES.md): version 6 (_wo) and version 9 (_dynwo) with O stored 16
# bytes per thread (WIDE_O_STORE=1, common/epilogue.cuh store_o_half_wide: a quad transpose of the
# packed half2 words, then one 16-byte store per n8 tile group). BLOCK_CLOCKS at 8478ff8
# (results/logs/blocks-8478ff8-*): version 6's epilogue, two columns per store, is 6.6 % of the
# SMs' time at 4,16,2048,128 (~3,400 clocks a block) and 3.4 % at D = 64.
FLASHCORE_HOPPER_WO = derived(FLASHCORE_HOPPER_OVPP, "flashcore_hopper_wo", ("WIDE_O_STORE=1",))
FLASHCORE_HOPPER_DYNWO = derived(FLASHCORE_HOPPER_DYN, "flashcore_hopper_dynwo", ("WIDE_O_STORE=1",))

# Part 2, version 19 (kernels/NOTES.md): version 18 (_wo) with Q and the first K/V stages issued by
# thread 0 right after the barriers' init (EARLY_LOADS=1), not by the producer after __syncthreads
# and setmaxnreg. BLOCK_CLOCKS at 8478ff8: 2,686 clocks from a block's first mark to its Q at
# D = 128 (2,005 at D = 64), 5 % of the SMs' time at 4,16,2048.
# Measured at bc57c76 on the H200 in turns with version 6 (results/logs/ab-bc57c76-*): 1.043x at
# 4,16,2048,128, 1.008 at 4,16,2048,64, 1.017 at 2,16,8192,128, 1.040 at 16,16,1024,64, 1.053
# causal, 1.01-1.03 at 1,8,512-1024,64; beside SDPA (results/logs/bench-bc57c76-woel-h200.md):
# 0.98x cuDNN at 4,16,2048,128, 1.01 at 8192, 1.03 causal, 0.92 at 4,16,2048,64; its 28 GPU tests
# passed. forward() launches it where version 6 was launched (HOPPER_WHEN); at 16,16,1024,64 it
# is even with version 9 (0.995x), which stays there.
FLASHCORE_HOPPER_WOEL = derived(FLASHCORE_HOPPER_WO, "flashcore_hopper_woel", ("EARLY_LOADS=1",),
                                product_when=HOPPER_WHEN)

# Part 2, version 20 (kernels/NOTES.md): version 6 with O staged in the shared memory of each
# warpgroup's own Q rows and stored whole rows at a time (STAGED_O_STORE=1: 512 contiguous bytes
# per warp-wide store, where version 18 writes 8 rows x 64 bytes and version 6 8 rows x 16).
FLASHCORE_HOPPER_WOS = derived(FLASHCORE_HOPPER_OVPP, "flashcore_hopper_wos", ("STAGED_O_STORE=1",))

# Part 2, version 21 (kernels/NOTES.md): version 9 with O's 16-byte stores (_dynwo), the boundary
# between two work items run as one more key-loop iteration (ITEM_OVERLAP=1): the next item's
# S(0) = Q'.K'(0)^T and softmax(0) run beside this item's last P.V, and its O is stored after.
# BLOCK_CLOCKS (kernels/NOTES.md): each block spends 5-10 % of the SMs' time on its prologue and
# 2-5 % waiting for its first Q, outside the key loop, where cuDNN's persistent kernel has a GEMM
# in flight. The next Q needs a buffer of its own: at D = 128 two Q tiles and three K/V stages
# would take 263 KB, so two stages (197,632 bytes); at D = 64 three stages (132,096).
# Measured at f0f41df and b6ef2dc on the H200 in turns (results/logs/ab-f0f41df-*, ab-b6ef2dc-*):
# at D = 64 1.043 and 1.062x version 19 at 4,16,2048,64 and 16,16,1024,64, 1.034 and 1.061x version
# 9 (its Q wait and prologue, 11-19 % of the SMs' time there, gone: BLOCK_CLOCKS); at D = 128 0.73-
# 0.78x (two K/V stages leave the overlap no load in flight), and slower at the mission shapes
# (12.4-12.5 us against 10.9 at 1,8,512,64). forward() launches it at D = 64 where it was measured
# faster: the large non-causal problems with up to 2048 keys (IO_WHEN); its 28 GPU tests passed.
# the share of the item-boundary entries (version 21 at D = 64, version 22 at D = 128: IOW_WHEN)
ITEM_OVERLAP_SHARE = "causal == 0 and Sk <= 2048 and B * H * Sq * Sk >= 64 * 1024 * 1024"
IO_WHEN = "D == 64 and " + ITEM_OVERLAP_SHARE
ITEM_OVERLAP_TILES = {64: dict(m_frags=1, nwarps=8, block_n=128, kv_stages=3),
                      128: dict(m_frags=1, nwarps=8, block_n=128, kv_stages=2)}
FLASHCORE_HOPPER_IO = derived(
    FLASHCORE_HOPPER_DYNWO, "flashcore_hopper_io", ("ITEM_OVERLAP=1",),
    tiles=ITEM_OVERLAP_TILES, small_tiles=ITEM_OVERLAP_TILES,
    # two Q tiles (the modes without the overlapped schedule use one and leave the other idle)
    smem="1024 + 2 * block_m * D * 2 + kv_stages * 2 * block_n * D * 2",
    product_when=IO_WHEN,
)

# Part 2, version 22 (kernels/NOTES.md): version 21 with one Q buffer, so that D = 128 keeps three
# K/V stages (version 21 at D = 128 on two stages, 344.7 against version 19's 255.4 us at
# 4,16,2048,128, f0f41df: the overlap needs the third stage). Each warpgroup's 64 Q rows are
# reloaded on a barrier of their own (ITEM_OVERLAP=2) once that warpgroup's last Q.K^T of the item
# retired, about one key tile before its boundary needs them; the host's Q map has 64-row boxes.
# Its key loop found and fixed at b45363a, 0a17663 and cff7b6b (kernels/NOTES.md), and the boundary's
# copies made at the boundary only at 0110267: measured in turns with version 19 at 4,16,2048,128
# 1.011x (cff7b6b), 1.041x (0110267) and 1.015x (422b6d4); 0.988-0.992x at 2,16,8192,128 and
# 0.93x at the 1,8,*,64 mission shapes (results/logs/ab-cff7b6b-*, ab-0110267-*, ab-422b6d4-*).
# forward() launches it at D = 128 where it measured faster: the large non-causal problems of up
# to 2048 keys (IOW_WHEN, IO_WHEN's bounds).
IOW_WHEN = "D == 128 and " + ITEM_OVERLAP_SHARE
FLASHCORE_HOPPER_IOW = derived(
    FLASHCORE_HOPPER_DYNWO, "flashcore_hopper_iow", ("ITEM_OVERLAP=2", "Q_BOX_ROWS=q_box_rows"),
    q_box_rows="64", product_when=IOW_WHEN,
)

# (Before those fixes, at b6ef2dc in turns (results/logs/ab-b6ef2dc-*): 0.927 and 0.907x version 19
# at 4,16,2048,128 and 2,16,8192,128, 0.95x version 21 at D = 64; BLOCK_CLOCKS: its key loop 3,282
# clocks a tile at 4,16,2048,128 against version 19's 2,615.)
# flashcore_hopper_iowp: version 22 with the next item's Q brought into L2 by the producer as it
# takes the item (Q_PREFETCH=1), an item before the reload, in case the reload's wait was DRAM's.
# Measured at 67330f6 (results/logs/ab-67330f6-*): the same, 0.915 and 0.901x version 19, 3,303
# clocks a tile: the wait is not DRAM's. forward() does not launch it.
FLASHCORE_HOPPER_IOWP = derived(FLASHCORE_HOPPER_IOW, "flashcore_hopper_iowp", ("Q_PREFETCH=1",))

# Part 2, version 23 (kernels/NOTES.md): version 19 with the epilogue's 1/l by the approximate
# reciprocal (FAST_INV_EPILOGUE=1). BLOCK_CLOCKS' seventh mark at f0f41df: version 19's finish_row
# (l's quad sums, 1/l, logf, the LSE store) takes ~930 clocks a block at D = 64 and ~1,070 at
# D = 128, 1.9-4.0 % of the SMs' time; version 21's, with MUFU.RCP, 468-620 at D = 64.
# Measured at b45363a in turns with version 19 (results/logs/ab-b45363a-woelf-woel-h200.log):
# 1.010-1.014x at the D = 64 shapes (where forward() launches version 21), 0.996-1.001x at D = 128.
# forward() does not launch it.
FLASHCORE_HOPPER_WOELF = derived(FLASHCORE_HOPPER_WOEL, "flashcore_hopper_woelf", ("FAST_INV_EPILOGUE=1",))

# Part 2, version 24 (kernels/NOTES.md): version 21 with three consumer warpgroups (192 query rows)
# at D = 64, FA3's tile there: the turns go round robin, so one warpgroup's softmax runs beside
# two others' GEMMs, where at D = 64 a tile's GEMMs are half as long as at D = 128 and a turn of
# two warpgroups hides half as much of the other softmax (Nsight Compute at 0ab3415: D = 64
# idles the tensor pipe most). setmaxnreg gives the consumers 160 registers (24 the producer).
# D = 128 keeps version 21's two warpgroups (three at 160 registers cannot hold O's 64). At 160
# registers the loop spilled 272 bytes until P was packed at the end of each iteration
# (PACK_AT_END=1: the back edge carries P's 32 registers, not S's 64); 0 in every build since.
# Measured at 422b6d4 on the H200 (results/logs/ws-422b6d4-io3-h200.log, ab-422b6d4-io3-io-h200.log):
# its 28 GPU tests passed; in turns with version 21 0.985x at 4,16,2048,64 and 0.987x at
# 16,16,1024,64 (192-row items: 12.5 % of the last one idle), 0.988x at D = 128 (the same two
# warpgroups, PACK_AT_END's cost). Without the item boundary (version 18's _dynwo with three
# warpgroups, 32 bytes spilled, 0110267) it was 1.005x and 0.968x version 21: the third
# warpgroup buys what version 21's boundary buys, not more. forward() does not launch it.
IO3_TILES = {64: dict(m_frags=1, nwarps=12, block_n=128, kv_stages=3),
             128: dict(m_frags=1, nwarps=8, block_n=128, kv_stages=2)}
FLASHCORE_HOPPER_IO3 = replace(
    FLASHCORE_HOPPER_IO, name="flashcore_hopper_io3", tiles=IO3_TILES, small_tiles=IO3_TILES, product_when="",
    tile_defines=FLASHCORE_HOPPER_IO.tile_defines + ("PACK_AT_END=1",),
    asserts=tuple(a for a in FLASHCORE_HOPPER_IO.asserts if a not in PINGPONG_ASSERTS)
    + (("nwarps == 8 or nwarps == 12", "the turns take two or three consumer warpgroups"),),
)

# Part 2, version 25 (kernels/NOTES.md): version 22 with version 24's PACK_AT_END=1 (P packed at the
# end of each key-loop iteration), where PHASE_CLOCKS at 206fe5f put version 22's "rescale O, copy
# S" phase at 464 / 430 clocks against version 19's 294 / 352.
FLASHCORE_HOPPER_IOWK = derived(FLASHCORE_HOPPER_IOW, "flashcore_hopper_iowk", ("PACK_AT_END=1",))

# Part 2, version 26 (kernels/NOTES.md): versions 21 and 22 with their key loop's straight path
# kept short: the bounded mbarrier polls rolled (ROLLED_POLLS=1; unrolled, each wait is 32
# try_wait/branch pairs). Nsight Compute at 6c13dfc (results/logs/ncu-src-6c13dfc-*): version 21's
# loop has 865 instructions to cuDNN's 535, and its warps stall for instructions (no_instruction)
# at the loop head and at the targets of the jumps over the boundary and the unrolled polls.
# (Measured at b014b6d with the boundary also under __builtin_expect, COLD_BOUNDARY=1, since
# taken out: it left the SASS as it was.)
FLASHCORE_HOPPER_IOR = derived(FLASHCORE_HOPPER_IO, "flashcore_hopper_ior", ("ROLLED_POLLS=1",))
FLASHCORE_HOPPER_IOWR = derived(FLASHCORE_HOPPER_IOW, "flashcore_hopper_iowr", ("ROLLED_POLLS=1",))

# Part 2, version 27 (kernels/NOTES.md): version 21 with version 14's turns, the softmax in the
# turn and the GEMMs issued outside it (SOFTMAX_TURNS=1; =2: the row max before the turn), the
# order of cuDNN's D = 64 loop. Nsight Compute at 6c13dfc (results/logs/ncu-src-6c13dfc-*): at
# 4,16,2048,64 version 21's softmax, pack and rescale take ~12 % more warp samples than cuDNN's
# turn and row max for the same instructions; its exp2s wait on one another (MUFU `wait` 2,198
# samples against cuDNN's 70), where the two warpgroups' softmaxes share the SMSPs.
FLASHCORE_HOPPER_IOST = derived(FLASHCORE_HOPPER_IO, "flashcore_hopper_iost", ("SOFTMAX_TURNS=1",))
FLASHCORE_HOPPER_IOST2 = derived(FLASHCORE_HOPPER_IO, "flashcore_hopper_iost2", ("SOFTMAX_TURNS=2",))

# Part 2, version 30 (kernels/NOTES.md): version 21 with the wait for P(j).V(j) between the two
# row halves of softmax(j+1) (MID_WAIT=1), after row half 0's exp2s, where version 21 waits after
# both: row half 1's exp2s issue below the wait (hopper/ptx.cuh after_wait) and O's rescale after
# it. Measured at 0595a08 on an H100 in turns with version 21 (results/logs/ab-0595a08-iom-io-h100.log,
# ab-0595a08-iom-iowm-12rounds-h100.log): 1.011 and 1.032x at 4,16,2048,64, 1.035 and 1.020x at
# 16,16,1024,64. On version 22 (D = 128, `_iowm`) it measured even (0.989, 1.006x at
# 4,16,2048,128; 0.966x at 2,16,8192,128), and version 8's stepped descriptors on versions 21 and
# 22 (`_iod`, `_iowd`) 0.950-1.015x: those three entries were taken out after (kernels/NOTES.md).
FLASHCORE_HOPPER_IOM = derived(FLASHCORE_HOPPER_IO, "flashcore_hopper_iom", ("MID_WAIT=1",))

KERNELS = {k.name: k for k in (FLASHCORE_FUSED, FLASHCORE_HOPPER, FLASHCORE_HOPPER_WS, FLASHCORE_HOPPER_PP,
                               FLASHCORE_HOPPER_OV, FLASHCORE_HOPPER_PS, FLASHCORE_HOPPER_OVPP,
                               FLASHCORE_HOPPER_ILP, FLASHCORE_HOPPER_DS, FLASHCORE_HOPPER_DYN,
                               FLASHCORE_HOPPER_RT, FLASHCORE_HOPPER_KP, FLASHCORE_HOPPER_ST,
                               FLASHCORE_HOPPER_OVST, FLASHCORE_HOPPER_OVST2, FLASHCORE_HOPPER_OVSTI,
                               FLASHCORE_HOPPER_KV, FLASHCORE_HOPPER_KV144, FLASHCORE_HOPPER_WO,
                               FLASHCORE_HOPPER_DYNWO, FLASHCORE_HOPPER_WOEL,
                               FLASHCORE_HOPPER_WOS, FLASHCORE_HOPPER_IO, FLASHCORE_HOPPER_IOW,
                               FLASHCORE_HOPPER_IOWP, FLASHCORE_HOPPER_WOELF,
                               FLASHCORE_HOPPER_IO3, FLASHCORE_HOPPER_IOWK,
                               FLASHCORE_HOPPER_IOR, FLASHCORE_HOPPER_IOWR,
                               FLASHCORE_HOPPER_IOST, FLASHCORE_HOPPER_IOST2,
                               FLASHCORE_HOPPER_IOM)}
DEFAULT = FLASHCORE_FUSED
# The registry kernel in use, for this process and the workers it starts (they inherit the
# environment): `--kernel NAME` sets it (cli.py), as $FLASHCORE_KERNEL sets the source file.
ENV_KERNEL = "FLASHCORE_REGISTRY_KERNEL"


def product_kernel(device_arch: str, B: int, H: int, Sq: int, Sk: int, D: int, causal: bool) -> KernelSpec:
    """The entry forward() launches on a device of this arch for this problem: the first other
    entry that runs there, takes D and whose product_when holds, else DEFAULT (the conditions
    are disjoint, tests/test_registry.py, so "first" never decides)."""
    names = dict(B=B, H=H, Sq=Sq, Sk=Sk, D=D, causal=int(bool(causal)))
    for k in KERNELS.values():
        if (k is not DEFAULT and k.product_when and D in k.head_dims and k.arch_on(device_arch)
                and evaluate(k.product_when, names)):
            return k
    return DEFAULT


def current() -> KernelSpec:
    import os
    return get(os.environ.get(ENV_KERNEL) or DEFAULT.name)


def get(name: str) -> KernelSpec:
    try:
        return KERNELS[name]
    except KeyError:
        raise UsageError(f"unknown kernel {name!r}; registered: {', '.join(KERNELS)}") from None
