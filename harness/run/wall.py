"""What a Python caller pays per call of forward() or SDPA (issue "Product latency").

Per function, `rounds` rounds of three loops of n calls each (measure() says which):
* plain: n calls from a Python loop, one synchronisation at the end. Wall time / n is what the
  caller waits per call; the time to *enqueue* the n calls (the loop before its
  synchronisation) / n is the host time per call, the Python and driver cost alone.
* queued: the same calls behind a spin kernel, a CUDA-event pair around each, so that the GPU
  runs them back to back whatever the host's pace: the median span is the kernel's own time
  (all of the function's kernels).
* in-loop: the calls bracketed by events as the host issues them.
Reported: medians over rounds of wall, host and kernel time, and wall - kernel: the time per
call the caller pays beyond the kernel.

Why rounds and not bench's kernel column: the GPU's clocks follow its recent load. On the
H200 at 2x16x8192 d128 one launch takes 3104 us after a rest, 3255 us in a loop that follows a
30 ms rest, and 3290-3330 us in a loop that follows no rest (scripts/profile_forward.py). The
kernel column is taken early, at the higher clocks, so wall minus that column measures the
clocks, not the caller's cost. Even two loops side by side differ: at that shape one 264 ms loop's wall minus
the next loop's kernel time scatters by +-90 us from round to round. So where the kernel
outlasts the host's call, wall - kernel is read inside one loop (in-loop); where the host is
the bottleneck and clocks matter little, from two loops side by side (paired). Every loop starts
after the same short rest of the GPU: the spin's length, sized to cover the enqueueing of the
queued loop (the others sleep as long before they start).
"""

from __future__ import annotations

import functools
import statistics
import time

WALL_CALLS = 300          # the loop: 300 calls, one synchronisation
WALL_BUDGET_S = 0.25      # fewer calls where the kernel is long (one loop at most about this)
WALL_ROUNDS = 5           # at least; up to MAX_ROUNDS while they fit ROUNDS_BUDGET_S
MAX_ROUNDS = 15
ROUNDS_BUDGET_S = 1.0
QUEUED_MAX = 200          # launches queued behind the spin: well inside the driver's queue
EVENTS_HOST_US = 5.0      # the host cost of the two event records around a queued call
SPIN_MARGIN = 1.5

# Waits on the global nanosecond timer, not the SM clock (which is what varies).
_SPIN_SRC = r"""
extern "C" __global__ void flashcore_spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
"""


def wall_calls(kernel_us: float) -> int:
    return int(min(WALL_CALLS, max(20, WALL_BUDGET_S * 1e6 / max(kernel_us, 1e-3))))


def rest_s(n: int, host_us: float) -> float:
    """The GPU's rest before each loop: long enough to enqueue the kernel loop behind the spin."""
    return (min(n, QUEUED_MAX) * (host_us + EVENTS_HOST_US) * SPIN_MARGIN + 100.0) * 1e-6


def _rest(sync, rest: float):
    """Let the GPU finish, then stay idle for `rest` seconds."""
    sync()
    if rest:
        time.sleep(rest)


def loop_times(fn, sync, n: int, rest: float = 0.0) -> tuple[float, float]:
    """(wall, host) microseconds per call of n calls of fn from a Python loop, one sync();
    the GPU idle for `rest` seconds before the loop starts."""
    _rest(sync, rest)
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


def event_loop(fn, sync, n: int, rest: float, queued: bool) -> tuple[float, list]:
    """n calls of fn, a CUDA-event pair around each on CuPy's current stream (the caller's
    functions must launch on it: wall_times checks). Returns (wall us per call, spans in us).
    queued: the calls wait behind a spin kernel of `rest` seconds, so the GPU runs them back to
    back whatever the host's pace (n at most QUEUED_MAX); else the GPU rests `rest` seconds and
    the calls run as the host issues them."""
    import cupy as cp
    import numpy as np
    if queued:
        n = min(n, QUEUED_MAX)
    evs = [(cp.cuda.Event(), cp.cuda.Event()) for _ in range(n)]
    if queued:
        _spin_kernel()((1,), (1,), (np.uint64(int(rest * 1e9)),))
    else:
        _rest(sync, rest)
    t0 = time.perf_counter()
    for s, e in evs:
        s.record()
        fn()
        e.record()
    evs[-1][1].synchronize()
    wall = (time.perf_counter() - t0) / n * 1e6
    return wall, [cp.cuda.get_elapsed_time(s, e) * 1e3 for s, e in evs]


def _round(fn, sync, n: int, rest: float, r: int, events) -> dict:
    """One round's three loops, in an order that alternates with r."""
    out = {}
    steps = ["plain", "queued", "in_loop"]
    for step in (steps if r % 2 == 0 else steps[::-1]):
        if step == "plain":
            out["wall"], out["host"] = loop_times(fn, sync, n, rest)
        elif step == "queued":
            out["kernel"] = statistics.median(events(fn, sync, n, rest, True)[1])
        else:
            w, spans = events(fn, sync, n, rest, False)
            out["excess_in_loop"] = w - statistics.fmean(spans)
    out["excess_paired"] = out["wall"] - out["kernel"]
    return out


def _summary(rows: list, n: int) -> dict:
    m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    gpu_bound = m["host"] + EVENTS_HOST_US < m["kernel"] / 2
    m["method"] = "in-loop" if gpu_bound else "paired"
    m["excess"] = m["excess_in_loop"] if gpu_bound else m["excess_paired"]
    return m | {"n": n, "rounds": len(rows), "per_round": rows}


def wall_rounds(n: int, kernel_us: float) -> int:
    """More rounds where they are cheap (short kernels, where the host's pace varies most)."""
    return int(min(MAX_ROUNDS, max(WALL_ROUNDS, ROUNDS_BUDGET_S * 1e6 / (3 * n * max(kernel_us, 1e-3)))))


def measure_all(fns: dict, sync, n: int, rounds: int = WALL_ROUNDS, events=event_loop, warmup: int = 10) -> dict:
    """measure() of several functions whose rounds interleave (round r of each, in an order
    that alternates with r), so that their comparison sees one state of the host and the GPU:
    the host's pace drifts by a third between stretches of tens of milliseconds on a lent
    machine, which two measure() calls one after the other would read as a difference."""
    rests = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        _, host = loop_times(fn, sync, min(n, 20))
        rests[name] = rest_s(n, host)     # one rest before every loop of fn, so that each starts alike
    rows = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            rows[name].append(_round(fns[name], sync, n, rests[name], r, events))
    return {name: _summary(rows[name], n) for name in fns}


def measure(fn, sync, n: int, rounds: int = WALL_ROUNDS, events=event_loop, warmup: int = 10) -> dict:
    """Per round three loops of n calls, in an order that alternates from round to round:
    * plain: wall and host time per call (loop_times), what the caller pays;
    * queued: the kernel's own time, the median event span behind a spin;
    * in-loop: calls bracketed by events as the host issues them.
    Returned (us per call, medians over rounds): wall, host, kernel, and excess = wall - kernel
    by one of two methods, named in "method":
    * "in-loop" where the GPU outpaces nothing (host + events < kernel / 2): the GPU runs the
      kernels back to back, each span is one kernel, and the loop's wall minus its mean span is
      the caller's cost beyond the kernel at exactly that loop's clocks;
    * "paired" otherwise (the host is the bottleneck, so the spans would hold its waits): the
      plain loop's wall minus the queued kernel time of the same round.
    Both are kept ("excess_in_loop", "excess_paired")."""
    return measure_all({"fn": fn}, sync, n, rounds, events, warmup)["fn"]


def _torch_cuda():
    try:
        import torch
    except Exception:
        return None
    return torch if torch.cuda.is_available() else None


def wall_times(forward, causal: bool, q, k, v, n: int, with_sdpa: bool = True, kernel_us: float | None = None) -> dict:
    """measure() of forward() on torch tensors (CuPy arrays where there is no torch with CUDA)
    and of SDPA's default backend on the same tensors, their rounds interleaved (measure_all):
    {"inputs", "forward", "sdpa"}. kernel_us (the kernel's time, if known) sets the rounds."""
    import cupy as cp
    rounds = wall_rounds(n, kernel_us) if kernel_us else WALL_ROUNDS
    torch = _torch_cuda()
    if torch is None:
        return {"inputs": "cupy",
                "forward": measure(lambda: forward(q, k, v, causal=causal), cp.cuda.Device().synchronize, n, rounds)}
    if torch.cuda.current_stream().cuda_stream != cp.cuda.get_current_stream().ptr:
        raise RuntimeError("wall_times: torch's and CuPy's current streams differ; the kernel loop would time the wrong stream")
    tq, tk, tv = (torch.from_dlpack(x) for x in (q, k, v))
    fns = {"forward": lambda: forward(tq, tk, tv, causal=causal)}
    if with_sdpa:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        fns["sdpa"] = lambda: sdpa(tq, tk, tv, is_causal=causal)
    return {"inputs": "torch", **measure_all(fns, torch.cuda.synchronize, n, rounds)}
