"""``perceptloss.backends.cpu``: the fused operator's CPU side (kernel level, gradient-memory cache, streaming).

As ``torch.backends.cpu`` for ATen, this is where the CPU kernels are inspected and tuned; the losses need none
of it. Every function raises ``RuntimeError`` (saying how to build it) when the operator has no CPU kernel
(``perceptloss.backends.has_kernel("cpu")`` is False).

**Kernel level.** The CPU kernels are compiled once per vector-instruction level (DEFAULT, AVX2, AVX512 on
x86-64) and the highest one that ATen reports for this CPU runs, so ``ATEN_CPU_CAPABILITY=avx2`` (or
``default``) lowers it like it lowers ATen's: :func:`kernel_level`, :func:`kernel_levels`,
:func:`forced_kernel_level`.

**Gradient-memory cache.** The backward takes its gradient tensors from a cache of freed gradient memory (on the
CPU a fresh large allocation page-faults and costs more than the kernel). A block is reused only after its tensor
was freed (no tensor, view, graph or hook refers to it any more). Blocks are kept per size in bytes, whatever the
dtype: per size at most as many as were live at once over a window of recent requests, so a process that
alternates float32/bfloat16 and several shapes keeps every size it keeps using; sizes not requested for two
windows (2 x 256 requests) are freed, and the whole cache holds at most twice the most gradient bytes live at
once in the window. :func:`empty_cache` returns that memory to the system; :func:`set_grad_cache` ``(False)`` or
``PERCEPTLOSS_CPU_GRAD_CACHE=0`` turns the cache off (:func:`cache_bytes`: what it holds).

**Streaming.** The backward writes the input gradient with non-temporal stores when one call touches (a and b
read, gradients written) more than twice the last-level cache: no read-for-ownership of every gradient line
(benchmarks/README.md has the measurements). On data that fits the cache those stores would push the gradient
out to memory, where the op that reads it next must fetch it again, so smaller calls store normally (the
vendors' rule for non-temporal stores). The cache size is read from Linux's sysfs (else the C library's
sysconf); where it is unknown nothing is streamed. ``PERCEPTLOSS_CPU_STREAMING=0`` turns streaming off; results
are the same either way (:func:`last_level_cache_bytes`, :func:`streaming_threshold_bytes`,
:func:`forced_streaming_threshold`).

>>> import perceptloss
>>> level = perceptloss.backends.cpu.kernel_level()         # e.g. 'AVX512'
>>> freed = perceptloss.backends.cpu.empty_cache()          # bytes returned to the system
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from .. import _ops


def _require() -> None:
    if not _ops.has_kernel("cpu"):
        raise RuntimeError(_ops.unavailable_reason(torch.device("cpu")))


@contextlib.contextmanager
def _process_setting(setter: Callable[[object], object], value: object) -> Iterator[None]:
    """Applies ``setter(value)`` (which returns the setting it replaced) inside the block and restores it after."""
    before = setter(value)
    try:
        yield
    finally:
        setter(before)


def kernel_levels() -> list[str]:
    """Levels built into the operator that this CPU can run, lowest first, e.g. ['DEFAULT', 'AVX2', 'AVX512']."""
    _require()
    return list(torch.ops.perceptloss._cpu_kernel_levels())


def kernel_level() -> str:
    """The level the CPU kernels run at now."""
    _require()
    return torch.ops.perceptloss._cpu_kernel_level()


def forced_kernel_level(level: str) -> contextlib.AbstractContextManager[None]:
    """Runs the CPU kernels at ``level`` (one of ``kernel_levels()``) inside the block, e.g. to compare levels.

    Process-wide, not thread-local: meant for tests and benchmarks.
    """
    _require()
    return _process_setting(torch.ops.perceptloss._set_cpu_kernel_level, level)


def empty_cache() -> int:
    """Frees the cached gradient memory of the CPU backward; returns the number of bytes released."""
    _require()
    return int(torch.ops.perceptloss._empty_cpu_cache())


def cache_bytes() -> int:
    """Bytes of freed gradient memory the CPU backward holds for reuse."""
    _require()
    return int(torch.ops.perceptloss._cpu_cache_bytes())


def set_grad_cache(enabled: bool) -> bool:
    """Turns the CPU backward's gradient-memory cache on or off; returns the previous setting.

    Turning it off does not free what it holds (``empty_cache()`` does).
    """
    _require()
    return bool(torch.ops.perceptloss._set_cpu_grad_cache(bool(enabled)))


def last_level_cache_bytes() -> int:
    """Bytes of the last-level data cache one core uses (Linux sysfs, e.g. an AMD CCD's L3; else sysconf); 0 if unknown."""
    _require()
    return int(torch.ops.perceptloss._cpu_last_level_cache())


def streaming_threshold_bytes() -> int:
    """Calls that touch more bytes than this (inputs read plus gradients written) are streamed; -1 means never."""
    _require()
    return int(torch.ops.perceptloss._cpu_streaming_threshold())


def forced_streaming_threshold(nbytes: int) -> contextlib.AbstractContextManager[None]:
    """Sets the streaming threshold inside the block: 0 streams always, -1 never (for comparisons).

    Process-wide, not thread-local: meant for tests and benchmarks.
    """
    _require()
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < -1:
        raise ValueError(f"nbytes must be an int >= 0, or -1 for never; got {nbytes!r}")
    return _process_setting(torch.ops.perceptloss._set_cpu_streaming_threshold, nbytes)


__all__ = [
    "kernel_levels", "kernel_level", "forced_kernel_level", "empty_cache", "cache_bytes", "set_grad_cache",
    "last_level_cache_bytes", "streaming_threshold_bytes", "forced_streaming_threshold",
]
