"""A variant = (mode, head dim, causal, seeded bugs, arch) plus the tile constants.

Like cupy's sgemm example, every derived value (rows per block, shared memory, the -D
list) is computed and asserted here, in Python, before anything is compiled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from debug_modes import bugs_of, get_mode
from kernels import registry
from kernels.registry import DEFAULT as KERNEL
from harness.errors import UsageError

# The default kernel's archs and tile tables (kernels/registry.py); a variant of another entry
# reads its own through Variant.entry.
ARCHS = KERNEL.archs
TILES = KERNEL.tiles
SMALL_TILES = KERNEL.small_tiles


def tiles_for(shape, kernel: str | None = None) -> dict:
    """The tile table's choice for a problem shape (all modes of one shape share it), of the
    kernel in use unless named."""
    entry = registry.get(kernel) if kernel else registry.current()
    return entry.tiles_for(shape.B, shape.H, shape.Sq, shape.D)


@dataclass(frozen=True)
class Variant:
    mode: str = "full"
    head_dim: int = 64
    causal: bool = False
    bugs: tuple = field(default_factory=tuple)
    arch: str | None = None      # None: sm_90 where the entry builds for it, else its first arch (sm_90a)
    nwarps: int | None = None    # None: from the entry's tile table
    block_n: int | None = None
    m_frags: int | None = None   # 16-row fragments per warp (2: each K/V fragment feeds two mma)
    kv_stages: int | None = None # K/V shared-memory buffers (2: double-buffered)
    kernel: str = field(default_factory=lambda: registry.current().name)   # the registry entry in use

    def __post_init__(self):
        m = get_mode(self.mode)
        entry = self.entry
        if self.arch is None:
            object.__setattr__(self, "arch", "sm_90" if "sm_90" in entry.archs else next(iter(entry.archs)))
        if self.head_dim not in entry.head_dims:
            raise UsageError(f"unsupported head dim {self.head_dim}; {entry.name} supports "
                             f"{', '.join(map(str, entry.head_dims))}")
        for k, v in entry.tiles[self.head_dim].items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
        for k, v in entry.mode_tiles.get(self.mode, {}).items():
            object.__setattr__(self, k, v)
        if self.arch not in entry.archs:
            raise UsageError(f"unknown arch {self.arch!r} for {entry.name}; valid: {', '.join(entry.archs)}")
        known = bugs_of(entry)
        for b in self.bugs:
            if b not in known:
                raise UsageError(f"{entry.name} has no seeded bug {b!r}"
                                 + (f"; valid bugs: {', '.join(known)}" if known else " (it has no seeded bugs)"))
        if self.causal and not m.allows_causal:
            raise UsageError(f"mode {self.mode} has no causal form (P = 1/Sk everywhere)")
        broken = entry.violations(self.tiles, self.head_dim)
        if broken:
            raise UsageError(f"{entry.name} tiles {self.tiles} at D={self.head_dim}: {broken[0]}")
        if self.smem_bytes > entry.archs[self.arch]:
            raise UsageError(f"variant needs {self.smem_bytes} B of shared memory, {self.arch} allows {entry.archs[self.arch]}")

    @property
    def entry(self) -> registry.KernelSpec:
        return registry.get(self.kernel)

    @property
    def tiles(self) -> dict:
        return {k: getattr(self, k) for k in registry.TILE_KEYS}

    @property
    def block_m(self) -> int:
        return self.entry.derived(self.tiles, self.head_dim)["block_m"]

    @property
    def q_box_rows(self) -> int:
        """The rows of one TMA box of Q (the entry's q_box_rows; block_m unless it says otherwise)."""
        return self.entry.derived(self.tiles, self.head_dim)["q_box_rows"]

    @property
    def warp_rows(self) -> int:
        return 16 * self.m_frags

    @property
    def threads(self) -> int:
        return self.entry.derived(self.tiles, self.head_dim)["threads"]

    @property
    def smem_bytes(self) -> int:
        """The entry's formula (kernels/registry.py)."""
        return self.entry.derived(self.tiles, self.head_dim)["smem_bytes"]

    @property
    def defines(self) -> list:
        d = [f"HEAD_DIM={self.head_dim}", f"IS_CAUSAL={int(self.causal)}"]
        d += self.entry.defines(self.tiles, self.head_dim)
        d += get_mode(self.mode).defines
        d += [f"BUG_{b}" for b in sorted(self.bugs)]
        return d

    @property
    def persistent(self) -> bool:
        """Whether this variant's kernel loops over work items (the entry's persistent flag, in
        the kernel's own rule: non-causal, a mode with a K/V pipeline, i.e. not softmax_only)."""
        return self.entry.persistent and not self.causal and self.mode != "softmax_only"

    def grid(self, shape, n_rows: int | None = None, sms: int | None = None) -> tuple:
        """(query tiles of the window, H, B); the window defaults to every row. A persistent
        variant: (blocks per batch, B), at most one block per SM of the device (sms, else the
        current device's count; rounded up per batch where the entry takes items from a counter)
        and no more than there are work items."""
        rows = shape.Sq if n_rows is None else n_rows
        tiles = (rows + self.block_m - 1) // self.block_m
        if not self.persistent:
            return (tiles, shape.H, shape.B)
        if sms is None:
            from harness.toolchain.device import require_gpu
            sms = require_gpu()["sms"]
        per_batch = -(-sms // shape.B) if self.entry.tile_counter else sms // shape.B
        return (max(1, min(per_batch, tiles * shape.H)), shape.B, 1)

    def padded_keys(self, Sk: int) -> int:
        """Skp: the key width of the debug matrices, every column of every key tile."""
        return -(-Sk // self.block_n) * self.block_n

    @property
    def label(self) -> str:
        s = f"{self.mode} D={self.head_dim}{' causal' if self.causal else ''} {self.arch}"
        if self.kernel != KERNEL.name:
            s = f"{self.kernel} " + s
        if self.tiles != {**self.entry.tiles[self.head_dim], **self.entry.mode_tiles.get(self.mode, {})}:
            s += f" [{self.block_m}x{self.block_n}x{self.kv_stages}]"   # not the large-tile table's: say which
        return s + "".join(f" +BUG_{b}" for b in sorted(self.bugs))
