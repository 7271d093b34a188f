"""The kernel spec (kernels/spec.py): the outsider example loads, every expression is checked
before anything compiles, defects are one line naming the file, and the coverage set follows
the spec's own tiles and domain."""

import math

import pytest

from harness.check import coverage as cov
from harness.errors import UsageError
from kernels import spec as kspec

OUTSIDER = kspec.Path(__file__).resolve().parent.parent / "kernels" / "outsider" / "attention.toml"

MINIMAL = """
args = [{name = "q", role = "q"}, {name = "k", role = "k"}, {name = "v", role = "v"}, {name = "o", role = "o"},
        {name = "S", type = "int", value = "Sq"}, {name = "sc", type = "float", value = "scale"}]
[kernel]
source = "k.cu"
entry = "attn"
[tiles]
block_m = 64
block_n = 32
[launch]
grid = ["cdiv(Sq, block_m)", "H", "B"]
block = [128]
smem = "(block_m + 2 * block_n) * D * 2"
"""


def write(tmp_path, text):
    p = tmp_path / "k.toml"
    p.write_text(text)
    (tmp_path / "k.cu").write_text('extern "C" __global__ void attn() {}\n')
    return p


def test_the_outsider_spec_loads_and_describes_its_launch():
    s = kspec.load(OUTSIDER)
    assert s.entry == "flash_fwd_kernel<64>" and s.layout == "BSHD" and s.dtype == "float32"
    assert [a.role for a in s.buffers] == ["q", "k", "v", "l", "m", "o"]
    names = s.names(2, 3, 81, 81, 64, 0.125, False)
    grid, block, smem = kspec.launch_geometry(s, names)
    assert grid == (2, 3, 1) and block == (64, 1, 1) and smem > 0
    tc = next(a for a in s.args if a.name == "Tc")
    assert kspec.evaluate(tc.value, names) == math.ceil(81 / 32)


def test_expressions_are_arithmetic_only():
    n = {"Sq": 100, "block_m": 64}
    assert kspec.evaluate("cdiv(Sq, block_m) * 2 + max(1, 3)", n) == 7
    for bad, says in [("__import__('os')", "only numbers"), ("Sq.real", "only numbers"), ("Sx + 1", "unknown name 'Sx'"),
                      ("Sq +", "not an arithmetic expression"), ("Sq // 0", "division by zero")]:
        with pytest.raises(UsageError, match=says):
            kspec.evaluate(bad, n)


def test_a_minimal_spec_loads(tmp_path):
    s = kspec.load(write(tmp_path, MINIMAL))
    assert s.name == "k" and s.block_m == 64 and s.outputs[0].name == "o" and s.outputs[0].init == "none"


@pytest.mark.parametrize("edit,says", [
    (lambda t: t.replace('{name = "o", role = "o"},', ""), "exactly one buffer of role 'o'"),
    (lambda t: t.replace('role = "q"', 'role = "query"'), "role 'query': valid: q, k, v"),
    (lambda t: t.replace('"H", "B"]', '"H", "Bx"]'), "unknown name 'Bx'"),
    (lambda t: t.replace('block = [128]', 'block = [0]'), "block 0 gives 0"),
    (lambda t: t.replace('value = "Sq"', 'value = "Sq +"'), "not an arithmetic expression"),
    (lambda t: t.replace('entry = "attn"', ''), "missing 'entry'"),
    (lambda t: t + "\n[domain]\ndtype = 'int8'\n", "dtype 'int8'"),
    (lambda t: t + "\n[surprise]\n", "unknown table(s) surprise"),
    (lambda t: t.replace("[kernel]", "[kernel"), "not valid TOML"),
    (lambda t: t.replace('{name = "S", type = "int", value = "Sq"}', '{name = "S", type = "int"}'), "needs 'value'"),
])
def test_spec_defects_are_one_line_naming_the_file(tmp_path, edit, says):
    p = write(tmp_path, edit(MINIMAL))
    with pytest.raises(UsageError) as e:
        kspec.load(p)
    msg = str(e.value)
    assert says in msg and str(p) in msg and "\n" not in msg, msg


def test_domain_refuses_what_it_excludes():
    s = kspec.load(OUTSIDER)
    with pytest.raises(UsageError, match="self-attention only"):
        s.check_domain(1, 1, 64, 32, 64, False)
    with pytest.raises(UsageError, match="head dim 64, not 128"):
        s.check_domain(1, 1, 64, 64, 128, False)
    with pytest.raises(UsageError, match="no causal"):
        s.check_domain(1, 1, 64, 64, 64, True)


def test_coverage_set_follows_the_spec_tiles_and_domain():
    s = kspec.load(OUTSIDER)
    cases = cov.coverage_set(s)
    assert cases and all(c.shape.Sq == c.shape.Sk and not c.causal and c.shape.D == 64 for c in cases)
    lengths = {c.shape.Sq for c in cases}
    assert {1, 17, 32} <= lengths and any(L % 32 for L in lengths if L > 32)   # a tail past one tile
    feats = set().union(*(cov.features_of(c, s) for c in cases))
    assert {"b_gt_1", "h_gt_1", "sk_tail", "sk_multi", "sq_short"} <= feats
