r"""DISTS (Ding, Ma, Wang, Simoncelli: *Image Quality Assessment: Unifying Structure and Texture Similarity*, TPAMI 2020).

For the image itself (in [0, 1], "layer 0", 3 channels) and the relu1_2 ... relu5_3 activations of VGG16 with
L2 pooling (``perceptloss.backbones.vgg_l2pool``), with per-channel spatial means \mu, variances \sigma^2 and the
cross-covariance \sigma_{xy} of the two images' features,

.. math:: S1_{l,c} = \frac{2\mu^x_{l,c}\mu^y_{l,c} + c_1}{(\mu^x_{l,c})^2 + (\mu^y_{l,c})^2 + c_1}, \qquad
          S2_{l,c} = \frac{2\sigma^{xy}_{l,c} + c_2}{(\sigma^x_{l,c})^2 + (\sigma^y_{l,c})^2 + c_2}

.. math:: \mathrm{DISTS}(x, y) = 1 - \sum_{l,c} \big(\alpha_{l,c} S1_{l,c} + \beta_{l,c} S2_{l,c}\big)
          / \textstyle\sum (\alpha + \beta)

with c1 = c2 = 1e-6 and the published α, β (1475 each). Value-identical to the official ``DISTS_pytorch`` 0.1
(``DISTS_pt.DISTS``) given the same trunk weights: same trunk, same L2 pooling, same ImageNet normalisation, same
formulas, in float32.

Not on the fused distance operator: DISTS is a structure/texture *similarity* of per-channel statistics (means,
variances, a cross-covariance, combined in ratios), not a sum of per-element differences of two feature maps,
so the operator's form (a weighted mean of |a - b|^p) does not apply. The statistics are a few reductions per
layer in plain PyTorch, computed in float32 (float64 for float64) with autocast disabled, whatever the trunk's
dtype; under bf16 autocast or ``dtype=torch.bfloat16`` only the trunk runs in 16 bits (peers compute the
ratios in 16 bits there, and c1 = c2 = 1e-6 vanish below bf16's resolution: DISTS#12).

α, β ship inside the ``dists-pytorch`` 0.1 wheel (MIT) as ``DISTS_pytorch/weights.pt`` and, the same bytes, in
``torchmetrics`` >= 1.7 as ``torchmetrics/functional/image/dists_models/weights.pt``; they are located through
``importlib.metadata`` (neither package's code is imported), checked against their sha256 and cached as
safetensors like the LPIPS heads.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import nn

from ._validation import cast_to_network_dtype, check_image_pair, check_values
from .backbones.vgg_l2pool import DISTS_LAYERS, VGGL2PoolFeatures
from .functional import accumulation_dtype
from .loss import check_memory_format, to_activation_layout
from .preprocessing import IMAGENET, Preprocess
from .weights import StateDict, WeightEntry, load_state_dict_file, resolve

#: Channels of DISTS' layers: the image itself, then relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
DISTS_CHANNELS: tuple[int, ...] = (3, 64, 128, 256, 512, 512)
#: The constants of the official code (both 1e-6).
C1 = 1e-6
C2 = 1e-6
#: sha256 of ``DISTS_pytorch/weights.pt`` in the dists-pytorch 0.1 wheel (torchmetrics >= 1.7 ships the same bytes).
DISTS_WEIGHTS_SHA256 = "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218"


def _package_file(package: str, relative: str) -> Callable[[], Path | None]:
    """A finder for ``relative`` inside the installed distribution ``package`` (None when not installed)."""

    def find() -> Path | None:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            return None
        return Path(str(dist.locate_file(relative)))

    return find


def convert_dists_weights(path: Path) -> StateDict:
    """DISTS' ``weights.pt`` ({"alpha", "beta"}: (1, 1475, 1, 1)) -> {"alpha", "beta"}: (1475,) float32."""
    state = load_state_dict_file(path)
    total = sum(DISTS_CHANNELS)
    out = {}
    for key in ("alpha", "beta"):
        if key not in state or state[key].numel() != total:
            found = None if key not in state else tuple(state[key].shape)
            raise ValueError(f"{path} does not hold DISTS weights: {key!r} should have {total} values, found {found}")
        out[key] = state[key].detach().float().reshape(total).contiguous()
    return out


#: The catalogue entry of DISTS' α/β (key "dists.v0.1").
DISTS_ENTRY = WeightEntry(
    backbone="dists",
    name="v0.1",
    description="DISTS alpha/beta (Ding et al. 2020, dists-pytorch 0.1, MIT)",
    normalization=IMAGENET,
    filename="dists-v0.1.safetensors",
    convert=convert_dists_weights,
    finders=(
        _package_file("dists-pytorch", "DISTS_pytorch/weights.pt"),
        _package_file("torchmetrics", "torchmetrics/functional/image/dists_models/weights.pt"),
    ),
    source_sha256=DISTS_WEIGHTS_SHA256,
    hint="pip install dists-pytorch==0.1 --no-deps (its wheel ships alpha/beta as DISTS_pytorch/weights.pt)",
)


def load_alpha_beta(alpha_beta: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(1475,) α and β: ``alpha_beta`` is "default" (the published v0.1 values) or a file (the official or ours)."""
    state = resolve(DISTS_ENTRY) if str(alpha_beta) == "default" else convert_dists_weights(Path(alpha_beta))
    return state["alpha"].float(), state["beta"].float()


def _trunk_state(weights: str | Path) -> StateDict:
    """VGG16 trunk tensors (``features.N.*``): "default"/"torchvision" (torchvision's entry) or a file."""
    from .registry import get_backbone

    entry = get_backbone("vgg16").weights["torchvision"]
    if str(weights) in ("default", "torchvision"):
        return resolve(entry)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights={str(weights)!r} is neither 'default' nor an existing file; pass 'default' (torchvision's "
            f"VGG16, {Path(entry.url or '').name} in torch's hub cache), a torchvision-format VGG16 file, or None"
        )
    return entry.convert(path)


def dists_statistics(fx: torch.Tensor, fy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) features of two images -> (N, C) structure S1 and texture S2 terms, in float32.

    float64 features give float64; autocast is disabled, so 16-bit features are widened first.
    """
    acc = accumulation_dtype(fx.dtype)
    with torch.autocast(device_type=fx.device.type, enabled=False):
        x, y = fx.to(acc), fy.to(acc)
        mx, my = x.mean(dim=(2, 3), keepdim=True), y.mean(dim=(2, 3), keepdim=True)
        s1 = (2 * mx * my + C1) / (mx.square() + my.square() + C1)
        vx = (x - mx).square().mean(dim=(2, 3), keepdim=True)
        vy = (y - my).square().mean(dim=(2, 3), keepdim=True)
        cov = (x * y).mean(dim=(2, 3), keepdim=True) - mx * my
        s2 = (2 * cov + C2) / (vx + vy + C2)
    return s1.flatten(1), s2.flatten(1)


class DISTS(nn.Module):
    """The DISTS distance between two image batches: (N,) per sample in [0, 1] (0 for identical images).

    Args:
        weights: the VGG16 trunk: "default" (torchvision's ImageNet weights, resolved offline like every entry:
            cache, torch's hub cache ``vgg16-397923af.pth``, download where online, else an error naming the
            file), a torchvision-format VGG16 file, or None (random trunk: tests only).
        alpha_beta: "default" (DISTS' published α/β from the installed ``dists-pytorch`` or ``torchmetrics``
            wheel, sha256-checked and cached) or a file in the official ``weights.pt`` format.
        input_range: the range of the images you pass, (0, 1) by default (what DISTS expects); they are mapped to
            [0, 1] for "layer 0" and ImageNet-normalised for the trunk.
        reduction: "none" (default, (N,) as the official code), "mean" or "sum".
        check_range, check_inputs, dtype, memory_format: as for ``FeatureLoss``.

    Frozen by construction: α, β are buffers, the trunk's parameters never require grad, it stays in eval mode.
    ``set_target(y)`` keeps a reference image's features for ``loss(x)`` (a batch of 1 is compared with every
    input). The target's features are computed under ``no_grad`` unless it requires grad.
    """

    def __init__(
        self,
        *,
        weights: str | Path | None = "default",
        alpha_beta: str | Path = "default",
        input_range: tuple[float, float] = (0.0, 1.0),
        reduction: Literal["none", "mean", "sum"] = "none",
        check_range: Literal["raise", "warn", "off"] = "raise",
        check_inputs: bool = True,
        dtype: torch.dtype | None = None,
        memory_format: str | torch.memory_format = "auto",
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if check_range not in ("raise", "warn", "off"):
            raise ValueError(f"check_range must be 'raise', 'warn' or 'off', got {check_range!r}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}")
        check_memory_format(memory_format)
        self.net = VGGL2PoolFeatures(DISTS_LAYERS)
        if weights is not None:
            self.net.load_trunk_state_dict(_trunk_state(weights))
        if dtype is not None:
            self.net.to(dtype)
        self.layers: tuple[str, ...] = ("image",) + DISTS_LAYERS
        alpha, beta = load_alpha_beta(alpha_beta)
        self.register_buffer("alpha", alpha.clone())
        self.register_buffer("beta", beta.clone())
        self.preprocess = Preprocess(IMAGENET, input_range)
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.reduction = reduction
        self.check_range = check_range
        self.check_inputs = check_inputs
        self.memory_format = memory_format
        self._target: list[torch.Tensor] | None = None

    def train(self, mode: bool = True) -> "DISTS":
        """DISTS stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[the images in [0, 1] (N, 3, H, W), then the five trunk activations] for images in ``input_range``."""
        wide = images if images.dtype in (torch.float32, torch.float64) else images.float()
        lo, hi = self.input_range
        unit = wide if (lo, hi) == (0.0, 1.0) else (wide - lo) / (hi - lo)
        x = to_activation_layout(cast_to_network_dtype(self.preprocess(wide), self.net), self.memory_format)
        return [unit] + list(self.net(x))

    def _weights(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        total = self.alpha.sum() + self.beta.sum()
        return (list(torch.split(self.alpha / total, DISTS_CHANNELS)), list(torch.split(self.beta / total, DISTS_CHANNELS)))

    def compare(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """(N, 6) per-layer similarity terms sum_c (α S1 + β S2) of two feature lists (float32)."""
        alphas, betas = self._weights()
        cols = []
        for a, b, x, y in zip(alphas, betas, fx, fy):
            s1, s2 = dists_statistics(x, y)
            cols.append((a.to(s1.dtype) * s1).sum(dim=1) + (b.to(s2.dtype) * s2).sum(dim=1))
        return torch.stack(cols, dim=1)

    @torch.no_grad()
    def set_target(self, target: torch.Tensor | None) -> "DISTS":
        """Keep the features of ``target`` ((1 or N, 3, H, W) in ``input_range``) for ``loss(input)``; None clears."""
        if target is None:
            self._target = None
            return self
        if self.check_inputs:
            check_image_pair(target, target)
            check_values({"target": target}, self.input_range, self.check_range)
        self._target = [f.detach() for f in self.features(target)]
        return self

    def _target_features(self, fx: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._target is None:
            raise ValueError("no target: call dists(input, target), or fix a target once with dists.set_target(target)")
        out = []
        for name, f, t in zip(self.layers, fx, self._target):
            if t.shape[1:] != f.shape[1:] or t.shape[0] not in (1, f.shape[0]):
                raise ValueError(
                    f"layer {name}: the input gives {tuple(f.shape)} but the target set with set_target gave "
                    f"{tuple(t.shape)}; use images of the target's size and a target batch of 1 or N"
                )
            out.append(t.to(device=f.device, dtype=f.dtype).expand_as(f))
        return out

    def per_layer(self, input: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 6) float32 similarity terms (image, relu1_2, ..., relu5_3); DISTS = 1 - their sum over layers."""
        if self.check_inputs:
            other = input if target is None else target
            check_image_pair(input, other)
            check_values({"input": input} if target is None else {"input": input, "target": target},
                         self.input_range, self.check_range)
        fx = self.features(input)
        if target is None:
            return self.compare(fx, self._target_features(fx))
        if target.requires_grad:
            fy = self.features(target)
        else:
            with torch.no_grad():
                fy = self.features(target)
        return self.compare(fx, fy)

    def forward(self, input: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """DISTS(input, target): (N,) float32, or a scalar when reduced (target None: ``set_target``'s)."""
        out = 1.0 - self.per_layer(input, target).sum(dim=1)
        if self.reduction == "mean":
            return out.mean()
        if self.reduction == "sum":
            return out.sum()
        return out

    def extra_repr(self) -> str:
        return f"layers={list(self.layers)}, reduction={self.reduction!r}, input_range={self.input_range}"
