"""A variant = (mode, head dim, causal, seeded bugs, arch) plus the tile constants.

Like cupy's sgemm example, every derived value (rows per block, shared memory, the -D
list) is computed and asserted here, in Python, before anything is compiled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from debug_modes import BUGS, get_mode
from kernels.registry import DEFAULT as KERNEL
from harness.errors import UsageError
from harness.check.shapes import SUPPORTED_HEAD_DIMS

# Shared memory a block may use, per arch (bytes, the opt-in maximum), and the tile tables:
# the kernel registry's (kernels/registry.py).
ARCHS = KERNEL.archs
SMEM_PAD_HALVES = KERNEL.smem_pad_halves
TILES = KERNEL.tiles
SMALL_TILES = KERNEL.small_tiles


def tiles_for(shape) -> dict:
    """The tile table's choice for a problem shape (all modes of one shape share it)."""
    return KERNEL.tiles_for(shape.B, shape.H, shape.Sq, shape.D)


@dataclass(frozen=True)
class Variant:
    mode: str = "full"
    head_dim: int = 64
    causal: bool = False
    bugs: tuple = field(default_factory=tuple)
    arch: str = "sm_90"
    nwarps: int | None = None    # None: from TILES
    block_n: int | None = None
    m_frags: int | None = None   # 16-row fragments per warp (2: each K/V fragment feeds two mma)
    kv_stages: int | None = None # K/V shared-memory buffers (2: double-buffered)

    def __post_init__(self):
        m = get_mode(self.mode)
        for k, v in TILES.get(self.head_dim, TILES[64]).items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
        for k, v in (m.tiles or {}).items():
            object.__setattr__(self, k, v)
        if self.head_dim not in SUPPORTED_HEAD_DIMS:
            raise UsageError(f"unsupported head dim {self.head_dim}; the kernel supports {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
        if self.arch not in ARCHS:
            raise UsageError(f"unknown arch {self.arch!r}; valid: {', '.join(ARCHS)}")
        for b in self.bugs:
            if b not in BUGS:
                raise UsageError(f"unknown bug {b!r}; valid bugs: {', '.join(BUGS)}")
        if self.causal and not m.allows_causal:
            raise UsageError(f"mode {self.mode} has no causal form (P = 1/Sk everywhere)")
        if self.block_n % 16 or self.block_n < 16:
            raise UsageError(f"block_n must be a positive multiple of 16, got {self.block_n}")
        if self.kv_stages not in (1, 2):
            raise UsageError(f"kv_stages must be 1 or 2, got {self.kv_stages}")
        if self.m_frags not in (1, 2):
            raise UsageError(f"m_frags must be 1 or 2, got {self.m_frags}")
        if not 1 <= self.nwarps <= 16:
            raise UsageError(f"nwarps must be 1..16, got {self.nwarps}")
        rows_per_pass = self.threads // (self.head_dim // 8)   # load_tile: one 16-byte chunk per thread per pass
        if self.threads % (self.head_dim // 8) or self.block_n % rows_per_pass or self.block_m % rows_per_pass:
            raise UsageError(f"tiles of {self.block_n} keys and {self.block_m} rows are not a multiple of the "
                             f"{rows_per_pass} rows {self.threads} threads copy per pass")
        if self.smem_bytes > ARCHS[self.arch]:
            raise UsageError(f"variant needs {self.smem_bytes} B of shared memory, {self.arch} allows {ARCHS[self.arch]}")

    @property
    def block_m(self) -> int:
        return 16 * self.m_frags * self.nwarps

    @property
    def warp_rows(self) -> int:
        return 16 * self.m_frags

    @property
    def threads(self) -> int:
        return 32 * self.nwarps

    @property
    def smem_bytes(self) -> int:
        """Q tile + kv_stages K and V tiles, fp16, rows padded by SMEM_PAD halves."""
        return (self.block_m + 2 * self.kv_stages * self.block_n) * (self.head_dim + SMEM_PAD_HALVES) * 2

    @property
    def defines(self) -> list:
        d = [f"HEAD_DIM={self.head_dim}", f"IS_CAUSAL={int(self.causal)}",
             f"NWARPS={self.nwarps}", f"BLOCK_N={self.block_n}", f"M_FRAGS={self.m_frags}",
             f"KV_STAGES={self.kv_stages}"]
        d += get_mode(self.mode).defines
        d += [f"BUG_{b}" for b in sorted(self.bugs)]
        return d

    def grid(self, shape, n_rows: int | None = None) -> tuple:
        """(query tiles of the window, H, B); the window defaults to every row."""
        rows = shape.Sq if n_rows is None else n_rows
        return ((rows + self.block_m - 1) // self.block_m, shape.H, shape.B)

    def padded_keys(self, Sk: int) -> int:
        """Skp: the key width of the debug matrices, every column of every key tile."""
        return -(-Sk // self.block_n) * self.block_n

    @property
    def label(self) -> str:
        s = f"{self.mode} D={self.head_dim}{' causal' if self.causal else ''} {self.arch}"
        if (self.m_frags, self.nwarps, self.block_n, self.kv_stages) != tuple(
                {**TILES[self.head_dim], **(get_mode(self.mode).tiles or {})}.get(k) for k in
                ("m_frags", "nwarps", "block_n", "kv_stages")):
            s += f" [{self.block_m}x{self.block_n}x{self.kv_stages}]"   # not the large-tile table's: say which
        return s + "".join(f" +BUG_{b}" for b in sorted(self.bugs))
