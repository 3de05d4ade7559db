"""Convolution + ReLU as one oneDNN primitive on the CPU, for the frozen trunks' eager forward.

Eager PyTorch runs a ``Conv2d`` and the ``ReLU`` after it as two operators: the convolution writes its output,
then the ReLU reads and rewrites all of it. In bfloat16 that ReLU is slow on the CPU (torch 2.14: ``relu_`` on a
bf16 channels-last tensor moves about 8 GB/s, a third of a float32 one, as ATen widens every element), and in a
VGG loss's bfloat16 forward+backward on an AMX CPU the ReLUs took 18% of the time against 28% for the forward
convolutions (``benchmarks/README.md``). oneDNN applies the ReLU to the convolution's output while it is still in
registers (a "post-op"), which is what inductor's CPU backend emits for conv + ReLU; ``conv_relu`` calls that
same primitive (``torch.ops.mkldnn._convolution_pointwise``) from eager code. Its backward is the usual one: the
gradient masked where the saved output is 0, then the convolution's input gradient (the weights are frozen).

Used where it is the same computation: CPU tensors in float32, or bfloat16 where oneDNN runs bfloat16 convolutions
(float64 and float16 keep the two operators), an ``nn.Conv2d`` with zero padding, outside CPU autocast (which casts
``conv2d``'s inputs, not this operator's), ``torch.compile`` (inductor fuses them itself) and ``torch.func``
transforms, and with a oneDNN-enabled torch.
"""
from __future__ import annotations

import torch
from torch import nn

from ._dtypes import functorch_transform_active


def _pointwise_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch built without oneDNN
        return False


_AVAILABLE = _pointwise_available()


def _bf16_supported() -> bool:
    """Whether oneDNN's bfloat16 convolution runs here (AVX-512 BW/VL/DQ or AVX-NE-CONVERT, as lowered by
    ``ONEDNN_MAX_CPU_ISA``); elsewhere a bfloat16 network keeps ATen's own convolution."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch without the query
        return False


_BF16 = _AVAILABLE and _bf16_supported()


def can_fuse(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``relu(conv(x))`` may run as one oneDNN primitive here (see the module's docstring)."""
    return (_AVAILABLE and type(conv) is nn.Conv2d and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple) and x.device.type == "cpu" and x.dim() == 4
            and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _BF16)) and conv.weight.dtype == x.dtype
            and not torch.is_autocast_enabled("cpu")  # autocast casts conv2d's inputs; the oneDNN op it does not
            and not torch.compiler.is_compiling() and not torch.jit.is_scripting()
            and not functorch_transform_active())


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
               padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    """oneDNN's convolution with a ReLU post-op (the operator takes padding before stride)."""
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, padding, stride, dilation, groups, "relu",
                                                   [None], "")


class _ConvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
                padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
        y = _pointwise(x, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(x, weight, y)
        ctx.conf = (stride, padding, dilation, groups, bias is not None)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, y = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conf
        masked = torch.ops.aten.threshold_backward(grad, y, 0)
        wants = ctx.needs_input_grad
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            masked, x, weight, [weight.shape[0]] if has_bias else None, stride, padding, dilation, False,
            [0] * len(stride), groups, [wants[0], wants[1], has_bias and wants[2]])
        return grad_x, grad_w, grad_b, None, None, None, None


def conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x))`` in one oneDNN primitive, with its gradient; call where :func:`can_fuse` is True."""
    args = (x, conv.weight, conv.bias, list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
    if not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)):
        return _pointwise(*args)  # nothing to differentiate: no autograd node, nothing saved
    return _ConvReLU.apply(*args)
