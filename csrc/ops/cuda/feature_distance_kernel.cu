// CUDA kernels of perceptloss::feature_distance.
//
// Forward: one launch for all layers over a work list of (layer, sample, chunk) items, a persistent grid that
// strides over the items, 16-byte vectorized loads with scalar head/tail, fp32 accumulation (fp64 for
// double), a fixed-order block reduction into one partial per item, then a small finalize kernel that adds
// each (sample, layer)'s partials in chunk order (in double, like the CPU). No atomics, no host synchronisation, no memset: results are
// bitwise identical run to run and the kernels are safe under CUDA graph capture.
// Backward: one launch over the same work list writing grad_a = s (a - b) (p = 2) or s sign(a - b) (p = 1,
// sign(0) = 0) and grad_b = -grad_a once. The norm p is a template parameter: no per-element branch.
// NCHW-contiguous and channels_last layouts are both read in place (see is_batch_outer_dense).
#include "../feature_distance.h"
#include "../feature_distance_utils.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>

namespace perceptloss {
namespace ops {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxLayers = 24;        // layers per launch (kernel parameter space); more are done in groups
constexpr int64_t kChunk = 1 << 14;   // elements of one sample per work item

struct LayerDesc {
  const void* a;
  const void* b;
  void* ga;
  void* gb;
  int64_t per_sample;
  int64_t chunks;      // chunks per sample
  int64_t item_begin;  // first work item of this layer
  double scale;        // w / per_sample
};

// Passed by value to the kernels (~1.5 KB of kernel parameters) and indexed with a run-time layer number. ptxas
// reads it in place from the parameter bank: `-Xptxas -v` (sm_90, CUDA 13.0) reports 0 bytes stack frame and no
// spill for all 18 kernels, the same registers as with __grid_constant__ (which needs sm_70+, so it is not used).
struct Batch {
  LayerDesc layer[kMaxLayers];
  int num_layers;
  int64_t num_items;
};

template <typename scalar_t>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(scalar_t);
  scalar_t v[kSize];
};

// Where a work item lies: its layer, sample, and element range [begin, begin + len) inside the sample.
struct Item {
  int layer;
  int64_t sample;
  int64_t begin;
  int64_t len;
};

__device__ __forceinline__ Item locate(const Batch& batch, int64_t item) {
  int l = 0;
  while (l + 1 < batch.num_layers && item >= batch.layer[l + 1].item_begin) ++l;
  const LayerDesc& d = batch.layer[l];
  const int64_t local = item - d.item_begin;
  const int64_t begin = (local % d.chunks) * kChunk;
  return {l, local / d.chunks, begin, min(kChunk, d.per_sample - begin)};
}

// Elements before the first 16-byte boundary shared by a and b; -1 when a and b are differently aligned.
template <typename scalar_t>
__device__ __forceinline__ int64_t aligned_head(const void* a, const void* b, int64_t len) {
  const auto ma = reinterpret_cast<uintptr_t>(a) % 16;
  const auto mb = reinterpret_cast<uintptr_t>(b) % 16;
  if (ma != mb || ma % sizeof(scalar_t) != 0) return -1;
  const int64_t head = static_cast<int64_t>((16 - ma) % 16 / sizeof(scalar_t));
  return head < len ? head : len;
}

// The per-element math, shared with the CPU kernels (../feature_distance_utils.h).
using math::grad_term;
using math::norm_term;

template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* shared) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  acc_t total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / 32; ++w) total += shared[w];
  }
  __syncthreads();
  return total;  // valid in thread 0
}

template <typename scalar_t, typename acc_t, int kNorm>
__global__ void __launch_bounds__(kThreads) forward_kernel(Batch batch,
                                                           acc_t* __restrict__ partials) {
  __shared__ acc_t shared[kThreads / 32];
  for (int64_t item = blockIdx.x; item < batch.num_items; item += gridDim.x) {
    const Item it = locate(batch, item);
    const LayerDesc& d = batch.layer[it.layer];
    const int64_t len = it.len;
    const scalar_t* a = static_cast<const scalar_t*>(d.a) + it.sample * d.per_sample + it.begin;
    const scalar_t* b = static_cast<const scalar_t*>(d.b) + it.sample * d.per_sample + it.begin;
    acc_t sum = 0;
    int64_t head = aligned_head<scalar_t>(a, b, len);
    if (head < 0) head = len;  // differently aligned: scalar loop only
    for (int64_t i = threadIdx.x; i < head; i += kThreads) {
      sum += norm_term<kNorm>(static_cast<acc_t>(a[i]) - static_cast<acc_t>(b[i]));
    }
    using P = Pack<scalar_t>;
    const int64_t packs = (len - head) / P::kSize;
    const P* pa = reinterpret_cast<const P*>(a + head);
    const P* pb = reinterpret_cast<const P*>(b + head);
    for (int64_t p = threadIdx.x; p < packs; p += kThreads) {
      const P va = pa[p];
      const P vb = pb[p];
#pragma unroll
      for (int j = 0; j < P::kSize; ++j) {
        sum += norm_term<kNorm>(static_cast<acc_t>(va.v[j]) - static_cast<acc_t>(vb.v[j]));
      }
    }
    for (int64_t i = head + packs * P::kSize + threadIdx.x; i < len; i += kThreads) {
      sum += norm_term<kNorm>(static_cast<acc_t>(a[i]) - static_cast<acc_t>(b[i]));
    }
    const acc_t total = block_sum(sum, shared);
    if (threadIdx.x == 0) partials[item] = total;
  }
}

// Adds each (sample, layer)'s chunk partials in chunk order, in double as the CPU kernel does (a few additions
// per output: the cost is nothing next to the forward), then scales in double and rounds once.
template <typename acc_t>
__global__ void finalize_kernel(Batch batch, const acc_t* __restrict__ partials, int64_t n,
                                int64_t out_cols, int64_t col0, acc_t* __restrict__ out) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= n * batch.num_layers) return;
  const int64_t sample = idx / batch.num_layers;
  const int l = static_cast<int>(idx % batch.num_layers);
  const LayerDesc& d = batch.layer[l];
  const acc_t* p = partials + d.item_begin + sample * d.chunks;
  double total = 0;
  for (int64_t c = 0; c < d.chunks; ++c) total += static_cast<double>(p[c]);
  out[sample * out_cols + col0 + l] = static_cast<acc_t>(total * d.scale);
}

template <typename scalar_t, typename acc_t, int kNorm>
__global__ void __launch_bounds__(kThreads) backward_kernel(Batch batch,
                                                            const acc_t* __restrict__ grad, int64_t grad_cols,
                                                            int64_t col0) {
  for (int64_t item = blockIdx.x; item < batch.num_items; item += gridDim.x) {
    const Item it = locate(batch, item);
    const LayerDesc& d = batch.layer[it.layer];
    const int64_t len = it.len;
    const int64_t offset = it.sample * d.per_sample + it.begin;
    const scalar_t* a = static_cast<const scalar_t*>(d.a) + offset;
    const scalar_t* b = static_cast<const scalar_t*>(d.b) + offset;
    scalar_t* ga = d.ga ? static_cast<scalar_t*>(d.ga) + offset : nullptr;
    scalar_t* gb = d.gb ? static_cast<scalar_t*>(d.gb) + offset : nullptr;
    const acc_t s = static_cast<acc_t>(kNorm * d.scale) * grad[it.sample * grad_cols + col0 + it.layer];
    // Vectorize only when every pointer shares a's alignment (outputs are allocated like a: they do).
    int64_t head = aligned_head<scalar_t>(a, b, len);
    if (head >= 0 && ga && aligned_head<scalar_t>(a, ga, len) != head) head = -1;
    if (head >= 0 && gb && aligned_head<scalar_t>(a, gb, len) != head) head = -1;
    if (head < 0) head = len;
    for (int64_t i = threadIdx.x; i < head; i += kThreads) {
      const acc_t g = grad_term<kNorm>(static_cast<acc_t>(a[i]) - static_cast<acc_t>(b[i])) * s;
      if (ga) ga[i] = static_cast<scalar_t>(g);
      if (gb) gb[i] = static_cast<scalar_t>(-g);
    }
    using P = Pack<scalar_t>;
    const int64_t packs = (len - head) / P::kSize;
    const P* pa = reinterpret_cast<const P*>(a + head);
    const P* pb = reinterpret_cast<const P*>(b + head);
    P* pga = ga ? reinterpret_cast<P*>(ga + head) : nullptr;
    P* pgb = gb ? reinterpret_cast<P*>(gb + head) : nullptr;
    for (int64_t p = threadIdx.x; p < packs; p += kThreads) {
      const P va = pa[p];
      const P vb = pb[p];
      P oa, ob;
#pragma unroll
      for (int j = 0; j < P::kSize; ++j) {
        const acc_t g = grad_term<kNorm>(static_cast<acc_t>(va.v[j]) - static_cast<acc_t>(vb.v[j])) * s;
        oa.v[j] = static_cast<scalar_t>(g);
        ob.v[j] = static_cast<scalar_t>(-g);
      }
      if (pga) pga[p] = oa;
      if (pgb) pgb[p] = ob;
    }
    for (int64_t i = head + packs * P::kSize + threadIdx.x; i < len; i += kThreads) {
      const acc_t g = grad_term<kNorm>(static_cast<acc_t>(a[i]) - static_cast<acc_t>(b[i])) * s;
      if (ga) ga[i] = static_cast<scalar_t>(g);
      if (gb) gb[i] = static_cast<scalar_t>(-g);
    }
  }
}

// Splits the layers into launch groups of at most kMaxLayers and fills their descriptors.
std::vector<Batch> make_batches(const std::vector<PreparedLayer>& layers, int64_t n, GradBuffers* ga = nullptr,
                                GradBuffers* gb = nullptr) {
  std::vector<Batch> batches;
  for (size_t first = 0; first < layers.size(); first += kMaxLayers) {
    Batch batch{};
    batch.num_layers = static_cast<int>(std::min<size_t>(kMaxLayers, layers.size() - first));
    int64_t items = 0;
    for (int i = 0; i < batch.num_layers; ++i) {
      const PreparedLayer& L = layers[first + i];
      LayerDesc& d = batch.layer[i];
      d.a = L.a.const_data_ptr();
      d.b = L.b.const_data_ptr();
      d.ga = ga ? ga->data(first + i) : nullptr;
      d.gb = gb ? gb->data(first + i) : nullptr;
      d.per_sample = L.per_sample;
      d.chunks = (L.per_sample + kChunk - 1) / kChunk;
      d.item_begin = items;
      d.scale = L.scale;
      items += n * d.chunks;
    }
    batch.num_items = items;
    batches.push_back(batch);
  }
  return batches;
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

int grid_size(int64_t items) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t cap = static_cast<int64_t>(sms) * (2048 / kThreads);
  return static_cast<int>(std::max<int64_t>(1, std::min(items, cap)));
}

at::Tensor feature_distance_cuda(at::TensorList inputs, at::TensorList targets, at::ArrayRef<double> weights,
                                 int64_t p) {
  check_norm(p);
  const auto layers = prepare_layers(inputs, targets, weights, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  const int64_t n = inputs[0].size(0);
  const int64_t num_layers = static_cast<int64_t>(layers.size());
  const auto dtype = inputs[0].scalar_type();
  at::Tensor out = at::empty({n, num_layers}, inputs[0].options().dtype(accumulate_type(dtype)));
  if (n == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto batches = make_batches(layers, n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "feature_distance_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    int64_t col0 = 0;
    for (const Batch& batch : batches) {
      at::Tensor partials = at::empty({batch.num_items}, out.options());
      dispatch_norm(p, [&](auto norm) {
        forward_kernel<scalar_t, acc_t, decltype(norm)::value><<<grid_size(batch.num_items), kThreads, 0, stream>>>(
            batch, partials.mutable_data_ptr<acc_t>());
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const int64_t cells = n * batch.num_layers;
      finalize_kernel<acc_t><<<static_cast<unsigned>((cells + 255) / 256), 256, 0, stream>>>(
          batch, partials.const_data_ptr<acc_t>(), n, num_layers, col0, out.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      col0 += batch.num_layers;
    }
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> feature_distance_backward_cuda(
    const at::Tensor& grad, at::TensorList inputs, at::TensorList targets, at::ArrayRef<double> weights,
    bool input_grad, bool target_grad, int64_t p) {
  check_norm(p);
  const auto layers = prepare_layers(inputs, targets, weights, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  const int64_t n = inputs[0].size(0);
  const int64_t num_layers = static_cast<int64_t>(layers.size());
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == n && grad.size(1) == num_layers,
              "feature_distance_backward: grad must be (", n, ", ", num_layers, "), got ", grad.sizes());
  TORCH_CHECK(grad.device() == inputs[0].device(), "feature_distance_backward: grad is on ", grad.device());
  const auto dtype = inputs[0].scalar_type();
  GradBuffers ga(inputs, layers, input_grad), gb(inputs, layers, target_grad);
  if ((input_grad || target_grad) && n > 0) {
    const at::Tensor g = grad.to(accumulate_type(dtype)).contiguous();
    const auto stream = at::cuda::getCurrentCUDAStream();
    const auto batches = make_batches(layers, n, &ga, &gb);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "feature_distance_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      int64_t col0 = 0;
      for (const Batch& batch : batches) {
        dispatch_norm(p, [&](auto norm) {
          backward_kernel<scalar_t, acc_t, decltype(norm)::value><<<grid_size(batch.num_items), kThreads, 0, stream>>>(
              batch, g.const_data_ptr<acc_t>(), num_layers, col0);
        });
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        col0 += batch.num_layers;
      }
    });
  }
  return {ga.finish(), gb.finish()};
}

}  // namespace

TORCH_LIBRARY_IMPL(perceptloss, CUDA, m) {
  m.impl("feature_distance", &feature_distance_cuda);
  m.impl("feature_distance_backward", &feature_distance_backward_cuda);
}

}  // namespace ops
}  // namespace perceptloss
