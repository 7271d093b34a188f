"""A kernel checked as its author wrote it: the launch its spec describes (kernels/spec.py),
judged against float64 references (harness/check/spec_reference.py).

One run (run_spec) of one mode ("full", or one of the kernel's own debug flags) on one shape:
  * inputs drawn from the seed at the kernel's dtype, handed over in its layout;
  * every buffer has guard margins: inputs' margins hold NaN, so a read past an input's end
    shows in the output, and outputs' margins hold a sentinel, so a write outside an output
    is counted, with the buffer and the offset;
  * outputs start as the spec says (0, -inf, ...), or poisoned where they must be written;
  * the launch is waited for with a deadline: past device.HANG_S the verdict is HANG (the worker
    process that ran it is replaced: its context is still busy);
  * launched twice on the same inputs: a kernel without atomics is bitwise deterministic, so
    an output that moves is a race;
  * every declared output judged by the floor rule (harness/check/metrics.py), with the
    localisation folds on the spec's tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.toolchain import user_kernel
from harness.toolchain.device import cupy as _cupy, runtime_arch, wait
from harness.toolchain.user_kernel import UserVariant
from harness.check import localise
from harness.check import metrics as met
from harness.check import spec_reference as sref
from harness.check.inputs import fresh_seed, make_inputs
from harness.check.shapes import Shape
from harness.errors import UsageError
from harness.run.gpu import VERDICTS, KernelFault, RunResult, verdict_status
from kernels import spec as kspec

GUARD = 4096           # elements of margin before and after every buffer
STORAGE = {"float16": np.uint16, "bfloat16": np.uint16, "float32": np.uint32}
POISON = {"float16": 0x7E5A, "bfloat16": 0x7FDA, "float32": 0x7FC0DEAD}       # unwritten (metrics.POISON_BITS)
SENTINEL = {"float16": 0x7E6B, "bfloat16": 0x7FEB, "float32": 0x7FB0BEEF}     # outputs' margins
INPUT_NAN = {"float16": 0x7E00, "bfloat16": 0x7FC0, "float32": 0x7FC00000}    # inputs' margins
STAGE_OF_OUTPUT = {"o": "all", "lse": "all", "m": "softmax", "l": "softmax"}
OUTPUT_NAME = {"o": "O", "lse": "LSE", "m": "m", "l": "l"}      # as the tables name them


def _bits(host, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(host).astype(sref.np_dtype(dtype)).view(STORAGE[dtype]).ravel()


def _values(bits, dtype: str) -> np.ndarray:
    """Stored bits -> an array the metrics read: fp16 and fp32 as they are; bf16 as fp32 with
    the poison carried over, so that unwritten elements are still told apart."""
    if dtype == "bfloat16":
        out = bits.view(sref.np_dtype("bfloat16")).astype(np.float32)
        out[bits == POISON[dtype]] = met.POISON_BITS[np.dtype(np.float32)].view(np.float32)
        return out
    return bits.view(np.dtype(dtype))


def _to_layout(a, layout: str):
    """[B, H, S, D] -> the kernel's layout."""
    return np.ascontiguousarray(a.transpose(0, 2, 1, 3) if layout == "BSHD" else a)


def _from_layout(a, layout: str):
    return np.ascontiguousarray(a.transpose(0, 2, 1, 3) if layout == "BSHD" else a)


@dataclass
class Buffer:
    """One pointer argument on the device, inside its guard margins."""
    arg: kspec.Arg
    dtype: str
    shape: tuple          # in the kernel's layout
    flat: object          # cupy storage, GUARD + n + GUARD elements
    init_bits: np.ndarray | None = None

    @property
    def n(self) -> int:
        return math.prod(self.shape)

    @property
    def body(self):
        return self.flat[GUARD:GUARD + self.n]

    @property
    def is_output(self) -> bool:
        return kspec.ROLES[self.arg.role][1]

    def reset(self, input_nan: bool = True):
        """Body back to its initial bits; margins: the sentinel (outputs), NaN (inputs), or 0
        for an input whose margins are left out of a read-outside probe."""
        cp = _cupy()
        if self.is_output:
            fill = SENTINEL[self.dtype]
        else:
            fill = INPUT_NAN[self.dtype] if input_nan else 0
        self.flat[:GUARD] = fill
        self.flat[GUARD + self.n:] = fill
        self.flat[GUARD:GUARD + self.n] = cp.asarray(self.init_bits)

    def outside(self) -> tuple:
        """(elements written in the margins, first offset from the buffer's start)."""
        cp = _cupy()
        marg = cp.concatenate([self.flat[:GUARD], self.flat[GUARD + self.n:]])
        bad = cp.flatnonzero(marg != SENTINEL[self.dtype])
        if bad.size == 0:
            return 0, None
        first = int(bad[0])
        offset = first - GUARD if first < GUARD else self.n + (first - GUARD)
        return int(bad.size), offset


def _shape_of(role: str, shape: Shape, layout: str) -> tuple:
    axes = kspec.ROLES[role][0]
    if axes == "rows":
        return (shape.B, shape.H, shape.Sq)
    S = shape.Sq if axes == "q" else shape.Sk
    return (shape.B, S, shape.H, shape.D) if layout == "BSHD" else (shape.B, shape.H, S, shape.D)


def _init_bits(a: kspec.Arg, dtype: str, n: int) -> np.ndarray:
    if a.init == "none":
        return np.full(n, POISON[dtype], STORAGE[dtype])
    value = {"0": 0.0, "1": 1.0, "-inf": -np.inf, "inf": np.inf}[a.init]
    return _bits(np.full(n, value, np.float32), dtype)


def _scalar(a: kspec.Arg, names: dict):
    v = kspec.evaluate(a.value, names)
    t = np.dtype(kspec.SCALAR_TYPES[a.type])
    if t.kind in "iu":
        if v != int(v):
            raise UsageError(f"argument {a.name} = {a.value!r} is {v}, not an integer")
        return t.type(int(v))
    return t.type(v)


@dataclass
class Launch:
    fn: object
    grid: tuple
    block: tuple
    smem: int
    buffers: dict          # arg name -> Buffer
    args: tuple

    def run(self, label: str, hang_s: float | None = None):
        """One launch, waited for with a deadline (device.wait): KernelFault or Hang as verdicts."""
        cp = _cupy()
        try:
            self.fn(self.grid, self.block, self.args, shared_mem=self.smem)
            wait(f"{label} (grid {self.grid}, block {self.block})", hang_s)
        except (cp.cuda.runtime.CUDARuntimeError, cp.cuda.driver.CUDADriverError) as e:
            raise KernelFault(f"FAULT: {label}: {e}") from None


def build_launch(variant: UserVariant, shape: Shape, scale: float, host: dict) -> Launch:
    """Buffers (inputs in the kernel's layout and dtype, outputs initialised), scalars and the
    geometry, all from the spec."""
    cp = _cupy()
    spec = variant.spec
    names = spec.names(shape.B, shape.H, shape.Sq, shape.Sk, shape.D, scale, variant.causal)
    grid, block, smem = kspec.launch_geometry(spec, names)
    fn = user_kernel.get_function(variant)
    user_kernel.allow_smem(fn, smem)
    bufs, args = {}, []
    for a in spec.args:
        if not a.is_buffer:
            args.append(_scalar(a, names))
            continue
        if a.role == "null":
            args.append(np.uint64(0))
            continue
        dtype = spec.buffer_dtype(a)
        shp = _shape_of(a.role, shape, spec.layout)
        n = math.prod(shp)
        init = _bits(_to_layout(host[a.role], spec.layout), dtype) if a.role in ("q", "k", "v") else \
            _init_bits(a, dtype, n)
        b = Buffer(a, dtype, shp, cp.empty(GUARD + n + GUARD, dtype=STORAGE[dtype]), init)
        b.reset()
        bufs[a.name] = b
        args.append(b.body)
    return Launch(fn, grid, block, smem, bufs, tuple(args))


def _outputs(launch: Launch, spec) -> dict:
    """role -> kernel output on the host, in [B, H, S(, D)] and metric-ready dtype."""
    out = {}
    for b in launch.buffers.values():
        if not kspec.ROLES[b.arg.role][1]:
            continue
        vals = _values(_cupy().asnumpy(b.body), b.dtype).reshape(b.shape)
        out[b.arg.role] = _from_layout(vals, spec.layout) if vals.ndim == 4 else vals
    return out


# ------------------------------------------------------------------ what each mode is judged against
def references(variant: UserVariant, q, k, v, scale: float) -> dict:
    """role -> (exact, kernel-precision, stage) for the outputs the mode is judged on, and the
    column slice of O they cover (a flag that writes the first key tile's scores fills only
    its first block_n columns)."""
    spec = variant.spec
    prec = spec.precision
    p_dtype = prec.get("p") or spec.dtype
    out_dtype = prec.get("output") or spec.buffer_dtype(spec.role_arg("o"))
    if variant.mode == "full":
        ex = sref.in_convention(sref.exact(q, k, v, scale, variant.causal), spec.lse_base, spec.m_form)
        kp = sref.in_convention(sref.kernel_precision(q, k, v, scale, variant.causal, spec.block_n, p_dtype, out_dtype,
                                                      prec.get("accumulate") or "float32"), spec.lse_base, spec.m_form)
        return {a.role: (ex[a.role], kp[a.role], STAGE_OF_OUTPUT[a.role], slice(None)) for a in spec.outputs}
    flag = spec.flag(variant.mode)
    Sq = q.shape[-2]
    if flag.reference in ("uniform", "uniform_first_tile"):
        first = spec.block_n if flag.reference == "uniform_first_tile" else None
        ex = sref.uniform_o(v, Sq, variant.causal, first)
        kp = sref.uniform_o(v, Sq, variant.causal, first, out_dtype, exact_=False)
        return {"o": (ex, kp, flag.stage, slice(None))}
    if flag.reference in ("scores_first_tile", "raw_scores_first_tile"):
        w = min(spec.block_n, k.shape[-2], q.shape[-1])
        sc = scale if flag.reference == "scores_first_tile" else 1.0
        ex = sref.exact_scores(q, k, sc, variant.causal)[..., :w]
        kp = sref.rounded(sref.kp_scores(q, k, sc, variant.causal)[..., :w], out_dtype)
        return {"o": (ex, kp, flag.stage, slice(0, w))}
    return references(UserVariant(spec, "full", variant.head_dim, variant.causal, variant.bugs, variant.arch), q, k, v, scale)


# ------------------------------------------------------------------ one run
@dataclass
class Executed:
    """What a launch left: outputs by role (host, [B, H, S(, D)]), writes outside each output
    (count, first offset), elements that moved between two launches, inputs read past."""
    got: dict
    outside: dict
    moved: dict
    read_outside: list
    resources: dict


def execute(variant: UserVariant, shape: Shape, scale: float, host: dict, hang_s: float | None = None,
            deterministic: bool = True) -> Executed:
    """Launch on given inputs (host q, k, v in [B, H, S, D] and the kernel's dtype): twice when
    deterministic (a moving output is a race), and again to name an input read past its end
    when a computed NaN came out. CompileError, KernelFault and Hang propagate."""
    launch = build_launch(variant, shape, scale, host)
    resources = user_kernel.resources(variant, launch.smem)
    launch.run(variant.label, hang_s)
    got = _outputs(launch, variant.spec)
    outside = {b.arg.role: b.outside() for b in launch.buffers.values() if b.is_output}
    moved = {r: 0 for r in got}
    if deterministic:
        for b in launch.buffers.values():
            b.reset()
        launch.run(variant.label, hang_s)
        again = _outputs(launch, variant.spec)
        moved = {r: int(np.count_nonzero(_raw(got[r]) != _raw(again[r]))) for r in got}
    read_outside = _inputs_read_outside(launch, variant, variant.spec, got, hang_s)
    return Executed(got, outside, moved, read_outside, resources)


def spec_inputs(spec, shape: Shape, inputs: str, seed: int) -> dict:
    """Host q, k, v in [B, H, S, D], drawn from the seed and rounded to the kernel's input dtype:
    what every launch of a spec'd kernel (check, bench, sanitizer) hands over."""
    return dict(zip("qkv", make_inputs(shape, inputs, seed, spec.buffer_dtype(spec.role_arg("q")))))


def run_spec(spec_path, mode: str, shape: Shape, causal: bool = False, inputs: str = "randn", seed: int | None = None,
             bugs=(), scale: float | None = None, keep_outputs: bool = False, folds: bool | None = None,
             hang_s: float | None = None, deterministic: bool = True) -> RunResult:
    """One mode of a spec'd kernel on one shape; faults and hangs come back as the status."""
    spec = kspec.load(spec_path) if not isinstance(spec_path, kspec.Spec) else spec_path
    spec.check_domain(shape.B, shape.H, shape.Sq, shape.Sk, shape.D, causal)
    variant = UserVariant(spec, mode, shape.D, causal, tuple(bugs), runtime_arch())
    folds = keep_outputs if folds is None else folds
    seed = fresh_seed() if seed is None else int(seed)
    scale = 1.0 / math.sqrt(shape.D) if scale is None else float(scale)
    host = spec_inputs(spec, shape, inputs, seed)
    result = RunResult(variant, shape, scale, inputs, seed)
    try:
        ex = execute(variant, shape, scale, host, hang_s, deterministic)
    except VERDICTS as e:
        result.status, result.message = verdict_status(e), str(e)
        return result
    result.resources = ex.resources
    got, outside, moved, read_outside = ex.got, ex.outside, ex.moved, ex.read_outside
    q64, k64, v64 = (host[x].astype(np.float32).astype(np.float64) for x in "qkv")
    refs = references(variant, q64, k64, v64, scale)
    for role, (exact, kp, stage, cols) in refs.items():
        g = got[role][..., cols] if got[role].ndim == 4 else got[role]
        sm, err = met.compare(mode, OUTPUT_NAME[role], stage, np.ascontiguousarray(g), exact, kp)
        n_out, first = outside.get(role, (0, None))
        sm.extra.update(nondeterministic=moved.get(role, 0), written_outside=n_out, reference_device="cpu")
        if n_out:
            sm.extra["outside_offset"] = first
        if read_outside:
            sm.extra["read_outside"] = read_outside
        sm.passed = sm.passed and moved.get(role, 0) == 0 and n_out == 0
        result.metrics.append(sm)
        if folds and not sm.passed and g.ndim == 4:
            result.folds.append(localise.fold(err, sm.tol, f"{mode}/{role.upper()}", spec.block_m, spec.block_n, g,
                                              exact, spec.block_m, n_keys=shape.Sk, n_rows=shape.Sq))
        if keep_outputs:
            result.outputs[role] = np.asarray(g)[:1, :1, :16]
            result.expected[role] = np.asarray(exact)[:1, :1, :16]
    # writes outside an output the mode does not judge still fail it
    for role, (n_out, first) in outside.items():
        if role not in refs and n_out:
            result.metrics[0].extra.setdefault("written_outside_other", {})[role] = n_out
            result.metrics[0].passed = False
    return result


def _raw(a):
    return a.view(np.uint32 if a.dtype.itemsize == 4 else np.uint16)


def _inputs_read_outside(launch: Launch, variant, spec, got: dict, hang_s: float) -> list:
    """Inputs whose NaN margins reached an output: relaunch with zero margins, one input's NaN
    margins at a time (only when an output holds a computed NaN, so a clean run costs nothing)."""
    def computed_nan(out):
        return any(np.count_nonzero(np.isnan(a.astype(np.float32)) & ~met.unwritten_mask(a)) for a in out.values())
    if not computed_nan(got):
        return []
    inputs = [b for b in launch.buffers.values() if not b.is_output]
    guilty = []
    for suspect in inputs:
        for b in launch.buffers.values():
            b.reset(input_nan=b is suspect)
        launch.run(variant.label, hang_s)
        if computed_nan(_outputs(launch, spec)):
            guilty.append(suspect.arg.name)
    for b in launch.buffers.values():
        b.reset()
    return guilty
