r"""VolumeLoss: a 2.5D loss for (N, C, D, H, W) volumes over any 2D loss of this library.

The volume is cut into 2D slices along each of ``axes`` (2: D, giving (C, H, W) images; 3: H, giving (C, D, W);
4: W, giving (C, D, H)), every ``stride``-th slice from index 0 (all slices with stride 1): deterministic, unlike
a random sample of slices. Each slice pair goes through the 2D loss, built with ``reduction="none"`` so that it
returns one value per image. The reduction is

.. math:: \mathrm{loss}_n = \frac{1}{|A|} \sum_{a \in A} \frac{1}{|S_a|} \sum_{s \in S_a}
          \ell\big(x_n[\text{slice } s \text{ of axis } a],\ y_n[\text{slice } s \text{ of axis } a]\big)

(the mean over the slices of an axis, then the mean over the axes, so that every axis counts the same whatever
its length), then ``reduction`` over the batch ("mean" | "sum" | "none" -> (N,)); ``per_axis`` gives the (N, |A|)
terms.

Memory-bounded: slices go through the 2D loss ``chunk`` images at a time (``chunk // N`` slices of all N
samples, at least one slice). When a gradient is needed each chunk runs under activation checkpointing
(``torch.utils.checkpoint``): the forward keeps only the chunk's input slices and its value, and the backward
recomputes one chunk's activations at a time, so the peak memory is about one chunk's activations instead of
the whole volume's. ``checkpoint=False`` keeps every chunk's graph (faster backward, memory grows with the
volume). Without a gradient (a metric) chunks are simply evaluated one after the other.

Thin volumes (a few slices along one axis): the slices along the other two axes are then thin images that a
deep trunk cannot take; the error names the thin axis to slice along alone (e.g. ``axes=(2,)``), instead of
failing at random as a sampled-slice loss does.

Channels: the 2D loss's own policy applies to each slice, e.g. ``FeatureLoss(..., channels="replicate")`` for
1-channel CT/MR volumes (``perceptloss.channels``).
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from ._base import reduce
from ._dtypes import accumulation_dtype
from ._sizes import ImageTooSmallError
from ._validation import check_same_batch

VOLUME_AXES = (2, 3, 4)


def slice_indices(size: int, stride: int) -> list[int]:
    """The slices taken along an axis of length ``size``: 0, stride, 2*stride, ... (< size)."""
    return list(range(0, size, stride))


def volume_slices(volume: torch.Tensor, axis: int, start: int, stop: int, stride: int) -> torch.Tensor:
    """(N, C, D, H, W) -> (N*k, C, h, w): the slices start, start+stride, ... < stop along ``axis``, sample-major.

    Image ``n*k + j`` is slice j of sample n; for axis 2 the image is (C, H, W), for 3 (C, D, W), for 4 (C, D, H).
    """
    index = [slice(None)] * 5
    index[axis] = slice(start, stop, stride)
    part = volume[tuple(index)].movedim(axis, 1)  # (N, k, C, a, b)
    n, k = part.shape[:2]
    return part.reshape(n * k, *part.shape[2:])


class VolumeLoss(nn.Module):
    """The 2.5D loss of ``loss`` over (N, C, D, H, W) volumes (see the module docstring for the reduction).

    Args:
        loss: a 2D loss returning one value per image: any loss of this library built with
            ``reduction="none"`` (FeatureLoss, StyleLoss, LPIPS, DISTS), or any callable (B, C, h, w) x 2 -> (B,).
        axes: the volume axes to slice along, a subset of (2, 3, 4) (default all three).
        stride: take every ``stride``-th slice, from index 0 (1: all slices).
        chunk: the most 2D images per call of ``loss`` (slices x batch); bounds the peak memory.
        reduction: "mean" | "sum" | "none" over the batch.
        checkpoint: recompute each chunk in the backward (None: whenever a gradient is needed).
    """

    def __init__(
        self,
        loss: nn.Module | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        axes: Sequence[int] = VOLUME_AXES,
        *,
        stride: int = 1,
        chunk: int = 64,
        reduction: Literal["mean", "sum", "none"] = "mean",
        checkpoint: bool | None = None,
    ) -> None:
        super().__init__()
        reduction_of_loss = getattr(loss, "reduction", "none")
        if reduction_of_loss != "none":
            raise ValueError(
                f"VolumeLoss needs one value per slice, but the 2D loss has reduction={reduction_of_loss!r}; "
                f"build it with reduction='none' (VolumeLoss reduces over slices, axes and the batch itself)"
            )
        axes = tuple(int(a) for a in (axes if isinstance(axes, Sequence) else (axes,)))
        if not axes or any(a not in VOLUME_AXES for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"axes must be distinct volume axes among (2, 3, 4) (D, H, W of (N, C, D, H, W)), got {axes}")
        if isinstance(stride, bool) or int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be an integer >= 1 (1 takes every slice), got {stride!r}")
        if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
            raise ValueError(f"chunk must be an integer >= 1 (2D images per call of the loss), got {chunk!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.loss = loss
        self.axes = axes
        self.stride = int(stride)
        self.chunk = int(chunk)
        self.reduction = reduction
        self.checkpoint = checkpoint

    def _check(self, input: torch.Tensor, target: torch.Tensor) -> None:
        for role, t in (("input", input), ("target", target)):
            if not isinstance(t, torch.Tensor) or t.dim() != 5:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(
                    f"{role} must be a batch of volumes of shape (N, C, D, H, W), got {shape}; add a batch or "
                    f"channel dimension with x[None] / x[:, None], or use the 2D loss for images"
                )
        check_same_batch(input, target)

    def _values(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.loss(x, y)
        if out.dim() != 1 or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"the 2D loss returned shape {tuple(out.shape)} for {x.shape[0]} images; it must return one value "
                f"per image (reduction='none', and channel_reduction='mean' where it has one)"
            )
        return out

    def per_axis(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N, len(axes)): each axis's mean over its slices of the 2D loss, in the 2D loss's output dtype (float32,
        float64 for a float64 loss; whatever the volumes' dtype)."""
        self._check(input, target)
        n = input.shape[0]
        per_call = max(1, self.chunk // n)  # slices per chunk
        grad = torch.is_grad_enabled() and (input.requires_grad or target.requires_grad)
        recompute = grad if self.checkpoint is None else (self.checkpoint and grad)
        columns = []
        for axis in self.axes:
            size = input.shape[axis]
            starts = slice_indices(size, self.stride)
            total: torch.Tensor | None = None  # in the dtype of the 2D loss's values
            for i in range(0, len(starts), per_call):
                start, stop = starts[i], min(size, starts[min(i + per_call, len(starts)) - 1] + 1)
                x = volume_slices(input, axis, start, stop, self.stride)
                y = volume_slices(target, axis, start, stop, self.stride)
                try:
                    if recompute:
                        values = _checkpoint(self._values, x, y, use_reentrant=False)
                    else:
                        values = self._values(x, y)
                except ImageTooSmallError as e:
                    # the thin dimension is the smaller one of the slice; slices along it do not contain it
                    thin = min((d for d in VOLUME_AXES if d != axis), key=lambda d: input.shape[d])
                    raise ImageTooSmallError(
                        f"the slices along axis {axis} are {tuple(x.shape[-2:])} images, too small for the 2D loss "
                        f"({e}); the volume is thin along axis {thin}: slice only along it (axes=({thin},)) or use "
                        f"shallower layers",
                        size=e.size, min_size=e.min_size, layers=e.layers,
                    ) from e
                chunk_sum = values.to(accumulation_dtype(values.dtype)).reshape(n, -1).sum(dim=1)
                total = chunk_sum if total is None else total + chunk_sum
            columns.append(total / len(starts))
        return torch.stack(columns, dim=1)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The 2.5D loss of two (N, C, D, H, W) volumes: a scalar, or (N,) with reduction="none"."""
        return reduce(self.per_axis(input, target).mean(dim=1), self.reduction)

    @property
    def signature(self) -> str:
        """The slice loss's signature (``metric`` renamed ``slice_metric``) after this loss's own fields:
        ``metric:VolumeLoss|axes|stride``. As every signature, it describes one volume pair's value; the
        ``reduction`` over the batch is stated beside it."""
        from ._signature import format_signature, parse_signature

        inner = getattr(self.loss, "signature", None)
        fields = {"metric": "VolumeLoss", "axes": ",".join(map(str, self.axes)), "stride": self.stride}
        if inner is None:
            fields["slice_metric"] = getattr(self.loss, "__qualname__", type(self.loss).__name__)
        else:
            fields.update({("slice_" + k if k == "metric" else k): v for k, v in parse_signature(inner).items()})
        return format_signature(fields)

    def extra_repr(self) -> str:
        return f"axes={self.axes}, stride={self.stride}, chunk={self.chunk}, reduction={self.reduction!r}"
