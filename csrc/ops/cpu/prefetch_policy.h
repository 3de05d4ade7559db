// When the CPU forward prefetches its inputs with a non-temporal hint: only when what one call reads is well
// beyond the last-level cache, i.e. when the inputs come from memory. Streams from memory then run 2-11% faster
// (the hint keeps the lines out of the caches' replacement); on inputs that fit the cache the hint costs up to
// 10% (measured on an AMD Zen 5, 32 MiB L3; see prefetch_policy.cpp).
#pragma once

#include <cstdint>

namespace perceptloss {
namespace ops {
namespace cpu {

// Bytes of the last-level data cache one core of this machine uses (Linux sysfs), 0 when unknown.
int64_t last_level_cache_bytes();

// True when a forward reading `bytes` of input should prefetch them (bytes > the threshold, which is twice the
// last-level cache unless set; never when the cache size is unknown or PERCEPTLOSS_CPU_PREFETCH=0).
bool prefetch_inputs(int64_t bytes);

}  // namespace cpu
}  // namespace ops
}  // namespace perceptloss
