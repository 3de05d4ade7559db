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


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], device: str, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of ``fn`` in seconds (CUDA: between events after synchronisation)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


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
