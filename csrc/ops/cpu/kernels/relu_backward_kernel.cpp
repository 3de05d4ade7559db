// Inner loops of perceptloss::relu_backward and perceptloss::max_pool2x2_relu_backward, compiled once per CPU
// capability level (every source in this folder is; see ../relu_backward_kernel.h and cpu_levels.txt). Vectorized
// with at::vec; reduced-precision values are compared and summed in float and rounded once, as ATen's ops do.
#include "../relu_backward_kernel.h"

#include "level_common.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace perceptloss {
namespace ops {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

// ---------------------------------------------------------------------------------------------- relu_backward

template <typename scalar_t, bool kTwo>
void relu_backward_impl(const scalar_t* __restrict__ y, const scalar_t* __restrict__ g,
                        const scalar_t* __restrict__ g2, scalar_t* __restrict__ out, int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  using AccVec = at::vec::Vectorized<acc_t>;
  using Vec = at::vec::Vectorized<scalar_t>;
  int64_t i = 0;
  if constexpr (is_reduced_v<scalar_t>) {
    const AccVec zero(acc_t(0));
    for (; i + Vec::size() <= len; i += Vec::size()) {
      auto [y0, y1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(y + i));
      auto [s0, s1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(g + i));
      if constexpr (kTwo) {
        auto [t0, t1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(g2 + i));
        s0 = s0 + t0;
        s1 = s1 + t1;
      }
      at::vec::convert_from_float<scalar_t>(AccVec::blendv(s0, zero, y0 <= zero),
                                            AccVec::blendv(s1, zero, y1 <= zero)).store(out + i);
    }
  } else {
    const Vec zero(scalar_t(0));
    for (; i + Vec::size() <= len; i += Vec::size()) {
      Vec s = Vec::loadu(g + i);
      if constexpr (kTwo) s = s + Vec::loadu(g2 + i);
      Vec::blendv(s, zero, Vec::loadu(y + i) <= zero).store(out + i);
    }
  }
  for (; i < len; ++i) {
    const acc_t s = kTwo ? static_cast<acc_t>(g[i]) + static_cast<acc_t>(g2[i]) : static_cast<acc_t>(g[i]);
    out[i] = static_cast<acc_t>(y[i]) <= acc_t(0) ? scalar_t(0) : static_cast<scalar_t>(s);
  }
}

void relu_backward_any(c10::ScalarType dtype, const void* y, const void* g, const void* g2, void* out, int64_t len) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "relu_backward_cpu", [&] {
    auto* py = static_cast<const scalar_t*>(y);
    auto* pg = static_cast<const scalar_t*>(g);
    auto* pg2 = static_cast<const scalar_t*>(g2);
    auto* po = static_cast<scalar_t*>(out);
    if (g2) {
      relu_backward_impl<scalar_t, true>(py, pg, pg2, po, len);
    } else {
      relu_backward_impl<scalar_t, false>(py, pg, nullptr, po, len);
    }
  });
}

// ------------------------------------------------------------------------------------ max_pool2x2_relu_backward

// One 2x2 window: of its values a, b (top row), c, d (bottom row), the first maximum in that order gets the
// gradient when the maximum is > 0 (max_pool2d's index, then relu's threshold_backward); the rest get 0.
template <typename V>
inline void window_select(const V& a, const V& b, const V& c, const V& d, const V& g, V& oa, V& ob, V& oc, V& od) {
  const V zero(0);
  const V m = at::vec::maximum(at::vec::maximum(a, b), at::vec::maximum(c, d));
  V rem = (m <= zero) ^ (zero == zero);  // all bits set where the maximum is not <= 0
  const V ta = rem & (a == m);
  rem = rem ^ ta;
  const V tb = rem & (b == m);
  rem = rem ^ tb;
  const V tc = rem & (c == m);
  rem = rem ^ tc;
  const V td = rem & (d == m);
  oa = V::blendv(zero, g, ta);
  ob = V::blendv(zero, g, tb);
  oc = V::blendv(zero, g, tc);
  od = V::blendv(zero, g, td);
}

template <typename acc_t>
inline void window_select_scalar(acc_t a, acc_t b, acc_t c, acc_t d, acc_t g, acc_t& oa, acc_t& ob, acc_t& oc,
                                 acc_t& od) {
  const acc_t m = std::max(std::max(a, b), std::max(c, d));
  oa = ob = oc = od = acc_t(0);
  if (m <= acc_t(0)) return;
  if (a == m) {
    oa = g;
  } else if (b == m) {
    ob = g;
  } else if (c == m) {
    oc = g;
  } else if (d == m) {
    od = g;
  }
}

// The windows of one output position, channels-last: four runs of c contiguous values (a, b, c, d).
template <typename scalar_t>
void window_channels(const scalar_t* a, const scalar_t* b, const scalar_t* c, const scalar_t* d, const scalar_t* g,
                     scalar_t* oa, scalar_t* ob, scalar_t* oc, scalar_t* od, int64_t channels) {
  using acc_t = at::opmath_type<scalar_t>;
  using AccVec = at::vec::Vectorized<acc_t>;
  using Vec = at::vec::Vectorized<scalar_t>;
  int64_t i = 0;
  for (; i + Vec::size() <= channels; i += Vec::size()) {
    if constexpr (is_reduced_v<scalar_t>) {
      auto [a0, a1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(a + i));
      auto [b0, b1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(b + i));
      auto [c0, c1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(c + i));
      auto [d0, d1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(d + i));
      auto [g0, g1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(g + i));
      AccVec ra0, rb0, rc0, rd0, ra1, rb1, rc1, rd1;
      window_select(a0, b0, c0, d0, g0, ra0, rb0, rc0, rd0);
      window_select(a1, b1, c1, d1, g1, ra1, rb1, rc1, rd1);
      at::vec::convert_from_float<scalar_t>(ra0, ra1).store(oa + i);
      at::vec::convert_from_float<scalar_t>(rb0, rb1).store(ob + i);
      at::vec::convert_from_float<scalar_t>(rc0, rc1).store(oc + i);
      at::vec::convert_from_float<scalar_t>(rd0, rd1).store(od + i);
    } else {
      Vec ra, rb, rc, rd;
      window_select(Vec::loadu(a + i), Vec::loadu(b + i), Vec::loadu(c + i), Vec::loadu(d + i), Vec::loadu(g + i),
                    ra, rb, rc, rd);
      ra.store(oa + i);
      rb.store(ob + i);
      rc.store(oc + i);
      rd.store(od + i);
    }
  }
  for (; i < channels; ++i) {
    acc_t ra, rb, rc, rd;
    window_select_scalar<acc_t>(a[i], b[i], c[i], d[i], g[i], ra, rb, rc, rd);
    oa[i] = static_cast<scalar_t>(ra);
    ob[i] = static_cast<scalar_t>(rb);
    oc[i] = static_cast<scalar_t>(rc);
    od[i] = static_cast<scalar_t>(rd);
  }
}

template <typename scalar_t>
void zero_fill(scalar_t* p, int64_t n) {
  if (n > 0) std::memset(static_cast<void*>(p), 0, static_cast<size_t>(n) * sizeof(scalar_t));
}

template <typename scalar_t>
void pool_channels_last(const scalar_t* y, const scalar_t* g, scalar_t* out, int64_t c, int64_t h, int64_t w,
                        int64_t r0, int64_t r1) {
  const int64_t oh_count = h / 2, ow_count = w / 2, row = w * c;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / oh_count, oh = r % oh_count;
    const int64_t top = (n * h + 2 * oh) * row;
    const scalar_t* ya = y + top;
    const scalar_t* yb = ya + row;
    scalar_t* oa = out + top;
    scalar_t* ob = oa + row;
    const scalar_t* gr = g + r * ow_count * c;
    for (int64_t ow = 0; ow < ow_count; ++ow) {
      const int64_t x = 2 * ow * c;
      window_channels(ya + x, ya + x + c, yb + x, yb + x + c, gr + ow * c, oa + x, oa + x + c, ob + x, ob + x + c, c);
    }
    zero_fill(oa + 2 * ow_count * c, row - 2 * ow_count * c);  // an odd last column
    zero_fill(ob + 2 * ow_count * c, row - 2 * ow_count * c);
    if (oh == oh_count - 1) {
      zero_fill(out + (n * h + 2 * oh_count) * row, (h - 2 * oh_count) * row);  // an odd last row
    }
  }
}

template <typename scalar_t>
void pool_contiguous(const scalar_t* y, const scalar_t* g, scalar_t* out, int64_t h, int64_t w, int64_t p0,
                     int64_t p1) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t oh_count = h / 2, ow_count = w / 2;
  for (int64_t p = p0; p < p1; ++p) {
    const scalar_t* yp = y + p * h * w;
    scalar_t* op = out + p * h * w;
    const scalar_t* gp = g + p * oh_count * ow_count;
    for (int64_t oh = 0; oh < oh_count; ++oh) {
      const scalar_t* ya = yp + 2 * oh * w;
      const scalar_t* yb = ya + w;
      scalar_t* oa = op + 2 * oh * w;
      scalar_t* ob = oa + w;
      for (int64_t ow = 0; ow < ow_count; ++ow) {
        const int64_t x = 2 * ow;
        acc_t ra, rb, rc, rd;
        window_select_scalar<acc_t>(ya[x], ya[x + 1], yb[x], yb[x + 1], gp[oh * ow_count + ow], ra, rb, rc, rd);
        oa[x] = static_cast<scalar_t>(ra);
        oa[x + 1] = static_cast<scalar_t>(rb);
        ob[x] = static_cast<scalar_t>(rc);
        ob[x + 1] = static_cast<scalar_t>(rd);
      }
      zero_fill(oa + 2 * ow_count, w - 2 * ow_count);
      zero_fill(ob + 2 * ow_count, w - 2 * ow_count);
    }
    zero_fill(op + 2 * oh_count * w, (h - 2 * oh_count) * w);
  }
}

// ------------------------------------------------------------------------------------------------ max_pool2x2

template <typename scalar_t>
inline scalar_t max4_scalar(scalar_t a, scalar_t b, scalar_t c, scalar_t d) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t m = static_cast<acc_t>(a);
  for (acc_t v : {static_cast<acc_t>(b), static_cast<acc_t>(c), static_cast<acc_t>(d)}) {
    if (v > m || v != v) m = v;  // ATen's rule: a larger value or a NaN replaces the maximum
  }
  return static_cast<scalar_t>(m);
}

template <typename scalar_t>
void pool_forward_rows(const scalar_t* x, scalar_t* out, int64_t c, int64_t h, int64_t w, int64_t r0, int64_t r1) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const int64_t oh_count = h / 2, ow_count = w / 2, row = w * c;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / oh_count, oh = r % oh_count;
    const scalar_t* xa = x + (n * h + 2 * oh) * row;
    const scalar_t* xb = xa + row;
    scalar_t* o = out + r * ow_count * c;
    for (int64_t ow = 0; ow < ow_count; ++ow) {
      const scalar_t* a = xa + 2 * ow * c;
      const scalar_t* b = xb + 2 * ow * c;
      int64_t i = 0;
      for (; i + Vec::size() <= c; i += Vec::size()) {  // a max picks one of the values: no widening needed
        at::vec::maximum(at::vec::maximum(Vec::loadu(a + i), Vec::loadu(a + c + i)),
                         at::vec::maximum(Vec::loadu(b + i), Vec::loadu(b + c + i))).store(o + ow * c + i);
      }
      for (; i < c; ++i) {
        o[ow * c + i] = max4_scalar(a[i], a[c + i], b[i], b[c + i]);
      }
    }
  }
}

template <typename scalar_t>
void pool_forward_planes(const scalar_t* x, scalar_t* out, int64_t h, int64_t w, int64_t p0, int64_t p1) {
  const int64_t oh_count = h / 2, ow_count = w / 2;
  for (int64_t p = p0; p < p1; ++p) {
    const scalar_t* xp = x + p * h * w;
    scalar_t* op = out + p * oh_count * ow_count;
    for (int64_t oh = 0; oh < oh_count; ++oh) {
      const scalar_t* xa = xp + 2 * oh * w;
      const scalar_t* xb = xa + w;
      for (int64_t ow = 0; ow < ow_count; ++ow) {
        op[oh * ow_count + ow] = max4_scalar(xa[2 * ow], xa[2 * ow + 1], xb[2 * ow], xb[2 * ow + 1]);
      }
    }
  }
}

// -------------------------------------------------------------------------------------------- l2_pool3x3
template <typename scalar_t>
void l2_pool_rows(const scalar_t* x, scalar_t* out, const double* window, int64_t c, int64_t h, int64_t w, int64_t r0,
                  int64_t r1) {
  using acc_t = at::opmath_type<scalar_t>;
  using AccVec = at::vec::Vectorized<acc_t>;
  using Vec = at::vec::Vectorized<scalar_t>;
  const int64_t oh_count = (h + 1) / 2, ow_count = (w + 1) / 2;
  acc_t wt[9];
  for (int k = 0; k < 9; ++k) wt[k] = static_cast<acc_t>(window[k]);
  const acc_t tiny = static_cast<acc_t>(1e-12);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / oh_count, oh = r % oh_count;
    const scalar_t* image = x + n * h * w * c;
    scalar_t* row = out + r * ow_count * c;
    for (int64_t ow = 0; ow < ow_count; ++ow) {
      // the window's taps inside the image: (offset of the element, weight)
      int64_t offsets[9];
      acc_t weights[9];
      int taps = 0;
      for (int di = 0; di < 3; ++di) {
        const int64_t i = 2 * oh - 1 + di;
        if (i < 0 || i >= h) continue;
        for (int dj = 0; dj < 3; ++dj) {
          const int64_t j = 2 * ow - 1 + dj;
          if (j < 0 || j >= w) continue;
          offsets[taps] = (i * w + j) * c;
          weights[taps++] = wt[di * 3 + dj];
        }
      }
      scalar_t* o = row + ow * c;
      int64_t ch = 0;
      if constexpr (is_reduced_v<scalar_t>) {
        for (; ch + Vec::size() <= c; ch += Vec::size()) {
          AccVec s0(acc_t(0)), s1(acc_t(0));
          for (int t = 0; t < taps; ++t) {
            auto [v0, v1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(image + offsets[t] + ch));
            const AccVec k(weights[t]);
            s0 = at::vec::fmadd(k * v0, v0, s0);
            s1 = at::vec::fmadd(k * v1, v1, s1);
          }
          at::vec::convert_from_float<scalar_t>((s0 + AccVec(tiny)).sqrt(), (s1 + AccVec(tiny)).sqrt()).store(o + ch);
        }
      } else {
        for (; ch + Vec::size() <= c; ch += Vec::size()) {
          Vec s(acc_t(0));
          for (int t = 0; t < taps; ++t) {
            const Vec v = Vec::loadu(image + offsets[t] + ch);
            s = at::vec::fmadd(Vec(weights[t]) * v, v, s);
          }
          (s + Vec(tiny)).sqrt().store(o + ch);
        }
      }
      for (; ch < c; ++ch) {
        acc_t s = 0;
        for (int t = 0; t < taps; ++t) {
          const acc_t v = static_cast<acc_t>(image[offsets[t] + ch]);
          s += weights[t] * v * v;
        }
        o[ch] = static_cast<scalar_t>(std::sqrt(s + tiny));
      }
    }
  }
}

void l2_pool3x3_channels_last_any(c10::ScalarType dtype, const void* x, void* out, const double* window, int64_t c,
                                  int64_t h, int64_t w, int64_t r0, int64_t r1) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "l2_pool3x3_cpu", [&] {
    l2_pool_rows<scalar_t>(static_cast<const scalar_t*>(x), static_cast<scalar_t*>(out), window, c, h, w, r0, r1);
  });
}

void pool_forward_channels_last_any(c10::ScalarType dtype, const void* x, void* out, int64_t c, int64_t h, int64_t w,
                                    int64_t r0, int64_t r1) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "max_pool2x2_cpu", [&] {
    pool_forward_rows<scalar_t>(static_cast<const scalar_t*>(x), static_cast<scalar_t*>(out), c, h, w, r0, r1);
  });
}

void pool_forward_contiguous_any(c10::ScalarType dtype, const void* x, void* out, int64_t h, int64_t w, int64_t p0,
                                 int64_t p1) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "max_pool2x2_cpu", [&] {
    pool_forward_planes<scalar_t>(static_cast<const scalar_t*>(x), static_cast<scalar_t*>(out), h, w, p0, p1);
  });
}

void pool_channels_last_any(c10::ScalarType dtype, const void* y, const void* g, void* out, int64_t c, int64_t h,
                            int64_t w, int64_t r0, int64_t r1) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "max_pool2x2_relu_backward_cpu", [&] {
    pool_channels_last<scalar_t>(static_cast<const scalar_t*>(y), static_cast<const scalar_t*>(g),
                                 static_cast<scalar_t*>(out), c, h, w, r0, r1);
  });
}

void pool_contiguous_any(c10::ScalarType dtype, const void* y, const void* g, void* out, int64_t h, int64_t w,
                         int64_t p0, int64_t p1) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "max_pool2x2_relu_backward_cpu", [&] {
    pool_contiguous<scalar_t>(static_cast<const scalar_t*>(y), static_cast<const scalar_t*>(g),
                              static_cast<scalar_t*>(out), h, w, p0, p1);
  });
}

}  // namespace

extern const ReluKernelTable relu_kernels;
const ReluKernelTable relu_kernels = {PERCEPTLOSS_STRINGIFY(CPU_CAPABILITY), &relu_backward_any,
                                      &pool_channels_last_any, &pool_contiguous_any,
                                      &pool_forward_channels_last_any, &pool_forward_contiguous_any,
                                      &l2_pool3x3_channels_last_any};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace ops
}  // namespace perceptloss
