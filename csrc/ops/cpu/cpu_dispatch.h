// Run-time choice of the CPU kernel level, modelled on ATen's DispatchStub: the highest level that was built
// and that ATen reports for this CPU (at::get_cpu_capability(), so ATEN_CPU_CAPABILITY=default|avx2 lowers it).
// Tests and benchmarks can force a lower level through perceptloss::_set_cpu_kernel_level.
#pragma once

#include "feature_distance_kernel.h"
#include "relu_backward_kernel.h"

#include <string>
#include <vector>

namespace perceptloss {
namespace ops {
namespace cpu {

// The kernels of the level in use.
const KernelTable& kernels();

// The ReLU / max-pool backward kernels of the same level.
const ReluKernelTable& relu_kernels();

// Levels built into this library that this CPU can run, lowest first ("DEFAULT", "AVX2", "AVX512").
std::vector<std::string> available_levels();

}  // namespace cpu
}  // namespace ops
}  // namespace perceptloss
