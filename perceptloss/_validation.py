"""Input checks with error messages that say what to do.

The shape/dtype/device checks run on the host (at trace time under ``torch.compile``). The value checks
(NaN/Inf/range) cost one device synchronisation per call; under ``torch.compile`` they run as the opaque,
side-effecting operator ``perceptloss::_check_values``, so they stay in compiled graphs (``fullgraph=True``
included) and raise or warn with the same messages as in eager mode.
"""
from __future__ import annotations

import difflib
import math
import warnings
from typing import Iterable, Sequence

import torch

from ._dtypes import autocast_enabled


class UnknownNameError(KeyError, ValueError):
    """An unknown name (backbone, layer, preset, weights key, metric, ...): the message names it, the closest
    known names and where to list them all.

    Both a ``KeyError`` (a failed lookup) and a ``ValueError`` (a bad argument value); ``str()`` is the message
    itself, not ``KeyError``'s quoted form.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def closest(name: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` names of ``valid`` closest to ``name``: the one "did you mean" rule of the package.

    First a name equal to ``name`` but for case (``DISTS`` -> ``dists``), then the names that ``name`` begins, in
    the order given, leaving out one that extends another such name (``lpips`` -> ``lpips-alex``, ``lpips-vgg``,
    not ``lpips-alex-v0.0``; ``vgg19`` -> ``vgg19:dfc123``), then ``difflib``'s close matches (ratio >= 0.6).
    Case-insensitive.
    """
    choices: dict[str, str] = {}
    for v in valid:
        choices.setdefault(str(v).lower(), str(v))
    key = str(name).lower()
    same = [key] if key in choices else []  # DISTS -> dists
    begun = [c for c in choices if key and c.startswith(key) and c != key]
    begun = [c for c in begun if not any(o != c and c.startswith(o) for o in begun + same)]
    similar = difflib.get_close_matches(key, list(choices), n=n, cutoff=0.6)
    return [choices[c] for c in dict.fromkeys(same + begun + similar)][:n]


def suggest(name: str, valid: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix for ``name`` among ``valid`` (:func:`closest`; '' when nothing is close)."""
    close = closest(name, valid)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


#: An unknown-name error lists every valid name up to this many; more are left to the listing it names.
LISTED = 12


def unknown_name_error(kind: str, name: str, valid: Sequence[str], listing: str | None = None) -> UnknownNameError:
    """An :class:`UnknownNameError` naming the unknown ``name`` and the closest matches, then every valid
    choice, or (more than :data:`LISTED` with a ``listing``) the command or call that lists them."""
    known = (f"{listing} lists the {len(valid)} known" if listing and len(valid) > LISTED
             else f"The {len(valid)} known: {', '.join(valid)}")
    return UnknownNameError(f"unknown {kind} {name!r}.{suggest(name, valid)} {known}")


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be {' or '.join(repr(c) for c in choices)}, got {value!r}")


def check_number(name: str, value: object, *, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite float, or a ValueError naming ``name``; ``positive``: > 0; ``minimum``: >= it.

    The rule for every float argument of the library: NaN and +-Inf are refused (an infinite eps or weight
    makes every value infinite or NaN, silently), and so are values outside what the argument means.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and not number > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    return number


def check_input_range(input_range: object) -> tuple[float, float]:
    """``input_range`` as two finite floats (low, high) with high > low, or a ValueError saying what to pass."""
    try:
        if isinstance(input_range, (str, bytes)):
            raise TypeError
        lo, hi = (float(v) for v in input_range)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"input_range must be a pair (low, high) such as (0, 1) or (-1, 1), got {input_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not hi > lo:
        raise ValueError(
            f"input_range must be two finite numbers (low, high) with high > low, such as (0, 1), (-1, 1) or "
            f"(0, 255); got {input_range!r}"
        )
    return lo, hi


def check_layer_weights(layers: Sequence[str], layer_weights: object) -> list[float]:
    """One finite, non-negative float per layer, from a sequence in layer order or a {layer: weight} dict."""
    if layer_weights is None:
        return [1.0] * len(layers)
    if isinstance(layer_weights, dict):
        unknown = [k for k in layer_weights if k not in layers]
        missing = [k for k in layers if k not in layer_weights]
        if unknown or missing:
            raise ValueError(
                f"layer_weights {dict(layer_weights)} do not match the layers {list(layers)}"
                f"{' (not among the layers: ' + str(unknown) + ')' if unknown else ''}"
                f"{' (no weight for: ' + str(missing) + ')' if missing else ''}; give a weight for each layer, or "
                f"leave layers unset to take them from the dict"
            )
        values = [layer_weights[k] for k in layers]
    elif isinstance(layer_weights, (int, float)) or (isinstance(layer_weights, torch.Tensor) and layer_weights.dim() == 0):
        raise TypeError(
            f"layer_weights={layer_weights!r} is one number: give one weight per layer ({len(layers)} for "
            f"{list(layers)}), e.g. layer_weights=[{', '.join(['1.0'] * len(layers))}], or a dict {{layer: weight}}; "
            f"to scale the whole loss, multiply its value"
        )
    else:
        values = list(layer_weights)  # type: ignore[call-overload]
        if len(values) != len(layers):
            raise ValueError(f"got {len(values)} layer_weights for {len(layers)} layers {tuple(layers)}")
    out = []
    for name, v in zip(layers, values):
        try:
            w = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"the weight of layer {name} must be a number, got {v!r}") from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"the weight of layer {name} is {w}: layer weights must be finite and >= 0")
        out.append(w)
    return out


def check_same_batch(input: torch.Tensor, target: torch.Tensor) -> None:
    """Input and target have one shape and at least one sample (images and volumes alike)."""
    if input.shape != target.shape:
        raise ValueError(f"input and target shapes differ: {tuple(input.shape)} vs {tuple(target.shape)}")
    if input.shape[0] == 0:
        raise ValueError(
            f"input and target are an empty batch (shape {tuple(input.shape)}): skip empty batches before "
            f"calling the loss (its mean over no samples is undefined)"
        )


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
        if t.layout != torch.strided:
            raise TypeError(f"{role} is a {t.layout} tensor; pass dense images: {role}.to_dense()")
        if t.dim() == 5:
            raise ValueError(
                f"{role} has shape {tuple(t.shape)}: (N, C, D, H, W) volumes are not images; compare them slice by "
                f"slice with perceptloss.VolumeLoss(<this loss built with reduction='none'>) (a 2.5D loss over "
                f"the 2D slices along each axis), or pass (N, {channels}, H, W) images"
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
    check_same_batch(input, target)
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise ValueError(f"input and target images are empty (shape {tuple(input.shape)}); pass images of size H, W > 0")
    if input.device != target.device:
        raise ValueError(
            f"input is on {input.device} but target is on {target.device}; move both to the same device"
        )
    if allow_dtype_mismatch is None:
        allow_dtype_mismatch = autocast_enabled(input.device.type)
    if input.dtype != target.dtype and not allow_dtype_mismatch:
        raise TypeError(
            f"input is {input.dtype} but target is {target.dtype}; cast one of them (e.g. target.to(input.dtype)) "
            f"or run under torch.autocast"
        )


class InputRangeWarning(UserWarning):
    """Images whose values suggest that ``input_range`` was declared wrongly, where real images can look so too."""


#: (kind, input_range, role) already warned about: a check that can be wrong warns once per declared range.
_WARNED_RANGE: set[tuple[str, tuple[float, float], str]] = set()


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
        found = range_mismatch(lo, hi, input_range, role)
        if found is None:
            continue
        kind, msg = found
        if kind == "outside":  # cannot be wrong about a real image: raises by default
            if on_range == "raise":
                raise ValueError(msg)
            warnings.warn(msg, stacklevel=4)
            continue
        key = (kind, tuple(input_range), role)  # can be wrong: a warning, once per declared range
        if key not in _WARNED_RANGE:
            _WARNED_RANGE.add(key)
            warnings.warn(msg, InputRangeWarning, stacklevel=4)


def range_mismatch(lo: float, hi: float, input_range: tuple[float, float], role: str) -> tuple[str, str] | None:
    """What may be wrong with images whose values span [lo, hi] for the declared ``input_range``: (kind,
    message), or None.

    The rule: a check that cannot be wrong about a real image may raise; one that can be wrong warns.

    - "outside": values beyond the declared range by more than half its width ([0, 255] images declared as
      (0, 1), [-1, 1] images declared as (0, 1)). No image in the declared range has such values, so this
      cannot be wrong about one: it raises under ``check_range="raise"`` (the default), warns under "warn".
      (A decoder overshooting by a few percent is well within the margin.)
    - "sliver": all values within the lowest 1% of a wide range ([0, 1] images declared as (0, 255)?), and
      "upper-half": no value in the lower half of a symmetric range while spanning a quarter of it ([0, 1]
      images declared as (-1, 1)?). These guess a mistake from the values alone, and real images look like
      that too (a near-black frame in 0-255 with values <= 2, a bright sky in [-1, 1] with values 0.1-1):
      they only warn (``InputRangeWarning``, once per declared range and role), under "raise" and "warn".
      A constant image is never flagged by them.

    ``check_range="off"`` turns every range check off.
    """
    a, b = input_range
    width = b - a
    if lo < a - 0.5 * width or hi > b + 0.5 * width:
        return "outside", (
            f"{role} values lie in [{lo:.4g}, {hi:.4g}] but input_range={tuple(input_range)} was declared; "
            f"pass images in that range or declare the range they are in (e.g. input_range=(-1, 1) or "
            f"(0, 255)), or set check_range='warn'/'off' if these values are intended"
        )
    quiet = "shown once per declared range; set check_range='off' if these images are as intended"
    if hi > lo and width >= 10 and lo >= a - 0.01 * width and hi <= a + 0.01 * width:
        return "sliver", (
            f"{role} values lie in [{lo:.4g}, {hi:.4g}], within the lowest 1% of the declared "
            f"input_range={tuple(input_range)}: images in [0, 1] declared as (0, 255)? If so, declare the range "
            f"they are in (input_range=(0, 1)); a very dark image looks like this too ({quiet})"
        )
    if a < 0 < b and abs(a + b) <= 1e-6 * width and lo >= 0 and hi - lo >= 0.25 * width:
        return "upper-half", (
            f"{role} values lie in [{lo:.4g}, {hi:.4g}]: not one value in the lower half of the declared "
            f"input_range={tuple(input_range)}: images in [0, {b:g}] declared as ({a:g}, {b:g})? If so, declare "
            f"the range they are in (e.g. input_range=(0, 1)); a bright image looks like this too ({quiet})"
        )
    return None


def _register_compiled_check() -> bool:
    """Define ``perceptloss::_check_values``: the value checks as an operator torch.compile keeps.

    It has no output, so it is registered as effectful (like ``aten::_linalg_check_errors``): otherwise the
    compiler removes it as dead code. Tagged cudagraph-unsafe (it synchronises). False where this torch
    version lacks the needed APIs; compiled code then skips the value checks.
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
    except Exception as e:  # pragma: no cover - older torch
        global _COMPILED_CHECK_MISSING
        _COMPILED_CHECK_MISSING = f"{type(e).__name__}: {e}"
        return False
    return True


_COMPILED_CHECK_MISSING = ""
_COMPILED_CHECK = _register_compiled_check()
_WARNED_COMPILED = False


def _warn_compiled_check_missing() -> None:
    global _WARNED_COMPILED
    if _WARNED_COMPILED:
        return
    _WARNED_COMPILED = True
    warnings.warn(
        f"torch {torch.__version__} lacks the APIs perceptloss uses to keep its NaN/Inf/range checks inside "
        f"torch.compile ({_COMPILED_CHECK_MISSING}); compiled calls skip them. Run one eager call to check your "
        f"inputs, or upgrade torch (>= 2.4)",
        stacklevel=4,
    )


def check_values(
    tensors: dict[str, torch.Tensor], input_range: tuple[float, float] | None, on_range: str
) -> None:
    """Raise on NaN/Inf; raise or warn (``on_range``) on values clearly outside ``input_range``; warn where
    the values only suggest a wrongly declared range (see ``range_mismatch`` for the rule).

    "Clearly outside" means beyond the declared range by more than half its width: [0, 255] images declared as
    (0, 1), or [-1, 1] images declared as (0, 1), are caught; a decoder overshooting by a few percent is not.
    Works eagerly and inside ``torch.compile`` (there through the operator ``perceptloss::_check_values``).
    """
    roles, values = list(tensors), [t.detach() for t in tensors.values()]
    if any(v.device.type == "meta" for v in values):
        return  # meta tensors have no values (shape propagation only)
    if any(torch._C._functorch.is_batchedtensor(v) for v in values):
        return  # under torch.func.vmap a value cannot leave the device per sample: check the batch before vmap
    if torch.compiler.is_compiling():
        if not _COMPILED_CHECK:
            _warn_compiled_check_missing()
        else:
            lo, hi = input_range if input_range is not None else (0.0, 0.0)
            torch.ops.perceptloss._check_values(values, ",".join(roles), float(lo), float(hi), input_range is not None, on_range)
        return
    _check_values_eager(values, roles, input_range, on_range)
