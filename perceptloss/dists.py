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

DISTS is a structure/texture *similarity* of per-channel statistics (means, variances, a cross-covariance, combined
in ratios), not a sum of per-element differences. The statistics come from the fused operator's ``paired_moments``
on the CPU (one pass over both images' features per layer; two passes over each run of positions, from cache, for
the centred variances) and from plain PyTorch elsewhere (``paired_moments_reference``), computed in float32
(float64 for float64) whatever the trunk's dtype; under bf16 autocast or ``dtype=torch.bfloat16`` only the trunk
runs in 16 bits (peers compute the ratios in 16 bits there, and c1 = c2 = 1e-6 vanish below bf16's resolution:
DISTS#12).

α, β ship inside the ``dists-pytorch`` 0.1 wheel (MIT) as ``DISTS_pytorch/weights.pt`` and, the same bytes, in
``torchmetrics`` >= 1.7 as ``torchmetrics/functional/image/dists_models/weights.pt``; they are located through
``importlib.metadata`` (neither package's code is imported), checked against their sha256 and cached as
safetensors like the LPIPS heads.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence, Unpack

import torch

from ._base import PerceptualLoss
from ._options import LossOptions
from ._signature import tensors_digest
from ._sizes import ImageTooSmallError
from . import _ops
from ._dtypes import accumulation_dtype, functorch_transform_active
from .criteria import Criterion, TilingMode
from .backbones.vgg_l2pool import DISTS_LAYERS
from .factory import create_backbone
from .preprocessing import IMAGENET
from .weights import StateDict, WeightEntry, load_state_dict_file, package_file, register_weights, resolve

#: Channels of DISTS' layers: the image itself, then relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
DISTS_CHANNELS: tuple[int, ...] = (3, 64, 128, 256, 512, 512)
#: The constants of the official code (both 1e-6).
C1 = 1e-6
C2 = 1e-6
#: The smallest image side DISTS takes: its deepest layer (relu5_3, after four stride-2 L2 poolings) is
#: ceil(side / 16), and 17 is the least side that leaves it 2x2 positions. On a 1x1 feature map the spatial
#: variances and covariance are 0, so the texture term S2 is 1 whatever the images: that layer's texture is
#: not compared at all. (DISTS was calibrated on 256x256 images.)
DISTS_MIN_SIZE = 17
#: sha256 of ``DISTS_pytorch/weights.pt`` in the dists-pytorch 0.1 wheel (torchmetrics >= 1.7 ships the same bytes).
DISTS_WEIGHTS_SHA256 = "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218"


def alpha_beta_problem(state: StateDict) -> str | None:
    """Why ``state`` cannot be DISTS' weights: it must hold ``alpha`` and ``beta`` of 1475 values each (any
    shape, as the official (1, 1475, 1, 1)), finite, non-negative (DISTS weighs its similarity terms by them and
    divides by their total) and not all zero; None when it fits."""
    total = sum(DISTS_CHANNELS)
    for key in ("alpha", "beta"):
        if key not in state:
            held = ", ".join(sorted(state)[:4]) or "none"
            return f"it holds no {key!r} (its tensors: {held}), where DISTS' weights are 'alpha' and 'beta'"
        value = state[key]
        if value.numel() != total:
            return f"{key!r} has shape {tuple(value.shape)}, where DISTS has {total} values"
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            return f"{key!r} holds NaN, Inf or non-float values"
        if bool((value < 0).any()):
            index = int(torch.argmin(value.reshape(-1)))
            return (f"{key!r} holds negative weights ({float(value.reshape(-1)[index]):.3g} at index {index}), where "
                    f"DISTS' weights are non-negative")
    if float(state["alpha"].double().sum() + state["beta"].double().sum()) <= 0:
        return "'alpha' and 'beta' are all zero, where DISTS divides by their total"
    return None


def convert_dists_weights(path: Path) -> StateDict:
    """DISTS' ``weights.pt`` ({"alpha", "beta"}: (1, 1475, 1, 1)) -> {"alpha", "beta"}: (1475,) float32.

    Raises ValueError naming the file when it does not hold valid DISTS weights (``alpha_beta_problem``)."""
    state = load_state_dict_file(path)
    problem = alpha_beta_problem(state)
    if problem:
        raise ValueError(f"{path} does not hold DISTS weights: {problem}")
    return {key: state[key].detach().float().reshape(-1).contiguous() for key in ("alpha", "beta")}


#: The catalogue entry of DISTS' α/β (key "dists.v0.1"; ``python -m perceptloss fetch dists``).
DISTS_ENTRY = register_weights(WeightEntry(
    backbone="dists",
    name="v0.1",
    description="DISTS alpha/beta (Ding et al. 2020, dists-pytorch 0.1, MIT)",
    normalization=IMAGENET,
    filename="dists-v0.1.safetensors",
    convert=convert_dists_weights,
    finders=(
        package_file("dists-pytorch", "DISTS_pytorch/weights.pt"),
        package_file("torchmetrics", "torchmetrics/functional/image/dists_models/weights.pt"),
    ),
    source_sha256=DISTS_WEIGHTS_SHA256,
    hint="pip install dists-pytorch==0.1 --no-deps (its wheel ships alpha/beta as DISTS_pytorch/weights.pt)",
    check=alpha_beta_problem,
), default=True, overwrite=True)


def load_alpha_beta(alpha_beta: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(1475,) float32 α and β: ``alpha_beta`` is "default" (the published v0.1 values) or a file (the official or
    ours)."""
    if not isinstance(alpha_beta, (str, Path)):
        raise TypeError(
            f"alpha_beta must be 'default' (DISTS' published weights) or the path of a DISTS weights file, got "
            f"{type(alpha_beta).__name__}; DISTS has no form without them (LPIPS' heads=None baseline has no DISTS "
            f"counterpart)"
        )
    state = resolve(DISTS_ENTRY) if str(alpha_beta) == "default" else convert_dists_weights(Path(alpha_beta))
    return state["alpha"].float(), state["beta"].float()


def paired_moments_reference(fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """(N, C, *) features of two images -> (5, N, C): the means over positions of x and y, their variances (mean
    squared deviation) and the covariance mean(x y) - mean(x) mean(y), as the official DISTS computes them, in
    float32 (float64 for float64; autocast off, 16-bit features widened first). Plain PyTorch: the oracle of the
    operator's ``paired_moments`` and its fallback."""
    acc = accumulation_dtype(fx.dtype)
    dims = tuple(range(2, fx.dim()))
    with torch.autocast(device_type=fx.device.type, enabled=False):
        x, y = fx.to(acc), fy.to(acc)
        mx, my = x.mean(dim=dims, keepdim=True), y.mean(dim=dims, keepdim=True)
        vx = (x - mx).square().mean(dim=dims)
        vy = (y - my).square().mean(dim=dims)
        cov = (x * y).mean(dim=dims) - (mx * my).flatten(1)
    return torch.stack([mx.flatten(1), my.flatten(1), vx, vy, cov])


def paired_moments(fx: Sequence[torch.Tensor], fy: Sequence[torch.Tensor], *, fused: bool | None = None) -> list[torch.Tensor]:
    """Per layer, ``paired_moments_reference`` of the two images' features: on the CPU one pass of the fused
    operator over both (``fused``: None where it has a kernel, True required, False the reference). The operator
    sums runs of positions in float32 and merges them in float64, and forms the covariance from the deviations
    (the same value as mean(x y) - mean(x) mean(y), without its cancellation)."""
    fx, fy = list(fx), list(fy)
    device = fx[0].device if fx else torch.device("cpu")
    use = fused is not False and _ops.has_moments_kernel(device.type) and not functorch_transform_active()
    if fused and not use:
        raise RuntimeError(_ops.unavailable_reason(device))
    if not use:
        return [paired_moments_reference(x, y) for x, y in zip(fx, fy)]
    if len({t.dtype for t in fx}) == 1:
        return list(torch.ops.perceptloss.paired_moments(fx, fy))
    # one dtype per call: DISTS' image tap stays float32 beside a bf16 trunk's features
    return [torch.ops.perceptloss.paired_moments([x], [y])[0] for x, y in zip(fx, fy)]


def similarity_terms(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(5, N, C) moments (``paired_moments``) -> (N, C) structure S1 and texture S2 terms, in their dtype."""
    mx, my, vx, vy, cov = moments
    with torch.autocast(device_type=moments.device.type, enabled=False):
        s1 = (2 * mx * my + C1) / (mx.square() + my.square() + C1)
        s2 = (2 * cov + C2) / (vx + vy + C2)
    return s1, s2


def dists_statistics(fx: torch.Tensor, fy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) features of two images -> (N, C) structure S1 and texture S2 terms, in float32.

    float64 features give float64; autocast is disabled, so 16-bit features are widened first.
    """
    return similarity_terms(paired_moments([fx], [fy])[0])


class DISTSSimilarity(Criterion):
    r"""DISTS' criterion: per layer :math:`\sum_c \alpha_{l,c} S1_{l,c} + \beta_{l,c} S2_{l,c}` (the weights
    normalised by their total); finished as :math:`1 - \sum_l`, clamped at 0.

    ``alpha``, ``beta``: the (1475,) published weights (buffers). Tiles as "paired": the means, variances and
    covariance follow from per-channel sums of x, y, x², y² and xy over positions (kept in float64).
    """

    tiling: ClassVar[TilingMode | None] = "paired"

    def __init__(self, alpha: torch.Tensor, beta: torch.Tensor, *, fused: bool | None = None) -> None:
        super().__init__()
        self.register_buffer("alpha", alpha, persistent=False)
        self.register_buffer("beta", beta, persistent=False)
        self.fused = fused

    def check_size(self, size: tuple[int, int]) -> None:
        h, w = size
        if h < DISTS_MIN_SIZE or w < DISTS_MIN_SIZE:
            raise ImageTooSmallError(
                f"images of size {(int(h), int(w))} are too small for DISTS: it needs at least "
                f"{DISTS_MIN_SIZE}x{DISTS_MIN_SIZE} (its deepest layer, relu5_3, is 1/16 of the image and needs 2x2 "
                f"positions for the variances its texture term compares; DISTS was calibrated on 256x256 images); "
                f"pass larger images (e.g. upsample them with torch.nn.functional.interpolate)",
                size=(int(h), int(w)), min_size=(DISTS_MIN_SIZE, DISTS_MIN_SIZE), layers=DISTS_LAYERS,
            )

    def layer_weights(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """α and β divided by their total, split per layer (in float32, float64 in a float64 loss)."""
        dtype = accumulation_dtype(self.alpha.dtype)  # not 16 bits after .half()
        alpha, beta = self.alpha.to(dtype), self.beta.to(dtype)
        total = alpha.sum() + beta.sum()
        return list(torch.split(alpha / total, DISTS_CHANNELS)), list(torch.split(beta / total, DISTS_CHANNELS))

    def compare(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """(N, 6) per-layer similarity terms sum_c (α S1 + β S2) of two feature lists (float32)."""
        alphas, betas = self.layer_weights()
        cols = []
        for a, b, moments in zip(alphas, betas, paired_moments(fx, fy, fused=self.fused)):
            s1, s2 = similarity_terms(moments)
            cols.append((a.to(s1.dtype) * s1).sum(dim=1) + (b.to(s2.dtype) * s2).sum(dim=1))
        return torch.stack(cols, dim=1)

    def finish(self, terms: torch.Tensor) -> torch.Tensor:
        """1 - the sum of the similarity terms, clamped at 0 (identical images: 0, not the -1e-7 of rounding;
        where it is clamped the gradient is 0, as at the minimum it stands for)."""
        return (1.0 - terms.sum(dim=-1)).clamp_min(0.0)

    def paired_sums(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) features of both images -> (5, N, C) float64 sums of x, y, x², y², xy over positions."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            a, b = x.double(), y.double()
            return torch.stack([a.sum((2, 3)), b.sum((2, 3)), a.square().sum((2, 3)), b.square().sum((2, 3)),
                                (a * b).sum((2, 3))])

    def terms_from_paired_sums(self, sums: list[torch.Tensor], counts: list[int]) -> torch.Tensor:
        """(N, 6) similarity terms from the per-layer sums over the whole images (as ``compare``)."""
        alphas, betas = self.layer_weights()
        cols = []
        for a, b, s, count in zip(alphas, betas, sums, counts):
            acc = a.dtype
            sx, sy, sxx, syy, sxy = s / float(count)
            s1, s2 = similarity_terms(torch.stack([sx, sy, sxx - sx.square(), syy - sy.square(), sxy - sx * sy]).to(acc))
            cols.append((a * s1).sum(dim=1) + (b * s2).sum(dim=1))
        return torch.stack(cols, dim=1)

    def signature_fields(self) -> dict[str, object]:
        return {"alpha_beta_sha256": tensors_digest({"alpha": self.alpha, "beta": self.beta}), "distance": "dists"}


class DISTS(PerceptualLoss):
    r"""The DISTS distance between two image batches (Ding et al., TPAMI 2020): about 0 for identical images.

    With per-channel spatial means :math:`\mu`, variances :math:`\sigma^2` and the cross-covariance
    :math:`\sigma_{xy}` of the two images' features at the image itself ("layer 0") and relu1_2 ... relu5_3 of
    VGG16 with L2 pooling, and the published weights :math:`\alpha, \beta`:

    .. math:: \mathrm{DISTS}(x, y) = 1 - \frac{\sum_{l,c} \alpha_{l,c} S1_{l,c} + \beta_{l,c} S2_{l,c}}
              {\sum_{l,c} \alpha_{l,c} + \beta_{l,c}}

    with :math:`S1` the structure and :math:`S2` the texture terms of the module docstring. Value-identical
    to the official ``DISTS_pytorch`` 0.1 given the same trunk weights. Frozen by construction: the trunk's
    weights and :math:`\alpha, \beta` are buffers left out of the state dict, it stays in eval mode.
    ``set_target(y)`` keeps a reference image's features for ``loss(x)`` (a batch of 1 is compared with every
    input). ``per_layer`` gives the (N, 6) similarity terms; DISTS = 1 - their sum. On the CPU its per-channel
    statistics come from one pass of the fused operator over both images' features (``paired_moments``).

    Args:
        weights: the VGG16 trunk: "default" / "torchvision" (torchvision's ImageNet weights, resolved offline
            like every entry: cache, torch's hub cache ``vgg16-397923af.pth``, download where online, else an
            error naming the file), a torchvision-format VGG16 file, or None (a random trunk: tests only).
        alpha_beta: "default" (DISTS' published :math:`\alpha, \beta` from the installed ``dists-pytorch``
            or ``torchmetrics`` wheel, sha256-checked and cached) or a file in the official ``weights.pt``
            format.

    Values: 1 - (the weighted similarity terms), clamped at 0 (identical images give 0, not the -1e-7 of
    rounding); images need H, W >= ``DISTS_MIN_SIZE`` (17: every layer then has 2x2 positions for its
    variances; smaller images are a ValueError).


    Shape:
        - input, target: :math:`(N, C, H, W)` in ``input_range`` ((0, 1) is what DISTS expects; other ranges
          are mapped to it); :math:`C = 3` unless ``channels`` says otherwise.
        - output: :math:`(N,)` (``reduction="none"``, the default, as the official code), or a scalar.

    Example:
        >>> import torch
        >>> from perceptloss import DISTS
        >>> metric = DISTS(weights=None)  # a random trunk, for the example
        >>> x = torch.rand(2, 3, 64, 64)
        >>> metric(x, x).abs().max() < 1e-4
        tensor(True)
    """

    _option_defaults: ClassVar[dict[str, object]] = {"reduction": "none"}
    _fixed_layers: ClassVar[bool] = True
    image_tap: ClassVar[bool] = True

    def __init__(
        self,
        *,
        weights: str | Path | None = "default",
        alpha_beta: str | Path = "default",
        **options: Unpack[LossOptions],
    ) -> None:
        super().__init__(**options)
        trunk, _ = create_backbone("vgg16_l2pool", DISTS_LAYERS, weights, IMAGENET)
        self._set_network(trunk, IMAGENET)
        alpha, beta = load_alpha_beta(alpha_beta)
        self._set_criterion(DISTSSimilarity(alpha.to(self._constant_dtype, copy=True),
                                            beta.to(self._constant_dtype, copy=True), fused=self.fused))

    @property
    def alpha(self) -> torch.Tensor:
        """The (1475,) published α (a buffer of the criterion)."""
        return self.criterion.alpha

    @property
    def beta(self) -> torch.Tensor:
        """The (1475,) published β (a buffer of the criterion)."""
        return self.criterion.beta

    def extra_repr(self) -> str:
        return f"layers={list(self.layers)}, reduction={self.reduction!r}, input_range={self.input_range}"
