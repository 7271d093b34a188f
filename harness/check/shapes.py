"""Problem shapes as data: the named shapes of docs/DESIGN.md and a parser for B,H,S,D."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import UsageError

from kernels.registry import DEFAULT as _KERNEL

SUPPORTED_HEAD_DIMS = _KERNEL.head_dims     # the registry's entry says which head dims the kernel has


@dataclass(frozen=True)
class Shape:
    B: int
    H: int
    Sq: int
    Sk: int
    D: int

    def __post_init__(self):
        for name in ("B", "H", "Sq", "Sk", "D"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UsageError(f"shape: {name} must be a positive integer, got {v!r}")
        if self.D not in SUPPORTED_HEAD_DIMS:
            raise UsageError(f"unsupported head dim {self.D}; the kernel supports {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")

    @property
    def label(self) -> str:
        s = f"{self.B},{self.H},{self.Sq},{self.D}"
        return s if self.Sq == self.Sk else f"{self.B},{self.H},{self.Sq}x{self.Sk},{self.D}"

    def flops(self, causal: bool = False) -> float:
        """4*B*H*Sq*Sk*D (two products, 2 FLOP per multiply-add); half of it for causal."""
        f = 4.0 * self.B * self.H * self.Sq * self.Sk * self.D
        return f / 2 if causal else f


NAMED = {
    "mission": (1, 8, 512, 64),
    "short": (1, 8, 256, 64),
    "long": (1, 8, 1024, 64),
}


def parse_shape(text: str, sk: int | None = None, head_dim: int | None = None) -> Shape:
    """'mission' | 'short' | 'long' | 'B,H,S,D'; --sk overrides Sk, --head-dim overrides D."""
    text = text.strip()
    if text in NAMED:
        B, H, S, D = NAMED[text]
    else:
        parts = text.split(",")
        if len(parts) != 4:
            raise UsageError(f"shape {text!r}: expected one of {', '.join(NAMED)} or B,H,S,D")
        try:
            B, H, S, D = (int(p) for p in parts)
        except ValueError:
            raise UsageError(f"shape {text!r}: B,H,S,D must be integers") from None
    if head_dim is not None:
        D = head_dim
    return Shape(B, H, S, S if sk is None else sk, D)
