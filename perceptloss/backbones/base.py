"""The common interface of the feature extractors."""
from __future__ import annotations

from torch import nn
import torch


class FeatureExtractor(nn.Module):
    """Frozen network returning the activations of ``layers`` (in that order) for a batch of images.

    Subclasses implement ``forward(x) -> list[Tensor]``: x is (N, 3, H, W), already normalised for the
    weights; each output is (N, C_l, H_l, W_l). The outputs are never modified in place afterwards.
    """

    layers: tuple[str, ...]

    def freeze(self) -> "FeatureExtractor":
        """Make every parameter non-trainable and switch to eval mode (called once at construction)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":  # noqa: D401 - always eval
        """Stay in eval mode whatever is asked: a loss network must not update BN statistics or drop out."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
