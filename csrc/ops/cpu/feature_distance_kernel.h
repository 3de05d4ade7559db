// The inner loops of perceptloss::feature_distance on the CPU, compiled once per CPU capability level.
//
// As ATen does for its native/cpu kernels, every source in kernels/ is compiled several times: once per level
// (kernels/cpu_levels.txt: DEFAULT, AVX2, AVX512 on x86-64; DEFAULT elsewhere), each with that level's flags and
// CPU_CAPABILITY=<level> and CPU_CAPABILITY_<level> defined, so that at::vec uses the level's vector registers.
// Each compilation defines `perceptloss::ops::cpu::<level>::kernels`; cpu_dispatch.h picks one at run time.
//
// The kernels see raw pointers and plain numbers only (no at::Tensor): code compiled with AVX-512 flags must not
// emit shared inline functions that default-level code could end up calling.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace perceptloss {
namespace ops {
namespace cpu {

struct KernelTable {
  const char* level;  // "DEFAULT", "AVX2", "AVX512"
  // sum over len elements of |a - b|^p (p = 1 or 2), accumulated in float (double for double) within the call.
  double (*diff_norm_sum)(c10::ScalarType dtype, int64_t p, const void* a, const void* b, int64_t len);
  // ga = s * (a - b) (p = 2) or s * sign(a - b) (p = 1), gb = -ga, over len elements; ga or gb may be nullptr.
  void (*scaled_diff)(c10::ScalarType dtype, int64_t p, const void* a, const void* b, void* ga, void* gb, double s,
                      int64_t len);
};

namespace DEFAULT {
extern const KernelTable kernels;
}
#ifdef PERCEPTLOSS_HAVE_AVX2_KERNELS
namespace AVX2 {
extern const KernelTable kernels;
}
#endif
#ifdef PERCEPTLOSS_HAVE_AVX512_KERNELS
namespace AVX512 {
extern const KernelTable kernels;
}
#endif

}  // namespace cpu
}  // namespace ops
}  // namespace perceptloss
