"""Channel policies: how images that are not RGB reach an RGB loss network (``channels=`` of every loss).

Every trunk of this library was trained on RGB images, so a loss compares (N, 3, H, W) batches. A policy
(:class:`ChannelPolicy`) maps an (N, C, H, W) batch in ``input_range`` to (N*G, 3, H, W) RGB images, G per
sample, before any normalisation; each of those images is then normalised exactly as an RGB image would be,
and the per-image terms are merged back per sample (:func:`split_channels`, :func:`merge_channels`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Channels = Literal["rgb", "replicate", "per_channel", "groups"]
ChannelReduction = Literal["mean", "none"]
CHANNEL_POLICIES: tuple[str, ...] = ("rgb", "replicate", "per_channel", "groups")


def _advice(c: int) -> str:
    """What to pass for C-channel images, given that "rgb" refused them."""
    options = []
    if c == 1:
        options.append("channels='replicate' (grey images copied to R, G and B)")
    options.append("channels='per_channel' (each channel copied to RGB and run through the network, terms averaged)")
    if c % 3 == 0:
        options.append(f"channels='groups' ({c // 3} RGB images per sample, terms averaged)")
    return "; ".join(options)


@dataclass(frozen=True)
class ChannelPolicy:
    """A checked ``channels=`` / ``channel_reduction=`` pair: how (N, C, H, W) images reach an RGB network.

    An (N, C, H, W) batch in ``input_range`` becomes N*G RGB images, G per sample, before any normalisation;
    each is then normalised exactly as an RGB image would be (the weight entry's own preprocessing):

    | ``mode``          | accepted C             | G   | each RGB image                        |
    | ----------------- | ---------------------- | --- | ------------------------------------- |
    | ``"rgb"``         | 3                      | 1   | the image itself                      |
    | ``"replicate"``   | 1 (3 passes unchanged) | 1   | the grey channel copied to R, G and B |
    | ``"per_channel"`` | any C >= 1             | C   | channel c copied to R, G and B        |
    | ``"groups"``      | C divisible by 3       | C/3 | channels 3g, 3g+1, 3g+2 as R, G, B    |

    "replicate" is the LPIPS author's advice for grey images; "per_channel" is MONAI's ``channel_wise``
    (multispectral, RGBA, multi-contrast MR); "groups" takes stacked RGB frames. Under "rgb", other channel
    counts are an error that names the other policies.

    RGB image ``n*G + g`` is group g of sample n. Ambiguous or impossible choices are errors that say what to
    pass: 3 channels with "replicate" pass unchanged, 2 do not (use "per_channel").

    Args:
        mode: the policy, a loss's ``channels=`` argument.
        reduction: what happens to the G terms of a sample, a loss's ``channel_reduction=``: "mean" (default)
            averages them; "none" keeps them on a new axis 1, so a per-sample output is (N, G) instead of (N,)
            (it needs "per_channel" or "groups").

    Example:
        >>> import perceptloss
        >>> policy = perceptloss.channels.ChannelPolicy("groups")
        >>> policy.groups(6)
        2
    """

    mode: Channels = "rgb"
    reduction: ChannelReduction = "mean"

    def __post_init__(self) -> None:
        if self.mode not in CHANNEL_POLICIES:
            raise ValueError(f"channels must be one of {', '.join(repr(p) for p in CHANNEL_POLICIES)}, got {self.mode!r}")
        if self.reduction not in ("mean", "none"):
            raise ValueError(f"channel_reduction must be 'mean' or 'none', got {self.reduction!r}")
        if self.reduction == "none" and self.mode not in ("per_channel", "groups"):
            raise ValueError(
                f"channel_reduction='none' keeps one term per channel group, so it needs channels='per_channel' or "
                f"channels='groups' (got channels={self.mode!r})"
            )

    @property
    def keeps_groups(self) -> bool:
        """True when the per-sample output has a group axis (channel_reduction="none")."""
        return self.reduction == "none"

    def groups(self, channels: int) -> int:
        """G, the number of RGB images per sample for C = ``channels``; a ValueError saying what to pass otherwise."""
        c = int(channels)
        if c < 1:
            raise ValueError(f"images have {c} channels; pass (N, C, H, W) images with C >= 1")
        if self.mode == "rgb":
            if c != 3:
                raise ValueError(f"the loss network takes RGB images (N, 3, H, W) but got {c} channel(s); pass {_advice(c)}")
            return 1
        if self.mode == "replicate":
            if c not in (1, 3):
                raise ValueError(
                    f"channels='replicate' copies one grey channel to RGB, but the images have {c} channels; "
                    f"pass {_advice(c)}"
                )
            return 1
        if self.mode == "per_channel":
            return c
        if c % 3:
            raise ValueError(
                f"channels='groups' takes channels 3 at a time, but the images have {c} channels (not a multiple of 3); "
                f"pass channels='per_channel' (each channel copied to RGB), or drop/pad channels to a multiple of 3"
            )
        return c // 3

    def expected_channels(self, images: object) -> int:
        """The C that ``images`` may have: its own when the policy accepts it (raises otherwise), 3 for non-tensors
        (the shape/type checks then say what is wrong)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            return 3
        try:
            self.groups(images.shape[1])
        except ValueError:
            shape = tuple(images.shape)
            if shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):  # (N, H, W, C): channels last
                try:
                    self.groups(shape[-1])
                    also = ""
                except ValueError:
                    also = f"; then, for {shape[-1]} channel(s), one of: {_advice(shape[-1])}"
                raise ValueError(
                    f"the images look channels-last, (N, H, W, C) = {shape}, but a loss takes (N, C, H, W); pass "
                    f"x.permute(0, 3, 1, 2){also}"
                ) from None
            raise
        return int(images.shape[1])

    def split(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in input_range -> (N*G, 3, H, W) RGB images (a view or an expansion where possible)."""
        return split_channels(images, self)

    def merge(self, terms: torch.Tensor, n: int) -> torch.Tensor:
        """(N*G, ...) terms -> (N, ...) (their mean over G) or (N, G, ...) (channel_reduction="none")."""
        return merge_channels(terms, n, terms.shape[0] // max(n, 1), self.reduction)

    def expand_target(self, target_terms: torch.Tensor, n: int) -> torch.Tensor:
        """A set_target batch of 1 sample, (G, ...), repeated for N samples -> (N*G, ...); (N*G, ...) unchanged."""
        if n <= 1:
            return target_terms
        g = target_terms.shape[0]
        return target_terms.unsqueeze(0).expand(n, *target_terms.shape).reshape(n * g, *target_terms.shape[1:])


def channel_policy(channels: str | ChannelPolicy = "rgb", channel_reduction: str = "mean") -> ChannelPolicy:
    """The ChannelPolicy for a loss's ``channels=`` and ``channel_reduction=`` arguments (checked)."""
    if isinstance(channels, ChannelPolicy):
        return channels
    return ChannelPolicy(channels, channel_reduction)  # type: ignore[arg-type]


def split_channels(images: torch.Tensor, policy: ChannelPolicy | str = "rgb") -> torch.Tensor:
    """The RGB images a loss network sees for (N, C, H, W) images under ``policy``.

    RGB image ``n*G + g`` is group g of sample n (see :class:`ChannelPolicy` for G). No normalisation is
    applied here: every output image is still in the caller's ``input_range``. The result is a view or an
    expansion of ``images`` where possible.

    Args:
        images: the batch, in any range.
        policy: a :class:`ChannelPolicy` or its mode ("rgb", "replicate", "per_channel", "groups").

    Returns:
        The (N*G, 3, H, W) RGB images.

    Shape:
        - images: :math:`(N, C, H, W)`
        - Output: :math:`(N G, 3, H, W)`

    Example:
        >>> import torch, perceptloss
        >>> perceptloss.channels.split_channels(torch.rand(2, 5, 8, 8), "per_channel").shape
        torch.Size([10, 3, 8, 8])
    """
    policy = channel_policy(policy)
    if images.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    g = policy.groups(c)
    if policy.mode == "rgb" or (policy.mode in ("replicate", "groups") and c == 3):
        return images
    if policy.mode == "groups":
        return images.reshape(n * g, 3, h, w)
    # replicate (C = 1) and per_channel: every channel copied to R, G and B
    return images.reshape(n * c, 1, h, w).expand(n * c, 3, h, w)


def merge_channels(terms: torch.Tensor, n: int, groups: int, reduction: ChannelReduction = "mean") -> torch.Tensor:
    """Per-image terms of :func:`split_channels`' images merged back per sample.

    Args:
        terms: one row per RGB image, ordered as :func:`split_channels` orders them (sample-major).
        n: N, the number of samples.
        groups: G, the number of RGB images per sample.
        reduction: "mean" averages the G terms of each sample; "none" keeps them on axis 1.

    Returns:
        (N, ...) for "mean", (N, G, ...) for "none".

    Shape:
        - terms: :math:`(N G, *)`
        - Output: :math:`(N, *)` or :math:`(N, G, *)`

    Example:
        >>> import torch, perceptloss
        >>> perceptloss.channels.merge_channels(torch.tensor([1.0, 3.0, 5.0, 7.0]), n=2, groups=2)
        tensor([2., 6.])
    """
    if terms.shape[0] != n * groups:
        raise ValueError(f"expected {n}*{groups} = {n * groups} rows of terms, got shape {tuple(terms.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"channel_reduction must be 'mean' or 'none', got {reduction!r}")
    grouped = terms.reshape(n, groups, *terms.shape[1:])
    return grouped if reduction == "none" else grouped.mean(dim=1)
