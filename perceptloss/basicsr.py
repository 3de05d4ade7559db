"""BasicSR's ``PerceptualLoss`` (BasicSR, Real-ESRGAN, GFPGAN, mmagic's copy) in perceptloss terms: :func:`from_basicsr`.

Both of its terms share one pipeline: the feature term is a ``FeatureLoss``, and the style term the Gram
criterion (``perceptloss.criteria.GramDistance``) applied to that loss's features, so the features are computed
once per call and every option of the loss (``channels=``, ``dtype``, checks, ...) applies to both terms. The
target (BasicSR's ``gt``) is detached, as in BasicSR.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ._validation import check_number
from .criteria import GramDistance
from .loss import FeatureLoss
from .preprocessing import IMAGENET, Normalization

#: BasicSR ``PerceptualLoss``'s options and their defaults.
BASICSR_DEFAULTS: dict[str, Any] = {
    "vgg_type": "vgg19",
    "use_input_norm": True,
    "range_norm": False,
    "perceptual_weight": 1.0,
    "style_weight": 0.0,
    "criterion": "l1",
}
#: No normalisation after the range mapping: the network sees [0, 1] images (BasicSR's use_input_norm=False).
UNIT_RANGE = Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), name="unit")
#: Channels of each VGG block (conv/relu/pool names carry the block number).
_VGG_BLOCK_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}

#: Real-ESRGAN's (and BasicSR's ESRGAN) perceptual options, as in their training YAML.
REAL_ESRGAN = {
    "type": "PerceptualLoss",
    "layer_weights": {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1, "conv4_4": 1, "conv5_4": 1},
    "vgg_type": "vgg19",
    "use_input_norm": True,
    "perceptual_weight": 1.0,
    "style_weight": 0,
    "range_norm": False,
    "criterion": "l1",
}


def _vgg_channels(layer: str) -> int:
    digits = "".join(ch for ch in layer.split("_")[0] if ch.isdigit())
    return _VGG_BLOCK_CHANNELS[int(digits)]


class BasicSRPerceptualLoss(nn.Module):
    """BasicSR's PerceptualLoss: ``forward(x, gt) -> (percep_loss, style_loss)``, scalars or None.

    Built by ``from_basicsr``; ``.perceptual`` is the FeatureLoss (weights already multiplied by
    ``perceptual_weight``), ``.style`` the Gram criterion (``GramDistance``, weights multiplied by
    ``style_weight``) applied to its features, or None.
    """

    def __init__(self, perceptual: FeatureLoss, style: GramDistance | None, perceptual_weight: float) -> None:
        super().__init__()
        self.perceptual = perceptual
        self.style = style
        self.has_perceptual = perceptual_weight > 0

    def train(self, mode: bool = True) -> "BasicSRPerceptualLoss":
        """Stays in eval mode (as its losses do)."""
        return super().train(False)

    def forward(self, x: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(N, C, H, W) output and ground truth in the configured range (C as the ``channels`` policy takes: 3 by
        default) -> (percep_loss, style_loss)."""
        loss = self.perceptual
        loss.check(x=x, gt=gt)
        n = x.shape[0]
        fx = loss.features(loss.split_channels(x))
        with torch.no_grad():
            fy = loss.features(loss.split_channels(gt.detach()))
        percep = None
        if self.has_perceptual:
            percep = loss.reduce(loss.finish(loss.merge_channels(loss.compare(loss.representation(fx),
                                                                              loss.representation(fy)), n)))
        style = None
        if self.style is not None:
            s = self.style
            terms = s.compare(s.representation(fx), s.representation(fy))
            style = loss.reduce(s.finish(loss.merge_channels(terms, n)))
        return percep, style


def from_basicsr(
    options: Mapping[str, Any],
    *,
    weights: str | Path | None = "torchvision",
    **loss_kwargs: Any,
) -> BasicSRPerceptualLoss:
    r"""The perceptloss equivalent of BasicSR's ``PerceptualLoss(**options)``: the same values and conventions.

    It returns a module whose ``forward(x, gt)`` gives ``(percep_loss, style_loss)`` as BasicSR's does (None for
    a term whose weight is 0), with the same preprocessing. BasicSR's options map as follows:

    | BasicSR option        | perceptloss                                                                 |
    | --------------------- | --------------------------------------------------------------------------- |
    | ``layer_weights``     | the layers and their weights (BasicSR's layer names are ours)               |
    | ``vgg_type``          | "vgg19" or "vgg16" with torchvision's ImageNet weights                      |
    | ``use_input_norm``    | True: ImageNet mean/std; False: the images as they are                      |
    | ``range_norm``        | True: the images are in [-1, 1] (``input_range=(-1, 1)``)                   |
    | ``criterion``         | "l1" -> ``distance="l1"`` (``nn.L1Loss``), "l2" -> ``distance="l2"``        |
    | ``perceptual_weight`` | multiplies the feature term's layer weights (0: no feature term)            |
    | ``style_weight``      | multiplies the style term's layer weights (0, the default: no style term)   |

    ``conv5_4`` is the convolution output before relu5_4, as in BasicSR. ``criterion="fro"`` (a Frobenius norm
    over the whole batch, not a per-sample loss) is refused.

    The style term compares the Gram matrices :math:`G = F F^\top / (C H W)` with the same criterion, as a
    *mean* over the :math:`C \times C` entries.

    Args:
        options: BasicSR's keyword arguments (``layer_weights`` required; a ``type: PerceptualLoss`` key, as in
            its YAML files, is accepted).
        weights: the VGG weights: "torchvision" as BasicSR, a file, or None for a random network (tests).
        loss_kwargs: passed to both losses (``dtype``, ``memory_format``, ``check_range``, ...).

    Returns:
        The module; ``.perceptual`` is its :class:`FeatureLoss`, ``.style`` its Gram criterion
        (``perceptloss.criteria.GramDistance``) or None.

    Shape:
        - x, gt: :math:`(N, 3, H, W)`, in [0, 1] (or [-1, 1] with ``range_norm``)
        - Output: two scalars (or None)

    Example:
        >>> import torch, perceptloss
        >>> basicsr = perceptloss.from_basicsr({"layer_weights": {"conv5_4": 1.0}}, weights=None)  # random VGG19
        >>> percep, style = basicsr(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
        >>> percep.shape, style
        (torch.Size([]), None)
    """
    opts = dict(options)
    kind = opts.pop("type", "PerceptualLoss")
    if kind != "PerceptualLoss":
        raise ValueError(f"from_basicsr maps BasicSR's PerceptualLoss, got type={kind!r}")
    if "layer_weights" not in opts:
        raise ValueError("BasicSR's PerceptualLoss options need layer_weights, e.g. {'conv5_4': 1.0}")
    unknown = sorted(set(opts) - set(BASICSR_DEFAULTS) - {"layer_weights"})
    if unknown:
        raise ValueError(
            f"unknown BasicSR PerceptualLoss options {unknown}; the options are layer_weights, "
            f"{', '.join(BASICSR_DEFAULTS)}"
        )
    o = {**BASICSR_DEFAULTS, **opts}
    layer_weights = {str(k): check_number(f"layer_weights[{k!r}]", v, minimum=0.0) for k, v in dict(o["layer_weights"]).items()}
    if o["vgg_type"] not in ("vgg19", "vgg16"):
        raise ValueError(f"vgg_type {o['vgg_type']!r} is not available: perceptloss has 'vgg19' and 'vgg16' (torchvision weights)")
    criterion = o["criterion"]
    if criterion not in ("l1", "l2"):
        raise ValueError(
            f"criterion {criterion!r} is not supported: 'l1' (BasicSR's default) and 'l2' are; 'fro' is a Frobenius "
            f"norm over the whole batch, not a per-sample loss (use 'l2', its square divided by the element count)"
        )
    pw = check_number("perceptual_weight", o["perceptual_weight"], minimum=0.0)
    sw = check_number("style_weight", o["style_weight"], minimum=0.0)
    if pw == sw == 0:
        raise ValueError(f"perceptual_weight={pw} and style_weight={sw}: both must be >= 0 and at least one > 0")
    common = dict(
        weights=weights,
        input_range=(-1.0, 1.0) if o["range_norm"] else (0.0, 1.0),
        normalization=IMAGENET if o["use_input_norm"] else UNIT_RANGE,
        reduction="mean",
        **loss_kwargs,
    )
    perceptual = FeatureLoss(
        o["vgg_type"], list(layer_weights), layer_weights=[w * pw for w in layer_weights.values()],
        distance=criterion, **common,
    )
    style = None
    if sw > 0:
        # BasicSR compares the (C, C) Gram matrices with nn.L1Loss / nn.MSELoss: a mean over the C*C entries.
        # StyleLoss(distance="l1") is that mean; StyleLoss's l2 is the Frobenius *sum*, hence the 1/C^2.
        style_weights = [
            w * sw if criterion == "l1" else w * sw / _vgg_channels(name) ** 2 for name, w in layer_weights.items()
        ]
        style = GramDistance(criterion, style_weights, fused=perceptual.fused)
    return BasicSRPerceptualLoss(perceptual, style, pw)
