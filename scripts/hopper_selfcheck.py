"""Standalone check of the sm_90a kernel (kernels/flashcore_hopper.cu), outside the harness.

  python3 scripts/hopper_selfcheck.py --compile-only   # any machine with NVRTC (no GPU): every
                                                       # variant compiles for sm_90a; registers,
                                                       # spills, stack, ptxas warnings per variant
  python3 scripts/hopper_selfcheck.py                  # on an H100/H200: every mode at several
                                                       # shapes against float64 NumPy
Exit status 1 on any failure (a compile error, spills/stack/ptxas warning, a case over its
tolerance, an unwritten or stray-written element, a fault or hang, a launch-to-launch change).

GPU run: cubins are compiled here with NVRTC for sm_90a (threads; NVRTC releases the GIL) and
each mode's cases run in a worker process of their own, under a timeout, so a fault or a stuck
mbarrier (the kernel traps after MBAR_SPIN_LIMIT polls) costs that mode only. One extra case
loads the kernel the harness way, cupy.RawModule(code=..., options=(..., "-arch=sm_90a")).

Per case: outputs are poisoned with NaNs of a payload no arithmetic makes (fp16 0x7E5A, fp32
0x7FC0DEAD, as docs/DESIGN.md); the kernel is launched twice (re-poisoned between) and must
give bitwise equal results; every element it must write is written, every element outside its
window keeps the poison. Errors are max |kernel - float64 exact|; the tolerance is
2*floor + atol where floor = max |kernel-precision emulation - exact| (the project's rule)
for O, and a fixed fp32-sized bound for S, P, m, l, LSE (no fp16 rounding point there).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KERNEL = ROOT / "kernels" / "flashcore_hopper.cu"
sys.path.insert(0, str(ROOT))

# ---------------------------------------------------------------- the kernel's constants

SM90_SMEM_OPTIN = 227 * 1024          # bytes a block may opt into on sm_90 (dynamic + static)


def block_m(consumer_wgs: int = 2) -> int:
    """Query rows per block: 64 per consumer warpgroup."""
    return 64 * consumer_wgs


def block_threads(consumer_wgs: int = 2) -> int:
    """Threads per block: one warpgroup (128 threads) per consumer warpgroup, no producer."""
    return 128 * consumer_wgs


def smem_bytes(head_dim: int, block_n: int, kv_stages: int, consumer_wgs: int = 2) -> int:
    """Dynamic shared memory of flashcore_hopper.cu (its header comment gives the same formula):
    1024 bytes of slack to align the base to the 128-byte swizzle's 1024-byte atoms, the fp16 Q
    tile of 64*consumer_wgs rows, and kv_stages stages of an fp16 K and an fp16 V tile of block_n
    rows. Mode-independent. (The 8*(1+2*kv_stages) bytes of mbarriers are static shared memory.)"""
    return 1024 + 64 * consumer_wgs * head_dim * 2 + kv_stages * 2 * block_n * head_dim * 2


# The kernel's defaults, per head dim (every GPU case ran at these; see the .cu header for the
# measured recommendation, 128x3 at D=128).
TILES = {64: dict(block_n=128, kv_stages=2, consumer_wgs=2),
         128: dict(block_n=128, kv_stages=2, consumer_wgs=2)}

# mode -> (-D flag, has a causal form). Same names and flags as debug_modes/registry.py.
MODES = {"qk_only": ("DEBUG_QK_ONLY", True), "softmax_only": ("DEBUG_SOFTMAX_ONLY", True),
         "pv_only": ("DEBUG_PV_ONLY", True), "uniform_p": ("UNIFORM_P", False),
         "full": (None, True), "fp32_p": ("FP32_P", True)}
ORDER = ("qk_only", "softmax_only", "pv_only", "uniform_p", "full", "fp32_p")


@dataclass(frozen=True)
class Variant:
    mode: str
    head_dim: int
    causal: bool
    block_n: int
    kv_stages: int
    consumer_wgs: int
    extra: tuple = ()                    # further -D definitions (e.g. MBAR_SPIN_LIMIT=...)

    @property
    def defines(self) -> list:
        d = [f"HEAD_DIM={self.head_dim}", f"IS_CAUSAL={int(self.causal)}", f"BLOCK_N={self.block_n}",
             f"KV_STAGES={self.kv_stages}", f"CONSUMER_WGS={self.consumer_wgs}"]
        flag = MODES[self.mode][0]
        return d + ([flag] if flag else []) + list(self.extra)

    @property
    def label(self) -> str:
        return (f"{self.mode} D={self.head_dim}{' causal' if self.causal else ''} "
                f"[{block_m(self.consumer_wgs)}x{self.block_n}x{self.kv_stages}]" + "".join(f" {e}" for e in self.extra))

    @property
    def key(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "_", self.label).strip("_")

    @property
    def smem(self) -> int:
        return smem_bytes(self.head_dim, self.block_n, self.kv_stages, self.consumer_wgs)


def variant(mode, d, causal=False, **tiles) -> Variant:
    t = {**TILES[d], **tiles}
    return Variant(mode, d, causal, t["block_n"], t["kv_stages"], t["consumer_wgs"])


def default_variants() -> list:
    """Every mode x D {64, 128} x causal (where the mode has a causal form) at the default tiles."""
    return [variant(m, d, c) for m in ORDER for d in (64, 128) for c in (False, True) if MODES[m][1] or not c]


# Other tile configs the GPU run exercises (full and one debug mode), and that compile-only checks.
EXTRA_TILES = [dict(block_n=64, kv_stages=3), dict(block_n=64, kv_stages=2, consumer_wgs=1),
               dict(block_n=192, kv_stages=2), dict(block_n=32, kv_stages=4),
               dict(block_n=128, kv_stages=3)]   # the recommended D=128 tiles (added after the last GPU run)


def extra_variants() -> list:
    out = []
    for t in EXTRA_TILES:
        for d in (64, 128):
            if smem_bytes(d, **{**TILES[d], **t}) + 64 > SM90_SMEM_OPTIN:
                continue
            out += [variant("full", d, False, **t), variant("full", d, True, **t), variant("qk_only", d, True, **t)]
    return out


# ---------------------------------------------------------------- compiling (no GPU)

def nvrtc_options(v: Variant) -> list:
    from harness.toolchain.compiler import find_cuda_include   # finds the toolkit include dir
    return ["-std=c++17", "--gpu-architecture=sm_90a", "--ptxas-options=-v", "-ftz=true", "-lineinfo",
            f"-I{find_cuda_include()}", f"-I{KERNEL.parent}"] + [f"-D{d}" for d in v.defines]


def _int(pattern, log):
    m = re.search(pattern, log)
    return int(m.group(1)) if m else 0


def compile_variant(v: Variant) -> dict:
    """NVRTC for sm_90a: {'ok', 'log', 'cubin', registers, spills, stack, smem, warnings}."""
    from cupy.cuda import nvrtc
    from harness.toolchain.compiler import _whole_cubin   # CuPy's getCUBIN drops the last byte
    prog = nvrtc.createProgram(KERNEL.read_text(), KERNEL.name, [], [])
    t0 = time.time()
    try:
        try:
            nvrtc.compileProgram(prog, nvrtc_options(v))
        except Exception:
            return dict(ok=False, log=nvrtc.getProgramLog(prog), cubin=b"")
        log = nvrtc.getProgramLog(prog)
        cubin = _whole_cubin(nvrtc, prog)
    finally:
        nvrtc.destroyProgram(prog)
    warnings = [l.strip() for l in log.splitlines() if re.search(r"warning", l, re.I)]
    return dict(ok=True, log=log, cubin=cubin, seconds=time.time() - t0,
                registers=_int(r"Used (\d+) registers", log), smem_static=_int(r"(\d+) bytes smem", log),
                stack=_int(r"(\d+) bytes stack frame", log), spill_stores=_int(r"(\d+) bytes spill stores", log),
                spill_loads=_int(r"(\d+) bytes spill loads", log), warnings=warnings,
                c7513="C7513" in log, c7519="C7519" in log)


def compile_all(variants: list, workers: int | None = None) -> dict:
    """{variant: result}, on one process per CPU (cupy.cuda.nvrtc held the GIL here: threads ran
    one at a time). No CUDA context exists in this process yet, so fork is safe."""
    import multiprocessing as mp
    variants = list(dict.fromkeys(variants))
    n = min(len(variants), workers or os.cpu_count() or 2)
    if n <= 1:
        return {v: compile_variant(v) for v in variants}
    with cf.ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("fork")) as ex:
        return dict(zip(variants, ex.map(compile_variant, variants)))


def compile_problems(v: Variant, r: dict) -> list:
    if not r["ok"]:
        return ["compile error:\n" + r["log"]]
    p = []
    if r["spill_stores"] or r["spill_loads"]:
        p.append(f"spills {r['spill_stores']}+{r['spill_loads']} bytes")
    if r["stack"]:
        p.append(f"stack frame {r['stack']} bytes")
    if r["warnings"]:
        p.append("warnings: " + " | ".join(r["warnings"]))
    if v.smem + r["smem_static"] > SM90_SMEM_OPTIN:
        p.append(f"shared memory {v.smem} + {r['smem_static']} > {SM90_SMEM_OPTIN}")
    return p


def run_compile_only(variants: list) -> int:
    t0 = time.time()
    res = compile_all(variants)
    bad = 0
    print(f"{'variant':44s} {'regs':>4s} {'dyn smem':>8s} {'static':>6s} {'spill':>5s} {'stack':>5s}  warnings")
    for v, r in res.items():
        probs = compile_problems(v, r)
        bad += bool(probs)
        if r["ok"]:
            print(f"{v.label:44s} {r['registers']:4d} {v.smem:8d} {r['smem_static']:6d} "
                  f"{r['spill_stores'] + r['spill_loads']:5d} {r['stack']:5d}  {len(r['warnings'])}"
                  + ("" if not probs else "   FAIL: " + "; ".join(probs)))
        else:
            print(f"{v.label:44s} FAIL: {probs[0]}")
    print(f"{len(res)} variants compiled for sm_90a in {time.time() - t0:.1f} s: "
          f"{'all clean' if not bad else f'{bad} with problems'}")
    return 1 if bad else 0


# ---------------------------------------------------------------- cases

@dataclass
class Case:
    v: Variant
    B: int
    H: int
    Sq: int
    Sk: int
    row0: int = 0
    n_rows: int | None = None            # None: Sq
    inputs: str = "randn"                # randn | large (Q * 10: logits ~ +-30)
    seed: int = 0
    via_code: bool = False               # load through cupy.RawModule(code=...) (the harness route)

    @property
    def label(self) -> str:
        w = "" if (self.row0 == 0 and self.n_rows in (None, self.Sq)) else f" rows[{self.row0},{self.row0 + self.n_rows})"
        return (f"{self.v.label} {self.B},{self.H},{self.Sq}x{self.Sk}{w}"
                f"{'' if self.inputs == 'randn' else ' ' + self.inputs}{' via-code' if self.via_code else ''}")


def cases() -> list:
    """Shapes: tails in Sq and Sk (not multiples of 128/BLOCK_N), Sq != Sk both ways, B, H > 1,
    Sq = 1, Sk shorter than one tile, more key tiles than stages, windows of query rows."""
    out = []
    whole = [(1, 1, 64, 64), (2, 3, 300, 333), (1, 2, 128, 1000), (2, 1, 700, 200), (1, 2, 1, 17), (3, 2, 257, 129)]
    for d in (64, 128):
        for causal in (False, True):
            for mode in ("full", "fp32_p", "qk_only", "softmax_only", "pv_only", "uniform_p"):
                if causal and not MODES[mode][1]:
                    continue
                v = variant(mode, d, causal)
                for i, (B, H, Sq, Sk) in enumerate(whole):
                    out.append(Case(v, B, H, Sq, Sk, seed=zlib.crc32(f'{mode}{d}{causal}{i}'.encode())))
                if mode in ("qk_only", "softmax_only", "pv_only"):      # a window: the middle query tiles
                    bm = block_m(v.consumer_wgs)
                    out.append(Case(v, 2, 2, 3 * bm + 37, 300, row0=bm, n_rows=bm, seed=7))
                    out.append(Case(v, 1, 2, 2 * bm + 5, 200, row0=bm, n_rows=bm + 5, seed=8))   # the tail tile
            out.append(Case(variant("full", d, causal), 2, 2, 300, 500, inputs="large", seed=11))
    for v in extra_variants():
        for (B, H, Sq, Sk) in [(2, 3, 300, 333), (1, 2, 130, 700)]:
            out.append(Case(v, B, H, Sq, Sk, seed=13))
    out.append(Case(variant("full", 64), 2, 3, 300, 333, seed=17, via_code=True))
    return out


# ---------------------------------------------------------------- references (float64 NumPy)

POISON16 = np.uint16(0x7E5A)
POISON32 = np.uint32(0x7FC0DEAD)
GUARD = 4096                          # poisoned elements after each output buffer


def make_inputs(c: Case):
    rng = np.random.default_rng(c.seed)
    D = c.v.head_dim
    q = rng.standard_normal((c.B, c.H, c.Sq, D)) * (10.0 if c.inputs == "large" else 1.0)
    k = rng.standard_normal((c.B, c.H, c.Sk, D))
    v = rng.standard_normal((c.B, c.H, c.Sk, D))
    return [x.astype(np.float16) for x in (q, k, v)]


def exact_scores(q, k, scale, causal, Skp, rows):
    """float64 scale*Q.K^T of the window rows at the padded width: masked and padded = -inf."""
    B, H, _, _ = q.shape
    Sk = k.shape[2]
    s = np.full((B, H, len(rows), Skp), -np.inf)
    s[..., :Sk] = scale * np.einsum("bhid,bhjd->bhij", q[:, :, rows].astype(np.float64), k.astype(np.float64))
    if causal:
        s[..., np.arange(Skp)[None, :] > rows[:, None]] = -np.inf
    return s


def softmax_parts(s):
    m = s.max(axis=-1, keepdims=True)
    e = np.exp(s - m)
    l = e.sum(axis=-1, keepdims=True)
    return m[..., 0], l[..., 0], e / l


def fp16(x):
    return np.asarray(x).astype(np.float16).astype(np.float64)


def err_max(got, ref) -> float:
    """max |got - ref|, equal infinities count 0, any other non-finite value +inf."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    if got.size == 0:
        return 0.0
    both_inf = np.isinf(got) & np.isinf(ref) & (np.sign(got) == np.sign(ref))
    with np.errstate(invalid="ignore"):
        d = np.where(both_inf, 0.0, np.abs(got - ref))
    d = np.where(np.isnan(d), np.inf, d)
    return float(d.max())


def finite_max(x) -> float:
    x = np.asarray(x, np.float64)
    f = x[np.isfinite(x)]
    return float(np.abs(f).max()) if f.size else 0.0


# ---------------------------------------------------------------- running one case (GPU)

def run_case(c: Case, fn) -> dict:
    import cupy as cp
    from harness.toolchain import tma
    v = c.v
    D, bm, bn = v.head_dim, block_m(v.consumer_wgs), v.block_n
    n_rows = c.Sq if c.n_rows is None else c.n_rows
    row_end = min(c.Sq, c.row0 + n_rows)
    rows = np.arange(c.row0, row_end)
    Skp = -(-c.Sk // bn) * bn
    scale = 1.0 / math.sqrt(D)
    q, k, vv = make_inputs(c)
    mode = v.mode
    reads_q = mode in ("full", "fp32_p", "qk_only")
    reads_v = mode in ("full", "fp32_p", "pv_only", "uniform_p")

    s_exact = exact_scores(q, k, scale, v.causal, Skp, rows)
    m_ex, l_ex, p_ex = softmax_parts(s_exact)
    vf = vv.astype(np.float64)
    vpad = np.zeros((c.B, c.H, Skp, D))
    vpad[:, :, :c.Sk] = vf

    dev = {}
    if reads_q:
        dev["Q"] = cp.asarray(q)
        dev["K"] = cp.asarray(k)
    if reads_v:
        dev["V"] = cp.asarray(vv)
    inj = None
    outputs = {}          # name -> (shape, dtype, written mask (bool array over the buffer) )
    full_rows = np.zeros(c.Sq, bool)
    full_rows[rows] = True
    if mode in ("full", "fp32_p", "pv_only", "uniform_p"):
        odt = np.float32 if mode == "fp32_p" else np.float16
        outputs["O"] = ((c.B, c.H, c.Sq, D), odt, np.broadcast_to(full_rows[None, None, :, None], (c.B, c.H, c.Sq, D)))
    if mode in ("full", "fp32_p"):
        outputs["LSE"] = ((c.B, c.H, c.Sq), np.float32, np.broadcast_to(full_rows[None, None, :], (c.B, c.H, c.Sq)))
    win = np.ones((c.B, c.H, n_rows, Skp), bool)
    win[:, :, len(rows):] = False
    if mode == "qk_only":
        outputs["S_out"] = ((c.B, c.H, n_rows, Skp), np.float32, win)
    if mode == "softmax_only":
        outputs["P_out"] = ((c.B, c.H, n_rows, Skp), np.float32, win)
        outputs["M_out"] = ((c.B, c.H, c.Sq), np.float32, np.broadcast_to(full_rows[None, None, :], (c.B, c.H, c.Sq)))
        outputs["L_out"] = ((c.B, c.H, c.Sq), np.float32, np.broadcast_to(full_rows[None, None, :], (c.B, c.H, c.Sq)))
        inj = np.zeros((c.B, c.H, n_rows, Skp), np.float32)
        inj[:, :, :len(rows)] = s_exact.astype(np.float32)
        dev["S_in"] = cp.asarray(inj)
    if mode == "pv_only":
        inj = np.zeros((c.B, c.H, n_rows, Skp), np.float32)
        inj[:, :, :len(rows)] = p_ex.astype(np.float32)
        dev["P_in"] = cp.asarray(inj)

    raw = {}    # each output with GUARD poisoned elements past its end: a write past the buffer shows there

    def poison():
        for name, (shape, dt, _) in outputs.items():
            n = int(np.prod(shape))
            if dt == np.float16:
                raw[name] = cp.full(n + GUARD, POISON16, dtype=cp.uint16)
                dev[name] = raw[name].view(cp.float16)[:n].reshape(shape)
            else:
                raw[name] = cp.full(n + GUARD, POISON32, dtype=cp.uint32)
                dev[name] = raw[name].view(cp.float32)[:n].reshape(shape)

    descs = tma.descs_for(dev.get("Q"), dev.get("K"), dev.get("V"), block_m=bm, block_n=bn)
    grid = (-(-n_rows // bm), c.H, c.B)
    names = ("Q", "K", "V", "O", "LSE", "S_in", "P_in", "S_out", "P_out", "M_out", "L_out")

    def launch():
        poison()
        args = tuple(dev[n] if n in dev else np.uint64(0) for n in names) + (
            np.int32(c.H), np.int32(c.Sq), np.int32(c.Sk), np.float32(scale), np.int32(c.row0), np.int32(n_rows)) + descs
        fn(grid, (block_threads(v.consumer_wgs),), args, shared_mem=v.smem)
        cp.cuda.runtime.deviceSynchronize()
        out = {n: cp.asnumpy(dev[n]) for n in outputs}
        for n in outputs:
            tail = cp.asnumpy(raw[n][-GUARD:])
            hit = int((tail != (POISON16 if tail.dtype == np.uint16 else POISON32)).sum())
            if hit:
                res_guard.append(f"{n}: {hit} elements written past the end of the buffer")
        return out

    res_guard = []
    t0 = time.time()
    got = launch()
    got2 = launch()
    res = dict(case=c.label, mode=mode, seconds=0.0, outputs={}, passed=True, problems=sorted(set(res_guard)))
    for n in outputs:
        a, b = got[n], got2[n]
        bits = a.view(np.uint16 if a.dtype == np.float16 else np.uint32)
        bits2 = b.view(bits.dtype)
        if not np.array_equal(bits, bits2):
            res["problems"].append(f"{n}: {int((bits != bits2).sum())} elements changed between launches")
        pz = POISON16 if a.dtype == np.float16 else POISON32
        must = outputs[n][2]
        unwritten = int(((bits == pz) & must).sum())
        stray = int(((bits != pz) & ~must).sum())
        if unwritten:
            res["problems"].append(f"{n}: {unwritten} unwritten elements")
        if stray:
            res["problems"].append(f"{n}: {stray} elements written outside the window")

    def judge(name, got_vals, exact, tol, floor=None):
        e = err_max(got_vals, exact)
        ok = e <= tol
        res["outputs"][name] = dict(max_err=e, tol=tol, floor=floor, ok=ok)
        if not ok:
            res["problems"].append(f"{name}: max err {e:.3e} > tol {tol:.3e}")

    sel = (slice(None), slice(None), rows)
    if mode in ("full", "fp32_p"):
        o_ex = np.einsum("bhij,bhjd->bhid", p_ex, vpad)
        lse_ex = m_ex + np.log(l_ex)
        o = got["O"].astype(np.float64)[sel]
        if mode == "full":
            # kernel precision: P fp32 -> fp16 at the product, fp32 l, fp16 output
            p32 = np.exp(s_exact - m_ex[..., None]).astype(np.float32).astype(np.float64)
            l32 = p32.sum(-1)
            o_kp = fp16(np.einsum("bhij,bhjd->bhid", fp16(p32), vpad) / l32[..., None])
            floor = err_max(o_kp, o_ex)
            judge("O", o, o_ex, 2 * floor + 1e-4 * max(1.0, finite_max(o_ex)), floor)
        else:
            judge("O", o, o_ex, 2e-5 * max(1.0, finite_max(o_ex)))
        judge("LSE", got["LSE"].astype(np.float64)[sel], lse_ex, 1e-5 * max(1.0, finite_max(lse_ex)))
    elif mode == "qk_only":
        judge("S", got["S_out"][:, :, :len(rows)], s_exact, 1e-5 * max(1.0, finite_max(s_exact)))
    elif mode == "softmax_only":
        s_in = inj[:, :, :len(rows)].astype(np.float64)       # the injected S is the input: judge against its softmax
        m_r, l_r, p_r = softmax_parts(s_in)
        judge("m", got["M_out"].astype(np.float64)[sel], m_r, 1e-6 * max(1.0, finite_max(m_r)))
        judge("l", got["L_out"].astype(np.float64)[sel], l_r, 1e-5 * max(1.0, finite_max(l_r)))
        judge("P", got["P_out"][:, :, :len(rows)], p_r, 2e-6)
    elif mode == "pv_only":
        p_in = inj[:, :, :len(rows)].astype(np.float64)
        o_ex = np.einsum("bhij,bhjd->bhid", p_in, vpad)
        o_kp = fp16(np.einsum("bhij,bhjd->bhid", fp16(p_in), vpad))
        floor = err_max(o_kp, o_ex)
        judge("O", got["O"].astype(np.float64)[sel], o_ex, 2 * floor + 1e-4 * max(1.0, finite_max(o_ex)), floor)
    elif mode == "uniform_p":
        o_ex = np.broadcast_to(vf.mean(axis=2, keepdims=True), (c.B, c.H, len(rows), D))
        o_kp = fp16(fp16(1.0 / c.Sk) * vf.sum(axis=2, keepdims=True))
        floor = err_max(np.broadcast_to(o_kp, o_ex.shape), o_ex)
        o = got["O"].astype(np.float64)[sel]
        judge("O", o, o_ex, 2 * floor + 1e-4 * max(1.0, finite_max(o_ex)), floor)
        spread = float(np.nanmax(o.max(axis=2) - o.min(axis=2))) if o.size else 0.0
        res["outputs"]["row_spread"] = dict(max_err=spread, tol=1e-3, ok=spread <= 1e-3)
        if not spread <= 1e-3:
            res["problems"].append(f"row spread {spread:.3e}")
    res["seconds"] = time.time() - t0
    res["passed"] = not res["problems"]
    return res


def worker(mode: str, cubin_dir: Path, case_indices: list) -> None:
    """Runs the given cases of one mode on the GPU; one JSON line per case on stdout."""
    import cupy as cp
    all_cases = cases()
    fns = {}
    for i in case_indices:
        c = all_cases[i]
        try:
            key = (c.v, c.via_code)
            if key not in fns:
                if c.via_code:
                    opts = tuple(o for o in nvrtc_options(c.v) if not o.startswith(("--gpu-architecture", "--ptxas", "-ftz")))
                    mod = cp.RawModule(code=KERNEL.read_text(), options=opts + ("-arch=sm_90a",), backend="nvrtc")
                else:
                    mod = cp.RawModule(path=str(cubin_dir / f"{c.v.key}.cubin"))
                f = mod.get_function("flashcore_fwd")
                f.max_dynamic_shared_size_bytes = c.v.smem
                fns[key] = f
            r = run_case(c, fns[key])
        except Exception as e:     # a fault poisons the context: report it and stop this worker
            print("RESULT " + json.dumps(dict(case=c.label, mode=c.v.mode, passed=False, outputs={},
                                              problems=[f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"])), flush=True)
            return
        print("RESULT " + json.dumps(r), flush=True)


def run_gpu(timeout: float, only: list | None) -> int:
    all_cases = cases()
    variants = [c.v for c in all_cases if not c.via_code]
    t0 = time.time()
    comp = compile_all(variants)
    bad_compile = {v: compile_problems(v, r) for v, r in comp.items() if compile_problems(v, r)}
    print(f"compiled {len(comp)} variants for sm_90a in {time.time() - t0:.1f} s"
          + ("" if not bad_compile else f"; {len(bad_compile)} with problems"), flush=True)
    for v, p in bad_compile.items():
        print(f"  COMPILE {v.label}: {'; '.join(p)[:2000]}")
    tmp = Path(tempfile.mkdtemp(prefix="hopper_selfcheck_"))
    for v, r in comp.items():
        if r["ok"]:
            (tmp / f"{v.key}.cubin").write_bytes(r["cubin"])
    results = []
    for mode in ORDER:
        if only and mode not in only:
            continue
        idx = [i for i, c in enumerate(all_cases) if c.v.mode == mode and (c.via_code or comp[c.v]["ok"])]
        if not idx:
            continue
        cmd = [sys.executable, __file__, "--worker", mode, "--cubins", str(tmp), "--cases", ",".join(map(str, idx))]
        t1 = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            out, err, rc = p.stdout, p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err, rc = f"timed out after {timeout} s (hang?)", None
        got = [json.loads(l[7:]) for l in out.splitlines() if l.startswith("RESULT ")]
        seen = {g["case"] for g in got}
        for i in idx:
            lab = all_cases[i].label
            if lab not in seen:
                got.append(dict(case=lab, mode=mode, passed=False, outputs={},
                                problems=[f"not run (worker rc={rc}: {err.strip().splitlines()[-1][:300] if err.strip() else ''})"]))
        results += got
        n_ok = sum(g["passed"] for g in got)
        print(f"== {mode}: {n_ok}/{len(got)} passed ({time.time() - t1:.1f} s)", flush=True)
        for g in got:
            errs = "  ".join(f"{k}={o['max_err']:.2e}/{o['tol']:.1e}" for k, o in g["outputs"].items())
            print(f"  {'PASS' if g['passed'] else 'FAIL'} {g['case']:64s} {errs}"
                  + ("" if g["passed"] else "  <- " + "; ".join(g["problems"])[:600]), flush=True)
    n_fail = sum(not r["passed"] for r in results)
    print(f"TOTAL: {len(results) - n_fail}/{len(results)} cases passed; compile problems: {len(bad_compile)}")
    # worst error per mode and output, for the report
    worst = {}
    for r in results:
        for k, o in r["outputs"].items():
            w = worst.setdefault((r["mode"], k), [0.0, 0.0])
            w[0] = max(w[0], o["max_err"])
            w[1] = max(w[1], o["max_err"] / o["tol"] if o["tol"] else 0.0)
    for (m, k), (e, ratio) in sorted(worst.items()):
        print(f"  worst {m:13s} {k:10s} max err {e:.3e}  (err/tol {ratio:.2f})")
    return 1 if (n_fail or bad_compile) else 0


# ---------------------------------------------------------------- a stuck mbarrier must fault

def trap_worker(limit: int, cubin: Path) -> None:
    """Launches full D=64 with a K tensor map of half the box rows the kernel expects: the K/V
    stage's transaction count never completes, so the bounded waits must trap (a CUDA error)."""
    import cupy as cp
    from harness.toolchain import tma
    v = variant("full", 64)
    fn = cp.RawModule(path=str(cubin)).get_function("flashcore_fwd")
    fn.max_dynamic_shared_size_bytes = v.smem
    B, H, S, D = 1, 1, 256, 64
    x = cp.asarray(np.random.default_rng(0).standard_normal((B, H, S, D)).astype(np.float16))
    o = cp.zeros((B, H, S, D), cp.float16)
    lse = cp.zeros((B, H, S), cp.float32)
    tq = tma.encode_bhsd(x.data.ptr, B * H, S, D, block_m(v.consumer_wgs))
    tk = tma.encode_bhsd(x.data.ptr, B * H, S, D, v.block_n // 2)      # the wrong box
    z = np.uint64(0)
    args = (x, x, x, o, lse, z, z, z, z, z, z, np.int32(H), np.int32(S), np.int32(S), np.float32(0.125),
            np.int32(0), np.int32(S), tq, tk, tma.encode_bhsd(x.data.ptr, B * H, S, D, v.block_n))
    t0 = time.time()
    try:
        fn((-(-S // block_m(v.consumer_wgs)), H, B), (block_threads(v.consumer_wgs),), args, shared_mem=v.smem)
        cp.cuda.runtime.deviceSynchronize()
        print(f"TRAP none: the kernel returned after {time.time() - t0:.2f} s (expected a fault)", flush=True)
    except Exception as e:
        print(f"TRAP ok: fault after {time.time() - t0:.2f} s: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)


def run_trap_check(limits: list, timeout: float) -> int:
    vs = [Variant(**{**asdict(variant("full", 64)), "extra": (f"MBAR_SPIN_LIMIT={lim}u",)}) if lim else variant("full", 64)
          for lim in limits]
    comp = compile_all(vs)
    tmp = Path(tempfile.mkdtemp(prefix="hopper_trap_"))
    bad = 0
    for lim, v in zip(limits, vs):
        (tmp / f"{v.key}.cubin").write_bytes(comp[v]["cubin"])
        cmd = [sys.executable, __file__, "--trap-worker", str(lim), "--cubins", str(tmp / f"{v.key}.cubin")]
        t0 = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            line = ([l for l in p.stdout.splitlines() if l.startswith("TRAP")] or [f"TRAP ? rc={p.returncode} {p.stderr[-300:]}"])[0]
        except subprocess.TimeoutExpired:
            line = f"TRAP hang: no fault within {timeout} s"
        ok = line.startswith("TRAP ok")
        bad += not ok
        print(f"{'PASS' if ok else 'FAIL'} spin limit {lim or 'default (kernel MBAR_SPIN_LIMIT)'}: {line} [{time.time() - t0:.1f} s with process start]", flush=True)
    return 1 if bad else 0


# ---------------------------------------------------------------- timing (information only)

# Tile configs the bench times beside the defaults (non-causal), to back the recommendation.
BENCH_TILES = {64: [dict(block_n=128, kv_stages=3), dict(block_n=192, kv_stages=2), dict(block_n=64, kv_stages=3)],
               128: [dict(block_n=128, kv_stages=3), dict(block_n=64, kv_stages=3), dict(block_n=192, kv_stages=2)]}


def run_bench(shapes=((4, 16, 2048, 2048),), reps: int = 20) -> int:
    """Median time of full at the default tiles (and a few others), and PyTorch SDPA in the same
    process where torch is present. Information for part 2 (the plain, non-overlapped schedule)."""
    import cupy as cp
    from harness.toolchain import tma
    vs = [variant("full", d, c) for d in (64, 128) for c in (False, True)]
    vs += [variant("full", d, False, **t) for d in (64, 128) for t in BENCH_TILES[d]]
    comp = compile_all(vs)
    tmp = Path(tempfile.mkdtemp(prefix="hopper_bench_"))
    try:
        import torch
        import torch.nn.functional as F
    except Exception:
        torch = None
    for v in vs:
        (tmp / f"{v.key}.cubin").write_bytes(comp[v]["cubin"])
        fn = cp.RawModule(path=str(tmp / f"{v.key}.cubin")).get_function("flashcore_fwd")
        fn.max_dynamic_shared_size_bytes = v.smem
        for B, H, Sq, Sk in shapes:
            D, bm = v.head_dim, block_m(v.consumer_wgs)
            rng = cp.random.default_rng(0)
            q, k, vv = (rng.standard_normal((B, H, S, D), dtype=cp.float32).astype(cp.float16) for S in (Sq, Sk, Sk))
            o = cp.empty((B, H, Sq, D), cp.float16)
            lse = cp.empty((B, H, Sq), cp.float32)
            z = np.uint64(0)
            args = (q, k, vv, o, lse, z, z, z, z, z, z, np.int32(H), np.int32(Sq), np.int32(Sk),
                    np.float32(1 / math.sqrt(D)), np.int32(0), np.int32(Sq)) + tma.descs_for(q, k, vv, block_m=bm, block_n=v.block_n)
            grid = (-(-Sq // bm), H, B)

            def once():
                fn(grid, (block_threads(v.consumer_wgs),), args, shared_mem=v.smem)
            ts = []
            for _ in range(3):
                once()
            for _ in range(reps):
                e0, e1 = cp.cuda.Event(), cp.cuda.Event()
                e0.record(); once(); e1.record(); e1.synchronize()
                ts.append(cp.cuda.get_elapsed_time(e0, e1) * 1e-3)
            t = float(np.median(ts))
            flop = 4 * B * H * Sq * Sk * D / (2 if v.causal else 1)
            line = f"BENCH {v.label:36s} {B},{H},{Sq}x{Sk}: {t * 1e6:8.1f} us  {flop / t / 1e12:6.1f} TFLOP/s"
            if torch is not None:
                tq, tk, tv = (torch.as_tensor(x, device="cuda") for x in (q, k, vv))
                for _ in range(3):
                    F.scaled_dot_product_attention(tq, tk, tv, is_causal=v.causal)
                tts = []
                for _ in range(reps):
                    s0, s1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s0.record(); F.scaled_dot_product_attention(tq, tk, tv, is_causal=v.causal); s1.record()
                    s1.synchronize()
                    tts.append(s0.elapsed_time(s1) * 1e-3)
                tt = float(np.median(tts))
                line += f" | torch SDPA {tt * 1e6:8.1f} us ({tt / t:.2f}x)"
            print(line, flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compile-only", action="store_true", help="compile every variant for sm_90a (no GPU)")
    ap.add_argument("--modes", default="", help="comma-separated subset of modes (GPU run)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per mode's worker process")
    ap.add_argument("--trap-check", action="store_true", help="GPU: a stuck mbarrier wait must fault, not hang")
    ap.add_argument("--bench", action="store_true", help="GPU: time full at 4,16,2048 (information only)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--trap-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cubins", help=argparse.SUPPRESS)
    ap.add_argument("--cases", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.trap_worker is not None:
        trap_worker(a.trap_worker, Path(a.cubins))
        return 0
    if a.trap_check:
        return run_trap_check([1 << 20, 0], a.timeout)
    if a.bench:
        return run_bench()
    if a.worker:
        worker(a.worker, Path(a.cubins), [int(x) for x in a.cases.split(",")])
        return 0
    if a.compile_only:
        return run_compile_only(default_variants() + extra_variants())
    return run_gpu(a.timeout, [m for m in a.modes.split(",") if m] or None)


if __name__ == "__main__":
    sys.exit(main())
