"""The multi-layer normalised squared (or absolute) feature distance, fused or in plain PyTorch.

For layer l with activations a_l, b_l of shape (N, C_l, H_l, W_l) and weight w_l:

    D[n, l] = w_l / (C_l H_l W_l) * sum_{c,h,w} (a_l[n] - b_l[n])**2      (p=2, the default)
    D[n, l] = w_l / (C_l H_l W_l) * sum_{c,h,w} |a_l[n] - b_l[n]|         (p=1; gradient sign(a - b), 0 at a = b)

returned as an (N, L) tensor in float32 (float64 for float64 features), whatever the feature dtype.

Two more per-layer forms that image-restoration code uses (``FeatureLoss(distance=...)``):

    cosine:       D[n, l] = w_l / (H_l W_l) * sum_{h,w} || u(a_l[n])_{:,h,w} - u(b_l[n])_{:,h,w} ||^2
                  with u the unit normalisation over channels (``unit_normalize``), = 2 (1 - cos) per position:
                  LPIPS without its heads, for any backbone (``unit_feature_distance``, which also takes
                  per-channel weights: LPIPS' heads; on the CPU one pass of the fused operator over a and b).
    charbonnier:  D[n, l] = w_l / (C_l H_l W_l) * sum_{c,h,w} sqrt((a_l[n] - b_l[n])**2 + eps**2)
                  (``charbonnier_distance``): pure PyTorch, as the fused operator computes |d|^p for p = 1, 2 only.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import _ops
from ._dtypes import accumulation_dtype, functorch_transform_active
from ._norms import channel_norm
from ._validation import check_number
from .backends import probe


def _check_weights(weights: Sequence[float] | None, layers: int) -> list[float]:
    """One finite weight >= 0 per layer (1.0 each when None)."""
    if weights is None:
        return [1.0] * layers
    if torch.compiler.is_compiling():
        # checked eagerly where the loss was built; while dynamo traces, a weight that changed between two
        # compilations of this code is a symbolic float (automatic dynamic), on which math.isfinite breaks the graph
        return list(weights)
    return [check_number(f"the weight of layer {l} (weights[{l}])", w, minimum=0.0) for l, w in enumerate(weights)]


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


def _check_p(p: int) -> int:
    if p not in (1, 2) or isinstance(p, bool):
        raise ValueError(f"p must be 1 (mean absolute difference) or 2 (mean squared difference), got {p!r}")
    return int(p)


def feature_distance_reference(
    inputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], weights: Sequence[float], p: int = 2
) -> torch.Tensor:
    r"""The maths of :func:`feature_distance` in plain PyTorch: its oracle, and its fallback.

    .. math:: D[n, l] = \frac{w_l}{C_l H_l W_l} \sum_{c,h,w} \lvert a_l[n] - b_l[n] \rvert^p

    accumulated in float32 (float64 for float64 features) and differentiable by autograd; for ``p=1`` the
    gradient of ``abs`` is :math:`\operatorname{sign}(a - b)`, 0 at :math:`a = b`, as the fused operator's.

    Args:
        inputs: the L input feature maps, each (N, ...) with the same N.
        targets: the L target feature maps, each of its input's shape, dtype and device.
        weights: one weight per layer.
        p: 2 for the mean squared difference, 1 for the mean absolute difference.

    Returns:
        The (N, L) distances.

    Shape:
        - inputs[l], targets[l]: :math:`(N, C_l, H_l, W_l)`, or any :math:`(N, *)`
        - Output: :math:`(N, L)`

    Example:
        >>> import torch, perceptloss
        >>> a, b = [torch.full((2, 3, 4, 4), 3.0)], [torch.ones(2, 3, 4, 4)]
        >>> perceptloss.functional.feature_distance_reference(a, b, [0.5], p=1)
        tensor([[1.],
                [1.]])
    """
    _check_features(inputs, targets, weights)
    p = _check_p(p)
    acc = accumulation_dtype(inputs[0].dtype)
    cols = [
        float(w) * ((a.to(acc) - b.to(acc)).square() if p == 2 else (a.to(acc) - b.to(acc)).abs()).flatten(1).mean(dim=1)
        for a, b, w in zip(inputs, targets, weights)
    ]
    return torch.stack(cols, dim=1)


def feature_distance(
    inputs: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
    *,
    fused: bool | None = None,
    p: int = 2,
) -> torch.Tensor:
    r"""Weighted per-sample, per-layer distances between two lists of feature maps, in one fused call.

    For layer :math:`l` with features :math:`a_l, b_l` of shape :math:`(N, C_l, H_l, W_l)` and weight
    :math:`w_l`:

    .. math:: D[n, l] = \frac{w_l}{C_l H_l W_l} \sum_{c,h,w} \lvert a_l[n] - b_l[n] \rvert^p

    The fused operator reads every layer in one call and writes both gradients in one pass; the result is
    float32 (float64 for float64 features) whatever the feature dtype, and differentiable to second order.

    Args:
        inputs: the L input feature maps, each (N, ...) with the same N.
        targets: the L target feature maps, each of its input's shape, dtype and device.
        weights: one weight per layer (default 1 each).
        fused: None uses the compiled operator when it supports the device, True requires it (else a
            RuntimeError says how to build it), False uses :func:`feature_distance_reference`. Both give the
            same values within floating-point tolerance. On CUDA, None uses the kernels once they have passed
            a first-use check on the device (``perceptloss.backends.probe``; else the reference, with one
            warning); True runs them regardless. Inside ``torch.func`` transforms (``grad``, ``vmap``)
            the reference runs: the compiled operator has no functorch rules.
        p: 2 for the mean squared difference (default), 1 for the mean absolute difference (gradient
            :math:`\operatorname{sign}(a - b)`, 0 at :math:`a = b`).

    Returns:
        The (N, L) distances.

    Shape:
        - inputs[l], targets[l]: :math:`(N, C_l, H_l, W_l)`, or any :math:`(N, *)`
        - Output: :math:`(N, L)`

    Example:
        >>> import torch, perceptloss
        >>> a = [torch.ones(2, 4, 8, 8), torch.ones(2, 16, 4, 4)]
        >>> b = [torch.zeros(2, 4, 8, 8), torch.zeros(2, 16, 4, 4)]
        >>> perceptloss.feature_distance(a, b, [1.0, 0.5])
        tensor([[1.0000, 0.5000],
                [1.0000, 0.5000]])
    """
    inputs, targets = list(inputs), list(targets)
    p = _check_p(p)
    weights = _check_weights(weights, len(inputs))
    use = _ops.supports(inputs[0].device) if fused is None and inputs else bool(fused)
    if use and functorch_transform_active():
        use = False  # torch.func.grad / vmap: the operator has no functorch rules; the reference is the same math
    if fused and not _ops.supports(inputs[0].device if inputs else torch.device("cpu")):
        raise RuntimeError(_ops.unavailable_reason(inputs[0].device if inputs else torch.device("cpu")))
    if use:  # CUDA kernels pass a first-use check per process and device; fused=True runs them regardless
        use = probe.fused_usable(str(inputs[0].device)) or bool(fused)
    if not use:
        return feature_distance_reference(inputs, targets, weights, p)
    _check_features(inputs, targets, weights)
    return torch.ops.perceptloss.feature_distance(inputs, targets, weights, p)


def unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """(N, C, H, W) -> float32 (N, C, H, W) divided by (its L2 norm over C + eps) at each position.

    Same values as lpips' ``normalize_tensor``; where a position's norm is 0 the gradient is finite (a plain
    sqrt(0) backward gives NaN). float64 features stay float64. ``eps``: finite, >= 0.
    """
    eps = check_number("unit_normalize's eps", eps, minimum=0.0)
    f = features.to(accumulation_dtype(features.dtype))
    return f / (channel_norm(f) + eps)


def charbonnier_distance(
    inputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
    *, eps: float = 1e-3,
) -> torch.Tensor:
    """(N, L) weighted per-layer means of the Charbonnier penalty sqrt((a - b)**2 + eps**2) over C*H*W.

    A smooth L1 (its gradient (a - b) / sqrt((a - b)**2 + eps**2) is finite, and 0 at a = b); eps > 0. BasicSR's
    ``CharbonnierLoss(eps=e)`` writes sqrt(d**2 + e): it is ``eps = sqrt(e)`` here (its default 1e-12 is 1e-6).
    Computed in float32 (float64 for float64 features) in plain PyTorch: the fused operator has no such form.
    """
    inputs, targets = list(inputs), list(targets)
    weights = _check_weights(weights, len(inputs))
    eps = check_number("the Charbonnier eps", eps, positive=True)
    _check_features(inputs, targets, weights)
    acc = accumulation_dtype(inputs[0].dtype)
    cols = [
        w * (a.to(acc) - b.to(acc)).square().add_(eps * eps).sqrt_().flatten(1).mean(dim=1)
        for a, b, w in zip(inputs, targets, weights)
    ]
    return torch.stack(cols, dim=1)


def _check_channel_weights(channel_weights: Sequence[torch.Tensor] | None, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """None, or one floating (C_l,) tensor per layer."""
    if channel_weights is None:
        return None
    channel_weights = list(channel_weights)
    if len(channel_weights) != len(inputs):
        raise ValueError(f"got {len(channel_weights)} channel weight tensors for {len(inputs)} layers; give one (C_l,) "
                         "tensor per layer, or None for weight 1 on every channel")
    for l, (c, a) in enumerate(zip(channel_weights, inputs)):
        if not isinstance(c, torch.Tensor) or not c.is_floating_point() or c.dim() != 1 or c.shape[0] != a.shape[1]:
            got = f"{c.dtype} tensor of shape {tuple(c.shape)}" if isinstance(c, torch.Tensor) else type(c).__name__
            raise ValueError(f"layer {l}: channel weights must be a floating ({a.shape[1]},) tensor (one per channel of "
                             f"the features {tuple(a.shape)}), got a {got}")
    return channel_weights


def unit_feature_distance_reference(
    inputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
    channel_weights: Sequence[torch.Tensor] | None = None, weights: Sequence[float] | None = None, eps: float = 1e-10,
) -> torch.Tensor:
    r"""The maths of :func:`unit_feature_distance` in plain PyTorch (float32; float64 for float64): its oracle
    and fallback, differentiable by autograd."""
    inputs, targets = list(inputs), list(targets)
    weights = _check_weights(weights, len(inputs))
    _check_features(inputs, targets, weights)
    channel_weights = _check_channel_weights(channel_weights, inputs)
    cols = []
    for l, (a, b, w) in enumerate(zip(inputs, targets, weights)):
        squared = (unit_normalize(a, eps) - unit_normalize(b, eps)).square()
        if channel_weights is not None:
            squared = squared * channel_weights[l].to(squared.dtype).view(1, -1, *[1] * (a.dim() - 2))
        cols.append(float(w) * squared.sum(dim=1).reshape(a.shape[0], -1).mean(dim=1))
    return torch.stack(cols, dim=1)


def unit_feature_distance(
    inputs: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    channel_weights: Sequence[torch.Tensor] | None = None,
    weights: Sequence[float] | None = None,
    *,
    eps: float = 1e-10,
    fused: bool | None = None,
) -> torch.Tensor:
    r"""Per-sample, per-layer distances of the channel-unit-normalised features: LPIPS' distance.

    For layer :math:`l` with features :math:`a_l, b_l` of shape :math:`(N, C_l, *)` (``*``: :math:`P_l`
    positions), channel weights :math:`c_l` and weight :math:`w_l`, with :math:`u` the division by the L2 norm
    over channels plus ``eps`` at each position (:func:`unit_normalize`):

    .. math:: D[n, l] = \frac{w_l}{P_l} \sum_{p} \sum_{c} c_{l,c} \big(u(a_l[n])_{c,p} - u(b_l[n])_{c,p}\big)^2

    With LPIPS' heads as ``channel_weights`` this is LPIPS' per-layer term; without (weight 1 per channel) the
    "cosine" feature distance, :math:`2 (1 - \cos)` per position. On the CPU the fused operator reads a and b
    once (no normalised copy is made); its gradient is plain torch ops (differentiable again). Elsewhere the
    features are normalised in PyTorch and compared on the fused L2 operator (the channel weights' square roots
    folded in; non-negative channel weights) or, with ``fused=False``, entirely in PyTorch
    (:func:`unit_feature_distance_reference`). The result is float32 (float64 for float64 features).

    Args:
        inputs: the L input feature maps, each (N, C_l, ...) with the same N.
        targets: the L target feature maps, each of its input's shape, dtype and device.
        channel_weights: one (C_l,) tensor per layer, or None (1 for every channel).
        weights: one weight per layer (default 1 each).
        eps: added to each norm (lpips' 1e-10 by default); finite, >= 0.
        fused: as :func:`feature_distance`'s: None uses the compiled operator where it has a kernel, True
            requires one (a RuntimeError says how to build it), False runs the reference.

    Returns:
        The (N, L) distances.

    Example:
        >>> import torch, perceptloss
        >>> a, b = [torch.tensor([[[[3.0]], [[4.0]]]])], [torch.tensor([[[[4.0]], [[3.0]]]])]
        >>> perceptloss.functional.unit_feature_distance(a, b)   # 2 (1 - cos) = 2 (1 - 24/25)
        tensor([[0.0800]])
    """
    inputs, targets = list(inputs), list(targets)
    weights = _check_weights(weights, len(inputs))
    eps = check_number("unit_feature_distance's eps", eps, minimum=0.0)
    device = inputs[0].device if inputs else torch.device("cpu")
    use = fused is not False and not functorch_transform_active()
    if use and _ops.has_unit_kernel(device.type):
        _check_features(inputs, targets, weights)
        checked = _check_channel_weights(channel_weights, inputs)
        acc = accumulation_dtype(inputs[0].dtype)
        if checked is None:
            checked = [torch.ones(a.shape[1], dtype=acc, device=device) for a in inputs]
        return torch.ops.perceptloss.unit_feature_distance(inputs, targets, checked, weights, eps)
    checked = _check_channel_weights(channel_weights, inputs) if inputs else None
    foldable = checked is None or not torch.compiler.is_compiling() and all(bool((c >= 0).all()) for c in checked)
    if use and _ops.supports(device) and foldable:
        # normalised copies, the channel weights' square roots folded in; the L2 operator's mean over C*P times C
        na, nb = ([unit_normalize(f, eps) for f in fs] for fs in (inputs, targets))
        if checked is not None:
            roots = [c.to(f.dtype).sqrt().view(1, -1, *[1] * (f.dim() - 2)) for c, f in zip(checked, na)]
            na, nb = [f * r for f, r in zip(na, roots)], [f * r for f, r in zip(nb, roots)]
        return feature_distance(na, nb, [w * a.shape[1] for w, a in zip(weights, inputs)], fused=fused)
    if fused and _ops.supports(device) and not foldable:
        raise ValueError(f"fused=True cannot apply on {device.type}: its operator compares normalised features with the "
                         "channel weights' square roots folded in, and these have negative weights; pass fused=None")
    if fused:
        raise RuntimeError(_ops.unavailable_reason(device))
    return unit_feature_distance_reference(inputs, targets, checked, weights, eps)
