// CPU entry points of perceptloss::relu_backward, max_pool2x2_relu_backward and max_pool2x2: argument checks, the
// layout the kernels read, and at::parallel_for over independent ranges (kernels/relu_backward_kernel.cpp).
#include "cpu_dispatch.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

namespace perceptloss {
namespace ops {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per parallel work item

void check_dtype(const char* op, at::ScalarType t) {
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op,
              ": tensors must be float32, float64, float16 or bfloat16, got ", t);
}

void check_pair(const char* op, const at::Tensor& grad, const at::Tensor& output) {
  TORCH_CHECK(grad.device().is_cpu() && output.device().is_cpu(), op, ": CPU kernel called with tensors on ",
              grad.device(), " and ", output.device());
  TORCH_CHECK(grad.scalar_type() == output.scalar_type(), op, ": grad is ", grad.scalar_type(), ", output ",
              output.scalar_type(), "; give both in one dtype");
  check_dtype(op, output.scalar_type());
}

// The layout the 2x2-window kernels read and write: channels-last where `t` is, else contiguous.
at::MemoryFormat window_format(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) ? at::MemoryFormat::ChannelsLast
                                                         : at::MemoryFormat::Contiguous;
}

// Runs the 2x2-window kernels of an (N, C, H, W) tensor in parallel: channels-last `rows(r0, r1)` over the output
// rows (n * (H / 2)), contiguous `planes(p0, p1)` over the (n, c) planes, about kGrain input elements per item.
template <typename Rows, typename Planes>
void parallel_over_windows(at::MemoryFormat format, int64_t n, int64_t c, int64_t h, int64_t w, const Rows& rows,
                           const Planes& planes) {
  if (format == at::MemoryFormat::ChannelsLast) {
    at::parallel_for(0, n * (h / 2), std::max<int64_t>(1, kGrain / (2 * w * c)), rows);
  } else {
    at::parallel_for(0, n * c, std::max<int64_t>(1, kGrain / (h * w)), planes);
  }
}

// `t` with the strides of the dense tensor `like` (a copy where they differ).
at::Tensor strided_like(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides()) return t;
  at::Tensor out = at::empty_like(like);
  out.copy_(t);
  return out;
}

at::Tensor relu_backward_cpu(const at::Tensor& grad, const at::Tensor& output, const std::optional<at::Tensor>& grad2) {
  check_pair("relu_backward", grad, output);
  TORCH_CHECK(grad.sizes() == output.sizes(), "relu_backward: grad ", grad.sizes(), " and output ", output.sizes(),
              " shapes differ");
  const bool two = grad2.has_value() && grad2->defined();
  if (two) {
    check_pair("relu_backward", *grad2, output);
    TORCH_CHECK(grad2->sizes() == output.sizes(), "relu_backward: grad2 ", grad2->sizes(), " and output ",
                output.sizes(), " shapes differ");
  }
  at::Tensor out = at::empty_like(output);  // output's strides where it is dense (the fake kernel's rule too)
  const at::Tensor y = strided_like(output, out);
  const at::Tensor g = strided_like(grad, out);
  const at::Tensor g2 = two ? strided_like(*grad2, out) : at::Tensor();
  const auto dtype = y.scalar_type();
  const int64_t es = y.element_size();
  const char* py = static_cast<const char*>(y.const_data_ptr());
  const char* pg = static_cast<const char*>(g.const_data_ptr());
  const char* pg2 = two ? static_cast<const char*>(g2.const_data_ptr()) : nullptr;
  char* po = static_cast<char*>(out.mutable_data_ptr());
  const auto& k = cpu::relu_kernels();
  at::parallel_for(0, y.numel(), kGrain, [&](int64_t b, int64_t e) {
    k.relu_backward(dtype, py + b * es, pg + b * es, pg2 ? pg2 + b * es : nullptr, po + b * es, e - b);
  });
  return out;
}

at::Tensor max_pool2x2_relu_backward_cpu(const at::Tensor& grad, const at::Tensor& output) {
  check_pair("max_pool2x2_relu_backward", grad, output);
  TORCH_CHECK(output.dim() == 4, "max_pool2x2_relu_backward: output must be (N, C, H, W), got ", output.sizes());
  const int64_t n = output.size(0), c = output.size(1), h = output.size(2), w = output.size(3);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == n && grad.size(1) == c && grad.size(2) == h / 2 &&
                  grad.size(3) == w / 2,
              "max_pool2x2_relu_backward: grad must be (", n, ", ", c, ", ", h / 2, ", ", w / 2,
              ") for a 2x2 max-pool of ", output.sizes(), ", got ", grad.sizes());
  const auto format = window_format(output);
  if (output.numel() == 0 || h / 2 == 0 || w / 2 == 0) {
    return at::zeros(output.sizes(), output.options().memory_format(format));
  }
  const at::Tensor y = output.contiguous(format);
  const at::Tensor g = grad.contiguous(format);
  at::Tensor out = at::empty(output.sizes(), output.options().memory_format(format));
  const auto dtype = y.scalar_type();
  const void* py = y.const_data_ptr();
  const void* pg = g.const_data_ptr();
  void* po = out.mutable_data_ptr();
  const auto& k = cpu::relu_kernels();
  parallel_over_windows(
      format, n, c, h, w,
      [&](int64_t r0, int64_t r1) { k.pool_backward_channels_last(dtype, py, pg, po, c, h, w, r0, r1); },
      [&](int64_t p0, int64_t p1) { k.pool_backward_contiguous(dtype, py, pg, po, h, w, p0, p1); });
  return out;
}

at::Tensor max_pool2x2_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "max_pool2x2: CPU kernel called with a tensor on ", x.device());
  TORCH_CHECK(x.dim() == 4, "max_pool2x2: x must be (N, C, H, W), got ", x.sizes());
  const auto t = x.scalar_type();
  check_dtype("max_pool2x2", t);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(h >= 2 && w >= 2, "max_pool2x2: a 2x2 max-pool needs H, W >= 2, got ", x.sizes());
  const auto format = window_format(x);
  const at::Tensor xc = x.contiguous(format);
  at::Tensor out = at::empty({n, c, h / 2, w / 2}, x.options().memory_format(format));
  if (out.numel() == 0) return out;
  const void* px = xc.const_data_ptr();
  void* po = out.mutable_data_ptr();
  const auto& k = cpu::relu_kernels();
  parallel_over_windows(
      format, n, c, h, w, [&](int64_t r0, int64_t r1) { k.pool_forward_channels_last(t, px, po, c, h, w, r0, r1); },
      [&](int64_t p0, int64_t p1) { k.pool_forward_contiguous(t, px, po, h, w, p0, p1); });
  return out;
}

// DISTS' L2 pooling, forward (perceptloss/backbones/vgg_l2pool.py): (N, C, H, W) -> channels-last
// (N, C, ceil(H/2), ceil(W/2)), the input made channels-last first where it is not.
at::Tensor l2_pool3x3_cpu(const at::Tensor& x, at::ArrayRef<double> window) {
  TORCH_CHECK(x.device().is_cpu(), "l2_pool3x3: CPU kernel called with a tensor on ", x.device());
  TORCH_CHECK(x.dim() == 4, "l2_pool3x3: x must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(window.size() == 9, "l2_pool3x3: window must hold the 9 weights of a 3x3 window, got ", window.size());
  check_dtype("l2_pool3x3", x.scalar_type());
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = at::empty({n, c, (h + 1) / 2, (w + 1) / 2}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  const auto t = x.scalar_type();
  const void* px = xc.const_data_ptr();
  void* po = out.mutable_data_ptr();
  const auto& k = cpu::relu_kernels();
  const int64_t rows = n * ((h + 1) / 2);
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / (6 * w * c)), [&](int64_t r0, int64_t r1) {
    k.l2_pool3x3_channels_last(t, px, po, window.data(), c, h, w, r0, r1);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(perceptloss, CPU, m) {
  m.impl("relu_backward", &relu_backward_cpu);
  m.impl("max_pool2x2_relu_backward", &max_pool2x2_relu_backward_cpu);
  m.impl("max_pool2x2", &max_pool2x2_cpu);
  m.impl("l2_pool3x3", &l2_pool3x3_cpu);
}

}  // namespace ops
}  // namespace perceptloss
