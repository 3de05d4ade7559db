r"""StyleLoss: Gatys et al.'s style term as in Johnson et al. (2016): distances between Gram matrices.

For layer l with activations F_l(x) reshaped to (C_l, H_l W_l),

.. math:: G_l(x) = F_l(x) F_l(x)^\top / (C_l H_l W_l), \qquad
          \mathrm{loss}_n = \sum_l w_l \lVert G_l(x_n) - G_l(y_n) \rVert_F^2

or, with ``distance="l1"`` (BasicSR's style term with ``criterion='l1'``), the *mean* absolute difference of
the Gram matrices' C_l x C_l entries, :math:`w_l \frac{1}{C_l^2} \sum_{i,j} |G_l(x_n) - G_l(y_n)|_{ij}`.

The pipeline is every loss's (``PerceptualLoss``); the criterion is ``perceptloss.criteria.GramDistance``: the
Gram matrices are formed in float32 (float64 for float64 features), also under autocast, and both distances
run on the fused distance operator (an L2 or L1 distance over the (C, C) matrices).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping, Sequence, Unpack

from torch import nn

from ._base import PerceptualLoss
from ._options import LossOptions
from .criteria import GramDistance
from .preprocessing import Normalization


class StyleLoss(PerceptualLoss):
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
        super().__init__(**options)
        criterion = GramDistance(distance, fused=self.fused)
        criterion.layer_weights = self._use_backbone(backbone, layers, layer_weights, weights, normalization, "style")
        self._set_criterion(criterion)

    @property
    def distance(self) -> str:
        """"l2" or "l1"."""
        return self.criterion.distance

    @property
    def layer_weights(self) -> list[float]:
        """One weight per layer."""
        return list(self.criterion.layer_weights)

    def extra_repr(self) -> str:
        return (
            f"layers={list(self.layers)}, layer_weights={self.layer_weights}, reduction={self.reduction!r}, "
            f"distance={self.distance!r}, memory_format={self.memory_format!r}"
            + (", checkpoint=True" if self.checkpoint else "")
        )
