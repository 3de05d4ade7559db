// When the CPU backward writes the input gradient with non-temporal stores: only when what one call touches (a and
// b read, gradients written) is well beyond the last-level cache. There the stores skip the read-for-ownership of
// every gradient line and leave a and b in the caches; on data that fits the caches they would push the gradient
// out to memory, where the op that reads it next (a ReLU's or convolution's backward) has to fetch it again
// (figures from an AMD Zen 5, 32 MiB L3, in memory_streaming.cpp).
#pragma once

#include <cstdint>

namespace perceptloss {
namespace ops {
namespace cpu {

// Bytes of the last-level data cache one core of this machine uses (Linux sysfs; else the C library's sysconf),
// 0 when unknown.
int64_t last_level_cache_bytes();

// True when a call that reads and writes `bytes` in all should stream them (bytes > the threshold, which is twice
// the last-level cache unless set; never when the cache size is unknown or PERCEPTLOSS_CPU_STREAMING=0 / false).
bool streams_through_memory(int64_t bytes);

}  // namespace cpu
}  // namespace ops
}  // namespace perceptloss
