"""The metric table: every metric name perceptloss builds, for Python (``create_metric``) and ``perceptloss score``.

A metric is a loss module with ``reduction="none"``: (N,) values for (N, 3, H, W) image pairs in [0, 1]. The
command line's ``--metric NAME`` and ``create_metric(NAME)`` read this one table, so a name means the same loss
(the same ``.signature``) in both.

Built-in names:

- ``lpips-alex``, ``lpips-vgg``, ``lpips-squeeze``: LPIPS v0.1; ``-v0.0`` appended (``lpips-alex-v0.0``): the
  first release.
- ``dists``: DISTS.
- ``stlpips-alex``, ``stlpips-vgg``: ST-LPIPS, shift-tolerant LPIPS (``LPIPS(net, variant="shift_tolerant")``).
- ``fdl``: FDL, the frequency distribution loss (``perceptloss.fdl``; images of at least 80 x 80).
- ``<backbone>:<preset or comma-separated layers>``: a FeatureLoss, e.g. ``vgg19:dfc123`` or
  ``vgg16:relu1_2,relu2_2``; ``timm:<model>:<layers>`` for a timm backbone (the model name may hold dots).
- ``<package.module>:<factory>``: a metric of your own: the module is imported and ``factory`` called.

How a name is resolved, first match wins:

1. a name registered exactly (the built-in names above and ``register_metric``'s);
2. the name patterns of ``register_metric`` entries, in registration order;
3. ``<backbone>:<layers>`` when the part before the last colon is a registered backbone
   (``perceptloss.list_backbones()``) or the name starts with a prefixed family such as ``timm:``;
4. ``<module>:<attribute>`` (Python identifiers joined by dots) when the module path holds a dot, or is a
   top-level module that Python can import: a factory. A backbone name therefore shadows a top-level module of
   the same name (``vgg19:make`` is a FeatureLoss name); write the factory's module with its package.

A factory is called with no arguments, or with the keyword arguments of ``create_metric`` that it accepts
(``weights``, ``dtype`` and any others); it must return an ``nn.Module`` that gives one value per image pair,
which is checked once on two random 64x64 pairs.
"""
from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .dists import DISTS
from .fdl import FDL
from .loss import FeatureLoss
from .lpips import LPIPS, LPIPS_NETS
from .lpips_heads import VERSIONS
from ._validation import suggest
from .registry import PRESETS, list_backbones, list_layers, resolvers


class MetricError(ValueError):
    """A metric name that cannot be built: unknown, or a factory that fails to import or returns the wrong thing.

    The message names the metric and says what to do.
    """


@dataclass(frozen=True)
class MetricEntry:
    """One row of the metric table.

    Args:
        name: the metric's name (``"lpips-vgg"``), or for a pattern entry the form shown by ``list_metrics``
            (``"<backbone>:<preset or layers>"``).
        build: returns the loss module, with ``reduction="none"``. Called with the keyword arguments of
            :func:`create_metric` that it accepts (``weights``, ``dtype``, ...); a pattern entry's ``build``
            takes the requested name first: ``build(name, **kwargs)``.
        lower_is_better: True for distances (every built-in metric).
        description: one line for ``list_metrics`` and ``perceptloss score --help``.
        matches: for a pattern entry, whether it builds a requested name; None for a single name.
    """

    name: str
    build: Callable[..., nn.Module]
    lower_is_better: bool = True
    description: str = ""
    matches: Callable[[str], bool] | None = None


_ENTRIES: dict[str, MetricEntry] = {}
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_FACTORY = re.compile(rf"^({_IDENT}(?:\.{_IDENT})*):({_IDENT}(?:\.{_IDENT})*)$")
#: The per-sample check runs the metric once on two pairs of this shape.
PROBE_SHAPE = (2, 3, 64, 64)


def register_metric(entry: MetricEntry, *, overwrite: bool = False) -> MetricEntry:
    """Add ``entry`` to the table: ``create_metric`` and ``perceptloss score --metric`` then accept its name.

    Args:
        entry: the metric.
        overwrite: replace an entry already registered under ``entry.name`` (else a ValueError).

    Returns:
        ``entry`` itself.

    Example:
        >>> import perceptloss
        >>> from perceptloss.metric_table import MetricEntry, register_metric
        >>> def vgg16_l1(**kw):
        ...     return perceptloss.FeatureLoss("vgg16", "lpips", distance="l1", reduction="none", **kw)
        >>> _ = register_metric(MetricEntry("vgg16-l1", vgg16_l1, description="L1 of LPIPS' VGG16 layers"),
        ...                     overwrite=True)
        >>> perceptloss.create_metric("vgg16-l1", weights=None).distance
        'l1'
    """
    if not isinstance(entry, MetricEntry):
        raise TypeError(f"register_metric takes a perceptloss.metric_table.MetricEntry, got {type(entry).__name__}")
    bad = not isinstance(entry.name, str) or not entry.name
    if bad or (entry.matches is None and re.search(r"[\s=]", entry.name)):
        raise ValueError(f"a metric name is a non-empty string without spaces or '=' (--weights NAME=FILE "
                         f"splits at the first '='), got {entry.name!r}")
    if not callable(entry.build) or (entry.matches is not None and not callable(entry.matches)):
        raise TypeError(f"metric {entry.name!r}: build (and matches, when given) must be callable")
    if entry.name in _ENTRIES and not overwrite:
        raise ValueError(f"metric {entry.name!r} is already registered; pass overwrite=True to replace it")
    _ENTRIES[entry.name] = entry
    return entry


def list_metrics(pattern: str = "*") -> list[str]:
    """The table's names matching the glob ``pattern``, in table order; pattern entries in their ``<...>`` form.

    Example:
        >>> import perceptloss
        >>> perceptloss.list_metrics("lpips-*")
        ['lpips-alex', 'lpips-alex-v0.0', 'lpips-vgg', 'lpips-vgg-v0.0', 'lpips-squeeze', 'lpips-squeeze-v0.0']
    """
    return [n for n in _ENTRIES if fnmatch.fnmatchcase(n, pattern)]


def get_metric(name: str) -> MetricEntry:
    """The entry that builds metric ``name`` (the resolution order is in this module's documentation).

    An unknown name raises a :class:`MetricError` that lists the table and suggests the closest name.

    Example:
        >>> from perceptloss.metric_table import get_metric
        >>> get_metric("vgg19:dfc123").name
        '<backbone>:<preset or layers>'
    """
    if not isinstance(name, str):
        raise TypeError(f"a metric name is a string, got {type(name).__name__}")
    if name in _ENTRIES:  # a name, or a pattern entry's own <...> form
        return _ENTRIES[name]
    patterns = [e for e in _ENTRIES.values() if e.matches is not None]
    user = [e for e in patterns if not _builtin(e)]
    for entry in user + [e for e in patterns if _builtin(e)]:
        if entry.matches(name):
            return entry
    raise _unknown(name)


def create_metric(name: str, *, weights: str | Path | None = "default", dtype: Any = None, **kwargs: Any) -> nn.Module:
    """The loss module of metric ``name`` with ``reduction="none"``: (N,) values for (N, 3, H, W) pairs.

    The module ``perceptloss score --metric NAME`` uses (the same ``.signature``); pyiqa's ``create_metric``
    for perceptloss' metrics.

    Args:
        name: a name of :func:`list_metrics`: ``"lpips-vgg"``, ``"dists"``, ``"vgg19:dfc123"``,
            ``"timm:<model>:<layers>"``, a :func:`register_metric` name, or ``"package.module:factory"``.
        weights: the trunk's weights, as the losses take them: "default", a weight entry name, a file, or None
            (a random trunk: tests and examples only).
        dtype: the network's dtype (the losses' ``dtype`` option: None, a torch.dtype or "auto"; "auto" is a
            preference: a factory of yours without a ``dtype`` parameter is built as it is).
        **kwargs: more keyword arguments for the loss (e.g. ``heads=`` for LPIPS, ``input_range=(-1, 1)``); not
            ``reduction``, which is "none".

    Raises:
        MetricError: an unknown name (with the closest names), or a factory that cannot be imported, is not
            callable, does not take the arguments given or does not return a per-sample metric.

    Example:
        >>> import torch
        >>> import perceptloss
        >>> metric = perceptloss.create_metric("vgg16:lpips", weights=None)   # weights=None: random, for the example
        >>> metric(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)).shape
        torch.Size([2])
    """
    if "reduction" in kwargs:
        raise MetricError(f"metric {name!r}: create_metric builds per-sample metrics (reduction='none'); for "
                          "another reduction build the loss class itself (perceptloss.LPIPS(..., reduction='mean'))")
    entry = get_metric(name)
    arguments = {"weights": weights, "dtype": dtype, **kwargs}
    what = f"factory {name}" if entry.build is _factory else f"the build function of metric {entry.name!r}"
    call = _with_accepted(name, entry.build, arguments, what, positional=int(entry.matches is not None))
    module = call(name) if entry.matches is not None else call()
    if entry.build is _factory or not _builtin(entry):  # the user's code: checked once
        check_per_sample(name, module, what)
    return module


def check_per_sample(name: str, module: object, origin: str = "the factory") -> None:
    """Raise a :class:`MetricError` unless ``module`` is an ``nn.Module`` giving one value per image pair.

    The module is run once (no gradient, in eval mode, its modes restored after) on two random (2, 3, 64, 64) pairs
    in [0, 1] on its own device.
    """
    if not isinstance(module, nn.Module):
        raise MetricError(f"metric {name!r}: {origin} returned {type(module).__name__}, not a torch.nn.Module; "
                          "return the loss module itself (e.g. perceptloss.FeatureLoss(..., reduction='none'))")
    reduction = getattr(module, "reduction", "none")
    if reduction != "none":
        raise MetricError(f"metric {name!r}: {origin} returned a loss with reduction={reduction!r}; build it with "
                          "reduction='none' so that it gives one value per image pair")
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.rand(PROBE_SHAPE, generator=generator).to(device) for _ in range(2))
    modes = [(m, m.training) for m in module.modules()]
    module.eval()  # no batch-norm statistics or dropout touched by the check
    try:
        with torch.no_grad():
            out = module(x, y)
    except Exception as e:  # the user's module: any failure is reported as the check's
        raise MetricError(f"metric {name!r}: the module that {origin} returned raised {type(e).__name__} ({e}) on two "
                          f"{PROBE_SHAPE} image batches in [0, 1]; a metric takes (input, target) batches of "
                          "(N, 3, H, W) RGB images") from e
    finally:
        for m, training in modes:
            m.training = training
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != (PROBE_SHAPE[0],):
        got = f"shape {shape}" if shape is not None else type(out).__name__
        raise MetricError(f"metric {name!r}: the module that {origin} returned gave {got} for {PROBE_SHAPE[0]} image "
                          f"pairs, not one value per pair ({PROBE_SHAPE[0]},); return a loss with reduction='none'")


# ------------------------------------------------------------------------------------------------ helpers


def _builtin(entry: MetricEntry) -> bool:
    return any(entry is b for b in _BUILTINS)


#: The values of create_metric's own arguments that a build function or factory without such a parameter is
#: built without: each one's default, and ``dtype="auto"`` (a preference, not a demand).
_LEAVABLE: dict[str, tuple[Any, ...]] = {"weights": ("default",), "dtype": (None, "auto")}


def _with_accepted(name: str, build: Callable[..., Any], arguments: dict[str, Any], what: str,
                   positional: int = 0) -> Callable[..., Any]:
    """``build`` bound to the ``arguments`` it accepts (after ``positional`` positional ones); one it does not
    take is an error unless it has one of the values ``_LEAVABLE`` lists for it (its default, or
    ``dtype="auto"``: a preference for the hardware's fastest precision, which a factory without a ``dtype``
    parameter cannot take, so it is built as it is), and so is a parameter nothing fills."""
    try:
        params = list(inspect.signature(build).parameters.values())
    except (TypeError, ValueError):  # no signature to read (some builtins): pass everything
        return lambda *args: build(*args, **arguments)
    if isinstance(build, type) and build.__init__ is nn.Module.__init__:  # (*args, **kwargs), taking none of them
        params = []
    positional_params = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    filled = {p.name for p in positional_params[:positional]}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        passed = dict(arguments)
    else:
        accepted = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - filled
        refused = [k for k, v in arguments.items()
                   if k not in accepted and not any(v is d or v == d for d in _LEAVABLE.get(k, ()))]
        if refused:
            raise MetricError(f"metric {name!r}: {what} takes no {', '.join(refused)} argument; leave "
                              f"{'it' if len(refused) == 1 else 'them'} out, or give it such a keyword parameter")
        passed = {k: v for k, v in arguments.items() if k in accepted}
    unfilled = [p.name for p in params if p.default is p.empty and p.name not in filled and p.name not in passed
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if unfilled:
        raise MetricError(f"metric {name!r}: {what} requires {', '.join(unfilled)}, which create_metric does not "
                          "give; a factory is called with no arguments, or with the keywords it accepts among "
                          "weights, dtype and create_metric's others: give those parameters defaults")
    return lambda *args: build(*args, **passed)


def _unknown(name: str) -> MetricError:
    names = list_metrics()
    backbone, sep, layers = name.rpartition(":")
    hint, candidates = "", _candidates()
    if sep and backbone:
        candidates += [f"{b}:{layers}" for b in list_backbones()]  # vgg91:dfc123 -> vgg19:dfc123
        hint = (f" {backbone!r} is neither a registered backbone (perceptloss.list_backbones()) nor an importable "
                "module (a factory is <package.module>:<callable>, with the module on sys.path).")
    elif name in list_backbones():
        hint = f" A FeatureLoss metric names its layers: {name}:<preset or comma-separated layers>."
    return MetricError(f"unknown metric {name!r}.{hint}{suggest(name, candidates)} Metrics: {', '.join(names)}")


def _candidates() -> list[str]:
    """Names to suggest for an unknown metric: the table's own, then ``<backbone>:<preset>`` for every backbone
    that has the preset's layers (``vgg19:dfc123``)."""
    out = [n for n in list_metrics() if "<" not in n]
    for backbone in list_backbones():
        layers = set(list_layers(backbone))
        out += [f"{backbone}:{p}" for p, taps in PRESETS.items() if layers.issuperset(taps)]
    return out


# ------------------------------------------------------------------------------------------------ built-ins


def _lpips(net: str, version: str) -> Callable[..., nn.Module]:
    def build(*, weights: Any = "default", **options: Any) -> nn.Module:
        return LPIPS(net, version, weights=weights, reduction="none", **options)

    return build


def _dists(*, weights: Any = "default", **options: Any) -> nn.Module:
    return DISTS(weights=weights, reduction="none", **options)


def _stlpips(net: str) -> Callable[..., nn.Module]:
    def build(*, weights: Any = "default", **options: Any) -> nn.Module:
        return LPIPS(net, variant="shift_tolerant", weights=weights, reduction="none", **options)

    return build


def _fdl(*, weights: Any = "default", **options: Any) -> nn.Module:
    return FDL(weights=weights, reduction="none", **options)


def _feature_backbone(name: str) -> tuple[str, str]:
    """(backbone, layers) of a FeatureLoss name, with a ValueError where the backbone or the layers are missing."""
    backbone, _, layers = name.rpartition(":")
    for prefix in resolvers():
        if name.startswith(prefix) and len(backbone) <= len(prefix):  # "timm:resnet50": no layers
            raise MetricError(f"metric {name!r}: {prefix}<model> backbones name their layers too: "
                             f"{prefix}<model>:<comma-separated layers>")
    if not layers:
        raise MetricError(f"metric {name!r}: give a preset or comma-separated layers after the colon "
                         f"(perceptloss.list_layers({backbone!r}))")
    return backbone, layers


def _is_feature_name(name: str) -> bool:
    backbone, sep, _ = name.rpartition(":")
    return bool(sep) and (backbone in list_backbones() or any(name.startswith(p) for p in resolvers()))


def _feature_loss(name: str, *, weights: Any = "default", **options: Any) -> nn.Module:
    backbone, layers = _feature_backbone(name)
    layer_arg: str | list[str] = layers.split(",") if "," in layers else layers
    return FeatureLoss(backbone, layer_arg, weights=weights, reduction="none", **options)


def _is_factory_name(name: str) -> bool:
    match = _FACTORY.match(name)
    if not match:
        return False
    module = match.group(1)
    if "." in module:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _factory(name: str, **arguments: Any) -> nn.Module:
    """Import ``<module>:<attribute>`` and call it with the arguments it accepts."""
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name + ".").startswith(e.name + "."):  # the module or its package
            raise MetricError(f"metric {name!r}: cannot import module {module_name!r} ({e}); put its folder on "
                              "PYTHONPATH (or sys.path) or install its package") from e
        raise MetricError(f"metric {name!r}: importing module {module_name!r} failed: {e}; install what it "
                          "imports") from e
    except Exception as e:  # the user's module failed while importing
        raise MetricError(f"metric {name!r}: importing module {module_name!r} raised {type(e).__name__}: {e}; "
                          "fix the module") from e
    factory: Any = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            found = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
            mean = suggest(name, [f"{module_name}:{n}" for n in found])
            raise MetricError(f"metric {name!r}: module {module_name!r} has no attribute {attribute!r}.{mean} "
                              "Name a function (or class) defined in it that returns the metric module")
        factory = getattr(factory, part)
    if not callable(factory):
        raise MetricError(f"metric {name!r}: {module_name}.{attribute} is a {type(factory).__name__}, not callable; "
                          "name a function (or class) that returns the metric module")
    return _with_accepted(name, factory, arguments, f"factory {module_name}:{attribute}")()


_BUILTINS: tuple[MetricEntry, ...] = (
    *(MetricEntry(f"lpips-{net}" + ("" if version == "0.1" else f"-v{version}"), _lpips(net, version),
                  description=f"LPIPS v{version}, {backbone} trunk" + (" (first release)" if version == "0.0" else ""))
      for net, (backbone, _, _) in LPIPS_NETS.items() for version in VERSIONS),
    MetricEntry("dists", _dists, description="DISTS (structure and texture similarity of VGG16 features)"),
    *(MetricEntry(f"stlpips-{net}", _stlpips(net), description=f"ST-LPIPS (shift-tolerant LPIPS), anti-aliased "
                  f"{arch} trunk") for net, arch in (("alex", "AlexNet"), ("vgg", "VGG16"))),
    MetricEntry("fdl", _fdl, description="FDL (sliced Wasserstein of FFT amplitude and phase of VGG19 features; "
                                         "images >= 80x80)"),
    MetricEntry("<backbone>:<preset or layers>", _feature_loss, matches=_is_feature_name,
                description="FeatureLoss (mean squared distance): vgg19:dfc123, vgg16:relu1_2,relu2_2, "
                            "timm:<model>:<layers>"),
    MetricEntry("<package.module>:<factory>", _factory, matches=_is_factory_name,
                description="your own: the module is imported, factory() returns the loss module"),
)
for _entry in _BUILTINS:
    register_metric(_entry)
del _entry

__all__ = ["MetricEntry", "MetricError", "register_metric", "create_metric", "list_metrics", "get_metric",
           "check_per_sample"]
