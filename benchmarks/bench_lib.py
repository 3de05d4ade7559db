"""Shared pieces of the benchmarks: shapes, contenders, a timer, copy bandwidth, environment description.

Methodology: every contender gets the same inputs; each measurement is preceded by warm-up calls; CUDA work is
synchronised (events) before a clock is read; the reported figure is the median of the repeats.
"""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

import perceptloss
from perceptloss.functional import feature_distance_reference

#: VGG19 (channels, downsampling) at relu1_1 ... relu5_1.
VGG19_RELU_X1 = [(64, 1), (128, 2), (256, 4), (512, 8), (512, 16)]
CASES = {"N64-64px": (64, 64), "N16-256px": (16, 256)}


def vgg19_feature_shapes(n: int, size: int) -> list[tuple[int, int, int, int]]:
    return [(n, c, size // s, size // s) for c, s in VGG19_RELU_X1]


def make_features(case: str, dtype: torch.dtype, device: str, requires_grad: bool, seed: int = 0):
    n, size = CASES[case]
    g = torch.Generator(device=device).manual_seed(seed)
    shapes = vgg19_feature_shapes(n, size)
    a = [torch.randn(s, generator=g, device=device, dtype=dtype).requires_grad_(requires_grad) for s in shapes]
    b = [torch.randn(s, generator=g, device=device, dtype=dtype) for s in shapes]
    return a, b, [1.0] * len(shapes)


def eager_mse(a, b, w):
    """What a user writes: a sum over layers of w * mse_loss (batch mean) -> scalar."""
    return sum(wl * F.mse_loss(x.float(), y.float()) for x, y, wl in zip(a, b, w))


def eager_per_sample(a, b, w):
    """The per-sample variant: (N, L) like the fused operator."""
    return feature_distance_reference(a, b, w)


def fused(a, b, w):
    return torch.ops.perceptloss.feature_distance(a, b, w)


_compiled: dict[str, Callable] = {}


def compiled_eager(a, b, w):
    fn = _compiled.setdefault("eager_per_sample", torch.compile(eager_per_sample, dynamic=False))
    return fn(a, b, w)


OPERATOR_CONTENDERS = {
    "fused op": fused,
    "eager mse_loss sum": eager_mse,
    "eager per-sample": eager_per_sample,
    "torch.compile per-sample": compiled_eager,
}


class HandWrittenVGGLoss(torch.nn.Module):
    """The 20-line perceptual loss a careful user writes: torchvision VGG19 truncated after the deepest tap,
    frozen, in-place ReLU, a clone at each tap (the next in-place ReLU would overwrite it), ``mse_loss`` summed
    over layers, the target's features under ``no_grad``. ImageNet normalisation. Random weights (same cost)."""

    def __init__(self, taps=(1, 6, 11)):  # relu1_1, relu2_1, relu3_1 (the DFC-VAE's VAE-123)
        super().__init__()
        import torchvision

        self.taps = set(taps)
        self.net = torchvision.models.vgg19(weights=None).features[: max(taps) + 1].eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def features(self, x):
        h, out = (x - self.mean) / self.std, []
        for i, m in enumerate(self.net):
            h = m(h)
            if i in self.taps:
                out.append(h.clone())
        return out

    def forward(self, x, y):
        with torch.no_grad():
            fy = self.features(y)
        return sum(F.mse_loss(a, b) for a, b in zip(self.features(x), fy))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], device: str, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of ``fn`` in seconds (CUDA: between events after synchronisation)."""
    return interleaved_medians({"fn": fn}, device, warmup, repeats)["fn"]


def time_once(fn: Callable[[], object], device: str) -> float:
    """Wall time of one call in seconds (CUDA: between events, synchronised)."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved_medians(fns: dict[str, Callable[[], object]], device: str, warmup: int = 3,
                        repeats: int = 10) -> dict[str, float]:
    """Median wall time in seconds of each of ``fns``, timed round-robin (A B C A B C ...) on the same inputs.

    Interleaving spreads the noise of a shared machine (other jobs, frequency changes) over every contender
    instead of letting it hit whichever contender happened to run at that moment.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_once(fn, device))
    return {name: statistics.median(ts) for name, ts in times.items()}


def read_floor(a, b, w):
    """Reads every element of a and b once (one dot product per layer): the least a forward can do."""
    return [torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)]


def read_floor_sum(a, b, w):
    """Reads every element of a and b once (a sum per tensor, accumulated in float)."""
    return [x.sum() + y.sum() for x, y in zip(a, b)]


def without_grad_cache(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with the fused backward's gradient-memory cache off (fresh buffers every call)."""
    def run():
        before = perceptloss.set_cpu_grad_cache(False)
        try:
            return fn()
        finally:
            perceptloss.set_cpu_grad_cache(before)
    return run


def proc_status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), e.g. "VmRSS" or "VmHWM" (peak), in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def copy_bandwidth(device: str, nbytes: int = 1 << 28) -> float:
    """Measured device copy bandwidth in bytes/s (read + write counted), from a large tensor copy."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), device, warmup=2, repeats=7)
    return 2 * nbytes / t


def describe_machine(device: str) -> str:
    parts = [f"torch {torch.__version__}", f"perceptloss {perceptloss.__version__} (fused op built: {perceptloss.HAS_EXT})",
             f"python {platform.python_version()}", f"threads {torch.get_num_threads()}"]
    if device.startswith("cuda"):
        parts.insert(0, f"GPU {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        parts.insert(0, f"CPU {cpu}")
    return ", ".join(parts)
