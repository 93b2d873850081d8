// Packed / transformed weights kept between calls (conv2d, qconv2d).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "../core/registry.h"

namespace tdq {

// ---- packed weights, kept between calls -----------------------------------------
// The forward GEMM's A is the weight, packed into the micro-kernel's panel
// layout. Packing reads and writes every weight once per call: for a 300M
// parameter UNet at batch 1 that is a good part of the forward. A weight met
// a second time unchanged (same storage, same version: the storage's count of
// in-place writes, bumped by optimizer steps and copy_) keeps its packed copy
// from then on; one met once (a training step, whose weights change every
// step; a fake-quantized weight, new every call) is packed into scratch as
// before, so training and fake quantization hold no extra memory. A cached
// weight updated in place is repacked into its buffer. Entries of freed
// weights are dropped. The total is capped (TDQ_CONV_PACK_CACHE_MB, default
// 2048; 0 turns the cache off), past which weights are packed per call.
class WeightPackCache {
 public:
  static WeightPackCache& instance() {
    static WeightPackCache c;
    return c;
  }
  // The weight in the layout `kind` (0: conv2d's GEMM packed A; 1: the
  // Winograd transform, conv2d_winograd.h; 2: W^T as the B panels of
  // sgemm_batched_prepacked_panels; 3: the Winograd transform as B panels;
  // 4: qconv2d's integer Winograd transform of packed int8 weights,
  // qconv2d_winograd.h), n floats (4-byte words) written by pack.
  template <typename Pack>
  std::shared_ptr<const float> get(const ExecContext& ctx, const Tensor& w, int kind, int64_t O, int64_t CKK,
                                   int64_t n, Pack pack, bool keep_first = false) {
    const uint64_t version = w.storage->version.load();
    const uint64_t key = w.storage->id * 8 + static_cast<uint64_t>(kind);
    std::unique_lock<std::mutex> lk(mu_);
    auto it = map_.find(key);
    bool keep = false;
    if (it == map_.end()) {
      sweep();
      it = map_.emplace(key, Entry{w.storage, version, ctx.cpu_level, O, CKK, 0, nullptr}).first;
      keep = keep_first;  // inference-only weights (qconv2d's packed rows): keep from the first call
    } else {
      Entry& e = it->second;
      const bool same = e.level == ctx.cpu_level && e.O == O && e.CKK == CKK;
      if (same && e.version == version) {
        if (e.packed) return e.packed;
        keep = true;  // the second time: keep it
      } else if (same && e.packed && e.packed.use_count() == 1) {
        // Updated in place since it was kept: repack into the same buffer.
        e.version = version;
        std::shared_ptr<float> buf = e.packed;
        lk.unlock();
        pack(buf.get());
        return buf;
      } else {
        total_ -= e.n;
        e = Entry{w.storage, version, ctx.cpu_level, O, CKK, 0, nullptr};
      }
    }
    if (keep && cap_ > 0 && total_ + n <= cap_) {
      Entry& e = it->second;
      std::shared_ptr<float> buf(static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64)),
                                 [](float* p) { std::free(p); });
      TDQ_CHECK(buf, "conv2d/qconv2d: out of memory for ", n * sizeof(float), " bytes of packed weights");
      e.packed = buf, e.n = n, total_ += n;
      lk.unlock();
      pack(buf.get());
      return buf;
    }
    lk.unlock();
    Tensor t = ctx.scratch({n});
    pack(t.f32());
    return std::shared_ptr<const float>(t.storage, t.f32());
  }

 private:
  struct Entry {
    std::weak_ptr<Storage> owner;
    uint64_t version;
    CpuLevel level;
    int64_t O, CKK, n;              // n: floats held in packed
    std::shared_ptr<float> packed;  // null: met once
  };
  WeightPackCache() {
    const char* s = std::getenv("TDQ_CONV_PACK_CACHE_MB");
    const int64_t mb = s && *s ? std::strtoll(s, nullptr, 10) : 2048;
    cap_ = std::max<int64_t>(0, mb) * (int64_t{1} << 20) / static_cast<int64_t>(sizeof(float));
  }
  void sweep() {
    for (auto it = map_.begin(); it != map_.end();) {
      if (it->second.owner.expired()) {
        total_ -= it->second.n;
        it = map_.erase(it);
      } else {
        ++it;
      }
    }
  }
  std::mutex mu_;
  std::unordered_map<uint64_t, Entry> map_;
  int64_t total_ = 0, cap_ = 0;  // floats
};

}  // namespace tdq
