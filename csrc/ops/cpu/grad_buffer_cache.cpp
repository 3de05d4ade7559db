#include "grad_buffer_cache.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <unordered_map>
#include <vector>
#include <mutex>
#include <string>

namespace perceptloss {
namespace ops {
namespace cpu {
namespace {

constexpr size_t kMinCachedBytes = size_t(1) << 20;  // smaller blocks are cheap for malloc
constexpr uint64_t kEpochAllocations = 256;  // the window: bounds follow the last one to two epochs of use
constexpr size_t kCapFactor = 2;              // cached bytes <= 2 x the most bytes live at once in the window

struct Block {
  void* ptr;
  size_t size;
};

std::atomic<bool>& cache_enabled() {
  static std::atomic<bool> enabled([] {
    const char* v = std::getenv("PERCEPTLOSS_CPU_GRAD_CACHE");
    return !(v && (std::string(v) == "0" || std::string(v) == "false"));
  }());
  return enabled;
}

void free_blocks(const std::vector<Block*>& blocks) {
  for (Block* b : blocks) {
    c10::free_cpu(b->ptr);
    delete b;
  }
}

// The blocks of one size in bytes (storage is bytes: a float32 gradient can reuse a bfloat16 one's block).
struct SizeClass {
  std::vector<Block*> free;  // freed blocks, reused last-in first-out
  size_t live = 0;           // blocks of this size in use
  size_t peak = 0;           // most blocks of this size live at once in this epoch
  size_t prev_peak = 0;      // the same in the previous epoch
  uint64_t last_use = 0;     // allocation tick of the last request for this size
};

// Exact-size reuse per size class. Each class keeps at most as many blocks (free + in use) as were live at once
// during the current or the previous epoch of kEpochAllocations requests, so a process that alternates shapes
// and dtypes keeps every size it keeps using, while sizes that stop being used are freed within two epochs; all
// classes together hold at most kCapFactor x the most bytes live at once in that window (least recently used
// sizes go first). Deleters may run on any thread (autograd workers).
class BlockCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    Block* block = nullptr;
    std::vector<Block*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (++tick_ % kEpochAllocations == 0) end_epoch(drop);
      SizeClass& c = classes_[n];
      c.last_use = tick_;
      if (!c.free.empty()) {
        block = c.free.back();
        c.free.pop_back();
        cached_ -= n;
      }
      c.live += 1;
      c.peak = std::max(c.peak, c.live);
      live_ += n;
      peak_ = std::max(peak_, live_);
    }
    free_blocks(drop);
    if (!block) {
      block = new Block{c10::alloc_cpu(n), n};
    }
    return {block->ptr, block, &BlockCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t clear() {
    std::vector<Block*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& [size, c] : classes_) {
        drop.insert(drop.end(), c.free.begin(), c.free.end());
        c.free.clear();
      }
      cached_ = 0;
    }
    int64_t bytes = 0;
    for (const Block* b : drop) bytes += static_cast<int64_t>(b->size);
    free_blocks(drop);
    return bytes;
  }

  int64_t cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(cached_);
  }

  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();  // never destroyed: tensors may be freed during exit
    return *cache;
  }

 private:
  static void release(void* ctx) {
    instance().give_back(static_cast<Block*>(ctx));
  }

  size_t cap() const {
    return kCapFactor * std::max(peak_, prev_peak_);
  }

  static size_t bound(const SizeClass& c) {
    return std::max(c.peak, c.prev_peak);
  }

  // Frees free blocks of the least recently used sizes other than `keep` until `need` more bytes fit the cap.
  void make_room(size_t need, size_t keep, std::vector<Block*>& drop) {
    while (cached_ + need > cap()) {
      SizeClass* oldest = nullptr;
      for (auto& [size, c] : classes_) {
        if (size != keep && !c.free.empty() && (!oldest || c.last_use < oldest->last_use)) oldest = &c;
      }
      if (!oldest) return;
      drop.push_back(oldest->free.back());
      cached_ -= oldest->free.back()->size;
      oldest->free.pop_back();
    }
  }

  // A new window: each class's bound becomes the larger of the last two epochs' peaks.
  void end_epoch(std::vector<Block*>& drop) {
    for (auto it = classes_.begin(); it != classes_.end();) {
      SizeClass& c = it->second;
      c.prev_peak = c.peak;
      c.peak = c.live;
      while (!c.free.empty() && c.live + c.free.size() > bound(c)) {
        drop.push_back(c.free.back());
        cached_ -= it->first;
        c.free.pop_back();
      }
      it = (c.live == 0 && c.free.empty() && bound(c) == 0) ? classes_.erase(it) : std::next(it);
    }
    prev_peak_ = peak_;
    peak_ = live_;
    make_room(0, 0, drop);
  }

  void give_back(Block* block) {
    std::vector<Block*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const size_t n = block->size;
      live_ -= n;
      SizeClass& c = classes_[n];
      c.live -= 1;
      if (c.live + c.free.size() < bound(c)) {
        make_room(n, n, drop);
        if (cached_ + n <= cap()) {
          c.free.push_back(block);
          cached_ += n;
          block = nullptr;
        }
      }
    }
    if (block) drop.push_back(block);
    free_blocks(drop);
  }

  std::mutex mutex_;
  std::unordered_map<size_t, SizeClass> classes_;
  size_t cached_ = 0;     // bytes in free blocks
  size_t live_ = 0;       // bytes in blocks in use
  size_t peak_ = 0;       // most bytes in use at once in this epoch
  size_t prev_peak_ = 0;  // the same in the previous epoch
  uint64_t tick_ = 0;     // requests so far
};

}  // namespace

at::Tensor empty_like_cached(const at::Tensor& like) {
  const size_t nbytes = static_cast<size_t>(like.numel()) * like.element_size();
  if (!cache_enabled().load() || nbytes < kMinCachedBytes || !like.is_non_overlapping_and_dense()) {
    return at::empty_like(like);
  }
  return at::detail::empty_strided_generic(like.sizes(), like.strides(), &BlockCache::instance(),
                                           c10::DispatchKeySet(c10::DispatchKey::CPU), like.scalar_type());
}

int64_t empty_cache() {
  return BlockCache::instance().clear();
}

int64_t cached_bytes() {
  return BlockCache::instance().cached();
}

bool set_cache_enabled(bool enabled) {
  return cache_enabled().exchange(enabled);
}

}  // namespace cpu
}  // namespace ops
}  // namespace perceptloss

TORCH_LIBRARY_FRAGMENT(perceptloss, m) {
  m.def("_empty_cpu_cache() -> int", &perceptloss::ops::cpu::empty_cache);
  m.def("_cpu_cache_bytes() -> int", &perceptloss::ops::cpu::cached_bytes);
  m.def("_set_cpu_grad_cache(bool enabled) -> bool", &perceptloss::ops::cpu::set_cache_enabled);
}
