"""The smallest image a trunk can take up to a given layer, and ``ImageTooSmallError`` for images below it.

A trunk's layers shrink the image by their kernels, strides and pools; a tapped layer needs at least one
output position. ``min_input_size(modules, depth)`` follows PyTorch's own output-size formulas through the
first ``depth`` modules of a sequential trunk (convolutions, max/avg pools, size-preserving modules and any
module with an ``output_size(size: int) -> int`` method such as DISTS' L2 pooling), so that a loss can refuse
too-small images before running its network, with a message saying which size and which layers would work.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

#: Modules whose output has the spatial size of their input.
_SIZE_PRESERVING = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout,
                    nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LocalResponseNorm)


class ImageTooSmallError(ValueError):
    """Images smaller than the loss's network can take up to its deepest layer.

    ``size``: the images' (H, W); ``min_size``: the smallest (H, W) the loss takes (None where the network does
    not say, e.g. an ``nn.Module`` or timm backbone, whose features came out empty); ``layers``: the layers
    the images are too small for.
    """

    def __init__(self, message: str, *, size: tuple[int, int], min_size: tuple[int, int] | None,
                 layers: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.size = tuple(size)
        self.min_size = None if min_size is None else tuple(min_size)
        self.layers = tuple(layers)


def pair(value: int | Sequence[int]) -> tuple[int, int]:
    """A module's int-or-pair size argument (kernel, stride, padding, dilation) as (height, width)."""
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _window_output(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """PyTorch's output length of a convolution or pooling window along one axis (<= 0: no output).

    As ATen's ``pooling_output_shape`` (floor division; with ``ceil_mode`` a window may overhang the input).
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window must start inside the image or its left padding
    return out


def output_size(module: nn.Module, size: int, axis: int) -> int | None:
    """The output length along ``axis`` (0: H, 1: W) of ``module`` for an input of length ``size``.

    None: the module's effect on the size is not known (the caller then cannot check sizes up front).
    """
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            if module.padding == "same":
                return size
            padding = 0
        else:
            padding = pair(module.padding)[axis]
        return _window_output(size, pair(module.kernel_size)[axis], pair(module.stride)[axis], padding,
                              pair(module.dilation)[axis], False)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        stride = module.stride if module.stride is not None else module.kernel_size
        dilation = pair(module.dilation)[axis] if isinstance(module, nn.MaxPool2d) else 1
        return _window_output(size, pair(module.kernel_size)[axis], pair(stride)[axis],
                              pair(module.padding)[axis], dilation, bool(module.ceil_mode))
    if hasattr(module, "output_size") and callable(module.output_size):
        return int(module.output_size(size))
    if isinstance(module, _SIZE_PRESERVING):
        return size
    if isinstance(module, nn.Sequential):
        for child in module:
            out = output_size(child, size, axis)
            if out is None or out < 1:
                return out
            size = out
        return size
    children = list(module.children())
    if children and all(output_size(c, s, axis) == s for c in module.modules() if c is not module
                        and not list(c.children()) for s in (7, 8)):
        return size  # a block of size-preserving parts (e.g. SqueezeNet's Fire: 1x1 and padded 3x3 convolutions)
    return None


def _fits(modules: Sequence[nn.Module], size: int, axis: int) -> bool | None:
    for module in modules:
        out = output_size(module, size, axis)
        if out is None:
            return None
        if out < 1:
            return False
        size = out
    return True


def min_input_size(modules: Sequence[nn.Module], largest: int = 1 << 16) -> tuple[int, int] | None:
    """The smallest (H, W) for which every module of ``modules`` (applied in order) has an output.

    None when a module's effect on the size is unknown. The outputs grow with the input, so a binary search
    over the length finds it.
    """
    result = []
    for axis in (0, 1):
        if _fits(modules, largest, axis) is not True:
            return None
        lo, hi = 1, largest
        while lo < hi:
            mid = (lo + hi) // 2
            if _fits(modules, mid, axis):
                hi = mid
            else:
                lo = mid + 1
        result.append(lo)
    return result[0], result[1]


def too_small_message(size: tuple[int, int], min_sizes: dict[str, tuple[int, int]], what: str,
                      layers_fixed: bool) -> tuple[str, list[str]]:
    """The message of ``ImageTooSmallError`` for images of ``size`` and each layer's smallest input; and the
    layers the images are too small for."""
    h, w = size
    bad = [name for name, (mh, mw) in min_sizes.items() if h < mh or w < mw]
    need_h = max(mh for mh, _ in min_sizes.values())
    need_w = max(mw for _, mw in min_sizes.values())
    fit = [name for name in min_sizes if name not in bad]
    advice = f"use images of at least {need_h}x{need_w}"
    if not layers_fixed and fit:
        advice += f", or only layers that fit {h}x{w} (here {fit})"
    needs = ", ".join(f"{name} needs {min_sizes[name][0]}x{min_sizes[name][1]}" for name in bad)
    return f"images of size {h}x{w} are too small for {what} ({needs}); {advice}", bad
