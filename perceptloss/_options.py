"""The options every loss shares, defined, documented and validated once: ``LossOptions``.

A loss's constructor lists only what *defines* that loss (its backbone, layers, weights, distance, ...) and
takes the common options as ``**options: Unpack[LossOptions]``: what the loss *accepts* (input range, channel
policy, input checks), what it *returns* (the reduction) and how it *runs* (dtype, memory format, the fused
operator, a shared module, activation checkpointing). Each option is one entry of ``LossOptions``::

    name: Annotated[<type>, Option(<default>, <kind>, <documentation>, <check>)]

From that one entry come the keyword's static type (``Unpack[LossOptions]``, PEP 692: IDEs and type checkers
list every option), its validation (``resolve_options``), the generated ``inspect.signature`` of every loss
and the "Options" section of its docstring (``help(FeatureLoss)``): adding a common option is one edit here
(plus the code that acts on it).
"""
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Mapping, TypedDict

import torch

from ._layout import MemoryFormat, check_memory_format
from ._validation import check_choice, check_input_range, suggest
from .channels import ChannelPolicy, ChannelReduction, Channels
from .hardware import resolve_dtype

Kind = Literal["accepts", "returns", "runs"]


@dataclass(frozen=True)
class Option:
    """One common option: its default, which kind it is, one line of documentation and its check.

    ``check(value)`` raises a ValueError/TypeError naming the option and saying what to pass, and returns the
    value to keep (e.g. ``input_range`` as two floats); None: checked together with another option.
    ``attr``: the attribute the loss keeps it in (default: the option's name).
    """

    default: Any
    kind: Kind
    doc: str
    check: Callable[[Any], Any] | None = None
    attr: str | None = None


def _flag(name: str, allow_none: bool = False) -> Callable[[Any], Any]:
    """A check for a bool option (``None`` too where ``allow_none``): no truthy strings or numbers."""
    allowed = "True, False or None" if allow_none else "True or False"

    def check(value: Any) -> Any:
        if isinstance(value, bool) or (allow_none and value is None):
            return value
        raise TypeError(f"{name} must be {allowed}, got {value!r}")

    return check


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        check_choice(name, value, choices)
        return value

    return check


def _check_dtype(value: Any) -> Any:
    resolve_dtype(value, "cpu")  # raises with the message naming dtype; the loss resolves it per device
    return value


def _check_memory_format(value: Any) -> Any:
    check_memory_format(value)
    return value


def _check_fused(value: Any) -> Any:
    from . import _ops

    _flag("fused", allow_none=True)(value)
    if value and not _ops.HAS_EXT:
        raise RuntimeError(_ops.unavailable_reason(torch.device("cpu")))
    return value


class LossOptions(TypedDict, total=False):
    """The keyword-only options of every loss (``FeatureLoss``, ``StyleLoss``, ``LPIPS``, ``DISTS``).

    Each entry's documentation is its ``Option``'s ``doc``; ``help()`` on a loss lists them with that loss's
    defaults.
    """

    input_range: Annotated[tuple[float, float], Option(
        (0.0, 1.0), "accepts",
        "the range of the images you pass, e.g. (0, 1), (-1, 1) or (0, 255); the weights' own preprocessing "
        "(ImageNet mean/std, Caffe's BGR 0-255 minus the mean pixel, ...) is applied after mapping from it.",
        check_input_range)]
    channels: Annotated[Channels | ChannelPolicy, Option(
        "rgb", "accepts",
        'how images that are not RGB reach the network: "rgb" (3 channels required), "replicate" (grey images '
        'copied to R, G, B), "per_channel" (each channel copied to RGB, its terms averaged), "groups" (each 3 '
        "channels one RGB image), or a perceptloss.ChannelPolicy; see perceptloss.channels.")]
    channel_reduction: Annotated[ChannelReduction, Option(
        "mean", "accepts",
        '"mean" over a sample\'s channel groups, or "none": the per-sample output gets a group axis, (N, G) '
        'instead of (N,) ("per_channel" and "groups" only).')]
    check_range: Annotated[Literal["raise", "warn", "off"], Option(
        "raise", "accepts",
        '"raise", "warn" or "off" for images whose values clearly do not fit input_range.',
        _choice("check_range", ("raise", "warn", "off")))]
    check_inputs: Annotated[bool, Option(
        True, "accepts",
        "check types, shapes, devices, NaN/Inf and the range of every input (one host synchronisation per "
        "call); False skips them.",
        _flag("check_inputs"))]
    reduction: Annotated[Literal["mean", "sum", "none"], Option(
        "mean", "returns",
        '"mean" or "sum" over the batch, or "none" for one value per sample, (N,).',
        _choice("reduction", ("mean", "sum", "none")))]
    dtype: Annotated[torch.dtype | Literal["auto"] | None, Option(
        None, "runs",
        'the network\'s dtype: None (float32, or what .to() made it), a floating torch.dtype, or "auto" '
        "(bfloat16 where the device computes it natively, float32 elsewhere: perceptloss.auto_dtype). Images "
        "of any floating dtype are cast to it; distances accumulate in float32. loss.to(dtype) also works.",
        _check_dtype, attr="_dtype_option")]
    memory_format: Annotated[MemoryFormat | torch.memory_format, Option(
        "auto", "runs",
        'the layout of the network\'s activations: "auto" (channels_last on the CPU, and on CUDA for 16-bit '
        'dtypes), "channels_last" or "contiguous" (or the torch.memory_format); results and the gradient\'s '
        "layout do not change. loss.to(memory_format=torch.channels_last) sets it too.",
        _check_memory_format)]
    fused: Annotated[bool | None, Option(
        None, "runs",
        "None uses the compiled distance operator where it is built for the device (on CUDA once it has passed "
        "its first-use check there, see perceptloss.backends.probe), True requires it, False uses plain PyTorch.",
        _check_fused)]
    share_module: Annotated[bool, Option(
        False, "runs",
        "with an nn.Module backbone, read that module itself at every call (its current weights and mode, e.g. "
        "a discriminator for feature matching) instead of a private frozen copy.",
        _flag("share_module"))]
    checkpoint: Annotated[bool, Option(
        False, "runs",
        "recompute the network's activations in the backward pass (torch.utils.checkpoint, one segment per "
        "tapped layer): the same gradient, for a fraction of the memory and about one more forward pass.",
        _flag("checkpoint"))]


#: name -> (annotation, Option), in declaration order.
OPTIONS: dict[str, tuple[Any, Option]] = {
    name: (typing.get_args(hint)[0], typing.get_args(hint)[1])
    for name, hint in typing.get_type_hints(LossOptions, include_extras=True).items()
}


def option_defaults(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Every option's default, with a loss's own ``overrides`` (e.g. LPIPS' ``reduction="none"``)."""
    return {name: overrides.get(name, opt.default) for name, (_, opt) in OPTIONS.items()}


def resolve_options(owner: type, options: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The checked value of every option: ``options`` given to ``owner``'s constructor over the defaults.

    An unknown keyword is a TypeError naming the closest ones and every keyword ``owner`` takes. Returns
    {attribute: value}.
    """
    for name in options:
        if name not in OPTIONS:
            valid = list(inspect.signature(owner).parameters)
            raise TypeError(
                f"{owner.__name__}() got an unexpected keyword argument {name!r}.{suggest(name, valid)} "
                f"Its keyword arguments: {', '.join(valid)}"
            )
    values = {**option_defaults(overrides), **options}
    out = {}
    for name, (_, opt) in OPTIONS.items():
        value = values[name]
        out[opt.attr or name] = opt.check(value) if opt.check is not None else value
    return out


def _annotation_text(annotation: Any) -> str:
    """An annotation as one writes it: ``torch.dtype | Literal['auto'] | None``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_annotation_text(a) for a in args)
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_annotation_text(a) for a in args)}]"
    if isinstance(annotation, type):
        module = annotation.__module__
        prefix = "torch." if module.startswith("torch") else "perceptloss." if module.startswith("perceptloss") else ""
        return prefix + annotation.__name__
    return repr(annotation)


def options_signature(init: Callable[..., None], overrides: Mapping[str, Any]) -> inspect.Signature:
    """``init``'s signature with its ``**options`` replaced by one keyword-only parameter per common option."""
    sig = inspect.signature(init)
    params = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    if len(params) == len(sig.parameters):
        return sig  # no **options: the loss takes no common option through this constructor
    own = {p.name for p in params}
    defaults = option_defaults(overrides)
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults[name],
                          annotation=_annotation_text(annotation))
        for name, (annotation, _) in OPTIONS.items() if name not in own
    ]
    return sig.replace(parameters=params)


_KIND_TITLES = {"accepts": "what it accepts", "returns": "what it returns", "runs": "how it runs"}


def options_doc(overrides: Mapping[str, Any], indent: str = "    ") -> str:
    """The "Options" docstring section: every common option, its default for this loss and its documentation."""
    defaults = option_defaults(overrides)
    lines = ["Options (keyword-only, common to every loss; perceptloss.LossOptions):"]
    for kind, title in _KIND_TITLES.items():
        lines.append(f"{indent}{title}:")
        for name, (annotation, opt) in OPTIONS.items():
            if opt.kind == kind:
                head = f"{name} ({_annotation_text(annotation)}, default {defaults[name]!r}): {opt.doc}"
                lines += textwrap.wrap(head, 110, initial_indent=indent * 2, subsequent_indent=indent * 3)
    return "\n".join(lines)


def with_options_doc(doc: str | None, overrides: Mapping[str, Any]) -> str | None:
    """``doc`` (a class docstring) with the options section inserted before its "Shape:" section (or appended)."""
    if not doc:
        return doc
    text = inspect.cleandoc(doc)
    section = options_doc(overrides)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() in ("Shape:", "Example:", "Examples:") and not line.startswith(" "):
            return "\n".join(lines[:i] + section.splitlines() + [""] + lines[i:])
    return f"{text}\n\n{section}"


__all__ = ["LossOptions", "Option", "OPTIONS", "resolve_options", "options_signature", "options_doc"]
