"""Which network precision is fast on the hardware in use: the rule behind ``dtype="auto"`` and ``--amp auto``.

bfloat16 halves the memory traffic of a convolution network, but it is only faster where the hardware has
bf16 arithmetic: on the CPU, AVX512-BF16 or AMX (oneDNN emulates bf16 otherwise, much slower than float32); on
CUDA, compute capability 8.0 and later (Ampere, Hopper, ...). Everywhere else float32 is the fast choice.

The CPU check honours the two settings that lower what the libraries use on a bigger CPU (and that emulate
a smaller one): ``ATEN_CPU_CAPABILITY`` (ATen's vectorised kernels, read back through
``torch.backends.cpu.get_cpu_capability()``) and ``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA`` (oneDNN's
convolutions).

Example:
    >>> import torch, perceptloss
    >>> native, reason = perceptloss.hardware.bf16_native("cpu")
    >>> perceptloss.auto_dtype("cpu") == (torch.bfloat16 if native else torch.float32)
    True
"""
from __future__ import annotations

import os
import warnings

import torch

#: oneDNN ISA names (``ONEDNN_MAX_CPU_ISA``) that still include native bf16 instructions.
_ONEDNN_BF16_ISAS = frozenset({
    "ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
})


class SlowPrecisionWarning(UserWarning):
    """A 16-bit network dtype was asked for on hardware that emulates it (much slower than float32).

    Issued once per device type and setting by the losses, for ``dtype=torch.bfloat16`` or CPU bf16 autocast
    where :func:`bf16_native` is False. ``dtype="auto"`` never triggers it: it picks float32 there.
    """


def _cpu_has(check: str) -> bool:
    """``torch.cpu._is_<check>_supported()`` where this torch has it, else False."""
    fn = getattr(torch.cpu, f"_is_{check}_supported", None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:  # pragma: no cover - defensive: a private API
        return False


def _onednn_max_isa() -> str | None:
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(name)
        if value:
            return value.strip().upper()
    return None


def _aten_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - torch < 2.1
        return "unknown"


def bf16_native(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """Whether ``device`` computes in bfloat16 natively, and why.

    True on a CPU with AVX512-BF16 or AMX, unless ``ATEN_CPU_CAPABILITY`` (below AVX512) or
    ``ONEDNN_MAX_CPU_ISA`` (below ``AVX512_CORE_BF16``) keeps the libraries off those instructions; True on a
    CUDA device of compute capability 8.0 or later; False everywhere else.

    Args:
        device: the device to decide for ("cpu", "cuda", "cuda:1", a ``torch.device``).

    Returns:
        ``(native, reason)``: the answer, and a sentence saying why (for logs and ``python -m perceptloss info``).

    Example:
        >>> import perceptloss
        >>> native, reason = perceptloss.hardware.bf16_native("cpu")
        >>> isinstance(native, bool) and isinstance(reason, str)
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        name = torch.cuda.get_device_name(index)
        if major >= 8:
            return True, f"{name} (compute capability {major}.{minor} >= 8.0) has bf16 tensor cores"
        return False, f"{name} (compute capability {major}.{minor} < 8.0) has no bf16 arithmetic"
    if device.type != "cpu":
        return False, f"no rule for {device.type} devices: float32 is kept"
    features = [name for name, check in (("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_tile")) if _cpu_has(check)]
    if not features:
        return False, "this CPU has neither AVX512-BF16 nor AMX: oneDNN emulates bf16 (about 15x slower than float32)"
    capability = _aten_capability()
    if capability in ("DEFAULT", "AVX2", "ZVECTOR", "VSX"):
        return False, (f"this CPU has {' and '.join(features)} but ATEN_CPU_CAPABILITY lowers ATen to {capability} "
                       f"(bf16 then runs emulated)")
    isa = _onednn_max_isa()
    if isa is not None and isa not in _ONEDNN_BF16_ISAS:
        return False, (f"this CPU has {' and '.join(features)} but ONEDNN_MAX_CPU_ISA={isa} keeps oneDNN's "
                       f"convolutions off its bf16 instructions (bf16 then runs emulated)")
    return True, f"this CPU has {' and '.join(features)} (oneDNN runs bf16 convolutions natively)"


def auto_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """The dtype that ``dtype="auto"`` picks for ``device``: the fast one there.

    Args:
        device: the device to decide for ("cpu", "cuda", a ``torch.device``).

    Returns:
        ``torch.bfloat16`` where :func:`bf16_native` holds for ``device``, ``torch.float32`` otherwise.

    Example:
        >>> import torch, perceptloss
        >>> perceptloss.auto_dtype("cpu") in (torch.bfloat16, torch.float32)
        True
    """
    return torch.bfloat16 if bf16_native(device)[0] else torch.float32


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device | str = "cpu") -> torch.dtype | None:
    """A loss's ``dtype`` argument as a dtype: "auto" follows ``auto_dtype(device)``; None stays None."""
    if isinstance(dtype, str):
        if dtype != "auto":
            raise ValueError(f"dtype must be a floating torch.dtype, 'auto' or None, got {dtype!r}")
        return auto_dtype(device)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype such as torch.bfloat16, 'auto' or None, got {dtype!r}")
    return dtype


_WARNED: set[tuple[str, str]] = set()


def warn_if_emulated(dtype: torch.dtype | None, device: torch.device | str = "cpu") -> None:
    """Warn once per (device type, dtype) when ``dtype`` is bfloat16 on a device that emulates it."""
    device = torch.device(device)
    if dtype != torch.bfloat16 or device.type != "cpu":
        return
    key = (device.type, str(dtype), _onednn_max_isa() or "")
    if key in _WARNED:
        return
    _WARNED.add(key)  # checked once per setting: the answer does not change within a process
    native, reason = bf16_native(device)
    if native:
        return
    warnings.warn(
        f"dtype=torch.bfloat16 on this CPU is slow: {reason}. Use dtype='auto' (float32 here) or the default "
        f"float32 for speed.",
        SlowPrecisionWarning,
        stacklevel=3,
    )


def autocast_warning(device: torch.device | str) -> None:
    """Warn once when CPU autocast runs in bfloat16 on a CPU that emulates it (called by the losses)."""
    device = torch.device(device)
    if device.type != "cpu":
        return
    from ._dtypes import autocast_dtype

    if autocast_dtype("cpu") == torch.bfloat16:
        warn_if_emulated(torch.bfloat16, device)
