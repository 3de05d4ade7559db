"""The multi-layer normalised squared feature distance, fused or in plain PyTorch.

For layer l with activations a_l, b_l of shape (N, C_l, H_l, W_l) and weight w_l:

    D[n, l] = w_l / (C_l H_l W_l) * sum_{c,h,w} (a_l[n] - b_l[n])**2

returned as an (N, L) tensor in float32 (float64 for float64 features), whatever the feature dtype.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import _ops


def _check_features(inputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], weights: Sequence[float]) -> None:
    if len(inputs) == 0:
        raise ValueError("feature_distance needs at least one layer (got empty lists)")
    if not (len(inputs) == len(targets) == len(weights)):
        raise ValueError(
            f"got {len(inputs)} input features, {len(targets)} target features and {len(weights)} weights; "
            "give one of each per layer"
        )
    n = inputs[0].shape[0] if inputs[0].dim() > 0 else None
    for l, (a, b) in enumerate(zip(inputs, targets)):
        if a.shape != b.shape:
            raise ValueError(f"layer {l}: input features {tuple(a.shape)} and target features {tuple(b.shape)} differ")
        if a.dim() < 2 or a.shape[0] != n:
            raise ValueError(f"layer {l}: features must be (N, ...) with the same N={n} for every layer, got {tuple(a.shape)}")
        if a.shape[1:].numel() == 0:
            raise ValueError(f"layer {l}: features of shape {tuple(a.shape)} are empty; the images are too small for this layer")
        if a.dtype != b.dtype or a.dtype != inputs[0].dtype:
            raise TypeError(f"layer {l}: dtypes differ ({a.dtype}, {b.dtype}, layer 0: {inputs[0].dtype}); cast them to one dtype")
        if a.device != b.device or a.device != inputs[0].device:
            raise ValueError(f"layer {l}: devices differ ({a.device}, {b.device}, layer 0: {inputs[0].device})")
        if not a.is_floating_point():
            raise TypeError(f"layer {l}: features must be floating point, got {a.dtype}")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 features, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def feature_distance_reference(
    inputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], weights: Sequence[float]
) -> torch.Tensor:
    """Pure-PyTorch oracle and fallback: (N, L) distances, differentiable by autograd."""
    _check_features(inputs, targets, weights)
    acc = accumulation_dtype(inputs[0].dtype)
    cols = [
        float(w) * (a.to(acc) - b.to(acc)).square().flatten(1).mean(dim=1)
        for a, b, w in zip(inputs, targets, weights)
    ]
    return torch.stack(cols, dim=1)


def feature_distance(
    inputs: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
    *,
    fused: bool | None = None,
) -> torch.Tensor:
    """(N, L) weighted per-sample, per-layer distances between two lists of (N, C, H, W) feature maps.

    ``fused``: None uses the compiled operator when it supports the device, True requires it, False uses the
    pure-PyTorch reference. Both give the same values within floating-point tolerance.
    """
    inputs, targets = list(inputs), list(targets)
    weights = [1.0] * len(inputs) if weights is None else [float(w) for w in weights]
    use = _ops.supports(inputs[0].device) if fused is None and inputs else bool(fused)
    if fused and not _ops.supports(inputs[0].device if inputs else torch.device("cpu")):
        raise RuntimeError(_ops.unavailable_reason(inputs[0].device if inputs else torch.device("cpu")))
    if not use:
        return feature_distance_reference(inputs, targets, weights)
    _check_features(inputs, targets, weights)
    return torch.ops.perceptloss.feature_distance(inputs, targets, weights)
