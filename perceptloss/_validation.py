"""Input checks with error messages that say what to do.

The shape/dtype/device checks run on the host (at trace time under ``torch.compile``). The value checks
(NaN/Inf/range) cost one device synchronisation per call; under ``torch.compile`` they run as the opaque,
side-effecting operator ``perceptloss::_check_values``, so they stay in compiled graphs (``fullgraph=True``
included) and raise or warn with the same messages as in eager mode.
"""
from __future__ import annotations

import difflib
import warnings
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


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no argument (CUDA autocast only)
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def check_image_pair(
    input: torch.Tensor, target: torch.Tensor, channels: int = 3, allow_dtype_mismatch: bool | None = None
) -> None:
    """Type, shape, dtype and device checks for a pair of image batches of shape (N, C, H, W).

    ``allow_dtype_mismatch``: under autocast a bf16 model output next to a float32 target is expected (the
    network casts both); otherwise differing dtypes are an error. None (default): allowed when autocast is
    enabled for the input's device.
    """
    for role, t in (("input", input), ("target", target)):
        if not isinstance(t, torch.Tensor):
            hint = (
                f"; convert it with torch.from_numpy(x), e.g. torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 "
                f"for (N, H, W, {channels}) uint8 images"
                if type(t).__module__ == "numpy"
                else ""
            )
            raise TypeError(
                f"{role} must be a torch.Tensor of shape (N, {channels}, H, W), floating point, in input_range; "
                f"got {type(t).__module__}.{type(t).__name__}{hint}"
            )
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
    if input.shape[0] == 0:
        raise ValueError(
            f"input and target are an empty batch (shape {tuple(input.shape)}): skip empty batches before "
            f"calling the loss (its mean over no samples is undefined)"
        )
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise ValueError(f"input and target images are empty (shape {tuple(input.shape)}); pass images of size H, W > 0")
    if input.device != target.device:
        raise ValueError(
            f"input is on {input.device} but target is on {target.device}; move both to the same device"
        )
    if allow_dtype_mismatch is None:
        allow_dtype_mismatch = _autocast_enabled(input.device.type)
    if input.dtype != target.dtype and not allow_dtype_mismatch:
        raise TypeError(
            f"input is {input.dtype} but target is {target.dtype}; cast one of them (e.g. target.to(input.dtype)) "
            f"or run under torch.autocast"
        )


def _check_values_eager(
    tensors: Sequence[torch.Tensor], roles: Sequence[str], input_range: tuple[float, float] | None, on_range: str
) -> None:
    stats = torch.stack([v for t in tensors for v in (t.detach().amin(), t.detach().amax())])
    values = stats.float().tolist()  # one synchronisation for all tensors
    for i, role in enumerate(roles):
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
            warnings.warn(msg, stacklevel=4)


def _register_compiled_check() -> bool:
    """Define ``perceptloss::_check_values``: the value checks as an operator torch.compile keeps.

    It has no output, so it is registered as effectful (like ``aten::_linalg_check_errors``): otherwise the
    compiler removes it as dead code. Tagged cudagraph-unsafe (it synchronises). False where this torch
    version lacks the needed APIs; compiled code then skips the value checks (as before issue 13).
    """
    try:
        from torch._library.effects import EffectType

        tags = (torch.Tag.cudagraph_unsafe,) if hasattr(torch.Tag, "cudagraph_unsafe") else ()

        @torch.library.custom_op("perceptloss::_check_values", mutates_args=(), tags=tags)
        def _op(tensors: list[torch.Tensor], roles: str, lo: float, hi: float, has_range: bool, on_range: str) -> None:
            _check_values_eager(tensors, roles.split(","), (lo, hi) if has_range else None, on_range)

        @_op.register_fake
        def _fake(tensors, roles, lo, hi, has_range, on_range) -> None:
            return None

        torch.library._register_effectful_op("perceptloss::_check_values", EffectType.ORDERED)
    except Exception:  # pragma: no cover - older torch
        return False
    return True


_COMPILED_CHECK = _register_compiled_check()


def check_values(
    tensors: dict[str, torch.Tensor], input_range: tuple[float, float] | None, on_range: str
) -> None:
    """Raise on NaN/Inf; raise or warn (``on_range``) on values clearly outside ``input_range``.

    "Clearly outside" means beyond the declared range by more than half its width: [0, 255] images declared as
    (0, 1), or [-1, 1] images declared as (0, 1), are caught; a decoder overshooting by a few percent is not.
    Works eagerly and inside ``torch.compile`` (there through the operator ``perceptloss::_check_values``).
    """
    roles, values = list(tensors), [t.detach() for t in tensors.values()]
    if torch.compiler.is_compiling():
        if _COMPILED_CHECK:
            lo, hi = input_range if input_range is not None else (0.0, 0.0)
            torch.ops.perceptloss._check_values(values, ",".join(roles), float(lo), float(hi), input_range is not None, on_range)
        return
    _check_values_eager(values, roles, input_range, on_range)


def cast_to_network_dtype(images: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
    """``images`` in the floating dtype of ``network``'s parameters, so fp16/fp64 images just work.

    Without autocast a convolution refuses an input whose dtype differs from its weights ("Input type and bias
    type should be the same"); under autocast only float64 needs it (autocast leaves float64 alone). The cast
    is differentiable: gradients come back in the images' own dtype.
    """
    dtype = next((p.dtype for p in network.parameters() if p.is_floating_point()), None)
    if dtype is None or images.dtype == dtype:
        return images
    if _autocast_enabled(images.device.type) and images.dtype != torch.float64:
        return images
    return images.to(dtype)
