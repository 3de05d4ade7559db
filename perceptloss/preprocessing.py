"""Per-weight input normalisation folded with the user's declared input range into one affine map."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Normalization:
    """What a set of weights expects as input.

    Pixels are first brought to ``[0, scale]``, channels reordered to BGR when ``bgr`` is set, then
    ``(x - mean) / std`` per channel, with ``mean`` and ``std`` given in that scale and channel order.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0
    bgr: bool = False
    name: str = ""


#: Caffe / original VGG: BGR, 0-255, minus the ImageNet mean pixel (as in the DFC-VAE paper's Torch code).
CAFFE = Normalization(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), scale=255.0, bgr=True, name="caffe")
#: torchvision / timm ImageNet models: RGB, 0-1, mean/std normalised.
IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), name="imagenet")
#: No change: the network takes the images as they are declared (custom modules, tests).
IDENTITY = Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=1.0, name="identity")


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
