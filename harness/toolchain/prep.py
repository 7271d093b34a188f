"""A researcher's .cu, as written for nvcc or as a torch extension, made into what NVRTC compiles.

Nobody should have to edit their kernel to have it checked, so the host half of the file is cut
here: host functions (launch wrappers, main), PYBIND11_MODULE / TORCH_LIBRARY blocks, torch and
C++ standard library includes. What is cut becomes blank lines and a `#line 1 "<file>"` follows
the few lines this module adds at the top, so NVRTC's errors name the user's file and line.

Facts about NVRTC 13.0 (CuPy 14.2, CUDA 13.0 headers, -I<toolkit include>) this rests on, seen
on 2026-12-01 (tests/test_prep.py re-checks them where a compiler is present):
  * JIT mode refuses every unannotated function and namespace-scope variable ("host functions
    are not allowed in JIT mode"), constexpr ones included; --expt-relaxed-constexpr is not an
    NVRTC option ("unrecognized option"). -default-device makes them __device__, which is what
    nvcc with --expt-relaxed-constexpr gives device code, so it is always passed (OPTIONS).
  * An explicitly __host__ function is refused even with -default-device: it is cut.
  * No C or C++ standard library headers (<cmath>, <cstdint>, <cstdio>, ...) exist. expf, max,
    isinf, printf, assert, memcpy, size_t, ptrdiff_t are built in; INFINITY, NAN, FLT_MAX,
    INT_MAX, int32_t and std:: names are not: INCLUDES says what replaces each header (the
    INFINITY / NAN / std:: math shim is always in, as nvcc's implicit cuda_runtime.h has them).
  * A -D macro named like a template parameter of NVRTC's builtin header (-DT=float) breaks
    that header: prepare(defines=...) puts such defines after it, in the prelude.
  * CUDA 13 keeps libcu++ (<cuda/std/*>, which <cooperative_groups.h> needs) in include/cccl.
  * NVRTC defines __CUDACC_RTC__, __CUDACC__ and __CUDA_ARCH__, not __NVCC__: a branch those
    decide (e.g. #ifndef __CUDACC_RTC__) is read the way NVRTC reads it.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UsageError

# -default-device: see the module docstring (NVRTC 13 refuses unannotated functions).
OPTIONS = ("-default-device",)

# ------------------------------------------------------------------ what replaces an include
_MATH = ("#ifndef INFINITY", "#define INFINITY __builtin_bit_cast(float, 0x7f800000u)", "#endif",
         "#ifndef NAN", "#define NAN __builtin_bit_cast(float, 0x7fc00000u)", "#endif",
         "#ifndef HUGE_VALF", "#define HUGE_VALF INFINITY", "#endif",
         "namespace std { using ::exp; using ::exp2; using ::log; using ::log2; using ::sqrt; using ::fabs; "
         "using ::abs; using ::max; using ::min; using ::fmax; using ::fmin; using ::isinf; using ::isnan; "
         "using ::isfinite; using ::floor; using ::ceil; using ::round; using ::pow; using ::tanh; using ::fma; "
         "using ::erf; using ::sin; using ::cos; using ::expf; using ::logf; using ::sqrtf; using ::fabsf; "
         "using ::fmaxf; using ::fminf; using ::exp2f; using ::log2f; }")
# The same types as libcu++'s NVRTC <cuda/std/cstdint>, so that a later <cuda/std/...> or
# <cooperative_groups.h> redeclares them identically instead of clashing.
_INT = ("using int8_t = signed char; using int16_t = signed short; using int32_t = signed int; "
        "using int64_t = signed long long; using uint8_t = unsigned char; using uint16_t = unsigned short; "
        "using uint32_t = unsigned int; using uint64_t = unsigned long long; using intptr_t = int64_t; "
        "using uintptr_t = uint64_t;",
        "namespace std { using ::int8_t; using ::int16_t; using ::int32_t; using ::int64_t; using ::uint8_t; "
        "using ::uint16_t; using ::uint32_t; using ::uint64_t; using ::intptr_t; using ::uintptr_t; "
        "using ::size_t; using ::ptrdiff_t; }")
_FLOAT = ("#ifndef FLT_MAX", "#define FLT_MAX 3.402823466e+38F", "#define FLT_MIN 1.175494351e-38F",
          "#define FLT_EPSILON 1.192092896e-07F", "#define DBL_MAX 1.7976931348623158e+308", "#endif")
_LIMITS_C = ("#ifndef INT_MAX", "#define CHAR_BIT 8", "#define SHRT_MAX 32767", "#define INT_MAX 2147483647",
             "#define INT_MIN (-INT_MAX - 1)", "#define UINT_MAX 4294967295U",
             "#define LLONG_MAX 9223372036854775807LL", "#define LLONG_MIN (-LLONG_MAX - 1LL)",
             "#define ULLONG_MAX 18446744073709551615ULL", "#endif")
_STDDEF = ("namespace std { using ::size_t; using ::ptrdiff_t; }",)
_ALGORITHM = ("namespace std { using ::max; using ::min; }",)
_LIMITS = ("#include <cuda/std/limits>", "namespace std { using ::cuda::std::numeric_limits; }")
_TYPE_TRAITS = ("#include <cuda/std/type_traits>",
                "namespace std { using ::cuda::std::is_same; using ::cuda::std::is_same_v; "
                "using ::cuda::std::enable_if; using ::cuda::std::enable_if_t; using ::cuda::std::conditional; "
                "using ::cuda::std::conditional_t; using ::cuda::std::integral_constant; "
                "using ::cuda::std::true_type; using ::cuda::std::false_type; using ::cuda::std::is_floating_point; "
                "using ::cuda::std::is_integral; using ::cuda::std::remove_cv; using ::cuda::std::remove_reference; "
                "using ::cuda::std::decay; }")
_C10 = ("#ifndef C10_HOST_DEVICE", "#define C10_HOST_DEVICE __host__ __device__", "#define C10_DEVICE __device__",
        "#define C10_HOST __host__", "#endif")


@dataclass(frozen=True)
class Rule:
    action: str                 # "drop": cut, nothing replaces it; "shim": cut, the prelude gives what device code uses
    prelude: tuple = ()
    needs_cccl: bool = False    # the prelude includes <cuda/std/...>: needs -I<include>/cccl
    why: str = ""


_HOST = "host only; NVRTC has no such header"
# Only what NVRTC cannot compile is listed; every other include is left as it is (NVRTC_OK
# lists those seen to compile). A name ending in "/" matches every header below it.
INCLUDES = {
    **{p: Rule("drop", why="torch / Python host API; NVRTC has no such headers")
       for p in ("torch/", "ATen/", "c10/", "pybind11/", "Python.h", "THC/")},
    "cuda.h": Rule("drop", why="driver API (host); needs <stdlib.h>, which NVRTC lacks"),
    **{h: Rule("drop", why=_HOST) for h in (
        "iostream", "ostream", "sstream", "fstream", "iomanip", "vector", "string", "map", "unordered_map",
        "set", "memory", "stdexcept", "exception", "chrono", "thread", "mutex", "functional", "tuple",
        "utility", "array", "optional", "random", "numeric", "cstdlib", "stdlib.h", "cstring", "string.h",
        "cstdarg", "ctime", "time.h")},
    **{h: Rule("drop", why="printf is built into NVRTC") for h in ("cstdio", "stdio.h")},
    **{h: Rule("drop", why="assert is built into NVRTC") for h in ("cassert", "assert.h")},
    **{h: Rule("shim", _MATH, why="NVRTC builds in expf, sqrtf, ...; INFINITY, NAN and std:: math from the prelude")
       for h in ("cmath", "math.h")},
    **{h: Rule("shim", _INT, why="int8_t..uint64_t as libcu++ defines them under NVRTC")
       for h in ("cstdint", "stdint.h", "inttypes.h", "cinttypes")},
    **{h: Rule("shim", _FLOAT, why="FLT_MAX etc. from the prelude") for h in ("cfloat", "float.h")},
    **{h: Rule("shim", _LIMITS_C, why="INT_MAX etc. from the prelude") for h in ("climits", "limits.h")},
    **{h: Rule("shim", _STDDEF, why="size_t, ptrdiff_t are built in; std:: names from the prelude")
       for h in ("cstddef", "stddef.h")},
    "algorithm": Rule("shim", _ALGORITHM, why="std::max / std::min in device code: NVRTC's built-in max / min"),
    "limits": Rule("shim", _LIMITS, True, why="std::numeric_limits from libcu++"),
    "type_traits": Rule("shim", _TYPE_TRAITS, True, why="std::is_same etc. from libcu++"),
}
# Seen to compile with NVRTC 13.0 (-I<include>, and -I<include>/cccl for the second row).
NVRTC_OK = ("mma.h", "cuda_fp16.h", "cuda_bf16.h", "cuda_fp8.h", "cuda_pipeline.h", "cuda_awbarrier.h",
            "cuda_runtime.h", "cuda_runtime_api.h", "device_launch_parameters.h", "vector_types.h",
            "device_functions.h", "crt/mma.h",
            "cooperative_groups.h", "cooperative_groups/memcpy_async.h", "cooperative_groups/reduce.h",
            "cuda/std/cstdint", "cuda/std/cmath", "cuda/std/limits", "cuda/std/type_traits", "cuda/std/utility",
            "cuda/std/array", "cuda/pipeline", "cuda/barrier", "cuda/atomic", "cuda/ptx")


def include_rule(name: str) -> Rule | None:
    if name in INCLUDES:
        return INCLUDES[name]
    return next((r for p, r in INCLUDES.items() if p.endswith("/") and name.startswith(p)), None)


# ------------------------------------------------------------------ scanning
@dataclass(frozen=True)
class Directive:
    start: int
    end: int            # the newline that ends it (not included)
    keyword: str        # include, define, if, ifdef, ifndef, elif, else, endif, pragma, ...
    rest: str           # the text after the keyword, comments and line splices removed


@dataclass
class Decl:
    """One top-level declaration (or one inside a namespace / extern "C" block)."""
    start: int
    end: int
    kind: str           # function, declaration, namespace, linkage, block (PYBIND11_MODULE etc.)
    head: str           # the text before its body (or the whole statement), comments removed
    extern_c: bool = False
    children: list = field(default_factory=list)

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()


class Source:
    """The file with comments, literals and preprocessor lines blanked (`code`), the same with
    literals kept (`strs`): both as long as the file, so every offset means the same thing."""

    def __init__(self, text: str, macros: dict | None = None):
        self.text = text
        self._lines = [0] + [m.end() for m in re.finditer(r"\n", text)]
        code, strs, self.directives = _blank_lexically(text)
        branches = _branches(self.directives)
        for a, b, chosen, _ in branches:
            if not chosen:                      # the parser reads one branch of each #if group
                code[a:b] = _spaces(code[a:b])
                strs[a:b] = _spaces(strs[a:b])
        self.code, self.strs = "".join(code), "".join(strs)
        self.dead = [(a, b) for a, b, _, dead in branches if dead]   # NVRTC skips these for sure
        self.macros = {**QUALIFIER_MACROS, **(macros or {}), **_macros(self.directives)}
        self.decls = _split(self, 0, len(text), False)

    def line(self, offset: int) -> int:
        return bisect.bisect_right(self._lines, offset)

    def all_decls(self):
        for d in self.decls:
            yield from d.walk()


def scan(text: str, macros: dict | None = None) -> Source:
    return Source(text, macros)


def _spaces(chars) -> list:
    return [c if c == "\n" else " " for c in chars]


def _blank_lexically(text: str):
    """(code, strs, directives): comments and directives blanked in both, literals in code."""
    code, strs = list(text), list(text)
    directives, i, n, line_start = [], 0, len(text), True
    while i < n:
        c = text[i]
        if c == "\n":
            line_start, i = True, i + 1
        elif c in " \t\r\f\v" or (c == "\\" and text.startswith("\n", i + 1)):
            i += 2 if c == "\\" else 1
        elif c == "#" and line_start:
            j = _directive_end(text, i)
            directives.append(_directive(text, i, j))
            code[i:j] = strs[i:j] = _spaces(text[i:j])
            i = j
        else:
            line_start = False
            j, kind = _token_end(text, i)
            if kind in ("comment", "literal"):
                code[i:j] = _spaces(text[i:j])
                if kind == "comment":
                    strs[i:j] = _spaces(text[i:j])
            i = j
    return code, strs, directives


_LINE_COMMENT = re.compile(r"(?:[^\n\\]|\\.|\\\n)*")          # to the end of the line, splices followed
_NUMBER = re.compile(r"[0-9](?:'?[\w.]|[eEpP][+-])*")          # 0xffff'ffffULL: ' is a digit separator
_WORD = re.compile(r"\w+")
_RAW_PREFIXES = ("R", "u8R", "uR", "UR", "LR")


def _token_end(text: str, i: int):
    """(end, kind) of the token at i: a comment, a string or char literal, a word, or one char.
    Numbers are words, so that the ' of a digit separator does not open a char literal."""
    c = text[i]
    if text.startswith("//", i):
        return _LINE_COMMENT.match(text, i).end(), "comment"
    if text.startswith("/*", i):
        j = text.find("*/", i + 2)
        return (len(text) if j < 0 else j + 2), "comment"
    if c == '"' or c == "'":
        return _quoted_end(text, i, c), "literal"
    if c.isalnum() or c == "_":
        m = (_NUMBER if c.isdigit() else _WORD).match(text, i)
        if m.group() in _RAW_PREFIXES and text.startswith('"', m.end()):
            return _raw_end(text, m.end()), "literal"
        return m.end(), "word"
    return i + 1, "char"


def _quoted_end(text: str, i: int, q: str) -> int:
    j = i + 1
    while j < len(text) and text[j] != q and text[j] != "\n":
        j += 2 if text[j] == "\\" else 1
    return min(j + 1, len(text))


def _raw_end(text: str, q: int) -> int:
    """End of the raw string R"delim( ... )delim" whose quote is at q."""
    paren = text.find("(", q)
    close = text.find(")" + text[q + 1:paren] + '"', paren) if paren > 0 else -1
    return len(text) if close < 0 else close + paren - q + 1


def _directive_end(text: str, i: int) -> int:
    """The newline ending the directive at i: line splices, comments and literals followed."""
    j, n = i + 1, len(text)
    while j < n and text[j] != "\n":
        if text[j] == "\\" and text.startswith("\n", j + 1):
            j += 2
        elif text.startswith("/*", j) or text.startswith("//", j) or text[j] in "\"'":
            j = _token_end(text, j)[0]
        else:
            j += 1
    return j


def _directive(text: str, a: int, b: int) -> Directive:
    body = re.sub(r"\\\n", "", text[a + 1:b])
    body = re.sub(r"/\*.*?\*/", " ", body, flags=re.S)
    body = re.sub(r"//.*", "", body).strip()
    m = re.match(r"(\w*)\s*(.*)", body, re.S)
    return Directive(a, b, m.group(1), " ".join(m.group(2).split()))


# ------------------------------------------------------------------ #if branches
# What NVRTC defines (checked with #ifndef X / #error): a condition over these is decided.
KNOWN_MACROS = {"__CUDACC_RTC__": True, "__CUDACC__": True, "__CUDA_ARCH__": True, "__cplusplus": True,
                "__NVCC__": False}
# Qualifier macros of headers that are cut (c10/macros/Macros.h): a function marked with one is
# device code. _C10 defines them again for NVRTC.
QUALIFIER_MACROS = {"C10_HOST_DEVICE": "__host__ __device__", "C10_DEVICE": "__device__", "C10_HOST": "__host__"}


def _decide(keyword: str, rest: str):
    """True / False where NVRTC's reading of the condition is known, else None."""
    if keyword in ("ifdef", "ifndef"):
        v = KNOWN_MACROS.get(rest.split()[0] if rest else "")
        return None if v is None else (v if keyword == "ifdef" else not v)
    if keyword == "else":
        return True
    r = rest.replace(" ", "")
    if r in ("0", "1"):
        return r == "1"
    m = re.fullmatch(r"(!?)defined\(?(\w+)\)?", r)
    if m and m.group(2) in KNOWN_MACROS:
        return KNOWN_MACROS[m.group(2)] != bool(m.group(1))
    return None


def _branches(directives):
    """Every #if group's branches as (start, end, chosen, dead): `chosen` is the branch the
    parser reads (the first NVRTC may take; of undecided ones, the first), `dead` one NVRTC
    certainly skips (its condition is false, or an earlier branch is certainly taken)."""
    out, stack = [], []
    for d in directives:
        k = d.keyword
        if k in ("if", "ifdef", "ifndef"):
            stack.append({"taken": False, "certain": False, "open": None})
        if k in ("if", "ifdef", "ifndef", "elif", "else") and stack:
            g = stack[-1]
            _close_branch(out, g, d.start)
            v = _decide(k, d.rest)
            chosen = not g["taken"] and v is not False
            g["open"] = (d.end, chosen, v is False or g["certain"])
            g["taken"] |= chosen
            g["certain"] |= v is True
        elif k == "endif" and stack:
            _close_branch(out, stack.pop(), d.start)
    return out


def _close_branch(out, g, end):
    if g["open"] is not None:
        start, chosen, dead = g["open"]
        out.append((start, end, chosen, dead))


def _macros(directives) -> dict:
    """#define NAME body (object- and function-like): to see __device__ behind a macro."""
    out = {}
    for d in directives:
        m = re.match(r"(\w+)(\([^)]*\))?\s*(.*)", d.rest) if d.keyword == "define" else None
        if m:
            out[m.group(1)] = m.group(3)
    return out


# ------------------------------------------------------------------ declarations
_REMOVE_BLOCKS = ("PYBIND11_MODULE", "TORCH_LIBRARY", "TORCH_LIBRARY_IMPL", "TORCH_LIBRARY_FRAGMENT")


def _split(src: Source, a: int, b: int, extern_c: bool) -> list:
    decls, i = [], a
    while True:
        m = re.compile(r"[\s;]*").match(src.code, i, b)
        i = m.end()
        if i >= b:
            return decls
        if src.code[i] == "}":
            raise UsageError(f"line {src.line(i)}: unmatched '}}' (do the branches of an #if open different braces?)")
        d = _one(src, i, b, extern_c)
        decls.append(d)
        i = d.end


def _one(src: Source, start: int, b: int, extern_c: bool) -> Decl:
    """The declaration starting at `start`: up to its ';', or its body's '}' for a function,
    namespace or linkage block (recursed into)."""
    code, depth, i, first = src.code, 0, start, None
    while i < b:
        c = code[i]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "{":
            close = _match(src, i, b)
            if depth == 0 and first is None:
                head = src.strs[start:i].strip()
                kind = _block_kind(head)
                if kind in ("namespace", "linkage"):
                    inner = extern_c or bool(re.match(r'extern\s*"C"', head))
                    return Decl(start, close + 1, kind, head, inner, _split(src, i + 1, close, inner))
                if kind in ("function", "block"):
                    return Decl(start, close + 1, kind, head, extern_c or has_extern_c(head))
                first = head            # a struct, an initializer: on to the ';'
            i = close
        elif c == ";" and depth == 0:
            head = first if first is not None else src.strs[start:i].strip()
            return Decl(start, i + 1, "declaration", head, extern_c or has_extern_c(head))
        i += 1
    raise UsageError(f"line {src.line(start)}: this declaration does not end (a missing ';' or '}}', "
                     f"or #if branches that open different braces?)")


def _match(src: Source, i: int, b: int) -> int:
    depth = 0
    for j in range(i, b):
        if src.code[j] == "{":
            depth += 1
        elif src.code[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise UsageError(f"line {src.line(i)}: this '{{' is never closed (or #if branches open different braces)")


def has_extern_c(head: str) -> bool:
    return bool(re.search(r'\bextern\s*"C"', head))


def _block_kind(head: str) -> str:
    if re.match(r"(inline\s+)?namespace\b[^=]*$", head):
        return "namespace"
    if re.fullmatch(r'extern\s*"C(\+\+)?"', head):
        return "linkage"
    if re.match(rf"({'|'.join(_REMOVE_BLOCKS)})\s*\(", head):
        return "block"
    body = strip_template(head)
    if re.match(r"(typedef\s+)?(struct|class|union|enum)\b", body) and not _function_like(body):
        return "aggregate"
    if top_level_assign(body) is not None:
        return "initializer"
    return "function" if _function_like(body) else "initializer"


def strip_template(head: str) -> str:
    """The head without its leading `template <...>` clauses (or `template` of an explicit
    instantiation)."""
    while True:
        m = re.match(r"\s*template\b\s*", head)
        if not m:
            return head.strip()
        i = m.end()
        if i < len(head) and head[i] == "<":
            i = angle_end(head, i)
        head = head[i:]


def angle_end(s: str, i: int) -> int:
    depth = 0
    for j in range(i, len(s)):
        if s[j] in "<([":
            depth += 1
        elif s[j] in ">)]":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(s)


def _top_level(s: str):
    """(index, char) of s outside (), [] and {} (an opening bracket itself is outside)."""
    depth = 0
    for j, c in enumerate(s):
        if c in ")]}":
            depth -= 1
        elif depth == 0:
            yield j, c
        if c in "([{":
            depth += 1


def top_level_assign(s: str):
    for j, c in _top_level(s):
        if c == "=" and s[j - 1:j] not in ("=", "<", ">", "!") and s[j + 1:j + 2] != "=" \
                and not re.search(r"\boperator\s*\W*$", s[:j]):
            return j
    return None


_SPECIFIERS = r"(const|volatile|noexcept|override|final|mutable|&&?|throw\s*\(\s*\))"


def _function_like(body: str) -> bool:
    """A function head ends with its parameter list, then only specifiers (or a trailing
    return type, or a constructor's initializer list)."""
    closes = [j for j, c in _top_level(body) if c == "("]
    if not closes:
        return False
    tail = body[paren_close(body, closes[-1]) + 1:].strip()
    return bool(re.fullmatch(rf"({_SPECIFIERS}\s*)*(->.*|:.*)?", tail, re.S))


def paren_close(s: str, i: int, pair: str = "()") -> int:
    """The index of the bracket that closes the one at s[i] (pair: "()" or "[]"), else len(s)."""
    depth, step = 0, {pair[0]: 1, pair[1]: -1}
    for j in range(i, len(s)):
        depth += step.get(s[j], 0)
        if depth == 0:
            return j
    return len(s)


_NOT_NAMES = {"__launch_bounds__", "__align__", "__attribute__", "alignas", "__declspec", "decltype", "noexcept",
              "throw", "sizeof", "alignof", "static_assert", "__maxnreg__", "__cluster_dims__", "if", "while",
              "for", "switch", "return"}


def function_name(head: str):
    """(name, index of its '(' in the template-stripped head) of a function head, else None:
    the word before the first top-level '(' that is not an attribute, with a return type (or
    a qualifier) before it and no '=' before it."""
    body = strip_template(head)
    if re.match(r"(typedef|using|friend)\b", body):
        return None
    assign = top_level_assign(body)
    for j, c in _top_level(body):
        if c != "(" or (assign is not None and assign < j):
            continue
        before = body[:j].rstrip()
        if before.endswith(">"):                       # a template-id: k<64>(...)
            before = before[:angle_start(before)].rstrip()
        m = re.search(r"((?:\w+\s*::\s*)*~?\w+)$", before)
        if not m or m.group(1).split("::")[-1].strip() in _NOT_NAMES:
            continue
        if not before[:m.start()].strip():             # a macro call or a statement, not a declaration
            return None
        return re.sub(r"\s+", "", m.group(1)), j
    return None


def angle_start(s: str) -> int:
    depth = 0
    for j in range(len(s) - 1, -1, -1):
        if s[j] == ">":
            depth += 1
        elif s[j] == "<":
            depth -= 1
            if depth == 0:
                return j
    return 0


def qualifiers(head: str, macros: dict) -> set:
    """The words of a head before its name, macros expanded (`#define HD __host__ __device__`)."""
    body = strip_template(head)
    fn = function_name(head)
    words, seen = set(re.findall(r"\w+", body[:fn[1]] if fn else body)), set()
    while words - seen:
        w = (words - seen).pop()
        seen.add(w)
        if w in macros:
            words |= set(re.findall(r"\w+", macros[w]))
    return words


# ------------------------------------------------------------------ keep or cut
# Names only a host compiler knows: code that keeps one cannot go through NVRTC.
HOST_API = re.compile(r"(?<![\w:.])(torch|at|c10|pybind11|py)\s*::|\bPyObject\b|(?<![\w:])std\s*::\s*"
                      r"(vector|string|map|unordered_map|set|shared_ptr|unique_ptr|function|ostream|cout|cerr|"
                      r"mutex|once_flag|optional|pair|tuple|array)\b")
_HOST_NAMESPACE = re.compile(r"\b(using\s+namespace|namespace\s+\w+\s*=)\s*(torch|at|c10|pybind11|py)\b")


# A function with one of these is device code: constexpr ones too, since -default-device makes
# them __device__ (nvcc's --expt-relaxed-constexpr lets device code call them).
_DEVICE_WORDS = {"__global__", "__device__", "constexpr", "consteval"}


def verdict(d: Decl, src: Source, device_names: set):
    """None to keep the declaration, else the short description of what is cut."""
    lines = _lines(src, d)
    if d.kind == "block":
        return f"{d.head.split('(')[0].strip()} block ({lines})"
    if d.kind in ("namespace", "linkage"):
        return None
    fn = function_name(d.head)
    if fn is not None and (d.kind == "function" or _is_prototype(d)):
        if qualifiers(d.head, src.macros) & _DEVICE_WORDS:
            return None
        if d.kind == "declaration" and fn[0].split("::")[-1] in device_names:
            return None                 # e.g. `template void k<64>(...);` of a __global__ k
        what = "host function" if d.kind == "function" else "host declaration"
        return f"{what} {fn[0]} ({lines})"
    text = src.code[d.start:d.end]
    if HOST_API.search(text) or _HOST_NAMESPACE.search(text):
        return f"host declaration ({lines})"
    return None


def _is_prototype(d: Decl) -> bool:
    """A ';' declaration of a function (not of a variable with a constructor call)."""
    return d.kind == "declaration" and _block_kind(d.head) == "function"


def _lines(src: Source, d: Decl) -> str:
    a, b = src.line(d.start), src.line(d.end - 1)
    return f"line {a}" if a == b else f"lines {a}-{b}"


def device_function_names(src: Source) -> set:
    """Names of the functions kept for their qualifiers: a later bare redeclaration or explicit
    instantiation of one of them (`template void k<64>(...);`) is kept too."""
    out = set()
    for d in src.all_decls():
        fn = function_name(d.head) if d.kind in ("function", "declaration") else None
        if fn and qualifiers(d.head, src.macros) & _DEVICE_WORDS:
            out.add(fn[0].split("::")[-1])
    return out


# ------------------------------------------------------------------ the result
@dataclass
class Prepared:
    text: str                         # what NVRTC gets
    removed: list                     # short descriptions of what was cut, in file order
    options: tuple                    # NVRTC options the text needs
    prelude_lines: int = 1            # lines before the user's line 1 (shims, then #line)

    @property
    def body(self) -> str:
        """The user's lines as NVRTC gets them: as many as the file has."""
        return self.text.split("\n", self.prelude_lines)[self.prelude_lines]


def prepare(text: str, filename: str = "kernel.cu", include_dir: Path | None = None,
            defines: tuple = ()) -> Prepared:
    """The source NVRTC compiles: host code and host-only includes cut (blank lines in their
    place), what NVRTC lacks supplied ahead of a `#line 1` that keeps line numbers. include_dir
    (the file's folder): the #defines of its local "..." includes count too (a `#define HD
    __host__ __device__` in a header). defines ("NAME=VALUE" or "NAME", as -D takes them): put
    in the prelude instead of passed as -D, which NVRTC applies before its own builtin header:
    -DT=float turns its `template<typename T>` into `template<typename float>` (NVRTC 13.0).
    Raises UsageError (one line) where the file cannot be separated without the user's help."""
    macros = local_macros(text, Path(include_dir)) if include_dir else {}
    src = scan(text, macros)
    cuts = _host_cuts(src)
    prelude, include_cuts, notes, cccl = _include_edits(src)
    out = _blank(text, sorted([(c.start, c.end) for c in cuts] + include_cuts), src.directives)
    _check_kept(scan(out, macros), cuts, src.macros)
    if re.search(r"\bC10_(HOST|DEVICE)", out) and any(n.startswith(("#include <c10/", "#include <torch/",
                                                                     "#include <ATen/")) for n in notes):
        prelude += _C10
    descr = sorted([(c.line, c.why) for c in cuts] + [(src.line(a), n) for (a, _), n in zip(include_cuts, notes)])
    head = [_define_line(d) for d in defines] + prelude + [f'#line 1 "{_c_string(filename)}"']
    return Prepared("\n".join(head) + "\n" + out, [d for _, d in descr], _options(cccl), len(head))


def local_macros(text: str, folder: Path, seen: set | None = None) -> dict:
    """#define NAME body of the local "..." headers text includes, recursively (unreadable ones
    are NVRTC's to report)."""
    seen = set() if seen is None else seen
    out = {}
    for m in re.finditer(r'^\s*#\s*include\s*"([^"]+)"', text, re.M):
        p = (folder / m.group(1)).resolve()
        if p in seen or not p.is_file():
            continue
        seen.add(p)
        try:
            sub = p.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        out.update(local_macros(sub, p.parent, seen))
        out.update(_macros(_blank_lexically(sub)[2]))
    return out


@dataclass(frozen=True)
class Cut:
    start: int
    end: int
    line: int
    why: str                    # the description Prepared.removed shows
    function: str | None        # the name of a host function cut, else None
    head: str = ""


def _host_cuts(src: Source) -> list:
    """A Cut for every declaration that is host code (kept namespaces are looked into)."""
    device = device_function_names(src)
    cuts = []

    def visit(decls):
        for d in decls:
            why = verdict(d, src, device)
            if why is None:
                visit(d.children)
                continue
            fn = function_name(d.head) if d.kind == "function" else None
            cuts.append(Cut(d.start, d.end, src.line(d.start), why, fn and fn[0].split("::")[-1], d.head))
    visit(src.decls)
    return cuts


def _include_edits(src: Source):
    """(prelude lines, [(start, end)] of includes cut, their descriptions, needs cccl). The math
    shim is always there: nvcc includes cuda_runtime.h, and with it <math.h>, in every file, so
    INFINITY or std::exp work in nvcc files that never include <cmath> (its #ifndef guards let a
    file's own #define INFINITY win)."""
    prelude, cuts, notes, cccl = list(_MATH), [], [], False
    for d in src.directives:
        m = re.fullmatch(r"<\s*([^>]+?)\s*>", d.rest) if d.keyword == "include" else None
        rule = include_rule(m.group(1)) if m else None
        if rule is None or any(a <= d.start < b for a, b in src.dead):
            continue
        if not _contains(prelude, rule.prelude):
            prelude += rule.prelude
        cccl |= rule.needs_cccl
        cuts.append((d.start, d.end))
        notes.append(f"#include <{m.group(1)}> (line {src.line(d.start)}" + (")" if rule.action == "drop"
                                                                               else "; replaced by a shim)"))
    return prelude, cuts, notes, cccl


def _contains(lines: list, block: tuple) -> bool:
    """block already in the prelude (two headers share a shim: <cmath> and <math.h>)."""
    return any(tuple(lines[i:i + len(block)]) == block for i in range(len(lines)))


_KEEP_DIRECTIVES = ("if", "ifdef", "ifndef", "elif", "else", "endif", "define", "undef")


def _blank(text: str, cuts: list, directives) -> str:
    """text with every cut range blanked (newlines kept), except the #if/#endif/#define lines
    inside it: an #endif cut from a host function could close a group opened outside it."""
    chars = list(text)
    for a, b in cuts:
        chars[a:b] = _spaces(chars[a:b])
    for d in directives:
        if d.keyword in _KEEP_DIRECTIVES:
            chars[d.start:d.end] = text[d.start:d.end]
    new = "".join(chars).split("\n")
    return "\n".join("" if n != o and not n.strip() else n for n, o in zip(new, text.split("\n")))


def _check_kept(kept: Source, cuts: list, macros: dict) -> None:
    """One UsageError line where what is kept still needs the host: a torch:: name in device
    code, a launch from device code, or a call of a function that was cut."""
    m = HOST_API.search(kept.code)
    if m:
        raise UsageError(f"line {kept.line(m.start())}: {m.group().strip()} in code NVRTC compiles (device code, a "
                         f"struct or a constexpr function): NVRTC has no host headers; move it into a host "
                         f"function or guard it with #ifndef __CUDACC_RTC__")
    m = re.search(r"<<<", kept.code)
    if m:
        raise UsageError(f"line {kept.line(m.start())}: a kernel launch (<<<) outside a host function: NVRTC "
                         f"cannot compile it; guard it with #ifndef __CUDACC_RTC__")
    for c in cuts:
        if c.function and c.function != "main":
            _check_calls(kept, c, macros)


def _check_calls(kept: Source, c: Cut, macros: dict) -> None:
    """A host function that was cut must not be called from what is kept: NVRTC would say the
    name is undefined; the user is told what to mark instead."""
    for m in re.finditer(rf"(?<![\w.]){re.escape(c.function)}\s*(?:<[^;{{}}]*?>\s*)?\(", kept.code):
        before = kept.code[:m.start()].rstrip()
        if before.endswith(("->", "::")) or re.search(r"\b(?!return\b|case\b|else\b|do\b)\w+$", before):
            continue                                   # a member, or a declaration of another function
        unknown = [w for w in re.findall(r"\b[A-Z][A-Z0-9_]+\b", strip_template(c.head).split("(")[0])
                   if w not in macros]
        hint = f"; if {unknown[0]} means __device__, its #define is not visible here" if unknown else ""
        raise UsageError(f"line {kept.line(m.start())}: {c.function}() is a host function (line {c.line}, no "
                         f"__device__) called from code NVRTC compiles: mark it __host__ __device__ (or "
                         f"constexpr){hint}")


def _define_line(d: str) -> str:
    name, _, value = str(d).partition("=")
    if not re.fullmatch(r"[A-Za-z_]\w*(\([\w\s,]*\))?", name.strip()):
        raise UsageError(f"define {d!r}: expected NAME or NAME=VALUE")
    return f"#define {name.strip()} {value if '=' in str(d) else '1'}"


def _c_string(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _options(cccl_needed: bool) -> tuple:
    """OPTIONS, and -I<include>/cccl where CUDA 13 keeps libcu++: always when it exists, since a
    local header may include <cuda/std/...> or <cooperative_groups.h> as well as the file."""
    from harness.toolchain.compiler import find_cuda_include
    try:
        cccl = find_cuda_include() / "cccl"
    except UsageError:
        return OPTIONS
    return OPTIONS + ((f"-I{cccl}",) if (cccl / "cuda" / "std").is_dir() else ())
