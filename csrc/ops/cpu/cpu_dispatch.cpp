#include "cpu_dispatch.h"

#include <ATen/Version.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

namespace perceptloss {
namespace ops {
namespace cpu {
namespace {

// Every level built into this library, lowest first.
std::vector<const KernelTable*> built_levels() {
  std::vector<const KernelTable*> levels = {&DEFAULT::kernels};
#ifdef PERCEPTLOSS_HAVE_AVX2_KERNELS
  levels.push_back(&AVX2::kernels);
#endif
#ifdef PERCEPTLOSS_HAVE_AVX512_KERNELS
  levels.push_back(&AVX512::kernels);
#endif
  return levels;
}

int rank(const std::string& level) {
  if (level == "AVX512") return 2;
  if (level == "AVX2") return 1;
  return 0;  // DEFAULT, and levels of other architectures (VSX, ZVECTOR, SVE) this library has no kernels for
}

// Built levels at or below the level ATen chose for this CPU.
std::vector<const KernelTable*> runnable_levels() {
  const int max_rank = rank(at::get_cpu_capability());
  std::vector<const KernelTable*> out;
  for (const KernelTable* k : built_levels()) {
    if (rank(k->level) <= max_rank) out.push_back(k);
  }
  return out;
}

std::atomic<const KernelTable*> forced{nullptr};

const KernelTable& automatic() {
  static const KernelTable* chosen = runnable_levels().back();
  return *chosen;
}

std::string kernel_level() {
  return kernels().level;
}

// Forces `level` ("" returns to the automatic choice); returns the level in use before.
std::string set_kernel_level(std::string level) {
  std::transform(level.begin(), level.end(), level.begin(), ::toupper);
  const std::string before = kernel_level();
  if (level.empty()) {
    forced.store(nullptr);
    return before;
  }
  for (const KernelTable* k : runnable_levels()) {
    if (level == k->level) {
      forced.store(k);
      return before;
    }
  }
  std::string have;
  for (const auto& name : available_levels()) have += (have.empty() ? "" : ", ") + name;
  TORCH_CHECK(false, "perceptloss: CPU kernel level '", level, "' is not available here; built and runnable: ", have);
}

}  // namespace

const KernelTable& kernels() {
  const KernelTable* k = forced.load();
  return k ? *k : automatic();
}

const ReluKernelTable& relu_kernels() {
  const std::string level = kernels().level;
#ifdef PERCEPTLOSS_HAVE_AVX512_KERNELS
  if (level == AVX512::relu_kernels.level) return AVX512::relu_kernels;
#endif
#ifdef PERCEPTLOSS_HAVE_AVX2_KERNELS
  if (level == AVX2::relu_kernels.level) return AVX2::relu_kernels;
#endif
  return DEFAULT::relu_kernels;
}

std::vector<std::string> available_levels() {
  std::vector<std::string> out;
  for (const KernelTable* k : runnable_levels()) out.emplace_back(k->level);
  return out;
}

}  // namespace cpu
}  // namespace ops
}  // namespace perceptloss

TORCH_LIBRARY_FRAGMENT(perceptloss, m) {
  m.def("_cpu_kernel_levels() -> str[]", &perceptloss::ops::cpu::available_levels);
  m.def("_cpu_kernel_level() -> str", &perceptloss::ops::cpu::kernel_level);
  m.def("_set_cpu_kernel_level(str level) -> str", &perceptloss::ops::cpu::set_kernel_level);
}
