"""The memory layout a loss network runs in (channels_last on the CPU), with gradients in the caller's layout."""
from __future__ import annotations

from typing import Literal

import torch

from ._dtypes import autocast_enabled, functorch_transform_active

MemoryFormat = Literal["auto", "channels_last", "contiguous"]
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format,
                  torch.channels_last: torch.channels_last, torch.contiguous_format: torch.contiguous_format}


class _ToLayout(torch.autograd.Function):
    """``x.contiguous(memory_format=layout)`` whose gradient comes back in ``x``'s own layout."""

    @staticmethod
    def forward(x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
        return x.contiguous(memory_format=layout)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # separate, so that torch.func transforms accept it
        x, _ = inputs
        ctx.own = torch.contiguous_format if x.is_contiguous() else torch.channels_last

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.contiguous(memory_format=ctx.own), None


def activation_layout(x: torch.Tensor, choice: MemoryFormat | torch.memory_format) -> torch.memory_format | None:
    """The memory format to run a network in for its (N, 3, H, W) input ``x`` (None: leave it as it is).

    "auto": channels_last on the CPU (oneDNN's convolutions and pooling are faster in NHWC) and on CUDA for
    16-bit dtypes or under autocast (tensor cores); otherwise as it is.
    """
    if choice != "auto":
        return MEMORY_FORMATS[choice]
    if x.dim() != 4:
        return None
    if x.device.type == "cpu":
        return torch.channels_last
    if x.device.type == "cuda" and (x.dtype in (torch.float16, torch.bfloat16) or autocast_enabled("cuda")):
        return torch.channels_last
    return None


def to_activation_layout(x: torch.Tensor, choice: MemoryFormat | torch.memory_format) -> torch.Tensor:
    """``x`` in ``activation_layout(x, choice)``; its gradient comes back in ``x``'s own layout."""
    if functorch_transform_active():
        return x  # vmap cannot query or change layouts; the values do not depend on it
    layout = activation_layout(x, choice)
    if layout is None or x.is_contiguous(memory_format=layout):
        return x
    return _ToLayout.apply(x, layout)


def weight_layout(net: torch.nn.Module, choice: MemoryFormat | torch.memory_format) -> torch.memory_format:
    """The layout ``net``'s convolution weights should have for the activations ``choice`` gives on the device and
    dtype of its weights ("auto": channels_last on the CPU, and on CUDA for 16-bit weights)."""
    if choice != "auto":
        return MEMORY_FORMATS[choice]
    weight = next((m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if weight is None or weight.device.type == "cpu" or weight.dtype in (torch.float16, torch.bfloat16):
        return torch.channels_last
    return torch.contiguous_format


def match_weight_layout(net: torch.nn.Module, layout: torch.memory_format | None) -> None:
    """Bring the 4-D weights of ``net``'s convolutions to ``layout`` (the activations'), once: a convolution whose
    weight is in the other layout copies it on every call (oneDNN reads channels_last weights with channels_last
    activations; LPIPS-vgg scoring at 256x256 spent 6% of its time on those copies). Values do not change. The loss
    calls it where its network is installed, moved or cast (so a compiled graph never sees the weights change) and,
    eagerly, before each call. Not for a shared module (its owner's), nor while compiling or inside torch.func."""
    if layout is None or getattr(net, "shared", False) or torch.compiler.is_compiling() or functorch_transform_active():
        return
    weights = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-2:].numel() > 1]
    if not weights or weights[0].is_contiguous(memory_format=layout):
        return
    with torch.inference_mode(False), torch.no_grad():
        for w in weights:
            w.data = w.data.contiguous(memory_format=layout)


def check_memory_format(choice: object) -> None:
    """Raise ValueError unless ``choice`` is "auto", "channels_last", "contiguous" or such a torch.memory_format."""
    if choice != "auto" and choice not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be 'auto', 'channels_last' or 'contiguous', got {choice!r}")
