"""FeatureLoss: the normalised multi-layer squared feature distance of the DFC-VAE paper, as an nn.Module."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping, Sequence

import torch
from torch import nn

from ._base import PerceptualLoss, Reduction
from ._layout import MemoryFormat
from ._validation import check_choice, check_layer_weights, check_number
from .factory import create_backbone
from .functional import charbonnier_distance, feature_distance, unit_normalize
from .preprocessing import Normalization


class FeatureLoss(PerceptualLoss):
    r"""Weighted sum over layers of the mean squared difference of two images' activations.

    For images x, y of shape (N, 3, H, W), RGB in ``input_range``:

    .. math:: \mathrm{loss}_n = \sum_l w_l \frac{1}{C_l H_l W_l} \lVert \Phi_l(x_n) - \Phi_l(y_n) \rVert_2^2

    then reduced over the batch (``"mean"``, ``"sum"``) or returned per sample (``"none"`` -> (N,)).
    With ``distance="l1"`` the squared norm is replaced by the L1 norm (mean absolute difference); see
    ``distance`` for the cosine and Charbonnier forms.

    For a fixed target (image optimisation, content loss), ``set_target(y)`` computes its features once and
    ``loss(x)`` then compares against them.

    Args:
        backbone: registered name ("vgg19", "vgg16", "timm:<model>") or an ``nn.Module`` (layers are then
            torch.fx node names and ``normalization`` defaults to identity).
        layers: layer names (e.g. ``["relu1_1", "relu2_1"]``) or a preset ("dfc123", "dfc345", "lpips",
            "style"); see ``perceptloss.list_layers`` and ``perceptloss.registry.PRESETS``. Default: "dfc123", or
            the keys of ``layer_weights`` when that is a dict.
        layer_weights: one finite weight >= 0 per layer (default 1 each), as a sequence in layer order or a
            dict ``{layer: weight}`` (BasicSR's form).
        weights: "default", a weight entry name (``perceptloss.list_weights(backbone)``), a file path, or
            None for random init (tests of mechanics only).
        input_range: the range of the images you pass, e.g. (0, 1) or (-1, 1); each weight entry's own
            preprocessing (Caffe BGR 0-255 minus mean, ImageNet mean/std, ...) is applied after it.
        reduction: "mean" | "sum" | "none" over the batch.
        distance: "l2" (mean squared difference, the paper's), "l1" (mean absolute difference, BasicSR's
            default), "cosine" (per position, the squared distance of the channel-unit-normalised features,
            2 (1 - cos), averaged over positions: LPIPS without heads, for any backbone) -- these three run on
            the fused operator -- or "charbonnier" (mean of sqrt(d^2 + eps^2) over C*H*W, a smooth L1; plain
            PyTorch, the operator has no such form).
        charbonnier_eps: the eps of ``distance="charbonnier"`` (finite, > 0; None: 1e-3; BasicSR's
            ``CharbonnierLoss(eps=e)`` is ``charbonnier_eps=sqrt(e)``); refused with any other distance.
        check_range: "raise" | "warn" | "off" for images clearly outside ``input_range``.
        check_inputs: check shapes/dtypes/devices and NaN/Inf (one host synchronisation per call).
        fused: None uses the compiled operator when present for the device, True requires it, False uses
            the pure-PyTorch path.
        normalization: override the weights' preprocessing ("imagenet", "caffe", or a Normalization); needed
            for a weights file whose provenance perceptloss cannot know.
        share_module: with an ``nn.Module`` backbone, read that module itself at every call (its current
            weights and mode, e.g. a discriminator for feature matching) instead of a private frozen copy.
        dtype: run the network in this dtype: None keeps float32 (or what ``.to()`` made it); "auto" picks
            bfloat16 where the device computes it natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs of compute
            capability >= 8.0; about 2-3x faster there) and float32 elsewhere (``perceptloss.auto_dtype``);
            an explicit ``torch.bfloat16`` on a CPU that emulates it works but warns once (about 15x slower).
            Images of any floating dtype are cast to it, gradients come back in theirs, and the distances
            still accumulate in float32.
        memory_format: layout of the network's activations. "auto" uses channels_last on the CPU (oneDNN's
            convolutions and max-pooling are faster in NHWC: 1.2x on VGG19 fwd+bwd here) and on CUDA for
            16-bit dtypes (tensor cores), and leaves the layout alone otherwise; "channels_last" or
            "contiguous" force one. Only the internal activations change: results and the layout of the
            gradient you get back do not.
        channels, channel_reduction: how grey and N-channel images reach the RGB network ("rgb" default,
            "replicate", "per_channel", "groups"; see ``perceptloss.channels``).

    The network is frozen by construction (its weights are buffers, left out of the state dict: not trainable, not in a
    parent model's ``state_dict``), stays in eval mode and is truncated after the deepest requested layer.
    The target's features are computed under ``no_grad`` unless the target requires grad.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "vgg19",
        layers: str | Sequence[str] | None = None,
        *,
        layer_weights: Sequence[float] | Mapping[str, float] | None = None,
        weights: str | Path | None = "default",
        input_range: tuple[float, float] = (0.0, 1.0),
        reduction: Reduction = "mean",
        distance: Literal["l2", "l1", "cosine", "charbonnier"] = "l2",
        check_range: Literal["raise", "warn", "off"] = "raise",
        check_inputs: bool = True,
        fused: bool | None = None,
        normalization: Normalization | str | None = None,
        dtype: torch.dtype | str | None = None,
        memory_format: MemoryFormat | torch.memory_format = "auto",
        share_module: bool = False,
        charbonnier_eps: float | None = None,
        channels: str = "rgb",
        channel_reduction: str = "mean",
    ) -> None:
        super().__init__(input_range=input_range, reduction=reduction, check_range=check_range,
                         check_inputs=check_inputs, fused=fused, dtype=dtype, memory_format=memory_format,
                         channels=channels, channel_reduction=channel_reduction)
        check_choice("distance", distance, self._DISTANCES)
        if charbonnier_eps is not None and distance != "charbonnier":
            raise ValueError(
                f"charbonnier_eps={charbonnier_eps!r} cannot apply with distance={distance!r}: it is the eps of "
                f"distance='charbonnier'; pass distance='charbonnier' or drop charbonnier_eps"
            )
        if fused and distance == "charbonnier":
            raise ValueError(
                "fused=True requires the fused operator, but distance='charbonnier' has no fused form (it runs in "
                "plain PyTorch): leave fused unset (None) or pass fused=False"
            )
        self.charbonnier_eps = 1e-3 if charbonnier_eps is None else check_number(
            "charbonnier_eps", charbonnier_eps, positive=True)
        if layers is None:
            layers = list(layer_weights) if isinstance(layer_weights, Mapping) else self._DEFAULT_LAYERS
        net, norm = create_backbone(backbone, layers, weights, normalization, share_module=share_module)
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
        )
