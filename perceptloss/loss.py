"""FeatureLoss: the normalised multi-layer squared feature distance of the DFC-VAE paper, as an nn.Module."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn

from . import _ops
from ._validation import check_image_pair, check_values
from .functional import feature_distance
from .preprocessing import Normalization, Preprocess
from .registry import create_backbone

Reduction = Literal["mean", "sum", "none"]


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no argument (CUDA autocast only)
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


class FeatureLoss(nn.Module):
    r"""Weighted sum over layers of the mean squared difference of two images' activations.

    For images x, y of shape (N, 3, H, W), RGB in ``input_range``:

    .. math:: \mathrm{loss}_n = \sum_l w_l \frac{1}{C_l H_l W_l} \lVert \Phi_l(x_n) - \Phi_l(y_n) \rVert_2^2

    then reduced over the batch (``"mean"``, ``"sum"``) or returned per sample (``"none"`` -> (N,)).

    Args:
        backbone: registered name ("vgg19", "vgg16", "timm:<model>") or an ``nn.Module`` (layers are then
            torch.fx node names and ``normalization`` defaults to identity).
        layers: layer names (e.g. ``["relu1_1", "relu2_1"]``) or a preset ("dfc123", "dfc345", "lpips",
            "style"); see ``perceptloss.list_layers`` and ``perceptloss.PRESETS``.
        layer_weights: one weight per layer (default 1 each).
        weights: "default", a weight entry name (``perceptloss.list_weights(backbone)``), a file path, or
            None for random init (tests of mechanics only).
        input_range: the range of the images you pass, e.g. (0, 1) or (-1, 1); each weight entry's own
            preprocessing (Caffe BGR 0-255 minus mean, ImageNet mean/std, ...) is applied after it.
        reduction: "mean" | "sum" | "none" over the batch.
        check_range: "raise" | "warn" | "off" for images clearly outside ``input_range``.
        check_inputs: check shapes/dtypes/devices and NaN/Inf (one host synchronisation per call).
        fused: None uses the compiled operator when present for the device, True requires it, False uses
            the pure-PyTorch path.
        normalization: override the weights' preprocessing.

    The network is frozen (no parameter requires grad), stays in eval mode and is truncated after the deepest
    requested layer. The target's features are computed under ``no_grad`` unless the target requires grad.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "vgg19",
        layers: str | Sequence[str] = "dfc123",
        *,
        layer_weights: Sequence[float] | None = None,
        weights: str | Path | None = "default",
        input_range: tuple[float, float] = (0.0, 1.0),
        reduction: Reduction = "mean",
        check_range: Literal["raise", "warn", "off"] = "raise",
        check_inputs: bool = True,
        fused: bool | None = None,
        normalization: Normalization | None = None,
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if check_range not in ("raise", "warn", "off"):
            raise ValueError(f"check_range must be 'raise', 'warn' or 'off', got {check_range!r}")
        self.net, norm = create_backbone(backbone, layers, weights, normalization)
        self.layers: tuple[str, ...] = self.net.layers
        if layer_weights is None:
            layer_weights = [1.0] * len(self.layers)
        layer_weights = [float(w) for w in layer_weights]
        if len(layer_weights) != len(self.layers):
            raise ValueError(f"got {len(layer_weights)} layer_weights for {len(self.layers)} layers {self.layers}")
        self.layer_weights: list[float] = layer_weights
        self.preprocess = Preprocess(norm, input_range)
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.reduction = reduction
        self.check_range = check_range
        self.check_inputs = check_inputs
        if fused and not _ops.HAS_EXT:
            raise RuntimeError(_ops.unavailable_reason(torch.device("cpu")))
        self.fused = fused

    def train(self, mode: bool = True) -> "FeatureLoss":
        """The loss network stays in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.net.eval()
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Activations of ``self.layers`` for RGB images in ``input_range``: a list of (N, C_l, H_l, W_l)."""
        try:
            feats = self.net(self.preprocess(images))
        except RuntimeError as e:
            if "too small" not in str(e):
                raise
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])} are too small for layers {list(self.layers)} "
                f"({e}); use larger images or shallower layers"
            ) from e
        if not torch.compiler.is_compiling():
            for name, f in zip(self.layers, feats):
                if f.shape[1:].numel() == 0:
                    raise ValueError(
                        f"images of size {tuple(images.shape[-2:])} are too small for layer {name} "
                        f"(its features have shape {tuple(f.shape)}); use larger images or shallower layers"
                    )
        return feats

    def per_layer(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-layer weighted terms, shape (N, L) in float32 (columns follow ``self.layers``)."""
        if self.check_inputs:
            check_image_pair(input, target, allow_dtype_mismatch=_autocast_enabled(input.device.type))
            check_values({"input": input, "target": target}, self.input_range, self.check_range)
        feats_in = self.features(input)
        if target.requires_grad:
            feats_tgt = self.features(target)
        else:
            with torch.no_grad():
                feats_tgt = self.features(target)
        return feature_distance(feats_in, feats_tgt, self.layer_weights, fused=self.fused)

    def per_layer_dict(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``per_layer`` as {layer name: (N,) tensor}, for logging."""
        terms = self.per_layer(input, target)
        return {name: terms[:, i] for i, name in enumerate(self.layers)}

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss: a scalar for "mean"/"sum", an (N,) tensor for "none"."""
        per_sample = self.per_layer(input, target).sum(dim=1)
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample

    def extra_repr(self) -> str:
        return (
            f"layers={list(self.layers)}, layer_weights={self.layer_weights}, reduction={self.reduction!r}, "
            f"fused={'auto' if self.fused is None else self.fused}"
        )
