// The streaming policy of the CPU backward (memory_streaming.h). Measured on an AMD EPYC Zen 5 (2 cores, 1 MiB L2
// per core, 32 MiB L3), fused forward+backward with non-temporal against ordinary gradient stores, one process,
// shuffled interleaved medians (benchmarks/run.py): VGG19 relu1_1..relu5_1 features at N=64 64x64 and N=16
// 256x256 (192 MiB - 1.5 GiB touched) 12-16% faster natively, 8-17% with the AVX2 kernels. On 3-46 MiB of
// features followed by the ops that read the gradient next (mul, relu) no difference was measurable either way
// (median ratios 0.95-1.09 over 60 shuffled rounds, within the noise). The threshold follows the vendors' rule for
// non-temporal stores (data larger than the caches, not read again soon): twice the last-level cache, read from
// the system rather than assumed (no streaming where it is not known).
// Also tried and not kept: prefetching a and b ahead in the forward (prefetchnta / prefetcht1, 512 B - 8 KiB
// ahead): -9% to +3% in shuffled-order runs, depending on the machine's load (the +4-11% of the first runs came
// from a fixed benchmark order); no robust gain over the hardware prefetchers.
#include "memory_streaming.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#if __has_include(<unistd.h>)
#include <unistd.h>
#endif

namespace perceptloss {
namespace ops {
namespace cpu {
namespace {

constexpr int64_t kNever = -1;

// "32768K" / "1M" / "512" -> bytes; 0 when unreadable.
int64_t parse_size(const std::string& text) {
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (end == text.c_str() || v <= 0) return 0;
  const char unit = *end;
  const int64_t scale = unit == 'K' ? 1024 : unit == 'M' ? 1024 * 1024 : unit == 'G' ? 1024LL * 1024 * 1024 : 1;
  return static_cast<int64_t>(v) * scale;
}

std::string read_line(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

// The largest level of data (or unified) cache of CPU 0 in Linux's sysfs: what one core shares with its
// neighbours (an AMD CCD's L3, not the package's sum, which glibc's sysconf reports on some EPYCs: 384 MiB for
// 12 CCDs of 32 MiB). 0 elsewhere.
int64_t sysfs_last_level_cache() {
  int best_level = 0;
  int64_t best_bytes = 0;
  for (int index = 0; index < 16; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    const std::string type = read_line(dir + "type");
    if (type.empty()) break;
    if (type != "Data" && type != "Unified") continue;
    const int level = std::atoi(read_line(dir + "level").c_str());
    const int64_t bytes = parse_size(read_line(dir + "size"));
    if (level > best_level && bytes > 0) {
      best_level = level;
      best_bytes = bytes;
    }
  }
  return best_bytes;
}

// Where sysfs has no cache information (some containers, non-Linux): the C library's figure for the L3 (or L2).
// It can overstate what a core uses (the package's sum above), which only makes the threshold more cautious.
int64_t sysconf_last_level_cache() {
#if defined(_SC_LEVEL3_CACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
  for (const int name : {_SC_LEVEL3_CACHE_SIZE, _SC_LEVEL2_CACHE_SIZE}) {
    const long v = ::sysconf(name);
    if (v > 0) return static_cast<int64_t>(v);
  }
#endif
  return 0;
}

int64_t default_threshold() {
  const char* env = std::getenv("PERCEPTLOSS_CPU_STREAMING");
  if (env != nullptr && (std::strcmp(env, "0") == 0 || std::strcmp(env, "false") == 0)) {
    return kNever;
  }
  const int64_t cache = last_level_cache_bytes();
  return cache > 0 ? 2 * cache : kNever;
}

std::atomic<int64_t>& threshold() {
  static std::atomic<int64_t> value{default_threshold()};
  return value;
}

int64_t streaming_threshold() {
  return threshold().load();
}

// Sets the threshold in bytes (-1: never stream, 0: always); returns the one in use before.
int64_t set_streaming_threshold(int64_t bytes) {
  TORCH_CHECK(bytes >= kNever, "perceptloss: the streaming threshold is a number of bytes >= 0, or -1 for never; got ",
              bytes);
  return threshold().exchange(bytes);
}

}  // namespace

int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    const int64_t from_sysfs = sysfs_last_level_cache();
    return from_sysfs > 0 ? from_sysfs : sysconf_last_level_cache();
  }();
  return bytes;
}

bool streams_through_memory(int64_t bytes) {
  const int64_t t = streaming_threshold();
  return t != kNever && bytes > t;
}

}  // namespace cpu
}  // namespace ops
}  // namespace perceptloss

TORCH_LIBRARY_FRAGMENT(perceptloss, m) {
  m.def("_cpu_last_level_cache() -> int", &perceptloss::ops::cpu::last_level_cache_bytes);
  m.def("_cpu_streaming_threshold() -> int", &perceptloss::ops::cpu::streaming_threshold);
  m.def("_set_cpu_streaming_threshold(int bytes) -> int", &perceptloss::ops::cpu::set_streaming_threshold);
}
