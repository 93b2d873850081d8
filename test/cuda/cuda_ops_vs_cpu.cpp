// CUDA kernels of the data-movement, random, pooling, pointwise and optimizer
// ops (native/cuda/kernels/{random,copy_ops,pool_upsample,pointwise,optim}.cu)
// against the CPU ops of the same names, linked into tdq_cuda_test: its main
// runs the cases of cuda_vs_cpu.cpp first (built there as
// tdq_cuda_vs_cpu_main, see CMakeLists.txt), then these. Copies, casts,
// random ops (Philox streams), pooling, Adam and the sums of an exact order
// must give the CPU's bytes; sin / cos / sums in another order a tight
// tolerance. Exit status: 0 all passed, 1 a case failed, 2 no usable device.
#include <cstring>
#include <limits>

#include "cuda_test_util.h"

int tdq_cuda_vs_cpu_main(int argc, char** argv);

using namespace cudatest;

namespace {

Tensor as_dtype(const Tensor& t, DType d, ThreadPool& pool) {
  return run_cpu("cast", {t}, make_attrs("cast", {{"dtype", std::string(dtype_name(d))}}), pool)[0];
}

// Values at the edges of every conversion, then random ones of wide range.
Tensor cast_inputs(Rng& r, int64_t n) {
  Tensor t = r.normal({n}, 200.f);
  const float inf = std::numeric_limits<float>::infinity();
  const float special[] = {NAN, inf, -inf, 65504.f, 65519.f, 65520.f, 1e-8f, 6e-8f, 3e-5f, -0.f, 0.f, 127.7f,
                           -128.9f, 255.5f, 300.f, -300.f, 2.5f, -2.5f, 3e9f, -3e9f, 1e-40f};
  for (size_t i = 0; i < sizeof special / sizeof special[0]; ++i) t.f32()[i] = special[i];
  return t;
}

std::vector<Case> ops_cases(ThreadPool& pool) {
  auto N = [](Rng& r, Shape s) { return r.normal(s); };
  using V = std::vector<Tensor>;
  using D = std::vector<double>;
  std::vector<Case> cs;
  // ---- creation and random (exact) ----
  for (const char* dt : {"float32", "float16", "int8", "uint8", "int32"})
    cs.push_back({dt, "full", [](Rng&) { return V{}; }, {{"shape", D{3, 70, 5}}, {"dtype", std::string(dt)}, {"value", std::string(dt) == "uint8" ? 200.6 : -3.7}}, 0, 0});
  cs.push_back({"(1000,77) seed 7", "randn", [](Rng&) { return V{}; }, {{"shape", D{1000, 77}}, {"seed", 7.0}}, 0, 0});
  cs.push_back({"mean/std, offset 2^32-5", "randn", [](Rng&) { return V{}; }, {{"shape", D{4, 33}}, {"seed", 9007199254740991.0}, {"offset", 4294967291.0}, {"mean", 0.5}, {"std", 2.0}}, 0, 0});
  cs.push_back({"(1000,77) seed 7", "rand", [](Rng&) { return V{}; }, {{"shape", D{1000, 77}}, {"seed", 7.0}}, 0, 0});
  cs.push_back({"low/high, offset 2^32-5", "rand", [](Rng&) { return V{}; }, {{"shape", D{4, 33}}, {"seed", 3.0}, {"offset", 4294967291.0}, {"low", -2.0}, {"high", 5.0}}, 0, 0});
  for (const char* op : {"dropout", "dropout_backward"}) {
    cs.push_back({"p 0.3", op, [=](Rng& r) { return V{N(r, {64, 1001})}; }, {{"p", 0.3}, {"seed", 11.0}, {"offset", 123.0}}, 0, 0});
    cs.push_back({"p 1", op, [=](Rng& r) { return V{N(r, {7, 9})}; }, {{"p", 1.0}, {"seed", 11.0}}, 0, 0});
  }
  // ---- casts and copies (exact) ----
  for (const char* dt : {"float16", "int8", "uint8", "int32", "float32"})
    cs.push_back({std::string("float32 -> ") + dt, "cast", [=](Rng& r) {
                    // Not 3e9 into int32: C++ leaves float -> int32 beyond 2^31 undefined (x86 gives INT32_MIN, CUDA saturates).
                    Tensor t = cast_inputs(r, 5000);
                    if (std::string(dt) == "int32") t.f32()[18] = 2e9f, t.f32()[19] = -2e9f;
                    return V{t};
                  }, {{"dtype", std::string(dt)}}, 0, 0});
  for (DType from : {DType::f16, DType::i8, DType::u8, DType::i32})
    for (const char* dt : {"float32", "float16", "int32", "int8"})
      cs.push_back({std::string(dtype_name(from)) + " -> " + dt, "cast", [=, &pool](Rng& r) { return V{as_dtype(cast_inputs(r, 3000), from, pool)}; }, {{"dtype", std::string(dt)}}, 0, 0});
  cs.push_back({"(5,301)", "copy_", [=](Rng& r) { return V{N(r, {5, 301}), N(r, {5, 301})}; }, {}, 0, 0, {0, 1}});
  cs.push_back({"3 x f32 dim 1", "concat", [=](Rng& r) { return V{N(r, {2, 3, 5}), N(r, {2, 7, 5}), N(r, {2, 1, 5})}; }, {{"dim", 1.0}}, 0, 0});
  cs.push_back({"u8 dim -1, one empty", "concat", [=, &pool](Rng& r) {
                  return V{as_dtype(r.uniform({3, 4, 5}, 0, 200), DType::u8, pool), as_dtype(r.uniform({3, 4, 0}, 0, 200), DType::u8, pool),
                           as_dtype(r.uniform({3, 4, 3}, 0, 200), DType::u8, pool)};
                }, {{"dim", -1.0}}, 0, 0});
  cs.push_back({"f16 dim 0", "concat", [=, &pool](Rng& r) { return V{as_dtype(N(r, {2, 9}), DType::f16, pool), as_dtype(N(r, {5, 9}), DType::f16, pool)}; }, {{"dim", 0.0}}, 0, 0});
  cs.push_back({"f32 dim 1 [2, 6)", "narrow", [=](Rng& r) { return V{N(r, {3, 9, 7})}; }, {{"dim", 1.0}, {"start", 2.0}, {"length", 4.0}}, 0, 0});
  cs.push_back({"i8 dim -1 [5, 8)", "narrow", [=, &pool](Rng& r) { return V{as_dtype(r.normal({4, 3, 8}, 50), DType::i8, pool)}; }, {{"dim", -1.0}, {"start", 5.0}, {"length", 3.0}}, 0, 0});
  cs.push_back({"dim 0 length 0", "narrow", [=](Rng& r) { return V{N(r, {3, 4})}; }, {{"dim", 0.0}, {"start", 1.0}, {"length", 0.0}}, 0, 0});
  cs.push_back({"f32 dim 1 [2, 6)", "narrow_backward", [=](Rng& r) { return V{N(r, {3, 4, 7})}; }, {{"dim", 1.0}, {"start", 2.0}, {"length", 4.0}, {"shape", D{3, 9, 7}}}, 0, 0});
  cs.push_back({"i32 dim 0 [0, 2)", "narrow_backward", [=, &pool](Rng& r) { return V{as_dtype(r.normal({2, 5}, 1000), DType::i32, pool)}; }, {{"dim", 0.0}, {"start", 0.0}, {"length", 2.0}, {"shape", D{6, 5}}}, 0, 0});
  cs.push_back({"(2,3,7,6) pads 0,1,0,1", "pad2d", [=](Rng& r) { return V{N(r, {2, 3, 7, 6})}; }, {{"pads", D{0, 1, 0, 1}}}, 0, 0});
  cs.push_back({"(5,4) pads 2,1,3,0", "pad2d", [=](Rng& r) { return V{N(r, {5, 4})}; }, {{"pads", D{2, 1, 3, 0}}}, 0, 0});
  cs.push_back({"(2,3,8,7) pads 0,1,0,1", "pad2d_backward", [=](Rng& r) { return V{N(r, {2, 3, 8, 7})}; }, {{"pads", D{0, 1, 0, 1}}}, 0, 0});
  cs.push_back({"(8,7) pads 2,1,3,0", "pad2d_backward", [=](Rng& r) { return V{N(r, {8, 7})}; }, {{"pads", D{2, 1, 3, 0}}}, 0, 0});
  cs.push_back({"(3,1,5) -> (2,3,4,5)", "broadcast_to", [=](Rng& r) { return V{N(r, {3, 1, 5})}; }, {{"shape", D{2, 3, 4, 5}}}, 0, 0});
  cs.push_back({"scalar -> (4,6)", "broadcast_to", [=](Rng& r) { return V{N(r, {})}; }, {{"shape", D{4, 6}}}, 0, 0});
  cs.push_back({"same shape", "broadcast_to", [=](Rng& r) { return V{N(r, {4, 6})}; }, {{"shape", D{4, 6}}}, 0, 0});
  // ---- sum_to (double sums in another order: tight tolerance) ----
  cs.push_back({"(2,3,40,5) -> (3,1,5)", "sum_to", [=](Rng& r) { return V{N(r, {2, 3, 40, 5})}; }, {{"shape", D{3, 1, 5}}}, 1e-6, 1e-6});
  cs.push_back({"(6,70,9) -> (1)", "sum_to", [=](Rng& r) { return V{N(r, {6, 70, 9})}; }, {{"shape", D{1}}}, 1e-5, 1e-6});
  cs.push_back({"(2,3) -> (2,3)", "sum_to", [=](Rng& r) { return V{N(r, {2, 3})}; }, {{"shape", D{2, 3}}}, 0, 0});
  // ---- pooling and upsampling (the CPU's order: exact) ----
  cs.push_back({"(2,3,16,14) k2", "avg_pool2d", [=](Rng& r) { return V{N(r, {2, 3, 16, 14})}; }, {{"kernel", 2.0}}, 0, 0});
  cs.push_back({"(2,3,16,15) k2 (odd W)", "avg_pool2d_backward", [=](Rng& r) { return V{N(r, {2, 3, 8, 7})}; }, {{"kernel", 2.0}, {"shape", D{2, 3, 16, 15}}}, 0, 0});
  for (bool inc : {true, false}) {
    const AttrList pa = {{"kernel", 3.0}, {"stride", 2.0}, {"padding", 1.0}, {"count_include_pad", inc}};
    AttrList pb = pa;
    pb.push_back({"shape", D{2, 4, 17, 12}});
    cs.push_back({inc ? "k3 s2 p1 incl pad" : "k3 s2 p1 excl pad", "avg_pool2d_padded", [=](Rng& r) { return V{N(r, {2, 4, 17, 12})}; }, pa, 0, 0});
    cs.push_back({inc ? "k3 s2 p1 incl pad" : "k3 s2 p1 excl pad", "avg_pool2d_padded_backward", [=](Rng& r) { return V{N(r, {2, 4, 9, 6})}; }, pb, 0, 0});
  }
  cs.push_back({"(2,3,5,7)", "upsample_nearest2x", [=](Rng& r) { return V{N(r, {2, 3, 5, 7})}; }, {}, 0, 0});
  cs.push_back({"(2,3,10,14)", "upsample_nearest2x_backward", [=](Rng& r) { return V{N(r, {2, 3, 10, 14})}; }, {}, 0, 0});
  // ---- pointwise ----
  cs.push_back({"scale -0.7 shift 0.3", "affine", [=](Rng& r) { return V{N(r, {33, 101})}; }, {{"scale", -0.7}, {"shift", 0.3}}, 0, 0});
  cs.push_back({"3 terms", "lincomb", [=](Rng& r) { return V{N(r, {33, 101}), N(r, {33, 101}), N(r, {33, 101})}; }, {{"coeffs", D{0.9, -1.3, 0.01}}}, 0, 0});
  cs.push_back({"1 term", "lincomb", [=](Rng& r) { return V{N(r, {7, 11})}; }, {{"coeffs", D{-2.5}}}, 0, 0});
  cs.push_back({"(33,101) >= 0", "sqrt", [=](Rng& r) { return V{r.uniform({33, 101}, 0.f, 50.f)}; }, {}, 0, 0});
  cs.push_back({"(33,101)", "square", [=](Rng& r) { return V{r.normal({33, 101}, 10.f)}; }, {}, 0, 0});
  for (const char* op : {"sin", "cos"})
    cs.push_back({"(33,101) sd 10", op, [=](Rng& r) { return V{r.normal({33, 101}, 10.f)}; }, {}, 1e-6, 1e-6});
  // ---- optimizer (in place) ----
  for (bool dec : {false, true})
    cs.push_back({dec ? "AdamW wd 0.01 step 3" : "Adam wd 0.01 step 3", "adam_step", [=](Rng& r) {
                    return V{N(r, {70, 33}), r.normal({70, 33}, 0.1f), r.normal({70, 33}, 0.01f), r.uniform({70, 33}, 0.f, 1e-3f)};
                  }, {{"lr", 1e-3}, {"weight_decay", 0.01}, {"decoupled", dec}, {"step", 3.0}}, 0, 0, {0, 2, 3}});
  cs.push_back({"3 tensors, 2 blocks", "grad_norm_sq", [=](Rng& r) { return V{N(r, {70000}), N(r, {3, 5}), N(r, {1})}; }, {}, 0, 1e-6});
  cs.push_back({"clips", "clip_scale_", [=](Rng& r) { return V{r.uniform({}, 5.f, 6.f), N(r, {40000}), N(r, {3, 7})}; }, {{"max_norm", 1.0}}, 0, 0, {1, 2}});
  cs.push_back({"below max: unchanged", "clip_scale_", [=](Rng& r) { return V{r.uniform({1}, 0.1f, 0.5f), N(r, {300})}; }, {{"max_norm", 1.0}}, 0, 0, {1}});
  return cs;
}

}  // namespace

int main(int argc, char** argv) {
  const int first = tdq_cuda_vs_cpu_main(argc, argv);
  if (first == 2) return 2;
  std::printf("---- data movement, random, pooling, pointwise and optimizer ops (cuda_ops_vs_cpu.cpp) ----\n");
  if (load_api(argc, argv, false)) return 2;
  // The host emulation of the integer path (libtdq_qint_emu.so) has none of these ops.
  if (std::strstr(api()->build_info(), "host emulation")) {
    std::printf("SKIP: %s has none of these ops\n", api()->build_info());
    return first ? 1 : 0;
  }
  ThreadPool pool(1);
  Rng rng;
  int passed = 0, failed = 0;
  for (const Case& c : ops_cases(pool)) (run_case(c, rng, pool) ? passed : failed)++;
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed || first ? 1 : 0;
}
