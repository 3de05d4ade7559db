"""``PerceptualMetric``: any loss of this library as a ``torchmetrics.Metric`` for evaluation inside training loops.

It accumulates per-sample values over batches and, through torchmetrics' state synchronisation, over the
ranks of a distributed job (``compute()`` gives the mean over every sample seen by every rank). Needs the
optional extra ``pip install perceptloss[metrics]`` (torchmetrics).

>>> import torch
>>> from perceptloss import LPIPS
>>> from perceptloss.metric import PerceptualMetric
>>> lpips = LPIPS("vgg", weights=None, heads=None)   # random trunk, for the example; LPIPS("vgg") for real numbers
>>> metric = PerceptualMetric(lpips, per_sample=True)
>>> for _ in range(2):               # batches of (N, 3, H, W) images in the loss's input_range
...     metric.update(torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32))
>>> metric.compute().shape, metric.values().shape   # the mean (0-dim), every per-sample value (M,)
(torch.Size([]), torch.Size([6]))
"""
from __future__ import annotations

from typing import Any

import torch

try:
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "perceptloss.metric needs torchmetrics: pip install 'perceptloss[metrics]' (or pip install torchmetrics)"
    ) from e


class PerceptualMetric(Metric):
    """The mean of ``loss(input, target)``'s per-sample values over every batch and rank.

    Args:
        loss: a loss of this library built with ``reduction="none"`` (FeatureLoss, StyleLoss, LPIPS, DISTS),
            or any module returning one value per sample, (N,), for (N, C, H, W) pairs.
        per_sample: also keep every per-sample value (``values()``).
        **kwargs: torchmetrics' ``Metric`` options (``sync_on_compute``, ``process_group``, ...).

    ``update(input, target)`` takes the loss's images; the values are computed without gradient (detached),
    the loss and the states move to the inputs' device on first use. Sums are kept in float64;
    ``compute()`` and ``values()`` return the dtype of the loss's output (a loss of this library gives float32,
    float64 for a float64 loss, whatever the images' dtype); float32 before any value.

    ``merge_state(other)`` adds another metric's samples after this one's: ``values()`` lists this metric's in
    update order, then the merged ones in theirs (torchmetrics' own merge would put the incoming ones first).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, loss: torch.nn.Module, *, per_sample: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)
        reduction = getattr(loss, "reduction", "none")
        if reduction != "none":
            raise ValueError(
                f"PerceptualMetric needs one value per sample, but the loss has reduction={reduction!r}; build it "
                f"with reduction='none'"
            )
        self.loss = loss
        self.per_sample = bool(per_sample)
        self._value_dtype: torch.dtype | None = None  # the loss's output dtype, once a value has been seen
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        if self.per_sample:
            self.add_state("samples", [], dist_reduce_fx="cat")

    @property
    def signature(self) -> str:
        """The loss's signature (``PerceptualLoss.signature``)."""
        return self.loss.signature

    def update(self, input: torch.Tensor, target: torch.Tensor) -> None:
        """Add the (N,) values of a batch: ``input``, ``target`` (N, C, H, W) as the loss takes them."""
        if self.total.device != input.device:
            self.to(input.device)
        with torch.no_grad():
            values = self.loss(input, target).detach()
        if values.dim() != 1 or values.shape[0] != input.shape[0]:
            raise ValueError(
                f"the loss gave {tuple(values.shape)} for a batch of {input.shape[0]}; PerceptualMetric needs one "
                f"value per sample: build the loss without spatial=True or channel_reduction='none'"
            )
        self._value_dtype = values.dtype
        self.total += values.double().sum()
        self.count += values.shape[0]
        if self.per_sample:
            self.samples.append(values)

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add another ``PerceptualMetric``'s state (or its ``metric_state`` dict) to this one: sums and counts
        add; with ``per_sample`` the values become this metric's, then the incoming ones, each in update order.
        The output dtype stays this metric's, or becomes the incoming one's when this one has seen no value."""
        if not isinstance(incoming_state, (dict, PerceptualMetric)):
            super().merge_state(incoming_state)  # torchmetrics' error for anything else
            return
        incoming = incoming_state.metric_state if isinstance(incoming_state, PerceptualMetric) else incoming_state
        state = dict(incoming)
        own: list[torch.Tensor] = []
        theirs: list[torch.Tensor] = []
        if self.per_sample and "samples" in state:
            own, theirs = _as_list(self.samples), _as_list(state["samples"])
            self.samples, state["samples"] = list(own), theirs  # lists, which torchmetrics' merge concatenates
        super().merge_state(state)  # its checks; adds total and count (and puts the incoming samples first)
        if self.per_sample:
            self.samples = own + theirs
        if self._value_dtype is None:
            if isinstance(incoming_state, PerceptualMetric):
                self._value_dtype = incoming_state._value_dtype
            elif theirs:
                self._value_dtype = theirs[0].dtype

    def compute(self) -> torch.Tensor:
        """The mean over every sample of every rank (0-dim, the loss's output dtype); NaN before any update."""
        dtype = self._value_dtype or torch.float32
        if int(self.count) == 0:
            return torch.tensor(float("nan"), dtype=dtype, device=self.total.device)
        return (self.total / self.count).to(dtype)

    def values(self) -> torch.Tensor:
        """Every per-sample value (M,) in update order (after ``merge_state``: this metric's, then the merged
        ones), ranks concatenated in rank order (``per_sample=True``)."""
        if not self.per_sample:
            raise ValueError("per-sample values are kept only with PerceptualMetric(loss, per_sample=True)")
        with self.sync_context(should_sync=self.sync_on_compute, should_unsync=True):
            samples = self.samples  # a list of (n,) tensors, or one tensor once synchronised across ranks
            if isinstance(samples, list) and not samples:
                return torch.empty(0, dtype=self._value_dtype or torch.float32, device=self.total.device)
            return dim_zero_cat(samples).clone()


def _as_list(samples: list[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    """A ``samples`` state as a list of (n,) tensors (it is one tensor once synchronised across ranks)."""
    return [samples] if isinstance(samples, torch.Tensor) else list(samples)
