"""Seeded bugs of the sm_90a kernel (kernels/flashcore_hopper.cu): -DBUG_<NAME> switches, each
re-creating one bug class of a TMA + mbarrier + wgmma kernel, as data in the form of
debug_modes/bugs.py (the sm_80 kernel's; no name is shared with it). The comment at each #ifdef
in the kernel says what the bug breaks and why stage bisection (harness/run/diagnose.py:
qk_only -> softmax_only -> pv_only -> uniform_p -> full, the first mode that is not ok) must
place it where `stage` says. For every bug the modes before its stage compile to the clean
kernel's cubin byte for byte (tests/test_hopper_compile.py), so they pass wherever the clean
kernel passes.

Shape facts at the registry's tiles for this kernel (BLOCK_M = BLOCK_N = 128, 2 K/V stages):
`shows_when` follows bugs.py's convention: "" for a bug that shows at the mission shape
(1, 8, 512, 512, 64); otherwise the coverage feature without which it does not show.
"""

from __future__ import annotations

from debug_modes.bugs import Bug

HOPPER_BUGS = {
    b.name: b
    for b in (
        Bug("K_DESC_SBO", "qk",
            "K shared-memory descriptor's stride-byte offset given in halves (512) instead of bytes (1024): "
            "keys 8.. of every tile read from the wrong swizzle atoms, S wrong"),
        Bug("CAUSAL_MASK_ROW", "qk",
            "causal mask-skip test made with the block's last row (the last warpgroup's, q0 + BLOCK_M - 1) "
            "instead of its first: the diagonal key tile is left unmasked unless it is the Sk tail tile",
            shows_when="causal"),
        Bug("EMPTY_COUNT", "qk",
            "HANGS: the K/V stages' empty mbarriers expect one arrival per thread while one lane per warp "
            "arrives, so the first refill deadlocks (waits unbounded in this build: the launch never returns, "
            "HANG, not a trap). Needs more key tiles than K/V stages (Sk > 2*128, as at the mission shape); "
            "every mode with a K/V pipeline hangs, softmax_only has none and passes, so bisection names "
            "qk_only's hang: QK"),
        Bug("V_KSTEP", "pv",
            "V descriptor advanced by 8 keys (1024 B, one swizzle atom) per k16 slice instead of 16 (2048 B): "
            "P's keys 16k.. meet V rows 8k.., O wrong wherever a tile has more than 16 valid keys"),
        Bug("V_DESC_LBO", "pv",
            "V descriptor's leading-byte offset 128 B (as if V were row-major [BLOCK_N][D]) instead of the "
            "64-column panel stride: O columns 64..127 wrong at D = 128 (at D = 64 one atom spans N, LBO unread)",
            shows_when="d128"),
        Bug("V_TAIL_COORD", "pv",
            "tail tile's V box pulled back inside the head (row Sk - BLOCK_N, a 2-D-map habit): the tail's valid "
            "keys multiply the wrong V rows",
            shows_when="sk_tail"),
        Bug("RESCALE_AFTER_PV", "glue",
            "O rescaled by alpha after the P.V wgmma instead of before it: O_j = alpha_j (O_{j-1} + P_j V_j), "
            "the tile's own product rescaled and the first tile's (alpha = 0) lost"),
    )
}
