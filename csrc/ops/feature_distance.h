// perceptloss::feature_distance — multi-layer normalised squared (p = 2) or absolute (p = 1) feature
// distance, fused.
//
// For layer l with activations a_l, b_l of shape (N, ...) and weight w_l:
//   p = 2: out[n, l] = w_l / numel(a_l[n]) * sum((a_l[n] - b_l[n])^2)
//   p = 1: out[n, l] = w_l / numel(a_l[n]) * sum(|a_l[n] - b_l[n]|)
// The output is float32 (float64 for float64 inputs). The backward writes, in one pass over a and b,
//   p = 2: grad_a = 2 w_l / numel(a_l[n]) * (a - b) * grad_out[n, l]
//   p = 1: grad_a = w_l / numel(a_l[n]) * sign(a - b) * grad_out[n, l]   (sign(0) = 0: the subgradient 0)
// and grad_b = -grad_a.
//
// perceptloss::unit_feature_distance (CPU) is the same reduction over the channel-unit-normalised features, with
// per-channel weights: LPIPS' distance and FeatureDistance("cosine"); it shares the argument checks below.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

namespace perceptloss {
namespace ops {

// One layer, ready for flat per-sample indexing: `a` and `b` share one layout in which sample n occupies the
// contiguous memory block [n * per_sample, (n + 1) * per_sample) (NCHW-contiguous and channels_last both are).
struct PreparedLayer {
  at::Tensor a;
  at::Tensor b;
  int64_t per_sample;  // C * H * W
  double scale;        // w_l / per_sample
};

// True when every sample of `t` is one contiguous block of memory and samples follow each other.
bool is_batch_outer_dense(const at::Tensor& t);

// Checks the arguments (same count, shapes, dtype, device, non-empty samples) and brings each layer to a
// layout fit for flat indexing, copying only what is not already fit.
std::vector<PreparedLayer> prepare_layers(
    at::TensorList inputs,
    at::TensorList targets,
    at::ArrayRef<double> weights,
    c10::DeviceType device_type);

// The gradient tensors of the backward for one side (inputs or targets). For each layer, `out[l]` has the
// strides of the layer's input features (what the fake kernel promises) and `work[l]` is where the kernel
// writes: the same tensor, unless the input's layout is unfit for flat indexing (then `finish` copies).
struct GradBuffers {
  std::vector<at::Tensor> out;
  std::vector<at::Tensor> work;

  // Empty when `needed` is false; otherwise uninitialised tensors from at::empty_like. `read[l]`: the tensor whose
  // layout the kernel reads layer l in (and so writes its gradient in).
  GradBuffers(at::TensorList inputs, const std::vector<at::Tensor>& read, bool needed);
  GradBuffers(at::TensorList inputs, const std::vector<PreparedLayer>& layers, bool needed);
  // Raw pointers the kernels write to (nullptr per layer when not needed).
  void* data(size_t layer);
  // Copies work buffers into their outputs where they differ; returns the outputs.
  std::vector<at::Tensor> finish();
};

at::ScalarType accumulate_type(at::ScalarType t);

// Raises unless p is 1 (absolute difference) or 2 (squared difference).
void check_norm(int64_t p);

}  // namespace ops
}  // namespace perceptloss
