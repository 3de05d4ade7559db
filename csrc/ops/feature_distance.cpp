// Schema of the perceptloss operators and the argument preparation shared by the CPU and CUDA kernels.
// Device-neutral: it includes no backend header.
#include "feature_distance.h"

#include <ATen/ops/empty_like.h>
#include <torch/library.h>

namespace perceptloss {
namespace ops {

bool is_batch_outer_dense(const at::Tensor& t) {
  if (!t.is_non_overlapping_and_dense()) {
    return false;
  }
  const int64_t n = t.size(0);
  return n <= 1 || t.stride(0) == t.numel() / n;
}

at::ScalarType accumulate_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void check_norm(int64_t p) {
  TORCH_CHECK(p == 1 || p == 2, "feature_distance: p must be 1 (mean absolute difference) or 2 (mean squared "
              "difference), got ", p);
}

std::vector<PreparedLayer> prepare_layers(
    at::TensorList inputs,
    at::TensorList targets,
    at::ArrayRef<double> weights,
    c10::DeviceType device_type) {
  TORCH_CHECK(!inputs.empty(), "feature_distance: needs at least one layer, got empty lists");
  TORCH_CHECK(
      inputs.size() == targets.size() && inputs.size() == weights.size(),
      "feature_distance: got ", inputs.size(), " inputs, ", targets.size(), " targets and ", weights.size(),
      " weights; give one of each per layer");
  const auto dtype = inputs[0].scalar_type();
  const auto device = inputs[0].device();
  const int64_t n = inputs[0].dim() > 0 ? inputs[0].size(0) : -1;
  std::vector<PreparedLayer> layers;
  layers.reserve(inputs.size());
  for (size_t l = 0; l < inputs.size(); ++l) {
    const auto& a = inputs[l];
    const auto& b = targets[l];
    TORCH_CHECK(a.dim() >= 2, "feature_distance: layer ", l, " features must be (N, ...), got ", a.sizes());
    TORCH_CHECK(a.sizes() == b.sizes(), "feature_distance: layer ", l, " input ", a.sizes(), " and target ",
                b.sizes(), " shapes differ");
    TORCH_CHECK(a.size(0) == n, "feature_distance: layer ", l, " has batch ", a.size(0), ", layer 0 has ", n);
    TORCH_CHECK(a.scalar_type() == dtype && b.scalar_type() == dtype, "feature_distance: layer ", l,
                " dtypes (", a.scalar_type(), ", ", b.scalar_type(), ") differ from layer 0's ", dtype);
    TORCH_CHECK(a.device() == device && b.device() == device, "feature_distance: layer ", l, " devices (",
                a.device(), ", ", b.device(), ") differ from layer 0's ", device);
    TORCH_CHECK(a.device().type() == device_type, "feature_distance: kernel for ", device_type,
                " called with tensors on ", a.device());
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                "feature_distance: features must be float32, float64, float16 or bfloat16, got ", dtype);
    int64_t per_sample = 1;
    for (int64_t d = 1; d < a.dim(); ++d) {
      per_sample *= a.size(d);
    }
    TORCH_CHECK(per_sample > 0, "feature_distance: layer ", l, " has empty samples ", a.sizes(),
                " (images too small for this layer?)");
    at::Tensor aw = is_batch_outer_dense(a) ? a : a.contiguous();
    at::Tensor bw = b;
    if (!(is_batch_outer_dense(b) && b.strides() == aw.strides())) {
      bw = at::empty_like(aw);  // aw is dense, so empty_like keeps its strides
      bw.copy_(b);
    }
    layers.push_back({aw, bw, per_sample, weights[l] / static_cast<double>(per_sample)});
  }
  return layers;
}

GradBuffers::GradBuffers(at::TensorList inputs, const std::vector<at::Tensor>& read, bool needed) {
  if (!needed) {
    return;
  }
  for (size_t l = 0; l < read.size(); ++l) {
    at::Tensor o = at::empty_like(inputs[l]);
    out.push_back(o);
    work.push_back(o.strides() == read[l].strides() ? o : at::empty_like(read[l]));
  }
}

GradBuffers::GradBuffers(at::TensorList inputs, const std::vector<PreparedLayer>& layers, bool needed)
    : GradBuffers(inputs, [&] {
        std::vector<at::Tensor> read;
        for (const auto& L : layers) read.push_back(L.a);
        return read;
      }(), needed) {}

void* GradBuffers::data(size_t layer) {
  return work.empty() ? nullptr : work[layer].mutable_data_ptr();
}

std::vector<at::Tensor> GradBuffers::finish() {
  for (size_t l = 0; l < out.size(); ++l) {
    if (!work[l].is_same(out[l])) {
      out[l].copy_(work[l]);
    }
  }
  return out;
}

}  // namespace ops
}  // namespace perceptloss

TORCH_LIBRARY(perceptloss, m) {
  // p = 2: mean squared difference (the default, and the only form before p existed); p = 1: mean absolute
  // difference. A defaulted trailing argument keeps every existing call site and serialized graph valid.
  m.def("feature_distance(Tensor[] inputs, Tensor[] targets, float[] weights, int p=2) -> Tensor");
  m.def(
      "feature_distance_backward(Tensor grad, Tensor[] inputs, Tensor[] targets, float[] weights, "
      "bool input_grad, bool target_grad, int p=2) -> (Tensor[], Tensor[])");
  // LPIPS' distance and the "cosine" feature distance in one pass over a and b (CPU kernels; the backward's
  // own derivative, and create_graph=True, use plain torch ops: perceptloss/_ops.py). Per layer, (N, C, *) features:
  //   out[n, l] = weights[l] / P * sum over the P positions of sum_c channel_weights[l][c] (a_c / (|a| + eps) - b_c / (|b| + eps))^2
  // with |.| the L2 norm over the C channels at the position; float32 (float64 for float64 features).
  m.def("unit_feature_distance(Tensor[] inputs, Tensor[] targets, Tensor[] channel_weights, float[] weights, "
        "float eps=1e-10) -> Tensor");
  m.def("unit_feature_distance_backward(Tensor grad, Tensor[] inputs, Tensor[] targets, Tensor[] channel_weights, "
        "float[] weights, float eps, bool input_grad, bool target_grad) -> (Tensor[], Tensor[])");
  // DISTS' statistics (CPU kernel; gradient in plain torch ops, perceptloss/_ops.py): per layer, (N, C, *) features
  // of two images -> (5, N, C) float32 (float64 for float64): the means over positions of x and y, their variances
  // (mean squared deviation) and their covariance (mean product of the deviations, = mean(x y) - mean(x) mean(y)).
  m.def("paired_moments(Tensor[] inputs, Tensor[] targets) -> Tensor[]");
  // The backward of the frozen trunks' fused convolution + ReLU (+ 2x2 max-pool), perceptloss/_conv_relu.py:
  // grad (+ grad2, a tapped layer's second gradient) where output = relu(x) > 0, else 0; and through
  // max_pool2d(output, 2, 2) first, each window's first maximum taking the pooled gradient. CPU kernels only.
  m.def("relu_backward(Tensor grad, Tensor output, Tensor? grad2=None) -> Tensor");
  m.def("max_pool2x2_relu_backward(Tensor grad, Tensor output) -> Tensor");
  m.def("max_pool2x2(Tensor x) -> Tensor");  // max_pool2d(x, 2, 2)'s values, no indices (the fused block's forward)
  // DISTS' L2 pooling: sqrt(3x3 window-weighted sum of x^2 + 1e-12), stride 2, zero padding 1, per channel, in
  // float32 (float64 for float64), channels-last out (perceptloss/backbones/vgg_l2pool.py). CPU kernel, no backward.
  m.def("l2_pool3x3(Tensor x, float[] window) -> Tensor");
}
