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
from typing import Literal, Mapping, Sequence, Unpack

import torch
from torch import nn

from ._dtypes import accumulation_dtype
from .functional import feature_distance
from ._options import LossOptions
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
    r"""Weighted sum over layers of the squared Frobenius distance between Gram matrices (Gatys et al.'s style).

    For images :math:`x, y`, the Gram matrices :math:`G_l` of the layers' activations (``gram_matrix``) and
    weights :math:`w_l`:

    .. math:: \ell_n = \sum_l w_l \lVert G_l(x_n) - G_l(y_n) \rVert_F^2 \quad (\text{"l2"}), \qquad
              \ell_n = \sum_l \frac{w_l}{C_l^2} \sum_{i,j} |G_l(x_n) - G_l(y_n)|_{ij} \quad (\text{"l1"})

    ("l1" is BasicSR's ``criterion='l1'``: a mean over the :math:`C_l \times C_l` entries), then reduced over
    the batch by ``reduction``. For style transfer, fix the style image once with ``set_target(style)`` (a
    batch of 1 is compared with every input, and it may have another size than the inputs): its Gram
    matrices are kept, not recomputed each step. The network is frozen and stays in eval mode.

    Args:
        backbone, layers, layer_weights, weights, normalization: as for ``FeatureLoss``; ``layers`` defaults
            to "style" (relu1_1 ... relu5_1 of VGG19).
        distance: "l2" (Johnson et al.) or "l1".

    Shape:
        - input: :math:`(N, C, H, W)` in ``input_range`` (:math:`C = 3` unless ``channels`` says otherwise).
        - target: the same shape, or a fixed ``set_target`` of 1 or N samples of any size the layers take.
        - output: a scalar; :math:`(N,)` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> from perceptloss import StyleLoss
        >>> loss = StyleLoss("vgg19", weights=None).set_target(torch.rand(1, 3, 64, 64))
        >>> loss(torch.rand(4, 3, 32, 32)).shape
        torch.Size([])
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
        distance: Literal["l2", "l1"] = "l2",
        normalization: Normalization | str | None = None,
        **options: Unpack[LossOptions],
    ) -> None:
        super().__init__(backbone, layers, layer_weights=layer_weights, weights=weights, distance=distance,
                         normalization=normalization, **options)

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
