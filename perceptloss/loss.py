"""FeatureLoss: the normalised multi-layer squared feature distance of the DFC-VAE paper, as an nn.Module."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping, Sequence, Unpack

import torch
from torch import nn

from ._base import PerceptualLoss
from ._options import LossOptions
from ._validation import check_choice, check_layer_weights, check_number
from .factory import create_backbone
from .functional import charbonnier_distance, feature_distance, unit_normalize
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
        distance: Literal["l2", "l1", "cosine", "charbonnier"] = "l2",
        normalization: Normalization | str | None = None,
        charbonnier_eps: float | None = None,
        **options: Unpack[LossOptions],
    ) -> None:
        super().__init__(**options)
        check_choice("distance", distance, self._DISTANCES)
        if charbonnier_eps is not None and distance != "charbonnier":
            raise ValueError(
                f"charbonnier_eps={charbonnier_eps!r} cannot apply with distance={distance!r}: it is the eps of "
                f"distance='charbonnier'; pass distance='charbonnier' or drop charbonnier_eps"
            )
        if self.fused and distance == "charbonnier":
            raise ValueError(
                "fused=True requires the fused operator, but distance='charbonnier' has no fused form (it runs in "
                "plain PyTorch): leave fused unset (None) or pass fused=False"
            )
        self.charbonnier_eps = 1e-3 if charbonnier_eps is None else check_number(
            "charbonnier_eps", charbonnier_eps, positive=True)
        if layers is None:
            layers = list(layer_weights) if isinstance(layer_weights, Mapping) else self._DEFAULT_LAYERS
        net, norm = create_backbone(backbone, layers, weights, normalization, share_module=self.share_module)
        self._set_network(net, norm)
        self.layer_weights: list[float] = check_layer_weights(self.layers, layer_weights)
        self.distance = distance

    _DEFAULT_LAYERS = "dfc123"
    _DISTANCES: tuple[str, ...] = ("l2", "l1", "cosine", "charbonnier")

    def representation(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The activations; with ``distance="cosine"`` unit-normalised over channels (float32) at each position."""
        if self.distance == "cosine":
            return [unit_normalize(f) for f in features]
        return features

    def compare(self, input_repr: list[torch.Tensor], target_repr: list[torch.Tensor]) -> torch.Tensor:
        """(N, L) weighted per-layer distances between two representations (float32, fp64 for fp64)."""
        if self.distance == "charbonnier":
            return charbonnier_distance(input_repr, target_repr, self.layer_weights, eps=self.charbonnier_eps)
        if self.distance == "cosine":  # the operator's mean over C*H*W, times C: a sum over C, mean over H*W
            weights = [w * a.shape[1] for w, a in zip(self.layer_weights, input_repr)]
            return feature_distance(input_repr, target_repr, weights, fused=self.fused, p=2)
        return feature_distance(
            input_repr, target_repr, self.layer_weights, fused=self.fused, p=1 if self.distance == "l1" else 2
        )

    def _signature_fields(self) -> dict[str, object]:
        from ._signature import number, numbers

        distance = self.distance + (f"/eps={number(self.charbonnier_eps)}" if self.distance == "charbonnier" else "")
        return {**super()._signature_fields(), "layer_weights": numbers(self.layer_weights), "distance": distance}

    def extra_repr(self) -> str:
        return (
            f"layers={list(self.layers)}, layer_weights={self.layer_weights}, reduction={self.reduction!r}, "
            f"distance={self.distance!r}, memory_format={self.memory_format!r}, "
            f"fused={'auto' if self.fused is None else self.fused}"
            + (", checkpoint=True" if self.checkpoint else "")
        )
