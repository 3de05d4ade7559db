// The inner loops of perceptloss::relu_backward and perceptloss::max_pool2x2_relu_backward on the CPU, compiled once
// per CPU capability level like the feature distance's (see feature_distance_kernel.h and kernels/cpu_levels.txt).
// Raw pointers and plain numbers only; cpu_dispatch.h picks the table of the level in use.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace perceptloss {
namespace ops {
namespace cpu {

struct ReluKernelTable {
  const char* level;
  // out = g + g2 where y > 0, else 0 (threshold_backward's rule: 0 where y <= 0), over len elements; g2 may be
  // nullptr (then out = g where y > 0). The sum is rounded once to the dtype, as an add of the two would be.
  void (*relu_backward)(c10::ScalarType dtype, const void* y, const void* g, const void* g2, void* out, int64_t len);
  // The gradient of relu's input through max_pool2d(y, 2, 2) of y = relu(input), channels-last (N, H, W, C) dense
  // y and out, g (N, OH, OW, C) dense with OH = H / 2, OW = W / 2 (floor): for output rows r in [r0, r1) (r = n * OH
  // + oh) each window's first maximum in row-major order gets g where that maximum is > 0; every other element of
  // the window's rows, the odd last column and, with the image's last output row, the odd last row get 0.
  void (*pool_backward_channels_last)(c10::ScalarType dtype, const void* y, const void* g, void* out, int64_t c,
                                      int64_t h, int64_t w, int64_t r0, int64_t r1);
  // The same for contiguous (N, C, H, W) tensors, over planes p in [p0, p1) (p = n * C + c).
  void (*pool_backward_contiguous)(c10::ScalarType dtype, const void* y, const void* g, void* out, int64_t h,
                                   int64_t w, int64_t p0, int64_t p1);
  // max_pool2d(x, 2, 2) forward (NaN propagates, as ATen's): channels-last over output rows [r0, r1), contiguous
  // over planes [p0, p1), as the backward kernels.
  void (*pool_forward_channels_last)(c10::ScalarType dtype, const void* x, void* out, int64_t c, int64_t h,
                                     int64_t w, int64_t r0, int64_t r1);
  void (*pool_forward_contiguous)(c10::ScalarType dtype, const void* x, void* out, int64_t h, int64_t w, int64_t p0,
                                  int64_t p1);
  // DISTS' L2 pooling, channels-last (N, H, W, C) x and (N, OH, OW, C) out, OH = ceil(H / 2), OW = ceil(W / 2):
  // out = sqrt(sum of window[i][j] * x^2 over the 3x3 window at (2 oh - 1, 2 ow - 1), zero padding, + 1e-12),
  // squares and sums in float (double for double), over output rows [r0, r1) (r = n * OH + oh).
  void (*l2_pool3x3_channels_last)(c10::ScalarType dtype, const void* x, void* out, const double* window, int64_t c,
                                   int64_t h, int64_t w, int64_t r0, int64_t r1);
};

namespace DEFAULT {
extern const ReluKernelTable relu_kernels;
}
#ifdef PERCEPTLOSS_HAVE_AVX2_KERNELS
namespace AVX2 {
extern const ReluKernelTable relu_kernels;
}
#endif
#ifdef PERCEPTLOSS_HAVE_AVX512_KERNELS
namespace AVX512 {
extern const ReluKernelTable relu_kernels;
}
#endif

}  // namespace cpu
}  // namespace ops
}  // namespace perceptloss
