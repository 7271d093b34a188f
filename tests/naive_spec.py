"""Specs of tests/kernels/naive_attention.cu, one per element type (tests of spec'd kernels)."""

from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "kernels" / "naive_attention.cu"
C_TYPE = {"float16": "half", "bfloat16": "__nv_bfloat16", "float32": "float"}


def write(tmp_path, dtype: str = "float16", head_dims=(64, 128)) -> Path:
    """A spec beside a copy of the kernel; sources are relative to the spec file."""
    d = Path(tmp_path) / f"naive_{dtype}"
    d.mkdir(parents=True, exist_ok=True)
    (d / SOURCE.name).write_text(SOURCE.read_text())
    spec = d / "naive.toml"
    spec.write_text(f"""
[kernel]
name = "naive_{dtype}"
source = "{SOURCE.name}"
entry = "naive_attention"
defines = ["ELEM_T={C_TYPE[dtype]}"]
[domain]
head_dims = {list(head_dims)}
head_dim_define = "HEAD_DIM"
dtype = "{dtype}"
[tiles]
block_m = 64
block_n = 64
[launch]
grid = ["cdiv(Sq, 64)", "H", "B"]
block = [64]
[precision]
p = "float32"
[bugs]
READ_PAST = "one key past the end of K and V"

[[args]]
name = "q"
role = "q"
[[args]]
name = "k"
role = "k"
[[args]]
name = "v"
role = "v"
[[args]]
name = "o"
role = "o"
[[args]]
name = "lse"
role = "lse"
[[args]]
name = "Sq"
value = "Sq"
[[args]]
name = "Sk"
value = "Sk"
[[args]]
name = "scale"
type = "float"
value = "scale"
""")
    return spec
