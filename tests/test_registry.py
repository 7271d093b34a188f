"""The registry entry is the one place that says what a FlashCore-flag kernel is: the tiles,
the derived values (rows per block, threads, shared memory), the -D list and the asserts all
come from it, so a second entry needs no other file."""

import dataclasses
import shutil

import pytest

from harness.errors import UsageError
from harness.toolchain import compiler
from harness.toolchain.variant import Variant
from kernels import registry


def test_fused_entry_derives_what_the_kernel_was_built_with():
    v = Variant("full", 64, m_frags=2, nwarps=4, block_n=64, kv_stages=2)
    assert (v.block_m, v.threads) == (128, 128)
    assert v.smem_bytes == (128 + 2 * 2 * 64) * (64 + 8) * 2
    assert {"NWARPS=4", "BLOCK_N=64", "M_FRAGS=2", "KV_STAGES=2", "HEAD_DIM=64", "IS_CAUSAL=0"} <= set(v.defines)


def test_mode_tiles_come_from_the_entry():
    assert registry.FLASHCORE_FUSED.mode_tiles["fp32_p"] == dict(m_frags=1, kv_stages=1)
    v = Variant("fp32_p", 64, m_frags=2, kv_stages=2)
    assert (v.m_frags, v.kv_stages) == (1, 1)


@pytest.mark.parametrize("tiles,words", [
    (dict(block_n=24), "multiple of 16"),
    (dict(kv_stages=3), "kv_stages"),
    (dict(nwarps=17), "nwarps"),
    (dict(nwarps=3, block_n=16), "rows the block's threads copy"),
])
def test_entry_asserts_refuse_bad_tiles_before_compiling(tiles, words):
    with pytest.raises(UsageError, match=words):
        Variant("full", 64, **tiles)


@pytest.fixture
def second_entry(monkeypatch, tmp_path):
    """A second entry: another file, other tiles, other formulas."""
    src = tmp_path / "other_kernel.cu"
    src.write_text(compiler.KERNEL_FILE.read_text())
    shutil.copytree(compiler.KERNEL_FILE.parent / "common", tmp_path / "common")   # the headers it includes
    entry = dataclasses.replace(
        registry.FLASHCORE_FUSED, name="other", file=str(src), archs={"sm_90a": 227 * 1024},
        tiles={64: dict(m_frags=1, nwarps=8, block_n=128, kv_stages=3), 128: dict(m_frags=1, nwarps=8, block_n=96, kv_stages=2)},
        small_tiles={64: dict(m_frags=1, nwarps=8, block_n=128, kv_stages=3), 128: dict(m_frags=1, nwarps=8, block_n=96, kv_stages=2)},
        smem="1024 + block_m * D * 2 + kv_stages * 2 * block_n * D * 2",
        tile_defines=("CONSUMER_WGS=nwarps // 4", "BLOCK_N=block_n", "KV_STAGES=kv_stages"),
        asserts=(("nwarps % 4 == 0", "whole warpgroups"),), mode_tiles={})
    monkeypatch.setitem(registry.KERNELS, "other", entry)
    return entry, src


def test_a_second_entry_needs_only_its_entry(second_entry):
    entry, src = second_entry
    v = Variant("full", 128, arch="sm_90a", kernel="other")
    assert (v.block_m, v.threads, v.block_n, v.kv_stages) == (128, 256, 96, 2)
    assert v.smem_bytes == 1024 + 128 * 128 * 2 + 2 * 2 * 96 * 128 * 2
    assert {"CONSUMER_WGS=2", "BLOCK_N=96", "KV_STAGES=2"} <= set(v.defines)
    assert compiler.kernel_file(None, "other") == src
    opts = compiler.runtime_options(v)
    assert f"-I{src.parent.resolve()}" in opts and "-arch=sm_90a" in opts
    assert v.label.startswith("other ")
    with pytest.raises(UsageError, match="whole warpgroups"):
        Variant("full", 64, arch="sm_90a", kernel="other", nwarps=6)
    with pytest.raises(UsageError, match="unknown arch"):
        Variant("full", 64, arch="sm_80", kernel="other")


def test_unknown_kernel_is_one_line():
    with pytest.raises(UsageError, match="unknown kernel 'nope'"):
        Variant("full", 64, kernel="nope")


def test_kernel_in_use_follows_the_setting(second_entry, monkeypatch):
    """--kernel NAME of a registry entry makes it the kernel in use for this process and its
    workers (the environment): variants, tiles and the coverage set follow."""
    from harness.check import coverage as cov
    from harness.check.shapes import Shape
    from harness.toolchain.variant import tiles_for
    monkeypatch.setenv(registry.ENV_KERNEL, "other")
    assert registry.current().name == "other"
    v = Variant("full", 128, arch="sm_90a")
    assert v.kernel == "other" and v.block_n == 96
    assert tiles_for(Shape(1, 1, 64, 64, 128))["block_n"] == 96
    assert cov.kernel_spec() is second_entry[0]
    monkeypatch.delenv(registry.ENV_KERNEL)
    assert Variant("full", 128).kernel == "flashcore_fused"


def test_cli_kernel_name_sets_the_kernel_in_use(second_entry, monkeypatch):
    import os
    from click.testing import CliRunner
    from cli import cli
    monkeypatch.delenv(registry.ENV_KERNEL, raising=False)
    r = CliRunner().invoke(cli, ["compile", "--kernel", "other", "--debug", "full", "--head-dim", "64",
                                 "--no-causal", "--arch", "sm_90a"])
    assert "other full D=64 sm_90a" in " ".join(r.output.split()), r.output   # the command compiled "other"
    assert registry.ENV_KERNEL not in os.environ        # and the setting ended with the command


def test_the_sm90a_kernel_is_a_second_entry_compiled_through_the_harness():
    """flashcore_hopper is an entry and its .cu: the harness compiles it with its own tiles,
    shared memory formula and arch, and its SASS is judged on HGMMA."""
    from harness.toolchain import sass
    v = Variant("full", 128, arch="sm_90a", kernel="flashcore_hopper")
    assert (v.block_m, v.threads, v.block_n, v.smem_bytes) == (128, 256, 128, 1024 + 128 * 128 * 2 + 2 * 2 * 128 * 128 * 2)
    assert {"CONSUMER_WGS=2", "BLOCK_N=128", "KV_STAGES=2"} <= set(v.defines)
    r = compiler.compile_check(v)
    assert r.spill_bytes == 0 and r.wgmma_warnings == () and r.registers <= 255
    if sass.disassembler() is not None:
        s = sass.summarize(Variant("qk_only", 64, arch="sm_90a", kernel="flashcore_hopper"))
        assert s.ok and s.hmma > 0 and s.local == 0
    with pytest.raises(UsageError, match="has no seeded bug .FRAG_SWAP."):
        Variant("full", 64, arch="sm_90a", kernel="flashcore_hopper", bugs=("FRAG_SWAP",))
    with pytest.raises(UsageError, match="whole warpgroups"):
        Variant("full", 64, arch="sm_90a", kernel="flashcore_hopper", nwarps=6)


def test_item_overlap_entries_size_their_q_buffers_and_boxes():
    """Versions 21 and 22 (ITEM_OVERLAP): 21 keeps two Q tiles (and two K/V stages at D = 128, so
    that they fit), 22 one Q tile loaded one warpgroup's 64 rows at a time: its Q map has 64-row
    boxes and the kernel is told so (Q_BOX_ROWS); every other entry's Q box is its block_m."""
    from harness.toolchain import tma
    io = Variant("full", 128, arch="sm_90a", kernel="flashcore_hopper_io")
    iow = Variant("full", 128, arch="sm_90a", kernel="flashcore_hopper_iow")
    q, kv = 128 * 128 * 2, 2 * 128 * 128 * 2                    # one Q tile, one K/V stage (bytes)
    assert (io.kv_stages, io.smem_bytes, io.q_box_rows) == (2, 1024 + 2 * q + 2 * kv, 128)
    assert (iow.kv_stages, iow.smem_bytes, iow.q_box_rows) == (3, 1024 + q + 3 * kv, 64)
    assert io.smem_bytes <= 227 * 1024 and iow.smem_bytes <= 227 * 1024
    assert "Q_BOX_ROWS=64" in iow.defines and not any(d.startswith("Q_BOX_ROWS") for d in io.defines)
    assert tma.box_rows("Q", iow.q_box_rows, iow.block_n) == 64 and tma.box_rows("K", iow.q_box_rows, iow.block_n) == 128
    assert Variant("full", 64, arch="sm_90a", kernel="flashcore_hopper_woel").q_box_rows == 128
    assert Variant("full", 64).q_box_rows == Variant("full", 64).block_m


def test_ptxas_wgmma_serialisation_warnings_are_read():
    log = "ptxas info    : Used 168 registers\nptxas warning : (C7513) wgmma.mma_async instructions are serialized"
    assert compiler.parse_ptxas(log)["wgmma_warnings"] == ("C7513",)
    # too few registers: ptxas serialises every wgmma and names no C7513 (160-key tiles, version 17)
    log = ("ptxas info    : (C7512) Potential Performance Loss: wgmma.mma_async instructions are serialized "
           "due to insufficient register resources for the function 'flashcore_fwd'\nptxas info    : Used 168 registers")
    assert compiler.parse_ptxas(log)["wgmma_warnings"] == ("C7512",)
    assert compiler.parse_ptxas("ptxas info    : (C7999) something else")["wgmma_warnings"] == ()


def test_product_kernel_is_the_measured_fastest_entry_for_the_device_and_shape():
    """forward()'s choice (registry.product_kernel): the sm_90a kernel where its product_when
    holds on a Hopper GPU, flashcore_fused for small problems and on GPUs it cannot run on."""
    pk = registry.product_kernel
    assert pk("sm_90", 1, 8, 512, 512, 64, False) is registry.FLASHCORE_FUSED        # the mission shape
    assert pk("sm_90", 1, 8, 1024, 1024, 64, False) is registry.FLASHCORE_HOPPER_WOEL
    assert pk("sm_90", 4, 16, 2048, 2048, 128, True) is registry.FLASHCORE_HOPPER_WOEL
    # version 21 at D = 64 for large non-causal problems of up to 2048 keys, where it was measured faster
    assert pk("sm_90", 16, 16, 1024, 1024, 64, False) is registry.FLASHCORE_HOPPER_IO
    assert pk("sm_90", 16, 16, 1024, 1024, 64, True) is registry.FLASHCORE_HOPPER_WOEL
    assert pk("sm_90", 8, 8, 1100, 1000, 64, False) is registry.FLASHCORE_HOPPER_IO   # tests/test_gpu_api.py's IO
    assert pk("sm_90", 8, 8, 1024, 1000, 64, False) is registry.FLASHCORE_HOPPER_WOEL  # 65.5M: below 64 Mi
    assert pk("sm_90", 4, 16, 2048, 2048, 64, False) is registry.FLASHCORE_HOPPER_IO
    assert pk("sm_90", 2, 16, 8192, 8192, 64, False) is registry.FLASHCORE_HOPPER_WOEL  # past 2048 keys: not measured
    # version 22 at D = 128 for the same share, where it was measured faster (IOW_WHEN)
    assert pk("sm_90", 4, 16, 2048, 2048, 128, False) is registry.FLASHCORE_HOPPER_IOW
    assert pk("sm_90", 16, 16, 1024, 1024, 128, False) is registry.FLASHCORE_HOPPER_IOW
    assert pk("sm_90", 4, 8, 1200, 1900, 128, False) is registry.FLASHCORE_HOPPER_IOW   # tests/test_gpu_api.py's IOW
    assert pk("sm_90", 2, 4, 1000, 1300, 128, False) is registry.FLASHCORE_HOPPER_WOEL  # 10.4M: below 64 Mi
    assert pk("sm_90", 2, 16, 8192, 8192, 128, False) is registry.FLASHCORE_HOPPER_WOEL  # past 2048 keys: 0.99x
    assert pk("sm_80", 4, 16, 2048, 2048, 128, False) is registry.FLASHCORE_FUSED     # no wgmma on an A100
    assert pk("sm_89", 4, 16, 2048, 2048, 64, False) is registry.FLASHCORE_FUSED
    assert registry.FLASHCORE_HOPPER.arch_on("sm_90") == "sm_90a" and registry.FLASHCORE_HOPPER.arch_on("sm_80") is None
    assert registry.FLASHCORE_FUSED.arch_on("sm_90") == "sm_90"


def test_product_conditions_are_disjoint():
    """At most one entry's product_when holds for any problem, so the registry's order never
    decides what forward() launches (over powers of two and their neighbours, both masks)."""
    from kernels.spec import evaluate
    entries = [k for k in registry.KERNELS.values() if k.product_when]
    sizes = (1, 2, 3, 8, 16, 64, 127, 128, 512, 1000, 1024, 1025, 2048, 8192)
    held = 0
    for B in (1, 2, 4, 16, 64):
        for H in (1, 8, 16):
            for Sq in sizes:
                for Sk in sizes:
                    for causal in (0, 1):
                        for D in (64, 128):
                            names = dict(B=B, H=H, Sq=Sq, Sk=Sk, D=D, causal=causal)
                            hold = [k.name for k in entries if evaluate(k.product_when, names)]
                            assert len(hold) <= 1, (names, hold)
                            held += len(hold)
    assert held > 0
