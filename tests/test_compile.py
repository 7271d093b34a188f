"""Every variant compiles for sm_80 and sm_90 with NVRTC and 0 spill bytes; the cache key
covers included files; a compile error shows the offending source line."""

import itertools

import pytest

from debug_modes import BUGS
from debug_modes.registry import DATAFLOW_ORDER, MODES
from harness.toolchain import compiler
from harness.errors import CompileError, UsageError
from harness.toolchain.variant import Variant

VARIANTS = [
    (mode, d, causal, arch)
    for mode, d, causal, arch in itertools.product(DATAFLOW_ORDER, (64, 128), (False, True), ("sm_80", "sm_90"))
    if MODES[mode].allows_causal or not causal
]


@pytest.mark.parametrize("mode,d,causal,arch", VARIANTS)
def test_every_variant_compiles_without_spills(mode, d, causal, arch):
    r = compiler.compile_check(Variant(mode, d, causal, arch=arch))
    assert r.spill_bytes == 0 and r.stack_bytes == 0, r
    assert 0 < r.registers <= 255
    assert r.cubin_bytes > 0


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_seeded_bug_variants_compile(bug):
    r = compiler.compile_check(Variant("full", 64, False, (bug,), arch="sm_90"))
    assert r.cubin_bytes > 0


def test_bug_switch_changes_the_code():
    clean = compiler.compile_check(Variant("full", 64, arch="sm_90"))
    bugged = compiler.compile_check(Variant("full", 64, bugs=("PV_FIRST_TILE",), arch="sm_90"))
    assert (clean.registers, clean.cubin_bytes) != (bugged.registers, bugged.cubin_bytes)


def test_runtime_options_carry_include_dir_defines_lineinfo():
    v = Variant("pv_only", 128, True)
    opts = compiler.runtime_options(v)
    assert "-lineinfo" in opts
    inc = [o for o in opts if o.startswith("-I")]
    assert any((compiler.Path(o[2:]) / "crt" / "mma.h").is_file() for o in inc)
    for d in ("-DHEAD_DIM=128", "-DIS_CAUSAL=1", "-DDEBUG_PV_ONLY"):
        assert d in opts
    assert any(o.startswith("-DFLASHCORE_SRC_HASH=") for o in opts)


def test_cache_key_covers_included_files(tmp_path):
    main = tmp_path / "k.cu"
    inc = tmp_path / "part.cuh"
    main.write_text('#include "part.cuh"\nextern "C" __global__ void flashcore_fwd() {}\n')
    inc.write_text("// v1\n")
    v = Variant()
    k1 = compiler.cache_key(v, main)
    inc.write_text("// v2\n")
    assert compiler.cache_key(v, main) != k1
    assert set(p.name for p in compiler.kernel_sources(main)) == {"k.cu", "part.cuh"}


def test_compile_error_quotes_the_source_line(tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void flashcore_fwd() {\n    int x = undefined_thing;\n}\n')
    with pytest.raises(CompileError) as e:
        compiler.compile_check(Variant(), bad)
    msg = str(e.value)
    assert "undefined_thing" in msg and "    2 |" in msg


@pytest.mark.parametrize("kw,needle", [
    (dict(mode="nope"), "valid modes"),
    (dict(head_dim=96), "head dim"),
    (dict(arch="sm_70"), "unknown arch"),
    (dict(bugs=("NOPE",)), "valid bugs"),
    (dict(mode="uniform_p", causal=True), "no causal form"),
    (dict(block_n=24), "multiple of 16"),
])
def test_variant_validation(kw, needle):
    with pytest.raises(UsageError, match=needle):
        Variant(**kw)


def test_variant_derived_values():
    v = Variant("full", 128, nwarps=4, block_n=64, m_frags=1, kv_stages=2)
    assert v.block_m == 64 and v.threads == 128 and v.warp_rows == 16
    assert v.smem_bytes == (64 + 4 * 64) * (128 + 8) * 2        # Q + double-buffered K and V
    assert v.defines[:6] == ["HEAD_DIM=128", "IS_CAUSAL=0", "NWARPS=4", "BLOCK_N=64", "M_FRAGS=1", "KV_STAGES=2"]
    d = Variant("full", 128)                                      # the tile table's default
    assert (d.m_frags, d.nwarps, d.block_n, d.kv_stages, d.block_m) == (2, 4, 64, 1, 128)
    assert (Variant("fp32_p", 128).m_frags, Variant("fp32_p", 64, m_frags=2).kv_stages) == (1, 1)   # the mode forces its tiles


@pytest.mark.parametrize("mode,d,causal", [(m, d, c) for m, d, c, a in VARIANTS if a == "sm_90"])
def test_small_shape_tiles_compile_without_spills(mode, d, causal):
    from harness.toolchain.variant import SMALL_TILES
    r = compiler.compile_check(Variant(mode, d, causal, **SMALL_TILES[d]))
    assert r.spill_bytes == 0 and r.stack_bytes == 0, r


def test_tiles_for_shape():
    from harness.check.shapes import Shape
    from harness.toolchain.variant import SMALL_TILES, TILES, tiles_for
    assert tiles_for(Shape(1, 8, 512, 512, 64)) == SMALL_TILES[64]
    assert tiles_for(Shape(4, 16, 2048, 2048, 128)) == TILES[128]


def test_compile_options_that_select_nothing_or_are_ignored_are_errors():
    from click.testing import CliRunner
    from cli import cli
    for args, says in [(["--debug", "uniform_p", "--causal"], "uniform_p has no causal form"),
                       (["--list-bugs", "--debug", "nope"], "nope"),
                       (["--list-bugs", "--debug", "full"], "--list-bugs takes no other option"),
                       (["--arch", "sm_99"], "unknown arch 'sm_99'")]:
        r = CliRunner().invoke(cli, ["compile", *args])
        assert r.exit_code == 2 and says in r.output and len(r.output.strip().splitlines()) == 1, (args, r.output)


def test_compile_log_from_cupy_names_the_kernel_file_and_quotes_the_line(tmp_path):
    """CuPy compiles under its cache name (<hash>.cubin.cu): the log is given the kernel's own."""
    src = tmp_path / "k.cu"
    src.write_text("line one\nint x = nope;\n")
    out = compiler.format_compile_log("/tmp/abc/0123abcd.cubin.cu(2): error: identifier \"nope\" is undefined",
                                      {src: src.read_text()})
    assert out.startswith("k.cu(2): error") and "2 | int x = nope;" in out, out
