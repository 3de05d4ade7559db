"""A ``features`` nn.Sequential trunk with one name per module, truncated after the deepest requested layer.

Shared by the torchvision trunks whose parameters are named ``features.N.*`` (AlexNet, SqueezeNet), so that
torchvision state dicts load as they are.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .._conv_relu import can_fuse, conv_relu, is_pool2x2
from .._relu import keeps_output_while_tracing, relu_keeping_output
from .._sizes import min_input_size
from .._extractor import FeatureExtractor


class SequentialFeatures(FeatureExtractor):
    """Return the outputs of the modules named ``layers`` of a sequential trunk, in the order asked.

    ``modules`` and ``names`` are the full trunk and one name per module; the trunk is truncated after the
    deepest requested layer. A top-level ``nn.ReLU`` runs in place where that is safe (the module before it is
    a convolution, batch norm or linear layer that writes a fresh tensor, and that tensor is not requested) and
    out of place otherwise, so that a requested pre-activation (``conv3_1``) is never overwritten while no
    memory is spent on ReLU outputs nobody reads. Input (N, 3, H, W) normalised for the weights.
    """

    def __init__(self, modules: Sequence[nn.Module], names: Sequence[str], layers: tuple[str, ...]) -> None:
        super().__init__()
        index = {n: i for i, n in enumerate(names)}
        self.layers = tuple(layers)
        self.taps = [index[n] for n in self.layers]
        self._tapset = frozenset(self.taps)
        depth = max(self.taps) + 1
        trunk = list(modules)[:depth]
        self.features = nn.Sequential(
            *[nn.ReLU(inplace=self._relu_may_run_in_place(trunk, i)) if isinstance(m, nn.ReLU) else m
              for i, m in enumerate(trunk)]
        )
        self.freeze()

    def _relu_may_run_in_place(self, trunk: list[nn.Module], i: int) -> bool:
        """True when the ReLU at index ``i`` may overwrite its input: a fresh tensor that nobody reads."""
        fresh_output = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
        return i > 0 and isinstance(trunk[i - 1], fresh_output) and (i - 1) not in self._tapset

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        found: dict[int, torch.Tensor] = {}
        self._run_range(x, 0, len(self.features), found)
        return [found[i] for i in self.taps]

    def _run_range(self, x: torch.Tensor, start: int, stop: int, found: dict[int, torch.Tensor] | None = None
                   ) -> torch.Tensor:
        """Modules ``start`` to ``stop - 1`` on ``x``; the tapped outputs go into ``found``. A convolution whose
        output is not requested and the ReLU after it run as one oneDNN primitive where ``can_fuse`` allows
        (``perceptloss._conv_relu``: the same values, without the ReLU's own pass over the activations), with
        a 2x2 max-pool after an unrequested ReLU joined to it, and a requested ReLU that the next module reads
        too handed out twice (its two gradients are summed in the ReLU's backward pass)."""
        modules, taps = self.features, self._tapset
        i = start
        while i < stop:
            module = modules[i]
            if (i + 1 < stop and isinstance(modules[i + 1], nn.ReLU) and i not in taps
                    and can_fuse(module, x)):
                more = i + 2 < stop  # a module after the ReLU runs in this range
                if found is not None and i + 1 in taps and more:
                    x, found[i + 1] = conv_relu(module, x, tapped=True)
                    i += 2
                    continue
                if i + 1 not in taps and more and is_pool2x2(modules[i + 2]):
                    x = conv_relu(module, x, pool=True)
                    i += 2  # the pool's index: its output is x
                else:
                    x = conv_relu(module, x)
                    i += 1  # the ReLU's index: its output is x
            else:
                x = self._run(module, x)
            if found is not None and i in self._tapset:
                found[i] = x
            i += 1
        return x

    def min_input_sizes(self) -> dict[str, tuple[int, int]] | None:
        """The smallest (H, W) input for each requested layer (from the trunk's kernels, strides and pools)."""
        sizes = {}
        for name, tap in zip(self.layers, self.taps):
            size = min_input_size(list(self.features)[: tap + 1])
            if size is None:
                return None
            sizes[name] = size
        return sizes

    def _segment(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return self._run_range(x, start, stop)

    @staticmethod
    def _run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)``; a ReLU in a CPU training graph torch.compile traces keeps its output for the backward
        instead of a boolean mask (``perceptloss._relu``: inductor's boolean tensors are slow on the CPU)."""
        if isinstance(module, nn.ReLU) and keeps_output_while_tracing(x):
            return relu_keeping_output(x)
        return module(x)

    def forward_checkpointed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``forward`` with one checkpointed segment per tapped layer: the modules after one tap up to the
        next. Only the segments' inputs (the image and the tapped activations, which the loss keeps anyway)
        are saved; the backward pass recomputes one segment at a time. A segment never starts with an
        in-place ReLU (a tapped output is never overwritten), so recomputation sees the same inputs."""
        found: dict[int, torch.Tensor] = {}
        start = 0
        for stop in sorted(self._tapset):
            x = checkpoint(self._segment, x, start, stop + 1, use_reentrant=False)
            found[stop] = x
            start = stop + 1
        return [found[i] for i in self.taps]
