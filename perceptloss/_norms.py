"""The L2 norm over channels at every position, with a finite gradient where it is 0: what unit normalisation
(``perceptloss.functional.unit_normalize``) divides by, and what the unit distance's gradient (``perceptloss._ops``)
is built from."""
from __future__ import annotations

import torch


def channel_norm(features: torch.Tensor) -> torch.Tensor:
    """(N, C, *) -> (N, 1, *) L2 norm over C, in the features' dtype. Where it is 0 its gradient is 0 (a plain
    sqrt(0) backward gives inf, and inf * 0 = NaN); elsewhere sqrt's."""
    squared = features.square().sum(dim=1, keepdim=True)
    positive = squared > 0
    return torch.where(positive, torch.where(positive, squared, torch.ones_like(squared)).sqrt(), 0.0)
