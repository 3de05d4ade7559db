"""``FixedTarget``: the representation of a target fixed once with ``set_target``, and its pairing with inputs."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .channels import ChannelPolicy


class FixedTarget(nn.Module):
    """One buffer per layer (``layer0``, ``layer1``, ...; not in ``state_dict``), so the kept representation
    follows ``.to()``, ``.cuda()`` and ``.half()``; plus the target's batch size and channel count."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.samples = 0  # the batch size of set_target's images (1: compared with every input)
        self.channels: int | None = None

    def set(self, representation: list[torch.Tensor], samples: int, channels: int) -> None:
        """Keep ``representation`` (one tensor per layer, detached) of ``samples`` images of ``channels`` channels."""
        self.clear()
        for k, r in enumerate(representation):
            self.register_buffer(f"layer{k}", r.detach(), persistent=False)
        self.count, self.samples, self.channels = len(representation), int(samples), int(channels)

    def clear(self) -> None:
        for k in range(self.count):
            delattr(self, f"layer{k}")
        self.count, self.channels = 0, None

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The kept representation, one tensor per layer (empty when none)."""
        return tuple(getattr(self, f"layer{k}") for k in range(self.count))

    def paired_with(
        self,
        input_repr: list[torch.Tensor],
        layers: Sequence[str],
        policy: ChannelPolicy,
        n: int | None = None,
        channels: int | None = None,
        windows: Sequence[tuple[slice, slice]] | None = None,
    ) -> list[torch.Tensor]:
        """The kept representation expanded to the input's (``n`` samples of G RGB images each; see
        ``PerceptualLoss.fixed_target``), or a ValueError that says what does not match."""
        if not self.count:
            raise ValueError("no target: call loss(input, target), or fix a target once with loss.set_target(target)")
        if channels is not None and self.channels is not None and int(channels) != self.channels:
            raise ValueError(
                f"the target fixed with set_target has {self.channels} channel(s) but the input has {int(channels)} "
                f"(channels={policy.mode!r}): their channel layouts must match, else input images would be paired "
                f"with the wrong target channels; pass inputs of {self.channels} channel(s), or call "
                f"loss.set_target(target) with a target of {int(channels)} channel(s)"
            )
        out = []
        for k, (name, r, kept) in enumerate(zip(layers, input_repr, self.tensors)):
            t = kept if windows is None else kept[..., windows[k][0], windows[k][1]]
            if n is not None and self.samples == 1 and n > 1 and t.shape[0] > 1 and t.shape[0] * n == r.shape[0]:
                t = policy.expand_target(t, n)  # one target sample of G > 1 groups, for N samples
            if t.shape[1:] != r.shape[1:] or t.shape[0] not in (1, r.shape[0]):
                raise ValueError(
                    f"layer {name}: the input gives {tuple(r.shape)} but the target set with set_target gave "
                    f"{tuple(kept.shape)}; use images of the target's size and a target batch of 1 or N"
                )
            if t.device != r.device or t.dtype != r.dtype:
                t = t.to(device=r.device, dtype=r.dtype)
            out.append(t.expand_as(r))
        return out
