"""GPU tests of the product path, one per claim of README's "Python API": forward() agrees with
SDPA and between torch and CuPy; its per-call path touches no file, hash or device query on real
tensors; it runs on the caller's current stream; it can be captured in a CUDA graph; torch.compile
(fullgraph, and with CUDA graphs) traces through the custom op; opcheck passes; reload() recompiles;
bad CUDA inputs are one-line UsageErrors."""

import math

import numpy as np
import pytest

from harness import api
from harness.check.inputs import fresh_seed, make_inputs
from harness.check.shapes import Shape
from harness.errors import UsageError
from tests.test_api import guard

pytestmark = pytest.mark.gpu

MISSION = Shape(1, 8, 512, 512, 64)
ODD = Shape(2, 3, 77, 131, 128)
# large enough for forward() to launch the sm_90a kernel on a Hopper GPU (kernels/registry.py's
# product_when), with tails in both lengths and Sq != Sk
LARGE = [Shape(2, 4, 1000, 1300, 128), Shape(1, 8, 1025, 1023, 64)]


def _torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


def _inputs(torch, shape, seed=None):
    q, k, v = make_inputs(shape, "randn", fresh_seed() if seed is None else seed)
    return tuple(torch.from_numpy(x).cuda() for x in (q, k, v))


def _sdpa(torch, q, k, v, causal=False, scale=None):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


def _close_to_sdpa(torch, o, q, k, v, causal=False, scale=None):
    """Same tolerance rule as the suite's SDPA check, against float64 attention."""
    from harness.check import metrics as met
    from harness.check import stages
    qn, kn, vn = (x.cpu().numpy() for x in (q, k, v))
    s = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    exact, _ = stages.stage_references("full", qn, kn, vn, causal, s, 64, {})["O"]
    err_k = met.abs_error(o.cpu().numpy(), exact).max()
    err_s = met.abs_error(_sdpa(torch, q, k, v, causal, scale).cpu().numpy(), exact).max()
    return err_k <= 2 * err_s + met.ATOL_REL * np.abs(exact).max()


@pytest.mark.parametrize("shape,causal", [(MISSION, False), (MISSION, True), (ODD, False), (ODD, True)])
def test_torch_and_cupy_agree_with_sdpa_and_each_other(shape, causal):
    torch = _torch()
    import cupy as cp
    q, k, v = _inputs(torch, shape)
    o, lse = api.forward(q, k, v, causal=causal, lse=True)
    assert isinstance(o, torch.Tensor) and o.dtype == torch.float16 and o.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    assert _close_to_sdpa(torch, o, q, k, v, causal)
    s = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(shape.D)
    if causal:
        s = s.masked_fill(torch.ones(shape.Sq, shape.Sk, device=s.device, dtype=torch.bool).triu(1), float("-inf"))
    assert torch.allclose(lse, torch.logsumexp(s, -1), rtol=1e-4, atol=1e-4)
    oc = api.forward(*(cp.asarray(x) for x in (q, k, v)), causal=causal)
    assert isinstance(oc, cp.ndarray)
    assert torch.equal(torch.from_dlpack(oc), o)        # one kernel, bitwise the same


@pytest.mark.parametrize("shape", LARGE)
@pytest.mark.parametrize("causal", [False, True])
def test_large_problems_launch_the_fastest_kernel_and_agree_with_sdpa(shape, causal):
    """On an H200 forward() launches the sm_90a kernel here (its TMA maps re-encoded when the
    buffers change); elsewhere flashcore_fused. Either way: SDPA's accuracy rule and the LSE,
    for two sets of buffers in a row (the second call's maps are of the new pointers)."""
    torch = _torch()
    from harness.toolchain.device import require_gpu
    arch = require_gpu()["arch"]
    for _ in range(2):
        q, k, v = _inputs(torch, shape)
        o, lse = api.forward(q, k, v, causal=causal, lse=True)
        plan = api._plan(api._KINDS[type(q)], *(api._KINDS[type(q)].meta(x) for x in (q, k, v)), causal)
        assert plan.variant.kernel == ("flashcore_hopper_woel" if arch == "sm_90" else "flashcore_fused")
        assert _close_to_sdpa(torch, o, q, k, v, causal)
        s = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(shape.D)
        if causal:
            s = s.masked_fill(torch.ones(shape.Sq, shape.Sk, device=s.device, dtype=torch.bool).triu(1), float("-inf"))
        assert torch.allclose(lse, torch.logsumexp(s, -1), rtol=1e-4, atol=1e-4)


def test_scale_and_non_contiguous_inputs():
    torch = _torch()
    q, k, v = _inputs(torch, MISSION)
    o = api.forward(q, k, v, scale=0.3)
    assert _close_to_sdpa(torch, o, q, k, v, scale=0.3)
    # [B,S,H,D] storage seen as [B,H,S,D]: forward() copies it contiguous
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert not qt.is_contiguous()
    assert torch.equal(api.forward(qt, kt, vt, scale=0.3), o)


@pytest.mark.parametrize("kind", ["torch", "cupy"])
def test_per_call_path_touches_no_file_hash_or_device_query(kind, monkeypatch):
    torch = _torch()
    import cupy as cp
    q, k, v = _inputs(torch, MISSION)
    if kind == "cupy":
        q, k, v = (cp.asarray(x) for x in (q, k, v))
    calls = [dict(), dict(causal=True), dict(lse=True), dict(causal=True, lse=True, scale=0.2)]
    for kw in calls:                            # set-up: the two variants compile here
        api.forward(q, k, v, **kw)
    with guard(monkeypatch) as seen:
        for _ in range(20):
            for kw in calls:
                api.forward(q, k, v, **kw)
    assert seen == [], seen


def test_runs_on_the_callers_current_stream():
    """The inputs are written on a side stream behind a long sleep; forward() on that stream
    must see them (on any other stream it would read the zeros it started with)."""
    torch = _torch()
    q, k, v = _inputs(torch, MISSION)
    expected = api.forward(q, k, v)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    qz, kz, vz = (torch.zeros_like(x) for x in (q, k, v))
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)          # ~0.1 s of GPU cycles
        for dst, src in ((qz, q), (kz, k), (vz, v)):
            dst.copy_(src)
        o = api.forward(qz, kz, vz)
    torch.cuda.synchronize()
    assert torch.equal(o, expected)


def test_threads_each_get_their_own_inputs_and_outputs():
    """Eight threads call forward() on one plan (one argument block, rewritten per call) with
    their own inputs, 25 times each, on the shared default stream: every output must be its own
    thread's attention (a pointer from another thread would give another's output, or none).
    A new thread also starts without a current CUDA context (the launcher makes one)."""
    import threading
    torch = _torch()
    inputs = [_inputs(torch, MISSION) for _ in range(8)]
    expected = [api.forward(*x) for x in inputs]
    torch.cuda.synchronize()
    results, errors = {}, []

    def work(i):
        try:
            results[i] = [api.forward(*inputs[i]) for _ in range(25)]
        except Exception as e:       # noqa: BLE001 - reported below
            errors.append(f"thread {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.cuda.synchronize()
    assert errors == []
    bad = [(i, j) for i in range(8) for j, o in enumerate(results[i]) if not torch.equal(o, expected[i])]
    assert bad == []


def test_cupy_arrays_run_on_cupys_current_stream():
    """As above for CuPy: the inputs are written on a non-blocking stream behind a 0.1 s spin;
    forward() under that stream must see them (on the null stream it would read zeros)."""
    import cupy as cp
    from harness.run.wall import _spin_kernel
    q, k, v = (cp.asarray(x) for x in make_inputs(MISSION, "randn", fresh_seed()))
    expected = api.forward(q, k, v)
    zeros = [cp.zeros_like(x) for x in (q, k, v)]
    cp.cuda.Device().synchronize()
    with cp.cuda.Stream(non_blocking=True):
        _spin_kernel()((1,), (1,), (np.uint64(100_000_000),))     # 0.1 s
        for dst, src in zip(zeros, (q, k, v)):
            dst[...] = src
        o = api.forward(*zeros)
    cp.cuda.Device().synchronize()
    assert cp.array_equal(o, expected)


@pytest.mark.parametrize("shape", [MISSION, LARGE[0]])
def test_cuda_graph_capture_and_replay(shape):
    torch = _torch()
    q, k, v = _inputs(torch, shape)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):               # warm-up (compiles) outside the capture, as torch asks
        api.forward(q, k, v, causal=True)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        o_graph = api.forward(q, k, v, causal=True)
    q2, k2, v2 = _inputs(torch, shape)
    for dst, src in ((q, q2), (k, k2), (v, v2)):
        dst.copy_(src)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(o_graph, api.forward(q2, k2, v2, causal=True))


# The counter kernels' shapes: a large non-causal problem of up to 2048 keys, at D = 64 version 21's
# (kernels/registry.py IO_WHEN), at D = 128 version 22's (IOW_WHEN)
DYN = Shape(8, 8, 1100, 1000, 64)   # B*H*Sq*Sk = 70.4M
IOW = Shape(4, 8, 1200, 1900, 128)  # 73.0M
COUNTER_SHAPES = [(DYN, "flashcore_hopper_io"), (IOW, "flashcore_hopper_iow")]


def _dyn_expected(torch, q, k, v, kernel="flashcore_hopper_io"):
    """forward()'s output alone on the device, after checking it launched `kernel` (on an H200)
    and against float64 attention by SDPA's rule (float64 on the GPU)."""
    from harness.check import metrics as met
    from harness.toolchain.device import require_gpu
    o = api.forward(q, k, v)
    kind = api._KINDS[type(q)]
    plan = api._plan(kind, *(kind.meta(x) for x in (q, k, v)), False)
    if require_gpu()["arch"] == "sm_90":
        assert plan.variant.kernel == kernel and plan.ring is not None
    p = torch.softmax((q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1]), -1)
    exact = p @ v.double()
    err_k = (o.double() - exact).abs().max().item()
    err_s = (_sdpa(torch, q, k, v).double() - exact).abs().max().item()
    assert err_k <= 2 * err_s + met.ATOL_REL * exact.abs().max().item(), (err_k, err_s)
    torch.cuda.synchronize()
    return o


def _poison_cache(torch, like, n=16):
    """Leave torch's cached blocks of this size full of NaN, so that an output row a launch
    never wrote reads NaN (not an earlier call's right answer)."""
    junk = [torch.full_like(like, float("nan")) for _ in range(n)]
    torch.cuda.synchronize()
    del junk


@pytest.mark.parametrize("shape,kernel", COUNTER_SHAPES, ids=["io", "iow"])
def test_counter_kernel_calls_on_two_streams_at_once_each_take_all_their_items(shape, kernel):
    """Versions 21 and 22 take work items from a counter: forward() gives each call a word of its own, so
    calls running at once on two streams never take each other's items. Eight calls alternate
    between two streams with no wait between them; each output must equal, bitwise, its inputs'
    output computed alone (a shared counter would leave some rows unwritten: NaN here)."""
    torch = _torch()
    inputs = [_inputs(torch, shape) for _ in range(2)]
    expected = [_dyn_expected(torch, *x, kernel=kernel) for x in inputs]
    streams = [torch.cuda.Stream() for _ in range(2)]
    _poison_cache(torch, expected[0])
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    outs = []
    for i in range(8):
        with torch.cuda.stream(streams[i % 2]):
            outs.append((i % 2, api.forward(*inputs[i % 2])))
    torch.cuda.synchronize()
    bad = [(i, w) for i, (w, o) in enumerate(outs) if not torch.equal(o, expected[w])]
    assert bad == []


def test_counter_kernel_graph_replays_beside_eager_calls():
    """A captured call takes its word from the graph's memory, not the ring: replaying the graph
    on one stream while eager calls of the same plan run on another gives both their outputs."""
    torch = _torch()
    q, k, v = _inputs(torch, DYN)
    q2, k2, v2 = _inputs(torch, DYN)
    expected, expected2 = _dyn_expected(torch, q, k, v), _dyn_expected(torch, q2, k2, v2)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        o_graph = api.forward(q, k, v)
    o_graph.fill_(float("nan"))                 # the graph's own output buffer, before any replay
    torch.cuda.synchronize()
    _poison_cache(torch, expected)
    a, b = torch.cuda.Stream(), torch.cuda.Stream()
    a.wait_stream(torch.cuda.current_stream())
    b.wait_stream(torch.cuda.current_stream())
    eager = []
    for _ in range(4):
        with torch.cuda.stream(a):
            g.replay()
        with torch.cuda.stream(b):
            eager.append(api.forward(q2, k2, v2))
    torch.cuda.synchronize()
    assert torch.equal(o_graph, expected)
    assert all(torch.equal(o, expected2) for o in eager)


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_torch_compile_fullgraph(mode):
    """torch.compile traces forward() into flashcore::attention with no graph break (fullgraph);
    reduce-overhead also captures it in inductor's CUDA graphs."""
    torch = _torch()
    q, k, v = _inputs(torch, ODD)

    def f(q, k, v):
        o, lse = api.forward(q, k, v, causal=True, lse=True)
        return o * 2, lse + 1

    compiled = torch.compile(f, fullgraph=True, mode=mode)
    for _ in range(3):                           # reduce-overhead records on a later call
        o, lse = compiled(q, k, v)
    eo, else_ = f(q, k, v)
    torch.cuda.synchronize()
    assert torch.equal(o, eo) and torch.equal(lse, else_)


def test_opcheck():
    torch = _torch()
    ops = api.register_torch_ops()
    q, k, v = _inputs(torch, ODD)
    torch.library.opcheck(ops.attention.default, (q, k, v, True, None))
    torch.library.opcheck(ops.attention_lse.default, (q, k, v, False, 0.2))


def test_reload_recompiles_and_agrees():
    torch = _torch()
    q, k, v = _inputs(torch, MISSION)
    o = api.forward(q, k, v)
    api.reload()
    assert api._FUNCTIONS == {} and api._SOURCES == {}
    assert torch.equal(api.forward(q, k, v), o)
    assert len(api._FUNCTIONS) == 1 and len(api._SOURCES) == 1


def test_bad_cuda_inputs_are_one_line_usage_errors():
    torch = _torch()
    import cupy as cp
    q, k, v = _inputs(torch, MISSION)
    bad = [((q.float(), k, v), "q: dtype float32"),
           ((q, k.bfloat16(), v), "k: dtype bfloat16"),
           ((q, k[:, :, :, :32].contiguous(), v), "shapes do not match"),
           ((q[:, :, :0], k, v), "zero-size"),
           ((q, k.cpu(), v), "k: a tensor on cpu"),
           ((cp.asarray(q).astype(cp.float32), cp.asarray(k), cp.asarray(v)), "q: dtype float32"),
           ((q, cp.asarray(k), v), "different kinds")]
    if torch.cuda.device_count() > 1:
        bad.append(((q, k.to("cuda:1"), v), "different devices"))
    for args, needle in bad:
        with pytest.raises(UsageError) as e:
            api.forward(*args)
        assert needle in str(e.value) and "\n" not in str(e.value)


def test_second_device_when_present():
    torch = _torch()
    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU")
    q, k, v = _inputs(torch, MISSION)
    o0 = api.forward(q, k, v)
    o1 = api.forward(*(x.to("cuda:1") for x in (q, k, v)))
    assert o1.device.index == 1 and torch.equal(o1.cpu(), o0.cpu())


def test_bench_reports_wall_per_call_of_forward_and_sdpa():
    """The bench's wall columns come from real loops on torch tensors, into the table."""
    _torch()
    from harness.run import bench
    row = bench.bench_one("mission", MISSION, forward=api.forward)
    assert row.wall["inputs"] == "torch"
    for fn in ("forward", "sdpa"):
        m = row.wall[fn]
        assert 0 < m["host"] <= m["wall"] and m["kernel"] > 0 and math.isfinite(m["excess"]), (fn, m)
    md = bench.markdown([row], {"device": "gpu"}, "today", "flashcore bench")
    assert f"{row.wall['forward']['wall']:.1f}" in md
