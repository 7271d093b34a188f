"""The sm_90a kernel (kernels/flashcore_hopper.cu) on a CPU box: every mode x D {64, 128} x causal
compiles for sm_90a with NVRTC (the compiler the run time uses) with 0 spill bytes, 0 stack and
no ptxas warning (C7513: wgmma serialised by a register write; C7519: warpgroup.arrive injected;
both cost speed, so they fail here); the SASS uses wgmma and TMA; the signature is the sm_80
kernel's 17 parameters plus three tensor maps; the TMA host module fails cleanly without a driver.

The harness's Variant has no sm_90a arch (and carries the sm_80 kernel's tile macros), so this
compiles with cupy.cuda.nvrtc directly, with harness.toolchain.compiler's include-dir finder and
whole-cubin reader, as compiler.compile_cubin does.

Seeded bugs (debug_modes/hopper_bugs.py, -DBUG_<NAME>): each compiles clean for sm_90a in every
mode at D = 64 and 128; it changes the SASS of exactly the modes BUG_CHANGES lists (full among
them), and every other mode compiles to the clean kernel's cubin byte for byte, so the modes before
its stage pass wherever the clean kernel does and bisection's first changed mode is its stage.
"""

import ctypes
import functools
import itertools
import re
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from harness.toolchain import compiler

ROOT = Path(__file__).resolve().parent.parent
KERNEL = ROOT / "kernels" / "flashcore_hopper.cu"
FUSED = ROOT / "kernels" / "flashcore_fused.cu"

MODES = {"qk_only": ("DEBUG_QK_ONLY", True), "softmax_only": ("DEBUG_SOFTMAX_ONLY", True),
         "pv_only": ("DEBUG_PV_ONLY", True), "uniform_p": ("UNIFORM_P", False),
         "full": (None, True), "fp32_p": ("FP32_P", True)}
VARIANTS = [(m, d, c) for m, d, c in itertools.product(MODES, (64, 128), (False, True)) if MODES[m][1] or not c]
# Tile configs beyond the defaults (BLOCK_N, KV_STAGES, CONSUMER_WGS) that must stay clean too.
TILE_VARIANTS = [(d, bn, st, wgs) for d in (64, 128) for bn, st, wgs in ((64, 3, 2), (64, 2, 1), (32, 4, 2))]


def _nvrtc_build(defines: tuple):
    """(ok, log, cubin) of one build (no pytest calls: it also runs in a worker)."""
    from cupy.cuda import nvrtc
    opts = ["-std=c++17", "--gpu-architecture=sm_90a", "--ptxas-options=-v", "-ftz=true", "-lineinfo",
            f"-I{compiler.find_cuda_include()}", f"-I{KERNEL.parent}"] + [f"-D{d}" for d in defines]
    prog = nvrtc.createProgram(KERNEL.read_text(), KERNEL.name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, opts)
        except Exception:
            return False, nvrtc.getProgramLog(prog), b""
        return True, nvrtc.getProgramLog(prog), compiler._whole_cubin(nvrtc, prog)
    finally:
        nvrtc.destroyProgram(prog)


def _compile(defines: list, want_cubin: bool = False):
    ok, log, cubin = _nvrtc_build(tuple(defines))
    if not ok:
        pytest.fail(f"{defines}: compilation failed\n{log}")
    return log, compiler.parse_ptxas(log), cubin if want_cubin else b""


def _defines(mode, d, causal, extra=()):
    flag = MODES[mode][0]
    return [f"HEAD_DIM={d}", f"IS_CAUSAL={int(causal)}", *extra] + ([flag] if flag else [])


def _assert_clean(log, res, what):
    assert res["registers"] > 0, (what, log)
    assert res["spill_stores"] == 0 and res["spill_loads"] == 0, (what, res)
    assert res["stack_bytes"] == 0, (what, res)
    assert "C7513" not in log and "C7519" not in log, (what, log)
    warnings = [l for l in log.splitlines() if re.search(r"warning", l, re.I)]
    assert not warnings, (what, warnings)


@pytest.mark.parametrize("mode,d,causal", VARIANTS)
def test_every_mode_compiles_for_sm90a_clean(mode, d, causal):
    log, res, _ = _compile(_defines(mode, d, causal))
    _assert_clean(log, res, (mode, d, causal))
    assert res["registers"] <= 255


@pytest.mark.parametrize("d,bn,st,wgs", TILE_VARIANTS)
def test_other_tiles_compile_clean(d, bn, st, wgs):
    for mode, causal in (("full", True), ("qk_only", False), ("fp32_p", False)):
        log, res, _ = _compile(_defines(mode, d, causal, (f"BLOCK_N={bn}", f"KV_STAGES={st}", f"CONSUMER_WGS={wgs}")))
        _assert_clean(log, res, (mode, d, causal, bn, st, wgs))


def test_plain_sm90_is_refused():
    """wgmma exists on sm_90a only: a plain sm_90 build must fail (so nobody ships one by mistake)."""
    from cupy.cuda import nvrtc
    prog = nvrtc.createProgram(KERNEL.read_text(), KERNEL.name, [], [])
    try:
        with pytest.raises(Exception):
            nvrtc.compileProgram(prog, ["-std=c++17", "--gpu-architecture=sm_90", f"-I{compiler.find_cuda_include()}",
                                        f"-I{KERNEL.parent}", "-DHEAD_DIM=64"])
    finally:
        nvrtc.destroyProgram(prog)


@pytest.mark.parametrize("mode", ["full", "pv_only", "softmax_only"])
def test_sass_uses_wgmma_and_tma(mode):
    _, _, cubin = _compile(_defines(mode, 128, False), want_cubin=True)
    text = _disassemble(cubin)
    if mode == "softmax_only":       # no matrix product, no shared memory
        assert "HGMMA" not in text and "UTMALDG" not in text
        return
    assert "HGMMA.64x128x16.F32" in text and "UTMALDG.3D" in text and "SYNCS" in text
    assert not re.search(r"\b(LDL|STL)\b", text)
    if mode == "pv_only":            # P.V only: one wgmma kind, A from registers, V transposed
        assert ".tnspB" in text


def test_signature_is_the_sm80_contract_plus_three_tensor_maps_and_version_9s_counter():
    """17 parameters as flashcore_fused's, the three maps, and, under TILE_COUNTER only, the
    counter word (the signature reader takes an undecided #if branch as read). The registry says
    the same: every sm_90a entry's trailing parameters are the maps, version 9's the counter too."""
    from harness.toolchain import counter, signature
    from kernels import registry
    fused = [s for s in signature.kernels_in(FUSED.read_text(), {"HEAD_DIM": "64"}) if s.name == "flashcore_fwd"][0]
    text = KERNEL.read_text()
    hopper = [s for s in signature.kernels_in(text, {"HEAD_DIM": "64"}) if s.name == "flashcore_fwd"][0]
    assert hopper.extern_c
    assert [(p.type, p.name) for p in hopper.params[:17]] == [(p.type, p.name) for p in fused.params]
    assert [(p.type, p.name) for p in hopper.params[17:]] == [
        ("const __grid_constant__ TmaDesc", n) for n in ("tmQ", "tmK", "tmV")] + [
        ("unsigned int* __restrict__", "tile_counter")]
    assert re.search(r"tmV\s*#if TILE_COUNTER\s*, unsigned int\* __restrict__ tile_counter", re.sub(r"//[^\n]*", "", text))
    for e in registry.KERNELS.values():
        if e.file == KERNEL.name:
            # the registry's literal is the harness's counter.PARAM (kernels/ may not import harness/)
            assert e.trailing_params == ("tma:Q", "tma:K", "tma:V") + ((counter.PARAM,) if e.tile_counter else ()), e.name


def test_smem_formula_matches_the_kernel_comment():
    from tests.scripts import load_script
    sc = load_script("hopper_selfcheck")
    text = KERNEL.read_text()
    # Q_BUFS: 1, or 2 where ITEM_OVERLAP=1 keeps a second Q tile (the registry's flashcore_hopper_io smem)
    assert "#define SMEM_BYTES (1024 + Q_BUFS * 2 * Q_TILE_HALVES + KV_STAGES * 2 * 2 * KV_TILE_HALVES)" in text
    for d, bn, st, expect in ((64, 128, 2, 82944), (128, 128, 2, 164864), (64, 128, 3, 115712), (128, 64, 3, 132096)):
        assert sc.smem_bytes(d, bn, st, 2) == expect
        assert f"{expect:,}" in text       # the worked examples in the header comment
    assert sc.smem_bytes(128, 128, 2, 2) <= 227 * 1024


def test_tma_module_without_a_driver():
    from harness.toolchain import tma
    z = tma.null_desc()
    assert z.dtype.itemsize == 128 and z.shape == (1,) and not z.view(np.uint8).any()
    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("a driver is present: the no-driver error cannot be seen here")
    except OSError:
        pass
    tma._driver.cache_clear()
    with pytest.raises(RuntimeError, match="libcuda.so.1") as e:
        tma.encode_bhsd(0x10000, 2, 128, 64, 128)
    assert len(str(e.value).splitlines()) == 1


# ---------------------------------------------------------------- seeded bugs
from debug_modes.bugs import BUGS                    # noqa: E402  (the sm_80 kernel's)
from debug_modes.hopper_bugs import HOPPER_BUGS      # noqa: E402

# harness/run/diagnose.py: the bisection order and the stage each mode names when it is the first
# that is not ok (a wrong number, a fault or a hang alike).
BISECT_MODES = ("qk_only", "softmax_only", "pv_only", "uniform_p", "full")
STAGE_OF_MODE = {"qk_only": "qk", "softmax_only": "softmax", "pv_only": "pv", "uniform_p": "pv", "full": "glue"}
PV_MODES = {"pv_only", "uniform_p", "full", "fp32_p"}
# The modes whose SASS each bug changes: where it fails (or hangs) once its shape feature is there.
# Every other mode must compile to the clean cubin byte for byte.
BUG_CHANGES = {
    "K_DESC_SBO": {"qk_only", "full", "fp32_p"},            # only qk_tile reads K's descriptor
    "CAUSAL_MASK_ROW": {"qk_only", "full", "fp32_p"},       # mask_scores; causal builds only
    "EMPTY_COUNT": {"qk_only"} | PV_MODES,                  # every K/V pipeline; softmax_only has none
    "V_KSTEP": PV_MODES,                                    # only pv_tile reads V's descriptor
    "V_DESC_LBO": PV_MODES,
    "V_TAIL_COORD": PV_MODES,                               # the V box; K's is unchanged
    "RESCALE_AFTER_PV": {"full", "fp32_p"},                 # the only modes that rescale O
}
# Bugs inside an `IS_CAUSAL &&` term: a non-causal build has the clean SASS (only line numbers move).
CAUSAL_ONLY = {"CAUSAL_MASK_ROW"}


def _sections(cubin: bytes) -> dict:
    """{name: bytes} of the cubin's ELF64 sections (NOBITS ones empty)."""
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    hdrs = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * shentsize) for i in range(shnum)]
    names = hdrs[shstrndx][4]
    out = {}
    for name, kind, _, _, off, size, *_ in hdrs:
        end = cubin.index(b"\0", names + name)
        out[cubin[names + name:end].decode()] = b"" if kind == 8 else cubin[off:off + size]
    return out


def _sass_bytes(cubin: bytes) -> bytes:
    return _sections(cubin)[".text.flashcore_fwd"]


def _bug_defines(mode, d, causal, bug=None):
    return tuple(_defines(mode, d, causal, (f"BUG_{bug}",) if bug else ()))


def _bug_causal(bug, mode):
    return bug in CAUSAL_ONLY and MODES[mode][1]     # uniform_p has no causal form




@functools.lru_cache(maxsize=1)
def _bug_builds() -> dict:
    """Every build the seeded-bug tests compare, compiled once, on one process per CPU (NVRTC holds
    the GIL: threads would run one at a time; no CUDA context is needed, so fork is safe)."""
    import concurrent.futures as cf
    import multiprocessing as mp
    import os
    want = set()
    for bug in HOPPER_BUGS:
        for mode, d in itertools.product(MODES, (64, 128)):
            c = _bug_causal(bug, mode)
            want |= {_bug_defines(mode, d, c, bug), _bug_defines(mode, d, c)}
            if bug in CAUSAL_ONLY and c:
                want |= {_bug_defines(mode, d, False, bug), _bug_defines(mode, d, False)}
    want = sorted(want)
    with cf.ProcessPoolExecutor(max_workers=max(1, min(len(want), os.cpu_count() or 2)),
                                mp_context=mp.get_context("fork")) as ex:
        return dict(zip(want, ex.map(_nvrtc_build, want)))


def _compiled(defines: tuple):
    """(log, ptxas resources, cubin) of a seeded-bug test's build."""
    ok, log, cubin = _bug_builds().get(defines) or _nvrtc_build(defines)
    if not ok:
        pytest.fail(f"{list(defines)}: compilation failed\n{log}")
    return log, compiler.parse_ptxas(log), cubin


def test_hopper_bug_table():
    kernel_text = KERNEL.read_text() + "".join(p.read_text() for p in (KERNEL.parent / "hopper").glob("*.cuh"))
    from harness.check.coverage import FEATURES
    from harness.check.inputs import INPUT_SETS
    assert len(HOPPER_BUGS) >= 4
    assert not set(HOPPER_BUGS) & set(BUGS), "a Hopper bug reuses an sm_80 bug's name"
    assert set(BUG_CHANGES) == set(HOPPER_BUGS)
    # every switch the kernel tests is a listed bug, and every listed bug is a switch of the kernel
    assert set(re.findall(r"\bBUG_([A-Z0-9_]+)", re.sub(r"//[^\n]*", "", kernel_text))) == set(HOPPER_BUGS)
    for name, b in HOPPER_BUGS.items():
        assert b.name == name and b.stage in ("qk", "softmax", "pv", "glue"), b
        assert b.shows_when == "" or b.shows_when in FEATURES, b
        assert b.needs_input in INPUT_SETS and b.found_by == "diagnose", b
        # the stage is the first bisection mode whose code the bug changes (the earlier ones are
        # the clean cubin: test_seeded_bug_compiles_clean_and_changes_only_its_modes)
        first = next(m for m in BISECT_MODES if m in BUG_CHANGES[name])
        assert STAGE_OF_MODE[first] == b.stage, (name, first, b.stage)
        assert "full" in BUG_CHANGES[name], name
        assert (name == "EMPTY_COUNT") == ("HANGS" in b.description), name


@pytest.mark.parametrize("d", (64, 128))
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("bug", sorted(HOPPER_BUGS))
def test_seeded_bug_compiles_clean_and_changes_only_its_modes(bug, mode, d):
    causal = _bug_causal(bug, mode)
    log, res, cubin = _compiled(_bug_defines(mode, d, causal, bug))
    _assert_clean(log, res, (bug, mode, d, causal))
    assert res["registers"] <= 255
    _, clean_res, clean = _compiled(_bug_defines(mode, d, causal))
    if mode in BUG_CHANGES[bug]:
        assert _sass_bytes(cubin) != _sass_bytes(clean), f"BUG_{bug} does not change the SASS of {mode} D={d}"
    else:
        assert cubin == clean, f"BUG_{bug} changes {mode} D={d}, a mode before its stage / that it must not touch"


@pytest.mark.parametrize("d", (64, 128))
@pytest.mark.parametrize("bug", sorted(CAUSAL_ONLY))
def test_causal_bug_leaves_noncausal_sass_clean(bug, d):
    for mode in BUG_CHANGES[bug]:
        _, _, cubin = _compiled(_bug_defines(mode, d, False, bug))
        _, _, clean = _compiled(_bug_defines(mode, d, False))
        assert _sass_bytes(cubin) == _sass_bytes(clean), (bug, mode, d)


def _disassemble(cubin: bytes) -> str:
    from harness.toolchain import sass
    dis = sass.disassembler()
    if not dis:
        pytest.skip("no nvdisasm/cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "k.cubin"
        p.write_bytes(cubin)
        args = [dis, "-c", str(p)] if Path(dis).name.startswith("nvdisasm") else [dis, "-sass", str(p)]
        text = subprocess.run(args, capture_output=True, text=True, timeout=300).stdout
    if not text.strip():
        pytest.skip(f"{Path(dis).name} could not read the cubin")
    return text


@pytest.mark.parametrize("mode", ["qk_only", "full"])
def test_hang_bug_waits_without_a_trap(mode):
    """BUG_EMPTY_COUNT must HANG (the harness's deadline), not trap (a FAULT at ~10 s racing it):
    its mbarrier waits are unbounded, so its SASS has no trap, where the clean kernel's has."""
    _, _, clean = _compiled(_bug_defines(mode, 64, False))
    _, _, hang = _compiled(_bug_defines(mode, 64, False, "EMPTY_COUNT"))
    assert "BPT.TRAP" in _disassemble(clean)
    text = _disassemble(hang)
    assert "BPT.TRAP" not in text and "SYNCS.PHASECHK" in text


# ---------------------------------------------------------------- versions 2 and 3: the producer warpgroup
WS = "flashcore_hopper_ws"
OV = "flashcore_hopper_ov"                  # version 4: version 2 with QK(j+1) in flight during softmax(j+1)
PS = "flashcore_hopper_ps"                  # version 5: version 4, persistent
OVPP = "flashcore_hopper_ovpp"              # version 6: version 4 with version 3's turns
ILP = "flashcore_hopper_ilp"                # version 7: version 6 with four max/sum chains
DS = "flashcore_hopper_ds"                  # version 8: version 6 with stepped wgmma descriptors
DYN = "flashcore_hopper_dyn"                # version 9: version 6, persistent, items from a counter
RT = "flashcore_hopper_rt"                  # version 11: version 6, O's rescale in the turn, early K/V probe
KP = "flashcore_hopper_kp"                  # version 12: version 6 with the early K/V probe alone
ST = "flashcore_hopper_st"                  # version 13: version 3 with the turn around the softmax
OVST = "flashcore_hopper_ovst"              # version 14: version 6 with the turn around the softmax
OVST2 = "flashcore_hopper_ovst2"            # version 14, the row max before the turn
OVSTI = "flashcore_hopper_ovsti"            # version 16: version 14 with four max/sum chains
KV = "flashcore_hopper_kv"                  # version 17: version 6, K and V in pipelines of their own
KV144 = "flashcore_hopper_kv144"            # version 17 with 144-key tiles at D = 128
WO = "flashcore_hopper_wo"                  # version 18: version 6 with O stored 16 bytes per thread
DYNWO = "flashcore_hopper_dynwo"            # version 18 on version 9
WOEL = "flashcore_hopper_woel"              # version 19: version 18 with the first loads before __syncthreads
WOS = "flashcore_hopper_wos"                # version 20: version 6 with O staged in shared memory, whole rows stored
IO = "flashcore_hopper_io"                  # version 21: version 18 on 9, the item boundary as one more loop iteration
IOW = "flashcore_hopper_iow"                # version 22: version 21 with one Q buffer, reloaded per warpgroup
IO3 = "flashcore_hopper_io3"                # version 24: version 21 with three consumer warpgroups at D = 64
IOWK = "flashcore_hopper_iowk"              # version 25: version 22 with P packed at the end of each iteration
IOR = "flashcore_hopper_ior"                # version 26: version 21 with rolled polls and a cold boundary
IOWR = "flashcore_hopper_iowr"              # version 26 on version 22
IOST = "flashcore_hopper_iost"              # version 27: version 21 with version 14's softmax turns
IOST2 = "flashcore_hopper_iost2"            # version 27, the row max before the turn
# Every mode and every seeded bug: the bases of the versions (2, 3) and what forward() launches
# (19, 9; version 6 until bc57c76), and versions 21 and 22, which rewrite the persistent loop's
# item boundary (ITEM_OVERLAP). The versions measured and left in the registry
# unlaunched (MEASURED_ENTRIES) passed this matrix at their own commits and on the device; they
# share every line of the file with these, so each is held to its full-mode builds here (the
# matrix grew by 18 compiles per entry, and CI's 20 minutes do not hold them all).
WS_ENTRIES = [WS, "flashcore_hopper_pp", WOEL, DYN, IO, IOW]   # pp: version 3, version 2 with ping-pong turns
MEASURED_ENTRIES = [OV, PS, OVPP, ILP, DS, RT, KP, ST, OVST, OVST2, OVSTI, KV, WO, DYNWO, WOS,
                    IO3, IOWK, IOR, IOWR, IOST, IOST2]


@pytest.mark.parametrize("mode,d,causal", [("full", 128, False), ("full", 64, True), ("qk_only", 64, False),
                                           ("pv_only", 128, False), ("fp32_p", 128, False)])
def test_early_loads_issue_the_first_copies_before_the_blocks_first_barrier(mode, d, causal):
    """Version 19 (EARLY_LOADS): thread 0's first TMA copy (UTMALDG) comes before the block's
    __syncthreads (the first BAR.SYNC), behind a proxy fence; in version 18 it comes after."""
    from harness.toolchain.variant import Variant
    first = {}
    for e in (WO, WOEL):
        text = _disassemble(compiler.compile_cubin(Variant(mode, d, causal, kernel=e))[1])
        ops = re.findall(r"\b(UTMALDG|BAR\.SYNC)\b", text)
        first[e] = ops.index("UTMALDG") < ops.index("BAR.SYNC")
    assert first == {WO: False, WOEL: True}, first


@pytest.mark.parametrize("base,wide", [(OVPP, WO), (DYN, DYNWO), (OVPP, WOS)])
@pytest.mark.parametrize("mode,d", [("full", 64), ("full", 128), ("pv_only", 128), ("uniform_p", 64),
                                    ("fp32_p", 128)])
def test_wide_o_store_stores_o_in_16_bytes_where_it_is_fp16(mode, d, base, wide):
    """Versions 18 (WIDE_O_STORE) and 20 (STAGED_O_STORE): where O is fp16, its two-column 32-bit
    stores (STG.E) are gone and 16-byte stores (STG.E.128) write it; what is left of STG.E is the
    LSE's, as in the base. Version 20 reads its staged rows back in 16-byte shared loads (LDS.128),
    one per global store. FP32_P's float O keeps the base's stores."""
    from harness.toolchain.variant import Variant
    count = {}
    for e in (base, wide):
        text = _disassemble(compiler.compile_cubin(Variant(mode, d, False, kernel=e))[1])
        count[e] = {op: len(re.findall(rf"\b{re.escape(op)}\s", text))
                    for op in ("STG.E", "STG.E.64", "STG.E.128", "LDS.128")}
    lse = 2 if mode in ("full", "fp32_p") else 0         # finish_row's LSE store, once per row half
    if mode == "fp32_p":
        assert count[wide] == count[base] and count[base]["STG.E.64"] > 0, count
    else:
        assert count[base]["STG.E.128"] == 0 and count[base]["STG.E"] >= d // 8 * 2, count
        assert count[wide]["STG.E"] == lse and count[wide]["STG.E.128"] >= d // 32 * 2, count
        if wide == WOS:
            assert count[wide]["LDS.128"] == count[wide]["STG.E.128"] and count[base]["LDS.128"] == 0, count


@pytest.mark.parametrize("entry", [IO, IOW])
@pytest.mark.parametrize("mode,d", [("full", 64), ("full", 128), ("fp32_p", 64)])
def test_item_overlap_loop_holds_no_call(mode, d, entry):
    """Versions 21-22 store each item's O inside the item loop, between passes of the key loop:
    a subroutine call there (IEEE 1/l's slow path) held the loop to the launch's 168 registers and
    spilled, so their epilogue's 1/l is the approximate reciprocal (finish_row<FAST_INV>). No CALL in their SASS, 0 spills; the
    entries that store O after the loop keep the IEEE division, and its call."""
    from harness.toolchain.variant import Variant
    v = Variant(mode, d, False, kernel=entry)
    assert compiler.compile_check(v).spill_bytes == 0
    assert not re.search(r"\bCALL\b", _disassemble(compiler.compile_cubin(v)[1]))
    assert re.search(r"\bCALL\b", _disassemble(compiler.compile_cubin(Variant(mode, d, False, kernel=DYNWO))[1]))


def _key_loop(text: str) -> list:
    """The opcodes of the smallest loop (a backward branch to a label) that holds a tile's
    GEMMs, Q.K^T's and P.V's HGMMAs (at least 12 at D = 64): the key loop's body as laid out."""
    from harness.toolchain.sass import _INSTR      # the opcode, past any predicate
    label_at, pending, ins = {}, [], []             # ins: (address, opcode, the line)
    for line in text.splitlines():
        m = re.match(r"^\s*\.(L_x_\d+):", line)
        if m:
            pending.append(m.group(1))
            continue
        op = _INSTR.match(line)
        if op:
            addr = int(re.match(r"\s*/\*([0-9a-f]+)\*/", line).group(1), 16)
            ins.append((addr, op.group(1), line))
            label_at.update((name, addr) for name in pending)
            pending = []
    best = None
    for addr, op, line in ins:
        m = re.search(r"(L_x_\d+)", line) if op == "BRA" else None
        if m and label_at.get(m.group(1), addr) < addr:
            body = [o for a, o, _ in ins if label_at[m.group(1)] <= a <= addr]
            if body.count("HGMMA") >= 12 and (best is None or len(body) < len(best)):
                best = body
    assert best, "no key loop found"
    return best


@pytest.mark.parametrize("entry", [IO, IOW])
@pytest.mark.parametrize("d", [64, 128])
def test_item_overlap_key_loop_is_as_compact_as_version_19s(d, entry):
    """Versions 21-22's key loop holds no store of O (the boundary leaves the loop and stores
    after it: inside, ptxas laid the store between the loop's hot paths) and builds its HGMMA
    descriptors as version 19's does, in uniform registers: no more R2UR moves than version 19's
    loop (version 22's from warp >> 2 and a reassigned sQw had three times as many, b6ef2dc)."""
    from harness.toolchain.variant import Variant
    loops = {e: _key_loop(_disassemble(compiler.compile_cubin(Variant("full", d, False, kernel=e))[1]))
             for e in (WOEL, entry)}
    assert not any(op.startswith("STG") for op in loops[entry]), "O stored inside the key loop"
    assert loops[entry].count("R2UR") <= loops[WOEL].count("R2UR"), {e: l.count("R2UR") for e, l in loops.items()}
    assert len(loops[entry]) < 1.5 * len(loops[WOEL]), {e: len(l) for e, l in loops.items()}


@pytest.mark.parametrize("base,rolled", [(IO, IOR), (IOW, IOWR)])
@pytest.mark.parametrize("d", [64, 128])
def test_version_26_key_loop_holds_no_unrolled_poll(d, base, rolled):
    """ROLLED_POLLS: each bounded mbarrier wait in the key loop is one try_wait and its branches,
    where ptxas unrolled it 32 times (versions 21-22: the K/V and next-Q waits, 64 SYNCS in the
    loop at 6c13dfc); so the rolled loop has a handful of SYNCS and is over 100 instructions shorter."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")
    loops = {e: _key_loop(_disassemble(compiler.compile_cubin(Variant("full", d, False, kernel=e))[1]))
             for e in (base, rolled)}
    syncs = {e: loop.count("SYNCS") for e, loop in loops.items()}
    assert syncs[base] >= 64 and syncs[rolled] <= 8, syncs
    assert len(loops[rolled]) <= len(loops[base]) - 100, {e: len(loop) for e, loop in loops.items()}


@pytest.mark.parametrize("entry", MEASURED_ENTRIES)
@pytest.mark.parametrize("mode,d", [("full", 64), ("full", 128), ("fp32_p", 128)])
def test_measured_entry_compiles_clean(mode, d, entry):
    """A version measured and not launched still builds as it was measured: 0 spills, no
    C7513/C7519, setmaxnreg in its SASS."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    v = Variant(mode, d, False, kernel=entry)
    res = compiler.compile_check(v)
    assert res.registers > 0 and res.spill_bytes == 0 and not res.wgmma_warnings, res
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")
    assert sass.summarize(v).ok


@pytest.mark.parametrize("entry", WS_ENTRIES)
@pytest.mark.parametrize("mode,d,causal", VARIANTS)
def test_warp_specialised_entry_compiles_clean_with_setmaxnreg(mode, d, causal, entry):
    """kernels/registry.py's flashcore_hopper_ws (PRODUCER_WG=1): every mode through the harness's
    compile path, 0 spills, no C7513/C7519, and USETMAXREG in every tensor-core variant's SASS
    (the registry's required_sass, as `compile --sass` judges it)."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    v = Variant(mode, d, causal, kernel=entry)
    assert v.threads == 128 * 3 and v.block_m == 128
    res = compiler.compile_check(v)
    assert res.registers > 0 and res.spill_bytes == 0 and not res.wgmma_warnings, res
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")
    summary = sass.summarize(v)
    assert summary.ok, summary.verdict
    from debug_modes.registry import get_mode
    assert (summary.hmma > 0) == get_mode(mode).tensor_cores and not summary.missing


@pytest.mark.parametrize("d,bn", [(128, 160), (128, 176), (64, 176)])
@pytest.mark.parametrize("mode", ["full", "fp32_p"])
def test_producer_build_holds_large_key_tiles_without_spills(mode, d, bn):
    """Consumer code after setmaxnreg.inc 240 may use more than the launch's 168 registers: the
    160- and 176-key tiles at D = 128 (808-904 spill bytes while the consumers' key loop held a
    trap, kernels/NOTES.md) compile with 0 spills, no stack and no ptxas warning."""
    log, res, _ = _compile(_defines(mode, d, False, ("PRODUCER_WG=1", f"BLOCK_N={bn}")))
    _assert_clean(log, res, (mode, d, bn))


def test_required_sass_is_judged():
    from harness.toolchain.sass import SassSummary
    s = SassSummary("v", 100, 4, 0, 0, True, ("USETMAXREG",))
    assert not s.ok and s.verdict == "NO USETMAXREG"


@pytest.mark.parametrize("entry", WS_ENTRIES)
@pytest.mark.parametrize("bug", sorted(HOPPER_BUGS))
def test_warp_specialised_entry_takes_every_hopper_bug(bug, entry):
    """The seeded bugs switch in the producer-warpgroup build too (the harness runs them on either
    entry): each compiles clean and changes the full mode's code."""
    from harness.toolchain.variant import Variant
    d = 128
    clean = compiler.compile_cubin(Variant("full", d, bug == "CAUSAL_MASK_ROW", kernel=entry))[1]
    res, cubin = compiler.compile_cubin(Variant("full", d, bug == "CAUSAL_MASK_ROW", (bug,), kernel=entry))
    assert res.spill_bytes == 0 and not res.wgmma_warnings, (bug, res)
    assert cubin != clean, bug


@pytest.mark.parametrize("mode", ["full", "qk_only", "pv_only"])
def test_pingpong_turns_are_in_version_3_only(mode):
    """PINGPONG=1 adds the named-barrier turns (BAR.SYNC / BAR.ARV with ids 1 and 2) to the
    GEMM modes of flashcore_hopper_pp; version 2's code has none of them."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    pp = compiler.compile_cubin(Variant(mode, 128, False, kernel="flashcore_hopper_pp"))[1]
    ws = compiler.compile_cubin(Variant(mode, 128, False, kernel=WS))[1]
    assert pp != ws
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")
    text_pp, text_ws = _disassemble(pp), _disassemble(ws)
    assert "BAR.ARV" in text_pp and "BAR.ARV" not in text_ws


@pytest.mark.parametrize("d", (64, 128))
@pytest.mark.parametrize("mode", ["full", "fp32_p"])
def test_overlap_schedule_waits_for_qk_before_pv(mode, d):
    """OVERLAP_QK=1 (flashcore_hopper_ov) issues S(j+1) = Q.K(j+1)^T and then P(j).V(j) before any
    wait, and waits with one group still pending (WARPGROUP.DEPBAR.LE gsb0, 0x1); version 2 waits
    for each GEMM alone. The debug modes with one GEMM keep version 2's schedule (their SASS has
    no such wait)."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    ov = compiler.compile_cubin(Variant(mode, d, False, kernel=OV))[1]
    ws = compiler.compile_cubin(Variant(mode, d, False, kernel=WS))[1]
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")
    text_ov, text_ws = _disassemble(ov), _disassemble(ws)
    assert "DEPBAR.LE gsb0, 0x1" in text_ov and "DEPBAR.LE gsb0, 0x1" not in text_ws
    qk = _disassemble(compiler.compile_cubin(Variant("qk_only", d, False, kernel=OV))[1])
    assert "DEPBAR.LE gsb0, 0x1" not in qk


def _under_pv(text: str, opcode: str) -> list:
    """For each `DEPBAR.LE gsb0, 0x1` of a disassembly (S(j+1) landed, P(j).V(j) still in flight),
    how many `opcode` instructions lie between it and the next `DEPBAR.LE gsb0, 0x0`."""
    counts, n = [], None
    for l in text.splitlines():
        if "DEPBAR.LE gsb0, 0x1" in l:
            if n is not None:                   # a window left open: one count per 0x1 wait
                counts.append(n)
            n = 0
        elif n is not None and "DEPBAR.LE gsb0, 0x0" in l:
            counts.append(n)
            n = None
        elif n is not None:
            n += opcode in l
    return counts + ([n] if n is not None else [])


def _ex2_under_pv(text: str):
    """(MUFU.EX2 between the loop's `DEPBAR.LE gsb0, 0x1` and the next `DEPBAR.LE gsb0, 0x0`, every
    MUFU.EX2 of the kernel, how many 0x1 waits) of a disassembly."""
    windows = _under_pv(text, "MUFU.EX2")
    total = sum("MUFU.EX2" in l for l in text.splitlines())
    if len(windows) != 1:
        return 0, total, len(windows)
    return windows[0], total, 1


@pytest.mark.parametrize("entry", [OV, PS, OVPP, ILP, DS, DYN, RT, OVST, OVST2, OVSTI, KV, KV144])
@pytest.mark.parametrize("causal", (False, True))
@pytest.mark.parametrize("d", (64, 128))
@pytest.mark.parametrize("mode", ["full", "fp32_p"])
def test_overlap_schedule_runs_the_exp2s_under_pv(mode, d, causal, entry):
    """Version 4's point: tile j+1's exp2s run while P(j).V(j) is on the tensor cores. ptxas issued
    wait_group 0 in the first stall of the row max (0 of 66 MUFU.EX2 under the P.V at 2e2931b);
    hold_wait_below (hopper/ptx.cuh) keeps it below the row sums. So every exp2 of the loop's tile
    (BLOCK_N / 2 scores per thread and the two alphas) sits between `DEPBAR.LE gsb0, 0x1` and
    `DEPBAR.LE gsb0, 0x0`, and the only other exp2s are the prologue tile's, as many again."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    v = Variant(mode, d, causal, kernel=entry)
    res, cubin = compiler.compile_cubin(v)
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")
    between, total, waits = _ex2_under_pv(_disassemble(cubin))
    assert waits == 1, (mode, d, causal, waits)
    assert between == v.block_n // 2 + 2 and total == 2 * between, (mode, d, causal, between, total)


# ---------------------------------------------------------------- version 5: persistent
@pytest.mark.parametrize("d", (64, 128))
@pytest.mark.parametrize("mode,causal", [("full", False), ("full", True), ("fp32_p", False), ("qk_only", False),
                                         ("pv_only", False), ("uniform_p", False), ("softmax_only", False)])
@pytest.mark.parametrize("pers,plain", [(PS, OV), (DYN, OVPP)])
def test_persistent_schedule_is_where_the_host_launches_it(mode, causal, d, pers, plain):
    """The kernel's rule (PERSISTENT_SCHEDULE: non-causal, not softmax_only) and the host's grid
    (Variant.persistent) must agree: a persistent kernel under a one-block-per-tile grid would
    redo every tile, a plain one under a persistent grid would leave tiles unwritten. Where the
    rule says no, version 5's SASS is version 4's, instruction for instruction."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    ps, ov = Variant(mode, d, causal, kernel=pers), Variant(mode, d, causal, kernel=plain)
    assert ps.persistent == (not causal and mode != "softmax_only") and not ov.persistent
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")
    same = _disassemble(compiler.compile_cubin(ps)[1]) == _disassemble(compiler.compile_cubin(ov)[1])
    assert same == (not ps.persistent), (mode, causal, d)


def test_persistent_grid_is_one_block_per_sm_at_most():
    """(blocks per batch, B): no more blocks than SMs (one block per SM: 227 KB of shared memory
    each) and no more than there are work items (query tiles x H per batch)."""
    from harness.check.shapes import Shape
    from harness.toolchain.variant import Variant
    v = Variant("full", 128, False, kernel=PS)
    assert v.grid(Shape(4, 16, 2048, 2048, 128), sms=132) == (33, 4, 1)
    assert v.grid(Shape(16, 16, 1024, 1024, 64), sms=132) == (8, 16, 1)     # 128 of 132 SMs
    assert v.grid(Shape(1, 1, 200, 200, 128), sms=132) == (2, 1, 1)         # two query tiles
    assert v.grid(Shape(200, 1, 128, 128, 128), sms=132) == (1, 200, 1)     # more batches than SMs
    assert v.grid(Shape(4, 16, 2048, 2048, 128), n_rows=256, sms=132) == (32, 4, 1)   # a window
    plain = Variant("full", 128, True, kernel=PS)
    assert plain.grid(Shape(4, 16, 2048, 2048, 128), sms=132) == (16, 16, 4)


def test_counter_grid_rounds_the_blocks_per_batch_up():
    """Version 9 takes items from a counter: a block past the SM count costs its start only, so
    the grid rounds SMs / B up (16 batches: 9 x 16 = 144 blocks, where the static schedule of
    version 5 leaves 4 of 132 SMs idle), still no more than there are work items."""
    from harness.check.shapes import Shape
    from harness.toolchain.variant import Variant
    v = Variant("full", 64, False, kernel=DYN)
    assert v.grid(Shape(16, 16, 1024, 1024, 64), sms=132) == (9, 16, 1)
    assert v.grid(Shape(4, 16, 2048, 2048, 128), sms=132) == (33, 4, 1)
    assert v.grid(Shape(1, 1, 200, 200, 128), sms=132) == (2, 1, 1)
    assert v.grid(Shape(200, 1, 128, 128, 128), sms=132) == (1, 200, 1)
    assert Variant("full", 64, True, kernel=DYN).grid(Shape(4, 16, 2048, 2048, 64), sms=132) == (16, 16, 4)


@pytest.mark.parametrize("mode", ["full", "qk_only", "pv_only", "uniform_p"])
def test_counter_schedule_takes_and_releases_items(mode):
    """TILE_COUNTER=1: the producer takes items with global atomics (ATOMG/RED on the counter) and
    the last block resets it, in every mode with a K/V pipeline (pv_only and uniform_p, with no Q
    tile, hand the item over with a bare arrival); version 5's static schedule has no atomics."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")
    dyn = _disassemble(compiler.compile_cubin(Variant(mode, 64, False, kernel=DYN))[1])
    stat = _disassemble(compiler.compile_cubin(Variant(mode, 64, False, kernel=PS))[1])
    assert "ATOMG" in dyn and "ATOMG" not in stat


# ---------------------------------------------------------------- version 6: overlap and turns
def _turn_bounds(lines):
    """(sync, arv, wait): the loop's GEMM turn runs from its last BAR.SYNC to the BAR.ARV before
    the one `DEPBAR.LE gsb0, 0x1` wait, at line `wait`."""
    wait = [i for i, l in enumerate(lines) if "DEPBAR.LE gsb0, 0x1" in l]
    assert len(wait) == 1, len(wait)
    arv = max(i for i in range(wait[0]) if "BAR.ARV" in lines[i])
    sync = max(i for i in range(arv) if "BAR.SYNC" in lines[i])
    return sync, arv, wait[0]


@pytest.mark.parametrize("entry", [OVPP, ILP, DS, DYN, RT, KP])
@pytest.mark.parametrize("d", (64, 128))
@pytest.mark.parametrize("mode", ["full", "fp32_p"])
def test_ping_pong_overlap_issues_both_gemms_in_one_turn(mode, d, entry):
    """FA3's schedule (flashcore_hopper_ovpp): per tile a warpgroup takes its turn (BAR.SYNC),
    issues Q.K(j+1)^T and P(j).V(j), gives the turn up (BAR.ARV), and only then waits for the
    Q.K^T (DEPBAR.LE gsb0, 0x1) and runs the softmax. So between the loop's last BAR.SYNC and
    BAR.ARV before that wait lie both GEMMs' HGMMAs: K_STEPS (D / 16) + P_KS (BLOCK_N / 16), the
    P.V twice in fp32_p (hi and lo). Version 4 has no turns at all."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    v = Variant(mode, d, False, kernel=entry)
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")
    lines = _disassemble(compiler.compile_cubin(v)[1]).splitlines()
    sync, arv, wait = _turn_bounds(lines)
    hgmma = sum("HGMMA" in l for l in lines[sync:arv])
    assert hgmma == d // 16 + (v.block_n // 16) * (2 if mode == "fp32_p" else 1), (mode, d, hgmma)
    assert not any("HGMMA" in l for l in lines[arv:wait])
    ov = _disassemble(compiler.compile_cubin(Variant(mode, d, False, kernel=OV))[1])
    assert "BAR.ARV" not in ov


# ---------------------------------------------------------------- version 7: the softmax's chains
def _longest_chain(lines, opcode):
    """The deepest chain of `opcode` instructions each reading a register the last one wrote,
    in program order (the two row halves' chains interleave in the listing): each instruction's
    destination gets depth 1 + the deepest of its sources' (0 where another opcode wrote it)."""
    import re
    depth, best = {}, 0
    for l in lines:
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][\w.]*)\s+(R\d+)\s*,\s*(.*?);", l)
        if not m:
            continue
        op, dst, srcs = m.group(1), m.group(2), re.findall(r"\bR\d+\b", m.group(3))
        if op.split(".")[0] == opcode:
            depth[dst] = 1 + max((depth.get(r, 0) for r in srcs), default=0)
            best = max(best, depth[dst])
        else:
            depth[dst] = 0
    return best


@pytest.mark.parametrize("d", (64, 128))
def test_softmax_ilp_splits_the_row_sum_chain(d):
    """SOFTMAX_ILP=4 (flashcore_hopper_ilp, common/softmax.cuh): the row sum of a 128-key tile is
    four chains of FADDs per row half, not one of 32 (2 x 16 scores). The deepest FADD chain is
    measured in the SASS of the full kernel: version 6's is the one serial chain (32, or more
    where l * alpha + sum joins it), version 7's about a quarter of it plus the combine."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")
    lines = {e: _disassemble(compiler.compile_cubin(Variant("full", d, False, kernel=e))[1]).splitlines()
             for e in (OVPP, ILP)}
    chain = {e: _longest_chain(lines[e], "FADD") for e in lines}
    assert chain[OVPP] >= 32 and chain[ILP] <= chain[OVPP] // 4 + 4, chain
    # the row max too (37 against 19 at 106cbd4: the chain runs on through the tiles' m)
    assert _longest_chain(lines[ILP], "FMNMX") < _longest_chain(lines[OVPP], "FMNMX"), chain


# ---------------------------------------------------------------- version 8: stepped descriptors

@pytest.mark.parametrize("d", (64, 128))
@pytest.mark.parametrize("mode", ["full", "fp32_p"])
def test_stepped_descriptors_leave_the_turn_to_the_hgmmas(mode, d):
    """DESC_STEP=1 (flashcore_hopper_ds, hopper/ptx.cuh smem_desc_plus): within a GEMM turn each
    HGMMA's descriptor is the operand's first plus an immediate, so the turn holds no per-step
    and/shift/or rebuild (ULOP3, USHF: a few for the one K and one V base each) and no R2UR (Q's
    descriptors are uniform: the warpgroup index is shuffled from lane 0); version 6 rebuilds every
    descriptor (at least one ULOP3 per HGMMA; fp32_p's hi and lo products share V's) and moves Q's over from vector registers."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")
    count = {}
    for e in (OVPP, DS):
        lines = _disassemble(compiler.compile_cubin(Variant(mode, d, False, kernel=e))[1]).splitlines()
        sync, arv, _ = _turn_bounds(lines)
        turn = lines[sync:arv]
        ops = [l.split(";")[0] for l in turn]
        count[e] = {k: sum(f" {k}" in l for l in ops) for k in ("HGMMA", "ULOP3", "USHF", "R2UR")}
        count[e]["all"] = len(turn)
    hg = count[DS]["HGMMA"]
    assert hg == count[OVPP]["HGMMA"] and hg >= 12, count
    assert count[OVPP]["ULOP3"] >= hg and count[OVPP]["R2UR"] > 0, count
    assert count[DS]["ULOP3"] + count[DS]["USHF"] <= 8 and count[DS]["R2UR"] == 0, count
    assert count[DS]["all"] < count[OVPP]["all"] * 0.75, count


# ---------------------------------------------------------------- version 11: the rescale in the turn
@pytest.mark.parametrize("d", (64, 128))
def test_version_11_rescales_o_inside_the_turn_and_probes_k_v_before_the_pack(d):
    """RESCALE_IN_TURN=1: at least half of O's rescale (one FMUL per accumulator element, D / 2
    per thread) lies between the loop turn's BAR.SYNC and BAR.ARV, among the HGMMAs, where
    version 6 has no FMUL at all. KV_PROBE_EARLY=1: P's packing (F2FP, BLOCK_N / 4 per thread)
    runs between the K/V barrier's probe (TRYWAIT) and the branch on its answer, where version 6
    branches right after the probe."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")
    counts = {}
    for entry in (RT, OVPP, KP):
        lines = _disassemble(compiler.compile_cubin(Variant("full", d, False, kernel=entry))[1]).splitlines()
        sync, arv, wait = _turn_bounds(lines)
        counts[entry] = sum("FMUL" in l for l in lines[sync:arv])
        # the pack's F2FPs between a barrier probe (TRYWAIT) and the branch on its answer
        under = 0
        for i, l in enumerate(lines[:sync]):
            if "TRYWAIT" in l:
                n = 0
                for m in lines[i + 1:sync]:
                    if "BRA" in m:
                        break
                    n += "F2FP" in m
                under = max(under, n)
        counts[entry, "f2fp_under_probe"] = under
    assert counts[OVPP] == 0 and counts[RT] >= d // 4, counts
    assert counts[RT, "f2fp_under_probe"] >= d // 16 and counts[OVPP, "f2fp_under_probe"] == 0, counts
    assert counts[KP] == 0 and counts[KP, "f2fp_under_probe"] >= d // 16, counts   # version 12: the probe alone


# ---------------------------------------------------------------- versions 13, 14: the softmax is the turn
def _turn_contents(entry, mode, d):
    """(MUFU.EX2, HGMMA, FMNMX) counts of each turn (BAR.SYNC .. BAR.ARV) in the SASS, in order."""
    from harness.toolchain.variant import Variant
    lines = _disassemble(compiler.compile_cubin(Variant(mode, d, False, kernel=entry))[1]).splitlines()
    out, start = [], None
    for i, l in enumerate(lines):
        if "BAR.SYNC" in l and "0x100" in l:
            start = i
        elif "BAR.ARV" in l and start is not None:
            body = lines[start:i]
            out.append(tuple(sum(op in b for b in body) for op in ("MUFU.EX2", "HGMMA", "FMNMX")))
            start = None
    return out


@pytest.mark.parametrize("d", (64, 128))
@pytest.mark.parametrize("mode", ["full", "fp32_p"])
@pytest.mark.parametrize("entry", [OVST, OVST2, OVSTI, IOST, IOST2])
def test_version_14_turns_hold_each_tile_softmax_and_no_gemm(entry, mode, d):
    """SOFTMAX_TURNS on the overlapped schedule: two turns in the code (the prologue tile's and the
    loop's), each holding one tile's exp2s (BLOCK_N / 2 scores per thread and the two alphas) and
    no HGMMA; with SOFTMAX_TURNS=2 the row max (FMNMX) lies before the turn, with =1 inside it.
    Version 27 is the same on version 21's loop, whose item boundary is one more iteration of it."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")
    v = Variant(mode, d, False, kernel=entry)
    got = [t for t in _turn_contents(entry, mode, d) if t != (0, 0, 0)]
    assert len(got) == 2, got
    assert all(ex2 == v.block_n // 2 + 2 and hgmma == 0 for ex2, hgmma, _ in got), got
    if entry in (OVST2, IOST2):
        assert all(fmnmx == 0 for *_, fmnmx in got), got
    else:
        assert all(fmnmx > 0 for *_, fmnmx in got), got


@pytest.mark.parametrize("d", (64, 128))
def test_version_13_takes_turns_at_the_softmax_not_at_the_gemms(d):
    """SOFTMAX_TURNS=1 (cuDNN's order): in full mode every turn (BAR.SYNC .. BAR.ARV) holds exp2s
    and no HGMMA (pinned there: ptxas moves register code across named barriers), where every
    one of version 3's turns holds HGMMAs (ptxas sank its exp2s into the P.V turn); in qk_only
    (no softmax) the entry keeps version 3's GEMM turns."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")

    def turns(entry, mode):
        return [t[:2] for t in _turn_contents(entry, mode, d)]

    st = [t for t in turns(ST, "full") if t != (0, 0)]
    assert st and all(ex2 > 0 and hgmma == 0 for ex2, hgmma in st), st
    pp = [t for t in turns("flashcore_hopper_pp", "full") if t != (0, 0)]
    assert pp and all(hgmma > 0 for _, hgmma in pp), pp
    assert all(hgmma > 0 for ex2, hgmma in turns(ST, "qk_only") if ex2 or hgmma)


# ---------------------------------------------------------------- version 17: K and V apart
@pytest.mark.parametrize("mode,causal", [("full", False), ("full", True), ("fp32_p", False), ("qk_only", False),
                                         ("pv_only", False), ("uniform_p", False)])
def test_version_17_at_144_keys_compiles_clean(mode, causal):
    """KV_SPLIT=1 with 144-key tiles at D = 128: 0 spills and no C7513/C7519 in every mode with a
    pipeline, within the arch's shared memory, where version 6's three shared stages of 144 keys
    would not fit."""
    from harness.toolchain.variant import Variant
    from kernels.registry import KERNELS
    v = Variant(mode, 128, causal, kernel=KV144)
    res = compiler.compile_check(v)
    assert res.spill_bytes == 0 and not res.wgmma_warnings, res
    limit = KERNELS[KV144].archs["sm_90a"]
    if mode != "fp32_p":                                  # fp32_p keeps 64-key tiles (mode_tiles)
        assert v.block_n == 144 and v.smem_bytes <= limit
        assert 1024 + 128 * 128 * 2 + 3 * 2 * 144 * 128 * 2 > limit


def test_version_17_at_144_keys_takes_its_hang_bug_without_spills():
    """BUG_EMPTY_COUNT at 144 keys spilled 248 bytes with unbounded waits and 592 with 2^32 - 1
    polls; its 2^24-poll bound (~80 s, far past the HANG deadline) compiles at 0 spills, and the
    bug still changes the code."""
    from harness.toolchain.variant import Variant
    clean = compiler.compile_cubin(Variant("full", 128, False, kernel=KV144))[1]
    res, cubin = compiler.compile_cubin(Variant("full", 128, False, ("EMPTY_COUNT",), kernel=KV144))
    assert res.spill_bytes == 0 and not res.wgmma_warnings and cubin != clean, res


def test_version_17_waits_on_k_and_v_apart():
    """The overlapped loop of KV_SPLIT=1 waits on two full barriers per tile (K(j+1), then V(j)) and
    arrives on two empty ones (V(j) and K(j+1)), where version 6 waits on one and arrives on one:
    more SYNCS try-waits and arrivals in its SASS, and a cubin of its own."""
    from harness.toolchain import sass
    from harness.toolchain.variant import Variant
    if not sass.disassembler():
        pytest.skip("no nvdisasm/cuobjdump")
    kv = _disassemble(compiler.compile_cubin(Variant("full", 128, False, kernel=KV))[1])
    ov = _disassemble(compiler.compile_cubin(Variant("full", 128, False, kernel=OVPP))[1])
    count = lambda text, op: sum(op in l for l in text.splitlines())
    assert count(kv, "SYNCS.ARRIVE") > count(ov, "SYNCS.ARRIVE")
    assert count(kv, "SYNCS.PHASECHK") > count(ov, "SYNCS.PHASECHK")
