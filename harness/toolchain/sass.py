"""The SASS of a variant: the cubin NVRTC builds with the run time's options (the code the
harness launches), disassembled with nvdisasm (or cuobjdump), and counted by opcode, so
"tensor cores in use, nothing in local memory" is checked on what runs, before timing.

Until 2026-12-01 this compiled with nvcc instead, because nvdisasm rejected NVRTC's cubins;
the cause was CuPy's getCUBIN dropping the last byte (harness/toolchain/compiler.py). nvcc 13.0's
ptxas is not NVRTC 13.0's: at pv_only D=128 sm_80 it spills 4 bytes where NVRTC spills none,
so its SASS reported local memory in a kernel that has none.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from debug_modes import get_mode
from harness.toolchain import compiler
from harness.errors import UsageError
from harness.toolchain.variant import Variant

# Opcodes that touch thread-local memory (spills, or arrays the compiler could not keep in registers).
LOCAL_MEMORY_OPS = ("LDL", "STL")
_INSTR = re.compile(r"^\s*/\*[0-9a-f]{4,6}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def find_tool(name: str) -> str | None:
    """An executable on PATH, else in the bin/ of a CUDA toolkit root (compiler.cuda_roots)."""
    found = shutil.which(name)
    if found:
        return found
    for root in compiler.cuda_roots():
        exe = root / "bin" / name
        if exe.is_file() and os.access(exe, os.X_OK):
            return str(exe)
    return None


def disassembler() -> str | None:
    return find_tool("nvdisasm") or find_tool("cuobjdump")


def disassemble(variant: Variant, path: Path | None = None) -> str:
    """SASS text of the variant's kernel: NVRTC's cubin, same source and options as the run time."""
    _, cubin_bytes = compiler.compile_cubin(variant, path)
    return disassemble_cubin(cubin_bytes, variant.label)


def disassemble_cubin(cubin_bytes: bytes, label: str) -> str:
    dis = disassembler()
    if not dis:
        raise UsageError("SASS needs nvdisasm (pip install nvidia-cuda-nvdisasm) or cuobjdump on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(cubin_bytes)
        args = [dis, "-c", str(cubin)] if Path(dis).name.startswith("nvdisasm") else [dis, "-sass", str(cubin)]
        r = subprocess.run(args, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise UsageError(f"{Path(dis).name} failed on {label}: {r.stderr.strip()[:300]}")
        return r.stdout


def opcode_counts(sass: str) -> collections.Counter:
    """Static instruction count per opcode (the part before the first dot: HMMA.16816.F32 -> HMMA)."""
    c = collections.Counter()
    for line in sass.splitlines():
        m = _INSTR.match(line)
        if m:
            c[m.group(1).split(".")[0]] += 1
    return c


@dataclass
class SassSummary:
    variant: str
    instructions: int
    hmma: int
    ldsm: int
    local: int                  # LDL + STL
    expects_hmma: bool | None   # None: not judged (a kernel brought with a spec says nothing of it)
    missing: tuple = ()         # opcodes the entry requires (registry required_sass) and the SASS lacks

    @property
    def ok(self) -> bool:
        return (self.local == 0 and not self.missing
                and (self.expects_hmma is None or (self.hmma > 0) == self.expects_hmma))

    @property
    def verdict(self) -> str:
        if self.local:
            return f"LOCAL MEMORY ({self.local} LDL/STL)"
        if self.missing:
            return "NO " + ", ".join(self.missing)
        if self.expects_hmma is None:
            return "ok (" + ("tensor cores" if self.hmma else "no tensor cores") + ")"
        if self.expects_hmma and not self.hmma:
            return "NO HMMA"
        if not self.expects_hmma and self.hmma:
            return "unexpected HMMA"
        return "ok"


def summarize(variant: Variant, path: Path | None = None) -> SassSummary:
    """The tensor-core opcode expected is the registry entry's (HMMA for mma.sync, HGMMA for wgmma),
    and so are the opcodes its tensor-core variants must also hold (USETMAXREG: setmaxnreg is
    dropped silently without __launch_bounds__(N, 1))."""
    return _summary(variant, disassemble(variant, path))


def resources_and_summary(variant: Variant, path: Path | None = None) -> tuple:
    """(Resources, SassSummary) of one NVRTC build: `compile --sass` compiles each variant once."""
    res, cubin = compiler.compile_cubin(variant, path)
    return res, _summary(variant, disassemble_cubin(cubin, variant.label))


def _summary(variant: Variant, text: str) -> SassSummary:
    ops = opcode_counts(text)
    tensor_cores = get_mode(variant.mode).tensor_cores
    missing = tuple(o for o in variant.entry.required_sass if tensor_cores and not ops[o])
    return SassSummary(variant.label, sum(ops.values()), ops[variant.entry.tensor_cores], ops["LDSM"],
                       sum(ops[o] for o in LOCAL_MEMORY_OPS), tensor_cores, missing)


def summarize_user(variant) -> SassSummary:
    """A spec'd kernel's SASS (harness/toolchain/user_kernel.py): local memory fails it; the
    tensor-core count is reported, not judged (an fp32 kernel has none, and is right not to)."""
    from harness.toolchain import user_kernel
    _, cubin = user_kernel.compile_cubin(variant)
    ops = opcode_counts(disassemble_cubin(cubin, variant.label))
    return SassSummary(variant.label, sum(ops.values()), ops["HMMA"] + ops["HGMMA"], ops["LDSM"],
                       sum(ops[o] for o in LOCAL_MEMORY_OPS), None)
