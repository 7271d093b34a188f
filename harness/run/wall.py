"""What a Python caller pays per call of forward() or SDPA (issue "Product latency").

Per function, `rounds` rounds of two loops of n calls each, in alternating order:
* wall loop: n calls from a Python loop, one synchronisation at the end. Wall time / n is what
  the caller waits per call; the time to *enqueue* the n calls (the loop before its
  synchronisation) / n is the host time per call, the Python and driver cost alone.
* kernel loop: the same n calls queued behind a spin kernel, a CUDA-event pair around each,
  so that the GPU runs them back to back whatever the host's pace: the median is the kernel's
  own time (all of the function's kernels) at the clocks of that moment.
Reported: the medians over rounds of wall, host and kernel time, and of (wall - kernel) taken
round by round: the time per call the caller pays beyond the kernel.

Why rounds and not bench's kernel column: a long kernel run back to back lowers the GPU's
clocks (H200, 2x16x8192 d128: 3095 us per launch at first, 3260-3320 us after two seconds,
scripts/profile_forward.py). The kernel column is taken early, at the higher clocks; a wall
loop after it runs at lower ones, so wall minus that column measures the clocks, not the
caller's cost. Pairing each wall loop with a kernel loop next to it compares at one clock.
"""

from __future__ import annotations

import functools
import statistics
import time

WALL_CALLS = 300          # the loop: 300 calls, one synchronisation
WALL_BUDGET_S = 0.25      # fewer calls where the kernel is long (one loop at most about this)
WALL_ROUNDS = 5
QUEUED_MAX = 200          # launches queued behind the spin: well inside the driver's queue
SPIN_CYCLES = 40_000_000  # 20-40 ms at 1-2 GHz: longer than enqueueing QUEUED_MAX calls

_SPIN_SRC = r"""
extern "C" __global__ void flashcore_spin(long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
}
"""


def wall_calls(kernel_us: float) -> int:
    return int(min(WALL_CALLS, max(20, WALL_BUDGET_S * 1e6 / max(kernel_us, 1e-3))))


def loop_times(fn, sync, n: int) -> tuple[float, float]:
    """(wall, host) microseconds per call of n calls of fn from a Python loop, one sync()."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    sync()
    t2 = time.perf_counter()
    return (t2 - t0) / n * 1e6, (t1 - t0) / n * 1e6


@functools.lru_cache(maxsize=None)
def _spin_kernel():
    import cupy as cp
    return cp.RawKernel(_SPIN_SRC, "flashcore_spin")


def queued_kernel_us(fn, n: int) -> float:
    """Median CUDA-event time (us) of n calls of fn queued behind a spin kernel on CuPy's
    current stream (the caller's functions must launch on that stream: bench checks it)."""
    import cupy as cp
    import numpy as np
    n = min(n, QUEUED_MAX)
    evs = [(cp.cuda.Event(), cp.cuda.Event()) for _ in range(n)]
    _spin_kernel()((1,), (1,), (np.int64(SPIN_CYCLES),))
    for s, e in evs:
        s.record()
        fn()
        e.record()
    evs[-1][1].synchronize()
    return statistics.median(cp.cuda.get_elapsed_time(s, e) for s, e in evs) * 1e3


def measure(fn, sync, n: int, rounds: int = WALL_ROUNDS, kernel_us=queued_kernel_us, warmup: int = 10) -> dict:
    """{wall, host, kernel, excess} in microseconds per call (medians over rounds; excess is
    the median of wall - kernel taken round by round)."""
    for _ in range(warmup):
        fn()
    sync()
    walls, hosts, kernels, excess = [], [], [], []
    for r in range(rounds):
        if r % 2:
            k = kernel_us(fn, n)
            w, h = loop_times(fn, sync, n)
        else:
            w, h = loop_times(fn, sync, n)
            k = kernel_us(fn, n)
        walls.append(w), hosts.append(h), kernels.append(k), excess.append(w - k)
    med = statistics.median
    return {"wall": med(walls), "host": med(hosts), "kernel": med(kernels), "excess": med(excess), "n": n,
            "rounds": rounds}


def _torch_cuda():
    try:
        import torch
    except Exception:
        return None
    return torch if torch.cuda.is_available() else None


def wall_times(forward, causal: bool, q, k, v, n: int, with_sdpa: bool = True) -> dict:
    """measure() of forward() on torch tensors (CuPy arrays where there is no torch with CUDA)
    and of SDPA's default backend on the same tensors: {"inputs", "forward", "sdpa"}."""
    import cupy as cp
    torch = _torch_cuda()
    if torch is None:
        return {"inputs": "cupy",
                "forward": measure(lambda: forward(q, k, v, causal=causal), cp.cuda.Device().synchronize, n)}
    if torch.cuda.current_stream().cuda_stream != cp.cuda.get_current_stream().ptr:
        raise RuntimeError("wall_times: torch's and CuPy's current streams differ; the kernel loop would time the wrong stream")
    tq, tk, tv = (torch.from_dlpack(x) for x in (q, k, v))
    out = {"inputs": "torch", "forward": measure(lambda: forward(tq, tk, tv, causal=causal), torch.cuda.synchronize, n)}
    if with_sdpa:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        out["sdpa"] = measure(lambda: sdpa(tq, tk, tv, is_causal=causal), torch.cuda.synchronize, n)
    return out
