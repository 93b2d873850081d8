// Elementwise ops with NumPy broadcasting (add, sub, mul, div), unary maths,
// affine (a*x + b), clamp, lincomb (sum_i c_i x_i), and the reductions
// sum / mean over dims plus sum_to (the gradient of broadcasting).
#include <algorithm>
#include <cmath>

#include "../core/registry.h"

namespace tdq {
namespace {

Shape broadcast_shapes(const Attrs& a, const Shape& x, const Shape& y) {
  size_t n = std::max(x.size(), y.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t dx = i < n - x.size() ? 1 : x[i - (n - x.size())];
    int64_t dy = i < n - y.size() ? 1 : y[i - (n - y.size())];
    TDQ_CHECK_RANGE(dx == dy || dx == 1 || dy == 1, a.op, ": shapes ", shape_str(x), " and ", shape_str(y),
                    " cannot be broadcast together (dimension ", i, ": ", dx, " vs ", dy, ")");
    out[i] = dx == 1 ? dy : dx;
  }
  return out;
}

// Element strides of `s` laid over `out` (0 where s is broadcast).
std::vector<int64_t> broadcast_strides(const Shape& s, const Shape& out) {
  std::vector<int64_t> st(out.size(), 0);
  int64_t acc = 1;
  for (int64_t i = static_cast<int64_t>(s.size()) - 1; i >= 0; --i) {
    int64_t oi = i + static_cast<int64_t>(out.size() - s.size());
    st[oi] = s[i] == 1 ? 0 : acc;
    acc *= s[i];
  }
  return st;
}

std::vector<TensorMeta> infer_binary(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "a", DType::f32);
  check_dtype(a, in[1], "b", DType::f32);
  return {{broadcast_shapes(a, in[0].shape, in[1].shape), DType::f32}};
}

template <typename F>
void binary_cpu(OpCall& c, const ExecContext& ctx, F f) {
  const Tensor &x = c.inputs[0], &y = c.inputs[1];
  Tensor& out = c.outputs[0];
  const float *px = x.f32(), *py = y.f32();
  float* po = out.f32();
  const int64_t n = out.numel();
  if (x.shape == y.shape && x.numel() == n) {
    ctx.parallel_for(n, 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) po[i] = f(px[i], py[i]);
    });
    return;
  }
  if ((y.numel() == 1 && x.numel() == n) || (x.numel() == 1 && y.numel() == n)) {
    const bool ys = y.numel() == 1;
    const float s = ys ? py[0] : px[0];
    ctx.parallel_for(n, 1 << 15, [&](int64_t b, int64_t e) {
      if (ys) for (int64_t i = b; i < e; ++i) po[i] = f(px[i], s);
      else for (int64_t i = b; i < e; ++i) po[i] = f(s, py[i]);
    });
    return;
  }
  // General case. Output dims of size 1 are dropped and neighbouring dims
  // merged where both operands step through them as one (contiguously, or
  // both broadcast): (B, C, H, W) + (1, C, 1, 1) becomes (B, C, H*W) with
  // strides (C*H*W, H*W, 1) and (0, 1, 0). Rows over the outer dims, an inner
  // loop whose strides are mostly 1 or 0, in forms the compiler vectorizes.
  const Shape& os = out.shape;
  const auto sx = broadcast_strides(x.shape, os), sy = broadcast_strides(y.shape, os);
  std::vector<int64_t> ds, dx, dy;  // merged dims, outermost first
  for (size_t d = 0; d < os.size(); ++d) {
    if (os[d] == 1) continue;
    if (!ds.empty() && dx.back() == sx[d] * os[d] && dy.back() == sy[d] * os[d]) {
      ds.back() *= os[d];
      dx.back() = sx[d];
      dy.back() = sy[d];
    } else {
      ds.push_back(os[d]);
      dx.push_back(sx[d]);
      dy.push_back(sy[d]);
    }
  }
  if (n == 0) return;
  if (ds.empty()) ds = {1}, dx = {0}, dy = {0};
  const int64_t nd = static_cast<int64_t>(ds.size());
  const int64_t inner = ds[nd - 1], rows = n / inner, ix = dx[nd - 1], iy = dy[nd - 1];
  ctx.parallel_for(rows, std::max<int64_t>(1, (1 << 15) / inner), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      int64_t rem = r, ox = 0, oy = 0;
      for (int64_t d = nd - 2; d >= 0; --d) {
        const int64_t idx = rem % ds[d];
        rem /= ds[d];
        ox += idx * dx[d];
        oy += idx * dy[d];
      }
      float* o = po + r * inner;
      const float *a = px + ox, *c = py + oy;
      if (ix == 1 && iy == 1) {
        for (int64_t i = 0; i < inner; ++i) o[i] = f(a[i], c[i]);
      } else if (ix == 1 && iy == 0) {
        const float s = c[0];
        for (int64_t i = 0; i < inner; ++i) o[i] = f(a[i], s);
      } else if (ix == 0 && iy == 1) {
        const float s = a[0];
        for (int64_t i = 0; i < inner; ++i) o[i] = f(s, c[i]);
      } else {
        for (int64_t i = 0; i < inner; ++i) o[i] = f(a[i * ix], c[i * iy]);
      }
    }
  });
}

std::vector<TensorMeta> infer_unary(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  return {{in[0].shape, DType::f32}};
}

template <typename F>
void unary_cpu(OpCall& c, const ExecContext& ctx, F f) {
  const float* px = c.inputs[0].f32();
  float* po = c.outputs[0].f32();
  ctx.parallel_for(c.outputs[0].numel(), 1 << 15, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) po[i] = f(px[i]);
  });
}

#define TDQ_UNARY(NAME, EXPR)                                                             \
  TDQ_REGISTER_OP({NAME, 1, 1, infer_unary, [](OpCall& c, const ExecContext& ctx) { \
                     unary_cpu(c, ctx, [](float x) { return EXPR; });                     \
                   }, {}})

// ---- affine, clamp --------------------------------------------------------
void affine_cpu(OpCall& c, const ExecContext& ctx) {
  const float s = static_cast<float>(c.attrs.get_float("scale", 1)), t = static_cast<float>(c.attrs.get_float("shift", 0));
  unary_cpu(c, ctx, [=](float x) { return s * x + t; });
}

std::vector<TensorMeta> infer_clamp(const std::vector<Tensor>& in, const Attrs& a) {
  auto m = infer_unary(in, a);
  TDQ_CHECK_RANGE(a.get_float("min", -INFINITY) <= a.get_float("max", INFINITY), a.op, ": min ",
                  a.get_float("min", -INFINITY), " > max ", a.get_float("max", INFINITY));
  return m;
}

void clamp_cpu(OpCall& c, const ExecContext& ctx) {
  const float lo = static_cast<float>(c.attrs.get_float("min", -INFINITY)), hi = static_cast<float>(c.attrs.get_float("max", INFINITY));
  unary_cpu(c, ctx, [=](float x) { return std::min(std::max(x, lo), hi); });
}

// clamp_backward(gy, x): gy where min <= x <= max, else 0.
std::vector<TensorMeta> infer_clamp_backward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "gy", DType::f32);
  check_shape(a, in[1], "x", in[0].shape);
  return {{in[0].shape, DType::f32}};
}

void clamp_backward_cpu(OpCall& c, const ExecContext& ctx) {
  const float lo = static_cast<float>(c.attrs.get_float("min", -INFINITY)), hi = static_cast<float>(c.attrs.get_float("max", INFINITY));
  const float *g = c.inputs[0].f32(), *x = c.inputs[1].f32();
  float* o = c.outputs[0].f32();
  ctx.parallel_for(c.outputs[0].numel(), 1 << 15, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) o[i] = (x[i] >= lo && x[i] <= hi) ? g[i] : 0.f;
  });
}

// ---- lincomb(x0..xk; coeffs) = sum_i coeffs[i] * x_i (sampler updates) --------
std::vector<TensorMeta> infer_lincomb(const std::vector<Tensor>& in, const Attrs& a) {
  auto coeffs = a.get_floats("coeffs");
  TDQ_CHECK_RANGE(coeffs.size() == in.size(), a.op, ": ", in.size(), " tensors but ", coeffs.size(), " coeffs");
  for (size_t i = 0; i < in.size(); ++i) {
    check_dtype(a, in[i], "x", DType::f32);
    check_shape(a, in[i], "x", in[0].shape);
  }
  return {{in[0].shape, DType::f32}};
}

void lincomb_cpu(OpCall& c, const ExecContext& ctx) {
  auto cd = c.attrs.get_floats("coeffs");
  std::vector<float> coeffs(cd.begin(), cd.end());
  std::vector<const float*> xs;
  for (auto& t : c.inputs) xs.push_back(t.f32());
  float* o = c.outputs[0].f32();
  ctx.parallel_for(c.outputs[0].numel(), 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) o[i] = coeffs[0] * xs[0][i];
    for (size_t k = 1; k < xs.size(); ++k)
      for (int64_t i = b; i < e; ++i) o[i] += coeffs[k] * xs[k][i];
  });
}

// ---- reductions -----------------------------------------------------------
// Reduces x over `dims` (all when absent). keepdim keeps them as size 1.
std::vector<int64_t> normalized_dims(const Attrs& a, const Tensor& x) {
  std::vector<int64_t> dims;
  if (!a.has("dims")) {
    for (int64_t d = 0; d < x.dim(); ++d) dims.push_back(d);
    return dims;
  }
  for (int64_t d : a.get_ints("dims")) {
    TDQ_CHECK_RANGE(d >= -x.dim() && d < x.dim(), a.op, ": dim ", d, " out of range for shape ", shape_str(x.shape));
    dims.push_back(d < 0 ? d + x.dim() : d);
  }
  std::sort(dims.begin(), dims.end());
  TDQ_CHECK_RANGE(std::adjacent_find(dims.begin(), dims.end()) == dims.end(), a.op, ": repeated dim");
  return dims;
}

std::vector<TensorMeta> infer_reduce(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  auto dims = normalized_dims(a, in[0]);
  bool keep = a.get_bool("keepdim", false);
  Shape out;
  for (int64_t d = 0; d < in[0].dim(); ++d) {
    bool red = std::binary_search(dims.begin(), dims.end(), d);
    if (!red) out.push_back(in[0].shape[d]);
    else if (keep) out.push_back(1);
  }
  return {{out, DType::f32}};
}

// Sums x (shape s) into out where `reduced[d]` marks summed dims. Accumulates
// in double so large reductions stay accurate.
void reduce_sum(const Tensor& x, const std::vector<bool>& reduced, float* out, double scale, const ExecContext& ctx) {
  const Shape& s = x.shape;
  const int64_t nd = x.dim();
  // Output strides over x's dims (0 on reduced dims).
  std::vector<int64_t> ost(nd, 0);
  int64_t acc = 1, out_n = 1;
  for (int64_t d = nd - 1; d >= 0; --d)
    if (!reduced[d]) ost[d] = acc, acc *= s[d], out_n *= s[d];
  // Parallelise over outputs: each output gathers its inputs (no races).
  std::vector<int64_t> kept_dims, red_dims;
  for (int64_t d = 0; d < nd; ++d) (reduced[d] ? red_dims : kept_dims).push_back(d);
  std::vector<int64_t> xst(nd, 1);
  for (int64_t d = nd - 2; d >= 0; --d) xst[d] = xst[d + 1] * s[d + 1];
  int64_t red_n = 1;
  for (auto d : red_dims) red_n *= s[d];
  const float* px = x.f32();
  ctx.parallel_for(out_n, std::max<int64_t>(1, 8192 / std::max<int64_t>(red_n, 1)), [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      int64_t base = 0, rem = o;
      for (int64_t k = static_cast<int64_t>(kept_dims.size()) - 1; k >= 0; --k) {
        int64_t d = kept_dims[k];
        base += (rem % s[d]) * xst[d];
        rem /= s[d];
      }
      double sum = 0;
      if (!red_dims.empty() && red_dims.back() == nd - 1) {
        // innermost dim reduced: walk it contiguously
        int64_t inner = s[nd - 1], outer = red_n / std::max<int64_t>(inner, 1);
        for (int64_t r = 0; r < outer; ++r) {
          int64_t off = base, rr = r;
          for (int64_t k = static_cast<int64_t>(red_dims.size()) - 2; k >= 0; --k) {
            int64_t d = red_dims[k];
            off += (rr % s[d]) * xst[d];
            rr /= s[d];
          }
          const float* p = px + off;
          double part = 0;
          for (int64_t i = 0; i < inner; ++i) part += p[i];
          sum += part;
        }
      } else {
        for (int64_t r = 0; r < red_n; ++r) {
          int64_t off = base, rr = r;
          for (int64_t k = static_cast<int64_t>(red_dims.size()) - 1; k >= 0; --k) {
            int64_t d = red_dims[k];
            off += (rr % s[d]) * xst[d];
            rr /= s[d];
          }
          sum += px[off];
        }
      }
      out[o] = static_cast<float>(sum * scale);
    }
  });
}

template <bool Mean>
void reduce_cpu(OpCall& c, const ExecContext& ctx) {
  const Tensor& x = c.inputs[0];
  auto dims = normalized_dims(c.attrs, x);
  std::vector<bool> red(x.dim(), false);
  int64_t count = 1;
  for (auto d : dims) red[d] = true, count *= x.shape[d];
  reduce_sum(x, red, c.outputs[0].f32(), Mean ? 1.0 / std::max<int64_t>(count, 1) : 1.0, ctx);
}

// sum_to(x; shape): sums the broadcast dims of x away so the result has `shape`
// (the gradient of broadcasting `shape` up to x.shape).
std::vector<TensorMeta> infer_sum_to(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  Shape target = a.get_ints("shape");
  Shape b = broadcast_shapes(a, target, in[0].shape);
  TDQ_CHECK_RANGE(b == in[0].shape, a.op, ": shape ", shape_str(target), " does not broadcast to ", shape_str(in[0].shape));
  return {{target, DType::f32}};
}

void sum_to_cpu(OpCall& c, const ExecContext& ctx) {
  const Tensor& x = c.inputs[0];
  const Shape& t = c.outputs[0].shape;
  std::vector<bool> red(x.dim(), false);
  const int64_t lead = x.dim() - static_cast<int64_t>(t.size());
  for (int64_t d = 0; d < x.dim(); ++d) red[d] = d < lead || (t[d - lead] == 1 && x.shape[d] != 1);
  reduce_sum(x, red, c.outputs[0].f32(), 1.0, ctx);
}

// broadcast_to(x; shape)
std::vector<TensorMeta> infer_broadcast_to(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  Shape target = a.get_ints("shape");
  TDQ_CHECK_RANGE(broadcast_shapes(a, in[0].shape, target) == target, a.op, ": shape ", shape_str(in[0].shape),
                  " does not broadcast to ", shape_str(target));
  return {{target, DType::f32}};
}

}  // namespace

TDQ_REGISTER_OP({"add", 2, 2, infer_binary, [](OpCall& c, const ExecContext& ctx) { binary_cpu(c, ctx, [](float x, float y) { return x + y; }); }, {}});
TDQ_REGISTER_OP({"sub", 2, 2, infer_binary, [](OpCall& c, const ExecContext& ctx) { binary_cpu(c, ctx, [](float x, float y) { return x - y; }); }, {}});
TDQ_REGISTER_OP({"mul", 2, 2, infer_binary, [](OpCall& c, const ExecContext& ctx) { binary_cpu(c, ctx, [](float x, float y) { return x * y; }); }, {}});
TDQ_REGISTER_OP({"div", 2, 2, infer_binary, [](OpCall& c, const ExecContext& ctx) { binary_cpu(c, ctx, [](float x, float y) { return x / y; }); }, {}});
TDQ_REGISTER_OP({"broadcast_to", 1, 1, infer_broadcast_to, [](OpCall& c, const ExecContext& ctx) {
  // x + 0 through the broadcasting path
  Tensor zero = ctx.scratch({1});
  zero.f32()[0] = 0.f;
  OpCall bc{{c.inputs[0], zero}, c.attrs, c.outputs};
  binary_cpu(bc, ctx, [](float x, float y) { return x + y; });
}, {}});

TDQ_UNARY("neg", -x);
TDQ_UNARY("exp", std::exp(x));
TDQ_UNARY("log", std::log(x));
TDQ_UNARY("sqrt", std::sqrt(x));
TDQ_UNARY("rsqrt", 1.0f / std::sqrt(x));
TDQ_UNARY("square", x * x);
TDQ_UNARY("abs", std::fabs(x));
TDQ_UNARY("sign", static_cast<float>((x > 0) - (x < 0)));
TDQ_UNARY("sigmoid", 1.0f / (1.0f + std::exp(-x)));
TDQ_UNARY("tanh", std::tanh(x));
TDQ_UNARY("sin", std::sin(x));
TDQ_UNARY("cos", std::cos(x));
TDQ_UNARY("relu", x > 0 ? x : 0.0f);
TDQ_UNARY("heaviside", x > 0 ? 1.0f : 0.0f);  // 1 where x > 0: the gradient mask of relu
TDQ_UNARY("round", std::nearbyint(x));
TDQ_REGISTER_OP({"affine", 1, 1, infer_unary, affine_cpu, {}});
TDQ_REGISTER_OP({"clamp", 1, 1, infer_clamp, clamp_cpu, {}});
TDQ_REGISTER_OP({"clamp_backward", 2, 2, infer_clamp_backward, clamp_backward_cpu, {}});
TDQ_REGISTER_OP({"lincomb", 1, 16, infer_lincomb, lincomb_cpu, {}});
TDQ_REGISTER_OP({"sum", 1, 1, infer_reduce, reduce_cpu<false>, {}});
TDQ_REGISTER_OP({"mean", 1, 1, infer_reduce, reduce_cpu<true>, {}});
TDQ_REGISTER_OP({"sum_to", 1, 1, infer_sum_to, sum_to_cpu, {}});

}  // namespace tdq
