"""Where forward()'s per-call host time goes (issue "Product latency"), on a GPU with torch.

Host cost per call = the time a loop of N calls takes to *enqueue* (before the one
synchronisation), at a shape whose kernel is much longer than any host cost, so that the GPU
never holds the loop back. Each piece of forward()'s per-call path is timed the same way,
alone. Then, at the mission shape and a long one, wall.measure's rounds (what `flashcore bench`
reports) printed one by one for forward() and SDPA, and the kernel's time before the GPU has run
two seconds back to back, to show the clocks drop (harness/run/wall.py says why that matters).

    python scripts/profile_forward.py [--shape 4,16,2048,128] [--calls 100] [--rounds 5]
"""

from __future__ import annotations

import statistics
import time

import click


def host_us(fn, n: int, sync) -> float:
    """Median over 5 loops of the enqueue time per call (us): wall.loop_times' host figure."""
    from harness.run.wall import loop_times
    for _ in range(5):
        fn()
    return statistics.median(loop_times(fn, sync, n)[1] for _ in range(5))


@click.command()
@click.option("--shape", default="4,16,2048,128", help="B,H,S,D of the host-cost table")
@click.option("--calls", default=100, show_default=True)
@click.option("--rounds", default=5, show_default=True, help="wall.measure rounds, each printed")
@click.option("--sustained", default="2,16,8192,128", show_default=True,
              help="a long B,H,S,D measured like the mission shape ('' skips)")
def main(shape, calls, rounds, sustained):
    import torch
    import cupy as cp
    from harness import api

    B, H, S, D = map(int, shape.split(","))
    sync = torch.cuda.synchronize
    tq, tk, tv = (torch.randn(B, H, S, D, device="cuda", dtype=torch.float16) for _ in range(3))
    api.forward(tq, tk, tv)
    sync()
    kind = api._KINDS[torch.Tensor]
    plan = api._plan(kind, kind.meta(tq), kind.meta(tk), kind.meta(tv), False)
    o = tq.new_empty(tq.shape)
    args = api.kernel_args(tq.data_ptr(), tk.data_ptr(), tv.data_ptr(), o.data_ptr(), 0, plan.H, plan.Sq, plan.Sk, plan.scale)
    sptr = kind.stream_ptr(plan.device)
    cupy_stream = cp.cuda.ExternalStream(sptr) if sptr else cp.cuda.Stream.null
    ptrs = (tq.data_ptr(), tk.data_ptr(), tv.data_ptr(), o.data_ptr(), 0)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    cq, ck, cv = (cp.from_dlpack(x) for x in (tq, tk, tv))

    pieces = {
        "forward(torch)": lambda: api.forward(tq, tk, tv),
        "forward(cupy)": lambda: api.forward(cq, ck, cv),
        "SDPA default": lambda: sdpa(tq, tk, tv),
        "CuPy RawKernel call (17 args)": lambda: plan.fn(plan.grid, plan.block, args, shared_mem=plan.smem,
                                                         stream=cupy_stream),
        "plan.launcher (packed block)": lambda: plan.launcher(ptrs, plan.scale, sptr),
        "  meta x3 + plan lookup": lambda: api._plan(kind, kind.meta(tq), kind.meta(tk), kind.meta(tv), False),
        "  contiguous x3": lambda: (tq.contiguous(), tk.contiguous(), tv.contiguous()),
        "  output new_empty": lambda: tq.new_empty(plan.o_shape),
        "  stream_ptr": lambda: kind.stream_ptr(plan.device),
        "  current_device": lambda: kind.current_device(),
        "  data_ptr x4": lambda: (tq.data_ptr(), tk.data_ptr(), tv.data_ptr(), o.data_ptr()),
    }
    print(f"host us per call at {shape} (enqueue time of {calls} calls, median of 5 loops):")
    for name, f in pieces.items():
        print(f"  {name:32s} {host_us(f, calls, sync):7.2f}")

    # mission shape and a long one: wall.measure (what bench reports), forward() and SDPA
    for shp in ("1,8,512,64",) + ((sustained,) if sustained else ()):
        rounds_at(shp, rounds)


def rounds_at(shape: str, rounds: int):
    """forward() and SDPA through wall.measure, every round printed; the kernel's event time
    first taken after a rest (before two seconds of back-to-back launches): the clocks drop."""
    import torch
    from harness import api
    from harness.run import wall
    B, H, S, D = map(int, shape.split(","))
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.float16) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    fns = {"forward": lambda: api.forward(q, k, v), "sdpa": lambda: sdpa(q, k, v)}
    fns["forward"]()
    cold = statistics.median(wall.event_loop(fns["forward"], torch.cuda.synchronize, 20, 0.01, True)[1])
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        fns["forward"]()
        torch.cuda.synchronize()
    n = wall.wall_calls(cold)
    print(f"{shape}: forward()'s kernel before the warm-up {cold:.1f} us; {n} calls a loop")
    for name, m in wall.measure_all(fns, torch.cuda.synchronize, n, rounds=rounds).items():
        print(f"  {name}: wall {m['wall']:.1f}, host {m['host']:.1f}, kernel {m['kernel']:.1f} us; "
              f"excess {m['excess']:+.1f} ({m['method']})")
        for key in ("wall", "kernel", "host", "excess_paired", "excess_in_loop"):
            print(f"    {key:15s} by round: " + " ".join(f"{r[key]:8.1f}" for r in m["per_round"]))


if __name__ == "__main__":
    main()
