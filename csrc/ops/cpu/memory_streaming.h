// When the CPU kernels treat their data as a stream from and to memory: only when what one call touches is well
// beyond the last-level cache. Then the forward prefetches a and b ahead with a non-temporal hint and the backward
// writes the input gradient with non-temporal stores (no read-for-ownership, no eviction of a and b). On data
// that fits the caches both would cost: the hint up to 10% in the forward, the stores up to 19% in the op that
// next reads the gradient, which would find it in memory instead of the cache (measured on an AMD Zen 5, 32 MiB
// L3; figures in memory_streaming.cpp).
#pragma once

#include <cstdint>

namespace perceptloss {
namespace ops {
namespace cpu {

// Bytes of the last-level data cache one core of this machine uses (Linux sysfs), 0 when unknown.
int64_t last_level_cache_bytes();

// True when a call that reads and writes `bytes` in all should stream them (bytes > the threshold, which is twice
// the last-level cache unless set; never when the cache size is unknown or PERCEPTLOSS_CPU_STREAMING=0).
bool streams_through_memory(int64_t bytes);

}  // namespace cpu
}  // namespace ops
}  // namespace perceptloss
