// CPU entry points of perceptloss::feature_distance: parallel over (layer, sample, chunk) work items with
// at::parallel_for; each item runs the inner loop of the CPU level in use (kernels/feature_distance_kernel.cpp, compiled
// per level, chosen in cpu_dispatch.cpp). Chunk partials are combined in a fixed order, so results do not depend
// on the thread count.
#include "../feature_distance.h"
#include "cpu_dispatch.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace perceptloss {
namespace ops {
namespace {

using cpu::KernelTable;

constexpr int64_t kChunk = 1 << 15;  // elements of one sample handled by one work item

struct WorkItem {
  int32_t layer;
  int64_t sample;
  int64_t begin;  // offset inside the sample, in units (elements; positions for unit_feature_distance)
  int64_t end;
  int64_t start;  // elements of all earlier items: where the item starts in the whole work
  int64_t elements;
};

// Work items of `units[l]` units per sample, `unit_elements[l]` elements each, about kChunk elements (and at most
// `max_units` units) per item.
std::vector<WorkItem> make_work(const std::vector<int64_t>& units, const std::vector<int64_t>& unit_elements,
                                int64_t n, int64_t max_units = std::numeric_limits<int64_t>::max()) {
  std::vector<WorkItem> items;
  int64_t start = 0;
  for (size_t l = 0; l < units.size(); ++l) {
    const int64_t chunk = std::min(max_units, std::max<int64_t>(1, kChunk / unit_elements[l]));
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t b = 0; b < units[l]; b += chunk) {
        const int64_t e = std::min(b + chunk, units[l]);
        items.push_back({static_cast<int32_t>(l), s, b, e, start, (e - b) * unit_elements[l]});
        start += items.back().elements;
      }
    }
  }
  return items;
}

std::vector<WorkItem> make_work(const std::vector<PreparedLayer>& layers, int64_t n) {
  std::vector<int64_t> units;
  for (const auto& L : layers) {
    units.push_back(L.per_sample);
  }
  return make_work(units, std::vector<int64_t>(layers.size(), 1), n);
}

// Calls f(index, item) for every work item, in parallel; items are independent. The threads get equal shares of
// elements, not of items: the items of a layer whose samples are smaller than kChunk are short, and an even split
// of items would give one thread more memory to read than the other (with VGG19 relu1_1..relu5_1 at 64x64, 52.5%
// against 47.5% on two threads). Each item goes to the thread whose element range holds its first element.
template <typename F>
void parallel_over_items(const std::vector<WorkItem>& items, F&& f) {
  if (items.empty()) {
    return;
  }
  const int64_t total = items.back().start + items.back().elements;
  at::parallel_for(0, total, kChunk, [&](int64_t lo, int64_t hi) {
    const auto by_start = [](const WorkItem& w, int64_t x) { return w.start < x; };
    const int64_t first = std::lower_bound(items.begin(), items.end(), lo, by_start) - items.begin();
    const int64_t last = std::lower_bound(items.begin(), items.end(), hi, by_start) - items.begin();
    for (int64_t i = first; i < last; ++i) {
      f(i, items[i]);
    }
  });
}

// Byte offset of a flat work item in its layer's a and b.
int64_t flat_offset(const WorkItem& w, const PreparedLayer& L) {
  return (w.sample * L.per_sample + w.begin) * L.a.element_size();
}

// (N, L) per-layer sums of the items' partials, reduced per (layer, sample) in the items' fixed order (so results
// do not depend on the thread count), times each layer's scale.
at::Tensor reduce_partials(const std::vector<WorkItem>& items, const std::vector<double>& partial,
                           const std::vector<double>& scale, int64_t n, const at::TensorOptions& options) {
  const int64_t num_layers = static_cast<int64_t>(scale.size());
  at::Tensor out = at::empty({n, num_layers}, options);
  std::vector<double> total(static_cast<size_t>(n * num_layers), 0.0);
  for (size_t k = 0; k < items.size(); ++k) {
    total[items[k].sample * num_layers + items[k].layer] += partial[k];
  }
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "feature_distance_cpu_out", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t l = 0; l < num_layers; ++l) {
        o[s * num_layers + l] = static_cast<scalar_t>(total[s * num_layers + l] * scale[l]);
      }
    }
  });
  return out;
}

at::Tensor feature_distance_cpu(at::TensorList inputs, at::TensorList targets, at::ArrayRef<double> weights,
                                int64_t p) {
  check_norm(p);
  const auto layers = prepare_layers(inputs, targets, weights, c10::DeviceType::CPU);
  const int64_t n = inputs[0].size(0);
  const auto dtype = inputs[0].scalar_type();
  const auto items = make_work(layers, n);
  std::vector<double> partial(items.size());
  const KernelTable& k = cpu::kernels();
  parallel_over_items(items, [&](int64_t i, const WorkItem& w) {
    const PreparedLayer& L = layers[w.layer];
    const int64_t offset = flat_offset(w, L);
    partial[i] = k.diff_norm_sum(dtype, p, static_cast<const char*>(L.a.const_data_ptr()) + offset,
                                 static_cast<const char*>(L.b.const_data_ptr()) + offset, w.end - w.begin);
  });
  std::vector<double> scale;
  for (const auto& L : layers) {
    scale.push_back(L.scale);
  }
  return reduce_partials(items, partial, scale, n, inputs[0].options().dtype(accumulate_type(dtype)));
}

// Layers read per channel (unit_feature_distance, paired_moments): each with its channels contiguous
// (channels_last, or one position) or its positions contiguous (NCHW); any other layout is copied to NCHW.
struct ChannelLayers {
  std::vector<at::Tensor> a, b;
  std::vector<int64_t> channels, positions, channel_stride, position_stride;

  explicit ChannelLayers(const std::vector<PreparedLayer>& layers) {
    for (const auto& L : layers) {
      at::Tensor la = L.a, lb = L.b;  // lb has la's strides
      const int64_t c = la.size(1);
      const bool channels_inner = la.dim() == 2 ||
                                  (la.dim() == 4 && la.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
                                  (la.dim() == 5 && la.is_contiguous(at::MemoryFormat::ChannelsLast3d));
      if (!channels_inner && !la.is_contiguous()) {
        la = la.contiguous();
        lb = lb.contiguous();
      }
      const bool inner = channels_inner && la.stride(1) == 1;
      const int64_t p = L.per_sample / c;
      a.push_back(la);
      b.push_back(lb);
      channels.push_back(c);
      positions.push_back(p);
      channel_stride.push_back(inner ? 1 : p);
      position_stride.push_back(inner ? c : 1);
    }
  }

  // Byte offset of a work item's first position in its layer (sample `it.sample` is one dense block of C * P).
  int64_t offset(const WorkItem& it) const {
    const size_t l = it.layer;
    return (it.sample * channels[l] * positions[l] + it.begin * position_stride[l]) * a[l].element_size();
  }

  std::vector<WorkItem> work(int64_t n, int64_t max_positions = std::numeric_limits<int64_t>::max()) const {
    return make_work(positions, channels, n, max_positions);
  }
};

// The layers of perceptloss::unit_feature_distance (feature_distance.h) with their channel weights and scales.
struct UnitLayers : ChannelLayers {
  std::vector<at::Tensor> w;
  std::vector<double> scale;  // weights[l] / P

  UnitLayers(at::TensorList inputs, at::TensorList targets, at::TensorList channel_weights,
             at::ArrayRef<double> weights, double eps)
      : ChannelLayers(checked(inputs, targets, channel_weights, weights, eps)) {
    const auto acc = accumulate_type(inputs[0].scalar_type());
    for (size_t l = 0; l < a.size(); ++l) {
      const auto& cw = channel_weights[l];
      TORCH_CHECK(cw.dim() == 1 && cw.size(0) == channels[l], "unit_feature_distance: layer ", l, " has ",
                  channels[l], " channels, its channel weights have shape ", cw.sizes());
      w.push_back(cw.to(a[l].device(), acc).contiguous());
      scale.push_back(weights[l] / static_cast<double>(positions[l]));
    }
  }

  static std::vector<PreparedLayer> checked(at::TensorList inputs, at::TensorList targets,
                                            at::TensorList channel_weights, at::ArrayRef<double> weights,
                                            double eps) {
    TORCH_CHECK(std::isfinite(eps) && eps >= 0, "unit_feature_distance: eps must be finite and >= 0, got ", eps);
    auto layers = prepare_layers(inputs, targets, weights, c10::DeviceType::CPU);
    TORCH_CHECK(channel_weights.size() == layers.size(), "unit_feature_distance: got ", channel_weights.size(),
                " channel weight tensors for ", layers.size(), " layers; give one (C,) tensor per layer");
    return layers;
  }
};

at::Tensor unit_feature_distance_cpu(at::TensorList inputs, at::TensorList targets, at::TensorList channel_weights,
                                     at::ArrayRef<double> weights, double eps) {
  const UnitLayers L(inputs, targets, channel_weights, weights, eps);
  const int64_t n = inputs[0].size(0);
  const auto dtype = inputs[0].scalar_type();
  const auto items = L.work(n);
  std::vector<double> partial(items.size());
  const KernelTable& k = cpu::kernels();
  parallel_over_items(items, [&](int64_t i, const WorkItem& it) {
    const size_t l = it.layer;
    const int64_t o = L.offset(it);
    partial[i] = k.unit_diff_sum(dtype, static_cast<const char*>(L.a[l].const_data_ptr()) + o,
                                 static_cast<const char*>(L.b[l].const_data_ptr()) + o, L.w[l].const_data_ptr(),
                                 L.channels[l], L.channel_stride[l], it.end - it.begin, L.position_stride[l], eps);
  });
  return reduce_partials(items, partial, L.scale, n, inputs[0].options().dtype(accumulate_type(dtype)));
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> unit_feature_distance_backward_cpu(
    const at::Tensor& grad, at::TensorList inputs, at::TensorList targets, at::TensorList channel_weights,
    at::ArrayRef<double> weights, double eps, bool input_grad, bool target_grad) {
  const UnitLayers L(inputs, targets, channel_weights, weights, eps);
  const int64_t n = inputs[0].size(0);
  const int64_t num_layers = static_cast<int64_t>(L.a.size());
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == n && grad.size(1) == num_layers,
              "unit_feature_distance_backward: grad must be (", n, ", ", num_layers, "), got ", grad.sizes());
  const auto dtype = inputs[0].scalar_type();
  const at::Tensor g = grad.to(at::kDouble).contiguous();
  const double* gp = g.const_data_ptr<double>();
  GradBuffers ga(inputs, L.a, input_grad), gb(inputs, L.a, target_grad);  // in each input's layout
  const auto items = L.work(n);
  const KernelTable& k = cpu::kernels();
  parallel_over_items(items, [&](int64_t, const WorkItem& it) {
    const size_t l = it.layer;
    const int64_t o = L.offset(it);
    auto* qa = static_cast<char*>(ga.data(l));
    auto* qb = static_cast<char*>(gb.data(l));
    k.unit_diff_grad(dtype, static_cast<const char*>(L.a[l].const_data_ptr()) + o,
                     static_cast<const char*>(L.b[l].const_data_ptr()) + o, L.w[l].const_data_ptr(), L.channels[l],
                     L.channel_stride[l], it.end - it.begin, L.position_stride[l], eps,
                     2.0 * L.scale[l] * gp[it.sample * num_layers + it.layer], qa ? qa + o : nullptr,
                     qb ? qb + o : nullptr);
  });
  return {ga.finish(), gb.finish()};
}

// perceptloss::paired_moments (feature_distance.h): per (layer, sample, run of at most kMomentRun positions) the
// kernel's per-channel sums and centred squares and products, summed in float within the run; runs merge in double
// in the items' fixed order (Chan et al.'s pairwise update), so results do not depend on the thread count.
constexpr int64_t kMomentRun = 1024;

std::vector<at::Tensor> paired_moments_cpu(at::TensorList inputs, at::TensorList targets) {
  const ChannelLayers L(prepare_layers(inputs, targets, std::vector<double>(inputs.size(), 1.0), c10::DeviceType::CPU));
  const int64_t n = inputs[0].size(0);
  const auto dtype = inputs[0].scalar_type();
  const auto acc = accumulate_type(dtype);
  const auto items = L.work(n, kMomentRun);
  std::vector<int64_t> at_item(items.size() + 1, 0);  // where each item's 5 * C partials start
  for (size_t i = 0; i < items.size(); ++i) {
    at_item[i + 1] = at_item[i] + 5 * L.channels[items[i].layer];
  }
  at::Tensor partial = at::empty({at_item.back()}, inputs[0].options().dtype(acc));
  const KernelTable& k = cpu::kernels();
  char* base = static_cast<char*>(partial.mutable_data_ptr());
  parallel_over_items(items, [&](int64_t i, const WorkItem& it) {
    const size_t l = it.layer;
    const int64_t o = L.offset(it);
    k.paired_moment_sums(dtype, static_cast<const char*>(L.a[l].const_data_ptr()) + o,
                         static_cast<const char*>(L.b[l].const_data_ptr()) + o, L.channels[l], L.channel_stride[l],
                         it.end - it.begin, L.position_stride[l], base + at_item[i] * partial.element_size());
  });
  const at::Tensor sums = partial.to(at::kDouble);
  const double* ps = sums.const_data_ptr<double>();
  std::vector<at::Tensor> out;
  for (size_t l = 0; l < L.a.size(); ++l) {
    out.push_back(at::empty({5, n, L.channels[l]}, inputs[0].options().dtype(acc)));
  }
  // Items are ordered layer-major, sample, run: merge each (layer, sample)'s runs in that order.
  size_t i = 0;
  while (i < items.size()) {
    const size_t l = items[i].layer;
    const int64_t s = items[i].sample, C = L.channels[l];
    std::vector<double> total(static_cast<size_t>(5 * C), 0.0);  // sx, sy, M2x, M2y, Cxy
    double count = 0;
    for (; i < items.size() && items[i].layer == static_cast<int32_t>(l) && items[i].sample == s; ++i) {
      const double* q = ps + at_item[i];
      const double m = static_cast<double>(items[i].end - items[i].begin);
      for (int64_t c = 0; c < C; ++c) {
        // the run's means minus those so far: the squares and products gain d_x d_y count m / (count + m)
        const double dx = count > 0 ? q[c] / m - total[c] / count : 0.0;
        const double dy = count > 0 ? q[C + c] / m - total[C + c] / count : 0.0;
        const double f = count > 0 ? count * m / (count + m) : 0.0;
        total[2 * C + c] += q[2 * C + c] + dx * dx * f;
        total[3 * C + c] += q[3 * C + c] + dy * dy * f;
        total[4 * C + c] += q[4 * C + c] + dx * dy * f;
        total[c] += q[c];
        total[C + c] += q[C + c];
      }
      count += m;
    }
    AT_DISPATCH_FLOATING_TYPES(out[l].scalar_type(), "paired_moments_out", [&] {
      scalar_t* o = out[l].data_ptr<scalar_t>();
      const int64_t N = n;
      for (int64_t c = 0; c < C; ++c) {
        const double mx = total[c] / count, my = total[C + c] / count;
        o[(0 * N + s) * C + c] = static_cast<scalar_t>(mx);
        o[(1 * N + s) * C + c] = static_cast<scalar_t>(my);
        o[(2 * N + s) * C + c] = static_cast<scalar_t>(total[2 * C + c] / count);
        o[(3 * N + s) * C + c] = static_cast<scalar_t>(total[3 * C + c] / count);
        o[(4 * N + s) * C + c] = static_cast<scalar_t>(total[4 * C + c] / count);
      }
    });
  }
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
  GradBuffers ga(inputs, layers, input_grad);
  GradBuffers gb(inputs, layers, target_grad);
  if (input_grad || target_grad) {
    const auto items = make_work(layers, n);
    const KernelTable& k = cpu::kernels();
    parallel_over_items(items, [&](int64_t, const WorkItem& w) {
      const PreparedLayer& L = layers[w.layer];
      const int64_t offset = flat_offset(w, L);
      // d/da of |a - b|^p: p (a - b)^(p - 1), i.e. 2 (a - b) for p = 2 and sign(a - b) for p = 1.
      const double s = static_cast<double>(p) * L.scale * gp[w.sample * num_layers + w.layer];
      auto* pa = static_cast<char*>(ga.data(w.layer));
      auto* pb = static_cast<char*>(gb.data(w.layer));
      k.scaled_diff(dtype, p, static_cast<const char*>(L.a.const_data_ptr()) + offset,
                    static_cast<const char*>(L.b.const_data_ptr()) + offset, pa ? pa + offset : nullptr,
                    pb ? pb + offset : nullptr, s, w.end - w.begin);
    });
  }
  return {ga.finish(), gb.finish()};
}

}  // namespace

TORCH_LIBRARY_IMPL(perceptloss, CPU, m) {
  m.impl("feature_distance", &feature_distance_cpu);
  m.impl("feature_distance_backward", &feature_distance_backward_cpu);
  m.impl("unit_feature_distance", &unit_feature_distance_cpu);
  m.impl("unit_feature_distance_backward", &unit_feature_distance_backward_cpu);
  m.impl("paired_moments", &paired_moments_cpu);
}

}  // namespace ops
}  // namespace perceptloss
