"""Input checks with error messages that say what to do.

Every check here runs on the host; the value checks (NaN/Inf/range) cost one device synchronisation per call
and are skipped while ``torch.compile`` traces.
"""
from __future__ import annotations

import difflib
from typing import Iterable, Sequence

import torch


def suggest(name: str, valid: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix for ``name`` among ``valid`` ('' when nothing is close)."""
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def unknown_name_error(kind: str, name: str, valid: Sequence[str]) -> KeyError:
    """A KeyError naming the unknown ``name``, the closest matches and every valid choice."""
    return KeyError(
        f"unknown {kind} {name!r}.{suggest(name, valid)} Valid {kind}s: {', '.join(valid)}"
    )


def check_image_pair(
    input: torch.Tensor, target: torch.Tensor, channels: int = 3, allow_dtype_mismatch: bool = False
) -> None:
    """Shape, dtype and device checks for a pair of image batches of shape (N, C, H, W).

    ``allow_dtype_mismatch``: under autocast a bf16 model output next to a float32 target is expected (the
    network casts both); otherwise differing dtypes are an error.
    """
    for role, t in (("input", input), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{role} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4 or t.shape[1] != channels:
            raise ValueError(
                f"{role} must be a batch of images of shape (N, {channels}, H, W), got {tuple(t.shape)}; "
                f"add a batch dimension with x.unsqueeze(0) or repeat grey images to {channels} channels"
            )
        if not t.is_floating_point():
            raise TypeError(
                f"{role} must be a floating-point tensor, got {t.dtype}; convert uint8 images with "
                f"x.float() / 255 and declare input_range=(0, 1)"
            )
    if input.shape != target.shape:
        raise ValueError(f"input and target shapes differ: {tuple(input.shape)} vs {tuple(target.shape)}")
    if input.device != target.device:
        raise ValueError(
            f"input is on {input.device} but target is on {target.device}; move both to the same device"
        )
    if input.dtype != target.dtype and not allow_dtype_mismatch:
        raise TypeError(
            f"input is {input.dtype} but target is {target.dtype}; cast one of them (e.g. target.to(input.dtype)) "
            f"or run under torch.autocast"
        )


def check_values(
    tensors: dict[str, torch.Tensor], input_range: tuple[float, float] | None, on_range: str
) -> None:
    """Raise on NaN/Inf; raise or warn (``on_range``) on values clearly outside ``input_range``.

    "Clearly outside" means beyond the declared range by more than half its width: [0, 255] images declared as
    (0, 1), or [-1, 1] images declared as (0, 1), are caught; a decoder overshooting by a few percent is not.
    """
    if torch.compiler.is_compiling():
        return
    stats = torch.stack([v for t in tensors.values() for v in (t.detach().amin(), t.detach().amax())])
    values = stats.float().tolist()  # one synchronisation for all tensors
    for i, (role, _) in enumerate(tensors.items()):
        lo, hi = values[2 * i], values[2 * i + 1]
        if lo != lo or hi != hi:
            raise ValueError(f"{role} contains NaN; check the model producing it (e.g. with torch.autograd.detect_anomaly())")
        if lo in (float("inf"), float("-inf")) or hi in (float("inf"), float("-inf")):
            raise ValueError(f"{role} contains Inf; check the model producing it or clamp it")
        if input_range is None or on_range == "off":
            continue
        a, b = input_range
        margin = 0.5 * (b - a)
        if lo < a - margin or hi > b + margin:
            msg = (
                f"{role} values lie in [{lo:.4g}, {hi:.4g}] but input_range={tuple(input_range)} was declared; "
                f"pass images in that range or declare the range they are in (e.g. input_range=(-1, 1) or "
                f"(0, 255)), or set check_range='warn'/'off'"
            )
            if on_range == "raise":
                raise ValueError(msg)
            import warnings

            warnings.warn(msg, stacklevel=3)
