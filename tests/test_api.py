"""The product path on CPU: forward()'s per-call path reads no file, hashes nothing and queries
no device (a fake array kind stands in for torch/CuPy and a stub for the compiled kernel, so
everything between the call and the launch is the real code); set-up is cached per variant and
undone by reload(); the kernel's argument tuple; every bad input is a one-line UsageError.
Where torch is installed: CPU tensors are refused in one line, and torch's tracer goes through
forward() into the custom op (no GPU needed: fake CUDA tensors)."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import shutil
import struct
import sys

import numpy as np
import pytest

from debug_modes.registry import KERNEL_PARAMS
from harness import api
from harness.toolchain import compiler, counter, loader, tma
from harness.toolchain import device as _device
from harness.toolchain.launcher import Launcher
from harness.toolchain.variant import Variant, tiles_for
from harness.check.shapes import SUPPORTED_HEAD_DIMS, Shape
from harness.errors import UsageError


# ------------------------------------------------------------------ a fake array kind
class FakeArray:
    def __init__(self, shape, dtype="float16", device=0):
        self.shape, self.dtype, self.device = tuple(shape), dtype, device


class FakeKind(api._CudaKind):
    """Metadata like torch's, a recorded launch instead of a kernel, no CUDA calls."""

    def __init__(self):
        self.launches = []

    def meta(self, x):
        return (x.shape, x.dtype, x.device)

    def dtype_name(self, dtype):
        return dtype

    def device_index(self, dev):
        return None if dev == "cpu" else dev

    def device_label(self, dev):
        return "cpu" if dev == "cpu" else f"cuda:{dev}"

    def on_device(self, device):
        return contextlib.nullcontext()

    def current_device(self):
        return 0

    def contiguous(self, x):
        return x

    def empty(self, like, shape, dtype):
        return FakeArray(shape, dtype, like.device)

    def ptr(self, x):
        return id(x)

    def launch(self, plan, ptrs, scale):
        # what the real launcher's argument block holds for this call, read back as the driver reads it
        word = self.counter_word(plan)[0] if plan.ring is not None else 0
        self.launches.append((plan, plan.launcher.values(ptrs, scale, word)))


class FakeRing:
    """counter.Ring's take() over a made-up base address: no device memory."""

    def __init__(self, device):
        self.device, self.base, self.taken = device, 0x7000_0000 + 0x10_0000 * device, 0

    def take(self):
        self.taken += 1
        return self.base + 8 * ((self.taken - 1) % counter.RING_SLOTS)


@pytest.fixture
def fake(monkeypatch):
    """forward() on FakeArrays: the kernel source is really read and hashed on a miss, the
    compile step and the device query are stubs that count their calls."""
    kind = FakeKind()
    kind.compiled = []
    kind.facts = []
    monkeypatch.setitem(api._KINDS, FakeArray, kind)

    def compile_function(variant, source):
        kind.compiled.append((variant, source.options(variant)))
        return f"fn:{variant.label}"

    def device_facts(device_id):
        kind.facts.append(device_id)
        return {"arch": kind.arch, "sms": 132}

    def encode_into(self, addr, ptr):
        # a stand-in map: the tensor's address and the geometry, where the driver writes its 128 bytes
        kind.encodes.append((ptr, self.geometry))
        raw = struct.pack("<5Q", ptr, *self.geometry).ljust(128, b"\0")
        ctypes.memmove(addr, raw, 128)

    kind.encodes = []
    kind.rings = {}
    kind.arch = "sm_90"
    monkeypatch.setattr(counter, "ring", lambda cp, device: kind.rings.setdefault(device, FakeRing(device)))
    monkeypatch.setattr(_device, "cupy", lambda: None)
    monkeypatch.setattr(loader, "compile_function", compile_function)
    monkeypatch.setattr(_device, "device_facts", device_facts)
    monkeypatch.setattr(tma.TiledMap, "encode_into", encode_into)
    api.reload()
    yield kind
    api.reload()


def qkv(B=1, H=8, Sq=512, Sk=None, D=64, dtype="float16", device=0):
    Sk = Sq if Sk is None else Sk
    return (FakeArray((B, H, Sq, D), dtype, device), FakeArray((B, H, Sk, D), dtype, device),
            FakeArray((B, H, Sk, D), dtype, device))


# ------------------------------------------------------------------ the per-call path
_WATCH: list | None = None   # events seen while a guard is on; None: no guard
_AUDITED = ("open", "os.listdir", "os.scandir", "glob.glob", "subprocess.Popen", "os.system")


def _audit(event, args):
    if _WATCH is not None and event in _AUDITED:
        _WATCH.append(f"{event} {args[0] if args else ''}")


sys.addaudithook(_audit)   # audit hooks cannot be removed: this one only records while a guard is on


@contextlib.contextmanager
def guard(monkeypatch):
    """Records every file opened or listed, every hash computed, every stat and every device
    query while on; yields the list of what was seen."""
    global _WATCH
    seen: list = []

    def spy(name, fn):
        def wrapped(*a, **kw):
            seen.append(name)
            return fn(*a, **kw)
        return wrapped

    with monkeypatch.context() as m:
        for name in ("sha256", "sha1", "md5", "blake2b", "new"):
            m.setattr(hashlib, name, spy(f"hashlib.{name}", getattr(hashlib, name)))
        m.setattr(os, "stat", spy("os.stat", os.stat))
        m.setattr(_device, "require_gpu", spy("require_gpu", _device.require_gpu))
        m.setattr(_device, "device_facts", spy("device_facts", _device.device_facts))
        _WATCH = seen
        try:
            yield seen
        finally:
            _WATCH = None


def test_per_call_path_reads_no_file_hashes_nothing_queries_no_device(fake, monkeypatch):
    from harness.toolchain import compiler
    monkeypatch.setattr(compiler, "_HASHES", {})   # hashed afresh, as in a new process
    with guard(monkeypatch) as first:
        api.forward(*qkv())
    # The guard sees the set-up: the first call reads and hashes the kernel (else this test
    # could not fail).
    assert any(e.startswith("open") for e in first) and "hashlib.sha256" in first and "device_facts" in first
    with guard(monkeypatch) as later:
        for _ in range(3):
            api.forward(*qkv())
            api.forward(*qkv(), lse=True, scale=0.1)
        # a new shape with the same variant: a new launch plan, the same compiled function
        api.forward(*qkv(Sq=300, Sk=700))
    assert later == [], later
    assert len(fake.compiled) == 1 and len(fake.launches) == 8


def test_setup_is_cached_per_device_head_dim_causal_and_tiles(fake):
    cases = [qkv(D=64), qkv(D=128), qkv(D=64, device=1), qkv(B=64, H=16, Sq=2048)]
    for c in cases:
        api.forward(*c)
        api.forward(*c, causal=True)
        api.forward(*c)
    keys = {(v.head_dim, v.causal, v.m_frags, v.nwarps, v.block_n, v.kv_stages) for v, _ in fake.compiled}
    assert len(fake.compiled) == len(keys) + 2   # device 1 compiles D=64 again (both causal forms)
    assert len(fake.compiled) == 2 * len(cases)
    assert fake.facts == [0, 1]      # each device's arch asked once


def test_one_source_read_serves_every_variant(fake, monkeypatch):
    reads = []
    real = loader.KernelSource.read
    monkeypatch.setattr(loader.KernelSource, "read", classmethod(lambda cls, *a, **kw: reads.append(1) or real(*a, **kw)))
    for D in SUPPORTED_HEAD_DIMS:
        for causal in (False, True):
            api.forward(*qkv(D=D), causal=causal)
    assert len(reads) == 1 and len(fake.compiled) == 2 * len(SUPPORTED_HEAD_DIMS)
    # every variant's options are exactly the harness path's (one hash, one definition)
    for variant, options in fake.compiled:
        assert options == compiler.runtime_options(variant)


# ------------------------------------------------------------------ which kernel forward() launches
def test_dispatch_by_device_and_shape(fake):
    """kernels/registry.py's product_when: the sm_90a kernel for large problems on a Hopper GPU,
    flashcore_fused for small ones and on every other GPU."""
    cases = {"mission": qkv(), "long": qkv(Sq=1024), "large": qkv(B=4, H=16, Sq=2048, D=128)}
    for name, c in cases.items():
        api.forward(*c)
        api.forward(*c, causal=True)
    kernels = [(plan.variant.kernel, plan.variant.arch) for plan, _ in fake.launches]
    assert kernels == ([("flashcore_fused", "sm_90")] * 2 + [("flashcore_hopper_woel", "sm_90a")] * 2
                       + [("flashcore_hopper_iow", "sm_90a"), ("flashcore_hopper_woel", "sm_90a")]), kernels
    fake.arch = "sm_80"          # an A100: the sm_90a kernel does not run there
    api.reload()
    fake.launches.clear()
    api.forward(*cases["large"])
    assert fake.launches[-1][0].variant.kernel == "flashcore_fused" and fake.launches[-1][0].variant.arch == "sm_80"


def test_hopper_launch_carries_maps_of_q_k_v_reencoded_only_when_a_pointer_changes(fake):
    q, k, v = qkv(B=2, H=3, Sq=1500, Sk=1700, D=128)
    o = api.forward(q, k, v, causal=True)
    plan, args = fake.launches[-1]
    assert plan.variant.kernel == "flashcore_hopper_woel"
    n = len(api.kernel_args(0, 0, 0, 0, 0, 3, 1500, 1700, 0.1))
    assert args[:n] == api.kernel_args(id(q), id(k), id(v), id(o), 0, 3, 1500, 1700, plan.scale)
    maps = [struct.unpack_from("<5Q", m) for m in args[n:]]
    vm = plan.variant
    assert maps == [(id(q), 6, 1500, 128, vm.block_m), (id(k), 6, 1700, 128, vm.block_n), (id(v), 6, 1700, 128, vm.block_n)]
    assert len(fake.encodes) == 3
    api.forward(q, k, v, causal=True)          # the same buffers: nothing to encode
    assert len(fake.encodes) == 3
    q2 = FakeArray(q.shape)
    api.forward(q2, k, v, causal=True)         # a new Q: its map alone is encoded again
    assert [p for p, _ in fake.encodes[3:]] == [id(q2)]
    assert struct.unpack_from("<Q", fake.launches[-1][1][n])[0] == id(q2)


def test_launch_geometry_and_arguments(fake):
    q, k, v = qkv(B=2, H=3, Sq=300, Sk=700, D=128)
    o, lse = api.forward(q, k, v, causal=True, lse=True)
    plan, args = fake.launches[-1]
    shape = Shape(2, 3, 300, 700, 128)
    variant = Variant("full", 128, True, arch="sm_90", **tiles_for(shape))
    assert plan.variant == variant
    assert plan.grid == (math.ceil(300 / variant.block_m), 3, 2) and plan.block == (variant.threads,)
    assert plan.smem == variant.smem_bytes
    assert o.shape == (2, 3, 300, 128) and o.dtype == "float16"
    assert lse.shape == (2, 3, 300) and lse.dtype == "float32"
    assert args[:5] == (id(q), id(k), id(v), id(o), id(lse))
    assert args[-6:] == (3, 300, 700, np.float32(1 / math.sqrt(128)), 0, 300)


def test_launch_block_is_kernel_args_call_after_call(fake):
    """The launcher's packed block (what cuLaunchKernel reads) equals kernel_args() of each call,
    in value and C type, as the pointers and the scale change from call to call."""
    q, k, v = qkv(B=2, H=3, Sq=300, Sk=700, D=64)
    calls = [dict(), dict(scale=0.1), dict(scale=0.1, lse=True), dict(), dict(scale=2.5)]
    for kw in calls:
        out = api.forward(q, k, v, **kw)
        o, l = out if kw.get("lse") else (out, None)
        plan, packed = fake.launches[-1]
        want = api.kernel_args(id(q), id(k), id(v), id(o), 0 if l is None else id(l), 3, 300, 700,
                               kw.get("scale", 1 / math.sqrt(64)))
        assert packed == want
        assert [np.asarray(x).dtype for x in packed[-6:]] == [np.asarray(x).dtype for x in want[-6:]]
    assert len({id(p) for p, _ in fake.launches}) == 1    # one plan, its block rewritten per call


def test_counter_kernel_gets_a_word_of_its_own_per_call(fake):
    """Version 21 (forward()'s at D = 64's large non-causal problems) takes a work-item counter after its maps:
    each call writes the device ring's next word into that slot, so calls that may run at once
    (two streams) never share one; the other entries' blocks have no such slot."""
    q, k, v = qkv(B=16, H=16, Sq=1024, D=64)
    words = []
    for _ in range(3):
        api.forward(q, k, v)
        plan, args = fake.launches[-1]
        assert plan.variant.kernel == "flashcore_hopper_io" and plan.variant.persistent
        n = len(api.kernel_args(0, 0, 0, 0, 0, 16, 1024, 1024, 0.1))
        assert len(args) == n + 4       # three maps, then the counter
        words.append(args[-1])
    ring = fake.rings[0]
    assert words == [ring.base, ring.base + 8, ring.base + 16]
    api.forward(q, k, v, causal=True)   # causal: version 19, no counter
    plan, args = fake.launches[-1]
    assert plan.variant.kernel == "flashcore_hopper_woel" and plan.ring is None and len(args) == n + 3
    with pytest.raises(ValueError, match="work-item counter"):   # a call that forgot its word
        fake.launches[0][0].launcher.values((1, 2, 3, 4, 0), 0.1)


def test_counter_ring_hands_out_each_word_in_turn():
    """counter.Ring over a stand-in CuPy: RING_SLOTS distinct zeroed 8-byte words, in turn, then
    from the first again; allocated once per device and zero before any launch reads it."""
    made = []

    class Buf:
        def __init__(self, n):
            self.n, self.data = n, type("D", (), {"ptr": 0x1000})()

    class FakeCp:
        uint32 = "uint32"

        class cuda:
            class Device:
                def __init__(self, *a):
                    pass

                def __enter__(self):
                    return self

                def __exit__(self, *a):
                    return False

                def synchronize(self):
                    made.append("sync")

        @staticmethod
        def zeros(n, dtype):
            made.append((n, dtype))
            return Buf(n)

    r = counter.Ring(FakeCp)
    assert made == [(counter.RING_SLOTS * counter.WORDS, "uint32"), "sync"]
    got = [r.take() for _ in range(counter.RING_SLOTS + 2)]
    assert len(set(got[:counter.RING_SLOTS])) == counter.RING_SLOTS
    assert got[:3] == [0x1000, 0x1008, 0x1010] and got[-2:] == got[:2]


def test_launcher_refuses_a_float_slot_that_is_not_float32():
    args = api.kernel_args(0, 0, 0, 0, 0, 1, 2, 3, 0.5)
    with pytest.raises(TypeError, match="not the float32"):
        Launcher("fn", (1,), (128,), 0, args, api.N_PTRS, api.SCALE_SLOT - 1)


def test_kernel_args_layout():
    args = api.kernel_args(11, 12, 13, 14, 0, H=4, Sq=77, Sk=131, scale=0.25)
    n_ptr = len(KERNEL_PARAMS)
    assert len(args) == n_ptr + 6
    assert args[:n_ptr] == (11, 12, 13, 14, 0) + (0,) * (n_ptr - 5)
    tail = args[n_ptr:]
    assert [type(x) for x in tail] == [np.int32, np.int32, np.int32, np.float32, np.int32, np.int32]
    assert tail == (4, 77, 131, np.float32(0.25), 0, 77)   # row0 = 0, n_rows = Sq: every query row


def test_reload_picks_up_an_edited_kernel(fake, tmp_path, monkeypatch):
    src = tmp_path / "k"
    shutil.copytree(compiler.kernel_file().parent, src, ignore=shutil.ignore_patterns("__pycache__"))
    path = src / compiler.kernel_file().name
    monkeypatch.setenv("FLASHCORE_KERNEL", str(path))
    api.forward(*qkv())
    path.write_text(path.read_text() + "\n// edited\n")
    api.forward(*qkv(), causal=True)     # a new variant, still from the snapshot of the first call
    api.reload()
    api.forward(*qkv())
    hashes = [next(o for o in opts if o.startswith("-DFLASHCORE_SRC_HASH=")) for _, opts in fake.compiled]
    assert len(hashes) == 3 and hashes[0] == hashes[1] != hashes[2]
    assert hashes[2] == f"-DFLASHCORE_SRC_HASH={compiler.source_hash(path)[:16]}"


# ------------------------------------------------------------------ bad inputs: one line each
BAD = [
    ("cpu", lambda: qkv(device="cpu"), "q: a tensor on cpu; forward() needs CUDA tensors"),
    ("devices", lambda: (qkv()[0], *qkv(device=1)[1:]), "q, k, v are on different devices: q cuda:0, k cuda:1"),
    ("float32", lambda: qkv(dtype="float32"), "q: dtype float32; forward() takes float16"),
    ("bfloat16 k", lambda: (qkv()[0], FakeArray((1, 8, 512, 64), "bfloat16"), qkv()[2]), "k: dtype bfloat16"),
    ("3-D", lambda: (FakeArray((8, 512, 64)),) + qkv()[1:], "q: shape (8, 512, 64) is not 4-D"),
    ("zero B", lambda: qkv(B=0), "q: shape (0, 8, 512, 64) has a zero-size dimension"),
    ("zero Sk", lambda: qkv(Sk=0), "k: shape (1, 8, 0, 64) has a zero-size dimension"),
    ("head dim", lambda: qkv(D=96), "unsupported head dim 96"),
    ("k != v", lambda: (*qkv()[:2], FakeArray((1, 8, 511, 64))), "shapes do not match"),
    ("H", lambda: (qkv()[0], *qkv(H=4)[1:]), "shapes do not match"),
    ("D", lambda: (qkv(D=128)[0], *qkv(D=64)[1:]), "shapes do not match"),
    ("grid", lambda: qkv(B=70000, Sq=16), "must be at most 65535"),
]


@pytest.mark.parametrize("label,make,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_usage_error(fake, label, make, needle):
    with pytest.raises(UsageError) as e:
        api.forward(*make())
    assert "\n" not in str(e.value) and needle in str(e.value)
    assert fake.launches == [] and fake.compiled == []


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_bad_scale(fake, scale):
    with pytest.raises(UsageError, match="scale must be a finite number"):
        api.forward(*qkv(), scale=scale)


@pytest.mark.parametrize("q,needle", [
    (np.zeros((1, 8, 512, 64), np.float16), "q: a NumPy (host) array"),
    ([[1.0]], "q: a builtins.list"),
])
def test_not_an_array_kind(q, needle):
    with pytest.raises(UsageError) as e:
        api.forward(q, q, q)
    assert "\n" not in str(e.value) and needle in str(e.value)


class OtherArray(FakeArray):
    pass


def test_mixed_kinds(fake, monkeypatch):
    monkeypatch.setitem(api._KINDS, OtherArray, FakeKind())
    q, k, v = qkv()
    with pytest.raises(UsageError) as e:
        api.forward(q, OtherArray(k.shape), v)
    assert str(e.value) == "q, k, v are of different kinds (FakeArray, OtherArray, FakeArray); pass one kind"


# ------------------------------------------------------------------ torch, where installed (no GPU needed)
def _torch():
    return pytest.importorskip("torch")


def test_torch_cpu_tensors_are_one_line_usage_errors():
    torch = _torch()
    q = torch.zeros(1, 8, 128, 64, dtype=torch.float16)
    with pytest.raises(UsageError) as e:
        api.forward(q, q, q)
    assert str(e.value) == "q: a tensor on cpu; forward() needs CUDA tensors (e.g. .cuda())"


def _fake_cuda(torch, *shapes, dtype=None):
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        return [torch.empty(*s, dtype=dtype or torch.float16, device="cuda") for s in shapes]


def test_torch_ops_are_registered_with_fake_implementations():
    torch = _torch()
    ops = api.register_torch_ops()
    q, k = _fake_cuda(torch, (2, 3, 77, 128), (2, 3, 131, 128))
    o = ops.attention(q, k, k, True, None)
    o2, lse = ops.attention_lse(q, k, k, False, 0.5)
    assert tuple(o.shape) == tuple(o2.shape) == (2, 3, 77, 128) and o.dtype == torch.float16
    assert tuple(lse.shape) == (2, 3, 77) and lse.dtype == torch.float32
    assert str(o.device).startswith("cuda") and o.is_contiguous()


def test_fake_implementation_checks_inputs_in_one_line():
    torch = _torch()
    q, k = _fake_cuda(torch, (1, 8, 128, 64), (1, 8, 128, 96))
    with pytest.raises(UsageError) as e:
        api.register_torch_ops().attention(q, k, k, False, None)
    assert "shapes do not match" in str(e.value) and "\n" not in str(e.value)


def test_torch_tracer_goes_through_forward_into_the_custom_op():
    """What torch.compile(fullgraph=True) needs: dynamo traces forward() with no graph break
    and the graph holds flashcore::attention (fake CUDA tensors: no GPU needed)."""
    torch = _torch()
    import torch._dynamo

    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return api.forward(q, k, v, causal=True) * 2, api.forward(q, k, v, lse=True)[1]

    q, k = _fake_cuda(torch, (1, 8, 256, 64), (1, 8, 320, 64))
    gm, _ = torch._dynamo.export(M(), aten_graph=False)(q, k, k)   # raises on a graph break
    code = gm.code
    assert "torch.ops.flashcore.attention(" in code and "torch.ops.flashcore.attention_lse(" in code
    o, lse = gm(q, k, k)
    assert tuple(o.shape) == (1, 8, 256, 64) and tuple(lse.shape) == (1, 8, 256)


# ------------------------------------------------------------------ bench's wall-per-call columns
class FakeEvents:
    """Stands in for wall.event_loop: calls fn n times; spans of `kernel` us, one loop wall of
    `loop_wall` us per call; records the order of the loops."""

    def __init__(self, calls, kernel=100.0, loop_wall=None):
        self.calls, self.kernel, self.loop_wall, self.seen = calls, kernel, loop_wall, []

    def __call__(self, fn, sync, n, rest, queued):
        self.seen.append(("queued" if queued else "in_loop", len(self.calls), rest))
        for _ in range(n):
            fn()
        k = self.kernel(queued) if callable(self.kernel) else self.kernel
        return (self.loop_wall if self.loop_wall is not None else k + 1.0), [k - 1.0, k, k + 1.0]


def test_wall_rounds_alternate_three_loops_after_one_rest():
    from harness.run import wall
    calls, syncs = [], []
    ev = FakeEvents(calls)
    m = wall.measure(lambda: calls.append(1), lambda: syncs.append(len(calls)), n=50, rounds=2, events=ev, warmup=7)
    # warm-up 7, sizing loop 20, then round 0: plain, queued, in-loop; round 1: in-loop, queued, plain
    assert len(calls) == 7 + 20 + 2 * 3 * 50
    assert syncs == [7, 27, 27, 77, 277, 327]       # before and after each plain loop
    assert [(k, c) for k, c, _ in ev.seen] == [("queued", 77), ("in_loop", 127), ("in_loop", 177), ("queued", 227)]
    rest = ev.seen[0][2]
    assert all(r == rest for _, _, r in ev.seen) and 100e-6 < rest < 1e-3
    assert m["kernel"] == 100.0 and m["n"] == 50 and m["rounds"] == 2 and len(m["per_round"]) == 2
    assert m["host"] <= m["wall"]
    # the fake host loop takes about a microsecond a call against a 100 us kernel: GPU-bound,
    # so the excess is read inside one loop: its wall (101) minus its mean span (100)
    assert m["method"] == "in-loop" and m["excess"] == m["excess_in_loop"] == 1.0


def test_wall_excess_paired_is_taken_round_by_round():
    from harness.run import wall
    walls = iter([(1.0, 1.0), (110.0, 5.0), (125.0, 5.0), (140.0, 5.0)])
    kernels = iter([100.0, 120.0, 130.0])
    ev = FakeEvents([], kernel=lambda queued: next(kernels) if queued else 5.0, loop_wall=50.0)
    real = wall.loop_times
    try:
        wall.loop_times = lambda fn, sync, n, rest=0.0: next(walls)
        m = wall.measure(lambda: None, lambda: None, n=3, rounds=3, events=ev)
    finally:
        wall.loop_times = real
    # round by round: wall 110, 125, 140 against kernel 100, 120, 130: 10, 5, 10; the median is
    # 10, not median(wall) - median(kernel) = 5. The in-loop reading is its loop's wall (50)
    # minus its mean span (5); both readings are kept whichever is reported.
    assert m["excess_paired"] == 10.0 and m["wall"] == 125.0 and m["kernel"] == 120.0
    assert m["excess_in_loop"] == 50.0 - 5.0


def test_wall_method_follows_the_bottleneck():
    from harness.run import wall
    for kernel, method in ((9.0, "paired"), (500.0, "in-loop")):
        real = wall.loop_times
        try:
            wall.loop_times = lambda fn, sync, n, rest=0.0: (20.0, 12.0)   # host 12 us a call
            m = wall.measure(lambda: None, lambda: None, n=3, rounds=3, events=FakeEvents([], kernel=kernel))
        finally:
            wall.loop_times = real
        assert m["method"] == method
        assert m["excess"] == (m["excess_paired"] if method == "paired" else m["excess_in_loop"])


def test_wall_calls_bounded_by_the_budget():
    from harness.run import wall
    assert wall.wall_calls(1.0) == wall.WALL_CALLS
    long_us = wall.WALL_BUDGET_S * 1e6 / 50
    assert wall.wall_calls(long_us) == 50 and wall.wall_calls(1e9) == 20


def _row(wall):
    from harness.run import bench
    t = bench.Timing(100.0, 90.0, 110.0, 10)
    return bench.BenchRow("mission", Shape(1, 8, 512, 512, 64), False, "full", t, 1e9,
                          sdpa={"sdpa_flash": bench.Timing(120.0, 110.0, 130.0, 10)}, wall=wall)


def _m(w, h, k, method="in-loop"):
    return {"wall": w, "host": h, "kernel": k, "excess": w - k, "method": method, "n": 10, "rounds": 5}


def test_wall_columns_in_table_and_markdown():
    from harness.run import bench
    rows = [_row({"inputs": "torch", "forward": _m(104.0, 20.5, 101.5), "sdpa": _m(130.0, 18.0, 131.0, "paired")}), _row({}),
            _row({"inputs": "cupy", "forward": _m(103.0, 19.0, 100.0)})]
    md = bench.markdown(rows, {"device": "NVIDIA H200"}, "2026-01-01", "flashcore bench")
    table = [l for l in md.splitlines() if l.startswith("|")]
    assert table[0] == "| " + " | ".join(bench.HEADERS) + " |"
    cells = [l.strip("|").split(" | ") for l in table[2:]]
    assert all(len(c) == len(bench.HEADERS) for c in cells)
    col = {h: i for i, h in enumerate(bench.HEADERS)}
    names = ("forward() wall us/call", "forward() wall - kernel us", "forward() host us/call", "SDPA wall us/call",
             "SDPA wall - kernel us", "SDPA/forward wall")
    idx = [col[h] for h in names]
    assert [cells[0][i].strip() for i in idx] == ["104.0", "+2.5 (in-loop)", "20.5", "130.0", "-1.0 (paired)", "1.25x"]
    assert [cells[1][i].strip() for i in idx] == ["-"] * 6
    assert [cells[2][i].strip() for i in idx] == ["103.0 (CuPy)", "+3.0 (in-loop)", "19.0", "-", "-", "-"]
    assert rows[0].to_dict()["wall"]["forward"]["wall"] == 104.0
    assert len(bench.rich_table(rows, {"device": "NVIDIA H200"}).columns) == len(bench.HEADERS)


def test_wall_rounds_of_several_functions_interleave():
    """forward() and SDPA are compared round by round in one stretch of time, the order of the
    two alternating; each keeps its own rounds."""
    from harness.run import wall
    order = []

    def fn(name):
        return lambda: order.append(name)

    ev = FakeEvents(order)
    m = wall.measure_all({"a": fn("a"), "b": fn("b")}, lambda: None, n=4, rounds=3, events=ev, warmup=1)
    runs = [order[i] for i in range(len(order)) if i == 0 or order[i] != order[i - 1]]
    # set-up (warm-up and sizing loop) of a then b; then rounds a b | b a | a b, three loops each
    assert runs == ["a", "b", "a", "b", "a", "b"]
    assert len(order) == 2 * (1 + 4) + 3 * 2 * 3 * 4
    assert m["a"]["rounds"] == m["b"]["rounds"] == 3


def test_wall_rounds_more_where_cheap():
    from harness.run import wall
    assert wall.wall_rounds(300, 12.0) == wall.MAX_ROUNDS
    assert wall.wall_rounds(76, 3300.0) == wall.WALL_ROUNDS
