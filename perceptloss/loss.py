"""FeatureLoss: the normalised multi-layer squared feature distance of the DFC-VAE paper, as an nn.Module."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping, Sequence, Unpack

from torch import nn

from ._base import PerceptualLoss
from ._options import LossOptions
from .criteria import Criterion, FeatureDistance, check_criterion
from .preprocessing import Normalization


class FeatureLoss(PerceptualLoss):
    r"""Weighted sum over layers of the mean squared difference of two images' activations (DFC-VAE's loss).

    For images :math:`x, y` and the activations :math:`\Phi_l` of the layers :math:`l`, with weights
    :math:`w_l`:

    .. math:: \ell_n = \sum_l w_l \frac{1}{C_l H_l W_l} \lVert \Phi_l(x_n) - \Phi_l(y_n) \rVert_2^2

    then reduced over the batch by ``reduction``. ``distance`` replaces the squared norm: "l1" the mean
    absolute difference, "cosine" per position the squared distance of the channel-unit-normalised features,
    :math:`2 (1 - \cos)`, averaged over positions (LPIPS without heads, for any backbone), "charbonnier" the
    mean of :math:`\sqrt{d^2 + \epsilon^2}` (a smooth L1).

    ``set_target(y)`` computes a fixed target's features once; ``loss(x)`` then compares against them. The
    network is frozen by construction (its weights are buffers, left out of the state dict), stays in eval
    mode and is truncated after the deepest requested layer; the target's features are computed under
    ``no_grad`` unless the target requires grad.

    Args:
        backbone: a registered name ("vgg19", "vgg16", "timm:<model>") or an ``nn.Module`` (its layers are
            then torch.fx node names and ``normalization`` defaults to identity).
        layers: layer names (e.g. ``["relu1_1", "relu2_1"]``) or a preset ("dfc123", "dfc345", "lpips",
            "style"; ``perceptloss.registry.PRESETS``). Default: "dfc123", or the keys of ``layer_weights`` when that
            is a dict.
        layer_weights: one finite weight >= 0 per layer (default 1 each), a sequence in layer order or a
            dict ``{layer: weight}`` (BasicSR's form).
        weights: "default", a weight entry name (``perceptloss.list_weights(backbone)``), a file path, or
            None for a random network (tests of mechanics only).
        distance: "l2" (the paper's), "l1" (BasicSR's default), "cosine" -- these three run on the fused
            operator -- or "charbonnier" (plain PyTorch).
        normalization: override the weights' preprocessing ("imagenet", "caffe", "identity" or a
            ``perceptloss.Normalization``); needed for a weights file whose provenance perceptloss cannot know.
        charbonnier_eps: the :math:`\epsilon` of ``distance="charbonnier"`` (finite, > 0; None: 1e-3;
            BasicSR's ``CharbonnierLoss(eps=e)`` is ``charbonnier_eps=sqrt(e)``); refused with any other distance.

    ``distance`` may also be a criterion of your own (a ``perceptloss.criteria.Criterion`` instance): it then
    weighs the layers itself, and every part of the pipeline (channel policies, ``set_target``, ``tiled``,
    ``VolumeLoss``, ``PerceptualMetric``, ``perceptloss score``, signatures) works with it.

    Shape:
        - input, target: :math:`(N, C, H, W)` in ``input_range``; :math:`C = 3` unless ``channels`` says
          otherwise; :math:`H, W` at least what the deepest layer takes (else ``ImageTooSmallError``).
        - output: a scalar; :math:`(N,)` with ``reduction="none"``, :math:`(N, G)` with
          ``channel_reduction="none"``.

    Example:
        >>> import torch
        >>> from perceptloss import FeatureLoss
        >>> loss = FeatureLoss("vgg19", "dfc123", weights=None)  # weights=None: random network, for the example
        >>> x = torch.rand(2, 3, 64, 64, requires_grad=True)
        >>> value = loss(x, torch.rand(2, 3, 64, 64))
        >>> value.shape
        torch.Size([])
        >>> value.backward()
        >>> x.grad.shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(
        self,
        backbone: str | nn.Module = "vgg19",
        layers: str | Sequence[str] | None = None,
        *,
        layer_weights: Sequence[float] | Mapping[str, float] | None = None,
        weights: str | Path | None = "default",
        distance: Literal["l2", "l1", "cosine", "charbonnier"] | Criterion = "l2",
        normalization: Normalization | str | None = None,
        charbonnier_eps: float | None = None,
        **options: Unpack[LossOptions],
    ) -> None:
        super().__init__(**options)
        if isinstance(distance, str):  # its arguments checked before the (slower) network is built
            criterion = FeatureDistance(distance, fused=self.fused, charbonnier_eps=charbonnier_eps)
        else:
            criterion = check_criterion(distance)
            if charbonnier_eps is not None:
                raise ValueError("charbonnier_eps applies to distance='charbonnier' only; drop it")
            if layer_weights is not None:
                raise ValueError(
                    f"layer_weights cannot apply with distance={type(distance).__name__}(): a criterion of your own "
                    f"weighs its layers itself (its compare gives the weighted terms); give the weights to it"
                )
        layer_weight_list = self._use_backbone(backbone, layers, layer_weights, weights, normalization, "dfc123")
        if isinstance(criterion, FeatureDistance):
            criterion.layer_weights = layer_weight_list
        self._set_criterion(criterion)

    @property
    def distance(self) -> str:
        """The distance's name ("l2", "l1", "cosine", "charbonnier"; a criterion of your own: its class name)."""
        return getattr(self.criterion, "distance", type(self.criterion).__name__)

    @property
    def charbonnier_eps(self) -> float | None:
        """The eps of ``distance="charbonnier"`` (None for a criterion of your own)."""
        return getattr(self.criterion, "charbonnier_eps", None)

    @property
    def layer_weights(self) -> list[float]:
        """One weight per layer (a criterion of your own: the ones it holds, else 1 each)."""
        return list(getattr(self.criterion, "layer_weights", [1.0] * len(self.layers)))

    def extra_repr(self) -> str:
        return (
            f"layers={list(self.layers)}, layer_weights={self.layer_weights}, reduction={self.reduction!r}, "
            f"distance={self.distance!r}, memory_format={self.memory_format!r}, "
            f"fused={'auto' if self.fused is None else self.fused}"
            + (", checkpoint=True" if self.checkpoint else "")
        )
