// cuBLAS and cuDNN through dlopen (vendor.cuh): our own declarations of the
// few functions and constants used, written from the public API documentation
// (handles are opaque pointers, enums plain ints), so that nothing of either
// library is needed to build. Also the library's run-time options
// (tdq_cuda_set_option in tdq_cuda_api.h).
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>

#include "vendor.cuh"

namespace tdqcu {
namespace {

// ---- options ------------------------------------------------------------------------
std::mutex opt_mu;
int g_kernels = -1;  // -1 unset (env), 0 own, 1 auto
int g_precision = -1;
int g_int8 = -1;  // 0 wmma, 1 dp4a

bool env_is(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e && std::strcmp(e, value) == 0;
}

}  // namespace

Precision precision() {
  std::lock_guard<std::mutex> lk(opt_mu);
  if (g_precision < 0) {
    g_precision = env_is("TDQ_CUDA_PRECISION", "fp16") ? 1 : env_is("TDQ_CUDA_PRECISION", "bf16") ? 2 : 0;
  }
  return static_cast<Precision>(g_precision);
}

Int8Kernel int8_kernel() {
  std::lock_guard<std::mutex> lk(opt_mu);
  if (g_int8 < 0) g_int8 = env_is("TDQ_CUDA_INT8", "dp4a") ? 1 : 0;
  return g_int8 == 1 ? Int8Kernel::dp4a : Int8Kernel::wmma;
}

const char* precision_name(Precision p) { return p == Precision::fp16 ? "fp16" : p == Precision::bf16 ? "bf16" : "fp32"; }

namespace vendor {

bool enabled() {
  std::lock_guard<std::mutex> lk(opt_mu);
  if (g_kernels < 0) g_kernels = env_is("TDQ_CUDA_KERNELS", "own") ? 0 : 1;
  return g_kernels == 1;
}

namespace {

// ---- cuBLAS ---------------------------------------------------------------------------
// cublasStatus_t is an int (0 = success); cublasHandle_t an opaque pointer.
using cublasHandle = void*;
constexpr int kOpN = 0, kOpT = 1;                                       // cublasOperation_t
constexpr int kR32F = 0, kR16F = 2, kR16BF = 14;                        // cudaDataType_t
constexpr int kCompute32F = 68;                                         // cublasComputeType_t CUBLAS_COMPUTE_32F
constexpr int kGemmDefault = -1;                                        // cublasGemmAlgo_t
constexpr int kDefaultMath = 0;  // cublasMath_t: with CUBLAS_COMPUTE_32F no TF32; tensor cores for fp16 / bf16
struct Cublas {
  void* lib = nullptr;
  std::string where, why;
  cublasHandle h = nullptr;
  int (*create)(cublasHandle*) = nullptr;
  int (*set_stream)(cublasHandle, cudaStream_t) = nullptr;
  int (*set_math)(cublasHandle, int) = nullptr;
  int (*get_version)(cublasHandle, int*) = nullptr;
  int (*gemm_sb)(cublasHandle, int, int, int, int, int, const void*, const void*, int, int, long long, const void*, int,
                 int, long long, const void*, void*, int, int, long long, int, int, int) = nullptr;
  int version = 0;
};

template <typename F> bool sym(void* lib, const char* name, F& f) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  return f != nullptr;
}

void* open_first(std::initializer_list<const char*> names, std::string& where, std::string& why) {
  for (const char* n : names) {
    if (void* h = dlopen(n, RTLD_NOW | RTLD_LOCAL)) {
      where = n;
      return h;
    }
    const char* e = dlerror();
    why = e ? e : n;
  }
  return nullptr;
}

Cublas& cublas() {
  static Cublas* c = [] {
    auto* b = new Cublas;
    b->lib = open_first({"libcublas.so.13", "libcublas.so.12", "libcublas.so"}, b->where, b->why);
    if (!b->lib) return b;
    if (!sym(b->lib, "cublasCreate_v2", b->create) || !sym(b->lib, "cublasSetStream_v2", b->set_stream) ||
        !sym(b->lib, "cublasSetMathMode", b->set_math) || !sym(b->lib, "cublasGemmStridedBatchedEx", b->gemm_sb)) {
      b->why = b->where + " lacks a cuBLAS function this backend uses";
      b->lib = nullptr;
      return b;
    }
    sym(b->lib, "cublasGetVersion_v2", b->get_version);
    if (int st = b->create(&b->h)) {
      b->why = "cublasCreate failed with status " + std::to_string(st);
      b->lib = nullptr;
      return b;
    }
    b->set_math(b->h, kDefaultMath);
    if (b->get_version) b->get_version(b->h, &b->version);
    return b;
  }();
  return *c;
}

// ---- cuDNN (the legacy convolution API, present in cuDNN 9) ----------------------------
using cudnnHandle = void*;
using cudnnDesc = void*;
constexpr int kDnnFloat = 0, kDnnHalf = 2, kDnnBf16 = 9;  // cudnnDataType_t
constexpr int kNCHW = 0;                                  // cudnnTensorFormat_t
constexpr int kCrossCorrelation = 1;                      // cudnnConvolutionMode_t
constexpr int kMathDefault = 0, kMathTensorOp = 1, kMathFma = 3;  // cudnnMathType_t (FMA: no TF32)
// Deterministic algorithms that take any NCHW geometry.
constexpr int kFwdImplicitPrecompGemm = 1, kBwdDataAlgo1 = 1, kBwdFilterAlgo1 = 1;
struct Cudnn {
  void* lib = nullptr;
  std::string where, why;
  cudnnHandle h = nullptr;
  size_t version = 0;
  size_t (*get_version)() = nullptr;
  int (*create)(cudnnHandle*) = nullptr;
  int (*set_stream)(cudnnHandle, cudaStream_t) = nullptr;
  const char* (*error_string)(int) = nullptr;
  int (*create_tensor)(cudnnDesc*) = nullptr;
  int (*set_tensor4d)(cudnnDesc, int, int, int, int, int, int) = nullptr;
  int (*destroy_tensor)(cudnnDesc) = nullptr;
  int (*create_filter)(cudnnDesc*) = nullptr;
  int (*set_filter4d)(cudnnDesc, int, int, int, int, int, int) = nullptr;
  int (*destroy_filter)(cudnnDesc) = nullptr;
  int (*create_conv)(cudnnDesc*) = nullptr;
  int (*set_conv2d)(cudnnDesc, int, int, int, int, int, int, int, int) = nullptr;
  int (*set_conv_math)(cudnnDesc, int) = nullptr;
  int (*destroy_conv)(cudnnDesc) = nullptr;
  int (*fwd_ws)(cudnnHandle, cudnnDesc, cudnnDesc, cudnnDesc, cudnnDesc, int, size_t*) = nullptr;
  int (*fwd)(cudnnHandle, const void*, cudnnDesc, const void*, cudnnDesc, const void*, cudnnDesc, int, void*, size_t,
             const void*, cudnnDesc, void*) = nullptr;
  int (*bwd_data_ws)(cudnnHandle, cudnnDesc, cudnnDesc, cudnnDesc, cudnnDesc, int, size_t*) = nullptr;
  int (*bwd_data)(cudnnHandle, const void*, cudnnDesc, const void*, cudnnDesc, const void*, cudnnDesc, int, void*,
                  size_t, const void*, cudnnDesc, void*) = nullptr;
  int (*bwd_filter_ws)(cudnnHandle, cudnnDesc, cudnnDesc, cudnnDesc, cudnnDesc, int, size_t*) = nullptr;
  int (*bwd_filter)(cudnnHandle, const void*, cudnnDesc, const void*, cudnnDesc, const void*, cudnnDesc, int, void*,
                    size_t, const void*, cudnnDesc, void*) = nullptr;
};

Cudnn& cudnn() {
  static Cudnn* c = [] {
    auto* d = new Cudnn;
    d->lib = open_first({"libcudnn.so.9", "libcudnn.so"}, d->where, d->why);
    if (!d->lib) return d;
    // libcudnn.so.9 exports the whole API (it loads the sub-libraries on
    // demand); where a symbol is missing, the sub-libraries are asked too.
    void* subs[3] = {dlopen("libcudnn_cnn.so.9", RTLD_NOW | RTLD_LOCAL), dlopen("libcudnn_ops.so.9", RTLD_NOW | RTLD_LOCAL),
                     dlopen("libcudnn_graph.so.9", RTLD_NOW | RTLD_LOCAL)};
    auto sym = [&](void* lib, const char* name, auto& f) {
      if (::tdqcu::vendor::sym(lib, name, f)) return true;
      for (void* h : subs)
        if (h && ::tdqcu::vendor::sym(h, name, f)) return true;
      return false;
    };
    const bool ok =
        sym(d->lib, "cudnnGetVersion", d->get_version) && sym(d->lib, "cudnnCreate", d->create) &&
        sym(d->lib, "cudnnSetStream", d->set_stream) && sym(d->lib, "cudnnGetErrorString", d->error_string) &&
        sym(d->lib, "cudnnCreateTensorDescriptor", d->create_tensor) &&
        sym(d->lib, "cudnnSetTensor4dDescriptor", d->set_tensor4d) &&
        sym(d->lib, "cudnnDestroyTensorDescriptor", d->destroy_tensor) &&
        sym(d->lib, "cudnnCreateFilterDescriptor", d->create_filter) &&
        sym(d->lib, "cudnnSetFilter4dDescriptor", d->set_filter4d) &&
        sym(d->lib, "cudnnDestroyFilterDescriptor", d->destroy_filter) &&
        sym(d->lib, "cudnnCreateConvolutionDescriptor", d->create_conv) &&
        sym(d->lib, "cudnnSetConvolution2dDescriptor", d->set_conv2d) &&
        sym(d->lib, "cudnnSetConvolutionMathType", d->set_conv_math) &&
        sym(d->lib, "cudnnDestroyConvolutionDescriptor", d->destroy_conv) &&
        sym(d->lib, "cudnnGetConvolutionForwardWorkspaceSize", d->fwd_ws) &&
        sym(d->lib, "cudnnConvolutionForward", d->fwd) &&
        sym(d->lib, "cudnnGetConvolutionBackwardDataWorkspaceSize", d->bwd_data_ws) &&
        sym(d->lib, "cudnnConvolutionBackwardData", d->bwd_data) &&
        sym(d->lib, "cudnnGetConvolutionBackwardFilterWorkspaceSize", d->bwd_filter_ws) &&
        sym(d->lib, "cudnnConvolutionBackwardFilter", d->bwd_filter);
    if (!ok) {
      d->why = d->where + " lacks a cuDNN function this backend uses (legacy convolution API)";
      d->lib = nullptr;
      return d;
    }
    d->version = d->get_version();
    if (int st = d->create(&d->h)) {
      d->why = std::string("cudnnCreate failed: ") + d->error_string(st);
      d->lib = nullptr;
    }
    return d;
  }();
  return *c;
}

void cublas_check(int st, const char* what) {
  if (st) throw CuError(std::string("cuBLAS ") + what + " failed with status " + std::to_string(st));
}
void cudnn_check(int st, const char* what) {
  if (st) throw CuError(std::string("cuDNN ") + what + ": " + cudnn().error_string(st));
}

// 2-byte copies of fp32 operands (fp16 / bf16 precision), from the cache.
struct HalfCopy {
  Scratch buf;
  HalfCopy(cudaStream_t s, const float* x, int64_t n, Precision p) : buf(static_cast<size_t>(n) * 2) {
    round_to_half(s, x, buf.p, n, p);
  }
};

// The descriptors of one convolution, destroyed on scope exit.
struct ConvDescs {
  cudnnDesc x = nullptr, y = nullptr, w = nullptr, conv = nullptr;
  int dtype = kDnnFloat;
  ConvDescs(const ConvGeom& g, Precision p) {
    Cudnn& d = cudnn();
    dtype = p == Precision::fp16 ? kDnnHalf : p == Precision::bf16 ? kDnnBf16 : kDnnFloat;
    auto i = [](int64_t v) { return static_cast<int>(v); };
    cudnn_check(d.create_tensor(&x), "create tensor");
    cudnn_check(d.create_tensor(&y), "create tensor");
    cudnn_check(d.create_filter(&w), "create filter");
    cudnn_check(d.create_conv(&conv), "create convolution");
    cudnn_check(d.set_tensor4d(x, kNCHW, dtype, i(g.N), i(g.C), i(g.H), i(g.W)), "x descriptor");
    cudnn_check(d.set_tensor4d(y, kNCHW, dtype, i(g.N), i(g.O), i(g.Ho), i(g.Wo)), "y descriptor");
    cudnn_check(d.set_filter4d(w, dtype, kNCHW, i(g.O), i(g.C), i(g.kh), i(g.kw)), "w descriptor");
    // fp32 arithmetic (compute type float) in every precision: PSEUDO_HALF for fp16 / bf16 data.
    cudnn_check(d.set_conv2d(conv, i(g.pad), i(g.pad), i(g.stride), i(g.stride), 1, 1, kCrossCorrelation, kDnnFloat),
                "convolution descriptor");
    cudnn_check(d.set_conv_math(conv, p == Precision::fp32 ? kMathFma : kMathTensorOp), "math type");
    (void)kMathDefault;
  }
  ~ConvDescs() {
    Cudnn& d = cudnn();
    if (conv) d.destroy_conv(conv);
    if (w) d.destroy_filter(w);
    if (y) d.destroy_tensor(y);
    if (x) d.destroy_tensor(x);
  }
};

// cuDNN refusing a configuration (the workspace query fails): our kernels
// run instead; counted, with the last reason, for describe().
int g_dnn_fallbacks = 0;
std::string g_dnn_last;
bool refused(int st, const char* what) {
  if (st == 0) return false;
  ++g_dnn_fallbacks;
  g_dnn_last = std::string(what) + ": " + cudnn().error_string(st);
  return true;
}

bool cudnn_ready(cudaStream_t s, const ConvGeom& g) {
  if (!enabled() || !cudnn().lib) return false;
  // cuDNN's descriptors take int sizes.
  const int64_t lim = int64_t{1} << 31;
  if (g.N * g.C * g.H * g.W >= lim || g.N * g.O * g.Ho * g.Wo >= lim) return false;
  cudnn_check(cudnn().set_stream(cudnn().h, s), "set stream");
  return true;
}

}  // namespace

std::string describe() {
  std::string r = "cuBLAS ";
  Cublas& b = cublas();
  r += b.lib ? "loaded (" + b.where + ", version " + std::to_string(b.version) + ")" : "absent (" + b.why + ")";
  r += "; cuDNN ";
  Cudnn& d = cudnn();
  r += d.lib ? "loaded (" + d.where + ", version " + std::to_string(d.version) + ")" : "absent (" + d.why + ")";
  if (g_dnn_fallbacks)
    r += "; cuDNN refused " + std::to_string(g_dnn_fallbacks) + " convolution(s), run on our kernels (last: " + g_dnn_last + ")";
  r += enabled() ? "; used" : "; not used (kernels = own)";
  r += std::string("; precision ") + precision_name(precision());
  return r;
}

bool gemm(cudaStream_t s, bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          int64_t sa, const float* B, int64_t ldb, int64_t sb, float beta, float* C, int64_t sc, int64_t batch) {
  if (!enabled() || !cublas().lib) return false;
  const int64_t lim = int64_t{1} << 31;
  if (M >= lim || N >= lim || K >= lim || lda >= lim || ldb >= lim || batch >= lim) return false;
  Cublas& b = cublas();
  cublas_check(b.set_stream(b.h, s), "SetStream");
  // Row-major C (M, N) is column-major C^T (N, M) = op(B)^T op(A)^T: swap the operands.
  const Precision p = precision();
  const void *pa = A, *pb = B;
  int type = kR32F;
  std::unique_ptr<HalfCopy> ha, hb;
  if (p != Precision::fp32) {
    // The whole of A and B as stored (with batch strides; a shared operand once).
    const int64_t na = (tA ? K : M) * lda + (sa ? (batch - 1) * sa : 0);
    const int64_t nb = (tB ? N : K) * ldb + (sb ? (batch - 1) * sb : 0);
    ha.reset(new HalfCopy(s, A, na, p));
    hb.reset(new HalfCopy(s, B, nb, p));
    pa = ha->buf.p, pb = hb->buf.p;
    type = p == Precision::fp16 ? kR16F : kR16BF;
  }
  cublas_check(b.gemm_sb(b.h, tB ? kOpT : kOpN, tA ? kOpT : kOpN, static_cast<int>(N), static_cast<int>(M),
                         static_cast<int>(K), &alpha, pb, type, static_cast<int>(ldb), sb, pa, type,
                         static_cast<int>(lda), sa, &beta, C, kR32F, static_cast<int>(N), sc,
                         static_cast<int>(batch), kCompute32F, kGemmDefault),
               "GemmStridedBatchedEx");
  return true;
}

namespace {
// call(a, b, out) on the fp32 tensors, or (fp16 / bf16) on 2-byte copies of a
// and b into a 2-byte out that is widened into `out` afterwards.
template <typename Call>
void in_precision(cudaStream_t s, Precision p, const float* a, int64_t na, const float* b, int64_t nb, float* out,
                  int64_t nout, Call call) {
  if (p == Precision::fp32) return call(static_cast<const void*>(a), static_cast<const void*>(b), static_cast<void*>(out));
  HalfCopy ha(s, a, na, p), hb(s, b, nb, p);
  Scratch ho(static_cast<size_t>(nout) * 2);
  call(static_cast<const void*>(ha.buf.p), static_cast<const void*>(hb.buf.p), ho.p);
  widen_half(s, ho.p, out, nout, p);
}
}  // namespace

bool conv_forward(cudaStream_t s, const ConvGeom& g, const float* x, const float* w, float* y) {
  if (!cudnn_ready(s, g)) return false;
  Cudnn& d = cudnn();
  const Precision p = precision();
  ConvDescs cd(g, p);
  size_t ws = 0;
  if (refused(d.fwd_ws(d.h, cd.x, cd.w, cd.conv, cd.y, kFwdImplicitPrecompGemm, &ws), "forward")) return false;
  Scratch work(ws);
  const float one = 1.f, zero = 0.f;
  in_precision(s, p, x, g.N * g.C * g.H * g.W, w, g.O * g.C * g.kh * g.kw, y, g.N * g.O * g.Ho * g.Wo,
               [&](const void* px, const void* pw, void* py) {
                 cudnn_check(d.fwd(d.h, &one, cd.x, px, cd.w, pw, cd.conv, kFwdImplicitPrecompGemm, work.p, ws, &zero,
                                   cd.y, py),
                             "ConvolutionForward");
               });
  return true;
}

bool conv_backward_data(cudaStream_t s, const ConvGeom& g, const float* gy, const float* w, float* gx) {
  if (!cudnn_ready(s, g)) return false;
  Cudnn& d = cudnn();
  const Precision p = precision();
  ConvDescs cd(g, p);
  size_t ws = 0;
  if (refused(d.bwd_data_ws(d.h, cd.w, cd.y, cd.conv, cd.x, kBwdDataAlgo1, &ws), "backward data")) return false;
  Scratch work(ws);
  const float one = 1.f, zero = 0.f;
  in_precision(s, p, gy, g.N * g.O * g.Ho * g.Wo, w, g.O * g.C * g.kh * g.kw, gx, g.N * g.C * g.H * g.W,
               [&](const void* pgy, const void* pw, void* pgx) {
                 cudnn_check(d.bwd_data(d.h, &one, cd.w, pw, cd.y, pgy, cd.conv, kBwdDataAlgo1, work.p, ws, &zero,
                                        cd.x, pgx),
                             "ConvolutionBackwardData");
               });
  return true;
}

bool conv_backward_filter(cudaStream_t s, const ConvGeom& g, const float* gy, const float* x, float* gw) {
  if (!cudnn_ready(s, g)) return false;
  Cudnn& d = cudnn();
  // Weight gradients sum over the whole batch: kept in fp32 in every precision.
  ConvDescs cd(g, Precision::fp32);
  size_t ws = 0;
  if (refused(d.bwd_filter_ws(d.h, cd.x, cd.y, cd.conv, cd.w, kBwdFilterAlgo1, &ws), "backward filter")) return false;
  Scratch work(ws);
  const float one = 1.f, zero = 0.f;
  cudnn_check(d.bwd_filter(d.h, &one, cd.x, x, cd.y, gy, cd.conv, kBwdFilterAlgo1, work.p, ws, &zero, cd.w, gw),
              "ConvolutionBackwardFilter");
  return true;
}

}  // namespace vendor
}  // namespace tdqcu

// ---- the options, as exported C functions (tdq_cuda_api.h) ------------------------------
extern "C" __attribute__((visibility("default"))) int tdq_cuda_set_option(const char* key, const char* value,
                                                                          char* err, size_t errlen) {
  using namespace tdqcu;
  const std::string k = key ? key : "", v = value ? value : "";
  std::string bad;
  {
    std::lock_guard<std::mutex> lk(opt_mu);
    if (k == "kernels") {
      if (v == "own") g_kernels = 0;
      else if (v == "auto") g_kernels = 1;
      else bad = "option 'kernels' must be 'auto' or 'own', got '" + v + "'";
    } else if (k == "precision") {
      if (v == "fp32") g_precision = 0;
      else if (v == "fp16") g_precision = 1;
      else if (v == "bf16") g_precision = 2;
      else bad = "option 'precision' must be 'fp32', 'fp16' or 'bf16', got '" + v + "'";
    } else if (k == "int8") {
      if (v == "wmma") g_int8 = 0;
      else if (v == "dp4a") g_int8 = 1;
      else bad = "option 'int8' must be 'wmma' or 'dp4a', got '" + v + "'";
    } else {
      bad = "unknown option '" + k + "' (options: kernels, precision, int8)";
    }
  }
  if (bad.empty()) return 0;
  if (err && errlen) std::snprintf(err, errlen, "%s", bad.c_str());
  return 1;
}

extern "C" __attribute__((visibility("default"))) const char* tdq_cuda_get_option(const char* key) {
  using namespace tdqcu;
  const std::string k = key ? key : "";
  if (k == "kernels") return vendor::enabled() ? "auto" : "own";
  if (k == "precision") return precision_name(precision());
  if (k == "int8") return int8_kernel() == Int8Kernel::dp4a ? "dp4a" : "wmma";
  if (k == "libraries") {
    static thread_local std::string s;
    s = vendor::describe();
    return s.c_str();
  }
  return nullptr;
}
