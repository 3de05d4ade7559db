r"""LPIPS (Zhang et al., *The Unreasonable Effectiveness of Deep Features as a Perceptual Metric*, CVPR 2018).

For layers l of a trunk (AlexNet, VGG16 or SqueezeNet 1.1), with \hat\phi_l the activations unit-normalised
over channels at every position and w_l >= 0 the learned per-channel head,

.. math:: d(x, y) = \sum_l \frac{1}{H_l W_l} \sum_{h,w} \sum_c w_{l,c}
          \big(\hat\phi_l(x)_{c,h,w} - \hat\phi_l(y)_{c,h,w}\big)^2

value-identical to the ``lpips`` package (v0.1) given the same trunk weights. The non-spatial form runs on the
fused distance operator (the heads folded into the features as sqrt(w)); the unit normalisation has a finite
gradient where a feature vector is zero (lpips' ``normalize_tensor`` alone gives NaN there; inside lpips' metric
the ReLU before every tap happens to mask it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._validation import check_image_pair, check_values
from .functional import accumulation_dtype, feature_distance
from .lpips_heads import LPIPS_NORMALIZATION, load_heads
from .loss import Reduction, check_memory_format, to_activation_layout
from .preprocessing import Preprocess
from .registry import create_backbone

#: LPIPS' trunk for each ``net``: (registered backbone, tapped layers, channels per layer).
LPIPS_NETS: dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]] = {
    "alex": ("alexnet", ("relu1", "relu2", "relu3", "relu4", "relu5"), (64, 192, 384, 256, 256)),
    "vgg": ("vgg16", ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"), (64, 128, 256, 512, 512)),
    "squeeze": (
        "squeezenet1_1",
        ("relu_conv1", "fire3", "fire5", "fire6", "fire7", "fire8", "fire9"),
        (64, 128, 256, 384, 384, 512, 512),
    ),
}


def unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """(N, C, H, W) -> float32 (N, C, H, W) divided by (its L2 norm over C + eps) at each position.

    Same values as lpips' ``normalize_tensor``; where a position's norm is 0 the gradient is finite (a plain
    sqrt(0) backward gives NaN).
    """
    f = features.to(accumulation_dtype(features.dtype))
    squared = f.square().sum(dim=1, keepdim=True)
    positive = squared > 0
    norm = torch.where(positive, torch.where(positive, squared, torch.ones_like(squared)).sqrt(), 0.0)
    return f / (norm + eps)


class LPIPS(nn.Module):
    """The LPIPS distance between two image batches: (N,) per sample, or (N, 1, H, W) maps with ``spatial``.

    Args:
        net: "alex" (the lpips default), "vgg" or "squeeze".
        version: "0.1" (the only published version with a correct input scaling).
        weights: the trunk's weights: "default" (torchvision's ImageNet weights, resolved offline like every
            entry: cache, torch's hub cache, download where online, else an error naming the file), a
            torchvision-format file, or None (random trunk: tests only).
        heads: "default" (LPIPS v0.1's heads from the installed ``lpips`` or ``torchmetrics`` package, checked
            and cached), a head file (lpips' .pth format), or None (all ones: lpips' ``lpips=False`` baseline).
        input_range: range of the images you pass, (0, 1) by default; (-1, 1) is what lpips expects by default.
        reduction: "none" (default: (N,), or (N, 1, H, W) with ``spatial``), "mean" or "sum" over everything.
        spatial: return per-pixel maps (each layer's map upsampled bilinearly to the image size).
        check_range, check_inputs, fused, memory_format: as for ``FeatureLoss``.

    Frozen by construction: the heads are buffers, the trunk's parameters never require grad, there is no
    dropout and the trunk stays in eval mode. Distances are computed in float32 (under autocast too).
    """

    def __init__(
        self,
        net: Literal["alex", "vgg", "squeeze"] = "alex",
        version: str = "0.1",
        *,
        weights: str | Path | None = "default",
        heads: str | Path | None = "default",
        input_range: tuple[float, float] = (0.0, 1.0),
        reduction: Reduction | Literal["none"] = "none",
        spatial: bool = False,
        check_range: Literal["raise", "warn", "off"] = "raise",
        check_inputs: bool = True,
        fused: bool | None = None,
        memory_format: str | torch.memory_format = "auto",
    ) -> None:
        super().__init__()
        if net not in LPIPS_NETS:
            raise ValueError(f"net must be one of {sorted(LPIPS_NETS)} (as in lpips), got {net!r}")
        if str(version) != "0.1":
            raise ValueError(f"only LPIPS version '0.1' is supported (v0.0 had an input scaling bug), got {version!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if check_range not in ("raise", "warn", "off"):
            raise ValueError(f"check_range must be 'raise', 'warn' or 'off', got {check_range!r}")
        backbone, layers, channels = LPIPS_NETS[net]
        self.net_name = net
        self.net, _ = create_backbone(backbone, layers, weights, LPIPS_NORMALIZATION)
        self.layers: tuple[str, ...] = self.net.layers
        head_list = [torch.ones(c) for c in channels] if heads is None else load_heads(net, heads, list(channels))
        for k, w in enumerate(head_list):
            self.register_buffer(f"head{k}", w.clone())
        # The fused path folds sqrt(w) into the features; negative weights (foreign heads) take the direct path.
        self._fusable = all(bool((w >= 0).all()) for w in head_list)
        self.preprocess = Preprocess(LPIPS_NORMALIZATION, input_range)
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.reduction = reduction
        self.spatial = bool(spatial)
        self.check_range = check_range
        self.check_inputs = check_inputs
        self.fused = fused
        check_memory_format(memory_format)
        self.memory_format = memory_format  # of the trunk's activations; see FeatureLoss

    @property
    def heads(self) -> list[torch.Tensor]:
        """The (C_l,) head weights of each layer."""
        return [getattr(self, f"head{k}") for k in range(len(self.layers))]

    def train(self, mode: bool = True) -> "LPIPS":
        """The trunk stays in eval mode whatever ``mode`` is (there is no dropout to switch on)."""
        super().train(mode)
        self.net.eval()
        return self

    def _trunk(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's features of (N, 3, H, W) images in ``input_range``."""
        return self.net(to_activation_layout(self.preprocess(images), self.memory_format))

    def _normalized_features(self, input: torch.Tensor, target: torch.Tensor) -> tuple[list, list]:
        if self.check_inputs:
            check_image_pair(input, target)  # works out autocast itself (a bf16 input next to an fp32 target is fine)
            check_values({"input": input, "target": target}, self.input_range, self.check_range)
        try:
            fa = self._trunk(input)
            if target.requires_grad:
                fb = self._trunk(target)
            else:
                with torch.no_grad():
                    fb = self._trunk(target)
        except RuntimeError as e:
            if "too small" not in str(e) and "Output size" not in str(e):
                raise
            raise ValueError(
                f"images of size {tuple(input.shape[-2:])} are too small for LPIPS-{self.net_name} ({e}); "
                f"use images of at least 32x32 (64x64 and more is what LPIPS was calibrated on)"
            ) from e
        return [unit_normalize(f) for f in fa], [unit_normalize(f) for f in fb]

    def per_layer(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N, L) float32: each layer's term (spatial mean of the head-weighted squared difference)."""
        na, nb = self._normalized_features(input, target)
        return self._layer_terms(na, nb)

    def _layer_terms(self, na: list[torch.Tensor], nb: list[torch.Tensor]) -> torch.Tensor:
        heads = self.heads
        if self._fusable:
            roots = [w.to(a.dtype).sqrt().view(1, -1, 1, 1) for w, a in zip(heads, na)]
            return feature_distance(
                [a * r for a, r in zip(na, roots)],
                [b * r for b, r in zip(nb, roots)],
                [float(a.shape[1]) for a in na],  # the operator's mean over C*H*W, times C: a sum over C
                fused=self.fused,
            )
        return torch.stack([self._maps(a, b, w).mean(dim=(1, 2, 3)) for a, b, w in zip(na, nb, heads)], dim=1)

    @staticmethod
    def _maps(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return ((a - b).square() * w.to(a.dtype).view(1, -1, 1, 1)).sum(dim=1, keepdim=True)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS(input, target): (N,) float32, (N, 1, H, W) with ``spatial``, or a scalar when reduced."""
        na, nb = self._normalized_features(input, target)
        if self.spatial:
            size = tuple(input.shape[-2:])
            out = sum(
                F.interpolate(self._maps(a, b, w), size=size, mode="bilinear", align_corners=False)
                for a, b, w in zip(na, nb, self.heads)
            )
        else:
            out = self._layer_terms(na, nb).sum(dim=1)
        if self.reduction == "mean":
            return out.mean()
        if self.reduction == "sum":
            return out.sum()
        return out

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, layers={list(self.layers)}, reduction={self.reduction!r}, spatial={self.spatial}"
