r"""Criteria: how a loss compares two images' features -- the third part of the loss contract.

Every loss of this library is one pipeline (``perceptloss.PerceptualLoss``): it *accepts* images (range,
channel policy, checks), runs them through its frozen *feature network* (preprocessing, dtype, layout,
checkpointing), and hands the two lists of per-layer activations to its **criterion**, which

1. turns each layer's activations into what is compared (``representation``: the activations themselves,
   Gram matrices, unit-normalised features, ...);
2. compares two representations per sample and layer (``compare`` -> (N, L) terms, weighted);
3. finishes the (N, L) terms into one value per sample (``finish``: their sum by default; DISTS' 1 - sum,
   clamped at 0); a criterion with ``spatial = True`` gives per-layer maps instead (``maps``), which the
   loss upsamples to the image size and sums (LPIPS' ``spatial=True``);
4. says how ``perceptloss.tiled`` evaluates it exactly (``tiling``):

   - ``"local"``: each term is the mean over positions of a per-position quantity, so a tile's term times its
     number of positions is summable (feature distances, LPIPS). A local criterion with ``maps`` also tiles
     its spatial maps.
   - ``"pooled"``: the representation itself is a mean over positions of per-position statistics
     (``pooled_sums`` summed over tiles, then ``from_pooled_sums``): Gram matrices.
   - ``"paired"``: the terms follow from sums over positions of both images' features together
     (``paired_sums``, then ``terms_from_paired_sums``): DISTS' means, variances and covariances.
   - ``None`` (the default for a new criterion): the criterion does not say; ``tiled`` refuses it with an
     error instead of guessing.

A criterion is an ``nn.Module`` (its constants are buffers, so they follow ``.to()``), holds no trainable
parameter and is used by exactly one loss. ``signature_fields`` names what makes its numbers what they are.

Write your own by subclassing ``Criterion`` and passing an instance as ``FeatureLoss(..., distance=...)``
(the "Write your own loss" page of the docs).
"""
from __future__ import annotations

from typing import ClassVar, Literal, Sequence

import torch
from torch import nn

from ._dtypes import accumulation_dtype
from ._signature import number, numbers
from ._validation import check_choice, check_number
from .functional import charbonnier_distance, feature_distance, unit_feature_distance, unit_normalize

__all__ = ["Criterion", "FeatureDistance", "GramDistance", "gram_matrix", "TILING_MODES"]

TilingMode = Literal["local", "pooled", "paired"]
#: The values ``Criterion.tiling`` may take (None: cannot be tiled exactly).
TILING_MODES: tuple[str, ...] = ("local", "pooled", "paired")


class Criterion(nn.Module):
    r"""Base class of criteria: ``representation`` -> ``compare`` -> ``finish`` (see the module docstring).

    Subclasses implement ``compare``; the rest has defaults. Tensors: ``features`` and representations are
    lists with one entry per layer, each (N, ...) with the same N; ``compare`` returns (N, L) weighted terms
    in float32 (float64 for float64 features), ``finish`` (N,) (or (N, G) for per-channel-group terms).
    """

    #: How ``perceptloss.tiled`` evaluates this criterion exactly: "local", "pooled", "paired", or None (refused).
    tiling: ClassVar[TilingMode | None] = None
    #: With ``tiling`` None, why no tiling can be exact (``tiled``'s refusal says it); None: not stated.
    untiled_reason: ClassVar[str | None] = None
    #: True when the loss's output is a per-pixel map (``maps``) instead of one value per sample.
    spatial: bool = False

    def representation(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """What is compared per layer (default: the activations themselves)."""
        return features

    def compare(self, input_repr: list[torch.Tensor], target_repr: list[torch.Tensor]) -> torch.Tensor:
        """(N, L) weighted per-layer terms between two representations (float32; float64 for float64)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compare(input_repr, target_repr) -> (N, L)")

    def finish(self, terms: torch.Tensor) -> torch.Tensor:
        """(..., L) per-layer terms -> (...) per-sample values (default: their sum over layers)."""
        return terms.sum(dim=-1)

    def maps(self, input_repr: list[torch.Tensor], target_repr: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-layer (N, 1, H_l, W_l) maps whose spatial means are ``compare``'s columns (``spatial`` criteria)."""
        raise NotImplementedError(f"{type(self).__name__} gives no spatial maps")

    def check_size(self, size: tuple[int, int]) -> None:
        """Raise ``ImageTooSmallError`` for images of ``size`` (H, W) the criterion cannot compare (default: any)."""

    # ---------------------------------------------------------------------------- tiling statistics

    def pooled_sums(self, features: torch.Tensor) -> torch.Tensor:
        """``tiling = "pooled"``: one layer's (N, C, h, w) features of a tile -> statistics summed over positions."""
        raise NotImplementedError(f"{type(self).__name__} has no pooled statistics")

    def from_pooled_sums(self, sums: torch.Tensor, count: int) -> torch.Tensor:
        """``tiling = "pooled"``: the whole image's summed statistics over ``count`` positions -> its representation."""
        raise NotImplementedError(f"{type(self).__name__} has no pooled statistics")

    def paired_sums(self, input_repr: torch.Tensor, target_repr: torch.Tensor) -> torch.Tensor:
        """``tiling = "paired"``: one layer's representations of both images in a tile -> sums over positions."""
        raise NotImplementedError(f"{type(self).__name__} has no paired statistics")

    def terms_from_paired_sums(self, sums: list[torch.Tensor], counts: list[int]) -> torch.Tensor:
        """``tiling = "paired"``: per-layer sums over the whole images (``counts`` positions) -> (N, L) terms."""
        raise NotImplementedError(f"{type(self).__name__} has no paired statistics")

    # ---------------------------------------------------------------------------- signature

    def signature_fields(self) -> dict[str, object]:
        """The fields this criterion adds to a loss's signature, in order.

        Default: ``distance`` naming the class (module and qualified name) and its ``extra_repr()``, so that
        two criteria of one class with other settings get other signatures; override to name them yourself.
        """
        cls = type(self)
        extra = self.extra_repr()
        return {"distance": f"{cls.__module__}.{cls.__qualname__}" + (f"({extra})" if extra else "")}


def check_criterion(criterion: object) -> "Criterion":
    """``criterion`` if it is a usable ``Criterion`` instance; a TypeError/ValueError that says what to do otherwise."""
    if isinstance(criterion, type) and issubclass(criterion, Criterion):
        raise TypeError(f"pass an instance of {criterion.__name__} (e.g. distance={criterion.__name__}()), not the class")
    if not isinstance(criterion, Criterion):
        raise TypeError(
            f"a criterion must be a perceptloss.criteria.Criterion instance (subclass it and implement compare), got "
            f"{type(criterion).__name__}"
        )
    if criterion.tiling is not None and criterion.tiling not in TILING_MODES:
        raise ValueError(f"{type(criterion).__name__}.tiling must be one of {TILING_MODES} or None, got {criterion.tiling!r}")
    if any(p.requires_grad for p in criterion.parameters()):
        raise ValueError(
            f"{type(criterion).__name__} has trainable parameters; a loss is frozen by construction: register its "
            f"constants as buffers (self.register_buffer) or call criterion.requires_grad_(False) first"
        )
    return criterion


class FeatureDistance(Criterion):
    r"""Weighted mean distances of two feature lists: ``FeatureLoss``'s criterion.

    "l2": :math:`w_l \frac{1}{C H W}\lVert a - b \rVert_2^2`; "l1": the mean absolute difference; "cosine":
    per position the squared distance of the channel-unit-normalised features, summed over channels and
    averaged over positions; "charbonnier": the mean of :math:`\sqrt{d^2 + \epsilon^2}`. The first three run
    on the fused operator (``fused``: None when it supports the device, True required, False never).
    """

    tiling: ClassVar[TilingMode | None] = "local"
    DISTANCES: ClassVar[tuple[str, ...]] = ("l2", "l1", "cosine", "charbonnier")

    def __init__(self, distance: str = "l2", layer_weights: Sequence[float] = (), *, fused: bool | None = None,
                 charbonnier_eps: float | None = None) -> None:
        super().__init__()
        check_choice("distance", distance, self.DISTANCES)
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
        self.distance = distance
        self.layer_weights = [float(w) for w in layer_weights]
        self.fused = fused
        self.charbonnier_eps = 1e-3 if charbonnier_eps is None else check_number(
            "charbonnier_eps", charbonnier_eps, positive=True)

    def compare(self, input_repr: list[torch.Tensor], target_repr: list[torch.Tensor]) -> torch.Tensor:
        """(N, L) weighted per-layer distances (float32, float64 for float64)."""
        if self.distance == "charbonnier":
            return charbonnier_distance(input_repr, target_repr, self.layer_weights, eps=self.charbonnier_eps)
        if self.distance == "cosine":
            return unit_feature_distance(input_repr, target_repr, None, self.layer_weights, fused=self.fused)
        p = 1 if self.distance == "l1" else 2
        return feature_distance(input_repr, target_repr, self.layer_weights, fused=self.fused, p=p)

    def maps(self, input_repr: list[torch.Tensor], target_repr: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per layer the (N, 1, H_l, W_l) map of the weighted per-position distance (float32; float64 for float64),
        whose spatial mean is ``compare``'s column: the channel mean of (a - b)², |a - b| or the Charbonnier
        penalty, or for "cosine" the channel sum of the squared difference of the unit-normalised features."""
        out = []
        for w, a, b in zip(self.layer_weights, input_repr, target_repr):
            if self.distance == "cosine":
                a, b = unit_normalize(a), unit_normalize(b)
            d = a.to(accumulation_dtype(a.dtype)) - b.to(accumulation_dtype(b.dtype))
            if self.distance == "l1":
                per_channel = d.abs()
            elif self.distance == "charbonnier":
                per_channel = (d.square() + self.charbonnier_eps ** 2).sqrt()
            else:
                per_channel = d.square()
            reduce = per_channel.sum if self.distance == "cosine" else per_channel.mean
            out.append(w * reduce(dim=1, keepdim=True))
        return out

    def signature_fields(self) -> dict[str, object]:
        eps = f"/eps={number(self.charbonnier_eps)}" if self.distance == "charbonnier" else ""
        return {"layer_weights": numbers(self.layer_weights), "distance": self.distance + eps}

    def extra_repr(self) -> str:
        return f"distance={self.distance!r}, layer_weights={self.layer_weights}"


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) features -> (N, C, C) Gram matrices F F^T / (C H W) with F the (C, H W) reshape.

    Computed in float32 whatever the feature dtype (float64 for float64), with autocast disabled.
    """
    if features.dim() != 4:
        raise ValueError(f"gram_matrix expects (N, C, H, W) features, got shape {tuple(features.shape)}")
    n, c, h, w = features.shape
    return _gram_sum(features) / float(c * h * w)


def _gram_sum(features: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, C) F F^T (unnormalised), in the accumulation dtype, autocast off."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w).to(accumulation_dtype(features.dtype))
    with torch.autocast(device_type=flat.device.type, enabled=False):
        return torch.bmm(flat, flat.transpose(1, 2))


class GramDistance(Criterion):
    r"""Distances of Gram matrices: ``StyleLoss``'s criterion (Gatys et al.'s style term).

    "l2": :math:`w_l \lVert G_l(x) - G_l(y) \rVert_F^2`; "l1": :math:`\frac{w_l}{C_l^2} \sum |G_l(x) - G_l(y)|`
    (BasicSR's ``criterion='l1'``), on the fused operator. Tiles as "pooled": a Gram matrix is a sum over
    positions of outer products.
    """

    tiling: ClassVar[TilingMode | None] = "pooled"
    DISTANCES: ClassVar[tuple[str, ...]] = ("l2", "l1")

    def __init__(self, distance: str = "l2", layer_weights: Sequence[float] = (), *, fused: bool | None = None) -> None:
        super().__init__()
        check_choice("distance", distance, self.DISTANCES)
        self.distance = distance
        self.layer_weights = [float(w) for w in layer_weights]
        self.fused = fused

    def representation(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The (N, C_l, C_l) float32 Gram matrix of each layer."""
        return [gram_matrix(f) for f in features]

    def compare(self, input_repr: list[torch.Tensor], target_repr: list[torch.Tensor]) -> torch.Tensor:
        """(N, L): squared Frobenius norms ("l2": the operator's mean over the C*C entries, times C*C) or mean
        absolute differences ("l1") of the Gram matrices, weighted."""
        if self.distance == "l1":
            return feature_distance(input_repr, target_repr, self.layer_weights, fused=self.fused, p=1)
        scaled = [w * g.shape[1] * g.shape[2] for w, g in zip(self.layer_weights, input_repr)]
        return feature_distance(input_repr, target_repr, scaled, fused=self.fused, p=2)

    def pooled_sums(self, features: torch.Tensor) -> torch.Tensor:
        return _gram_sum(features)

    def from_pooled_sums(self, sums: torch.Tensor, count: int) -> torch.Tensor:
        return sums / float(sums.shape[-1] * count)

    def signature_fields(self) -> dict[str, object]:
        return {"layer_weights": numbers(self.layer_weights), "distance": self.distance}

    def extra_repr(self) -> str:
        return f"distance={self.distance!r}, layer_weights={self.layer_weights}"
