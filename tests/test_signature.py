"""harness/toolchain/signature.py: __global__ signatures read from a source, and a spec proposed from
them that kernels.spec.load accepts as written. CPU only."""

import re
from pathlib import Path

import pytest

from harness.toolchain import signature as sg
from harness.errors import UsageError
from kernels import spec as kspec

SIGNATURES = r'''#include <cuda_fp16.h>
#define KERNEL extern "C" __global__
namespace fa {
template <int HEAD_D, typename T = half, bool CAUSAL = false>
__global__ void __launch_bounds__(128, 2)
attn_fwd(const T* __restrict__ Q,      // queries {B, H, S, D}
         const T* __restrict__ K,
         const T *__restrict__ V,
         half *O,
         float* __restrict__ softmax_lse,
         const int seqlen_q, const int seqlen_k,
         float softmax_scale /* = 1 / sqrt(D) */) {
    O[0] = Q[0];
}
template __global__ void attn_fwd<64>(const half*, const half*, const half*, half*, float*, int, int, float);
__device__ float helper(const float* x) { return x[0]; }
}  // namespace fa

extern "C" {
__global__ void plain(float* out, unsigned int n, long long stride, const float bias) { out[0] = bias; }
}
KERNEL void by_macro(float *x) { x[0] = 1.f; }
extern "C" __global__ void decl_then_def(const float*, float*);
extern "C" __global__ void decl_then_def(const float* in, float* out) { out[0] = in[0]; }
__global__ void no_params() {}
__global__ void void_params(void) {}
'''


def lowered_name(text: str, entry: str) -> str:
    """The entry compiled as the run time compiles it (prep, NVRTC, a name expression)."""
    from harness.toolchain import prep
    try:
        from cupy.cuda import nvrtc
        from harness.toolchain.compiler import find_cuda_include
        nvrtc.getVersion()
        inc = find_cuda_include()
    except Exception as e:
        pytest.skip(f"NVRTC not available: {e}")
    p = prep.prepare(text)
    prog = nvrtc.createProgram(p.text, "k.cu", [], [])
    try:
        nvrtc.addNameExpression(prog, entry)
        try:
            nvrtc.compileProgram(prog, ["--gpu-architecture=sm_80", "-std=c++17", f"-I{inc}", *p.options])
        except Exception:
            pytest.fail(nvrtc.getProgramLog(prog))
        return nvrtc.getLoweredName(prog, entry)
    finally:
        nvrtc.destroyProgram(prog)


def by_name(sigs):
    return {s.name: s for s in sigs}


def test_every_global_function_with_its_parameters():
    sigs = by_name(sg.kernels_in(SIGNATURES))
    assert list(sigs) == ["fa::attn_fwd", "plain", "by_macro", "decl_then_def", "no_params", "void_params"]
    a = sigs["fa::attn_fwd"]
    assert a.short_name == "attn_fwd" and not a.extern_c and a.line == 4
    assert [(p.type, p.name, p.default) for p in a.template] == [
        ("int", "HEAD_D", None), ("typename", "T", "half"), ("bool", "CAUSAL", "false")]
    assert [(p.type, p.name) for p in a.params] == [
        ("const T* __restrict__", "Q"), ("const T* __restrict__", "K"), ("const T* __restrict__", "V"),
        ("half*", "O"), ("float* __restrict__", "softmax_lse"), ("const int", "seqlen_q"),
        ("const int", "seqlen_k"), ("float", "softmax_scale")]
    q, o, n = a.params[0], a.params[3], a.params[5]
    assert (q.pointer, q.const, q.element) == (True, True, "T")
    assert (o.pointer, o.const, o.element) == (True, False, "half")
    assert (n.pointer, n.const, n.element) == (False, True, "int")
    p = sigs["plain"]
    assert p.extern_c and [(x.type, x.name) for x in p.params] == [
        ("float*", "out"), ("unsigned int", "n"), ("long long", "stride"), ("const float", "bias")]
    assert sigs["by_macro"].extern_c                       # extern "C" __global__ behind a macro
    d = sigs["decl_then_def"]
    assert d.extern_c and d.body != (0, 0) and [x.name for x in d.params] == ["in", "out"]
    assert sigs["no_params"].params == () and sigs["void_params"].params == ()


def test_unnamed_parameters_and_branches_nvrtc_skips():
    text = ("#ifndef __CUDACC_RTC__\n__global__ void host_side_only(int* x);\n#endif\n"
            "__global__ void k(const float*, int, float* __restrict__);\n")
    (s,) = sg.kernels_in(text)
    assert s.name == "k" and [(p.type, p.name) for p in s.params] == [
        ("const float*", ""), ("int", ""), ("float* __restrict__", "")]


def test_host_launches_with_their_configuration_and_arguments():
    text = ("template <int D> __global__ void k(const float* q, float* o, int n) {}\n"
            "void run(const float* q, float* o, int n, cudaStream_t s) {\n"
            "    dim3 grid(cdiv(n, 64), 8);\n"
            "    k<64><<<grid, dim3(128), 2 * 64 * sizeof(float), s>>>(reinterpret_cast<const float*>(q), o, n);\n"
            "}\n")
    (la,) = sg.launches_in(text)
    assert (la.kernel, la.template_args, la.line) == ("k", "64", 4)
    assert la.config == ("grid", "dim3(128)", "2 * 64 * sizeof(float)", "s")
    assert la.args == ("reinterpret_cast<const float*>(q)", "o", "n")
    assert text[la.scope[0]:la.scope[1]].startswith("void run(")


# ------------------------------------------------------------------ propose_spec
MINIMAL = r'''#include <torch/types.h>
#include <cuda.h>
#include <cuda_runtime.h>

__global__
void forward_kernel(const float* Q, const float* K, const float* V, const int N, const int d,
                    const int Tc, const int Tr, const int Bc, const int Br, const float softmax_scale,
                    float* l, float *m, float* O) {
    int tx = threadIdx.x;
    int bx = blockIdx.x; int by = blockIdx.y;  // batch and head index
    int qkv_offset = (bx * gridDim.y * N * d) + (by * N * d);
    int lm_offset = (bx * gridDim.y * N) + (by * N);
    extern __shared__ float sram[];
    for (int j = 0; j < Tc; j++) {
        for (int i = 0; i < Tr; i++) {
            float row_m_prev = m[lm_offset + (Br * i) + tx];
            float row_l_prev = l[lm_offset + (Br * i) + tx];
            O[qkv_offset + tx] = row_l_prev * O[qkv_offset + tx] + row_m_prev * softmax_scale + Q[0] + K[0] + V[0];
            m[lm_offset + (Br * i) + tx] = row_m_prev;
            l[lm_offset + (Br * i) + tx] = row_l_prev + sram[0] + Bc + d;
        }
    }
}

torch::Tensor forward(torch::Tensor Q, torch::Tensor K, torch::Tensor V) {
    // TODO: determine Bc, Br dynamically
    const int Bc = 32; const int Br = 32;

    const int B = Q.size(0); const int nh = Q.size(1);
    const int N = Q.size(2); const int d = Q.size(3);

    const int Tc = ceil((float) N / Bc); const int Tr = ceil((float) N / Br);
    const float softmax_scale = 1.0 / sqrt(d);

    // Initialize O, l, m to HBM
    auto O = torch::zeros_like(Q);
    auto l = torch::zeros({B, nh, N});
    auto m = torch::full({B, nh, N}, -INFINITY);
    torch::Device device(torch::kCUDA);
    l = l.to(device); m = m.to(device);

    // Calculate SRAM size needed per block
    const int sram_size = (3 * Bc * d * sizeof(float)) + (Bc * Br * sizeof(float));
    int max_sram_size;
    cudaDeviceGetAttribute(&max_sram_size, cudaDevAttrMaxSharedMemoryPerBlock, 0);
    printf("Max shared memory: %d, requested shared memory: %d \\n", max_sram_size, sram_size);

    dim3 grid_dim(B, nh);  // batch_size x num_heads
    dim3 block_dim(Bc);  // Bc threads per block

    forward_kernel<<<grid_dim, block_dim, sram_size>>>(
        Q.data_ptr<float>(), K.data_ptr<float>(), V.data_ptr<float>(),
        N, d, Tc, Tr, Bc, Br, softmax_scale,
        l.data_ptr<float>(), m.data_ptr<float>(), O.data_ptr<float>()
    );
    return O;
}
'''


def write_and_load(tmp_path, name, text, entry=None):
    cu = tmp_path / name
    cu.write_text(text)
    toml = sg.propose_spec(cu, entry)
    path = cu.with_suffix(".toml")
    path.write_text(toml)
    return toml, kspec.load(path)


def line_with(toml, key):
    return next(line for line in toml.splitlines() if line.startswith(f"{key} ="))


def test_flash_attention_minimal_spec_guessed_and_loadable(tmp_path):
    toml, spec = write_and_load(tmp_path, "minimal.cu", MINIMAL)
    assert spec.entry == "forward_kernel" and spec.source == tmp_path / "minimal.cu"
    roles = {a.name: (a.role, a.dtype, a.init) for a in spec.buffers}
    assert roles == {"Q": ("q", "float32", "none"), "K": ("k", "float32", "none"), "V": ("v", "float32", "none"),
                     "l": ("l", "float32", "0"), "m": ("m", "float32", "-inf"), "O": ("o", "float32", "0")}
    scalars = {a.name: (a.type, a.value) for a in spec.args if not a.is_buffer}
    assert scalars == {"N": ("int", "Sq"), "d": ("int", "D"), "Tc": ("int", "cdiv(Sk, block_n)"),
                       "Tr": ("int", "cdiv(Sq, block_m)"), "Bc": ("int", "block_n"), "Br": ("int", "block_m"),
                       "softmax_scale": ("float", "scale")}
    assert [a.name for a in spec.args] == ["Q", "K", "V", "N", "d", "Tc", "Tr", "Bc", "Br", "softmax_scale",
                                          "l", "m", "O"]
    assert (spec.dtype, spec.layout, spec.self_attention_only, spec.causal) == ("float32", "BHSD", True, False)
    assert lowered_name(MINIMAL, spec.entry) == "_Z14forward_kernelPKfS0_S0_iiiiiifPfS1_S1_"
    assert (spec.block_m, spec.block_n) == (32, 32)        # the wrapper's const int Bc = 32; Br = 32
    assert spec.grid == ("B", "H", 1) and spec.block == ("block_n", 1, 1)
    assert spec.smem == "(3 * block_n * D * 4) + (block_n * block_m * 4)"
    names = spec.names(B=2, H=4, Sq=100, Sk=100, D=64, scale=0.125, causal=False)
    assert kspec.launch_geometry(spec, names) == ((2, 4, 1), (32, 1, 1), 3 * 32 * 64 * 4 + 32 * 32 * 4)
    # the guesses say so on their line; what the file states does not
    for key in ("head_dims", "layout", "self_attention_only", "grid", "block", "smem"):
        assert "# OPEN QUESTION:" in line_with(toml, key), key
    assert "dim3 grid_dim(B, nh)" in line_with(toml, "grid")
    assert "OPEN QUESTION" in next(x for x in toml.splitlines() if x.startswith('value = "Sq"'))
    assert "OPEN QUESTION" not in line_with(toml, "dtype") and "OPEN QUESTION" not in line_with(toml, "entry")


NO_WRAPPER = r'''#include <cuda_fp16.h>
#define HEAD_DIM 128
#define BLOCK_M 64
#define BLOCK_N 32
#define NUM_THREADS 128

template <int D>
__global__ void attn(const half* __restrict__ query, const half* __restrict__ key, const half* __restrict__ value,
                     half* __restrict__ out, float* __restrict__ lse, int batch, int num_heads, int seqlen_q,
                     int seqlen_k, float sm_scale, int stride_q) {
    const int m_block = blockIdx.x;
    const int head = blockIdx.y;
    const int b = blockIdx.z;
    out[m_block + head + b] = query[0];
    lse[m_block] = 0.f;
}
template __global__ void attn<HEAD_DIM>(const half*, const half*, const half*, half*, float*,
                                        int, int, int, int, float, int);
'''


def test_kernel_without_a_wrapper_gets_open_questions_and_still_loads(tmp_path):
    toml, spec = write_and_load(tmp_path, "fa.cu", NO_WRAPPER)
    assert spec.entry == "attn<128>" and spec.head_dims == (128,)
    assert {a.name: a.role for a in spec.buffers} == {"query": "q", "key": "k", "value": "v", "out": "o", "lse": "lse"}
    assert spec.buffer_dtype(spec.role_arg("q")) == "float16" and spec.dtype == "float16"
    assert {a.name: a.value for a in spec.args if not a.is_buffer} == {
        "batch": "B", "num_heads": "H", "seqlen_q": "Sq", "seqlen_k": "Sk", "sm_scale": "scale", "stride_q": 0}
    assert not spec.self_attention_only
    assert (spec.block_m, spec.block_n) == (64, 32)
    assert spec.grid == ("cdiv(Sq, block_m)", "H", "B")     # from m_block / head / b = blockIdx.x / y / z
    assert spec.block == (128, 1, 1) and spec.smem == 0
    assert "OPEN QUESTION: what is stride_q?" in toml
    assert "OPEN QUESTION" in line_with(toml, "lse")        # [conventions]: natural or log2
    assert lowered_name(NO_WRAPPER, spec.entry).startswith("_Z")


def test_template_parameters_valued_from_the_file_and_the_domain(tmp_path):
    text = ("constexpr int kBlockM = 64;\nconstexpr int kBlockN = 64;\n"
            "template <typename T, int kHeadDim, int kBlockM_, bool Is_causal>\n"
            "__global__ void fwd(const T* q, const T* k, const T* v, T* o, int n, float scale) {}\n")
    toml, spec = write_and_load(tmp_path, "t.cu", text)
    assert spec.entry == "fwd<half, 64, 0, false>"
    assert "OPEN QUESTION: template arguments guessed" in line_with(toml, "entry")
    assert "OPEN QUESTION" in line_with(toml, "dtype")        # const T*: unknown element type
    assert lowered_name("#include <cuda_fp16.h>\n" + text, spec.entry).startswith("_Z")


def test_several_kernels_need_an_entry(tmp_path):
    cu = tmp_path / "two.cu"
    cu.write_text("__global__ void fwd_a(const float* q, const float* k, const float* v, float* o) {}\n"
                  "__global__ void fwd_b(const float* q, const float* k, const float* v, float* o) {}\n")
    with pytest.raises(UsageError, match=r"two\.cu has 2 __global__ functions \(fwd_a, fwd_b\): name the entry"):
        sg.propose_spec(cu)
    with pytest.raises(UsageError, match=r"no __global__ function 'fwd_c'; found: fwd_a, fwd_b"):
        sg.propose_spec(cu, "fwd_c")
    toml = sg.propose_spec(cu, "fwd_b")
    assert 'entry = "fwd_b"' in toml
    path = tmp_path / "two.toml"
    path.write_text(toml)
    assert kspec.load(path).entry == "fwd_b"


def test_pointers_without_telling_names_take_roles_in_order(tmp_path):
    text = "__global__ void k(const half* a, const half* b, const half* c, half* d_out, int len) {}\n"
    toml, spec = write_and_load(tmp_path, "anon.cu", "#include <cuda_fp16.h>\n" + text)
    assert [(a.name, a.role) for a in spec.buffers] == [("a", "q"), ("b", "k"), ("c", "v"), ("d_out", "o")]
    assert len(re.findall(r'role = "\w+"\s+# OPEN QUESTION: role guessed', toml)) == 4


def test_outsider_kernel_proposal_matches_its_hand_written_spec(tmp_path):
    """kernels/outsider/attention.cu, when present: the proposal names the entry and the
    arguments as its hand-written spec does."""
    here = Path(__file__).resolve().parent.parent / "kernels" / "outsider"
    cu, toml = here / "attention.cu", here / "attention.toml"
    if not (cu.is_file() and toml.is_file() and "__global__" in cu.read_text()):
        pytest.skip("kernels/outsider/attention.{cu,toml} not here")
    _, mine = write_and_load(tmp_path, "attention.cu", cu.read_text())
    theirs = kspec.load(toml)
    assert (mine.entry, mine.dtype, mine.head_dims) == (theirs.entry, theirs.dtype, theirs.head_dims)
    assert [(a.name, a.role) for a in mine.args] == [(a.name, a.role) for a in theirs.args]


def test_query_and_key_lengths_a_head_dim_define_and_a_causal_flag(tmp_path):
    text = ("#ifndef HEAD_DIM\n#define HEAD_DIM 64\n#endif\n"
            "__global__ void k(const float* Q, const float* K, const float* V, float* O, int M, int N,\n"
            "                  bool causal) {}\n")
    toml, spec = write_and_load(tmp_path, "mn.cu", text)
    assert {a.name: a.value for a in spec.args if not a.is_buffer} == {"M": "Sq", "N": "Sk", "causal": "causal"}
    assert not spec.self_attention_only
    assert spec.head_dim_define == "HEAD_DIM" and spec.head_dims == (64,)
    assert spec.causal and "OPEN QUESTION" in line_with(toml, "causal")
    assert "OPEN QUESTION: N beside a query length: the key length?" in toml
    assert "OPEN QUESTION: scalar type 'bool'" in toml        # no spec type of a bool's size
