"""The SASS of the shipped variants: tensor cores in use (HMMA), nothing in local memory, and
the opcode counter itself checked on a known snippet. The SASS is that of NVRTC's cubin, the
code the harness runs, on every arch the kernel registry lists. Skips where nvdisasm is missing."""

import pytest

from harness.toolchain import sass
from harness.toolchain.variant import ARCHS, SMALL_TILES, Variant

needs_tools = pytest.mark.skipif(not sass.disassembler(),
                                 reason="no nvdisasm/cuobjdump here (pip install nvidia-cuda-nvdisasm)")

SNIPPET = """
        /*0100*/                   HMMA.16816.F32 R4, R8, R12, RZ ;
        /*0110*/              @!PT LDS RZ, [RZ] ;
        /*0120*/               @P0 STL [R1], R2 ;
        /*0130*/                   LDSM.16.M88.4 R8, [R3] ;
        /*0140*/                   HMMA.16816.F32 R4, R8, R14, R4 ;
"""


def test_opcode_counts_reads_predicated_and_dotted_opcodes():
    c = sass.opcode_counts(SNIPPET)
    assert c == {"HMMA": 2, "LDS": 1, "STL": 1, "LDSM": 1}


def test_summary_verdicts():
    good = sass.SassSummary("v", 100, 8, 4, 0, True)
    assert good.ok and good.verdict == "ok"
    assert not sass.SassSummary("v", 100, 8, 4, 2, True).ok                    # local memory
    assert sass.SassSummary("v", 100, 0, 4, 0, True).verdict == "NO HMMA"
    assert sass.SassSummary("v", 100, 0, 0, 0, False).ok                       # softmax_only


CASES = [("full", 64, {}), ("full", 128, {}), ("full", 128, SMALL_TILES[128]), ("qk_only", 64, {}),
         ("pv_only", 128, {}), ("softmax_only", 64, {}), ("fp32_p", 128, {})]


@needs_tools
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("mode,d,tiles", CASES)
def test_shipped_variants_use_tensor_cores_and_no_local_memory(mode, d, tiles, arch):
    s = sass.summarize(Variant(mode, d, arch=arch, **tiles))
    assert s.ok, s


def test_the_cubin_is_whole():
    """CuPy's getCUBIN drops the last byte; the ELF's program headers end at the file's end."""
    import struct
    from harness.toolchain import compiler
    res, cubin = compiler.compile_cubin(Variant("full", 64, arch="sm_80"))
    phoff, = struct.unpack_from("<Q", cubin, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", cubin, 0x36)
    assert cubin[:4] == b"\x7fELF" and len(cubin) >= phoff + phentsize * phnum and res.cubin_bytes == len(cubin)


@needs_tools
def test_a_spilling_variant_is_caught():
    # Must-fail case: two K/V buffers at D=128 with 32 rows per warp need more than 255 registers.
    s = sass.summarize(Variant("full", 128, m_frags=2, block_n=64, kv_stages=2))
    assert s.local > 0 and not s.ok and s.verdict.startswith("LOCAL MEMORY")


@needs_tools
def test_compile_sass_command_prints_the_table_and_passes():
    from click.testing import CliRunner
    from cli import cli
    r = CliRunner().invoke(cli, ["compile", "--sass", "--debug", "pv_only", "--arch", "sm_90", "--head-dim", "64"])
    assert r.exit_code == 0, r.output
    assert "HMMA" in r.output and "pv_only D=64 sm_90" in r.output and "nothing in local memory" in " ".join(r.output.split())


@needs_tools
def test_compile_sass_names_the_failing_variant_on_stderr(monkeypatch):
    from click.testing import CliRunner
    from cli import cli
    real = sass._summary
    monkeypatch.setattr(sass, "_summary", lambda v, text: sass.SassSummary(v.label, 10, 1, 1, 2, True))
    r = CliRunner().invoke(cli, ["compile", "--sass", "--debug", "pv_only", "--arch", "sm_80", "--head-dim", "128",
                                                 "--no-causal"])
    assert r.exit_code == 1
    assert "2 of 2 variants FAIL" in r.stdout and "nothing in local memory" not in r.stdout   # both tile tables
    assert "pv_only D=128 sm_80: SASS check failed: LOCAL MEMORY (2 LDL/STL)" in r.stderr
    assert real is not sass._summary


@needs_tools
def test_compile_sass_compiles_each_variant_once(monkeypatch):
    """Resources and SASS come from one NVRTC build per variant (they were two)."""
    from click.testing import CliRunner
    from cli import cli
    from harness.toolchain import compiler
    builds = []
    real = compiler.compile_cubin
    monkeypatch.setattr(compiler, "compile_cubin", lambda v, path=None: builds.append(v.label) or real(v, path))
    r = CliRunner().invoke(cli, ["compile", "--sass", "--debug", "pv_only", "--arch", "sm_90", "--head-dim", "64",
                                 "--no-causal"])
    assert r.exit_code == 0, r.output
    assert len(builds) == len(set(builds)) >= 1, builds
