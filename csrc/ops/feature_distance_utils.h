// The per-element math of perceptloss::feature_distance, defined once for the CPU and the CUDA kernels (as
// torchvision's ops/*_utils.h): the norm term |d|^p and its derivative, for d = a - b in the accumulation type.
//
//   p = 2: norm_term(d) = d^2,  grad_term(d) = d         (the derivative is 2 d: the factor p is in the scale)
//   p = 1: norm_term(d) = |d|,  grad_term(d) = sign(d)   (sign(0) = 0: the subgradient 0 where a = b)
//
// The functions are templates over the value type T. For scalars (float, double: both backends' scalar loops and
// every CUDA thread) the primitives are ElementOps<T> below; the CPU kernels specialise ElementOps for at::vec
// vectors (feature_distance_kernel.cpp), so the vector loops run the same formulas.
//
// Code compiled once per CPU level includes this header: the functions live in an inline namespace named after
// the level (as ATen's CPU_CAPABILITY namespaces), so no level's copy can be merged with another's at link time.
#pragma once

#include <c10/macros/Macros.h>

#ifndef HOST_DEVICE
#define HOST_DEVICE C10_HOST_DEVICE
#endif

#ifdef CPU_CAPABILITY
#define PERCEPTLOSS_MATH_NS CPU_CAPABILITY
#else
#define PERCEPTLOSS_MATH_NS generic
#endif

namespace perceptloss {
namespace ops {
namespace math {
inline namespace PERCEPTLOSS_MATH_NS {

// The primitives for one value type: scalars here; vector types specialise it.
template <typename T>
struct ElementOps {
  static HOST_DEVICE inline T abs(T d) { return d < T(0) ? -d : d; }
  static HOST_DEVICE inline T sign(T d) { return static_cast<T>(d > T(0)) - static_cast<T>(d < T(0)); }
  static HOST_DEVICE inline T fmadd(T x, T y, T acc) { return x * y + acc; }
};

// |d|^P for P = 1 or 2.
template <int P, typename T>
HOST_DEVICE inline T norm_term(T d) {
  static_assert(P == 1 || P == 2, "feature_distance: p is 1 or 2");
  if constexpr (P == 1) {
    return ElementOps<T>::abs(d);
  } else {
    return d * d;
  }
}

// acc + |d|^P (one fused multiply-add for P = 2).
template <int P, typename T>
HOST_DEVICE inline T add_norm_term(T d, T acc) {
  if constexpr (P == 1) {
    return acc + ElementOps<T>::abs(d);
  } else {
    return ElementOps<T>::fmadd(d, d, acc);
  }
}

// d/dd |d|^P up to the constant factor P: d (P = 2) or sign(d) (P = 1).
template <int P, typename T>
HOST_DEVICE inline T grad_term(T d) {
  static_assert(P == 1 || P == 2, "feature_distance: p is 1 or 2");
  if constexpr (P == 1) {
    return ElementOps<T>::sign(d);
  } else {
    return d;
  }
}

}  // namespace PERCEPTLOSS_MATH_NS
}  // namespace math
}  // namespace ops
}  // namespace perceptloss
