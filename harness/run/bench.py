"""`flashcore bench`: CUDA-event timing of the kernel beside PyTorch SDPA, in one process.

Method (triton.testing.do_bench's): warm up, then time each launch with its own pair of
events over many back-to-back launches; report the median and p10-p90. Where the working
set fits in L2, L2 is flushed (a 256 MiB memset) before every timed launch so that the
numbers are not cache numbers. FLOPs: 4*B*H*Sq*Sk*D, half of it for causal.

Wall per call (the product's latency as a user's loop sees it, launch overhead included):
harness/run/wall.py, for forward() and SDPA's default backend; forward() is handed in by the
caller: the harness path does not import the product path.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from harness.check.shapes import Shape
from harness.run.wall import MAX_ROUNDS, WALL_CALLS, WALL_ROUNDS, wall_calls, wall_times

SUITE = [  # (label, shape, causal)  -- issue: the benchmark suite, as data
    ("mission", Shape(1, 8, 512, 512, 64), False),
    ("long", Shape(1, 8, 1024, 1024, 64), False),
    ("4x16x2048 d64", Shape(4, 16, 2048, 2048, 64), False),
    ("4x16x2048 d128", Shape(4, 16, 2048, 2048, 128), False),
    ("2x16x8192 d128", Shape(2, 16, 8192, 8192, 128), False),
    ("16x16x1024 d64", Shape(16, 16, 1024, 1024, 64), False),
    ("causal 4x16x2048 d128", Shape(4, 16, 2048, 2048, 128), True),
]

# Datasheet dense fp16 tensor-core peaks (TFLOP/s), by a substring of the device name.
FP16_PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0}
L2_FLUSH_BYTES = 256 << 20


def fp16_peak(device_name: str) -> float | None:
    for key, peak in FP16_PEAK_TFLOPS.items():
        if key in device_name:
            return peak
    return None


@dataclass
class Timing:
    median_us: float
    p10_us: float
    p90_us: float
    n: int

    def tflops(self, flops: float) -> float:
        return flops / (self.median_us * 1e-6) / 1e12


def do_bench(fn, warmup_ms: float = 30.0, rep_ms: float = 200.0, flush_l2: bool = True,
             min_rep: int = 20, max_rep: int = 2000) -> Timing:
    """Median / p10 / p90 of fn's device time in microseconds, with CUDA events per launch."""
    import cupy as cp
    cache = cp.empty(L2_FLUSH_BYTES, dtype=cp.uint8) if flush_l2 else None
    fn()
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(5):
        fn()
    end.record()
    end.synchronize()
    est_ms = max(cp.cuda.get_elapsed_time(start, end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / est_ms))):
        fn()
    n = int(min(max_rep, max(min_rep, rep_ms / est_ms)))
    evs = [(cp.cuda.Event(), cp.cuda.Event()) for _ in range(n)]
    for s, e in evs:
        if cache is not None:
            cache.fill(0)
        s.record()
        fn()
        e.record()
    evs[-1][1].synchronize()
    times = np.array([cp.cuda.get_elapsed_time(s, e) for s, e in evs]) * 1e3
    return Timing(float(np.median(times)), float(np.percentile(times, 10)), float(np.percentile(times, 90)), n)


@dataclass
class BenchRow:
    label: str
    shape: Shape
    causal: bool
    mode: str
    kernel: Timing
    flops: float
    sdpa: dict = field(default_factory=dict)    # backend -> Timing
    resources: dict = field(default_factory=dict)
    nwarps: int = 4
    tiles: dict = field(default_factory=dict)
    wall: dict = field(default_factory=dict)    # "forward" | "sdpa" -> wall.measure(); "inputs": torch | cupy

    @property
    def tflops(self) -> float:
        return self.kernel.tflops(self.flops)

    def ratio(self, backend: str) -> float | None:
        """Throughput ratio kernel / SDPA backend (> 1: the kernel is faster)."""
        t = self.sdpa.get(backend)
        return t.median_us / self.kernel.median_us if t else None

    def to_dict(self) -> dict:
        d = {"label": self.label, "shape": asdict(self.shape), "causal": self.causal, "mode": self.mode,
             "nwarps": self.nwarps, "tiles": self.tiles, "flops": self.flops, "kernel": asdict(self.kernel),
             "tflops": self.tflops, "resources": self.resources, "wall": self.wall,
             "sdpa": {k: asdict(v) | {"tflops": v.tflops(self.flops)} for k, v in self.sdpa.items()}}
        return d


def _sdpa_timings(shape: Shape, causal: bool, q, k, v) -> dict:
    """SDPA's flash and cuDNN backends on the same inputs, where torch with CUDA is present."""
    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except Exception:
        return {}
    if not torch.cuda.is_available():
        return {}
    tq, tk, tv = (torch.from_dlpack(x) for x in (q, k, v))
    out = {}
    for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel([backend]):
                fn = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)  # noqa: E731
                fn()
                torch.cuda.synchronize()
                out[name] = do_bench(fn, flush_l2=_fits_l2(shape))
        except Exception:   # backend not available for this shape / build
            continue
    return out


def _fits_l2(shape: Shape, l2_bytes: int = 60 << 20) -> bool:
    return (2 * shape.B * shape.H * (shape.Sq + shape.Sk) * shape.D * 2) <= l2_bytes


def bench_one(label: str, shape: Shape, causal: bool = False, mode: str = "full", with_sdpa: bool = True,
              nwarps: int | None = None, seed: int = 0, forward=None, **tiles) -> BenchRow:
    """One row: CUDA-event times of the kernel (and SDPA's flash and cuDNN); with forward (the
    product's forward(), for mode full) also the wall time per call of it and of SDPA."""
    from harness.toolchain.loader import kernel_resources
    from harness.run.gpu import prepare
    import cupy as cp
    if nwarps is not None:
        tiles["nwarps"] = nwarps
    pre = prepare(mode, shape, causal, "randn", seed, **tiles)
    pre.launch()    # compile, check it runs
    t = do_bench(pre.timed_launcher(), flush_l2=_fits_l2(shape))
    cp.cuda.runtime.deviceSynchronize()   # a fault during timing surfaces here
    row = BenchRow(label, shape, causal, mode, t, shape.flops(causal), resources=kernel_resources(pre.variant),
                   nwarps=pre.variant.nwarps)
    row.tiles = {"nwarps": pre.variant.nwarps, "m_frags": pre.variant.m_frags, "block_n": pre.variant.block_n}
    if with_sdpa and mode == "full":
        row.sdpa = _sdpa_timings(shape, causal, pre.bufs["Q"], pre.bufs["K"], pre.bufs["V"])
    if forward is not None and mode == "full":
        row.wall = wall_times(forward, causal, pre.bufs["Q"], pre.bufs["K"], pre.bufs["V"],
                              wall_calls(t.median_us), with_sdpa, kernel_us=t.median_us)
    return row


def pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.0f}%"


def _us(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}"


def _excess(m: dict) -> str:
    """wall - kernel with how it was read (wall.measure: in-loop or paired)."""
    return f"{_signed(m['excess'])} ({m['method']})" if m else "-"


def _wall_cols(r: BenchRow) -> list:
    """forward()'s wall, wall - kernel and host time per call; SDPA's wall and wall - kernel;
    the ratio of the walls SDPA/forward (throughput, like the other ratios: > 1 = forward faster)."""
    fw, sd = r.wall.get("forward") or {}, r.wall.get("sdpa") or {}
    on = " (CuPy)" if fw and r.wall.get("inputs") == "cupy" else ""
    return [_us(fw.get("wall")) + on, _excess(fw), _us(fw.get("host")), _us(sd.get("wall")), _excess(sd),
            f"{sd['wall'] / fw['wall']:.2f}x" if fw and sd else "-"]


def _cols(r: BenchRow, peak: float | None) -> list:
    fl, cu = r.sdpa.get("sdpa_flash"), r.sdpa.get("sdpa_cudnn")
    k = r.kernel
    return [r.label, r.shape.label, "yes" if r.causal else "", f"{k.median_us:.1f} ({k.p10_us:.1f}-{k.p90_us:.1f})",
            f"{r.tflops:.1f}", pct(100 * r.tflops / peak if peak else None),
            f"{fl.median_us:.1f}" if fl else "-", f"{fl.tflops(r.flops):.1f}" if fl else "-",
            f"{r.ratio('sdpa_flash'):.2f}x" if fl else "-",
            f"{cu.median_us:.1f}" if cu else "-", f"{r.ratio('sdpa_cudnn'):.2f}x" if cu else "-"] + _wall_cols(r)


HEADERS = ["case", "B,H,S,D", "causal", "kernel us median (p10-p90)", "TFLOP/s", "% fp16 peak",
           "SDPA flash us", "flash TFLOP/s", "kernel/flash", "SDPA cuDNN us", "kernel/cuDNN",
           "forward() wall us/call", "forward() wall - kernel us", "forward() host us/call",
           "SDPA wall us/call", "SDPA wall - kernel us", "SDPA/forward wall"]


WALL_NOTE = (f"wall: forward() and SDPA (default backend) called up to {WALL_CALLS} times from a Python loop, "
             f"one synchronize, wall time per call; host: the time to enqueue those calls, per call; "
             f"wall - kernel: beyond the kernel's CUDA-event time, read inside one loop where the kernel "
             f"outlasts the host's call, else against a queued loop beside it (harness/run/wall.py); "
             f"medians of {WALL_ROUNDS}-{MAX_ROUNDS} rounds, forward() and SDPA interleaved")


def rich_table(rows, device: dict):
    from rich.table import Table
    peak = fp16_peak(device.get("device", ""))
    t = Table(title=f"flashcore bench on {device.get('device')} (driver {device.get('driver')}); "
                    f"ratios are throughput, > 1 = kernel faster; {WALL_NOTE}", title_justify="left")
    for h in HEADERS:
        t.add_column(h, justify="left" if h in ("case", "B,H,S,D", "causal") else "right")
    for r in rows:
        t.add_row(*_cols(r, peak))
    return t


def markdown(rows, device: dict, date: str, command: str) -> str:
    peak = fp16_peak(device.get("device", ""))
    lines = [f"GPU: {device.get('device')}, driver {device.get('driver')}, CUDA runtime {device.get('runtime')}, "
             f"CuPy {device.get('cupy')}; {date}.", "",
             f"Reproduce: `{command}`", "",
             f"Kernel and SDPA flash/cuDNN columns: CUDA events per launch. {WALL_NOTE[0].upper() + WALL_NOTE[1:]}.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cols(r, peak)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def bench_spec(label: str, spec, shape: Shape, causal: bool = False, with_sdpa: bool = True, seed: int = 0) -> BenchRow:
    """One row for a spec'd kernel as written (kernels/spec.py): its own launch, timed with the
    same events as flashcore_fused's, beside SDPA on the same inputs (converted to [B, H, S, D]
    at the kernel's dtype: SDPA's flash and cuDNN backends take fp16/bf16 only, so an fp32 kernel
    shows '-' there). The outputs are not reset between timed launches: a kernel that keeps
    state in l and m does the same work whatever it finds there, and the reset is not its cost."""
    import cupy as cp
    from harness.run import asis
    from harness.toolchain import user_kernel
    from harness.toolchain.device import runtime_arch
    from harness.toolchain.user_kernel import UserVariant
    spec.check_domain(shape.B, shape.H, shape.Sq, shape.Sk, shape.D, causal)
    variant = UserVariant(spec, "full", shape.D, causal, (), runtime_arch())
    in_dtype = spec.buffer_dtype(spec.role_arg("q"))
    host = asis.spec_inputs(spec, shape, "randn", seed)
    launch = asis.build_launch(variant, shape, 1.0 / math.sqrt(shape.D), host)
    launch.run(variant.label)    # compile, check it runs (a fault or hang is the verdict, not a time)

    def fn():
        launch.fn(launch.grid, launch.block, launch.args, shared_mem=launch.smem)
    t = do_bench(fn, flush_l2=_fits_l2(shape))
    cp.cuda.runtime.deviceSynchronize()
    row = BenchRow(label, shape, causal, "full", t, shape.flops(causal),
                   resources=user_kernel.resources(variant, launch.smem),
                   nwarps=int(np.prod(launch.block)) // 32)
    row.tiles = {"block_m": spec.block_m, "block_n": spec.block_n, "grid": list(launch.grid), "block": list(launch.block)}
    if with_sdpa and in_dtype in ("float16", "bfloat16"):
        q, k, v = (cp.asarray(host[x].astype(np.float32)).astype(cp.float16 if in_dtype == "float16" else cp.float32)
                   for x in "qkv")
        if in_dtype == "bfloat16":
            import torch
            q, k, v = (torch.from_dlpack(x).to(torch.bfloat16) for x in (q, k, v))
        row.sdpa = _sdpa_timings(shape, causal, q, k, v)
    return row
