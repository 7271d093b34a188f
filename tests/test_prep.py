"""harness/toolchain/prep.py: a researcher's .cu (nvcc / torch extension style) made into what NVRTC
compiles, line numbers kept. CPU only: NVRTC compiles without a GPU (skipped without it)."""

import re

import pytest

from harness.toolchain import prep
from harness.errors import UsageError


def _nvrtc():
    try:
        from cupy.cuda import nvrtc
        from harness.toolchain.compiler import find_cuda_include
        nvrtc.getVersion()
        return nvrtc, find_cuda_include()
    except Exception as e:   # no CuPy, no libnvrtc, no toolkit headers
        pytest.skip(f"NVRTC not available: {e}")


def compile_nvrtc(p: prep.Prepared, names=(), defines=(), filename="kernel.cu"):
    """(ok, log, {name expression: lowered name}) as the run time compiles: sm_80, C++17."""
    nvrtc, inc = _nvrtc()
    prog = nvrtc.createProgram(p.text, filename, [], [])
    try:
        for n in names:
            nvrtc.addNameExpression(prog, n)
        opts = ["--gpu-architecture=sm_80", "-std=c++17", f"-I{inc}", *p.options, *(f"-D{d}" for d in defines)]
        try:
            nvrtc.compileProgram(prog, opts)
        except Exception:
            return False, nvrtc.getProgramLog(prog), {}
        return True, nvrtc.getProgramLog(prog), {n: nvrtc.getLoweredName(prog, n) for n in names}
    finally:
        nvrtc.destroyProgram(prog)


def assert_compiles(p, names=(), defines=()):
    ok, log, lowered = compile_nvrtc(p, names, defines)
    assert ok, f"NVRTC rejected the prepared source:\n{log}\n--- prepared ---\n{p.text}"
    return lowered


def assert_lines_kept(text, p):
    assert p.body.count("\n") == text.count("\n")
    assert p.text.split("\n")[p.prelude_lines - 1].startswith("#line 1 ")


def line_of(text, needle):
    return next(i for i, l in enumerate(text.split("\n"), 1) if needle in l)


def kept(p, line_no):
    """Line `line_no` (1-based, the user's numbering) as NVRTC gets it."""
    return p.body.split("\n")[line_no - 1]


# ------------------------------------------------------------------ fixtures
TORCH_EXT = r'''// flash-attention-minimal style, as a torch extension
#include <torch/types.h>
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

__global__ void forward_kernel(const float* Q, const float* K, const float* V, const int N, const int d,
                               const int Tc, const int Tr, const int Bc, const int Br, const float softmax_scale,
                               float* l, float *m, float* O) {
    int tx = threadIdx.x;
    int bx = blockIdx.x; int by = blockIdx.y;
    int qkv_offset = (bx * gridDim.y * N * d) + (by * N * d);
    int lm_offset = (bx * gridDim.y * N) + (by * N);
    extern __shared__ float sram[];
    int tile_size = Bc * d;
    float* Qi = sram;
    float* Kj = &sram[tile_size];
    for (int j = 0; j < Tc; j++) {
        for (int x = 0; x < d; x++) Kj[(tx * d) + x] = K[qkv_offset + (tile_size * j) + (tx * d) + x];
        __syncthreads();
        for (int i = 0; i < Tr; i++) {
            float row_m_prev = m[lm_offset + (Br * i) + tx];
            float row_m = -INFINITY;
            int64_t idx = qkv_offset + i;
            if (row_m_prev == NAN) printf("never {\n");
            for (int y = 0; y < Bc; y++) row_m = fmaxf(row_m, Qi[y] * softmax_scale);
            O[idx] = row_m + l[lm_offset];
            m[lm_offset + (Br * i) + tx] = row_m;
        }
        __syncthreads();
    }
}

torch::Tensor forward(torch::Tensor Q, torch::Tensor K, torch::Tensor V) {
    const int Bc = 32; const int Br = 32;
    const int B = Q.size(0); const int nh = Q.size(1);
    const int N = Q.size(2); const int d = Q.size(3);
    const int Tc = ceil((float) N / Bc); const int Tr = ceil((float) N / Br);
    const float softmax_scale = 1.0 / sqrt(d);
    auto O = torch::zeros_like(Q);
    auto l = torch::zeros({B, nh, N});
    auto m = torch::full({B, nh, N}, -INFINITY);
    torch::Device device(torch::kCUDA);
    l = l.to(device); m = m.to(device);
    const int sram_size = (3 * Bc * d * sizeof(float)) + (Bc * Br * sizeof(float));
    int max_sram_size;
    cudaDeviceGetAttribute(&max_sram_size, cudaDevAttrMaxSharedMemoryPerBlock, 0);
    printf("Max shared memory: %d, requested shared memory: %d \n", max_sram_size, sram_size);
    dim3 grid_dim(B, nh);
    dim3 block_dim(Bc);
    forward_kernel<<<grid_dim, block_dim, sram_size>>>(
        Q.data_ptr<float>(), K.data_ptr<float>(), V.data_ptr<float>(),
        N, d, Tc, Tr, Bc, Br, softmax_scale,
        l.data_ptr<float>(), m.data_ptr<float>(), O.data_ptr<float>()
    );
    return O;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("forward", torch::wrap_pybind_function(forward), "forward");
}
'''


def test_torch_extension_host_half_is_cut_and_the_rest_compiles():
    p = prep.prepare(TORCH_EXT, "minimal.cu")
    assert_lines_kept(TORCH_EXT, p)
    r = " | ".join(p.removed)
    for inc in ("torch/types.h", "torch/extension.h", "ATen/cuda/CUDAContext.h", "c10/cuda/CUDAGuard.h",
                "cstdio", "vector"):
        assert f"#include <{inc}>" in r
    assert "#include <cmath> (line 7; replaced by a shim)" in r
    assert "#include <cstdint> (line 8; replaced by a shim)" in r
    assert "cuda_runtime.h" not in r                     # NVRTC compiles it: left alone
    fwd, mod, end = (line_of(TORCH_EXT, s) for s in ("torch::Tensor forward(", "PYBIND11_MODULE", "    return O;"))
    assert f"host function forward (lines {fwd}-{end + 1})" in r
    assert f"PYBIND11_MODULE block (lines {mod}-{mod + 2})" in r
    k = line_of(TORCH_EXT, "__global__ void forward_kernel")
    assert kept(p, k) == TORCH_EXT.split("\n")[k - 1]   # the kernel's first line, unmoved
    assert all(not kept(p, n) for n in range(fwd, mod + 3))   # the host half: blank lines
    assert "torch::" not in p.body and "<<<" not in p.body
    assert "-default-device" in p.options
    assert_compiles(p, ["forward_kernel"])


TEMPLATED = r'''#include <cuda_fp16.h>
#include <mma.h>
#include <cuda_bf16.h>
using namespace nvcuda;

#define HOST_DEVICE __host__ __device__
#define CHECK(x) do { if (!(x)) { printf("fail {"); } } while (0)

constexpr int kBlockM = 64;
constexpr int cdiv(int a, int b) { return (a + b - 1) / b; }   // host constexpr, used on the device
HOST_DEVICE inline int round_up(int a, int b) { return cdiv(a, b) * b; }

struct Params {
    const half* __restrict__ q;
    int n;
    int rows() const { return n; }          /* a member without __device__ { */
};

template <int HEAD_D, typename T = half>
__global__ void __launch_bounds__(128) attn_kernel(Params p, T* __restrict__ out, float scale) {
    static_assert(HEAD_D % 16 == 0, "head dim {multiple} of 16");
    const char* s = "}}}";  const char c = '}';
    __shared__ T tile[kBlockM][HEAD_D];
    int i = threadIdx.x + round_up(p.rows(), cdiv(HEAD_D, 16));
    tile[0][0] = out[0];
    out[i] = __float2half(scale * __half2float(tile[0][0])) ;
    (void)s; (void)c;
}

template __global__ void attn_kernel<64>(Params, half*, float);

void launch(Params p, half* out, float scale, cudaStream_t st) {
    attn_kernel<64><<<cdiv(p.n, kBlockM), 128, 0, st>>>(p, out, scale);
    CHECK(cudaGetLastError() == cudaSuccess);
}

int main() {
    Params p{};
    launch(p, nullptr, 1.f, 0);
    return 0;
}
'''


def test_templated_entry_constexpr_helper_and_macro_qualifier():
    p = prep.prepare(TEMPLATED, "attn.cu")
    assert_lines_kept(TEMPLATED, p)
    assert p.removed == ["host function launch (lines 32-35)", "host function main (lines 37-41)"]
    assert "constexpr int cdiv" in kept(p, 10)          # constexpr: kept (-default-device makes it device)
    assert "round_up" in kept(p, 11)                    # __host__ __device__ behind a macro: kept
    assert "rows()" in kept(p, 16)                      # struct members stay with their struct
    assert "template __global__ void attn_kernel<64>" in kept(p, 30)
    lowered = assert_compiles(p, ["attn_kernel<64>", "attn_kernel<128, half>"])
    assert lowered["attn_kernel<64>"].startswith("_Z")


NAMESPACES = r'''#include <cstdint>
namespace flash {
namespace detail {
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
inline int host_only_helper(int a) { return a * 2; }     // no qualifier: host
}  // namespace detail

extern "C" {
__global__ void flash_fwd(const float* q, float* o, int n) {
    if (threadIdx.x < n) o[threadIdx.x] = detail::warp_max(q[threadIdx.x]);
}
void flash_launch(const float* q, float* o, int n) { flash_fwd<<<1, 32>>>(q, o, n); }
}

int64_t workspace_bytes(int n);
__host__ int host_marked(int a) { return a; }
__device__ uint32_t counter;
}  // namespace flash
'''


def test_namespaces_and_extern_c_blocks_are_split_recursively():
    p = prep.prepare(NAMESPACES)
    assert_lines_kept(NAMESPACES, p)
    assert p.removed == ["#include <cstdint> (line 1; replaced by a shim)",
                         "host function host_only_helper (line 8)",
                         "host function flash_launch (line 15)",
                         "host declaration workspace_bytes (line 18)",
                         "host function host_marked (line 19)"]
    assert "namespace flash {" in kept(p, 2) and "extern \"C\" {" in kept(p, 11)
    assert_compiles(p, ["flash::flash_fwd"])


TRICKY = r'''#include <cuda_fp16.h>
// a comment with braces { and a "string {" and a ';'
/* block comment: void host() { }
   still the comment } */
#define OPEN_BRACE {
#define MAKE_KERNEL(name) \
    __global__ void name(float* x) { x[0] = 1.f; }
#define SMEM_BYTES (64 * 1024)

MAKE_KERNEL(made_by_macro)

static const char* kBanner = "kernel { v1 }";
const char kQuote = '"';
constexpr unsigned long long kMask = 0xffff'ffffULL;
constexpr char kBrace = '{';

__global__ void k(float* x) {
    const char* r = R"raw(a raw string with } and " inside)raw";
    x[0] = r[0] + kQuote + kBrace + (kMask & 1);   // }
}

#ifndef __CUDACC_RTC__
#include <torch/extension.h>
void host_guarded(torch::Tensor t) { k<<<1, 1>>>(t.data_ptr<float>()); }
#endif

#if 0
void dead_code( {
#endif

void host_branches(float* x) {
#ifdef USE_STREAM
    if (x) {
#else
    {
#endif
        k<<<1, 1>>>(x);
    }
}
'''


def test_comments_strings_raw_strings_digit_separators_and_guards():
    p = prep.prepare(TRICKY)
    assert_lines_kept(TRICKY, p)
    # the guarded include is left to the preprocessor; only the unguarded host function is cut
    h = line_of(TRICKY, "void host_branches")
    assert p.removed == [f"host function host_branches (lines {h}-{h + 8})"]
    assert all(kept(p, n) == TRICKY.split("\n")[n - 1] for n in range(1, h))
    assert [kept(p, n) for n in range(h, h + 9)] == ["", "#ifdef USE_STREAM", "", "#else", "", "#endif", "", "", ""]
    assert_compiles(p, ["k", "made_by_macro"])
    assert_compiles(p, ["k"], defines=["USE_STREAM"])


MATH = r'''#include <cmath>
#include <math.h>
#include <cfloat>
#include <climits>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <algorithm>
#include <cassert>
#include <cooperative_groups.h>
#include <cuda_pipeline.h>
namespace cg = cooperative_groups;

constexpr float kNegInf = -INFINITY;
template <typename T>
__device__ float to_float(T v) {
    if constexpr (std::is_same<T, float>::value) return v; else return (float)v;
}
__global__ void k(float* x, std::size_t n) {
    assert(n > 0);
    cg::thread_block b = cg::this_thread_block();
    float v = std::max(x[0], kNegInf) + std::exp(x[1]) + std::sqrt(x[2]) + FLT_MAX * 0.f;
    v += (float)INT_MAX * 0.f + std::numeric_limits<float>::lowest() * 0.f + to_float(1);
    if (std::isinf(v) || isnan(v)) v = NAN;
    x[b.thread_rank()] = std::min(v, HUGE_VALF);
}
'''


def test_standard_headers_are_replaced_by_what_device_code_uses():
    p = prep.prepare(MATH)
    assert_lines_kept(MATH, p)
    assert all("cooperative_groups" not in r and "cuda_pipeline" not in r for r in p.removed)
    assert sum("replaced by a shim" in r for r in p.removed) == 8
    assert "#include <cassert> (line 9)" in p.removed
    assert any(o.endswith("/cccl") for o in p.options)    # <cooperative_groups.h> needs libcu++
    assert_compiles(p, ["k"])


def test_math_names_nvcc_gives_every_file_are_there_without_an_include():
    """nvcc includes cuda_runtime.h (and so <math.h>) everywhere: INFINITY needs no #include."""
    text = "__global__ void k(float* x) {\n    x[0] = -INFINITY + std::exp(x[1]);\n}\n"
    p = prep.prepare(text)
    assert p.removed == []
    assert_compiles(p, ["k"])
    own = "#define INFINITY __int_as_float(0x7f800000)\n" + text       # a file's own definition is fine too
    assert_compiles(prep.prepare(own), ["k"])


def test_defines_in_the_prelude_where_a_command_line_define_breaks_nvrtc():
    text = "__global__ void k(T* x) {\n#ifdef FLAG\n    x[0] = (T)1;\n#endif\n}\n"
    ok, log, _ = compile_nvrtc(prep.prepare(text), defines=["T=float"])
    assert not ok and "__nv_nvrtc_builtin_header.h" in log        # NVRTC 13.0: -DT=float breaks its header
    p = prep.prepare(text, defines=("T=float", "FLAG"))
    assert p.text.startswith("#define T float\n#define FLAG 1\n")
    assert_lines_kept(text, p)
    assert_compiles(p, ["k"])
    with pytest.raises(UsageError, match=r"^define '1X=2': expected NAME or NAME=VALUE$"):
        prep.prepare(text, defines=("1X=2",))


def test_prelude_keeps_nvrtc_error_lines_on_the_users_file():
    text = ("#include <cmath>\n#include <torch/types.h>\n\n"
            "__global__ void k(float* x) {\n    x[0] = undefined_name;\n}\n")
    p = prep.prepare(text, "user_kernel.cu")
    ok, log, _ = compile_nvrtc(p, filename="prepared.cu")
    assert not ok
    assert re.search(r"user_kernel\.cu\(5\): error: identifier \"undefined_name\" is undefined", log), log


@pytest.mark.parametrize("header", prep.NVRTC_OK)
def test_headers_left_alone_compile(header):
    """The table's claim: these compile under NVRTC as they are (the prepared options)."""
    p = prep.prepare(f"#include <{header}>\n__global__ void k(float* x) {{ x[0] = 1.f; }}\n")
    assert p.removed == []
    assert_compiles(p)


@pytest.mark.parametrize("header", sorted(h for h in prep.INCLUDES if not h.endswith("/")))
def test_every_replaced_header_compiles_after_preparation(header):
    p = prep.prepare(f"#include <{header}>\n__global__ void k(float* x) {{ x[0] = 1.f; }}\n")
    assert len(p.removed) == 1
    assert_compiles(p)


def test_nvrtc_facts_the_module_rests_on():
    """-default-device is needed (NVRTC 13 refuses unannotated functions) and
    --expt-relaxed-constexpr is no NVRTC option: if a later NVRTC changes either, revisit."""
    text = ("constexpr int cdiv(int a, int b) { return (a + b - 1) / b; }\n"
            "__global__ void k(int* x) { x[0] = cdiv(x[1], 4); }\n")
    bare = prep.Prepared(text, [], (), 0)
    ok, log, _ = compile_nvrtc(bare)
    assert not ok and "host functions are not allowed in JIT mode" in log
    ok, log, _ = compile_nvrtc(prep.Prepared(text, [], ("--expt-relaxed-constexpr",), 0))
    assert not ok and "unrecognized option" in log
    assert_compiles(prep.prepare(text))


# ------------------------------------------------------------------ what cannot be separated
@pytest.mark.parametrize("text, message", [
    ("inline int helper(int a) { return a + 1; }\n__global__ void k(int* x) {\n  x[0] = helper(x[1]);\n}\n",
     r"^line 3: helper\(\) is a host function \(line 1, no __device__\) called from code NVRTC compiles"),
    ("#include <torch/extension.h>\n__device__ float f(at::Half h) { return 0.f; }\n",
     r"^line 2: at:: in code NVRTC compiles .*#ifndef __CUDACC_RTC__"),
    ("__global__ void child(float* x) {}\n__global__ void parent(float* x) {\n  child<<<1, 1>>>(x);\n}\n",
     r"^line 3: a kernel launch \(<<<\) outside a host function"),
    ("__global__ void k(float* x) {\n  x[0] = 1;\n", r"^line 1: this '\{' is never closed"),
    ("__global__ void k(float* x) {\n#ifdef A\n  if (x) { if (x[1]) {\n#else\n  if (x) {\n#endif\n"
     "  x[0] = 1;\n  }\n}\n",
     r"^line 1: this '\{' is never closed \(or #if branches open different braces\)"),
    ("}\n__global__ void k(float* x) {}\n", r"^line 1: unmatched '\}'"),
])
def test_what_cannot_be_separated_is_one_line_naming_the_fix(text, message):
    with pytest.raises(UsageError) as e:
        prep.prepare(text)
    assert "\n" not in str(e.value)
    assert re.search(message, str(e.value)), str(e.value)


def test_member_calls_and_other_declarations_do_not_count_as_calls_of_cut_functions():
    text = ("int size(int a) { return a; }\n"
            "struct S { int n; __device__ int size() const { return n; } };\n"
            "__global__ void k(S s, int* x) { x[0] = s.size(); }\n")
    p = prep.prepare(text)
    assert p.removed == ["host function size (line 1)"]
    assert_compiles(p, ["k"])


def test_qualifier_macros_of_cut_torch_headers_and_of_local_headers(tmp_path):
    text = ('#include <c10/macros/Macros.h>\n#include "common.cuh"\n'
            "C10_HOST_DEVICE inline float twice(float x) { return 2.f * x; }\n"
            "HD inline float thrice(float x) { return 3.f * x; }\n"
            "__global__ void k(float* x) { x[0] = twice(x[1]) + thrice(x[2]); }\n")
    (tmp_path / "common.cuh").write_text("#pragma once\n#define HD __host__ __device__\n")
    with pytest.raises(UsageError, match=r"^line 5: thrice\(\) is a host function \(line 4, no __device__\).*"
                                         r"if HD means __device__, its #define is not visible here$"):
        prep.prepare(text)
    p = prep.prepare(text, include_dir=tmp_path)
    assert p.removed == ["#include <c10/macros/Macros.h> (line 1)"]
    assert "#define C10_HOST_DEVICE __host__ __device__" in p.text
    nvrtc, inc = _nvrtc()
    prog = nvrtc.createProgram(p.text, "k.cu", [], [])
    try:
        nvrtc.compileProgram(prog, ["--gpu-architecture=sm_80", "-std=c++17", f"-I{inc}", f"-I{tmp_path}", *p.options])
    except Exception:
        pytest.fail(nvrtc.getProgramLog(prog))
    finally:
        nvrtc.destroyProgram(prog)


def test_cuda_arch_branches_are_read_as_nvrtc_reads_them():
    text = ("#ifdef __CUDA_ARCH__\n__device__ int where() { return 1; }\n#else\n"
            "#include <iostream>\nint where() { std::cout << 1; return 0; }\n#endif\n"
            "__global__ void k(int* x) { x[0] = where(); }\n")
    p = prep.prepare(text)
    assert p.removed == []                     # the host branch is NVRTC's to skip: nothing to cut
    assert_compiles(p, ["k"])


def test_outsider_kernel_compiles_unedited():
    """The kernel a researcher brought (kernels/outsider/attention.cu), when present."""
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "kernels" / "outsider" / "attention.cu"
    text = path.read_text() if path.is_file() else ""
    if "flash_fwd_kernel" not in text:
        pytest.skip("kernels/outsider/attention.cu (flash_fwd_kernel) not here")
    p = prep.prepare(text, path.name)
    assert_lines_kept(text, p)
    assert_compiles(p, ["flash_fwd_kernel<64>"])
