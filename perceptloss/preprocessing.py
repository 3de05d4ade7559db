"""Per-weight input normalisation folded with the user's declared input range into one affine map."""
from __future__ import annotations

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
        mean: per-channel mean, in ``scale`` units and the network's channel order.
        std: per-channel standard deviation, likewise.
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


CAFFE = Normalization(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), scale=255.0, bgr=True, name="caffe")
"""Caffe / original VGG: BGR, 0-255, minus the ImageNet mean pixel (as in the DFC-VAE paper's Torch code)."""
IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), name="imagenet")
"""torchvision / timm ImageNet models: RGB, 0-1, normalised by the ImageNet mean and std."""
IDENTITY = Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=1.0, name="identity")
"""No change: the network takes the images as they are passed (custom modules, tests); ``input_range`` is ignored."""


class Preprocess(nn.Module):
    """Map RGB images in ``input_range`` to what a network expects, as ``x[:, order] * a + b``.

    Input: (N, 3, H, W) RGB in ``input_range``; output: same shape, normalised per ``norm``.
    """

    def __init__(self, norm: Normalization, input_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        lo, hi = (float(v) for v in input_range)
        if not hi > lo:
            raise ValueError(f"input_range must be (low, high) with high > low, got {input_range}")
        if norm is IDENTITY:
            lo, hi = 0.0, 1.0  # identity means "as given": no range mapping either
        self.norm = norm
        self.input_range = (lo, hi)
        unit = norm.scale / (hi - lo)
        std = torch.tensor(norm.std, dtype=torch.float32)
        mean = torch.tensor(norm.mean, dtype=torch.float32)
        self.register_buffer("a", (unit / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("b", ((-lo * unit - mean) / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm.bgr:
            x = x.flip(1)
        return torch.addcmul(self.b.to(x.dtype), x, self.a.to(x.dtype))

    def extra_repr(self) -> str:
        return f"norm={self.norm.name or self.norm}, input_range={self.input_range}"
