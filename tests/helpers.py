"""Shared test helpers (imported by the test files; fixtures live in conftest.py)."""
from __future__ import annotations

import re

import torch

SHARED_CELEBA = __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "..", "shared", "data", "celeba")


class TinyNet(torch.nn.Module):
    """A two-stage conv net for fast mechanics tests (float64-capable)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.act2 = torch.nn.ReLU()

    def forward(self, x):
        return self.act2(self.conv2(self.act1(self.conv1(x))))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest relative difference of ``a`` from ``b``."""
    return ((a - b).abs() / b.abs().clamp_min(1e-12)).max().item()


def lpips_trunk_state(ref) -> dict[str, torch.Tensor]:
    """lpips' ``net.sliceK.<index>.*`` trunk tensors in torchvision's ``features.<index>.*`` naming."""
    return {re.sub(r"^net\.slice\d+\.", "features.", k): v for k, v in ref.state_dict().items() if k.startswith("net.")}


def tiny_loss(net, **kw):
    """A FeatureLoss over TinyNet's two activations (weights 1 and 0.5), images as given (IDENTITY)."""
    from perceptloss import FeatureLoss
    from perceptloss.preprocessing import IDENTITY

    return FeatureLoss(net, ["act1", "act2"], layer_weights=[1.0, 0.5], normalization=IDENTITY, **kw)
