"""What a .cu's __global__ functions take, and a first spec (kernels/spec.py) proposed from it.

kernels_in() reads every __global__ function of a source (raw or prepared): its name, template
parameters, linkage and parameters, with the scanner of prep.py (comments, literals and the
branches NVRTC skips do not count). propose_spec() turns one of them into the text of a spec
file: roles, dtypes and scalar values guessed from the parameters' names and types, tiles and
head dims from the file's constants, and the launch from a host wrapper's <<<grid, block,
smem>>> where the file has one. Every guess that could be wrong carries `# OPEN QUESTION:` on
its line; the text loads with kernels.spec.load as it is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from harness.toolchain import prep
from harness.errors import UsageError
from kernels import spec as kspec

_TYPE_WORDS = {"const", "volatile", "__restrict__", "__restrict", "restrict", "struct", "unsigned", "signed",
               "int", "float", "double", "char", "short", "long", "bool", "void", "half", "__half", "size_t"}


@dataclass(frozen=True)
class Param:
    type: str                   # as written, spacing normalised: "const float* __restrict__"
    name: str                   # "" where the parameter is unnamed
    default: str | None = None

    @property
    def pointer(self) -> bool:
        return "*" in self.type or "[" in self.type

    @property
    def const(self) -> bool:
        """const data: before the first '*' for a pointer, anywhere for a scalar."""
        return "const" in re.findall(r"\w+", self.type.split("*")[0])

    @property
    def element(self) -> str:
        """The type without qualifiers and pointers: "float", "half", "int"."""
        words = [w for w in re.findall(r"[\w:]+", re.sub(r"\[.*?\]", "", self.type))
                 if w not in ("const", "volatile", "__restrict__", "__restrict", "restrict", "struct")]
        return " ".join(words)


@dataclass(frozen=True)
class Signature:
    name: str                   # qualified with its namespaces: "flash::fwd"
    params: tuple
    template: tuple = ()        # Param per template parameter: type "int" / "typename", name, default
    extern_c: bool = False
    line: int = 0
    body: tuple = (0, 0)        # offsets of the definition's body in the source ((0, 0): a declaration)

    @property
    def short_name(self) -> str:
        return self.name.split("::")[-1]


def kernels_in(text: str, macros: dict | None = None) -> list:
    """Every __global__ function of the source, one Signature each (a definition wins over its
    declarations; explicit instantiations are not listed). macros: #defines from elsewhere
    (prep.local_macros), for a __global__ hidden behind a macro of a local header."""
    src = prep.scan(text, macros)
    out = {}
    for d, ns in _decls_with_namespace(src.decls, ()):
        sig = _signature(src, d, ns)
        if sig is None:
            continue
        key = (sig.name, tuple(p.type for p in sig.params))
        if key not in out or sig.body != (0, 0):
            out[key] = sig
    return sorted(out.values(), key=lambda s: s.line)


def _decls_with_namespace(decls, ns):
    for d in decls:
        if d.kind == "namespace":
            m = re.match(r"(?:inline\s+)?namespace\s+([\w:]*)", d.head)
            yield from _decls_with_namespace(d.children, ns + ((m.group(1),) if m and m.group(1) else ()))
        elif d.kind == "linkage":
            yield from _decls_with_namespace(d.children, ns)
        else:
            yield d, ns


def _signature(src, d, ns) -> Signature | None:
    if d.kind not in ("function", "declaration") or "__global__" not in prep.qualifiers(d.head, src.macros):
        return None
    if re.match(r"\s*template\b(?!\s*<)", d.head):        # an explicit instantiation
        return None
    fn = prep.function_name(d.head)
    if fn is None:
        return None
    body_head = prep.strip_template(d.head)
    close = prep.paren_close(body_head, fn[1])
    params = tuple(_param(p) for p in _split_commas(body_head[fn[1] + 1:close]))
    params = () if params in ((Param("void", ""),), (Param("", ""),)) else params
    body = (d.start + len(src.code[d.start:d.end].split("{", 1)[0]), d.end) if d.kind == "function" else (0, 0)
    extern_c = d.extern_c or any(prep.has_extern_c(src.macros.get(w, "")) for w in re.findall(r"\w+", d.head))
    return Signature("::".join(ns + (fn[0],)), params, _template_params(d.head), extern_c, src.line(d.start), body)


def _split_commas(s: str) -> list:
    """s split at its top-level commas (not inside (), [], {} or <>)."""
    parts, depth, cur = [], 0, ""
    for c in s:
        if c in "([{<":
            depth += 1
        elif c in ")]}>":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    return [p for p in parts + [cur] if p.strip()]


def _param(text: str) -> Param:
    t, default = text, None
    eq = prep.top_level_assign(text)
    if eq is not None:
        t, default = text[:eq], " ".join(text[eq + 1:].split())
    t = " ".join(t.split())
    t = re.sub(r"\s*\*\s*", "* ", t).replace("* *", "**").strip()
    t = re.sub(r"\s*&\s*", "& ", t).strip()
    m = re.fullmatch(r"(.*?)\s*\b([A-Za-z_]\w*)\s*((?:\[[^\]]*\]\s*)*)", t)
    if m and m.group(1).strip() and m.group(2) not in _TYPE_WORDS and not m.group(1).rstrip().endswith("::"):
        return Param((m.group(1).strip() + (" " + m.group(3).strip() if m.group(3) else "")).strip(), m.group(2),
                     default)
    return Param(t.strip(), "", default)


def _template_params(head: str) -> tuple:
    m = re.match(r"\s*template\s*<", head)
    if not m:
        return ()
    end = prep.angle_end(head, m.end() - 1)
    out = []
    for p in _split_commas(head[m.end():end - 1]):
        q = _param(p)
        out.append(Param("typename" if q.type in ("class", "typename") else q.type, q.name, q.default))
    return tuple(out)


# ------------------------------------------------------------------ host-side launches
@dataclass(frozen=True)
class Launch:
    kernel: str                 # the name as launched (no template arguments)
    template_args: str          # "64" of k<64><<<...>>>, or ""
    config: tuple               # grid, block[, smem[, stream]] expressions as written
    args: tuple                 # the call's argument expressions
    line: int
    scope: tuple = (0, 0)       # offsets of the function the launch is in


def launches_in(text: str) -> list:
    """Every `kernel<<<grid, block, smem>>>(args)` of the source, with the host function it is in."""
    src = prep.scan(text)
    funcs = [d for d in src.all_decls() if d.kind == "function"]
    out = []
    for m in re.finditer(r"<<<", src.code):
        name, targs = _launched(src.code[max(0, m.start() - 400):m.start()])
        end = src.code.find(">>>", m.end())
        if not name or end < 0:
            continue
        open_ = re.compile(r"\s*\(").match(src.code, end + 3)
        close = prep.paren_close(src.code, open_.end() - 1) if open_ else end + 3
        scope = next(((f.start, f.end) for f in funcs if f.start <= m.start() < f.end), (0, 0))
        out.append(Launch(name, targs, tuple(_clean(x) for x in _split_commas(src.strs[m.end():end])),
                          tuple(_clean(x) for x in _split_commas(src.strs[open_.end():close])) if open_ else (),
                          src.line(m.start()), scope))
    return out


def _launched(before: str):
    """(kernel name, template arguments) written just before a '<<<'."""
    s = before.rstrip()
    targs = ""
    if s.endswith(">"):
        i = prep.angle_start(s)
        targs, s = s[i + 1:-1].strip(), s[:i].rstrip()
    m = re.search(r"([A-Za-z_][\w:]*)$", s)
    return (m.group(1).split("::")[-1], targs) if m else ("", "")


def _clean(s: str) -> str:
    return " ".join(s.split())


# ------------------------------------------------------------------ guessing the spec
# parameter name -> (spec expression, open question or None); looked up as written, then lower-cased.
SCALARS = {
    **dict.fromkeys(("N", "n", "seq_len", "seqlen", "S", "L", "N_CTX", "n_ctx", "num_tokens"),
                    ("Sq", "one length for queries and keys? (Sq = Sk: self-attention)")),
    **dict.fromkeys(("Sq", "sq", "seqlen_q", "seq_len_q", "Nq", "N_q", "q_len", "len_q", "M"), ("Sq", None)),
    **dict.fromkeys(("Sk", "sk", "seqlen_k", "seq_len_k", "Nk", "N_k", "kv_len", "k_len", "len_k", "seq_len_kv"),
                    ("Sk", None)),
    **dict.fromkeys(("d", "D", "head_dim", "headdim", "HEAD_DIM", "head_size", "d_head", "dim", "hd"), ("D", None)),
    **dict.fromkeys(("B", "b", "batch", "batch_size", "bs", "nb"), ("B", None)),
    **dict.fromkeys(("H", "h", "nh", "num_heads", "n_heads", "heads", "n_head", "nheads"), ("H", None)),
    **dict.fromkeys(("scale", "softmax_scale", "sm_scale", "scale_softmax", "qk_scale", "attn_scale"),
                    ("scale", None)),
    **dict.fromkeys(("softmax_scale_log2", "scale_log2", "sm_scale_log2"),
                    ("scale * 1.4426950408889634", "the scale in log2 units (scale * log2 e)?")),
    **dict.fromkeys(("Tc", "tc", "num_kv_tiles", "n_kv_blocks"), ("cdiv(Sk, block_n)", None)),
    **dict.fromkeys(("Tr", "tr", "num_q_tiles", "n_q_blocks"), ("cdiv(Sq, block_m)", None)),
    **dict.fromkeys(("Bc", "bc", "BLOCK_N", "block_n", "kBlockN", "BN"), ("block_n", None)),
    **dict.fromkeys(("Br", "br", "BLOCK_M", "block_m", "kBlockM", "BM"), ("block_m", None)),
    **dict.fromkeys(("causal", "is_causal", "IS_CAUSAL"), ("causal", None)),
}
# buffer name -> role (ambiguous ones, AMBIGUOUS_BUFFERS, are marked as questions)
BUFFERS = {
    **dict.fromkeys(("Q", "q", "query", "Query", "q_ptr", "Q_ptr", "queries"), "q"),
    **dict.fromkeys(("K", "k", "key", "Key", "k_ptr", "K_ptr", "keys"), "k"),
    **dict.fromkeys(("V", "v", "value", "Value", "v_ptr", "V_ptr", "values"), "v"),
    **dict.fromkeys(("O", "o", "out", "Out", "output", "Output", "o_ptr", "O_ptr", "attn_out"), "o"),
    **dict.fromkeys(("lse", "LSE", "softmax_lse", "Lse", "lse_ptr", "logsumexp"), "lse"),
    **dict.fromkeys(("l", "L", "row_sum", "rowsum", "l_ptr", "sum"), "l"),
    **dict.fromkeys(("m", "M", "row_max", "rowmax", "m_ptr", "max"), "m"),
}
DTYPES = {"float": "float32", "half": "float16", "__half": "float16", "__nv_bfloat16": "bfloat16",
          "nv_bfloat16": "bfloat16", "bfloat16": "bfloat16", "at::Half": "float16", "at::BFloat16": "bfloat16"}
CXX_TYPE = {"float32": "float", "float16": "half", "bfloat16": "__nv_bfloat16"}
AMBIGUOUS_BUFFERS = ("M", "L", "sum", "max")
# C++ scalar type -> spec type of the same size (bool, double: no spec type; an open question)
SCALAR_TYPE = {"int": "int", "unsigned": "uint32", "unsigned int": "uint32", "uint32_t": "uint32",
               "int32_t": "int", "int64_t": "int64", "long": "int64", "long long": "int64", "size_t": "int64",
               "float": "float"}
SIZEOF = {"float": 4, "half": 2, "__half": 2, "__nv_bfloat16": 2, "nv_bfloat16": 2, "int": 4, "double": 8,
          "int64_t": 8, "char": 1, "half2": 4, "float2": 8, "float4": 16, "int4": 16, "uint4": 16, "uint32_t": 4}
TILE_NAMES = {"block_m": ("Br", "BLOCK_M", "BLOCK_SIZE_M", "kBlockM", "BM", "Q_TILE", "TILE_M"),
              "block_n": ("Bc", "BLOCK_N", "BLOCK_SIZE_N", "kBlockN", "BN", "KV_TILE", "TILE_N")}
HEAD_DIM_NAMES = ("HEAD_DIM", "HEAD_D", "head_dim", "kHeadDim", "HEADDIM", "D_HEAD", "d", "D", "HDIM")
THREAD_NAMES = ("NUM_THREADS", "THREADS", "kNThreads", "N_THREADS", "NTHREADS", "BLOCK_THREADS", "THREADS_PER_BLOCK")
INIT_OF_FILL = (("-inf", r"-\s*(INFINITY|std::numeric_limits<float>::infinity\(\)|inf|HUGE_VALF)"),
                ("inf", r"(INFINITY|infinity|inf)\b"), ("0", r"^0(\.0*)?f?$"), ("1", r"^1(\.0*)?f?$"))


@dataclass
class _Guess:
    """One spec line: value and the comment beside it ("OPEN QUESTION: ..." where a guess)."""
    value: object
    note: str = ""
    question: bool = False

    def comment(self) -> str:
        if not self.note:
            return ""
        return f"   # {'OPEN QUESTION: ' if self.question else ''}{self.note}"


@dataclass
class _Context:
    text: str
    src: prep.Source
    sig: Signature
    constants: dict             # integer constants of the file (#define, constexpr, const int)
    launch: Launch | None

    def body(self) -> str:
        a, b = self.sig.body
        return self.src.code[a:b]

    def wrapper(self) -> str:
        """The host function that launches the kernel (literals kept), or ""."""
        a, b = self.launch.scope if self.launch else (0, 0)
        return self.src.strs[a:b]


def propose_spec(cu_path: Path, entry: str | None = None) -> str:
    """The text of a spec for the kernel `entry` of cu_path (the only __global__ when None)."""
    cu_path = Path(cu_path)
    try:
        text = cu_path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {cu_path} ({type(e).__name__})") from None
    sig = _pick(kernels_in(text, prep.local_macros(text, cu_path.parent)), entry, cu_path)
    launch = next((la for la in launches_in(text) if la.kernel == sig.short_name), None)
    ctx = _Context(text, prep.scan(text), sig, _constants(text), launch)
    return _render(cu_path, ctx, entry)


def _pick(sigs: list, entry: str | None, path: Path) -> Signature:
    if not sigs:
        raise UsageError(f"{path.name}: no __global__ function found")
    if entry is None:
        if len(sigs) > 1:
            raise UsageError(f"{path.name} has {len(sigs)} __global__ functions ({', '.join(s.name for s in sigs)}): "
                             f"name the entry (flashcore kernel init {path.name} --entry NAME)")
        return sigs[0]
    base = entry.split("<")[0].strip()
    found = [s for s in sigs if base in (s.name, s.short_name)]
    if not found:
        raise UsageError(f"{path.name}: no __global__ function {base!r}; found: {', '.join(s.name for s in sigs)}")
    return found[0]


_INT_CONSTANT = re.compile(r"\b(?:static\s+)?(?:constexpr|const)\s+(?:static\s+)?(?:unsigned\s+|signed\s+)?"
                          r"(?:int|long|size_t|int32_t|int64_t|uint32_t)\s+(\w+)\s*(?:=\s*|\{\s*)(\d+)[uUlL]*\s*[;},]")


def _constants(text: str) -> dict:
    """name -> int of `#define NAME 32`, `constexpr int NAME = 32;`, `const int NAME = 32;`
    anywhere in the file (a host wrapper's local constants included): the first wins."""
    src = prep.scan(text)
    out = {}
    for d in src.directives:
        m = re.fullmatch(r"(\w+)\s+\(?\s*(\d+)\s*\)?[uUlL]*", d.rest) if d.keyword == "define" else None
        if m:
            out.setdefault(m.group(1), int(m.group(2)))
    for m in _INT_CONSTANT.finditer(src.code):
        out.setdefault(m.group(1), int(m.group(2)))
    return out


# ------------------------------------------------------------------ the pieces of the spec
def _roles(ctx: _Context) -> dict:
    """param name -> _Guess of its role: by name, then the unnamed pointers in order."""
    ptrs = [p for p in ctx.sig.params if p.pointer]
    out, used = {}, set()
    for p in ptrs:
        role = BUFFERS.get(p.name) or BUFFERS.get(p.name.lower())
        if role and role not in used:
            ambiguous = p.name in AMBIGUOUS_BUFFERS
            out[p.name] = _Guess(role, f"{p.name}: the row {'max' if role == 'm' else 'sum'} buffer?" if ambiguous
                                 else "", ambiguous)
            used.add(role)
    for p in ptrs:
        if p.name in out:
            continue
        free = [r for r in (("q", "k", "v") if p.const else ("o", "lse", "l", "m")) if r not in used]
        free = free or [r for r in kspec.ROLES if r not in used]
        if free:
            out[p.name] = _Guess(free[0], f"role guessed from its place ({'const' if p.const else 'written'} "
                                          f"pointer): which buffer is {p.name}?", True)
            used.add(free[0])
        else:
            out[p.name] = _Guess(None, f"{p.name}: no role left for this buffer", True)
    return out


def _dtype(p: Param) -> _Guess:
    e = p.element
    if e in DTYPES:
        return _Guess(DTYPES[e], f"{p.type}")
    return _Guess("float16", f"element type {e!r} (vectorised or templated): its dtype?", True)


def _init(ctx: _Context, p: Param, role: str) -> _Guess:
    """The value an output must hold before the launch: what the host wrapper fills it with,
    else 0 / -inf when the kernel reads it (read-modify-write), else none (must be written)."""
    filled = _host_fill(ctx, p)
    if filled is not None:
        return _Guess(filled, f"the host wrapper fills {p.name} with it before the launch")
    reads = _reads(ctx, p.name)
    if role == "m":
        return _Guess("-inf", "m read before written (running max starts at -inf)?" if reads is not False
                      else "does the kernel read m before writing it? if not: none", True)
    if role == "l":
        return _Guess("0", "l read before written (running sum starts at 0)?" if reads is not False
                      else "does the kernel read l before writing it? if not: none", True)
    if reads:
        return _Guess("0", f"the kernel reads {p.name}: which value must it hold before the launch?", True)
    return _Guess("none", "" if reads is False else f"does the kernel read {p.name} before writing it?",
                  reads is None)


def _reads(ctx: _Context, name: str):
    """True where the kernel body reads the buffer (`X[i]` not the target of a plain `=`), False
    where it only writes it, None where it is used otherwise (aliased: unknown)."""
    body = ctx.body()
    uses = list(re.finditer(rf"(?<![\w.]){re.escape(name)}\b", body))
    if not uses:
        return None
    reads = False
    for m in uses:
        if not body[m.end():].lstrip().startswith("["):
            return None
        close = prep.paren_close(body, body.index("[", m.end()), "[]")
        after = body[close + 1:].lstrip()
        reads |= not (after.startswith("=") and not after.startswith("=="))
    return reads




def _host_fill(ctx: _Context, p: Param):
    """What the host wrapper initialises the tensor passed as `p` with (torch::zeros / full /
    ones / empty, fill_, zero_), or None."""
    hv = _host_var(ctx, p)
    if not hv:
        return None
    scope = ctx.wrapper()
    m = re.search(rf"\b{re.escape(hv)}\s*=\s*(?:torch|at)::(zeros|zeros_like|ones|ones_like|full|full_like|empty|"
                  rf"empty_like)\s*\((.*?)\)\s*;", scope, re.S)
    if m:
        kind = m.group(1)
        if kind.startswith("full"):
            args = _split_commas(m.group(2))
            return _fill_value(args[1]) if len(args) > 1 else None
        return {"zeros": "0", "ones": "1", "empty": "none"}[kind.split("_")[0]]
    m = re.search(rf"\b{re.escape(hv)}\s*\.\s*(fill_\s*\((.*?)\)|zero_\s*\(\s*\))", scope)
    if m:
        return "0" if m.group(1).startswith("zero_") else _fill_value(m.group(2))
    return None


def _fill_value(expr: str):
    e = expr.strip()
    return next((init for init, pat in INIT_OF_FILL if re.search(pat, e)), None)


def _host_var(ctx: _Context, p: Param) -> str:
    """The host variable passed as parameter p at the launch: `Q` of `Q.data_ptr<float>()`."""
    if not ctx.launch:
        return ""
    i = [q.name for q in ctx.sig.params].index(p.name)
    if i >= len(ctx.launch.args):
        return ""
    a = re.sub(r"\b(reinterpret|static|const)_cast\s*<[^>]*>", "", ctx.launch.args[i])
    a = re.sub(r"^\s*(\(\s*[\w\s:*<>]+\)\s*)+", "", a.lstrip("( "))
    m = re.match(r"\s*([A-Za-z_]\w*)", a)
    return m.group(1) if m else ""


def _lookup(name: str):
    return SCALARS.get(name) or SCALARS.get(name.lower())


def _scalar(ctx: _Context, p: Param) -> _Guess:
    hit = _lookup(p.name)
    if hit:
        value, question = hit
        others = [_lookup(q.name) for q in ctx.sig.params if q is not p and not q.pointer]
        if value == "Sq" and question and ("Sq", None) in others and ("Sk", None) not in others:
            return _Guess("Sk", f"{p.name} beside a query length: the key length?", True)   # M and N
        return _Guess(value, question or "", bool(question))
    if p.name in ctx.constants:
        return _Guess(ctx.constants[p.name], f"the file's constant {p.name}: or an expression over the shape?", True)
    return _Guess(0, f"what is {p.name}? (an expression over B, H, Sq, Sk, D, scale, block_m, block_n)", True)


def _scalar_type(p: Param) -> _Guess:
    e = p.element
    if e in SCALAR_TYPE:
        return _Guess(SCALAR_TYPE[e])
    return _Guess("int", f"scalar type {e!r}: int, int64, uint32 or float?", True)


def _tile(ctx: _Context, which: str) -> _Guess:
    for n in TILE_NAMES[which]:
        if n in ctx.constants:
            return _Guess(ctx.constants[n], f"{n} = {ctx.constants[n]} in the file")
    t = _template_value(ctx, TILE_NAMES[which])
    if t is not None:
        return t
    return _Guess(64, f"{'query rows' if which == 'block_m' else 'keys'} per tile: none found in the file", True)


def _template_value(ctx: _Context, names) -> _Guess | None:
    """A template parameter named like `names`, valued from the launch's template arguments."""
    args = _split_commas(ctx.launch.template_args) if ctx.launch and ctx.launch.template_args else []
    for i, tp in enumerate(ctx.sig.template):
        if tp.name in names:
            v = _int_value(ctx, args[i]) if i < len(args) else None
            v = v if v is not None else _int_value(ctx, tp.default or "")
            if v is not None:
                return _Guess(v, f"template parameter {tp.name} = {v}" + (" at the launch" if i < len(args) else ""))
    return None


def _int_value(ctx: _Context, expr: str):
    e = expr.strip()
    if re.fullmatch(r"\d+", e):
        return int(e)
    return ctx.constants.get(e)


def _head_dims(ctx: _Context) -> _Guess:
    t = _template_value(ctx, HEAD_DIM_NAMES)
    if t is not None:
        return _Guess([t.value], t.note)
    for n in HEAD_DIM_NAMES:
        if n in ctx.constants and 1 <= ctx.constants[n] <= 256:
            return _Guess([ctx.constants[n]], f"{n} = {ctx.constants[n]} in the file")
    return _Guess([64], "which head dims does the kernel support? (none fixed in the file)", True)


def _entry(ctx: _Context, entry: str | None, head_dim: int, dtype: str) -> _Guess:
    sig = ctx.sig
    if entry and "<" in entry:
        return _Guess(entry)
    if not sig.template:
        return _Guess(sig.name, "extern \"C\"" if sig.extern_c else "a C++ name: found through its lowered name")
    vals, open_ = [], False
    launch_args = _split_commas(ctx.launch.template_args) if ctx.launch and ctx.launch.template_args else []
    for i, tp in enumerate(sig.template):
        v = _template_arg(ctx, tp, launch_args[i] if i < len(launch_args) else None, head_dim, dtype)
        vals.append(str(v.value))
        open_ |= v.question
    return _Guess(f"{sig.name}<{', '.join(vals)}>", "template arguments guessed: check each" if open_ else
                  "template arguments from the launch", open_)


def _template_arg(ctx, tp: Param, at_launch: str | None, head_dim: int, dtype: str) -> _Guess:
    if at_launch is not None:
        v = _int_value(ctx, at_launch)
        return _Guess(v if v is not None else at_launch)
    if tp.type == "typename":
        return _Guess(CXX_TYPE[dtype], "", True)
    if tp.name in HEAD_DIM_NAMES:
        return _Guess(head_dim)
    for which, names in TILE_NAMES.items():
        if tp.name in names:
            return _tile(ctx, which)
    if tp.default:
        return _Guess(tp.default)
    return _Guess("false" if tp.type == "bool" else 0, "", True)


# ------------------------------------------------------------------ the launch
def _host_names(ctx: _Context, args_spec: dict) -> dict:
    """Host variable -> spec expression: the variables passed as scalar parameters take those
    parameters' values; other names go through SCALARS."""
    out = {}
    if ctx.launch:
        for p, a in zip(ctx.sig.params, ctx.launch.args):
            if not p.pointer and re.fullmatch(r"\w+", a) and p.name in args_spec:
                out[a] = args_spec[p.name]
    return out


def _to_expr(ctx: _Context, expr: str, names: dict):
    """A host expression as a spec expression, or None where a name is not known: casts dropped,
    sizeof(T) as a number, integer `/` as `//` (C's division on ints)."""
    def size(m):
        if m.group(1) not in SIZEOF:
            raise KeyError(m.group(1))
        return str(SIZEOF[m.group(1)])
    try:
        e = re.sub(r"\bsizeof\s*\(\s*([\w:]+)\s*\)", size, expr)
    except KeyError:
        return None
    floaty = bool(re.search(r"\(\s*(float|double)\s*\)|\d\.\d*f?|\bceil\b|\bfloor\b", e))
    e = re.sub(r"\(\s*(float|double|int|unsigned|size_t|int64_t)\s*\)|\b(static_cast|int)\s*<[^>]*>", "", e)
    e = re.sub(r"(\d+(?:\.\d*)?)[fFuUlL]+\b", r"\1", e)

    def name(m):
        w = m.group(0)
        if w in ("ceil", "floor", "min", "max", "cdiv"):
            return w
        v = names.get(w) or (SCALARS.get(w) or (None,))[0]
        if v is None and w in ctx.constants:
            v = str(ctx.constants[w])
        if v is None:
            raise KeyError(w)
        return f"({v})" if re.search(r"\W", str(v)) else str(v)
    try:
        e = re.sub(r"(?<![\w.])[A-Za-z_]\w*", name, e)
    except KeyError:
        return None
    if not floaty:
        e = re.sub(r"(?<![/])/(?![/])", "//", e)
    e = " ".join(e.split())
    try:
        kspec.evaluate(e, dict(B=2, H=3, Sq=129, Sk=129, D=64, scale=0.125, causal=0, block_m=64, block_n=64,
                               kv_stages=1))
    except UsageError:
        return None
    return e


def _launch_exprs(ctx: _Context, names: dict):
    """(grid, block, smem) guesses; from the host wrapper's launch where it is simple."""
    la = ctx.launch
    where = f"launch at line {la.line}" if la else ""
    grid = _dim3(ctx, la.config[0], names, where) if la else None
    block = _dim3(ctx, la.config[1], names, where) if la and len(la.config) > 1 else None
    smem = _smem(ctx, la.config[2], names, where) if la and len(la.config) > 2 else None
    if grid is None:
        grid = _default_grid(ctx, la)
    if block is None:
        n = next((ctx.constants[t] for t in THREAD_NAMES if t in ctx.constants), None)
        block = _Guess([n, 1, 1], "threads per block from the file's constant") if n else \
            _Guess([128, 1, 1], "threads per block?" + (f" ({where}: {la.config[1]})" if la else ""), True)
    if smem is None:
        dynamic = bool(re.search(r"\bextern\s+__shared__", ctx.src.code))
        smem = _Guess(0, ("bytes of dynamic shared memory (the kernel declares extern __shared__)?"
                          + (f" ({where}: {la.config[2]})" if la and len(la.config) > 2 else "")) if dynamic else "",
                      dynamic)
    return grid, block, smem


def _dim3(ctx: _Context, text: str, names: dict, where: str) -> _Guess | None:
    """A launch's grid or block: a dim3 variable defined in the wrapper, or an expression."""
    scope = ctx.wrapper()
    src_text = text
    m = re.search(rf"\bdim3\s+{re.escape(text)}\s*(?:\(|\{{|=\s*dim3\s*\()(.*?)[)}}]\s*;", scope, re.S) \
        if re.fullmatch(r"\w+", text) else None
    parts = _split_commas(m.group(1)) if m else ([text] if not text.startswith("dim3") else
                                                  _split_commas(text[text.index("(") + 1:text.rindex(")")]))
    if m:
        src_text = f"dim3 {text}({_clean(m.group(1))})"
    exprs = [_to_expr(ctx, p, names) for p in parts]
    if not parts or len(parts) > 3 or None in exprs:
        return None
    exprs += [1] * (3 - len(exprs))
    return _Guess([int(e) if re.fullmatch(r"\d+", str(e)) else e for e in exprs],
                  f"from the {where}: {src_text}", True)


def _smem(ctx: _Context, text: str, names: dict, where: str) -> _Guess | None:
    scope = ctx.wrapper()
    src_text = text
    if re.fullmatch(r"\w+", text):
        m = re.search(rf"\b{re.escape(text)}\s*=\s*([^;]+);", scope)
        if not m:
            return None
        src_text, text = f"{text} = {_clean(m.group(1))}", m.group(1)
    e = _to_expr(ctx, text, names)
    return None if e is None else _Guess(int(e) if re.fullmatch(r"\d+", e) else e, f"from the {where}: {src_text}",
                                         True)


_GRID_AXES = {"B": ("b", "batch", "batch_idx", "bidb", "b_idx", "ib", "batch_id"),
              "H": ("h", "head", "head_idx", "bidh", "h_idx", "ih", "head_id", "hh"),
              "cdiv(Sq, block_m)": ("q_block", "m_block", "qb", "q_tile", "tile_q", "row_block", "bm", "start_m",
                                    "pid_m", "block_row", "qi", "q_blk")}


def _default_grid(ctx: _Context, la) -> _Guess:
    """The grid from the kernel's own `x = blockIdx.?` names, else (B, H, 1) when it loops over
    query tiles itself (a Tr parameter), else (cdiv(Sq, block_m), H, B)."""
    body = ctx.body()
    axes = {}
    for m in re.finditer(r"\b(\w+)\s*=\s*(?:\(int\)\s*)?blockIdx\s*\.\s*([xyz])\b", body):
        for expr, names in _GRID_AXES.items():
            if m.group(1) in names:
                axes.setdefault(m.group(2), expr)
    seen = f" (launch at line {la.line}: {', '.join(la.config[:1])})" if la else ""
    if axes and set(axes) == set("xyz"[:len(axes)]):
        return _Guess([axes[c] for c in "xyz"[:len(axes)]] + [1] * (3 - len(axes)),
                      f"from the kernel's blockIdx names{seen}", True)
    if any(p.name in ("Tr", "tr") for p in ctx.sig.params):
        return _Guess(["B", "H", 1], f"one block per (batch, head), looping over query tiles{seen}?", True)
    return _Guess(["cdiv(Sq, block_m)", "H", "B"], f"one block per query tile, head and batch{seen}?", True)


# ------------------------------------------------------------------ rendering
def _toml(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v))


def _line(key: str, g: _Guess) -> str:
    return f"{key} = {_toml(g.value)}{g.comment()}"


def _render(cu_path: Path, ctx: _Context, entry: str | None) -> str:
    roles = _roles(ctx)
    q = next((p for p in ctx.sig.params if roles[p.name].value == "q"), None) if roles else None
    dtype = _dtype(q) if q else _Guess("float16", "no Q buffer found", True)
    args = _args(ctx, roles)
    values = {a["name"]: a["value"].value for a in args if "value" in a}
    self_attention = "Sk" not in values.values()
    head_dims = _head_dims(ctx)
    out = [f"# FlashCore spec proposed for {cu_path.name} (harness/toolchain/signature.py); the format is "
           f"kernels/spec.py.",
           "# Each guess that could be wrong says so on its line (the open questions): check them against the "
           "kernel first.",
           "", "[kernel]", f"name = {_toml(cu_path.stem)}", f"source = {_toml(cu_path.name)}",
           _line("entry", _entry(ctx, entry, head_dims.value[0], dtype.value)), ""]
    out += _domain(ctx, head_dims, dtype, self_attention)
    out += ["[tiles]", _line("block_m", _tile(ctx, "block_m")), _line("block_n", _tile(ctx, "block_n")), ""]
    grid, block, smem = _launch_exprs(ctx, _host_names(ctx, values))
    out += ["[launch]", _line("grid", grid), _line("block", block), _line("smem", smem), ""]
    out += _conventions(roles)
    out += ["# the kernel's arguments, in its order"]
    for a in args:
        out += ["[[args]]"] + [_line(k, v) if isinstance(v, _Guess) else f"{k} = {_toml(v)}"
                               for k, v in a.items()] + [""]
    return "\n".join(out)


def _domain(ctx: _Context, head_dims: _Guess, dtype: _Guess, self_attention: bool) -> list:
    causal = bool(re.search(r"\b(causal|is_causal|IS_CAUSAL|CAUSAL)\b", ctx.src.code))
    return ["[domain]", _line("head_dims", head_dims), _line("dtype", dtype), _line("layout", _layout(ctx)),
            _line("self_attention_only", _Guess(self_attention, "one sequence length for queries and keys?"
                                                if self_attention else "", self_attention)),
            _line("causal", _Guess(causal, "the file mentions causal masking: selected how ([domain] "
                                   "causal_define, default IS_CAUSAL)?" if causal else "", causal)),
            *_head_dim_define(ctx), ""]


def _args(ctx: _Context, roles: dict) -> list:
    """One table per parameter, in order: buffers with role, dtype (and init for outputs),
    scalars with type and value."""
    out = []
    for p in ctx.sig.params:
        if p.pointer:
            r = roles[p.name]
            a = {"name": p.name, "role": r, "dtype": _dtype(p)}
            if r.value is not None and kspec.ROLES[r.value][1]:
                a["init"] = _init(ctx, p, r.value)
        else:
            a = {"name": p.name, "type": _scalar_type(p), "value": _scalar(ctx, p)}
        out.append(a)
    return out


def _layout(ctx: _Context) -> _Guess:
    """BHSD or BSHD from the wrapper's `H = Q.size(1)` / `N = Q.size(2)` where it has them."""
    dims = {}
    for m in re.finditer(r"\b(\w+)\s*=\s*\w+\s*\.\s*size\s*\(\s*(\d)\s*\)", ctx.wrapper()):
        dims.setdefault((_lookup(m.group(1)) or ("",))[0], int(m.group(2)))
    if dims.get("H") == 1 and dims.get("Sq") == 2:
        return _Guess("BHSD", "the host wrapper reads H from size(1), the length from size(2)", True)
    if dims.get("H") == 2 and dims.get("Sq") == 1:
        return _Guess("BSHD", "the host wrapper reads the length from size(1), H from size(2)", True)
    return _Guess("BHSD", "BHSD ([B, H, S, D]) or BSHD ([B, S, H, D])?", True)


def _head_dim_define(ctx: _Context) -> list:
    """`#ifndef HEAD_DIM / #define HEAD_DIM 64`: a head dim chosen with -D, per head dim."""
    ds = ctx.src.directives
    for a, b in zip(ds, ds[1:]):
        if a.keyword == "ifndef" and b.keyword == "define" and a.rest in HEAD_DIM_NAMES and b.rest.split()[0] == a.rest:
            return [_line("head_dim_define", _Guess(a.rest, f"#ifndef {a.rest} / #define {b.rest}: -D{a.rest}=<D> "
                                                             f"for each head dim?", True))]
    return []


def _conventions(roles: dict) -> list:
    have = {g.value for g in roles.values()}
    lines = []
    if "lse" in have:
        lines.append(_line("lse", _Guess("natural", "LSE in natural log, or log2?", True)))
    if "m" in have:
        lines.append(_line("m", _Guess("max", "m the row max of the scaled scores, or in log2 units (max_log2)?",
                                       True)))
    return (["[conventions]"] + lines + [""]) if lines else []
