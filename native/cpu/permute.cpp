// permute(x; dims): y.shape[j] = x.shape[dims[j]], a copy with the new layout.
// Its gradient is permute by the inverse permutation (done in TS). Any dtype.
#include <cstring>

#include "../core/registry.h"

namespace tdq {
namespace {

std::vector<int64_t> checked_perm(const Attrs& a, const Tensor& x) {
  const int64_t nd = x.dim();
  std::vector<int64_t> dims = a.get_ints("dims");
  TDQ_CHECK_RANGE(static_cast<int64_t>(dims.size()) == nd, a.op, ": attribute 'dims' has ", dims.size(),
                  " entries but 'x' has ", nd, " dimensions (shape ", shape_str(x.shape), ")");
  std::vector<bool> seen(nd, false);
  for (auto& d : dims) {
    TDQ_CHECK_RANGE(d >= -nd && d < nd, a.op, ": attribute 'dims' entry ", d, " is out of range for ", nd,
                    " dimensions");
    if (d < 0) d += nd;
    TDQ_CHECK_RANGE(!seen[d], a.op, ": attribute 'dims' repeats dimension ", d, "; it must be a permutation");
    seen[d] = true;
  }
  return dims;
}

std::vector<TensorMeta> infer_permute(const std::vector<Tensor>& in, const Attrs& a) {
  check_defined(a, in[0], "x");
  auto dims = checked_perm(a, in[0]);
  Shape out;
  for (auto d : dims) out.push_back(in[0].shape[d]);
  return {{out, in[0].dtype}};
}

// The output dims with their input strides, size-1 dims dropped and runs of
// dims that stay adjacent merged: [2,3,4,5] by (0,2,3,1) becomes sizes
// [2,20,3] with input strides [60,1,20]. Fewer, longer dims make the loops cheap.
void collapse(const Shape& xs, const std::vector<int64_t>& perm, std::vector<int64_t>& size,
              std::vector<int64_t>& stride) {
  const int64_t nd = static_cast<int64_t>(xs.size());
  std::vector<int64_t> xst(nd, 1);
  for (int64_t d = nd - 2; d >= 0; --d) xst[d] = xst[d + 1] * xs[d + 1];
  for (int64_t j = 0; j < nd; ++j) {
    const int64_t d = perm[j];
    if (xs[d] == 1) continue;
    // The previous run's stride is d's stride times d's size: in x, d comes
    // right after it (only size-1 dims between), so the two are one run.
    if (!size.empty() && stride.back() == xst[d] * xs[d]) {
      size.back() *= xs[d];
      stride.back() = xst[d];
    } else {
      size.push_back(xs[d]);
      stride.push_back(xst[d]);
    }
  }
}

template <typename T>
void permute_typed(const T* x, T* y, const std::vector<int64_t>& size, const std::vector<int64_t>& stride,
                   const ExecContext& ctx) {
  const int64_t m = static_cast<int64_t>(size.size());
  if (m == 0) {
    y[0] = x[0];
    return;
  }
  const int64_t last = m - 1;
  if (stride[last] == 1) {
    // The innermost run is contiguous in x too: copy whole rows.
    const int64_t len = size[last];
    int64_t rows = 1;
    for (int64_t j = 0; j < last; ++j) rows *= size[j];
    ctx.parallel_for(rows, std::max<int64_t>(1, 16384 / len), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        int64_t rem = r, off = 0;
        for (int64_t j = last - 1; j >= 0; --j) {
          off += (rem % size[j]) * stride[j];
          rem /= size[j];
        }
        std::memcpy(y + r * len, x + off, static_cast<size_t>(len) * sizeof(T));
      }
    });
    return;
  }
  // Some output dim k reads x contiguously; the last output dim writes y
  // contiguously. Tiles over (k, last) keep both sides in cache.
  int64_t k = 0;
  while (stride[k] != 1) ++k;
  std::vector<int64_t> ystride(m, 1);
  for (int64_t j = m - 2; j >= 0; --j) ystride[j] = ystride[j + 1] * size[j + 1];
  constexpr int64_t kTile = 32;
  const int64_t tk = (size[k] + kTile - 1) / kTile, tl = (size[last] + kTile - 1) / kTile;
  int64_t others = 1;
  for (int64_t j = 0; j < last; ++j)
    if (j != k) others *= size[j];
  ctx.parallel_for(others * tk * tl, 4, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t il = u % tl, ik = (u / tl) % tk;
      int64_t rem = u / (tl * tk), xo = 0, yo = 0;
      for (int64_t j = last - 1; j >= 0; --j) {
        if (j == k) continue;
        const int64_t idx = rem % size[j];
        rem /= size[j];
        xo += idx * stride[j];
        yo += idx * ystride[j];
      }
      const int64_t k0 = ik * kTile, k1 = std::min(size[k], k0 + kTile);
      const int64_t l0 = il * kTile, l1 = std::min(size[last], l0 + kTile);
      const int64_t sl = stride[last], yk = ystride[k];
      for (int64_t a = k0; a < k1; ++a) {
        const T* src = x + xo + a;
        T* dst = y + yo + a * yk;
        for (int64_t l = l0; l < l1; ++l) dst[l] = src[l * sl];
      }
    }
  });
}

void permute_cpu(OpCall& c, const ExecContext& ctx) {
  const Tensor& x = c.inputs[0];
  if (x.numel() == 0) return;
  std::vector<int64_t> size, stride;
  collapse(x.shape, checked_perm(c.attrs, x), size, stride);
  void* y = c.outputs[0].storage->data;
  switch (dtype_size(x.dtype)) {
    case 1: permute_typed(x.data<uint8_t>(), static_cast<uint8_t*>(y), size, stride, ctx); break;
    case 2: permute_typed(x.data<uint16_t>(), static_cast<uint16_t*>(y), size, stride, ctx); break;
    default: permute_typed(x.data<uint32_t>(), static_cast<uint32_t*>(y), size, stride, ctx); break;
  }
}

}  // namespace

TDQ_REGISTER_OP({"permute", 1, 1, infer_permute, permute_cpu, {}});

}  // namespace tdq
