// tdq_cuda_test: every kernel of the CUDA backend (libtdq_cuda.so) against
// the CPU op of the same name (the registry's reference kernels, scalar level)
// on random inputs, plus the allocator (reuse, out of memory). One line per
// case, "ok" or "FAIL", and the worst error relative to the tolerance
// (atol + rtol * |cpu|; 1.0 is the limit). Exit status: 0 all passed, 1 a
// case failed, 2 no usable device / library.
//
//   tdq_cuda_test [path/to/libtdq_cuda.so]   (default: next to this program, or $TDQ_CUDA_LIB)
//   tdq_cuda_test path/to/libtdq_qint_emu.so  (no GPU: the integer path's arithmetic
//                                              on the host, qint_emulation.cu)
// Built by CMake with -DTDQ_CUDA_TESTS=ON; run by scripts/gpu-check.sh.
#include <dlfcn.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/registry.h"
#include "cuda/tdq_cuda_api.h"
#include "cuda_test_util.h"

using namespace tdq;

namespace {

using cudatest::api;
using cudatest::AttrList;
using cudatest::check;
using cudatest::counter;
using cudatest::desc;
using cudatest::DevBuf;
using cudatest::make_attrs;
using cudatest::Rng;
using cudatest::run_cpu;
using cudatest::shapes_of;

// Runs op on the device with copies of `in`; the outputs come back as CPU tensors shaped like `like`
// (cudatest::run_cuda also returns the inputs as the op left them: dropped here).
std::vector<Tensor> run_cuda(const std::string& op, const std::vector<Tensor>& in, const Attrs& a,
                             const std::vector<Tensor>& like) {
  std::vector<Tensor> outs = cudatest::run_cuda(op, in, a, like);
  outs.resize(like.size());
  return outs;
}

struct Case {
  std::string name, op;
  std::function<std::vector<Tensor>(Rng&)> inputs;
  AttrList attrs;
  double atol, rtol;
  bool exact = false;  // every output byte as the CPU's (the integer path)
  // x (input 0) and y (output 0) in float16 on the device; the CPU op gets x
  // widened back (exact), y is widened for the comparison (relative 2-norm
  // error against atol: the fp16 tolerance).
  bool half_io = false;
};

bool env_set(const char* name) {
  const char* e = std::getenv(name);
  return e && *e;
}

// The forward's statistics, for group_norm_backward's inputs.
std::vector<Tensor> gn_stats(const Tensor& x, const Tensor& w, const Tensor& b, int64_t G, bool silu, ThreadPool& pool) {
  return run_cpu("group_norm_forward", {x, w, b},
                 make_attrs("group_norm_forward", {{"num_groups", double(G)}, {"eps", 1e-5}, {"silu", silu}}), pool);
}

}  // namespace

int main(int argc, char** argv) {
  void* h = nullptr;
  if (const int rc = cudatest::load_api(argc, argv, true, &h)) return rc;
  auto set_option = reinterpret_cast<tdq_cuda_set_option_fn>(dlsym(h, "tdq_cuda_set_option"));
  auto get_option = reinterpret_cast<tdq_cuda_get_option_fn>(dlsym(h, "tdq_cuda_get_option"));
  ThreadPool pool(1);
  int failed = 0, passed = 0;

  // ---- the allocator ----
  {
    char err[1024] = {0};
    void *p = nullptr, *q = nullptr;
    check(api()->alloc(3000, &p, err, sizeof err), "alloc", err);
    api()->release(p);
    check(api()->alloc(2900, &q, err, sizeof err), "alloc", err);
    const bool reused = p == q;
    api()->release(q);
    std::printf("%s allocator: a freed block is reused at once\n", reused ? "ok  " : "FAIL");
    (reused ? passed : failed)++;
    void* big = nullptr;
    const int rc = api()->alloc(size_t{1} << 50, &big, err, sizeof err);
    const bool clear = rc != 0 && std::strstr(err, "out of memory") != nullptr;
    std::printf("%s allocator: 1 PiB gives a clear error: %s\n", clear ? "ok  " : "FAIL", rc ? err : "(allocated!)");
    (clear ? passed : failed)++;
    if (!rc) api()->release(big);
    // The device still works after the failed allocation.
    void* r = nullptr;
    const bool after = api()->alloc(1 << 20, &r, err, sizeof err) == 0;
    if (after) api()->release(r);
    std::printf("%s allocator: allocations work after an out-of-memory error\n", after ? "ok  " : "FAIL");
    (after ? passed : failed)++;
  }

  auto N = [](Rng& r, Shape s) { return r.normal(s); };
  std::vector<Case> cases;
  // elementwise, with broadcasting
  for (const char* op : {"add", "sub", "mul", "div"}) {
    cases.push_back({"same shape", op, [=](Rng& r) { return std::vector<Tensor>{N(r, {4, 33, 17}), N(r, {4, 33, 17})}; }, {}, 0, 1e-6});
    cases.push_back({"(B,C,H,W) . (1,C,1,1)", op, [=](Rng& r) { return std::vector<Tensor>{N(r, {3, 8, 9, 7}), r.uniform({1, 8, 1, 1}, 0.5f, 2.f)}; }, {}, 0, 1e-6});
    cases.push_back({"(5,1) . (4)", op, [=](Rng& r) { return std::vector<Tensor>{N(r, {5, 1}), r.uniform({4}, 0.5f, 2.f)}; }, {}, 0, 1e-6});
    cases.push_back({"scalar . (2,3,4)", op, [=](Rng& r) { return std::vector<Tensor>{r.uniform({}, 0.5f, 2.f), N(r, {2, 3, 4})}; }, {}, 0, 1e-6});
  }
  for (const char* op : {"silu", "gelu"})
    cases.push_back({"(7,1001)", op, [=](Rng& r) { return std::vector<Tensor>{r.normal({7, 1001}, 4.f)}; }, {}, 1e-6, 1e-5});
  cases.push_back({"tanh (7,1001)", "gelu", [=](Rng& r) { return std::vector<Tensor>{r.normal({7, 1001}, 4.f)}; }, {{"approximate", std::string("tanh")}}, 1e-6, 1e-5});
  for (const char* op : {"silu_backward", "gelu_backward"})
    cases.push_back({"(7,1001)", op, [=](Rng& r) { return std::vector<Tensor>{N(r, {7, 1001}), r.normal({7, 1001}, 4.f)}; }, {}, 1e-6, 1e-5});
  // reductions and softmax
  cases.push_back({"all", "sum", [=](Rng& r) { return std::vector<Tensor>{N(r, {6, 50, 70})}; }, {}, 1e-4, 1e-5});
  cases.push_back({"dims [0,2] keepdim", "sum", [=](Rng& r) { return std::vector<Tensor>{N(r, {6, 5, 70})}; }, {{"dims", std::vector<double>{0, 2}}, {"keepdim", true}}, 1e-5, 1e-5});
  cases.push_back({"dims [-1]", "mean", [=](Rng& r) { return std::vector<Tensor>{N(r, {6, 5, 70})}; }, {{"dims", std::vector<double>{-1}}}, 1e-6, 1e-5});
  cases.push_back({"last dim", "softmax", [=](Rng& r) { return std::vector<Tensor>{r.normal({16, 77}, 3.f)}; }, {{"dim", -1.0}}, 1e-7, 1e-5});
  cases.push_back({"dim 1 of (4,300,9)", "softmax", [=](Rng& r) { return std::vector<Tensor>{r.normal({4, 300, 9}, 3.f)}; }, {{"dim", 1.0}}, 1e-7, 1e-5});
  cases.push_back({"last dim", "softmax_backward", [&](Rng& r) {
                     Tensor x = r.normal({16, 77}, 3.f);
                     Tensor y = run_cpu("softmax", {x}, make_attrs("softmax", {{"dim", -1.0}}), pool)[0];
                     return std::vector<Tensor>{N(r, {16, 77}), y};
                   }, {{"dim", -1.0}}, 1e-6, 1e-5});
  // group norm
  for (bool silu : {false, true}) {
    const AttrList ga = {{"num_groups", 4.0}, {"eps", 1e-5}, {"silu", silu}};
    cases.push_back({silu ? "(2,16,9,11) G4 +silu" : "(2,16,9,11) G4", "group_norm_forward", [=](Rng& r) {
                       return std::vector<Tensor>{r.normal({2, 16, 9, 11}, 2.f, 3.f), N(r, {16}), N(r, {16})};
                     }, ga, 1e-5, 1e-4});
    cases.push_back({silu ? "(2,16,9,11) G4 +silu" : "(2,16,9,11) G4", "group_norm_backward", [=, &pool](Rng& r) {
                       Tensor x = r.normal({2, 16, 9, 11}, 2.f, 3.f), w = N(r, {16}), b = N(r, {16});
                       auto st = gn_stats(x, w, b, 4, silu, pool);
                       return std::vector<Tensor>{N(r, {2, 16, 9, 11}), x, st[1], st[2], w, b};
                     }, ga, 1e-4, 1e-4});
  }
  for (bool silu : {false, true})
    cases.push_back({silu ? "f16 x, y (2,32,8,8) G8 +silu" : "f16 x, y (2,32,8,8) G8", "group_norm_forward", [=](Rng& r) {
                       return std::vector<Tensor>{r.normal({2, 32, 8, 8}, 2.f, 1.f), N(r, {32}), N(r, {32})};
                     }, {{"num_groups", 8.0}, {"eps", 1e-5}, {"silu", silu}}, 1e-3, 0, false, true});
  cases.push_back({"(3,6,5) G3 no affine", "group_norm_forward", [=](Rng& r) { return std::vector<Tensor>{N(r, {3, 6, 5})}; }, {{"num_groups", 3.0}}, 1e-5, 1e-4});
  // fake quantizer and LSQ backward
  const AttrList qt = {{"bits", 4.0}, {"signed", true}, {"granularity", std::string("tensor")}};
  const AttrList qc = {{"bits", 8.0}, {"signed", true}, {"granularity", std::string("channel")}, {"axis", 0.0}};
  const AttrList qu = {{"bits", 4.0}, {"signed", false}, {"granularity", std::string("sample")}, {"axis", 0.0}};
  cases.push_back({"per tensor 4 bit", "fake_quant_forward", [=](Rng& r) { return std::vector<Tensor>{r.normal({8, 3, 7, 7}, 2.f), r.uniform({1}, 0.1f, 0.3f)}; }, qt, 0, 1e-6});
  cases.push_back({"per channel 8 bit", "fake_quant_forward", [=](Rng& r) { return std::vector<Tensor>{r.normal({16, 3, 3, 3}), r.uniform({16}, 0.005f, 0.02f)}; }, qc, 0, 1e-6});
  cases.push_back({"per sample unsigned", "fake_quant_forward", [=](Rng& r) { return std::vector<Tensor>{r.normal({4, 5, 6}), r.uniform({4}, 0.05f, 0.2f)}; }, qu, 0, 1e-6});
  cases.push_back({"per tensor 4 bit", "fake_quant_backward", [=](Rng& r) { return std::vector<Tensor>{N(r, {8, 3, 7, 7}), r.normal({8, 3, 7, 7}, 2.f), r.uniform({1}, 0.1f, 0.3f)}; }, qt, 1e-5, 1e-4});
  cases.push_back({"per channel 8 bit", "fake_quant_backward", [=](Rng& r) { return std::vector<Tensor>{N(r, {16, 3, 3, 3}), r.normal({16, 3, 3, 3}), r.uniform({16}, 0.005f, 0.02f)}; }, qc, 1e-5, 1e-4});
  // conv2d (fp32 implicit GEMM)
  cases.push_back({"3x3 pad 1 +bias", "conv2d_forward", [=](Rng& r) { return std::vector<Tensor>{N(r, {2, 5, 13, 11}), r.normal({7, 5, 3, 3}, 0.2f), N(r, {7})}; }, {{"stride", 1.0}, {"padding", 1.0}}, 1e-5, 1e-4});
  cases.push_back({"3x3 stride 2 +chan +res", "conv2d_forward", [=](Rng& r) {
                     return std::vector<Tensor>{N(r, {3, 16, 17, 17}), r.normal({70, 16, 3, 3}, 0.1f), N(r, {70}), N(r, {3, 70}), N(r, {3, 70, 9, 9})};
                   }, {{"stride", 2.0}, {"padding", 1.0}}, 1e-5, 1e-4});
  cases.push_back({"1x1 no bias", "conv2d_forward", [=](Rng& r) { return std::vector<Tensor>{N(r, {2, 130, 8, 8}), r.normal({66, 130, 1, 1}, 0.1f)}; }, {}, 1e-5, 1e-4});

  // gemm / matmul / linear (fp32 tiled GEMM)
  cases.push_back({"(37,53)x(53,29)", "gemm", [=](Rng& r) { return std::vector<Tensor>{N(r, {37, 53}), N(r, {53, 29})}; }, {}, 1e-5, 1e-4});
  cases.push_back({"transA transB alpha beta +c", "gemm", [=](Rng& r) { return std::vector<Tensor>{N(r, {53, 70}), N(r, {29, 53}), N(r, {70, 29})}; },
                   {{"transA", true}, {"transB", true}, {"alpha", 0.5}, {"beta", -2.0}}, 1e-5, 1e-4});
  cases.push_back({"+c beta 0 (c unread)", "gemm", [=](Rng& r) { return std::vector<Tensor>{N(r, {65, 17}), N(r, {17, 66}), N(r, {65, 66})}; },
                   {{"alpha", 2.0}}, 1e-5, 1e-4});
  cases.push_back({"batched (3,33,70)x(3,70,65)", "matmul", [=](Rng& r) { return std::vector<Tensor>{N(r, {3, 33, 70}), N(r, {3, 70, 65})}; }, {}, 1e-5, 1e-4});
  cases.push_back({"(2,17,40)x(50,40)^T", "matmul", [=](Rng& r) { return std::vector<Tensor>{N(r, {2, 17, 40}), N(r, {50, 40})}; }, {{"transB", true}}, 1e-5, 1e-4});
  cases.push_back({"(40,17)^T x (3,40,20)", "matmul", [=](Rng& r) { return std::vector<Tensor>{N(r, {40, 17}), N(r, {3, 40, 20})}; }, {{"transA", true}}, 1e-5, 1e-4});
  cases.push_back({"2-D (130,1)x(1,70)", "matmul", [=](Rng& r) { return std::vector<Tensor>{N(r, {130, 1}), N(r, {1, 70})}; }, {}, 1e-6, 1e-5});
  cases.push_back({"(2,5,70) +bias", "linear", [=](Rng& r) { return std::vector<Tensor>{N(r, {2, 5, 70}), r.normal({33, 70}, 0.2f), N(r, {33})}; }, {}, 1e-5, 1e-4});
  cases.push_back({"(9,16) no bias", "linear", [=](Rng& r) { return std::vector<Tensor>{N(r, {9, 16}), N(r, {80, 16})}; }, {}, 1e-5, 1e-4});

  // conv2d backward (implicit GEMM gathers)
  cases.push_back({"3x3 pad 1", "conv2d_backward_input", [=](Rng& r) { return std::vector<Tensor>{N(r, {2, 7, 13, 11}), r.normal({7, 5, 3, 3}, 0.2f)}; },
                   {{"stride", 1.0}, {"padding", 1.0}, {"input_shape", std::vector<double>{2, 5, 13, 11}}}, 1e-5, 1e-4});
  cases.push_back({"3x3 stride 2 (odd + even H)", "conv2d_backward_input", [=](Rng& r) { return std::vector<Tensor>{N(r, {3, 70, 9, 8}), r.normal({70, 16, 3, 3}, 0.1f)}; },
                   {{"stride", 2.0}, {"padding", 1.0}, {"input_shape", std::vector<double>{3, 16, 17, 16}}}, 1e-5, 1e-4});
  cases.push_back({"1x1", "conv2d_backward_input", [=](Rng& r) { return std::vector<Tensor>{N(r, {2, 66, 8, 8}), r.normal({66, 130, 1, 1}, 0.1f)}; },
                   {{"input_shape", std::vector<double>{2, 130, 8, 8}}}, 1e-5, 1e-4});
  cases.push_back({"4x4 stride 2 pad 0", "conv2d_backward_input", [=](Rng& r) { return std::vector<Tensor>{N(r, {2, 6, 4, 5}), r.normal({6, 3, 4, 4}, 0.2f)}; },
                   {{"stride", 2.0}, {"padding", 0.0}, {"input_shape", std::vector<double>{2, 3, 11, 12}}}, 1e-5, 1e-4});
  cases.push_back({"3x3 pad 1 +bias", "conv2d_backward_weight", [=](Rng& r) { return std::vector<Tensor>{N(r, {2, 7, 13, 11}), N(r, {2, 5, 13, 11})}; },
                   {{"stride", 1.0}, {"padding", 1.0}, {"kernel_size", std::vector<double>{3, 3}}, {"bias", true}}, 1e-4, 1e-4});
  cases.push_back({"3x3 stride 2 +bias", "conv2d_backward_weight", [=](Rng& r) { return std::vector<Tensor>{N(r, {3, 70, 9, 9}), N(r, {3, 16, 17, 17})}; },
                   {{"stride", 2.0}, {"padding", 1.0}, {"kernel_size", std::vector<double>{3, 3}}, {"bias", true}}, 1e-4, 1e-4});
  cases.push_back({"1x1 no bias", "conv2d_backward_weight", [=](Rng& r) { return std::vector<Tensor>{N(r, {2, 66, 8, 8}), N(r, {2, 130, 8, 8})}; },
                   {{"kernel_size", std::vector<double>{1, 1}}}, 1e-4, 1e-4});

  // attention (flash-style forward, recomputing backward), the three layouts
  struct AttnCase {
    const char *name, *op;
    Shape q, k, v;
    AttrList attrs;
  };
  const std::vector<AttnCase> attn = {
      {"(2,3,37,16) Lk 45 Dv 24", "attention", {2, 3, 37, 16}, {2, 3, 45, 16}, {2, 3, 45, 24}, {}},
      {"(1,2,70,40) scale 0.3", "attention", {1, 2, 70, 40}, {1, 2, 33, 40}, {1, 2, 33, 40}, {{"scale", 0.3}}},
      {"cm (2,2,8,33) Lk 70", "attention_cm", {2, 2, 8, 33}, {2, 2, 8, 70}, {2, 2, 12, 70}, {}},
      {"blhd (2,19,3,8) Lk 40", "attention_blhd", {2, 19, 3, 8}, {2, 40, 3, 8}, {2, 40, 3, 8}, {}},
      {"Lk 1", "attention", {1, 1, 5, 4}, {1, 1, 1, 4}, {1, 1, 1, 3}, {}},
  };
  for (const AttnCase& ac : attn) {
    const std::string fwd = std::string(ac.op) + "_forward", bwd = std::string(ac.op) + "_backward";
    cases.push_back({ac.name, fwd, [=](Rng& r) { return std::vector<Tensor>{r.normal(ac.q, 1.5f), r.normal(ac.k, 1.5f), N(r, ac.v)}; },
                     ac.attrs, 1e-5, 1e-4});
    cases.push_back({ac.name, bwd, [=, &pool](Rng& r) {
                       Tensor q = r.normal(ac.q, 1.5f), k = r.normal(ac.k, 1.5f), v = N(r, ac.v);
                       auto fo = run_cpu(fwd, {q, k, v}, make_attrs(fwd, ac.attrs), pool);
                       return std::vector<Tensor>{r.normal(fo[0].shape), q, k, v, fo[0], fo[1]};
                     }, ac.attrs, 1e-4, 1e-4});
  }

  // ---- the integer path (qint.cu): bit for bit as the CPU ops ----
  // The steps of a batch from a TDQ step table (integer and fractional t).
  cases.push_back({"(10,7) t int + frac", "step_table_lookup", [=](Rng& r) {
                     Tensor t = alloc_tensor({5}, DType::f32, Device::cpu, counter());
                     const float ts[5] = {0.f, 3.f, 2.5f, 9.f, 7.25f};
                     std::memcpy(t.f32(), ts, sizeof ts);
                     return std::vector<Tensor>{r.uniform({10, 7}, 0.01f, 0.1f), t};
                   }, {}, 0, 0, true});
  cases.push_back({"u8 8 bit zp 3 per sample", "quantize_act", [=](Rng& r) { return std::vector<Tensor>{r.normal({4, 3, 5, 5}, 2.f), r.uniform({4}, 0.01f, 0.05f)}; },
                   {{"bits", 8.0}, {"signed", false}, {"zero_point", 3.0}}, 0, 0, true});
  cases.push_back({"i8 4 bit per tensor", "quantize_act", [=](Rng& r) { return std::vector<Tensor>{r.normal({7, 33}, 2.f), r.uniform({1}, 0.1f, 0.3f)}; },
                   {{"bits", 4.0}, {"signed", true}}, 0, 0, true});
  // Packed weights (qweight_pack) and levels (quantize_act) made by the CPU ops.
  auto qweights = [&pool](Rng& r, const Shape& ws, int bits) {
    Tensor w = r.normal(ws, 0.1f), st = r.uniform({ws[0]}, 0.002f, 0.01f);
    auto pk = run_cpu("qweight_pack", {w, st}, make_attrs("qweight_pack", {{"bits", double(bits)}}), pool);
    return std::vector<Tensor>{pk[0], st, pk[1]};
  };
  auto qlevels = [&pool](Rng& r, const Shape& xs, bool sgn, int zp, const Tensor& step) {
    return run_cpu("quantize_act", {r.normal(xs, 1.5f), step},
                   make_attrs("quantize_act", {{"bits", 8.0}, {"signed", sgn}, {"zero_point", double(zp)}}), pool)[0];
  };
  auto qin = [](Tensor x, Tensor s, std::vector<Tensor> w, std::vector<Tensor> extra) {
    std::vector<Tensor> in{x, s, w[0], w[1], w[2]};
    for (auto& t : extra) in.push_back(t);
    return in;
  };
  const Shape wl = {33, 70};
  cases.push_back({"u8 zp 7 (3,5,70) +bias", "qlinear", [=](Rng& r) {
                     Tensor s = r.uniform({3}, 0.01f, 0.03f);
                     return qin(qlevels(r, {3, 5, 70}, false, 7, s), s, qweights(r, wl, 8), {N(r, {33})});
                   }, {{"weight_shape", std::vector<double>{33, 70}}, {"zero_point", 7.0}}, 0, 0, true});
  cases.push_back({"i8 (9,70) no bias", "qlinear", [=](Rng& r) {
                     Tensor s = r.uniform({1}, 0.01f, 0.03f);
                     return qin(qlevels(r, {9, 70}, true, 0, s), s, qweights(r, wl, 8), {});
                   }, {{"weight_shape", std::vector<double>{33, 70}}}, 0, 0, true});
  cases.push_back({"f32 signed offset column 2", "qlinear", [=](Rng& r) {
                     return qin(r.normal({4, 3, 70}, 1.f, 0.3f), r.uniform({4, 5}, 0.01f, 0.04f), qweights(r, wl, 6), {N(r, {33})});
                   }, {{"weight_shape", std::vector<double>{33, 70}}, {"bits", 8.0}, {"signed", true}, {"offset", 0.3}, {"column", 2.0},
                       {"step_floor", 0.015}}, 0, 0, true});
  cases.push_back({"u8 zp 5 3x3 pad 1 C 5 +bias", "qconv2d", [=](Rng& r) {
                     Tensor s = r.uniform({2}, 0.01f, 0.03f);
                     return qin(qlevels(r, {2, 5, 13, 11}, false, 5, s), s, qweights(r, {7, 5, 3, 3}, 8), {N(r, {7})});
                   }, {{"weight_shape", std::vector<double>{7, 5, 3, 3}}, {"stride", 1.0}, {"padding", 1.0}, {"zero_point", 5.0}}, 0, 0, true});
  cases.push_back({"f32 s6 z 0.2 str 2 table +chan +res", "qconv2d", [=](Rng& r) {
                     return qin(r.normal({3, 16, 17, 17}, 1.f, 0.2f), r.uniform({1, 4}, 0.02f, 0.05f), qweights(r, {70, 16, 3, 3}, 8),
                                {N(r, {70}), N(r, {3, 70}), N(r, {3, 70, 9, 9})});
                   }, {{"weight_shape", std::vector<double>{70, 16, 3, 3}}, {"stride", 2.0}, {"padding", 1.0}, {"bits", 6.0}, {"signed", true},
                       {"offset", 0.2}, {"column", 3.0}}, 0, 0, true});
  cases.push_back({"i8 1x1 (2,130,8,8)", "qconv2d", [=](Rng& r) {
                     Tensor s = r.uniform({2}, 0.01f, 0.03f);
                     return qin(qlevels(r, {2, 130, 8, 8}, true, 0, s), s, qweights(r, {66, 130, 1, 1}, 8), {});
                   }, {{"weight_shape", std::vector<double>{66, 130, 1, 1}}}, 0, 0, true});
  cases.push_back({"f32 u4 shifted z 0.5 4x4 str 2", "qconv2d", [=](Rng& r) {
                     return qin(r.uniform({2, 3, 11, 12}, 0.f, 1.f), r.uniform({2}, 0.05f, 0.1f), qweights(r, {6, 3, 4, 4}, 4), {N(r, {6})});
                   }, {{"weight_shape", std::vector<double>{6, 3, 4, 4}}, {"stride", 2.0}, {"bits", 4.0}, {"signed", false}, {"offset", 0.5},
                       {"input_shifted", true}}, 0, 0, true});

  // cast (elementwise dtype conversion)
  auto as_dtype = [&pool](Tensor x, const char* dt) {
    return run_cpu("cast", {x}, make_attrs("cast", {{"dtype", std::string(dt)}}), pool)[0];
  };
  for (const char* dt : {"float16", "int8", "uint8", "int32"})
    cases.push_back({std::string("f32 -> ") + dt, "cast", [=](Rng& r) { return std::vector<Tensor>{r.normal({5, 301}, 100.f)}; },
                     {{"dtype", std::string(dt)}}, 0, 0, true});
  cases.push_back({"f16 -> f32", "cast", [=](Rng& r) { return std::vector<Tensor>{as_dtype(r.normal({5, 301}, 10.f), "float16")}; },
                   {{"dtype", std::string("float32")}}, 0, 0, true});
  cases.push_back({"i8 -> f32", "cast", [=](Rng& r) { return std::vector<Tensor>{as_dtype(r.normal({5, 301}, 50.f), "int8")}; },
                   {{"dtype", std::string("float32")}}, 0, 0, true});

  // layer norm
  cases.push_back({"(4,7,130) +w +b", "layer_norm_forward", [=](Rng& r) { return std::vector<Tensor>{r.normal({4, 7, 130}, 2.f, 3.f), N(r, {130}), N(r, {130})}; },
                   {{"eps", 1e-5}}, 1e-5, 1e-4});
  cases.push_back({"(3,1000) offset 100, no affine", "layer_norm_forward", [=](Rng& r) { return std::vector<Tensor>{r.normal({3, 1000}, 1.f, 100.f)}; },
                   {{"eps", 1e-6}}, 1e-5, 1e-4});
  cases.push_back({"(5,1) D 1", "layer_norm_forward", [=](Rng& r) { return std::vector<Tensor>{N(r, {5, 1}), N(r, {1}), N(r, {1})}; }, {}, 1e-5, 1e-4});
  for (bool affine : {true, false})
    cases.push_back({affine ? "(4,7,130) +w" : "(6,300) no weight", "layer_norm_backward", [=, &pool](Rng& r) {
                       const Shape xs = affine ? Shape{4, 7, 130} : Shape{6, 300};
                       Tensor x = r.normal(xs, 2.f, 3.f), w = N(r, {xs.back()});
                       std::vector<Tensor> fin{x};
                       if (affine) fin.push_back(w);
                       auto st = run_cpu("layer_norm_forward", fin, make_attrs("layer_norm_forward", {}), pool);
                       std::vector<Tensor> in{N(r, xs), x, st[1], st[2]};
                       if (affine) in.push_back(w);
                       return in;
                     }, {}, 1e-4, 1e-4});

  // One case in one configuration: tag names it ("own": our kernels in fp32;
  // "vendor": cuBLAS / cuDNN; "fp16" / "bf16": reduced precision, checked by
  // the relative 2-norm error against norm_tol instead of per element).
  Rng rng;
  const std::string op_list = std::string(",") + api()->op_names() + ",";
  auto run_case = [&](const Case& c, const char* tag, double norm_tol) {
    if (op_list.find("," + c.op + ",") == std::string::npos) {
      std::printf("SKIP %-20s %-28s %-9s not in this library\n", c.op.c_str(), c.name.c_str(), tag);
      return;
    }
    try {
      std::vector<Tensor> in = c.inputs(rng);
      const Attrs a = make_attrs(c.op, c.attrs);
      std::vector<Tensor> ref, got;
      if (c.half_io) {
        auto cast_to = [&](const Tensor& t, const char* dt) {
          return run_cpu("cast", {t}, make_attrs("cast", {{"dtype", std::string(dt)}}), pool)[0];
        };
        std::vector<Tensor> hin = in;
        hin[0] = cast_to(in[0], "float16");
        in[0] = cast_to(hin[0], "float32");
        ref = run_cpu(c.op, in, a, pool);
        std::vector<Tensor> like = ref;
        like[0] = alloc_tensor(ref[0].shape, DType::f16, Device::cpu, counter());
        got = run_cuda(c.op, hin, a, like);
        got[0] = cast_to(got[0], "float32");
        norm_tol = c.atol;
      } else {
        ref = run_cpu(c.op, in, a, pool);
        got = run_cuda(c.op, in, a, ref);
      }
      if (c.exact) {
        int64_t bad = 0, total = 0;
        for (size_t k = 0; k < ref.size(); ++k) {
          const size_t es = dtype_size(ref[k].dtype);
          const auto* e = static_cast<const unsigned char*>(ref[k].storage->data);
          const auto* g = static_cast<const unsigned char*>(got[k].storage->data);
          for (int64_t i = 0; i < ref[k].numel(); ++i, ++total) bad += std::memcmp(e + i * es, g + i * es, es) != 0;
        }
        std::printf("%s %-20s %-28s %-9s %s bit-exact: %lld of %lld differ  [%s]\n", bad ? "FAIL" : "ok  ", c.op.c_str(),
                    c.name.c_str(), tag, dtype_name(ref[0].dtype), static_cast<long long>(bad),
                    static_cast<long long>(total), shapes_of(in).c_str());
        (bad ? failed : passed)++;
        return;
      }
      double worst = 0, max_abs = 0, d2 = 0, e2 = 0;
      for (size_t k = 0; k < ref.size(); ++k)
        for (int64_t i = 0; i < ref[k].numel(); ++i) {
          const double e = ref[k].f32()[i], g = got[k].f32()[i];
          if (std::isnan(e) != std::isnan(g)) worst = INFINITY, d2 = INFINITY;
          if (std::isnan(e)) continue;
          const double d = std::fabs(g - e);
          max_abs = std::max(max_abs, d);
          d2 += d * d, e2 += e * e;
          const double tol = c.atol + c.rtol * std::fabs(e);
          worst = std::max(worst, tol > 0 ? d / tol : (d > 0 ? INFINITY : 0.0));
        }
      bool ok;
      if (norm_tol > 0) {
        const double rel = std::sqrt(d2 / std::max(e2, 1e-30));
        ok = rel <= norm_tol;
        std::printf("%s %-20s %-28s %-9s max_abs=%.3g rel_l2=%.3g (tol %.3g)  [%s]\n", ok ? "ok  " : "FAIL", c.op.c_str(),
                    c.name.c_str(), tag, max_abs, rel, norm_tol, shapes_of(in).c_str());
      } else {
        ok = worst <= 1.0;
        std::printf("%s %-20s %-28s %-9s f32 max_abs=%.3g worst/tol=%.3g  [%s]\n", ok ? "ok  " : "FAIL", c.op.c_str(),
                    c.name.c_str(), tag, max_abs, worst, shapes_of(in).c_str());
      }
      (ok ? passed : failed)++;
    } catch (const std::exception& e) {
      std::printf("FAIL %-20s %-28s %-9s error: %s\n", c.op.c_str(), c.name.c_str(), tag, e.what());
      ++failed;
    }
  };
  auto set_opt = [&](const char* k, const char* v) {
    char err[256] = {0};
    if (!set_option || set_option(k, v, err, sizeof err))
      throw std::runtime_error(std::string("tdq_cuda_set_option(") + k + ", " + v + "): " + (set_option ? err : "missing"));
  };
  // 1. Every case on our own kernels, fp32 (the integer GEMM on the tensor cores).
  if (set_option) set_opt("kernels", "own"), set_opt("precision", "fp32"), set_opt("int8", "wmma");
  for (const Case& c : cases) run_case(c, "own", 0);
  // 1b. The integer ops again with the dp4a kernel.
  if (set_option) {
    set_opt("int8", "dp4a");
    for (const Case& c : cases)
      if (c.op == "qlinear" || c.op == "qconv2d") run_case(c, "dp4a", 0);
    set_opt("int8", "wmma");
  }

  // 2. The matmuls and convolutions again through cuBLAS / cuDNN where they
  // load (not with TDQ_CUDA_TEST_OWN_ONLY, e.g. under compute-sanitizer).
  const bool own_only = env_set("TDQ_CUDA_TEST_OWN_ONLY");
  const std::string libs = get_option && !own_only ? get_option("libraries") : "";
  std::printf("libraries: %s\n", own_only ? "not tried (TDQ_CUDA_TEST_OWN_ONLY)" : libs.c_str());
  const bool have_blas = libs.find("cuBLAS loaded") != std::string::npos;
  const bool have_dnn = libs.find("cuDNN loaded") != std::string::npos;
  auto is_blas = [](const std::string& op) { return op == "gemm" || op == "matmul" || op == "linear"; };
  auto is_dnn = [](const std::string& op) { return op.rfind("conv2d_", 0) == 0; };
  if (env_set("TDQ_EXPECT_VENDOR") && !(have_blas && have_dnn)) {
    std::printf("FAIL libraries: cuBLAS and cuDNN were expected (TDQ_EXPECT_VENDOR) but: %s\n", libs.c_str());
    ++failed;
  }
  if (!have_blas) std::printf("SKIP cuBLAS paths: %s\n", libs.c_str());
  if (!have_dnn) std::printf("SKIP cuDNN paths: %s\n", libs.c_str());
  if (set_option && (have_blas || have_dnn)) {
    set_opt("kernels", "auto");
    for (const Case& c : cases)
      if ((have_blas && is_blas(c.op)) || (have_dnn && is_dnn(c.op))) run_case(c, "vendor", 0);
  }
  // 3. fp16 / bf16 operands with fp32 accumulation, per-precision tolerances on
  // the relative 2-norm error: our WMMA kernels (matmuls, conv2d_forward,
  // attention forward), then
  // cuBLAS / cuDNN (conv2d_backward_weight stays fp32 there: not repeated).
  if (set_option) {
    for (const char* p : {"fp16", "bf16"}) {
      char err[256] = {0};
      if (set_option("precision", p, err, sizeof err)) {
        std::printf("SKIP precision %s: %s\n", p, err);
        continue;
      }
      const double tol = std::string(p) == "fp16" ? 2e-3 : 1.6e-2;
      set_opt("kernels", "own");
      for (const Case& c : cases)
        if (is_blas(c.op) || c.op == "conv2d_forward") run_case(c, (std::string(p) + "-own").c_str(), tol);
      // attention forward (O and L; the scores go through exp: twice the matmuls' tolerance)
      for (const Case& c : cases)
        if (c.op.rfind("attention", 0) == 0 && c.op.size() > 8 && c.op.compare(c.op.size() - 8, 8, "_forward") == 0)
          run_case(c, (std::string(p) + "-own").c_str(), 2 * tol);
      set_opt("kernels", "auto");
      for (const Case& c : cases)
        if ((have_blas && is_blas(c.op)) || (have_dnn && (c.op == "conv2d_forward" || c.op == "conv2d_backward_input")))
          run_case(c, (std::string(p) + "-lib").c_str(), tol);
    }
    set_opt("precision", "fp32");
    if (get_option) std::printf("libraries after the runs: %s\n", get_option("libraries"));
  }

  // 4. The NCCL communicator, one rank: the id / init / allreduce / broadcast
  // plumbing on the backend's stream (the sum over one rank is the input).
  {
    auto info = reinterpret_cast<tdq_cuda_nccl_info_fn>(dlsym(h, "tdq_cuda_nccl_info"));
    auto uid = reinterpret_cast<tdq_cuda_nccl_unique_id_fn>(dlsym(h, "tdq_cuda_nccl_unique_id"));
    auto init = reinterpret_cast<tdq_cuda_nccl_init_fn>(dlsym(h, "tdq_cuda_nccl_init"));
    auto allreduce = reinterpret_cast<tdq_cuda_nccl_allreduce_sum_fn>(dlsym(h, "tdq_cuda_nccl_allreduce_sum"));
    auto bcast = reinterpret_cast<tdq_cuda_nccl_broadcast_fn>(dlsym(h, "tdq_cuda_nccl_broadcast"));
    auto fin = reinterpret_cast<tdq_cuda_nccl_finalize_fn>(dlsym(h, "tdq_cuda_nccl_finalize"));
    const std::string ni = info && !own_only ? info() : "no tdq_cuda_nccl_info in the library";
    std::printf("nccl: %s\n", ni.c_str());
    if (own_only) {
      std::printf("SKIP nccl: TDQ_CUDA_TEST_OWN_ONLY\n");
    } else if (ni.rfind("NCCL absent", 0) == 0 || !info) {
      const bool expected = env_set("TDQ_EXPECT_NCCL");
      std::printf("%s nccl: %s\n", expected ? "FAIL" : "SKIP", ni.c_str());
      if (expected) ++failed;
    } else {
      char err[1024] = {0};
      try {
        unsigned char id[TDQ_CUDA_NCCL_ID_BYTES];
        check(uid(id, err, sizeof err), "nccl unique id", err);
        check(init(id, 0, 1, err, sizeof err), "nccl init", err);
        std::printf("nccl: %s\n", info());
        Rng r;
        const int64_t n = 1000003;  // not a multiple of anything
        Tensor x = r.normal({n});
        DevBuf d(static_cast<size_t>(n) * 4);
        check(api()->memcpy(d.p, x.storage->data, x.nbytes(), TDQ_CU_H2D, err, sizeof err), "h2d", err);
        check(allreduce(static_cast<float*>(d.p), static_cast<size_t>(n), err, sizeof err), "allreduce", err);
        check(bcast(d.p, x.nbytes(), 0, err, sizeof err), "broadcast", err);
        Tensor y = alloc_tensor({n}, DType::f32, Device::cpu, counter());
        check(api()->memcpy(y.storage->data, d.p, y.nbytes(), TDQ_CU_D2H, err, sizeof err), "d2h", err);
        const bool same = std::memcmp(x.storage->data, y.storage->data, x.nbytes()) == 0;
        const bool bad_root = bcast(d.p, 4, 1, err, sizeof err) != 0;  // rank 1 of 1 does not exist: an error
        check(fin(err, sizeof err), "nccl finalize", err);
        const bool ok = same && bad_root;
        std::printf("%s nccl: 1 rank, allreduce_sum + broadcast of %lld floats leave them unchanged%s\n", ok ? "ok  " : "FAIL",
                    static_cast<long long>(n), bad_root ? "; root 1 is refused" : "; root 1 was accepted!");
        (ok ? passed : failed)++;
      } catch (const std::exception& e) {
        std::printf("FAIL nccl: %s\n", e.what());
        ++failed;
      }
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
