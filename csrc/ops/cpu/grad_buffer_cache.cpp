#include "grad_buffer_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>

namespace perceptloss {
namespace ops {
namespace cpu {
namespace {

constexpr size_t kMinCachedBytes = size_t(1) << 20;  // smaller blocks are cheap for malloc

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

void free_blocks(const std::deque<Block*>& blocks) {
  for (Block* b : blocks) {
    c10::free_cpu(b->ptr);
    delete b;
  }
}

// Exact-size reuse, oldest freed block evicted first. Deleters may run on any thread (autograd workers).
class BlockCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    Block* block = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = std::find_if(free_.begin(), free_.end(), [n](const Block* b) { return b->size == n; });
      if (it != free_.end()) {
        block = *it;
        free_.erase(it);
        cached_ -= n;
      }
      live_ += n;
      high_water_ = std::max(high_water_, live_);
    }
    if (!block) {
      block = new Block{c10::alloc_cpu(n), n};
    }
    return {block->ptr, block, &BlockCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t clear() {
    std::deque<Block*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      drop.swap(free_);
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

  void give_back(Block* block) {
    std::deque<Block*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_ -= block->size;
      // Keep at most what was ever live at once: one backward's worth in a training loop.
      while (!free_.empty() && cached_ + block->size > high_water_) {
        drop.push_back(free_.front());
        cached_ -= free_.front()->size;
        free_.pop_front();
      }
      if (cached_ + block->size <= high_water_) {
        free_.push_back(block);
        cached_ += block->size;
        block = nullptr;
      }
    }
    if (block) drop.push_back(block);
    free_blocks(drop);
  }

  std::mutex mutex_;
  std::deque<Block*> free_;
  size_t cached_ = 0;
  size_t live_ = 0;
  size_t high_water_ = 0;
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
