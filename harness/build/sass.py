"""The SASS of a variant: compiled with nvcc, disassembled with nvdisasm (or cuobjdump), and
counted by opcode, so "tensor cores in use, nothing in local memory" is checked before timing.

nvcc rather than NVRTC: the nvdisasm and cuobjdump releases on PyPI do not read the cubins the
nvidia-cuda-nvrtc 13.0 wheel writes (seen 2026-11-22), while they read nvcc's.
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
from harness.build import compiler
from harness.errors import UsageError
from harness.build.variant import Variant

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


def disassemble(variant: Variant, path: Path | None = None) -> str:
    """SASS text of the variant's kernel (same source and -D flags as the run-time compile)."""
    nvcc = find_tool("nvcc")
    dis = find_tool("nvdisasm") or find_tool("cuobjdump")
    if not nvcc or not dis:
        raise UsageError("SASS needs nvcc and nvdisasm (pip install nvidia-cuda-nvdisasm) or cuobjdump on PATH")
    src = compiler.kernel_file(path)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cmd = [nvcc, "-cubin", f"-arch={variant.arch}", "-std=c++17", "-ftz=true", "-w",
               f"-I{Path(src).resolve().parent}", *[f"-D{d}" for d in variant.defines], "-o", str(cubin), str(src)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise compiler.CompileError(f"{variant.label}: nvcc failed\n{r.stderr.strip()[-2000:]}")
        args = [dis, "-c", str(cubin)] if Path(dis).name.startswith("nvdisasm") else [dis, "-sass", str(cubin)]
        r = subprocess.run(args, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise UsageError(f"{Path(dis).name} failed: {r.stderr.strip()[:300]}")
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
    expects_hmma: bool

    @property
    def ok(self) -> bool:
        return self.local == 0 and (self.hmma > 0) == self.expects_hmma

    @property
    def verdict(self) -> str:
        if self.local:
            return f"LOCAL MEMORY ({self.local} LDL/STL)"
        if self.expects_hmma and not self.hmma:
            return "NO HMMA"
        if not self.expects_hmma and self.hmma:
            return "unexpected HMMA"
        return "ok"


def summarize(variant: Variant, path: Path | None = None) -> SassSummary:
    ops = opcode_counts(disassemble(variant, path))
    return SassSummary(variant.label, sum(ops.values()), ops["HMMA"], ops["LDSM"],
                       sum(ops[o] for o in LOCAL_MEMORY_OPS), get_mode(variant.mode).tensor_cores)
