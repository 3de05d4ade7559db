// Inner loops of perceptloss::feature_distance, compiled once per CPU capability level (every source in this
// folder is; see ../feature_distance_kernel.h and cpu_levels.txt): vectorized with at::vec, fp32 accumulation
// (double for double). The norm p (1 or 2) and which gradients are written are template parameters, so the loops
// carry no per-element branch. The per-element math is ../../feature_distance_utils.h, shared with the CUDA
// kernels; here it gets the at::vec primitives (ElementOps specialised for vectors).
#include "../feature_distance_kernel.h"
#include "../../feature_distance_utils.h"

#include "level_common.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

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

// ---------------------------------------------------------------------------------- unit_feature_distance
// One position's L2 norm over its channels as 1 / (norm + eps), the factor that unit-normalises it (norm 0 where
// the squares sum to 0, as perceptloss.functional.unit_normalize).
template <typename acc_t>
inline acc_t inverse_norm(acc_t squares, acc_t eps) {
  const acc_t norm = squares > acc_t(0) ? std::sqrt(squares) : acc_t(0);
  return acc_t(1) / (norm + eps);
}

// sum_c x_c^2 over C contiguous channels.
template <typename scalar_t>
at::opmath_type<scalar_t> sum_of_squares(const scalar_t* x, int64_t C) {
  using acc_t = at::opmath_type<scalar_t>;
  using AccVec = at::vec::Vectorized<acc_t>;
  using Vec = at::vec::Vectorized<scalar_t>;
  AccVec s0(acc_t(0)), s1(acc_t(0));
  int64_t c = 0;
  if constexpr (is_reduced_v<scalar_t>) {
    for (; c + Vec::size() <= C; c += Vec::size()) {
      auto [x0, x1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(x + c));
      s0 = at::vec::fmadd(x0, x0, s0);
      s1 = at::vec::fmadd(x1, x1, s1);
    }
  } else {
    for (; c + 2 * Vec::size() <= C; c += 2 * Vec::size()) {
      const Vec x0 = Vec::loadu(x + c);
      const Vec x1 = Vec::loadu(x + c + Vec::size());
      s0 = at::vec::fmadd(x0, x0, s0);
      s1 = at::vec::fmadd(x1, x1, s1);
    }
  }
  acc_t s = at::vec::vec_reduce_all<acc_t>([](AccVec u, AccVec v) { return u + v; }, s0 + s1);
  for (; c < C; ++c) {
    const acc_t v = static_cast<acc_t>(x[c]);
    s += v * v;
  }
  return s;
}

// sum_c w_c (a_c ia - b_c ib)^2 over C contiguous channels. kSameNorm (ia = ib, as for identical vectors): the
// difference as (a - b) ia, exactly 0 where a = b. Written as a ia - b ib, a fused multiply-add the compiler may
// contract it into rounds one product and not the other, leaving ~1e-16 between identical images.
template <bool kSameNorm, typename scalar_t>
at::opmath_type<scalar_t> weighted_unit_diff(const scalar_t* a, const scalar_t* b, const at::opmath_type<scalar_t>* w,
                                             int64_t C, at::opmath_type<scalar_t> ia, at::opmath_type<scalar_t> ib) {
  using acc_t = at::opmath_type<scalar_t>;
  using AccVec = at::vec::Vectorized<acc_t>;
  using Vec = at::vec::Vectorized<scalar_t>;
  const auto diff = [](auto x, auto y, auto ix, auto iy) {
    if constexpr (kSameNorm) {
      return (x - y) * ix;
    } else {
      return x * ix - y * iy;
    }
  };
  const AccVec iav(ia), ibv(ib);
  AccVec s0(acc_t(0)), s1(acc_t(0));
  int64_t c = 0;
  if constexpr (is_reduced_v<scalar_t>) {
    for (; c + Vec::size() <= C; c += Vec::size()) {
      auto [a0, a1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(a + c));
      auto [b0, b1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(b + c));
      const AccVec d0 = diff(a0, b0, iav, ibv);
      const AccVec d1 = diff(a1, b1, iav, ibv);
      s0 = at::vec::fmadd(AccVec::loadu(w + c) * d0, d0, s0);
      s1 = at::vec::fmadd(AccVec::loadu(w + c + AccVec::size()) * d1, d1, s1);
    }
  } else {
    for (; c + Vec::size() <= C; c += Vec::size()) {
      const Vec d = diff(Vec::loadu(a + c), Vec::loadu(b + c), iav, ibv);
      s0 = at::vec::fmadd(Vec::loadu(w + c) * d, d, s0);
    }
  }
  acc_t s = at::vec::vec_reduce_all<acc_t>([](AccVec u, AccVec v) { return u + v; }, s0 + s1);
  for (; c < C; ++c) {
    const acc_t d = diff(static_cast<acc_t>(a[c]), static_cast<acc_t>(b[c]), ia, ib);
    s += w[c] * d * d;
  }
  return s;
}

// Channels contiguous (channels_last, or one position): both passes over a position's channels stay in L1.
template <typename scalar_t>
double unit_diff_sum_channels_last(const scalar_t* a, const scalar_t* b, const at::opmath_type<scalar_t>* w,
                                   int64_t C, int64_t positions, int64_t position_stride,
                                   at::opmath_type<scalar_t> eps) {
  double total = 0.0;
  for (int64_t p = 0; p < positions; ++p) {
    const scalar_t* pa = a + p * position_stride;
    const scalar_t* pb = b + p * position_stride;
    const auto ia = inverse_norm(sum_of_squares(pa, C), eps);
    const auto ib = inverse_norm(sum_of_squares(pb, C), eps);
    total += static_cast<double>(ia == ib ? weighted_unit_diff<true>(pa, pb, w, C, ia, ib)
                                          : weighted_unit_diff<false>(pa, pb, w, C, ia, ib));
  }
  return total;
}

// Positions contiguous (NCHW): tiles of kTile positions, the channel loops run across a tile's positions (both
// passes over a tile's C x kTile values come from the caches).
template <typename scalar_t>
double unit_diff_sum_positions(const scalar_t* a, const scalar_t* b, const at::opmath_type<scalar_t>* w, int64_t C,
                               int64_t channel_stride, int64_t positions, at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kTile = 64;
  double total = 0.0;
  for (int64_t p0 = 0; p0 < positions; p0 += kTile) {
    const int64_t n = std::min(kTile, positions - p0);
    acc_t sa[kTile] = {}, sb[kTile] = {}, acc[kTile] = {};
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* ra = a + c * channel_stride + p0;
      const scalar_t* rb = b + c * channel_stride + p0;
      for (int64_t t = 0; t < n; ++t) {
        const acc_t va = static_cast<acc_t>(ra[t]);
        const acc_t vb = static_cast<acc_t>(rb[t]);
        sa[t] += va * va;
        sb[t] += vb * vb;
      }
    }
    for (int64_t t = 0; t < n; ++t) {
      sa[t] = inverse_norm(sa[t], eps);
      sb[t] = inverse_norm(sb[t], eps);
    }
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* ra = a + c * channel_stride + p0;
      const scalar_t* rb = b + c * channel_stride + p0;
      const acc_t wc = w[c];
      for (int64_t t = 0; t < n; ++t) {
        const acc_t va = static_cast<acc_t>(ra[t]);
        const acc_t vb = static_cast<acc_t>(rb[t]);
        const acc_t d = sa[t] == sb[t] ? (va - vb) * sa[t] : va * sa[t] - vb * sb[t];  // as weighted_unit_diff
        acc[t] += wc * d * d;
      }
    }
    for (int64_t t = 0; t < n; ++t) {
      total += static_cast<double>(acc[t]);
    }
  }
  return total;
}

// 1 / |x| for the normalisation's Jacobian (0 where the squares sum to 0: that term's factor u(x) is 0 there).
template <typename acc_t>
inline acc_t inverse_norm_or_zero(acc_t squares) {
  return squares > acc_t(0) ? acc_t(1) / std::sqrt(squares) : acc_t(0);
}

// The gradient at one position whose C channels are contiguous (three passes over them, from L1): the norms,
// the dot products sum_c t u(a) and sum_c t u(b), then the writes. kSameNorm as weighted_unit_diff's.
template <bool kSameNorm, typename scalar_t>
void unit_diff_grad_channels(const scalar_t* a, const scalar_t* b, const at::opmath_type<scalar_t>* w, int64_t C,
                             at::opmath_type<scalar_t> ia, at::opmath_type<scalar_t> ib,
                             at::opmath_type<scalar_t> ra, at::opmath_type<scalar_t> rb,
                             at::opmath_type<scalar_t> k, scalar_t* ga, scalar_t* gb) {
  using acc_t = at::opmath_type<scalar_t>;
  using AccVec = at::vec::Vectorized<acc_t>;
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t kAcc = AccVec::size();
  // t = k w (u(a) - u(b)) for the channels [c, c + kAcc), as vectors, from float/double values
  const auto t_of = [&](auto va, auto vb, auto iav, auto ibv, auto kw) {
    if constexpr (kSameNorm) {
      return kw * ((va - vb) * iav);
    } else {
      return kw * (va * iav - vb * ibv);
    }
  };
  const AccVec iav(ia), ibv(ib), kv(k);
  // Loads kAcc channels of x from c as accumulation-type vectors (a reduced vector holds two of them).
  const auto load = [](const scalar_t* x, int64_t c, AccVec& lo, AccVec& hi, bool two) {
    if constexpr (is_reduced_v<scalar_t>) {
      std::tie(lo, hi) = at::vec::convert_to_float<scalar_t>(Vec::loadu(x + c));
    } else {
      lo = AccVec::loadu(x + c);
      if (two) hi = AccVec::loadu(x + c + kAcc);
    }
  };
  constexpr int64_t kStep = 2 * kAcc;  // one reduced vector, or two accumulation vectors
  AccVec da(acc_t(0)), db(acc_t(0));
  int64_t c = 0;
  for (; c + kStep <= C; c += kStep) {
    AccVec a0, a1, b0, b1;
    load(a, c, a0, a1, true);
    load(b, c, b0, b1, true);
    const AccVec t0 = t_of(a0, b0, iav, ibv, kv * AccVec::loadu(w + c));
    const AccVec t1 = t_of(a1, b1, iav, ibv, kv * AccVec::loadu(w + c + kAcc));
    da = at::vec::fmadd(t0, a0, at::vec::fmadd(t1, a1, da));
    db = at::vec::fmadd(t0, b0, at::vec::fmadd(t1, b1, db));
  }
  acc_t dot_a = at::vec::vec_reduce_all<acc_t>([](AccVec u, AccVec v) { return u + v; }, da);
  acc_t dot_b = at::vec::vec_reduce_all<acc_t>([](AccVec u, AccVec v) { return u + v; }, db);
  for (int64_t r = c; r < C; ++r) {
    const acc_t va = static_cast<acc_t>(a[r]), vb = static_cast<acc_t>(b[r]);
    const acc_t t = t_of(va, vb, ia, ib, k * w[r]);
    dot_a += t * va;
    dot_b += t * vb;
  }
  // sum_c t u(x) / |x| times u(x) = x * (dot * ia * ra) for a (ib * rb for b); the dots above are sums of t x
  const acc_t ca = dot_a * ia * ia * ra, cb = dot_b * ib * ib * rb;
  const AccVec cav(ca), cbv(cb);
  for (c = 0; c + kStep <= C; c += kStep) {
    AccVec a0, a1, b0, b1;
    load(a, c, a0, a1, true);
    load(b, c, b0, b1, true);
    const AccVec t0 = t_of(a0, b0, iav, ibv, kv * AccVec::loadu(w + c));
    const AccVec t1 = t_of(a1, b1, iav, ibv, kv * AccVec::loadu(w + c + kAcc));
    const AccVec ga0 = t0 * iav - a0 * cav, ga1 = t1 * iav - a1 * cav;
    const AccVec gb0 = b0 * cbv - t0 * ibv, gb1 = b1 * cbv - t1 * ibv;
    if constexpr (is_reduced_v<scalar_t>) {
      if (ga) at::vec::convert_from_float<scalar_t>(ga0, ga1).store(ga + c);
      if (gb) at::vec::convert_from_float<scalar_t>(gb0, gb1).store(gb + c);
    } else {
      if (ga) { ga0.store(ga + c); ga1.store(ga + c + kAcc); }
      if (gb) { gb0.store(gb + c); gb1.store(gb + c + kAcc); }
    }
  }
  for (; c < C; ++c) {
    const acc_t va = static_cast<acc_t>(a[c]), vb = static_cast<acc_t>(b[c]);
    const acc_t t = t_of(va, vb, ia, ib, k * w[c]);
    if (ga) ga[c] = static_cast<scalar_t>(t * ia - va * ca);
    if (gb) gb[c] = static_cast<scalar_t>(vb * cb - t * ib);
  }
}

template <typename scalar_t>
void unit_diff_grad_position(const scalar_t* a, const scalar_t* b, const at::opmath_type<scalar_t>* w, int64_t C,
                             at::opmath_type<scalar_t> eps, at::opmath_type<scalar_t> k, scalar_t* ga, scalar_t* gb) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t sa = sum_of_squares(a, C), sb = sum_of_squares(b, C);
  const acc_t ia = inverse_norm(sa, eps), ib = inverse_norm(sb, eps);
  const acc_t ra = inverse_norm_or_zero(sa), rb = inverse_norm_or_zero(sb);
  if (ia == ib) {
    unit_diff_grad_channels<true>(a, b, w, C, ia, ib, ra, rb, k, ga, gb);
  } else {
    unit_diff_grad_channels<false>(a, b, w, C, ia, ib, ra, rb, k, ga, gb);
  }
}

template <typename scalar_t>
void unit_diff_grad_typed(const scalar_t* a, const scalar_t* b, const at::opmath_type<scalar_t>* w, int64_t C,
                          int64_t channel_stride, int64_t positions, int64_t position_stride,
                          at::opmath_type<scalar_t> eps, at::opmath_type<scalar_t> k, scalar_t* ga, scalar_t* gb) {
  if (channel_stride == 1) {
    for (int64_t p = 0; p < positions; ++p) {
      const int64_t o = p * position_stride;
      unit_diff_grad_position(a + o, b + o, w, C, eps, k, ga ? ga + o : nullptr, gb ? gb + o : nullptr);
    }
    return;
  }
  // Positions contiguous (NCHW): gather one position's channels into a buffer, compute, scatter.
  TORCH_CHECK(position_stride == 1, "unit_feature_distance: channels or positions must be contiguous");
  std::vector<scalar_t> buf(static_cast<size_t>(4 * C));
  scalar_t *pa = buf.data(), *pb = pa + C, *qa = pb + C, *qb = qa + C;
  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t c = 0; c < C; ++c) {
      pa[c] = a[c * channel_stride + p];
      pb[c] = b[c * channel_stride + p];
    }
    unit_diff_grad_position(pa, pb, w, C, eps, k, ga ? qa : nullptr, gb ? qb : nullptr);
    for (int64_t c = 0; c < C; ++c) {
      if (ga) ga[c * channel_stride + p] = qa[c];
      if (gb) gb[c * channel_stride + p] = qb[c];
    }
  }
}

void unit_diff_grad_any(c10::ScalarType dtype, const void* a, const void* b, const void* w, int64_t channels,
                        int64_t channel_stride, int64_t positions, int64_t position_stride, double eps, double k,
                        void* ga, void* gb) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "unit_feature_distance_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    unit_diff_grad_typed(static_cast<const scalar_t*>(a), static_cast<const scalar_t*>(b),
                         static_cast<const acc_t*>(w), channels, channel_stride, positions, position_stride,
                         static_cast<acc_t>(eps), static_cast<acc_t>(k), static_cast<scalar_t*>(ga),
                         static_cast<scalar_t*>(gb));
  });
}

double unit_diff_sum_any(c10::ScalarType dtype, const void* a, const void* b, const void* w, int64_t channels,
                         int64_t channel_stride, int64_t positions, int64_t position_stride, double eps) {
  double sum = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "unit_feature_distance_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto* pa = static_cast<const scalar_t*>(a);
    auto* pb = static_cast<const scalar_t*>(b);
    auto* pw = static_cast<const acc_t*>(w);
    const auto e = static_cast<acc_t>(eps);
    if (channel_stride == 1) {
      sum = unit_diff_sum_channels_last(pa, pb, pw, channels, positions, position_stride, e);
    } else {
      TORCH_CHECK(position_stride == 1, "unit_feature_distance: channels or positions must be contiguous");
      sum = unit_diff_sum_positions(pa, pb, pw, channels, channel_stride, positions, e);
    }
  });
  return sum;
}

// ------------------------------------------------------------------------------------------ paired_moments
// Calls block(o, x_vec, y_vec) for each vector-wide block of channels starting at o and tail(c, x, y) for each
// remaining channel, at every position of a channels-contiguous run, with the values in the accumulation type.
template <typename scalar_t, typename Block, typename Tail>
void for_each_channel(const scalar_t* x, const scalar_t* y, int64_t C, int64_t positions, int64_t position_stride,
                      Block&& block, Tail&& tail) {
  using acc_t = at::opmath_type<scalar_t>;
  using AccVec = at::vec::Vectorized<acc_t>;
  using Vec = at::vec::Vectorized<scalar_t>;
  for (int64_t p = 0; p < positions; ++p) {
    const scalar_t* px = x + p * position_stride;
    const scalar_t* py = y + p * position_stride;
    int64_t c = 0;
    if constexpr (is_reduced_v<scalar_t>) {  // one reduced vector: two accumulation vectors
      for (; c + Vec::size() <= C; c += Vec::size()) {
        auto [x0, x1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(px + c));
        auto [y0, y1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(py + c));
        block(c, x0, y0);
        block(c + AccVec::size(), x1, y1);
      }
    } else {
      for (; c + AccVec::size() <= C; c += AccVec::size()) {
        block(c, AccVec::loadu(px + c), AccVec::loadu(py + c));
      }
    }
    for (; c < C; ++c) {
      tail(c, static_cast<acc_t>(px[c]), static_cast<acc_t>(py[c]));
    }
  }
}

// Channels contiguous (channels_last): one accumulator per channel (vectorised over channels); pass 1 the sums,
// pass 2 the centred squares and cross products around this run's means (the run is in cache).
template <typename scalar_t>
void paired_moment_sums_channels_last(const scalar_t* x, const scalar_t* y, int64_t C, int64_t positions,
                                      int64_t position_stride, at::opmath_type<scalar_t>* out) {
  using acc_t = at::opmath_type<scalar_t>;
  using AccVec = at::vec::Vectorized<acc_t>;
  acc_t *sx = out, *sy = out + C, *mx2 = out + 2 * C, *my2 = out + 3 * C, *cxy = out + 4 * C;
  std::fill(out, out + 5 * C, acc_t(0));
  for_each_channel(
      x, y, C, positions, position_stride,
      [&](int64_t o, const AccVec& vx, const AccVec& vy) {
        (AccVec::loadu(sx + o) + vx).store(sx + o);
        (AccVec::loadu(sy + o) + vy).store(sy + o);
      },
      [&](int64_t c, acc_t vx, acc_t vy) {
        sx[c] += vx;
        sy[c] += vy;
      });
  const acc_t inv = acc_t(1) / static_cast<acc_t>(positions);
  std::vector<acc_t> means(static_cast<size_t>(2 * C));
  for (int64_t c = 0; c < C; ++c) {
    means[c] = sx[c] * inv;
    means[C + c] = sy[c] * inv;
  }
  const acc_t *mx = means.data(), *my = means.data() + C;
  for_each_channel(
      x, y, C, positions, position_stride,
      [&](int64_t o, const AccVec& vx, const AccVec& vy) {
        const AccVec dx = vx - AccVec::loadu(mx + o), dy = vy - AccVec::loadu(my + o);
        at::vec::fmadd(dx, dx, AccVec::loadu(mx2 + o)).store(mx2 + o);
        at::vec::fmadd(dy, dy, AccVec::loadu(my2 + o)).store(my2 + o);
        at::vec::fmadd(dx, dy, AccVec::loadu(cxy + o)).store(cxy + o);
      },
      [&](int64_t c, acc_t vx, acc_t vy) {
        const acc_t dx = vx - mx[c], dy = vy - my[c];
        mx2[c] += dx * dx;
        my2[c] += dy * dy;
        cxy[c] += dx * dy;
      });
}

// Positions contiguous (NCHW): each channel's run of positions is contiguous.
template <typename scalar_t>
void paired_moment_sums_positions(const scalar_t* x, const scalar_t* y, int64_t C, int64_t channel_stride,
                                  int64_t positions, at::opmath_type<scalar_t>* out) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* px = x + c * channel_stride;
    const scalar_t* py = y + c * channel_stride;
    acc_t sx = 0, sy = 0;
    for (int64_t p = 0; p < positions; ++p) {
      sx += static_cast<acc_t>(px[p]);
      sy += static_cast<acc_t>(py[p]);
    }
    const acc_t mx = sx / static_cast<acc_t>(positions), my = sy / static_cast<acc_t>(positions);
    acc_t mx2 = 0, my2 = 0, cxy = 0;
    for (int64_t p = 0; p < positions; ++p) {
      const acc_t dx = static_cast<acc_t>(px[p]) - mx, dy = static_cast<acc_t>(py[p]) - my;
      mx2 += dx * dx;
      my2 += dy * dy;
      cxy += dx * dy;
    }
    out[c] = sx;
    out[C + c] = sy;
    out[2 * C + c] = mx2;
    out[3 * C + c] = my2;
    out[4 * C + c] = cxy;
  }
}

void paired_moment_sums_any(c10::ScalarType dtype, const void* x, const void* y, int64_t channels,
                            int64_t channel_stride, int64_t positions, int64_t position_stride, void* out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "paired_moments_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto* px = static_cast<const scalar_t*>(x);
    auto* py = static_cast<const scalar_t*>(y);
    auto* o = static_cast<acc_t*>(out);
    if (channel_stride == 1) {
      paired_moment_sums_channels_last(px, py, channels, positions, position_stride, o);
    } else {
      TORCH_CHECK(position_stride == 1, "paired_moments: channels or positions must be contiguous");
      paired_moment_sums_positions(px, py, channels, channel_stride, positions, o);
    }
  });
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
const KernelTable kernels = {PERCEPTLOSS_STRINGIFY(CPU_CAPABILITY), &diff_norm_sum_any, &scaled_diff_any,
                             &unit_diff_sum_any, &unit_diff_grad_any, &paired_moment_sums_any};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace ops
}  // namespace perceptloss
