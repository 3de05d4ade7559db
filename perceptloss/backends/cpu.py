"""``perceptloss.backends.cpu``: the fused operator's CPU side (its kernel level).

As ``torch.backends.cpu`` for ATen, this is where the CPU kernels are inspected and tuned; the losses need none
of it. Every function raises ``RuntimeError`` (saying how to build it) when the operator has no CPU kernel
(``perceptloss.backends.has_kernel("cpu")`` is False).

**Kernel level.** The CPU kernels are compiled once per vector-instruction level (DEFAULT, AVX2, AVX512 on
x86-64) and the highest one that ATen reports for this CPU runs, so ``ATEN_CPU_CAPABILITY=avx2`` (or
``default``) lowers it like it lowers ATen's: :func:`kernel_level`, :func:`kernel_levels`,
:func:`forced_kernel_level`.

**Freed memory.** :func:`retain_freed_memory` (the one function here that needs no operator) lets the process
reuse the memory it frees: a training or scoring loop allocates the same large activations at every step, and
glibc's malloc hands such blocks back to the system when freed and takes them again, zero-filled page by page,
at the next step (``benchmarks/README.md``: the bf16 VGG loss ran 1.37x faster with it). ``perceptloss score``
calls it; a training script can.

>>> import perceptloss
>>> level = perceptloss.backends.cpu.kernel_level()         # e.g. 'AVX512'
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


#: glibc's mallopt parameters (malloc.h) and the values set: blocks up to 32 MiB (glibc's largest threshold) come
#: from the heap, and up to 2 GiB of freed heap stays mapped.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 2**31 - 1


def retain_freed_memory() -> bool:
    """Makes glibc's malloc keep the memory this process frees for its next allocations, for the rest of the process.

    By default glibc returns freed blocks above its thresholds to the system, so every step of a loop pays for
    mapping its activations again (page faults, the kernel zero-filling each page); after this call blocks up to
    32 MiB come from the heap and up to 2 GiB of freed heap stays mapped. The cost: the process keeps its peak
    memory. Process-wide; values do not change. Returns True where set, False where the C library is not glibc
    (nothing changed). Needs no operator. The environment variables ``MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TRIM_THRESHOLD_=2147483647`` do the same for a whole command; jemalloc or tcmalloc (``LD_PRELOAD``)
    keep freed memory by default.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - a glibc without the symbol in this process
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


__all__ = ["kernel_levels", "kernel_level", "forced_kernel_level", "retain_freed_memory"]
