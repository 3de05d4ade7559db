r"""StyleLoss: Gatys et al.'s style term as in Johnson et al. (2016): distances between Gram matrices.

For layer l with activations F_l(x) reshaped to (C_l, H_l W_l),

.. math:: G_l(x) = F_l(x) F_l(x)^\top / (C_l H_l W_l), \qquad
          \mathrm{loss}_n = \sum_l w_l \lVert G_l(x_n) - G_l(y_n) \rVert_F^2

or, with ``distance="l1"`` (BasicSR's style term with ``criterion='l1'``), the *mean* absolute difference of
the Gram matrices' C_l x C_l entries, :math:`w_l \frac{1}{C_l^2} \sum_{i,j} |G_l(x_n) - G_l(y_n)|_{ij}`.

The Gram matrices are formed in float32 (float64 for float64 features), also under autocast, and both
distances run on the fused distance operator (an L2 or L1 distance over the (C, C) matrices).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping, Sequence

import torch
from torch import nn

from ._base import Reduction
from ._dtypes import accumulation_dtype
from .functional import feature_distance
from .loss import FeatureLoss
from .preprocessing import Normalization


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) features -> (N, C, C) Gram matrices F F^T / (C H W) with F the (C, H W) reshape.

    Computed in float32 whatever the feature dtype (float64 for float64), with autocast disabled.
    """
    if features.dim() != 4:
        raise ValueError(f"gram_matrix expects (N, C, H, W) features, got shape {tuple(features.shape)}")
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w).to(accumulation_dtype(features.dtype))
    with torch.autocast(device_type=f.device.type, enabled=False):
        gram = torch.bmm(f, f.transpose(1, 2))
    return gram / float(c * h * w)


class StyleLoss(FeatureLoss):
    r"""Weighted sum over layers of the squared Frobenius distance between Gram matrices.

    For images x, y of shape (N, 3, H, W), RGB in ``input_range``:
    loss_n = sum_l w_l ||G_l(x_n) - G_l(y_n)||_F^2 (``distance="l2"``, Johnson et al.), or
    loss_n = sum_l w_l mean_{i,j} |G_l(x_n) - G_l(y_n)|_{ij} (``distance="l1"``, BasicSR's ``criterion='l1'``: a
    mean, not a sum, over the C_l x C_l entries), reduced over the batch like ``FeatureLoss``.

    For style transfer, fix the style image once with ``set_target(style)`` (a batch of 1 is compared with
    every input; it may have another size than the inputs) and call ``loss(images)``: its Gram matrices are
    kept, not recomputed each step.

    Args: as ``FeatureLoss`` (``layers`` default "style": relu1_1 ... relu5_1 of VGG19), ``distance`` "l2"
    (default) or "l1".
    The network is frozen and stays in eval mode.
    """

    _DEFAULT_LAYERS = "style"
    _DISTANCES = ("l2", "l1")

    def __init__(
        self,
        backbone: str | nn.Module = "vgg19",
        layers: str | Sequence[str] | None = None,
        *,
        layer_weights: Sequence[float] | Mapping[str, float] | None = None,
        weights: str | Path | None = "default",
        input_range: tuple[float, float] = (0.0, 1.0),
        reduction: Reduction = "mean",
        distance: Literal["l2", "l1"] = "l2",
        check_range: Literal["raise", "warn", "off"] = "raise",
        check_inputs: bool = True,
        fused: bool | None = None,
        normalization: Normalization | str | None = None,
        dtype: torch.dtype | str | None = None,
        memory_format: str | torch.memory_format = "auto",
        share_module: bool = False,
        channels: str = "rgb",
        channel_reduction: str = "mean",
    ) -> None:
        super().__init__(
            backbone,
            layers,
            layer_weights=layer_weights,
            weights=weights,
            input_range=input_range,
            reduction=reduction,
            distance=distance,
            check_range=check_range,
            check_inputs=check_inputs,
            fused=fused,
            normalization=normalization,
            dtype=dtype,
            memory_format=memory_format,
            share_module=share_module,
            channels=channels,
            channel_reduction=channel_reduction,
        )

    def representation(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The (N, C_l, C_l) float32 Gram matrix of each layer."""
        return [gram_matrix(f) for f in features]

    def compare(self, input_repr: list[torch.Tensor], target_repr: list[torch.Tensor]) -> torch.Tensor:
        """(N, L) weighted distances of the Gram matrices: squared Frobenius norms ("l2": the operator's mean over
        the C*C entries, times C*C) or mean absolute differences ("l1")."""
        if self.distance == "l1":
            return feature_distance(input_repr, target_repr, self.layer_weights, fused=self.fused, p=1)
        scaled = [w * g.shape[1] * g.shape[2] for w, g in zip(self.layer_weights, input_repr)]
        return feature_distance(input_repr, target_repr, scaled, fused=self.fused, p=2)
