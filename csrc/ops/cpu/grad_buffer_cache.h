// Reused memory for the CPU backward's gradient tensors.
//
// On the CPU, glibc hands every large block (over its mmap threshold, at most 32 MiB) back to the kernel when
// it is freed, so each backward's fresh gradient buffers page-fault and are zeroed by the kernel, which costs
// more than the kernel's arithmetic (128 MB: ~34 ms to allocate and first touch vs ~4 ms to fill mapped memory).
// This cache keeps the blocks of freed gradient tensors and hands them to the next backward.
//
// Soundness: a block returns to the cache only from the deleter of its storage, i.e. once no tensor, view,
// autograd graph or hook refers to it any more; memory that is still referenced is never handed out again.
// Bounds, per block size in bytes (any dtype: storage is bytes): at most as many blocks as were live at once over
// a window of recent requests (the current and the previous epoch of 256 requests), so a process that alternates
// shapes and dtypes keeps every size it keeps using (a training loop: one backward's worth), and sizes no longer
// requested are freed within two epochs; in all, at most twice the most bytes live at once in that window (least
// recently used sizes are freed first). perceptloss.backends.cpu.empty_cache() releases it; PERCEPTLOSS_CPU_GRAD_CACHE=0
// (or perceptloss.backends.cpu.set_grad_cache(False)) disables it.
#pragma once

#include <ATen/core/Tensor.h>

namespace perceptloss {
namespace ops {
namespace cpu {

// An uninitialised CPU tensor like `like`: with its sizes, strides and dtype from the cache when `like` is
// non-overlapping and dense and at least 1 MiB, else from at::empty_like.
at::Tensor empty_like_cached(const at::Tensor& like);

// Frees the cached blocks; returns the bytes released.
int64_t empty_cache();

// Bytes held in the cache (not counting blocks in use).
int64_t cached_bytes();

// Turns the cache on or off (blocks already cached stay until empty_cache()); returns the previous setting.
bool set_cache_enabled(bool enabled);

}  // namespace cpu
}  // namespace ops
}  // namespace perceptloss
