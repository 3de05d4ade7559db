"""Convolution + ReLU as one oneDNN primitive on the CPU, for the frozen trunks' eager and compiled training passes.

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
``conv2d``'s inputs, not this operator's), ``torch.func`` transforms, and with a oneDNN-enabled torch. Under
``torch.compile`` only where a gradient flows: dynamo traces the blocks' autograd Functions into the training
graph (inductor's own CPU training graph keeps convolution and ReLU apart and ran the bf16 VGG loss at 0.78x the
eager blocks), while a graph without gradient is left to inductor, which fuses convolution + ReLU itself there
(with weight prepacking under ``freezing``).

The backward's elementwise passes run as the compiled operator's CPU kernels where it is built (``relu_backward``,
``max_pool2x2_relu_backward``; ATen's ``threshold_backward`` and max-pool backward otherwise, and when a second
order gradient is asked, as those are differentiable): a 2x2 max-pool after the ReLU joins the primitive (no int64
indices written in the forward; the backward sends each window's gradient to its first maximum and masks it in
one pass), and a tapped ReLU, whose output is read by the loss and by the next convolution, gets its two gradients
as two outputs' gradients summed inside the mask's pass instead of autograd's in-place add first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._dtypes import functorch_transform_active
from ._ops import has_relu_kernels
from ._sizes import pair


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
            and not torch.jit.is_scripting()
            and not (torch.compiler.is_compiling() and not torch.is_grad_enabled())  # inductor fuses those
            and not functorch_transform_active())


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
               padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    """oneDNN's convolution with a ReLU post-op (the operator takes padding before stride)."""
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, padding, stride, dilation, groups, "relu",
                                                   [None], "")


def is_pool2x2(module: nn.Module) -> bool:
    """Whether ``module`` is a plain 2x2, stride-2 max-pool (VGG's), which :func:`conv_relu` can fuse."""
    return (type(module) is nn.MaxPool2d and pair(module.kernel_size) == (2, 2) and pair(module.stride) == (2, 2)
            and pair(module.padding) == (0, 0) and pair(module.dilation) == (1, 1) and not module.ceil_mode
            and not module.return_indices)


def _pool(y: torch.Tensor) -> torch.Tensor:
    """``max_pool2d(y, 2, 2)``, without the indices ATen's CPU max-pool writes even when nothing reads them."""
    return torch.ops.perceptloss.max_pool2x2(y) if has_relu_kernels() else F.max_pool2d(y, 2, 2)


def _kernels_for_backward() -> bool:
    """Whether the backward runs the operator's kernels: built, and no second-order gradient asked
    (``create_graph=True`` needs ATen's differentiable operators)."""
    return has_relu_kernels() and not torch.is_grad_enabled()


def _relu_grad(grad: torch.Tensor | None, output: torch.Tensor, grad2: torch.Tensor | None) -> torch.Tensor:
    """``grad + grad2`` where ``output = relu(x) > 0``, else 0 (either gradient may be None, not both)."""
    if grad is None:
        grad, grad2 = grad2, None
    if _kernels_for_backward():
        return torch.ops.perceptloss.relu_backward(grad, output, grad2)
    if grad2 is not None:
        grad = grad + grad2
    return torch.ops.aten.threshold_backward(grad, output, 0)


def _pool_relu_grad(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """The gradient of ``x`` through ``max_pool2d(relu(x), 2, 2)`` from the pooled gradient and ``relu(x)``."""
    if _kernels_for_backward():
        return torch.ops.perceptloss.max_pool2x2_relu_backward(grad, output)
    window = ([2, 2], [2, 2], [0, 0], [1, 1], False)
    with torch.no_grad():
        _, indices = torch.ops.aten.max_pool2d_with_indices(output, *window)
    unpooled = torch.ops.aten.max_pool2d_with_indices_backward(grad, output, *window, indices)
    return torch.ops.aten.threshold_backward(unpooled, output, 0)


def _forward(ctx, x, weight, bias, stride, padding, dilation, groups) -> torch.Tensor:
    y = _pointwise(x, weight, bias, stride, padding, dilation, groups)
    ctx.save_for_backward(x, weight, y)
    ctx.conf = (stride, padding, dilation, groups, bias is not None)
    return y


def _backward(ctx, x: torch.Tensor, weight: torch.Tensor, masked: torch.Tensor):
    """The convolution's gradients from the gradient of its output (the ReLU's mask applied); ``x`` and
    ``weight`` from ``ctx.saved_tensors``, which a checkpointed segment lets a backward unpack once only."""
    stride, padding, dilation, groups, has_bias = ctx.conf
    wants = ctx.needs_input_grad
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        masked, x, weight, [weight.shape[0]] if has_bias else None, stride, padding, dilation, False,
        [0] * len(stride), groups, [wants[0], wants[1], has_bias and wants[2]])
    return grad_x, grad_w, grad_b, None, None, None, None


class _ConvReLU(torch.autograd.Function):
    """``relu(conv(x))``."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        return _forward(ctx, x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight, y = ctx.saved_tensors
        return _backward(ctx, x, weight, _relu_grad(grad, y, None))


class _ConvReLUTapped(torch.autograd.Function):
    """``relu(conv(x))`` twice, as the input of the next module and as a requested feature: autograd hands the
    two gradients to this backward instead of adding them into one tensor first."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not a tensor of zeros
        y = _forward(ctx, x, weight, bias, stride, padding, dilation, groups)
        return y, y.view_as(y)

    @staticmethod
    def backward(ctx, grad, grad_tap):
        if grad is None and grad_tap is None:
            return None, None, None, None, None, None, None
        x, weight, y = ctx.saved_tensors
        return _backward(ctx, x, weight, _relu_grad(grad, y, grad_tap))


class _ConvReLUPool(torch.autograd.Function):
    """``max_pool2d(relu(conv(x)), 2, 2)``: the pool's forward writes no indices; its backward and the ReLU's
    are one pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        return _pool(_forward(ctx, x, weight, bias, stride, padding, dilation, groups))

    @staticmethod
    def backward(ctx, grad):
        x, weight, y = ctx.saved_tensors
        return _backward(ctx, x, weight, _pool_relu_grad(grad, y))


def conv_relu(conv: nn.Conv2d, x: torch.Tensor, *, tapped: bool = False, pool: bool = False):
    """``relu(conv(x))`` in one oneDNN primitive, with its gradient; call where :func:`can_fuse` is True.

    ``pool=True``: ``max_pool2d(relu(conv(x)), 2, 2)`` (see :func:`is_pool2x2`). ``tapped=True``: a pair of the
    same values, one for the next module and one for the loss (see ``_ConvReLUTapped``)."""
    args = (x, conv.weight, conv.bias, list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
    if not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)):
        y = _pointwise(*args)  # nothing to differentiate: no autograd node, nothing saved
        return _pool(y) if pool else ((y, y) if tapped else y)
    if pool:
        return _ConvReLUPool.apply(*args)
    return _ConvReLUTapped.apply(*args) if tapped else _ConvReLU.apply(*args)
