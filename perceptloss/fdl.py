r"""FDL, the frequency distribution loss (Ni et al., "Misalignment-Robust Frequency Distribution Loss for Image
Transformation", CVPR 2024): sliced Wasserstein distances between the Fourier amplitudes and phases of VGG19
features, made for training on misaligned pairs (super-resolution, enhancement with imperfect ground truth).

For each layer :math:`l` of VGG19 (relu1_2, relu2_2, relu3_4, relu4_4, relu5_4) the features' 2D FFT over
(H, W) gives an amplitude map :math:`A_l` and a phase map :math:`\Phi_l`, both (C_l, H_l, W_l). Each map is
treated as a set of patches (p x p, stride s: K positions); P random unit vectors :math:`\theta_k` of
C_l x p x p entries project every patch to a number (a convolution). The 1-D Wasserstein-1 distance between two
sets of K projections is the mean absolute difference of the sorted values; FDL averages it over the P
projections (the sliced Wasserstein distance, SW):

.. math:: \mathrm{SW}(a, b) = \frac{1}{P K} \sum_{k=1}^{P} \sum_{i=1}^{K}
          \big|\mathrm{sort}(\theta_k \ast a)_i - \mathrm{sort}(\theta_k \ast b)_i\big|

and the loss of image pair n is

.. math:: \ell_n = \sum_l \mathrm{SW}(A_l(x_n), A_l(y_n)) + w_\phi\, \mathrm{SW}(\Phi_l(x_n), \Phi_l(y_n))

A distance between distributions of patches, not between aligned positions: a shifted copy of an image keeps
its amplitude spectrum, and a sorted set forgets where each patch came from. This is the official
``fdl-pytorch`` 1.0 code's computation (same layers, FFT, projections and reduction), with its projections
drawn from a seeded generator and kept as buffers.

The pipeline is every loss's (``PerceptualLoss``); the criterion is :class:`FrequencyDistribution`, whose
representation of a layer is its sorted projections (so ``set_target`` keeps those, computed once). The FFT,
projections and sorts run in float32 (float64 for float64 features) with autocast off. It does not tile: the
FFT and the sort run over the whole feature map, so ``perceptloss.tiled`` refuses it.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence, Unpack

import torch
import torch.nn.functional as F

from ._base import PerceptualLoss
from ._dtypes import accumulation_dtype
from ._options import LossOptions
from ._signature import number
from ._sizes import ImageTooSmallError
from ._validation import check_number
from .criteria import Criterion, TilingMode
from .preprocessing import Normalization

#: The VGG19 layers FDL compares (the official code's stage outputs), their channels and downsampling factors.
FDL_LAYERS = ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4")
FDL_CHANNELS = (64, 128, 256, 512, 512)
FDL_SCALES = (1, 2, 4, 8, 16)


def _count(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def unit_projections(channels: Sequence[int], count: int, patch_size: int, seed: int,
                     dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """One (count, C_l, patch_size, patch_size) tensor of unit-norm random directions per entry of ``channels``.

    The directions are standard normal draws of a CPU generator seeded with ``seed``, layer after layer (the
    draws of ``torch.manual_seed(seed)`` followed by the official code's ``torch.randn`` calls), each divided by
    its Euclidean norm in float64 and rounded once to ``dtype``: the same on every device and machine.
    """
    generator = torch.Generator().manual_seed(int(seed))
    out = []
    for c in channels:
        draws = torch.randn(count, c, patch_size, patch_size, generator=generator).double()
        out.append((draws / draws.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).to(dtype))
    return out


def amplitude_and_phase(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The amplitude and phase of the 2D FFT over (H, W) of real (N, C, H, W) features: two (N, C, H, W) tensors.

    ``torch.abs`` and ``torch.angle`` of the spectrum, as the official code. Under ``torch.compile`` they are
    computed from its real and imaginary parts instead (``torch.hypot``, ``torch.atan2``: the same values to an
    ulp), so that no complex tensor enters autograd: inductor cannot compile the complex gradients. Either way a
    zero bin gets a zero gradient.
    """
    spectrum = torch.fft.fftn(features, dim=(-2, -1))
    if not torch.compiler.is_compiling():
        return spectrum.abs(), spectrum.angle()
    parts = torch.view_as_real(spectrum.contiguous())
    re, im = parts[..., 0], parts[..., 1]
    zero = (re == 0) & (im == 0)
    safe_re = torch.where(zero, torch.ones_like(re), re)  # finite gradients at zero bins, masked below
    amplitude = torch.where(zero, torch.zeros_like(re), torch.hypot(safe_re, im))
    phase = torch.where(zero, torch.atan2(im, re).detach(), torch.atan2(im, safe_re))  # atan2(+-0, -0) = +-pi
    return amplitude, phase


class FrequencyDistribution(Criterion):
    r"""FDL's criterion: per layer the sliced Wasserstein distances between the FFT amplitudes and between the
    FFT phases of the two images' features, :math:`\mathrm{SW}(A) + w_\phi \mathrm{SW}(\Phi)` (see
    ``perceptloss.fdl``).

    Args:
        channels: C_l of each compared layer (one projection buffer per layer).
        projections: P, the random directions per layer.
        patch_size: p, the side of the patches projected (a p x p convolution).
        stride: the patches' stride.
        phase_weight: :math:`w_\phi`, the weight of the phase term (finite, >= 0).
        seed: the projections' generator seed (``unit_projections``).
        scales: each layer's downsampling factor relative to the image (VGG: 2 per pool before it); with
            ``patch_size`` it gives the smallest image (``check_size``).

    The projections are buffers ``projection0``, ``projection1``, ... (not in ``state_dict``: the seed makes
    them); they are float32, float64 in a float64 loss, and never 16-bit (``.half()`` keeps them float32).
    ``representation`` gives per layer the (N, 2, P, K) sorted projections of the amplitude (index 0) and the
    phase (index 1); ``compare`` (N, L) weighted terms.
    """

    tiling: ClassVar[TilingMode | None] = None
    untiled_reason: ClassVar[str | None] = (
        "its FFT and sorts run over each layer's whole feature map, so terms of tiles do not add up to the whole "
        "image's value; evaluate it whole (checkpoint=True recomputes the network's activations in the backward "
        "pass instead of keeping them)")

    def __init__(self, channels: Sequence[int], *, projections: int = 256, patch_size: int = 5, stride: int = 1,
                 phase_weight: float = 1.0, seed: int = 0, scales: Sequence[int] | None = None) -> None:
        super().__init__()
        self.channels = tuple(_count("channels", c, 1) for c in channels)
        self.projections = _count("projections", projections, 1)
        self.patch_size = _count("patch_size", patch_size, 1)
        self.stride = _count("stride", stride, 1)
        self.phase_weight = check_number("phase_weight", phase_weight, minimum=0.0)
        self.seed = _count("seed", seed, 0)
        self.scales = tuple(int(s) for s in (scales if scales is not None else (1,) * len(self.channels)))
        if len(self.scales) != len(self.channels):
            raise ValueError(f"scales must give one factor per layer ({len(self.channels)}), got {len(self.scales)}")
        for k, p in enumerate(unit_projections(self.channels, self.projections, self.patch_size, self.seed)):
            self.register_buffer(f"projection{k}", p, persistent=False)

    @property
    def projection_tensors(self) -> tuple[torch.Tensor, ...]:
        """The (P, C_l, p, p) unit directions of every layer, in layer order."""
        return tuple(getattr(self, f"projection{k}") for k in range(len(self.channels)))

    def _apply(self, fn, recurse: bool = True):
        """``.to()`` / ``.double()`` / ``.half()``: the projections follow the device and float64 but stay float32
        instead of 16 bits; on a dtype change they are made again from the seed (for float64 the draws normalised
        in float64 and kept, not float32's rounded projections)."""
        before = self.projection0.dtype
        out = super()._apply(fn, recurse)
        dtype = self.projection0.dtype
        if dtype != before and dtype.is_floating_point:
            wide = accumulation_dtype(dtype)
            fresh = unit_projections(self.channels, self.projections, self.patch_size, self.seed, wide)
            for k, p in enumerate(fresh):
                setattr(self, f"projection{k}", p.to(self.projection0.device))
        return out

    def check_size(self, size: tuple[int, int]) -> None:
        """``ImageTooSmallError`` unless every layer's features hold a p x p patch (VGG19, p = 5: 80 x 80)."""
        need = self.patch_size * max(self.scales)
        h, w = size
        if h >= need and w >= need:
            return
        raise ImageTooSmallError(
            f"images of size {h}x{w} are too small for FDL: its {self.patch_size}x{self.patch_size} patches need "
            f"features of at least {self.patch_size}x{self.patch_size} at every layer, i.e. images of at least "
            f"{need}x{need} (the deepest layer is 1/{max(self.scales)} of the image); use larger images, or a "
            f"smaller patch_size (patch_size=q takes images of at least {max(self.scales)}*q pixels per side)",
            size=(h, w), min_size=(need, need), layers=(),
        )

    def representation(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per layer the (N, 2, P, K) sorted projections of the FFT amplitude (0) and phase (1) of the (N, C, H, W)
        features, in float32 (float64 for float64 features), autocast off."""
        out = []
        for f, theta in zip(features, self.projection_tensors):
            wide = accumulation_dtype(f.dtype)
            with torch.autocast(device_type=f.device.type, enabled=False):
                maps = torch.cat(amplitude_and_phase(f.to(wide)), dim=0)  # (2N, C, H, W)
                projected = F.conv2d(maps, theta.to(device=f.device, dtype=wide), stride=self.stride)
                ordered = projected.flatten(2).sort(dim=-1).values  # (2N, P, K)
            n = f.shape[0]
            out.append(ordered.view(2, n, *ordered.shape[1:]).transpose(0, 1))
        return out

    def compare(self, input_repr: list[torch.Tensor], target_repr: list[torch.Tensor]) -> torch.Tensor:
        """(N, L): per layer the mean absolute difference of the sorted amplitude projections plus
        ``phase_weight`` times that of the phase projections."""
        terms = []
        for a, b in zip(input_repr, target_repr):
            distance = (a - b).abs().mean(dim=(-2, -1))  # (N, 2): amplitude, phase
            terms.append(distance[:, 0] + self.phase_weight * distance[:, 1])
        return torch.stack(terms, dim=1)

    def signature_fields(self) -> dict[str, object]:
        return {"distance": "fdl", "projections": f"{self.projections}/seed={self.seed}",
                "patch": f"{self.patch_size}/stride={self.stride}", "phase_weight": number(self.phase_weight)}

    def extra_repr(self) -> str:
        return (f"projections={self.projections}, patch_size={self.patch_size}, stride={self.stride}, "
                f"phase_weight={self.phase_weight}, seed={self.seed}")


class FDL(PerceptualLoss):
    r"""The frequency distribution loss (Ni et al., CVPR 2024): sliced Wasserstein distances between the Fourier
    amplitudes and phases of VGG19 features, robust to misaligned training pairs.

    For images :math:`x, y`, the FFT amplitude :math:`A_l` and phase :math:`\Phi_l` of the VGG19 features at
    relu1_2, relu2_2, relu3_4, relu4_4, relu5_4, and the sliced Wasserstein distance SW over ``projections``
    random unit directions of ``patch_size`` x ``patch_size`` patches (``perceptloss.fdl``):

    .. math:: \ell_n = \sum_l \mathrm{SW}(A_l(x_n), A_l(y_n)) + w_\phi\, \mathrm{SW}(\Phi_l(x_n), \Phi_l(y_n))

    then reduced over the batch by ``reduction`` (the official ``fdl-pytorch`` code: "mean"). The directions
    are drawn from ``seed`` and kept as buffers; seed and count are in the ``signature``. ``set_target(y)``
    keeps the target's sorted projections (images of the input's size only: the distributions are compared
    sample by sample). ``perceptloss.tiled`` refuses FDL (the FFT and the sort see the whole feature map).

    Args:
        weights: "default" (torchvision's VGG19, the weights of the paper and the official code), "caffe"
            (the original VGG19), a file path, or None for a random network (tests of mechanics only).
        normalization: override the weights' preprocessing ("imagenet", "caffe", "identity" or a
            ``perceptloss.Normalization``).
        projections: random directions per layer (the official default 256).
        patch_size: the side of the projected patches (5); images must be at least 16 x ``patch_size`` pixels
            per side (80 x 80), else ``ImageTooSmallError``.
        stride: the stride of the patches (1).
        phase_weight: the weight of the phase term (finite, >= 0; 1).
        seed: the seed of the directions (0).

    Shape:
        - input, target: :math:`(N, C, H, W)` in ``input_range``, :math:`H, W \geq 16 p` (80 for ``patch_size=5``);
          :math:`C = 3` unless ``channels`` says otherwise.
        - output: a scalar; :math:`(N,)` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> from perceptloss import FDL
        >>> loss = FDL(weights=None, projections=16)   # weights=None: random network, for the example
        >>> x = torch.rand(2, 3, 80, 80, requires_grad=True)
        >>> value = loss(x, torch.rand(2, 3, 80, 80))
        >>> value.backward()
        >>> value.shape, x.grad.shape
        (torch.Size([]), torch.Size([2, 3, 80, 80]))
    """

    _fixed_layers: ClassVar[bool] = True

    def __init__(
        self,
        *,
        weights: str | Path | None = "default",
        normalization: Normalization | str | None = None,
        projections: int = 256,
        patch_size: int = 5,
        stride: int = 1,
        phase_weight: float = 1.0,
        seed: int = 0,
        **options: Unpack[LossOptions],
    ) -> None:
        super().__init__(**options)
        criterion = FrequencyDistribution(FDL_CHANNELS, projections=projections, patch_size=patch_size,
                                          stride=stride, phase_weight=phase_weight, seed=seed, scales=FDL_SCALES)
        trunk_weights = "torchvision" if isinstance(weights, str) and weights == "default" else weights
        self._use_backbone("vgg19", FDL_LAYERS, None, trunk_weights, normalization, "")
        self._set_criterion(criterion)

    @property
    def projections(self) -> int:
        """Random directions per layer."""
        return self.criterion.projections

    @property
    def seed(self) -> int:
        """The seed of the directions."""
        return self.criterion.seed

    def extra_repr(self) -> str:
        return (f"{self.criterion.extra_repr()}, reduction={self.reduction!r}, memory_format={self.memory_format!r}"
                + (", checkpoint=True" if self.checkpoint else ""))


__all__ = ["FDL", "FrequencyDistribution", "unit_projections", "amplitude_and_phase", "FDL_LAYERS"]
