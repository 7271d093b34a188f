"""The code both attention kernels share lives in kernels/common/ (on a CPU box, NVRTC only).

The sm_80 mma.sync kernel (kernels/flashcore_fused.cu) and the sm_90a wgmma kernel
(kernels/flashcore_hopper.cu) run the same stage code in the same fragment layout (the wgmma
m64nN fp32 accumulator per warp is the mma.sync m16n8 C layout): masking, the online softmax, P
packing, the debug matrices' I/O, the debug modes' stand-ins and the epilogue's row finish. It is
written once, in kernels/common/*.cuh, included by both kernels. Here:

* both kernels include the common headers, as the harness's include walker sees them
  (compiler.kernel_sources: what goes into the cache key);
* the functions that moved are defined in kernels/common/ only, not again in either kernel;
* representative variants of each kernel compile through the harness's compile path with 0 spills.

The move itself was proved by recompiling every variant before and after and comparing the
cubins' executable sections byte for byte (cubin_code() / code_differences() below: the minimal
ELF reader that comparison used; the debug sections, which hold line numbers and the names of
inlined functions, are left out of it, as they move with any edit of the source).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from harness.toolchain import compiler
from harness.toolchain.variant import Variant
from kernels import registry

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
COMMON = KERNELS / "common"
FUSED = KERNELS / registry.FLASHCORE_FUSED.file
HOPPER = KERNELS / registry.FLASHCORE_HOPPER.file

# The headers both kernels include, and the functions (and the struct) that moved into them.
COMMON_HEADERS = ("flags.cuh", "util.cuh", "mask.cuh", "softmax.cuh", "pack_p.cuh", "debug_io.cuh", "debug_stages.cuh",
                  "epilogue.cuh")
MOVED = {
    "util.cuh": ("smem_u32", "fast_exp2", "quad_sum", "store_out2"),
    "mask.cuh": ("mask_tile",),
    "softmax.cuh": ("softmax_update", "rescale_o"),
    "pack_p.cuh": ("pack_half2", "pack_lo", "pack_p_slice", "pack_p_lo_slice", "pack_p", "pack_p_lo"),
    "debug_io.cuh": ("DebugRows", "load_s_frag", "store_s_frag"),
    "debug_stages.cuh": ("store_scaled_s", "uniform_p_tile", "softmax_only_stage"),
    "epilogue.cuh": ("finish_row", "store_o_half"),
}
MOVED_MACROS = {"flags.cuh": ("USES_QK", "USES_PV"), "util.cuh": ("LOG2E", "NEG_INF"),
                "mask.cuh": ("TILE_NEEDS_MASK",)}


# ---------------------------------------------------------------- the cubin's code, for comparisons
def elf_sections(cubin: bytes) -> list:
    """The sections of an ELF64 little-endian cubin: [(name, type, flags, info, link, align, entsize,
    size, bytes)] (bytes empty for NOBITS, e.g. .nv.shared.*, whose size is the content)."""
    assert cubin[:4] == b"\x7fELF" and cubin[4] == 2 and cubin[5] == 1, "not an ELF64 little-endian file"
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    hdrs = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * shentsize) for i in range(shnum)]
    strtab = hdrs[shstrndx][4]

    def name(off):
        return cubin[strtab + off:cubin.index(b"\0", strtab + off)].decode()

    out = []
    for sh_name, kind, flags, _addr, off, size, link, info, align, entsize in hdrs:
        data = b"" if kind == 8 else cubin[off:off + size]
        out.append((name(sh_name), kind, flags, info, name(hdrs[link][0]) if link else "", align, entsize, size, data))
    return out


# Line tables, DWARF and the embedded PTX text: they hold line numbers, file names and the names
# of inlined functions, all of which move with any edit, while the code stays what it was.
DEBUG_SECTION = re.compile(r"^\.(rela?\.)?(debug_|nv_debug)")


def cubin_code(cubin: bytes) -> dict:
    """{section name: (attributes, bytes)} of every section but the debug ones (DEBUG_SECTION),
    plus the ELF header and the program headers without their file offsets (those shift when a
    debug section before them changes size): what the GPU loads and runs."""
    out = {}
    for name, kind, flags, info, link, align, entsize, size, data in elf_sections(cubin):
        if name and not DEBUG_SECTION.match(name):
            out[name] = ((kind, flags, info, link, align, entsize, size), data)
    # e_ident .. e_entry, then e_flags .. e_shentsize (not e_phoff, e_shoff: offsets; nor e_shnum)
    out["<elf header>"] = ((), cubin[:0x20] + cubin[0x30:0x3C])
    # Program headers: their offsets and sizes move with the debug sections before them (a loaded
    # segment's size includes the alignment padding between its sections), so a segment is
    # compared as its type, flags and alignment and the sections it holds (the bytes of which are
    # compared above).
    phoff, = struct.unpack_from("<Q", cubin, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", cubin, 0x36)
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", cubin, 0x3A)
    offsets = [struct.unpack_from("<IIQQQQ", cubin, shoff + i * shentsize)[4] for i in range(shnum)]
    sections = elf_sections(cubin)
    for i in range(phnum):
        p_type, p_flags, p_off, _vaddr, _paddr, filesz, _memsz, align = struct.unpack_from(
            "<IIQQQQQQ", cubin, phoff + i * phentsize)
        held = tuple(s[0] for s, off in zip(sections, offsets)
                     if s[0] and s[1] != 8 and s[7] and p_off <= off < p_off + filesz)
        out[f"<segment {i}>"] = ((p_type, p_flags, align, held), b"")
    return out


def code_differences(a: bytes, b: bytes) -> list:
    """The names of the non-debug sections (and headers) in which two cubins differ: [] when the
    code, its resources (.nv.info*, .nv.shared*, .nv.constant*), symbols and relocations match."""
    ca, cb = cubin_code(a), cubin_code(b)
    return sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))


# ---------------------------------------------------------------- the include structure
@pytest.mark.parametrize("kernel", [FUSED, HOPPER], ids=lambda p: p.name)
def test_both_kernels_include_the_common_headers(kernel):
    """The harness's own include walker (the files hashed into the cache key) finds every common
    header from each kernel, and each kernel names them as "common/..." includes."""
    seen = {p.resolve() for p in compiler.kernel_sources(kernel)}
    for h in COMMON_HEADERS:
        assert (COMMON / h).resolve() in seen, f"{kernel.name} does not include common/{h}"
    direct = set(compiler.INCLUDE_RE.findall(kernel.read_text()))
    assert {f"common/{h}" for h in COMMON_HEADERS} <= direct, sorted(direct)
    assert not (KERNELS / "hopper" / "fragments.cuh").exists(), "the old hopper copy is back"


def _definitions(text: str, name: str) -> int:
    """How many times a function / struct named `name` is defined (a body follows its signature)."""
    code = re.sub(r"//[^\n]*", "", text)
    struct_def = re.findall(rf"\bstruct\s+{name}\s*\{{", code)
    fn_def = re.findall(rf"\b(?:void|float|int|bool|u32|u64)\s+{name}\s*\([^;{{]*\)\s*(?:const\s*)?\{{", code)
    return len(struct_def) + len(fn_def)


def test_moved_code_is_defined_only_in_common():
    kernel_files = [FUSED, HOPPER] + sorted((KERNELS / "hopper").glob("*.cuh"))
    for header, names in MOVED.items():
        text = (COMMON / header).read_text()
        for name in names:
            assert _definitions(text, name) >= 1, f"{name} is not defined in common/{header}"
            for f in kernel_files:
                assert _definitions(f.read_text(), name) == 0, f"{name} is defined again in {f.relative_to(ROOT)}"
            others = [h for h in COMMON_HEADERS if h != header and _definitions((COMMON / h).read_text(), name)]
            assert not others, f"{name} is defined in common/{header} and in {others}"
    for header, names in MOVED_MACROS.items():
        for name in names:
            define = re.compile(rf"^\s*#\s*define\s+{name}\b", re.M)
            assert define.search((COMMON / header).read_text()), f"{name} is not defined in common/{header}"
            for f in kernel_files:
                assert not define.search(f.read_text()), f"{name} is defined again in {f.relative_to(ROOT)}"


def test_common_headers_are_guarded_and_seeded_bugs_stay_where_the_harness_expects():
    for h in COMMON_HEADERS:
        text = (COMMON / h).read_text()
        guard = "FLASHCORE_COMMON_" + h.replace(".cuh", "").upper() + "_CUH"
        # an include guard (not only #pragma once): hopper/ptx.cuh reaches util.cuh as ../common/
        assert f"#ifndef {guard}" in text and f"#define {guard}" in text, h
        assert text.startswith(f"// kernels/common/{h} -- "), h
    # No sm_90a seeded bug is switched in common code: tests/test_hopper_compile.py reads the sm_90a
    # kernel's switches from flashcore_hopper.cu and kernels/hopper/ alone.
    from debug_modes.hopper_bugs import HOPPER_BUGS
    common = "".join(re.sub(r"//[^\n]*", "", (COMMON / h).read_text()) for h in COMMON_HEADERS)
    assert not set(re.findall(r"\bBUG_([A-Z0-9_]+)", common)) & set(HOPPER_BUGS)


# ---------------------------------------------------------------- representative variants compile clean
REPRESENTATIVE = [
    ("flashcore_fused", "sm_90", "full", 64, False), ("flashcore_fused", "sm_90", "full", 128, False),
    ("flashcore_fused", "sm_80", "full", 128, True), ("flashcore_fused", "sm_90", "qk_only", 64, True),
    ("flashcore_fused", "sm_90", "softmax_only", 128, False), ("flashcore_fused", "sm_90", "fp32_p", 128, False),
    ("flashcore_hopper", "sm_90a", "full", 64, False), ("flashcore_hopper", "sm_90a", "full", 128, False),
    ("flashcore_hopper", "sm_90a", "qk_only", 64, True), ("flashcore_hopper", "sm_90a", "softmax_only", 128, False),
    ("flashcore_hopper", "sm_90a", "fp32_p", 128, False),
]


@pytest.fixture(scope="module")
def compiled():
    """The representative variants, compiled once with the harness's compile path (NVRTC, no GPU),
    two at a time (the first alone: NVRTC's and the include finder's first use)."""
    from concurrent.futures import ThreadPoolExecutor
    try:
        compiler._nvrtc()
    except Exception as e:   # UsageError: no CuPy / libnvrtc
        pytest.skip(str(e))
    variants = [Variant(m, d, c, (), arch=a, kernel=k) for k, a, m, d, c in REPRESENTATIVE]
    first = compiler.compile_cubin(variants[0])
    with ThreadPoolExecutor(2) as ex:
        rest = list(ex.map(compiler.compile_cubin, variants[1:]))
    return dict(zip(REPRESENTATIVE, [first] + rest))


@pytest.mark.parametrize("case", REPRESENTATIVE, ids=lambda c: f"{c[0]}-{c[2]}-D{c[3]}{'-causal' if c[4] else ''}")
def test_representative_variants_compile_without_spills(compiled, case):
    res, cubin = compiled[case]
    assert res.registers > 0 and res.spill_bytes == 0 and res.stack_bytes == 0, res
    assert not res.wgmma_warnings, res
    assert "<elf header>" in cubin_code(cubin) and ".text.flashcore_fwd" in cubin_code(cubin)
    # the comparison helper: a cubin's code equals itself, and differs from another variant's
    other = compiled[REPRESENTATIVE[0] if case != REPRESENTATIVE[0] else REPRESENTATIVE[1]][1]
    assert code_differences(cubin, cubin) == [] and ".text.flashcore_fwd" in code_differences(cubin, other)
