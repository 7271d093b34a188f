"""The kernel spec: the one place that says what a kernel is, as data.

A spec is a TOML file beside the kernel's `.cu` (`flashcore kernel init` proposes one). In the
spirit of flash-attention's `Flash_fwd_params` + `tile_size.h` and of cupy's sgemm example,
it names everything the harness needs to launch and judge a kernel as its author wrote it,
and every derived value (grid, block, shared memory, scalar arguments) is an expression over
the problem that is evaluated and checked before anything is compiled or launched:

  [kernel]      source, entry (a C++ name, templates included, or an extern "C" symbol),
                extra compile options, defines
  [domain]      head dims, dtype, layout, Sq = Sk only, causal support
  [tiles]       block_m (query rows per tile), block_n (keys per tile), kv_stages: the folds
                of the localisation and the edges of the coverage set
  [launch]      grid, block and dynamic shared memory as expressions
  args          the arguments in order: a buffer role (q k v o lse l m) with its dtype and
                initial value, or a scalar (int, float) given by an expression
  [precision]   where the kernel rounds: the kernel-precision reference and so the floor
  [conventions] what its outputs mean: LSE natural or base 2, l normalised or not
  [[flags]]     debug flags of its own: the stage, the output and the reference they mean

Names an expression may use: B, H, Sq, Sk, D, scale, causal (0/1), block_m, block_n,
kv_stages, every [constants] entry, and the functions cdiv (ceiling division), ceil, floor,
min, max. This module is pure data and checks: nothing here touches a GPU or a compiler.
"""

from __future__ import annotations

import ast
import math
import operator
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UsageError

ROLES = {                       # buffer role -> (axes, is an output)
    "q": ("q", False), "k": ("kv", False), "v": ("kv", False),
    "o": ("q", True), "lse": ("rows", True), "l": ("rows", True), "m": ("rows", True),
    "null": (None, False),      # a pointer the kernel takes and the check passes as NULL (a debug buffer)
}
DTYPES = ("float16", "bfloat16", "float32")
LAYOUTS = ("BHSD", "BSHD")
SCALAR_TYPES = {"int": "int32", "int32": "int32", "int64": "int64", "uint32": "uint32",
                "float": "float32", "float32": "float32"}
INITS = ("none", "0", "-inf", "inf", "1")          # "none": poisoned (the output must be written)
LSE_BASES = ("natural", "log2")
L_FORMS = ("sum",)                                 # l = sum_j exp(s_ij - m_i), m the row max of s
M_FORMS = ("max", "max_log2")                      # m = max_j s_ij, or in log2 units (s * log2 e)
STAGES = ("qk", "softmax", "pv", "glue")
# What a kernel's own debug flag writes, judged against (item 4 of issue 21): a reference
# quantity of the float64 pipeline, restricted to a region.
FLAG_REFERENCES = {
    "attention": "O of the whole forward pass (the flag changes nothing the output shows)",
    "uniform": "O under P = 1/Sk: every row the column mean of V",
    "uniform_first_tile": "O under P = 1/block_n over the first key tile only: the mean of V's first tile",
    "scores_first_tile": "S = scale * Q K^T of the first key tile, written into O's first block_n columns",
    "raw_scores_first_tile": "Q K^T (unscaled) of the first key tile, written into O's first block_n columns",
}
NAMES = ("B", "H", "Sq", "Sk", "D", "scale", "causal", "block_m", "block_n", "kv_stages")


# ------------------------------------------------------------------ expressions
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
           ast.LShift: operator.lshift, ast.RShift: operator.rshift}
_CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge}
_FUNCS = {"cdiv": lambda a, b: -(-a // b), "ceil": math.ceil, "floor": math.floor, "min": min, "max": max,
          "int": int}


def _eval(node, names: dict, text: str):
    if isinstance(node, ast.Expression):
        return _eval(node.body, names, text)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise UsageError(f"expression {text!r}: unknown name {node.id!r}; known: {', '.join(sorted(names))}")
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval(node.left, names, text), _eval(node.right, names, text))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand, names, text)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Compare) and all(type(o) in _CMPOPS for o in node.ops):   # conditions (asserts)
        left = _eval(node.left, names, text)
        for op, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node, names, text)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.BoolOp):
        vals = (_eval(v, names, text) for v in node.values)
        return all(vals) if isinstance(node.op, ast.And) else any(vals)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
        return _FUNCS[node.func.id](*(_eval(a, names, text) for a in node.args))
    raise UsageError(f"expression {text!r}: only numbers, the known names, + - * / // % ** << >>, comparisons, and/or, and "
                     f"{', '.join(_FUNCS)} are allowed")


def evaluate(expr, names: dict):
    """An arithmetic expression of the spec (a number is its own value) over `names`."""
    if isinstance(expr, (int, float)) and not isinstance(expr, bool):
        return expr
    if not isinstance(expr, str):
        raise UsageError(f"expression {expr!r}: expected a number or a string")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise UsageError(f"expression {expr!r}: not an arithmetic expression") from None
    try:
        return _eval(tree, names, expr)
    except ZeroDivisionError:
        raise UsageError(f"expression {expr!r}: division by zero") from None


# ------------------------------------------------------------------ the spec
@dataclass(frozen=True)
class Arg:
    """One kernel argument, in the kernel's order: a buffer of a role, or a scalar."""
    name: str
    role: str | None = None        # buffer role (ROLES), or None for a scalar
    dtype: str | None = None       # buffers: element type (default: q k v o the domain's, else float32)
    init: str = "none"             # outputs: the value the kernel expects before the launch
    type: str | None = None        # scalars: int | int64 | uint32 | float
    value: object = None           # scalars: an expression

    @property
    def is_buffer(self) -> bool:
        return self.role is not None


@dataclass(frozen=True)
class Flag:
    """A debug flag of the kernel's own: compiled with -D<flag>, it isolates `stage` and writes
    the reference quantity `reference` into the output `output`."""
    flag: str
    stage: str
    output: str = "o"
    reference: str = "attention"
    description: str = ""


@dataclass(frozen=True)
class Spec:
    name: str
    source: Path
    entry: str
    args: tuple
    grid: tuple
    block: tuple
    smem: object = 0
    options: tuple = ()
    defines: tuple = ()
    head_dims: tuple = (64,)
    dtype: str = "float16"
    layout: str = "BHSD"
    self_attention_only: bool = False
    causal: bool = False           # supports causal masking (selected with IS_CAUSAL=1 or a define)
    causal_define: str = "IS_CAUSAL"
    head_dim_define: str | None = None   # e.g. HEAD_DIM: -D<it>=<D> per head dim
    block_m: int = 64
    block_n: int = 64
    kv_stages: int = 1
    constants: dict = field(default_factory=dict)
    precision: dict = field(default_factory=dict)   # inputs, p, accumulate, output
    lse_base: str = "natural"
    m_form: str = "max"
    flags: tuple = ()
    bugs: dict = field(default_factory=dict)        # seeded bug name -> what it breaks (-DBUG_<NAME>)
    spec_path: Path | None = None

    # ---- what the spec declares, derived
    @property
    def buffers(self) -> list:
        """The pointer arguments the check allocates (null ones excluded)."""
        return [a for a in self.args if a.is_buffer and a.role != "null"]

    @property
    def outputs(self) -> list:
        return [a for a in self.buffers if ROLES[a.role][1]]

    def role_arg(self, role: str) -> Arg | None:
        return next((a for a in self.buffers if a.role == role), None)

    def buffer_dtype(self, a: Arg) -> str:
        return a.dtype or (self.dtype if a.role in ("q", "k", "v", "o") else "float32")

    def flag(self, name: str) -> Flag:
        for f in self.flags:
            if f.flag == name or f.flag.lower() == name.lower():
                return f
        raise UsageError(f"{self.name} declares no debug flag {name!r}"
                         + (f"; its flags: {', '.join(f.flag for f in self.flags)}" if self.flags
                            else " (its spec has no [[flags]])"))

    def names(self, B, H, Sq, Sk, D, scale, causal) -> dict:
        n = dict(B=B, H=H, Sq=Sq, Sk=Sk, D=D, scale=scale, causal=int(causal), block_m=self.block_m,
                 block_n=self.block_n, kv_stages=self.kv_stages)
        for k, e in self.constants.items():      # in order: a constant may use the ones before it
            n[k] = evaluate(e, n)
        return n

    def tiles_for(self, B, H, Sq, D) -> dict:
        """The coverage set's view of the tiles (harness/check/coverage.py): one table."""
        return dict(m_frags=self.block_m // 16 if self.block_m % 16 == 0 else 1, nwarps=1,
                    block_n=self.block_n, kv_stages=self.kv_stages, block_m=self.block_m)

    def check_domain(self, B, H, Sq, Sk, D, causal) -> None:
        """One line naming what the declared domain excludes."""
        if D not in self.head_dims:
            raise UsageError(f"{self.name} supports head dim {', '.join(map(str, self.head_dims))}, not {D}")
        if self.self_attention_only and Sq != Sk:
            raise UsageError(f"{self.name} is self-attention only (Sq = Sk); got Sq={Sq}, Sk={Sk}")
        if causal and not self.causal:
            raise UsageError(f"{self.name} declares no causal masking ([domain] causal = false)")


# ------------------------------------------------------------------ reading a spec file
def _req(table: dict, key: str, where: str):
    if key not in table:
        raise UsageError(f"{where}: missing '{key}'")
    return table[key]


def _choice(value, allowed, what: str):
    if value not in allowed:
        raise UsageError(f"{what} {value!r}: valid: {', '.join(map(str, allowed))}")
    return value


def _expr_list(v, what: str, n: int = 3) -> tuple:
    if isinstance(v, (int, str)):
        v = [v]
    if not isinstance(v, list) or not 1 <= len(v) <= n:
        raise UsageError(f"{what}: expected a list of 1 to {n} expressions, got {v!r}")
    return tuple(v) + (1,) * (n - len(v))


def _arg(i: int, d: dict) -> Arg:
    where = f"args[{i}]"
    if not isinstance(d, dict):
        raise UsageError(f"{where}: expected a table such as {{name = \"Q\", role = \"q\"}}")
    unknown = set(d) - {"name", "role", "dtype", "init", "type", "value"}
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = str(_req(d, "name", where))
    if "role" in d:
        role = _choice(d["role"], tuple(ROLES), f"{where} ({name}): role")
        dtype = _choice(d["dtype"], DTYPES, f"{where} ({name}): dtype") if "dtype" in d else None
        init = str(d.get("init", "none"))
        _choice(init, INITS, f"{where} ({name}): init")
        if init != "none" and not ROLES[role][1]:
            raise UsageError(f"{where} ({name}): init is for outputs; {role} is an input")
        return Arg(name, role, dtype, init)
    if "value" not in d:
        raise UsageError(f"{where} ({name}): a scalar needs 'value' (an expression), a buffer 'role' "
                         f"({', '.join(ROLES)})")
    t = _choice(d.get("type", "int"), tuple(SCALAR_TYPES), f"{where} ({name}): type")
    return Arg(name, None, type=t, value=d["value"])


def load(path) -> Spec:
    """Read and check a spec file; every defect is one UsageError line naming the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"kernel spec not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"kernel spec {path}: cannot read it ({type(e).__name__})") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"kernel spec {path}: not valid TOML ({e})") from None
    try:
        return from_dict(data, path.parent, path)
    except UsageError as e:
        raise UsageError(f"kernel spec {path}: {e}") from None


def from_dict(data: dict, base: Path, spec_path: Path | None = None) -> Spec:
    unknown = set(data) - {"kernel", "domain", "tiles", "launch", "args", "constants", "precision",
                           "conventions", "flags", "bugs"}
    if unknown:
        raise UsageError(f"unknown table(s) {', '.join(sorted(unknown))}")
    k = _req(data, "kernel", "spec")
    src = Path(base) / str(_req(k, "source", "[kernel]"))
    dom, tiles, launch = data.get("domain", {}), data.get("tiles", {}), _req(data, "launch", "spec")
    conv, prec = data.get("conventions", {}), data.get("precision", {})
    args = tuple(_arg(i, a) for i, a in enumerate(_req(data, "args", "spec")))
    names = [a.name for a in args]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UsageError(f"args: names used twice: {', '.join(sorted(dup))}")
    roles = [a.role for a in args if a.role and a.role != "null"]
    for r in ("q", "k", "v", "o"):
        if roles.count(r) != 1:
            raise UsageError(f"args: exactly one buffer of role {r!r} is needed, found {roles.count(r)}")
    for r in ("lse", "l", "m"):
        if roles.count(r) > 1:
            raise UsageError(f"args: at most one buffer of role {r!r}")
    flags = tuple(Flag(str(_req(f, "flag", "[[flags]]")),
                       _choice(f.get("stage", "glue"), STAGES, f"flag {f.get('flag')}: stage"),
                       _choice(f.get("output", "o"), tuple(ROLES), f"flag {f.get('flag')}: output"),
                       _choice(f.get("reference", "attention"), tuple(FLAG_REFERENCES), f"flag {f.get('flag')}: reference"),
                       str(f.get("description", "")))
                  for f in data.get("flags", []))
    head_dims = tuple(int(d) for d in dom.get("head_dims", [64]))
    if not head_dims or any(d < 1 or d > 256 for d in head_dims):
        raise UsageError(f"[domain] head_dims {list(head_dims)}: each between 1 and 256")
    block_m, block_n = int(tiles.get("block_m", 64)), int(tiles.get("block_n", 64))
    if block_m < 1 or block_n < 1:
        raise UsageError("[tiles] block_m and block_n must be positive")
    spec = Spec(
        name=str(k.get("name", src.stem)), source=src, entry=str(_req(k, "entry", "[kernel]")),
        args=args, grid=_expr_list(_req(launch, "grid", "[launch]"), "[launch] grid"),
        block=_expr_list(_req(launch, "block", "[launch]"), "[launch] block"), smem=launch.get("smem", 0),
        options=tuple(str(o) for o in k.get("options", [])), defines=tuple(str(o) for o in k.get("defines", [])),
        head_dims=head_dims, dtype=_choice(dom.get("dtype", "float16"), DTYPES, "[domain] dtype"),
        layout=_choice(dom.get("layout", "BHSD"), LAYOUTS, "[domain] layout"),
        self_attention_only=bool(dom.get("self_attention_only", False)), causal=bool(dom.get("causal", False)),
        causal_define=str(dom.get("causal_define", "IS_CAUSAL")), head_dim_define=dom.get("head_dim_define"),
        block_m=block_m, block_n=block_n, kv_stages=int(tiles.get("kv_stages", 1)),
        constants=dict(data.get("constants", {})),
        precision={"inputs": prec.get("inputs"), "p": prec.get("p"), "accumulate": prec.get("accumulate", "float32"),
                   "output": prec.get("output")},
        lse_base=_choice(conv.get("lse", "natural"), LSE_BASES, "[conventions] lse"),
        m_form=_choice(conv.get("m", "max"), M_FORMS, "[conventions] m"),
        flags=flags, bugs={str(b): str(t) for b, t in data.get("bugs", {}).items()}, spec_path=spec_path)
    for key in ("inputs", "p", "output"):
        if spec.precision[key] is not None:
            _choice(spec.precision[key], DTYPES, f"[precision] {key}")
    _choice(spec.precision["accumulate"], ("float32", "float16"), "[precision] accumulate")
    check_expressions(spec)
    return spec


def check_expressions(spec: Spec) -> None:
    """Every expression of the spec evaluated once at a probe shape, so that a typo is one line
    now and not a failed launch later."""
    D = spec.head_dims[0]
    n = spec.names(2, 3, 2 * spec.block_m + 1, 2 * spec.block_n + 1 if not spec.self_attention_only else 2 * spec.block_m + 1,
                   D, 0.125, 0)
    for what, exprs in (("grid", spec.grid), ("block", spec.block), ("smem", (spec.smem,))):
        for e in exprs:
            v = evaluate(e, n)
            if not isinstance(v, (int, float)) or v != int(v) or v < (0 if what == "smem" else 1):
                raise UsageError(f"[launch] {what} {e!r} gives {v!r} at the probe shape: expected a "
                                 f"{'non-negative' if what == 'smem' else 'positive'} integer")
    for a in spec.args:
        if not a.is_buffer:
            evaluate(a.value, n)


def launch_geometry(spec: Spec, names: dict) -> tuple:
    """(grid, block, dynamic shared memory bytes) at a problem, checked."""
    grid = tuple(int(evaluate(e, names)) for e in spec.grid)
    block = tuple(int(evaluate(e, names)) for e in spec.block)
    smem = int(evaluate(spec.smem, names))
    if min(grid) < 1 or min(block) < 1 or math.prod(block) > 1024:
        raise UsageError(f"{spec.name}: launch grid {grid} block {block} is not launchable")
    return grid, block, smem
