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

namespace perceptloss {
namespace ops {
namespace {

using cpu::KernelTable;

constexpr int64_t kChunk = 1 << 15;  // elements of one sample handled by one work item

struct WorkItem {
  int32_t layer;
  int64_t sample;
  int64_t begin;  // element offset inside the sample
  int64_t end;
  int64_t start;  // elements of all earlier items: where the item starts in the whole work
};

std::vector<WorkItem> make_work(const std::vector<PreparedLayer>& layers, int64_t n) {
  std::vector<WorkItem> items;
  int64_t start = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t b = 0; b < layers[l].per_sample; b += kChunk) {
        const int64_t e = std::min(b + kChunk, layers[l].per_sample);
        items.push_back({static_cast<int32_t>(l), s, b, e, start});
        start += e - b;
      }
    }
  }
  return items;
}

// Elements of all items (of every layer and sample).
int64_t total_elements(const std::vector<WorkItem>& items) {
  return items.empty() ? 0 : items.back().start + (items.back().end - items.back().begin);
}

// Calls f(index, item, its layer, byte offset of the item in the layer's a and b) for every work item, in
// parallel; items are independent. The threads get equal shares of elements, not of items: the items of a
// layer whose samples are smaller than kChunk are short, and an even split of items would give one thread
// more memory to read than the other (with VGG19 relu1_1..relu5_1 at 64x64, 52.5% against 47.5% on two
// threads). Each item goes to the thread whose element range holds its first element.
template <typename F>
void parallel_over_items(const std::vector<PreparedLayer>& layers, const std::vector<WorkItem>& items, F&& f) {
  if (items.empty()) {
    return;
  }
  at::parallel_for(0, total_elements(items), kChunk, [&](int64_t lo, int64_t hi) {
    const auto by_start = [](const WorkItem& w, int64_t x) { return w.start < x; };
    const int64_t first = std::lower_bound(items.begin(), items.end(), lo, by_start) - items.begin();
    const int64_t last = std::lower_bound(items.begin(), items.end(), hi, by_start) - items.begin();
    for (int64_t i = first; i < last; ++i) {
      const WorkItem& w = items[i];
      const PreparedLayer& L = layers[w.layer];
      f(i, w, L, (w.sample * L.per_sample + w.begin) * L.a.element_size());
    }
  });
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
  const KernelTable& k = cpu::kernels();
  parallel_over_items(layers, items, [&](int64_t i, const WorkItem& w, const PreparedLayer& L, int64_t offset) {
    partial[i] = k.diff_norm_sum(dtype, p, static_cast<const char*>(L.a.const_data_ptr()) + offset,
                                 static_cast<const char*>(L.b.const_data_ptr()) + offset, w.end - w.begin);
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
  GradBuffers ga(inputs, layers, input_grad);
  GradBuffers gb(inputs, layers, target_grad);
  if (input_grad || target_grad) {
    const auto items = make_work(layers, n);
    const KernelTable& k = cpu::kernels();
    parallel_over_items(layers, items, [&](int64_t, const WorkItem& w, const PreparedLayer& L, int64_t offset) {
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
}

}  // namespace ops
}  // namespace perceptloss
