"""Per-weight input normalisation folded with the user's declared input range into one affine map."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Normalization:
    r"""What a set of weights expects as input: a range, a channel order and a per-channel mean and std.

    RGB images :math:`x` in a loss's ``input_range`` :math:`(lo, hi)` reach the network as

    .. math:: x'_c = \frac{s \, (x_{\pi(c)} - lo) / (hi - lo) - \mu_c}{\sigma_c}

    with :math:`s` = ``scale``, :math:`\pi` the BGR order when ``bgr`` is set (else the identity), and
    :math:`\mu, \sigma` = ``mean``, ``std`` given in that scale and channel order; the loss folds this into one
    affine map. Pass one as a loss's ``normalization=`` for weights whose provenance perceptloss cannot know.

    Args:
        mean: per-channel mean, three finite numbers, in ``scale`` units and the network's channel order.
        std: per-channel standard deviation, three finite numbers > 0, likewise.
        scale: the pixel scale the network was trained on (1.0 for [0, 1], 255.0 for [0, 255]).
        bgr: True when the network takes BGR channels (Caffe).
        name: a short name for ``repr`` and error messages.

    Example:
        >>> import perceptloss
        >>> perceptloss.preprocessing.CAFFE.scale, perceptloss.preprocessing.CAFFE.bgr
        (255.0, True)
        >>> perceptloss.Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), name="tanh").std
        (0.5, 0.5, 0.5)
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0
    bgr: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        for field, values, positive in (("mean", self.mean, False), ("std", self.std, True)):
            try:
                numbers = tuple(float(v) for v in values)
            except (TypeError, ValueError):
                raise ValueError(f"Normalization {field} must be three numbers (R, G, B), got {values!r}") from None
            if len(numbers) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in numbers):
                need = "finite numbers > 0" if positive else "finite numbers"
                raise ValueError(f"Normalization {field} must be three {need} (R, G, B), got {values!r}")
        if isinstance(self.scale, bool) or not (math.isfinite(float(self.scale)) and float(self.scale) > 0):
            raise ValueError(f"Normalization scale must be a finite number > 0 (1 or 255), got {self.scale!r}")


CAFFE = Normalization(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), scale=255.0, bgr=True, name="caffe")
"""Caffe / original VGG: BGR, 0-255, minus the ImageNet mean pixel (as in the DFC-VAE paper's Torch code)."""
IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), name="imagenet")
"""torchvision / timm ImageNet models: RGB, 0-1, normalised by the ImageNet mean and std."""
IDENTITY = Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=1.0, name="identity")
"""No change: the network takes the images as they are passed (custom modules, tests); ``input_range`` is ignored."""


class Preprocess(nn.Module):
    """Map RGB images in ``input_range`` to what a network expects, as ``x[:, order] * a + b``.

    Input: (N, 3, H, W) RGB in ``input_range``; output: same shape, normalised per ``norm``. The constants
    a, b are float32 buffers (``dtype`` at construction); whenever ``.to()`` / ``.double()`` / ``.half()``
    changes their dtype they are computed again from ``norm`` and ``input_range`` in float64 and rounded once
    to that dtype, so a float64 loss holds them exactly, not float32's rounding of them.
    """

    def __init__(
        self, norm: Normalization, input_range: tuple[float, float] = (0.0, 1.0), dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        lo, hi = (float(v) for v in input_range)
        if not hi > lo:
            raise ValueError(f"input_range must be (low, high) with high > low, got {input_range}")
        if norm is IDENTITY:
            lo, hi = 0.0, 1.0  # identity means "as given": no range mapping either
        self.norm = norm
        self.input_range = (lo, hi)
        a, b = self._constants(dtype)
        self.register_buffer("a", a, persistent=False)
        self.register_buffer("b", b, persistent=False)

    def _constants(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """a, b as (1, 3, 1, 1) tensors of ``dtype`` (float32 computed in float32, as ever; others from float64)."""
        lo, hi = self.input_range
        work = torch.float32 if dtype == torch.float32 else torch.float64
        unit = self.norm.scale / (hi - lo)
        std = torch.tensor(self.norm.std, dtype=work)
        mean = torch.tensor(self.norm.mean, dtype=work)
        return (unit / std).view(1, 3, 1, 1).to(dtype), ((-lo * unit - mean) / std).view(1, 3, 1, 1).to(dtype)

    def _apply(self, fn, recurse: bool = True):
        dtype = self.a.dtype
        out = super()._apply(fn, recurse)
        if self.a.dtype != dtype and self.a.is_floating_point():
            a, b = self._constants(self.a.dtype)
            self.a, self.b = a.to(self.a.device), b.to(self.b.device)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm.bgr:
            x = x.flip(1)
        return torch.addcmul(self.b.to(x.dtype), x, self.a.to(x.dtype))

    def extra_repr(self) -> str:
        return f"norm={self.norm.name or self.norm}, input_range={self.input_range}"
