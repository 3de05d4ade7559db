// CPU kernels of perceptloss::feature_distance: parallel over (layer, sample, chunk) work items with
// at::parallel_for, vectorized inner loops (at::vec), fp32 accumulation within a chunk (float64 for float64),
// chunk partials combined in a fixed order so results do not depend on the thread count. The norm p (1 or 2)
// is a template parameter of the inner loops, so neither form carries a per-element branch.
#include "../feature_distance.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <type_traits>

namespace perceptloss {
namespace ops {
namespace {

constexpr int64_t kChunk = 1 << 15;  // elements of one sample handled by one work item

struct WorkItem {
  int32_t layer;
  int64_t sample;
  int64_t begin;  // element offset inside the sample
  int64_t end;
};

std::vector<WorkItem> make_work(const std::vector<PreparedLayer>& layers, int64_t n) {
  std::vector<WorkItem> items;
  for (size_t l = 0; l < layers.size(); ++l) {
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t b = 0; b < layers[l].per_sample; b += kChunk) {
        items.push_back({static_cast<int32_t>(l), s, b, std::min(b + kChunk, layers[l].per_sample)});
      }
    }
  }
  return items;
}

template <typename T>
constexpr bool is_reduced_v = std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>;

// |d| (P = 1) or d^2 (P = 2), for a scalar or an at::vec vector.
template <int P, typename T>
inline T norm_term(const T& d) {
  if constexpr (P == 1) {
    return d.abs();
  } else {
    return d * d;
  }
}

template <int P, typename T>
inline T norm_term_scalar(T d) {
  if constexpr (P == 1) {
    return d < T(0) ? -d : d;
  } else {
    return d * d;
  }
}

// sum(|a - b|^P) over len elements, accumulated in opmath (float, or double for double).
template <typename scalar_t, int P>
at::opmath_type<scalar_t> diff_norm_sum(const scalar_t* a, const scalar_t* b, int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  using AccVec = at::vec::Vectorized<acc_t>;
  using Vec = at::vec::Vectorized<scalar_t>;
  AccVec s0(acc_t(0)), s1(acc_t(0));
  int64_t i = 0;
  if constexpr (is_reduced_v<scalar_t>) {
    for (; i + Vec::size() <= len; i += Vec::size()) {
      auto [a0, a1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(a + i));
      auto [b0, b1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(b + i));
      auto d0 = a0 - b0;
      auto d1 = a1 - b1;
      if constexpr (P == 2) {
        s0 = at::vec::fmadd(d0, d0, s0);
        s1 = at::vec::fmadd(d1, d1, s1);
      } else {
        s0 = s0 + norm_term<P>(d0);
        s1 = s1 + norm_term<P>(d1);
      }
    }
  } else {
    for (; i + 2 * Vec::size() <= len; i += 2 * Vec::size()) {
      auto d0 = Vec::loadu(a + i) - Vec::loadu(b + i);
      auto d1 = Vec::loadu(a + i + Vec::size()) - Vec::loadu(b + i + Vec::size());
      if constexpr (P == 2) {
        s0 = at::vec::fmadd(d0, d0, s0);
        s1 = at::vec::fmadd(d1, d1, s1);
      } else {
        s0 = s0 + norm_term<P>(d0);
        s1 = s1 + norm_term<P>(d1);
      }
    }
  }
  acc_t sum = at::vec::vec_reduce_all<acc_t>([](AccVec x, AccVec y) { return x + y; }, s0 + s1);
  for (; i < len; ++i) {
    sum += norm_term_scalar<P>(static_cast<acc_t>(a[i]) - static_cast<acc_t>(b[i]));
  }
  return sum;
}

// d (P = 2) or sign(d) with sign(0) = 0 (P = 1): the derivative of norm_term up to the constant factor.
template <int P, typename T>
inline T grad_term_scalar(T d) {
  if constexpr (P == 1) {
    return static_cast<T>(d > T(0)) - static_cast<T>(d < T(0));
  } else {
    return d;
  }
}

template <int P, typename V>
inline V grad_term(const V& d) {
  if constexpr (P == 1) {
    const V zero(0);
    return d.gt(zero) - d.lt(zero);  // gt/lt give 1.0 where true, 0.0 elsewhere
  } else {
    return d;
  }
}

// ga = s * (a - b) (P = 2) or s * sign(a - b) (P = 1) (when kA) and gb = -ga (when kB), over len elements. The
// outputs are compile-time choices so that the loops carry no branches; float/double loops are plain code the
// compiler vectorizes.
template <typename scalar_t, int P, bool kA, bool kB>
void scaled_diff_impl(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, scalar_t* __restrict__ ga,
                      scalar_t* __restrict__ gb, at::opmath_type<scalar_t> s, int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t i = 0;
  if constexpr (is_reduced_v<scalar_t>) {
    using AccVec = at::vec::Vectorized<acc_t>;
    using Vec = at::vec::Vectorized<scalar_t>;
    const AccVec sv(s);
    for (; i + Vec::size() <= len; i += Vec::size()) {
      auto [a0, a1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(a + i));
      auto [b0, b1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(b + i));
      const AccVec g0 = grad_term<P>(a0 - b0) * sv;
      const AccVec g1 = grad_term<P>(a1 - b1) * sv;
      if constexpr (kA) at::vec::convert_from_float<scalar_t>(g0, g1).store(ga + i);
      if constexpr (kB) at::vec::convert_from_float<scalar_t>(AccVec(0) - g0, AccVec(0) - g1).store(gb + i);
    }
  }
  for (; i < len; ++i) {
    const acc_t g = grad_term_scalar<P>(static_cast<acc_t>(a[i]) - static_cast<acc_t>(b[i])) * s;
    if constexpr (kA) ga[i] = static_cast<scalar_t>(g);
    if constexpr (kB) gb[i] = static_cast<scalar_t>(-g);
  }
}

template <typename scalar_t, int P>
void scaled_diff(const scalar_t* a, const scalar_t* b, scalar_t* ga, scalar_t* gb, at::opmath_type<scalar_t> s,
                 int64_t len) {
  if (ga && gb) {
    scaled_diff_impl<scalar_t, P, true, true>(a, b, ga, gb, s, len);
  } else if (ga) {
    scaled_diff_impl<scalar_t, P, true, false>(a, b, ga, gb, s, len);
  } else if (gb) {
    scaled_diff_impl<scalar_t, P, false, true>(a, b, ga, gb, s, len);
  }
}

// Calls f with the norm as a compile-time constant: f(std::integral_constant<int, P>{}).
template <typename F>
void dispatch_norm(int64_t p, F&& f) {
  if (p == 1) {
    f(std::integral_constant<int, 1>{});
  } else {
    f(std::integral_constant<int, 2>{});
  }
}

at::Tensor feature_distance_cpu(at::TensorList inputs, at::TensorList targets, at::ArrayRef<double> weights,
                                int64_t p) {
  check_norm(p);
  const auto layers = prepare_layers(inputs, targets, weights, c10::DeviceType::CPU);
  const int64_t n = inputs[0].size(0);
  const int64_t num_layers = static_cast<int64_t>(layers.size());
  const auto dtype = inputs[0].scalar_type();
  at::Tensor out = at::empty({n, num_layers}, inputs[0].options().dtype(accumulate_type(dtype)));
  const auto items = make_work(layers, n);
  std::vector<double> partial(items.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "feature_distance_cpu", [&] {
    dispatch_norm(p, [&](auto norm) {
      constexpr int P = decltype(norm)::value;
      at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          const WorkItem& w = items[k];
          const PreparedLayer& L = layers[w.layer];
          const int64_t offset = w.sample * L.per_sample + w.begin;
          partial[k] = static_cast<double>(diff_norm_sum<scalar_t, P>(
              L.a.const_data_ptr<scalar_t>() + offset, L.b.const_data_ptr<scalar_t>() + offset, w.end - w.begin));
        }
      });
    });
  });
  // Items are ordered layer-major, sample, chunk: reduce each (layer, sample) run in that fixed order.
  std::vector<double> total(static_cast<size_t>(n * num_layers), 0.0);
  for (size_t k = 0; k < items.size(); ++k) {
    total[items[k].sample * num_layers + items[k].layer] += partial[k];
  }
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "feature_distance_cpu_out", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t l = 0; l < num_layers; ++l) {
        o[s * num_layers + l] = static_cast<scalar_t>(total[s * num_layers + l] * layers[l].scale);
      }
    }
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> feature_distance_backward_cpu(
    const at::Tensor& grad, at::TensorList inputs, at::TensorList targets, at::ArrayRef<double> weights,
    bool input_grad, bool target_grad, int64_t p) {
  check_norm(p);
  const auto layers = prepare_layers(inputs, targets, weights, c10::DeviceType::CPU);
  const int64_t n = inputs[0].size(0);
  const int64_t num_layers = static_cast<int64_t>(layers.size());
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == n && grad.size(1) == num_layers,
              "feature_distance_backward: grad must be (", n, ", ", num_layers, "), got ", grad.sizes());
  const auto dtype = inputs[0].scalar_type();
  const at::Tensor g = grad.to(at::kDouble).contiguous();  // (N, L), tiny
  const double* gp = g.const_data_ptr<double>();
  GradBuffers ga(inputs, layers, input_grad), gb(inputs, layers, target_grad);
  if (input_grad || target_grad) {
    const auto items = make_work(layers, n);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "feature_distance_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dispatch_norm(p, [&](auto norm) {
        constexpr int P = decltype(norm)::value;
        at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
          for (int64_t k = begin; k < end; ++k) {
            const WorkItem& w = items[k];
            const PreparedLayer& L = layers[w.layer];
            const int64_t offset = w.sample * L.per_sample + w.begin;
            // d/da of |a - b|^P: P (a - b)^(P - 1), i.e. 2 (a - b) for P = 2 and sign(a - b) for P = 1.
            const acc_t s = static_cast<acc_t>(P * L.scale * gp[w.sample * num_layers + w.layer]);
            auto* pa = static_cast<scalar_t*>(ga.data(w.layer));
            auto* pb = static_cast<scalar_t*>(gb.data(w.layer));
            pa = pa ? pa + offset : nullptr;
            pb = pb ? pb + offset : nullptr;
            scaled_diff<scalar_t, P>(L.a.const_data_ptr<scalar_t>() + offset,
                                     L.b.const_data_ptr<scalar_t>() + offset, pa, pb, s, w.end - w.begin);
          }
        });
      });
    });
  }
  return {ga.finish(), gb.finish()};
}

}  // namespace

TORCH_LIBRARY_IMPL(perceptloss, CPU, m) {
  m.impl("feature_distance", &feature_distance_cpu);
  m.impl("feature_distance_backward", &feature_distance_backward_cpu);
}

}  // namespace ops
}  // namespace perceptloss
