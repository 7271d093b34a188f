"""One entry per debug mode: its -D flag, the buffers the kernel reads and writes, the
stage it isolates and what it is judged by. docs/DESIGN.md's table, as data.

Buffer shapes are symbolic over B, H, Sq, Sk, D and resolved by Buffer.shape_for().
The [rows, keys] debug matrices ("BHWSkp") hold a window of query rows (W of them) at the
tile-padded key width Skp = ceil(Sk / BLOCK_N) * BLOCK_N: the softmax consumes the padded
columns of the tail tile, so their masking is part of what QK is checked for (docs/DESIGN.md,
"Stage boundaries"). The kernel's parameter list is KERNEL_PARAMS (then H, Sq, Sk, scale,
row0, n_rows); a buffer a mode does not use is passed as a null pointer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.errors import UsageError
from kernels.registry import DEFAULT as KERNEL

# The pointer parameters of flashcore_fwd, in order (then kernel_scalars): the registry's entry.
KERNEL_PARAMS = KERNEL.pointer_params


def kernel_scalars(H: int, Sq: int, Sk: int, scale: float, row0: int, n_rows: int) -> tuple:
    """The arguments after the pointers, in the kernel's order and C types (the registry's
    scalar_params): the one definition the harness path (run/gpu.py) and the product path
    (api.py) both launch with."""
    values = dict(H=H, Sq=Sq, Sk=Sk, scale=scale, row0=row0, n_rows=n_rows)
    return tuple(np.dtype(t).type(values[name]) for name, t in KERNEL.scalar_params)


@dataclass(frozen=True)
class Buffer:
    param: str       # kernel parameter name
    dims: str        # "BHSqD" | "BHSkD" | "BHSq" | "BHWSkp" (window rows x padded keys)
    dtype: str       # "float16" | "float32"
    output: str = "" # name the metrics use for an output buffer (O, LSE, S, m, l, P)

    def shape_for(self, shape, rows: int | None = None, sk_pad: int | None = None) -> tuple:
        """rows: the window's query rows (default Sq); sk_pad: the padded key width (default Sk)."""
        return {
            "BHSqD": (shape.B, shape.H, shape.Sq, shape.D),
            "BHSkD": (shape.B, shape.H, shape.Sk, shape.D),
            "BHSq": (shape.B, shape.H, shape.Sq),
            "BHWSkp": (shape.B, shape.H, shape.Sq if rows is None else rows, shape.Sk if sk_pad is None else sk_pad),
        }[self.dims]

    @property
    def is_matrix(self) -> bool:
        """A [rows, keys] debug matrix: windowed and padded."""
        return self.dims == "BHWSkp"

    @property
    def np_dtype(self):
        return np.dtype(self.dtype)


Q = Buffer("Q", "BHSqD", "float16")
K = Buffer("K", "BHSkD", "float16")
V = Buffer("V", "BHSkD", "float16")


@dataclass(frozen=True)
class Mode:
    name: str
    flag: str | None          # -D flag, None for full
    stage: str                # the stage it isolates (QK, softmax, PV, ...)
    description: str
    reads: tuple              # Buffers the kernel reads
    writes: tuple             # Buffers the kernel writes (each judged against its reference)
    judged_by: str            # the reference, in words
    reference: str = "attention"   # the reference builder (harness/check/stages.REFERENCES) its outputs are judged by
    injects: str | None = None     # the exact stage input it reads instead of computing (S_in, P_in)
    row_spread: bool = False       # every output row must be equal (uniform_p): the spread is judged too
    allows_causal: bool = True
    tensor_cores: bool = True   # its SASS must hold HMMA (softmax_only has no matrix product)

    @property
    def windowed(self) -> bool:
        """Reads or writes a [rows, keys] matrix: checked on windows of query rows."""
        return any(b.is_matrix for b in self.reads + self.writes)

    @property
    def defines(self) -> list:
        return [self.flag] if self.flag else []


MODES = {
    m.name: m
    for m in (
        Mode("qk_only", "DEBUG_QK_ONLY", "QK",
             "S = scale*Q*K^T with tail/causal masking, fp32 at the tile-padded width (padding = -inf)",
             (Q, K), (Buffer("S_out", "BHWSkp", "float32", "S"),),
             "float64 scale*Q*K^T, masked and padded columns = -inf", reference="scores"),
        Mode("softmax_only", "DEBUG_SOFTMAX_ONLY", "softmax",
             "online softmax on injected exact S: row max m, row sum l, normalised P",
             (Buffer("S_in", "BHWSkp", "float32"),),
             (Buffer("M_out", "BHSq", "float32", "m"), Buffer("L_out", "BHSq", "float32", "l"),
              Buffer("P_out", "BHWSkp", "float32", "P")),
             "float64 softmax of the injected S; P = 0 in the padded columns", reference="softmax_of_injected_s",
             injects="S_in", tensor_cores=False),
        Mode("pv_only", "DEBUG_PV_ONLY", "PV",
             "O = P.V on injected exact P (fp16 on the tensor cores), alpha = 1, l = 1",
             (Buffer("P_in", "BHWSkp", "float32"), V), (Buffer("O", "BHSqD", "float16", "O"),),
             "float64 P.V of the injected P", reference="pv_of_injected_p", injects="P_in"),
        Mode("uniform_p", "UNIFORM_P", "PV (smoking gun)",
             "P = 1/Sk made in the kernel, no QK/softmax/rescale: every row = column mean of V",
             (V,), (Buffer("O", "BHSqD", "float16", "O"),),
             "float64 column mean of V; row spread must be within the floor", reference="column_mean",
             row_spread=True, allows_causal=False),
        Mode("full", None, "all (glue)",
             "the whole fused forward pass: O and the log-sum-exp",
             (Q, K, V), (Buffer("O", "BHSqD", "float16", "O"), Buffer("LSE", "BHSq", "float32", "LSE")),
             "float64 attention"),
        Mode("fp32_p", "FP32_P", "all, fp32 P",
             "as full with P kept at fp32 (hi+lo fp16 split) and O written as fp32",
             (Q, K, V), (Buffer("O", "BHSqD", "float32", "O"), Buffer("LSE", "BHSq", "float32", "LSE")),
             "float64 attention (floor without fp16 P or fp16 output rounding)", reference="attention_fp32_p"),
             # the tiles its hi+lo products need: each kernel's mode_tiles (kernels/registry.py)
    )
}

# docs/DESIGN.md: the isolated stages in data-flow order, then the whole pipeline.
DATAFLOW_ORDER = ("qk_only", "softmax_only", "pv_only", "uniform_p", "full", "fp32_p")
ISOLATED = ("qk_only", "softmax_only", "pv_only", "uniform_p")


def modes_of(debug: str) -> list:
    """--debug for FlashCore's modes: all (data-flow order), or a comma list of mode names."""
    if debug == "all":
        return list(DATAFLOW_ORDER)
    return [get_mode(m.strip()).name for m in debug.split(",")]


def get_mode(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise UsageError(f"unknown mode {name!r}; valid modes: {', '.join(DATAFLOW_ORDER)}") from None
