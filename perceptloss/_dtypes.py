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


def tf32_in_effect(device: torch.device) -> bool:
    """True when float32 convolutions on ``device`` run in TensorFloat-32 (a 10-bit mantissa): a CUDA device of
    compute capability 8.0 or later (Ampere, Hopper, ...) with cuDNN's TF32 allowed, torch's default for
    convolutions (``torch.backends.cudnn.allow_tf32``; ``torch.backends.cuda.matmul.allow_tf32`` for matmuls)."""
    if device.type != "cuda":
        return False
    try:
        allowed = bool(torch.backends.cudnn.allow_tf32) or bool(torch.backends.cuda.matmul.allow_tf32)
        return allowed and torch.cuda.get_device_capability(device) >= (8, 0)
    except Exception:  # no CUDA runtime to ask: nothing ran in TF32 either
        return False


def compute_dtype(dtype: torch.dtype | None, device: torch.device) -> str:
    """What a network whose weights are ``dtype`` (None: float32) computes in on ``device`` now, by name:
    "float32", "float64", "bfloat16", "float16"; "<autocast's dtype>/autocast" under ``torch.autocast`` for the
    device (which leaves float64 alone); "float32/tf32" where float32 convolutions run in TensorFloat-32
    (``tf32_in_effect``). Each of these gives other numbers, so a loss's signature states it."""
    dtype = dtype or torch.float32
    cast = autocast_dtype(device.type)
    if cast is not None and dtype != torch.float64:
        return f"{str(cast).replace('torch.', '')}/autocast"
    if dtype == torch.float32 and tf32_in_effect(device):
        return "float32/tf32"
    return str(dtype).replace("torch.", "")


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
