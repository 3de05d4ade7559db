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
  // perceptloss::unit_feature_distance: over `positions` positions of one sample, the sum of
  // sum_c w_c (a_c / (|a| + eps) - b_c / (|b| + eps))^2, |.| the L2 norm over the `channels` channels at the position
  // (0 where all are 0). Element (c, p) is at c * channel_stride + p * position_stride (channels_last:
  // 1 and C; contiguous: H*W and 1). `w`: C weights in the accumulation type (float; double for double).
  double (*unit_diff_sum)(c10::ScalarType dtype, const void* a, const void* b, const void* w, int64_t channels,
                          int64_t channel_stride, int64_t positions, int64_t position_stride, double eps);
  // Its gradients over the same positions, for k = 2 w_l g / P: with u(x) = x / (|x| + eps) and
  // t_c = k w_c (u(a)_c - u(b)_c), ga = t / (|a| + eps) - u(a) sum_c(t u(a)) / |a| and
  // gb = u(b) sum_c(t u(b)) / |b| - t / (|b| + eps) (the 1 / |x| terms 0 where |x| = 0); ga or gb may be nullptr
  // and have a's strides.
  void (*unit_diff_grad)(c10::ScalarType dtype, const void* a, const void* b, const void* w, int64_t channels,
                         int64_t channel_stride, int64_t positions, int64_t position_stride, double eps, double k,
                         void* ga, void* gb);
  // perceptloss::paired_moments over `positions` positions of one sample: per channel c, into out[k * C + c] (the
  // accumulation type, float or double), k = 0..4: sum x, sum y, and around this run's own means m the sums of
  // (x - m_x)^2, (y - m_y)^2 and (x - m_x)(y - m_y) (runs merge by Chan et al.'s formula). Strides as
  // unit_diff_sum's.
  void (*paired_moment_sums)(c10::ScalarType dtype, const void* x, const void* y, int64_t channels,
                             int64_t channel_stride, int64_t positions, int64_t position_stride, void* out);
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
