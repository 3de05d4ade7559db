"""``perceptloss.backends.cpu``: the fused operator's CPU side (its kernel level).

As ``torch.backends.cpu`` for ATen, this is where the CPU kernels are inspected and tuned; the losses need none
of it. Every function raises ``RuntimeError`` (saying how to build it) when the operator has no CPU kernel
(``perceptloss.backends.has_kernel("cpu")`` is False).

**Kernel level.** The CPU kernels are compiled once per vector-instruction level (DEFAULT, AVX2, AVX512 on
x86-64) and the highest one that ATen reports for this CPU runs, so ``ATEN_CPU_CAPABILITY=avx2`` (or
``default``) lowers it like it lowers ATen's: :func:`kernel_level`, :func:`kernel_levels`,
:func:`forced_kernel_level`.

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


__all__ = ["kernel_levels", "kernel_level", "forced_kernel_level"]
