// What every per-level kernel source (this folder, compiled once per CPU level with -DCPU_CAPABILITY=<level>)
// shares: the level's name as a string, and the reduced-precision test, in the level's own namespace so that no
// level's copy can be merged with another's at link time.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#ifndef CPU_CAPABILITY
#error "compile the sources of csrc/ops/cpu/kernels with -DCPU_CAPABILITY=<level> (setup.py and CMakeLists.txt do)"
#endif
#define PERCEPTLOSS_STRINGIFY_(x) #x
#define PERCEPTLOSS_STRINGIFY(x) PERCEPTLOSS_STRINGIFY_(x)

namespace perceptloss {
namespace ops {
namespace cpu {
namespace CPU_CAPABILITY {

// float16 and bfloat16: loaded as two float vectors, accumulated in float.
template <typename T>
constexpr bool is_reduced_v = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace ops
}  // namespace perceptloss
