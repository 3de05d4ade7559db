r"""LPIPS (Zhang et al., *The Unreasonable Effectiveness of Deep Features as a Perceptual Metric*, CVPR 2018).

For layers l of a trunk (AlexNet, VGG16 or SqueezeNet 1.1), with \hat\phi_l the activations unit-normalised
over channels at every position and w_l >= 0 the learned per-channel head,

.. math:: d(x, y) = \sum_l \frac{1}{H_l W_l} \sum_{h,w} \sum_c w_{l,c}
          \big(\hat\phi_l(x)_{c,h,w} - \hat\phi_l(y)_{c,h,w}\big)^2

value-identical to the ``lpips`` package (v0.1, and v0.0 with ``version="0.0"``) given the same trunk weights. The non-spatial form runs on the
fused operator (``unit_feature_distance``: normalisation, heads and mean in one pass on the CPU); the unit
normalisation has a finite gradient where a feature vector is zero (lpips' ``normalize_tensor`` alone gives NaN there; inside lpips' metric
the ReLU before every tap happens to mask it). ``LPIPS(net, variant="shift_tolerant")`` is ST-LPIPS: the same
distance on anti-aliased trunks with their own trained heads (``perceptloss.stlpips``).
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Sequence, Unpack

import torch

from ._base import PerceptualLoss
from ._options import LossOptions
from ._signature import tensors_digest
from ._validation import check_choice
from .criteria import Criterion, TilingMode
from .factory import create_backbone
from ._dtypes import accumulation_dtype
from .functional import unit_feature_distance, unit_normalize
from .lpips_heads import HEAD_CHANNELS, LPIPS_NORMALIZATION, LPIPS_V00_NORMALIZATION, VERSIONS, load_heads
from .stlpips import VARIANTS, load_stlpips_heads, stlpips_net

#: LPIPS' trunk for each ``net``: (registered backbone, tapped layers, channels per layer).
LPIPS_NETS: dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]] = {
    "alex": ("alexnet", ("relu1", "relu2", "relu3", "relu4", "relu5"), HEAD_CHANNELS["alex"]),
    "vgg": ("vgg16", ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"), HEAD_CHANNELS["vgg"]),
    "squeeze": (
        "squeezenet1_1",
        ("relu_conv1", "fire3", "fire5", "fire6", "fire7", "fire8", "fire9"),
        HEAD_CHANNELS["squeeze"],
    ),
}


class LPIPSDistance(Criterion):
    r"""LPIPS' criterion: per layer, the spatial mean of the head-weighted squared difference of the
    channel-unit-normalised features, :math:`\frac{1}{H W}\sum_{h,w}\sum_c w_c (\hat a - \hat b)^2`.

    ``heads``: the (C_l,) weights of each layer (kept as buffers ``head0``, ``head1``, ...). The representation
    is the activations themselves; ``compare`` normalises and weighs them in one pass of the fused operator
    (``perceptloss.functional.unit_feature_distance``). ``spatial=True`` makes the loss return the per-layer maps
    upsampled and summed. ``net``, ``version`` and ``variant`` (None, or "shift_tolerant" for ST-LPIPS) name the
    metric in the signature.
    """

    tiling: ClassVar[TilingMode | None] = "local"

    def __init__(self, heads: Sequence[torch.Tensor], *, net: str, version: str, spatial: bool = False,
                 fused: bool | None = None, variant: str | None = None) -> None:
        super().__init__()
        for k, w in enumerate(heads):
            self.register_buffer(f"head{k}", w, persistent=False)
        self.num_layers = len(heads)
        self.net_name, self.version, self.spatial, self.fused = net, version, bool(spatial), fused
        self.variant = variant

    @property
    def heads(self) -> list[torch.Tensor]:
        """The (C_l,) head weights of each layer."""
        return [getattr(self, f"head{k}") for k in range(self.num_layers)]

    def compare(self, input_repr: list[torch.Tensor], target_repr: list[torch.Tensor]) -> torch.Tensor:
        """(N, L) float32: each layer's term (spatial mean of the head-weighted squared difference)."""
        return unit_feature_distance(input_repr, target_repr, self.heads, fused=self.fused)

    def maps(self, input_repr: list[torch.Tensor], target_repr: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per layer the (N, 1, H_l, W_l) map of the head-weighted squared difference summed over channels."""
        return [((unit_normalize(a) - unit_normalize(b)).square() * w.to(accumulation_dtype(a.dtype)).view(1, -1, 1, 1))
                .sum(dim=1, keepdim=True) for a, b, w in zip(input_repr, target_repr, self.heads)]

    def signature_fields(self) -> dict[str, object]:
        heads = {f"head{k}": w for k, w in enumerate(self.heads)}
        variant = {} if self.variant is None else {"variant": self.variant}
        return {"net": self.net_name, "version": self.version, **variant, "heads_sha256": tensors_digest(heads),
                "distance": "lpips", "spatial": "yes" if self.spatial else "no"}

    def extra_repr(self) -> str:
        variant = "" if self.variant is None else f", variant={self.variant!r}"
        return f"net={self.net_name!r}, version={self.version!r}{variant}, spatial={self.spatial}"


class LPIPS(PerceptualLoss):
    r"""The LPIPS distance between two image batches (Zhang et al., CVPR 2018).

    With :math:`\hat\phi_l` the trunk's activations at layer :math:`l`, unit-normalised over channels at every
    position, and :math:`w_l \ge 0` the learned per-channel heads:

    .. math:: d(x, y) = \sum_l \frac{1}{H_l W_l} \sum_{h,w} \sum_c w_{l,c}
              \big(\hat\phi_l(x)_{c,h,w} - \hat\phi_l(y)_{c,h,w}\big)^2

    value-identical to the ``lpips`` package (v0.1; v0.0 with ``version="0.0"``) given the same trunk weights.
    ``variant="shift_tolerant"`` is ST-LPIPS (Ghildyal & Liu, ECCV 2022; ``perceptloss.stlpips``): anti-aliased
    (BlurPool) AlexNet / VGG16 trunks and heads trained for tolerance to small shifts, with their published
    weights, value-identical to the ``stlpips-pytorch`` package. With ``spatial=True`` each layer's map is upsampled bilinearly to the image size and the maps are summed.
    Frozen by construction: the trunk's weights and the heads are buffers left out of the state dict, there
    is no dropout and the trunk stays in eval mode; distances are computed in float32. ``set_target`` fixes
    a reference.

    Args:
        net: "alex" (lpips' default), "vgg" or "squeeze".
        version: "0.1" (the published metric) or "0.0" (the first release, whose trunk saw the [-1, 1]
            images without LPIPS' scaling layer; for reproducing older papers).
        variant: None (LPIPS) or "shift_tolerant" (ST-LPIPS, net "alex" or "vgg", version "0.1"; its trunk and
            heads are both from the installed ``stlpips-pytorch`` package's file, checked and cached).
        weights: the trunk's weights: "default" (torchvision's ImageNet weights, resolved offline like every
            entry: cache, torch's hub cache, download where online, else an error naming the file; with
            ``variant``, ST-LPIPS' trained trunk), a torchvision-format file (with ``variant``, the package's
            .pth), or None (a random trunk: tests only).
        heads: "default" (the heads of ``version`` from the installed ``lpips``, ``sensecraft`` or (v0.1)
            ``torchmetrics`` package, checked and cached; with ``variant``, ST-LPIPS' heads), a head file
            (lpips' .pth format), or None (all ones: lpips' ``lpips=False`` baseline).
        spatial: return per-pixel maps instead of one value per image.

    Shape:
        - input, target: :math:`(N, C, H, W)` in ``input_range`` (lpips itself expects (-1, 1): declare
          ``input_range=(-1, 1)`` for such images); :math:`C = 3` unless ``channels`` says otherwise.
        - output: :math:`(N,)` (``reduction="none"``, the default), :math:`(N, 1, H, W)` with ``spatial``,
          or a scalar with "mean" / "sum".

    Example:
        >>> import torch
        >>> from perceptloss import LPIPS
        >>> metric = LPIPS("alex", weights=None, heads=None)  # random trunk, unit heads: for the example
        >>> metric(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)).shape
        torch.Size([2])
    """

    _option_defaults: ClassVar[dict[str, object]] = {"reduction": "none"}
    _fixed_layers: ClassVar[bool] = True

    def __init__(
        self,
        net: Literal["alex", "vgg", "squeeze"] = "alex",
        version: str = "0.1",
        *,
        variant: Literal["shift_tolerant"] | None = None,
        weights: str | Path | None = "default",
        heads: str | Path | None = "default",
        spatial: bool = False,
        **options: Unpack[LossOptions],
    ) -> None:
        super().__init__(**options)
        if net not in LPIPS_NETS:
            raise ValueError(f"net must be one of {sorted(LPIPS_NETS)} (as in lpips), got {net!r}")
        version = str(version).lstrip("v")
        check_choice("version", version, VERSIONS)
        if variant is None:
            backbone, layers, channels = LPIPS_NETS[net]
        else:
            check_choice("variant", variant, (None, *VARIANTS))
            backbone, layers, channels = stlpips_net(net, version)
        self.net_name = net
        self.version = version
        self.variant = variant
        norm = LPIPS_NORMALIZATION if version == "0.1" else LPIPS_V00_NORMALIZATION
        trunk, _ = create_backbone(backbone, layers, weights, norm)
        self._set_network(trunk, norm)
        if heads is None:
            head_list = [torch.ones(c) for c in channels]
        elif variant is None:
            head_list = load_heads(net, heads, list(channels), version)
        else:
            head_list = load_stlpips_heads(net, heads, list(channels))
        self._set_criterion(LPIPSDistance(
            [w.to(self._constant_dtype, copy=True) for w in head_list], net=net, version=version, spatial=spatial,
            fused=self.fused, variant=variant,
        ))

    @property
    def spatial(self) -> bool:
        """True: the loss returns (N, 1, H, W) maps."""
        return self.criterion.spatial

    @property
    def heads(self) -> list[torch.Tensor]:
        """The (C_l,) head weights of each layer."""
        return self.criterion.heads

    def extra_repr(self) -> str:
        variant = "" if self.variant is None else f", variant={self.variant!r}"
        return (f"net={self.net_name!r}, version={self.version!r}{variant}, layers={list(self.layers)}, "
                f"reduction={self.reduction!r}, spatial={self.spatial}")
