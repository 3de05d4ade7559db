// Inner loops of perceptloss::feature_distance, compiled once per CPU capability level (every source in this
// folder is; see ../feature_distance_kernel.h and cpu_levels.txt): vectorized with at::vec, fp32 accumulation
// (double for double). The norm p (1 or 2) and which gradients are written are template parameters, so the loops
// carry no per-element branch. The per-element math is ../../feature_distance_utils.h, shared with the CUDA
// kernels; here it gets the at::vec primitives (ElementOps specialised for vectors).
#include "../feature_distance_kernel.h"
#include "../../feature_distance_utils.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>
#include <cstdint>

#ifndef CPU_CAPABILITY
#error "compile feature_distance_kernel.cpp with -DCPU_CAPABILITY=<level> (setup.py and CMakeLists.txt do)"
#endif
#define PERCEPTLOSS_STRINGIFY_(x) #x
#define PERCEPTLOSS_STRINGIFY(x) PERCEPTLOSS_STRINGIFY_(x)

namespace perceptloss {
namespace ops {
namespace math {
inline namespace PERCEPTLOSS_MATH_NS {

// The math's primitives for at::vec vectors of this level.
template <typename T>
struct ElementOps<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static inline V abs(const V& d) { return d.abs(); }
  static inline V sign(const V& d) {
    const V zero(0);
    return d.gt(zero) - d.lt(zero);  // gt/lt give 1.0 where true, 0.0 elsewhere
  }
  static inline V fmadd(const V& x, const V& y, const V& acc) { return at::vec::fmadd(x, y, acc); }
};

}  // namespace PERCEPTLOSS_MATH_NS
}  // namespace math

namespace cpu {
namespace CPU_CAPABILITY {
namespace {

template <typename T>
constexpr bool is_reduced_v = std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>;

using math::add_norm_term;
using math::grad_term;
using math::norm_term;

// sum(|a - b|^P) over len elements, accumulated in opmath (float, or double for double).
template <typename scalar_t, int P>
double diff_norm_sum(const scalar_t* a, const scalar_t* b, int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  using AccVec = at::vec::Vectorized<acc_t>;
  using Vec = at::vec::Vectorized<scalar_t>;
  AccVec s0(acc_t(0)), s1(acc_t(0)), s2(acc_t(0)), s3(acc_t(0));
  int64_t i = 0;
  if constexpr (is_reduced_v<scalar_t>) {
    // One reduced-precision vector holds 2 float vectors' worth: two loads give four independent chains.
    for (; i + 2 * Vec::size() <= len; i += 2 * Vec::size()) {
      auto [a0, a1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(a + i));
      auto [b0, b1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(b + i));
      auto [a2, a3] = at::vec::convert_to_float<scalar_t>(Vec::loadu(a + i + Vec::size()));
      auto [b2, b3] = at::vec::convert_to_float<scalar_t>(Vec::loadu(b + i + Vec::size()));
      s0 = add_norm_term<P>(a0 - b0, s0);
      s1 = add_norm_term<P>(a1 - b1, s1);
      s2 = add_norm_term<P>(a2 - b2, s2);
      s3 = add_norm_term<P>(a3 - b3, s3);
    }
  } else {
    for (; i + 4 * Vec::size() <= len; i += 4 * Vec::size()) {
      s0 = add_norm_term<P>(Vec::loadu(a + i) - Vec::loadu(b + i), s0);
      s1 = add_norm_term<P>(Vec::loadu(a + i + Vec::size()) - Vec::loadu(b + i + Vec::size()), s1);
      s2 = add_norm_term<P>(Vec::loadu(a + i + 2 * Vec::size()) - Vec::loadu(b + i + 2 * Vec::size()), s2);
      s3 = add_norm_term<P>(Vec::loadu(a + i + 3 * Vec::size()) - Vec::loadu(b + i + 3 * Vec::size()), s3);
    }
  }
  acc_t sum = at::vec::vec_reduce_all<acc_t>([](AccVec x, AccVec y) { return x + y; }, (s0 + s1) + (s2 + s3));
  for (; i < len; ++i) {
    sum += norm_term<P>(static_cast<acc_t>(a[i]) - static_cast<acc_t>(b[i]));
  }
  return static_cast<double>(sum);
}

// ga = s * grad_term(a - b) (when kA) and gb = -ga (when kB), over len elements.
template <typename scalar_t, int P, bool kA, bool kB>
void scaled_diff_impl(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, scalar_t* __restrict__ ga,
                      scalar_t* __restrict__ gb, at::opmath_type<scalar_t> s, int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  using AccVec = at::vec::Vectorized<acc_t>;
  using Vec = at::vec::Vectorized<scalar_t>;
  const AccVec sv(s);
  const AccVec neg(-s);
  int64_t i = 0;
  for (; i + Vec::size() <= len; i += Vec::size()) {
    if constexpr (is_reduced_v<scalar_t>) {
      auto [a0, a1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(a + i));
      auto [b0, b1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(b + i));
      const AccVec t0 = grad_term<P>(a0 - b0);
      const AccVec t1 = grad_term<P>(a1 - b1);
      if constexpr (kA) at::vec::convert_from_float<scalar_t>(t0 * sv, t1 * sv).store(ga + i);
      if constexpr (kB) at::vec::convert_from_float<scalar_t>(t0 * neg, t1 * neg).store(gb + i);
    } else {
      const Vec t = grad_term<P>(Vec::loadu(a + i) - Vec::loadu(b + i));
      if constexpr (kA) (t * sv).store(ga + i);
      if constexpr (kB) (t * neg).store(gb + i);
    }
  }
  for (; i < len; ++i) {
    const acc_t t = grad_term<P>(static_cast<acc_t>(a[i]) - static_cast<acc_t>(b[i]));
    if constexpr (kA) ga[i] = static_cast<scalar_t>(t * s);
    if constexpr (kB) gb[i] = static_cast<scalar_t>(t * -s);
  }
}

template <typename scalar_t, int P>
void scaled_diff_typed(const void* a, const void* b, void* ga, void* gb, double s, int64_t len) {
  auto* pa = static_cast<const scalar_t*>(a);
  auto* pb = static_cast<const scalar_t*>(b);
  auto* qa = static_cast<scalar_t*>(ga);
  auto* qb = static_cast<scalar_t*>(gb);
  const auto sc = static_cast<at::opmath_type<scalar_t>>(s);
  if (qa && qb) {
    scaled_diff_impl<scalar_t, P, true, true>(pa, pb, qa, qb, sc, len);
  } else if (qa) {
    scaled_diff_impl<scalar_t, P, true, false>(pa, pb, qa, qb, sc, len);
  } else if (qb) {
    scaled_diff_impl<scalar_t, P, false, true>(pa, pb, qa, qb, sc, len);
  }
}

double diff_norm_sum_any(c10::ScalarType dtype, int64_t p, const void* a, const void* b, int64_t len) {
  double sum = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "feature_distance_cpu", [&] {
    auto* pa = static_cast<const scalar_t*>(a);
    auto* pb = static_cast<const scalar_t*>(b);
    sum = p == 1 ? diff_norm_sum<scalar_t, 1>(pa, pb, len) : diff_norm_sum<scalar_t, 2>(pa, pb, len);
  });
  return sum;
}

void scaled_diff_any(c10::ScalarType dtype, int64_t p, const void* a, const void* b, void* ga, void* gb, double s,
                     int64_t len) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "feature_distance_backward_cpu", [&] {
    if (p == 1) {
      scaled_diff_typed<scalar_t, 1>(a, b, ga, gb, s, len);
    } else {
      scaled_diff_typed<scalar_t, 2>(a, b, ga, gb, s, len);
    }
  });
}

}  // namespace

extern const KernelTable kernels;
const KernelTable kernels = {PERCEPTLOSS_STRINGIFY(CPU_CAPABILITY), &diff_norm_sum_any, &scaled_diff_any};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace ops
}  // namespace perceptloss
