"""FeatureLoss: the normalised multi-layer squared feature distance of the DFC-VAE paper, as an nn.Module."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn

from . import _ops
from ._validation import cast_to_network_dtype, check_image_pair, check_values
from .functional import feature_distance
from .preprocessing import Normalization, Preprocess
from .registry import create_backbone

Reduction = Literal["mean", "sum", "none"]
MemoryFormat = Literal["auto", "channels_last", "contiguous"]
_MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format,
                   torch.channels_last: torch.channels_last, torch.contiguous_format: torch.contiguous_format}


class _ToLayout(torch.autograd.Function):
    """``x.contiguous(memory_format=layout)`` whose gradient comes back in ``x``'s own layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
        ctx.own = torch.contiguous_format if x.is_contiguous() else torch.channels_last
        return x.contiguous(memory_format=layout)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.contiguous(memory_format=ctx.own), None


def activation_layout(x: torch.Tensor, choice: MemoryFormat | torch.memory_format) -> torch.memory_format | None:
    """The memory format to run a network in for its (N, 3, H, W) input ``x`` (None: leave it as it is).

    "auto": channels_last on the CPU (oneDNN's convolutions and pooling are faster in NHWC) and on CUDA for
    16-bit dtypes or under autocast (tensor cores); otherwise as it is.
    """
    if choice != "auto":
        return _MEMORY_FORMATS[choice]
    if x.dim() != 4:
        return None
    if x.device.type == "cpu":
        return torch.channels_last
    if x.device.type == "cuda" and (x.dtype in (torch.float16, torch.bfloat16) or _autocast_enabled("cuda")):
        return torch.channels_last
    return None


def to_activation_layout(x: torch.Tensor, choice: MemoryFormat | torch.memory_format) -> torch.Tensor:
    """``x`` in ``activation_layout(x, choice)``; its gradient comes back in ``x``'s own layout."""
    layout = activation_layout(x, choice)
    if layout is None or x.is_contiguous(memory_format=layout):
        return x
    return _ToLayout.apply(x, layout)


def check_memory_format(choice: object) -> None:
    if choice != "auto" and choice not in _MEMORY_FORMATS:
        raise ValueError(f"memory_format must be 'auto', 'channels_last' or 'contiguous', got {choice!r}")


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
    With ``distance="l1"`` the squared norm is replaced by the L1 norm (mean absolute difference).

    For a fixed target (image optimisation, content loss), ``set_target(y)`` computes its features once and
    ``loss(x)`` then compares against them.

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
        distance: "l2" (mean squared difference, the paper's) or "l1" (mean absolute difference, BasicSR's
            default); both run on the fused operator.
        check_range: "raise" | "warn" | "off" for images clearly outside ``input_range``.
        check_inputs: check shapes/dtypes/devices and NaN/Inf (one host synchronisation per call).
        fused: None uses the compiled operator when present for the device, True requires it, False uses
            the pure-PyTorch path.
        normalization: override the weights' preprocessing.
        dtype: run the network in this dtype (e.g. ``torch.bfloat16``: about 2-3x faster on CPUs with AVX512-BF16
            or AMX, and on GPUs); images of any floating dtype are cast to it, gradients come back in theirs,
            and the distances still accumulate in float32. None keeps float32 (or what ``.to()`` made it).
        memory_format: layout of the network's activations. "auto" uses channels_last on the CPU (oneDNN's
            convolutions and max-pooling are faster in NHWC: 1.2x on VGG19 fwd+bwd here) and on CUDA for
            16-bit dtypes (tensor cores), and leaves the layout alone otherwise; "channels_last" or
            "contiguous" force one. Only the internal activations change: results and the layout of the
            gradient you get back do not.

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
        distance: Literal["l2", "l1"] = "l2",
        check_range: Literal["raise", "warn", "off"] = "raise",
        check_inputs: bool = True,
        fused: bool | None = None,
        normalization: Normalization | None = None,
        dtype: torch.dtype | None = None,
        memory_format: MemoryFormat | torch.memory_format = "auto",
    ) -> None:
        super().__init__()
        check_memory_format(memory_format)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if distance not in ("l2", "l1"):
            raise ValueError(f"distance must be 'l2' (mean squared difference) or 'l1' (mean absolute difference), got {distance!r}")
        if check_range not in ("raise", "warn", "off"):
            raise ValueError(f"check_range must be 'raise', 'warn' or 'off', got {check_range!r}")
        self.net, norm = create_backbone(backbone, layers, weights, normalization)
        if dtype is not None:
            self.net.to(dtype)
        self.memory_format = memory_format
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
        self.distance = distance
        self._target: list[torch.Tensor] | None = None  # set_target's representation, batch 1 or N
        self.check_range = check_range
        self.check_inputs = check_inputs
        if fused and not _ops.HAS_EXT:
            raise RuntimeError(_ops.unavailable_reason(torch.device("cpu")))
        self.fused = fused

    def train(self, mode: bool = True) -> "FeatureLoss":
        """The loss stays in eval mode whatever ``mode`` is: every submodule (network, preprocessing) too."""
        return super().train(False)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Activations of ``self.layers`` for RGB images in ``input_range``: a list of (N, C_l, H_l, W_l).

        Images of another floating dtype than the network (fp16/fp64 without autocast) are cast to it.
        """
        # Preprocess in float32 (or float64), then cast to the network's dtype: Caffe's 0-255 scale and mean
        # subtraction lose precision in 16-bit floats.
        wide = images if images.dtype in (torch.float32, torch.float64) else images.float()
        x = to_activation_layout(cast_to_network_dtype(self.preprocess(wide), self.net), self.memory_format)
        try:
            feats = self.net(x)
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

    def representation(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """What is compared per layer: the activations themselves (StyleLoss: their Gram matrices)."""
        return features

    def compare(self, input_repr: list[torch.Tensor], target_repr: list[torch.Tensor]) -> torch.Tensor:
        """(N, L) weighted per-layer distances between two representations (float32, fp64 for fp64)."""
        return feature_distance(
            input_repr, target_repr, self.layer_weights, fused=self.fused, p=1 if self.distance == "l1" else 2
        )

    @torch.no_grad()
    def set_target(self, target: torch.Tensor | None) -> "FeatureLoss":
        """Compute the representation of ``target`` once, so that ``loss(input)`` reuses it (None clears it).

        ``target``: (1 or N, 3, H, W) RGB in ``input_range``; a batch of 1 is compared with every input. No
        gradient flows to it. Returns self.
        """
        if target is None:
            self._target = None
            return self
        if self.check_inputs:
            check_image_pair(target, target)
            check_values({"target": target}, self.input_range, self.check_range)
        self._target = [r.detach() for r in self.representation(self.features(target))]
        return self

    def _cached_target(self, input_repr: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._target is None:
            raise ValueError(
                "no target: call loss(input, target), or fix a target once with loss.set_target(target)"
            )
        out = []
        for name, r, t in zip(self.layers, input_repr, self._target):
            if t.shape[1:] != r.shape[1:] or t.shape[0] not in (1, r.shape[0]):
                raise ValueError(
                    f"layer {name}: the input gives {tuple(r.shape)} but the target set with set_target gave "
                    f"{tuple(t.shape)}; use images of the target's size and a target batch of 1 or N"
                )
            out.append(t.to(device=r.device, dtype=r.dtype).expand_as(r))
        return out

    def per_layer(self, input: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample, per-layer weighted terms, shape (N, L) in float32 (columns follow ``self.layers``).

        ``target`` None compares with the target fixed by ``set_target``.
        """
        if target is None:
            if self.check_inputs:
                check_image_pair(input, input)
                check_values({"input": input}, self.input_range, self.check_range)
            input_repr = self.representation(self.features(input))
            return self.compare(input_repr, self._cached_target(input_repr))
        if self.check_inputs:
            check_image_pair(input, target)  # a dtype mismatch is allowed under autocast
            check_values({"input": input, "target": target}, self.input_range, self.check_range)
        feats_in = self.features(input)
        if target.requires_grad:
            feats_tgt = self.features(target)
        else:
            with torch.no_grad():
                feats_tgt = self.features(target)
        return self.compare(self.representation(feats_in), self.representation(feats_tgt))

    def per_layer_dict(self, input: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``per_layer`` as {layer name: (N,) tensor}, for logging."""
        terms = self.per_layer(input, target)
        return {name: terms[:, i] for i, name in enumerate(self.layers)}

    def forward(self, input: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """The loss: a scalar for "mean"/"sum", an (N,) tensor for "none" (target None: ``set_target``'s)."""
        per_sample = self.per_layer(input, target).sum(dim=1)
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample

    def extra_repr(self) -> str:
        return (
            f"layers={list(self.layers)}, layer_weights={self.layer_weights}, reduction={self.reduction!r}, "
            f"distance={self.distance!r}, memory_format={self.memory_format!r}, "
            f"fused={'auto' if self.fused is None else self.fused}"
        )
