"""The dtype rules every loss shares: what distances accumulate in, autocast, and the network's own dtype."""
from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """What distances and statistics accumulate in: float64 for float64 features, float32 for all others."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def autocast_enabled(device_type: str) -> bool:
    """True when autocast is on for ``device_type`` ("cpu", "cuda", ...)."""
    if device_type == "meta":
        return False  # autocast has no meta dispatch key (and meta tensors compute nothing)
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no argument (CUDA autocast only)
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
    except RuntimeError:  # a device type autocast does not know
        return False


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast casts to on ``device_type`` when it is on, else None."""
    if not autocast_enabled(device_type):
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except (AttributeError, TypeError):  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def network_dtype(network: torch.nn.Module) -> torch.dtype | None:
    """The floating dtype of ``network``'s weights (parameters or, once frozen, buffers); None if it has none."""
    for t in network.parameters():
        if t.is_floating_point():
            return t.dtype
    for t in network.buffers():
        if t.is_floating_point():
            return t.dtype
    return None


def cast_to_network_dtype(images: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
    """``images`` in the floating dtype of ``network``'s weights, so fp16/fp64 images just work.

    Without autocast a convolution refuses an input whose dtype differs from its weights ("Input type and bias
    type should be the same"); under autocast only float64 needs it (autocast leaves float64 alone). The cast
    is differentiable: gradients come back in the images' own dtype.
    """
    dtype = network_dtype(network)
    if dtype is None or images.dtype == dtype:
        return images
    if autocast_enabled(images.device.type) and images.dtype != torch.float64:
        return images
    return images.to(dtype)


def functorch_transform_active() -> bool:
    """True inside a torch.func transform (grad, vmap, jacrev, ...), where compiled custom operators without
    functorch rules cannot run (the losses then take their pure-PyTorch path, which has the same values).

    Eagerly: whether functorch's interpreter stack is non-empty. While torch.compile traces, the same question
    is asked eagerly and its answer is a constant of the graph (``_transform_active_while_tracing``): dynamo
    itself cannot evaluate it (it wraps the stack's ``None`` in an object, so ``is not None`` reads True and
    every compiled loss took the reference path and the NCHW layout). The answer holds for the graph: dynamo
    runs the transforms it traces (``torch.compile(torch.func.grad(f))``) on the real interpreter stack, and a
    graph traced outside a transform is not reused inside one (the inputs' functorch wrappers fail its guards).
    """
    if torch.compiler.is_compiling():
        return _transform_active_while_tracing()
    return _interpreter_stack_nonempty()


def _interpreter_stack_nonempty() -> bool:
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except Exception:  # pragma: no cover - older torch
        return False


@torch.compiler.assume_constant_result
def _transform_active_while_tracing() -> bool:
    """``_interpreter_stack_nonempty()`` run eagerly while dynamo traces; a constant of the graph it builds."""
    return _interpreter_stack_nonempty()
