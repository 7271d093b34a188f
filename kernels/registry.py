"""The kernels the harness knows, as data: source file, entry point, archs, tile tables.

A kernel brought by a user follows the contract in README.md ("Kernel contract") and gets an
entry here; the harness derives everything shape-dependent (variants, coverage shapes) from
its tile table, so a kernel with other tiles (e.g. an sm_90a one) is checked at its own edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

KERNELS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class KernelSpec:
    name: str
    file: str                     # relative to kernels/
    entry: str                    # the extern "C" __global__ function
    archs: dict                   # arch -> shared memory a block may opt into (bytes)
    tiles: dict                   # head dim -> tile constants (the -D values) for large shapes
    small_tiles: dict             # head dim -> tile constants for shapes with few query blocks
    small_below_blocks: int       # "few": fewer than this many 128-row blocks over B*H
    smem_pad_halves: int = 8      # the kernel's SMEM_PAD
    head_dims: tuple = (64, 128)
    # The signature, the one place it is spelled: pointer parameters in order (null where a mode
    # does not use one), then the scalars, each with its C type. The harness path (run/gpu.py)
    # and the product path (api.py) both build their arguments from these.
    pointer_params: tuple = ("Q", "K", "V", "O", "LSE", "S_in", "P_in", "S_out", "P_out", "M_out", "L_out")
    scalar_params: tuple = (("H", "int32"), ("Sq", "int32"), ("Sk", "int32"), ("scale", "float32"),
                            ("row0", "int32"), ("n_rows", "int32"))
    notes: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return KERNELS_DIR / self.file

    def tiles_for(self, B: int, H: int, Sq: int, D: int) -> dict:
        """The tile table's choice for a problem shape (all modes of one shape share it)."""
        rows_blocks = B * H * -(-Sq // 128)
        return dict((self.small_tiles if rows_blocks < self.small_below_blocks else self.tiles)[D])


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
)

KERNELS = {k.name: k for k in (FLASHCORE_FUSED,)}
DEFAULT = FLASHCORE_FUSED
