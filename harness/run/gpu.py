"""The GPU path: compile with cupy.RawModule, poison, launch, check, compare.

Public API (tests and notebooks call these directly; the CLI is a thin layer on top):
  prepare(mode, shape, ...)        -> Prepared: device inputs, poisoned outputs, launch()
  run_mode(mode, shape, ...)       -> RunResult: per-output StageMetrics, folds of the failing
                                      outputs, the query rows checked
The product path, forward(), lives apart in harness/api.py.

Where the data is: the inputs are drawn on the host from the seed and moved to the device
once; the references, errors, metrics and folds are computed there through CuPy (the same
NumPy code as on the host, harness/check/xp.py), and only numbers and small folds come back.
reference_device="cpu" runs that code on NumPy instead (the host path). A RunResult crosses
a process boundary (runs.py pickles it), so it never holds a full-size array.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field

import numpy as np

from debug_modes.registry import KERNEL_PARAMS, get_mode, kernel_scalars
from harness.toolchain import compiler
from harness.check import localise
from harness.check import metrics as met
from harness.check import stages
from harness.check import windows
from harness.check.xp import on_device, to_host
from harness.run import launch_counts
from harness.toolchain.device import cupy as _cupy, wait
from harness.toolchain.loader import get_kernel, kernel_resources, runtime_variant
from harness.errors import FlashCoreError, Hang, UsageError
from harness.check.inputs import fresh_seed, make_inputs
from harness.check.shapes import Shape
from harness.toolchain.variant import Variant, tiles_for

MAX_DEBUG_MATRIX_BYTES = 2 << 30   # prepare(): one window's [B,H,rows,Skp] fp32 buffers (bench, sanitize)
REFERENCE_DEVICES = ("auto", "gpu", "cpu")
# auto: the host path up to this much work (B*H*Sq*Sk*D multiply-adds of one reference), the
# device beyond: the coverage set (its largest, 2,3,128x192,128, is 1.9e7) and the mission shape
# (2**27) on the host. Measured on the H200 at f581df5, warm, once the launch side compiled
# nothing of CuPy's (results/logs/host-vs-device-f581df5-h200.log): `run --debug pv_only --shape
# mission` 1.42 s on the host against 1.85 s on the device, `run --debug all` 2.34 against 2.50
# (docs/DESIGN.md §7). At 6a8fdfb, before launch_counts, the device had been the faster.
AUTO_HOST_WORK = 2**27
# ... and up to this much (the mission shape included) while this machine's CuPy cache lacks the
# device checks' kernels: at 6a8fdfb a cold `run --debug all --shape mission` took 7.8 s on the
# host against 28 s on the device; the first such run compiles them in the background
# (harness/run/warm_refs.py), and later runs judge on the device.
COLD_HOST_WORK = 2**28
SAMPLE_ROWS, SAMPLE_COLS = 16, 128  # keep_outputs: the corner of (b=0, h=0) kept for displays (smoking gun)
# run_mode's defaults when its arguments are None: the CLI sets them for the process and the
# worker processes it starts, which inherit the environment (check_settings).
ENV_REFERENCE_DEVICE = "FLASHCORE_REFERENCE_DEVICE"
ENV_ROWS = "FLASHCORE_ROWS"


class KernelFault(FlashCoreError):
    """The launch or the synchronisation after it failed (illegal address, ...)."""

    exit_code = 1


VERDICTS = (compiler.CompileError, KernelFault, Hang)   # a case's result, never raised past it


def verdict_status(e: FlashCoreError) -> str:
    """The status a RunResult carries for a verdict exception."""
    return {compiler.CompileError: "compile_error", KernelFault: "fault", Hang: "hang"}[type(e)]


def kernel_args(shape: Shape, bufs: dict, scale: float, window: tuple | None = None) -> tuple:
    """flashcore_fwd's argument tuple (the kernel contract); buffers absent from bufs are null
    pointers; window = (row0, n_rows), the query rows computed (default: all)."""
    row0, n_rows = window or (0, shape.Sq)
    return tuple(bufs[p] if p in bufs else np.uint64(0) for p in KERNEL_PARAMS) + kernel_scalars(
        shape.H, shape.Sq, shape.Sk, scale, row0, n_rows)


def _launch_spec(variant: Variant, shape: Shape, bufs: dict, scale: float, window: tuple | None) -> tuple:
    """(function, grid, block, arguments, shared memory) of one launch of the window (default:
    every row)."""
    n_rows = (window or (0, shape.Sq))[1]
    args = kernel_args(shape, bufs, scale, window) + trailing_args(variant, bufs)
    return (get_kernel(variant), variant.grid(shape, n_rows), (variant.threads,), args, variant.smem_bytes)


def trailing_args(variant: Variant, bufs: dict) -> tuple:
    """The arguments a registry entry derives from the buffers, after the scalars: "tma:X", the
    TMA tensor map of buffer X (boxes of block_m rows for Q, block_n for K and V), or an
    all-zero map where the mode does not pass X (harness/toolchain/tma.py); then "counter", a
    fresh zeroed work-item word (harness/toolchain/counter.py), which every launch of the
    returned tuple shares: the kernel leaves it zero, and the harness launches one at a time."""
    if not variant.entry.trailing_params:
        return ()
    from harness.toolchain import counter, tma
    out = []
    for name in tma.mapped_buffers(variant.entry):
        x = bufs.get(name)
        if x is None:
            out.append(tma.null_desc())
            continue
        B, H, S, D = x.shape
        out.append(tma.encode_bhsd(int(x.data.ptr), B * H, S, D, tma.box_rows(name, variant.q_box_rows, variant.block_n)))
    if counter.takes_counter(variant.entry):
        out.append(counter.fresh(_cupy()))
    return tuple(out)


def launch(variant: Variant, shape: Shape, bufs: dict, scale: float, sync: bool = True, window: tuple | None = None):
    """Launch flashcore_fwd; checks the launch and (with sync) the synchronisation."""
    cp = _cupy()
    fn, grid, block, args, smem = _launch_spec(variant, shape, bufs, scale, window)
    try:
        fn(grid, block, args, shared_mem=smem)
        if sync:
            wait(f"{variant.label} on {shape.label}")
    except (cp.cuda.runtime.CUDARuntimeError, cp.cuda.driver.CUDADriverError) as e:
        raise KernelFault(f"{variant.label} on {shape.label}: kernel fault: {e}") from None


def default_scale(D: int, scale):
    return 1.0 / math.sqrt(D) if scale is None else float(scale)


# ------------------------------------------------------------------ settings: reference device, rows
def reference_device_of(value: str | None = None, shape: Shape | None = None, device_cold=None) -> str:
    """auto | gpu | cpu: the argument, else the environment's default (check_settings), else
    auto; with a shape, auto is resolved to where that shape's references are cheapest.
    device_cold(): True while the device checks' CuPy kernels are not compiled on this machine
    (then the host takes problems up to COLD_HOST_WORK); None: taken as warm."""
    value = value or os.environ.get(ENV_REFERENCE_DEVICE) or "auto"
    if value not in REFERENCE_DEVICES:
        raise UsageError(f"unknown reference device {value!r}; valid: {', '.join(REFERENCE_DEVICES)}")
    if value == "auto" and shape is not None:
        work = shape.B * shape.H * shape.Sq * shape.Sk * shape.D
        if work <= AUTO_HOST_WORK:
            return "cpu"
        return "cpu" if work <= COLD_HOST_WORK and device_cold is not None and device_cold() else "gpu"
    return value


class _DeviceChecksCold:
    """device_cold for run_mode: True while the marker of harness/run/warm_refs.py is absent.
    The background compile starts after the case is judged (start_if_cold), so that it does not
    compete with this case's own first compilations."""

    def __init__(self, shape: Shape, causal: bool):
        self.shape, self.causal, self.arch = shape, causal, None

    def __call__(self) -> bool:
        from harness.run import warm_refs
        from harness.toolchain.device import require_gpu
        self.arch = require_gpu()["arch"]
        return not warm_refs.is_warm(self.arch)

    def start_if_cold(self):
        if self.arch is not None:      # asked (start() does nothing once the marker is there)
            from harness.run import warm_refs
            warm_refs.start(self.arch, self.shape, self.causal)


def rows_request_of(value=None):
    """None (default windows), 'all', or query-tile indices; a string is parsed as --rows."""
    if value is None:
        value = os.environ.get(ENV_ROWS)
    if isinstance(value, (tuple, list)):
        return tuple(int(t) for t in value)
    return windows.parse_rows(value)


@contextlib.contextmanager
def check_settings(reference_device: str | None = None, rows: str | None = None):
    """run_mode's defaults for the reference device and the rows, for this process and the
    worker processes it starts (they inherit the environment): how --reference-device and
    --rows reach every mode of a sweep. Restored on exit."""
    saved = {k: os.environ.get(k) for k in (ENV_REFERENCE_DEVICE, ENV_ROWS)}
    try:
        if reference_device:
            os.environ[ENV_REFERENCE_DEVICE] = reference_device_of(reference_device)
        if rows:
            os.environ[ENV_ROWS] = str(rows)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def row_bytes(mode: str, shape: Shape, sk_pad: int) -> int:
    """Bytes of one query row of the mode's [B, H, rows, Skp] matrices (fp32); 0 without."""
    return shape.B * shape.H * sk_pad * 4 if get_mode(mode).windowed else 0


def plan_windows(mode: str, shape: Shape, variant: Variant, request=None) -> list:
    """The windows [(row0, n_rows)] a mode is checked on: every row for the modes without
    [rows, keys] matrices; for the others windows.plan (whole when small, else the first, a
    middle and the last query tile, or what --rows asked for)."""
    if not get_mode(mode).windowed:
        return [(0, shape.Sq)]
    return windows.plan(shape.Sq, variant.block_m, row_bytes(mode, shape, variant.padded_keys(shape.Sk)),
                        request, shape.label)


def validate_rows(modes, shape: Shape, rows) -> None:
    """A --rows request checked before any GPU work (one-line UsageError): tile indices in
    range, the rows within the memory limit, for every windowed mode asked for."""
    request = rows_request_of(rows) if rows else None
    if request is None:
        return
    for mode in modes:
        if get_mode(mode).windowed:
            plan_windows(mode, shape, Variant(mode, shape.D, **tiles_for(shape)), request)


# ------------------------------------------------------------------ one mode on one shape
@dataclass
class RunResult:
    variant: Variant
    shape: Shape
    scale: float
    inputs: str
    seed: int
    metrics: list = field(default_factory=list)       # StageMetrics, one per output buffer
    folds: list = field(default_factory=list)         # localise.Folds of the failing outputs (folds=True)
    outputs: dict = field(default_factory=dict)       # keep_outputs: output -> kernel's [1, 1, 16, <=128] corner
    expected: dict = field(default_factory=dict)      # keep_outputs: output -> exact reference, same corner
    rows_checked: list | None = None                  # windowed modes: [(row0, row_end)]; None: every row
    reference_device: str = "gpu"                     # where references and metrics were computed
    resources: dict = field(default_factory=dict)
    status: str = "ok"                                 # ok | fault | compile_error
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "ok" and all(m.passed for m in self.metrics)

    @property
    def rows_text(self) -> str:
        """The query rows checked, for tables: 'all' or inclusive ranges."""
        return windows.describe(self.rows_checked, self.shape.Sq)


def check_debug_size(mode: str, shape: Shape, rows: int, sk_pad: int):
    """prepare()'s bound on one window's buffers (run_mode plans windows within its own)."""
    m = get_mode(mode)
    nbytes = max((int(np.prod(b.shape_for(shape, rows, sk_pad))) * b.np_dtype.itemsize for b in m.reads + m.writes),
                 default=0)
    if nbytes > MAX_DEBUG_MATRIX_BYTES:
        raise UsageError(f"{mode} on {shape.label} needs a {nbytes / 2**30:.1f} GiB buffer; the limit is "
                         f"{MAX_DEBUG_MATRIX_BYTES / 2**30:.0f} GiB (use a shorter sequence)")


@dataclass
class Prepared:
    """Everything one launch of a mode needs: device inputs, poisoned outputs, host copies."""
    variant: Variant
    shape: Shape
    scale: float
    seed: int
    host: dict        # host inputs Q, K, V (fp16, as drawn from the seed)
    bufs: dict        # device inputs by parameter (Q, K, V, S_in, P_in as the mode reads them)
    outs: dict        # device outputs by parameter (poisoned)
    window: tuple = None   # (row0, n_rows): the query rows the launch computes

    @property
    def sk_pad(self) -> int:
        return self.variant.padded_keys(self.shape.Sk)

    def repoison(self):
        for p, a in self.outs.items():
            self.outs[p] = launch_counts.poisoned(a.shape, a.dtype)

    def launch(self):
        self.repoison()
        launch(self.variant, self.shape, {**self.bufs, **self.outs}, self.scale, window=self.window)

    def timed_launcher(self):
        """A zero-overhead launch for timing: kernel and arguments resolved once, no checks
        (the caller checks the stream afterwards)."""
        fn, grid, block, args, smem = _launch_spec(self.variant, self.shape, {**self.bufs, **self.outs},
                                                   self.scale, self.window)
        return lambda: fn(grid, block, args, shared_mem=smem)


def _on_gpu(a):
    """A contiguous device copy of a host or device (sub)array (the kernel's layout)."""
    cp = _cupy()
    return cp.ascontiguousarray(a) if on_device(a) else cp.asarray(np.ascontiguousarray(a))


def _window_prepared(variant: Variant, shape: Shape, scale: float, seed: int, host: dict, dev: dict,
                     injected: dict, window: tuple, offset: int = 0) -> Prepared:
    """The launch of one window: Q, K, V (device), the window's rows of the injected inputs
    (stacked from `offset` along the row axis, host or device) and poisoned outputs."""
    m = get_mode(variant.mode)
    n = window[1]
    src = {**dev, **{p: _on_gpu(a[:, :, offset:offset + n]) for p, a in injected.items()}}
    bufs = {b.param: src[b.param] for b in m.reads}
    outs = {b.param: launch_counts.poisoned(b.shape_for(shape, n, variant.padded_keys(shape.Sk)), b.np_dtype) for b in m.writes}
    return Prepared(variant, shape, scale, seed, host, bufs, outs, window)


def prepare(mode: str, shape: Shape, causal: bool = False, inputs: str = "randn", seed: int | None = None,
            bugs=(), scale: float | None = None, window: tuple | None = None, **variant_kw) -> Prepared:
    """One launch's worth of a mode (bench, sanitize, tests): by default one window of every
    row, within MAX_DEBUG_MATRIX_BYTES; the injected inputs are computed on the device."""
    cp = _cupy()
    tiles = tiles_for(shape, variant_kw.get("kernel"))   # the named entry's table, else the one in use
    variant = runtime_variant(mode, shape.D, causal, bugs, **{**tiles, **variant_kw})
    row0, n = window or (0, shape.Sq)
    window = (row0, min(n, shape.Sq - row0))    # the buffers hold exactly the rows that exist
    check_debug_size(mode, shape, window[1], variant.padded_keys(shape.Sk))
    seed = fresh_seed() if seed is None else int(seed)
    scale = default_scale(shape.D, scale)
    host = dict(zip("QKV", make_inputs(shape, inputs, seed)))
    dev = {p: cp.asarray(a) for p, a in host.items()}
    rows = np.arange(window[0], window[0] + window[1])
    injected = stages.injected_inputs(mode, dev["Q"], dev["K"], dev["V"], causal, scale,
                                      variant.padded_keys(shape.Sk), rows)
    return _window_prepared(variant, shape, scale, seed, host, dev, injected, window)


@dataclass
class Launched:
    """The kernel's side of one mode's check, over every window."""
    got: dict        # output name -> kernel output over the checked rows (windows stacked), reference device
    moved: dict      # kernel parameter -> elements that differ between two launches
    outside: dict    # kernel parameter -> elements written outside the window (per-row outputs)


def launch_windows(variant: Variant, shape: Shape, scale: float, seed: int, host: dict, dev: dict,
                   injected: dict, wins: list, on_host: bool) -> Launched:
    """Launch each window twice (outputs re-poisoned); keep the window's rows of every output
    on the reference device (the host with on_host), stacked in window order."""
    cp = _cupy()
    m = get_mode(variant.mode)
    pieces = {b.output: [] for b in m.writes}
    moved = {b.param: 0 for b in m.writes}
    outside = {b.param: 0 for b in m.writes}
    offset = 0
    for row0, n in wins:
        pre = _window_prepared(variant, shape, scale, seed, host, dev, injected, (row0, n), offset)
        pre.launch()
        # The kernel is bitwise deterministic by design (no atomics): a second launch that
        # differs is the signature of a race ("a moving error is a race"). The counts are raw
        # kernels (launch_counts): CuPy's count_nonzero compiled CUB passes per array size.
        first = {p: launch_counts.copy(a) for p, a in pre.outs.items()}
        pre.launch()
        for b in m.writes:
            a = pre.outs[b.param]
            moved[b.param] += launch_counts.count_moved(a, first[b.param])
            if not b.is_matrix:
                outside[b.param] += launch_counts.count_written_outside(a, row0, n)
            if on_host:     # the whole output across, then its rows: no copy kernel on the device
                a = cp.asnumpy(a)
                pieces[b.output].append(a if b.is_matrix else np.ascontiguousarray(a[:, :, row0:row0 + n]))
            else:
                pieces[b.output].append(cp.ascontiguousarray(a if b.is_matrix else a[:, :, row0:row0 + n]))
        del pre, first
        offset += n
    xp = np if on_host else cp
    got = {name: ps[0] if len(ps) == 1 else xp.concatenate(ps, axis=2) for name, ps in pieces.items()}
    return Launched(got, moved, outside)


def _corner(a):
    """The [1, 1, SAMPLE_ROWS(, SAMPLE_COLS)] corner of (b=0, h=0), on the host."""
    return to_host(a[:1, :1, :SAMPLE_ROWS] if a.ndim == 3 else a[:1, :1, :SAMPLE_ROWS, :SAMPLE_COLS])


def judge(result: RunResult, launched: Launched, refs: dict, row_index=None, folds: bool = False,
          keep_outputs: bool = False) -> RunResult:
    """Metrics of every output over the checked rows (and folds of the failing ones), computed
    where the arrays are; the result keeps numbers, folds and at most a small corner of each."""
    v, shape = result.variant, result.shape
    m = get_mode(v.mode)
    for b in m.writes:
        got, (exact, kp) = launched.got[b.output], refs[b.output]
        sm, err = met.compare(v.mode, b.output, m.stage, got, exact, kp, rows=row_index)
        sm.extra["nondeterministic"] = launched.moved[b.param]
        sm.extra["reference_device"] = result.reference_device
        sm.passed = sm.passed and launched.moved[b.param] == 0
        if result.rows_checked is not None:
            sm.extra["rows_checked"] = [list(r) for r in result.rows_checked]
            if not b.is_matrix:
                sm.extra["written_outside"] = launched.outside[b.param]
                sm.passed = sm.passed and launched.outside[b.param] == 0
        if m.row_spread:
            spread = met.row_spread(got)
            sm.extra["row_spread"] = spread
            sm.passed = sm.passed and spread <= sm.tol
        result.metrics.append(sm)
        if folds and not sm.passed:
            result.folds.append(localise.fold(err, sm.tol, f"{v.mode}/{b.output}", v.block_m, v.block_n, got, exact,
                                              v.warp_rows, n_keys=shape.Sk, row_ranges=result.rows_checked,
                                              n_rows=shape.Sq))
        if keep_outputs:
            result.outputs[b.output], result.expected[b.output] = _corner(got), _corner(exact)
        del err
    return result


def _checked_rows(m, shape: Shape, wins: list) -> tuple:
    """(rows_checked for the result: the windows' ranges of a windowed mode, else None; the row
    index the references take: None where the windows are every row)."""
    return (windows.ranges(wins) if m.windowed else None,
            None if wins == [(0, shape.Sq)] else windows.row_index(wins))


def run_mode(mode: str, shape: Shape, causal: bool = False, inputs: str = "randn", seed: int | None = None,
             bugs=(), scale: float | None = None, keep_outputs: bool = False, reference_device: str | None = None,
             rows=None, folds: bool | None = None, **variant_kw) -> RunResult:
    """Run one debug mode on one shape against its references; returns the metrics record.
    reference_device: auto (default: the host for small problems, AUTO_HOST_WORK) | gpu | cpu,
    where references and metrics are computed.
    rows: None (default windows), 'all', or query-tile indices, for the windowed modes.
    folds: compute the folds of failing outputs (default: keep_outputs, which also keeps the
    corner of (b=0, h=0), SAMPLE_ROWS x SAMPLE_COLS, for display: what diagnose asks for).
    A kernel fault is reported in the result (status 'fault'), not raised."""
    cp = _cupy()
    cold = _DeviceChecksCold(shape, causal)
    ref_dev = reference_device_of(reference_device, shape, cold)
    request = rows_request_of(rows)
    folds = keep_outputs if folds is None else folds
    tiles = tiles_for(shape, variant_kw.get("kernel"))   # the named entry's table, else the one in use
    variant = runtime_variant(mode, shape.D, causal, bugs, **{**tiles, **variant_kw})
    m, sk_pad = get_mode(mode), variant.padded_keys(shape.Sk)
    wins = plan_windows(mode, shape, variant, request)
    seed = fresh_seed() if seed is None else int(seed)
    scale = default_scale(shape.D, scale)
    host = dict(zip("QKV", make_inputs(shape, inputs, seed)))
    rows_checked, row_index = _checked_rows(m, shape, wins)
    result = RunResult(variant, shape, scale, inputs, seed, reference_device=ref_dev, rows_checked=rows_checked)
    try:
        result.resources = kernel_resources(variant)
        dev = {p: cp.asarray(a) for p, a in host.items()}
        ref_in = host if ref_dev == "cpu" else dev
        injected = stages.injected_inputs(mode, ref_in["Q"], ref_in["K"], ref_in["V"], causal, scale, sk_pad, row_index)
        launched = launch_windows(variant, shape, scale, seed, host, dev, injected, wins, on_host=ref_dev == "cpu")
    except VERDICTS as e:
        result.status, result.message = verdict_status(e), str(e)
        return result
    refs = stages.stage_references(mode, ref_in["Q"], ref_in["K"], ref_in["V"], causal, scale, variant.block_n,
                                   injected, sk_pad, row_index)
    del injected
    result = judge(result, launched, refs, row_index, folds, keep_outputs)
    if ref_dev == "cpu":
        cold.start_if_cold()
    return result


def warm_device_checks(shape: Shape, causal: bool = False, seed: int = 0):
    """Compile the CuPy kernels of run_mode's device checks (harness/run/warm_refs.py): every
    mode's injected inputs, references, metrics and folds at this shape, on the device, as
    run_mode computes them, with the kernel's outputs stood in by a perturbed kernel-precision
    reference (so the failing path's folds compile too). Launches no kernel of the user's."""
    cp = _cupy()
    from debug_modes.registry import MODES
    scale = default_scale(shape.D, None)
    dev = {p: cp.asarray(a) for p, a in zip("QKV", make_inputs(shape, "randn", seed))}   # every mode's inputs
    for mode in MODES:
        if causal and not MODES[mode].allows_causal:
            continue
        variant = Variant(mode, shape.D, causal, **tiles_for(shape))
        m, sk_pad = get_mode(mode), variant.padded_keys(shape.Sk)
        wins = plan_windows(mode, shape, variant, None)
        rows_checked, row_index = _checked_rows(m, shape, wins)
        injected = stages.injected_inputs(mode, dev["Q"], dev["K"], dev["V"], causal, scale, sk_pad, row_index)
        refs = stages.stage_references(mode, dev["Q"], dev["K"], dev["V"], causal, scale, variant.block_n,
                                       injected, sk_pad, row_index)
        got = {}
        for b in m.writes:
            kp = refs[b.output][1]
            g = cp.array(kp, copy=True)
            g.reshape(-1)[: max(1, g.size // 7)] += 1       # a failing output: the folds' path
            got[b.output] = g
        result = RunResult(variant, shape, scale, "randn", seed, reference_device="gpu", rows_checked=rows_checked)
        launched = Launched(got, {b.param: 0 for b in m.writes}, {b.param: 0 for b in m.writes})
        judge(result, launched, refs, row_index, folds=True, keep_outputs=True)
    cp.cuda.runtime.deviceSynchronize()

