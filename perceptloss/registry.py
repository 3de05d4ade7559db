"""The backbone registry: names -> specs, layer names and presets. The mechanism only (as timm's ``_registry``).

The registry imports no backbone family: each ``perceptloss/backbones/<family>.py`` registers its specs (and
its weight entries in ``perceptloss.weights``) when it is imported, and ``perceptloss.backbones`` imports
every family. A family whose names are open-ended (timm: ``"timm:<model>"``) registers a prefix resolver.

>>> list_backbones()            # ['alexnet', 'squeezenet1_1', 'vgg16', 'vgg19']
>>> list_layers("vgg19")        # ('conv1_1', 'relu1_1', ..., 'pool5')
>>> list_weights("vgg19")       # ['caffe', 'torchvision']
>>> resolve_layers("vgg19", "dfc123")   # ('relu1_1', 'relu2_1', 'relu3_1')
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ._validation import unknown_name_error

if TYPE_CHECKING:  # type names only: the registry imports no implementation
    from .backbones.base import FeatureExtractor
    from .preprocessing import Normalization
    from .weights import StateDict, WeightEntry


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its layer names in network order, a builder and its weight entries.

    ``build(layers)`` returns an extractor (not yet frozen) truncated after the deepest of ``layers``;
    ``load(extractor, state_dict)`` loads a resolved state dict into it. ``weights`` maps entry names to
    ``perceptloss.weights.WeightEntry`` (also listed in the weights catalogue under ``<backbone>.<name>``).
    ``create(layers, weights)``, when given, replaces build + load for families that load weights their own
    way (timm); it returns ``(extractor, normalization)``.
    """

    name: str
    layers: tuple[str, ...]
    build: Callable[[tuple[str, ...]], "FeatureExtractor"]
    load: Callable[["FeatureExtractor", "StateDict"], None]
    weights: dict[str, "WeightEntry"] = field(default_factory=dict)
    default_weights: str | None = None
    description: str = ""
    create: Callable[[tuple[str, ...], Any], tuple["FeatureExtractor", "Normalization"]] | None = None


_BACKBONES: dict[str, BackboneSpec] = {}
_RESOLVERS: dict[str, tuple[Callable[[str], BackboneSpec], str]] = {}

#: Named layer sets. dfc123/dfc345: the DFC-VAE paper's VAE-123 / VAE-345; lpips: LPIPS' VGG16 taps;
#: style: Gatys et al.'s style layers.
PRESETS: dict[str, tuple[str, ...]] = {
    "dfc123": ("relu1_1", "relu2_1", "relu3_1"),
    "dfc345": ("relu3_1", "relu4_1", "relu5_1"),
    "lpips": ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"),
    "style": ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
}


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add ``spec`` to the registry (``overwrite=True`` to replace an existing name). Returns ``spec``.

    Its weight entries are added to the weights catalogue too, so that the command line lists, fetches and
    verifies them by key.
    """
    from .weights import register_weights

    if spec.name in _BACKBONES and not overwrite:
        raise ValueError(f"backbone {spec.name!r} is already registered; pass overwrite=True to replace it")
    if spec.default_weights is not None and spec.default_weights not in spec.weights:
        raise ValueError(f"default weights {spec.default_weights!r} are not among {sorted(spec.weights)}")
    for entry in spec.weights.values():
        register_weights(entry, default=entry.name == spec.default_weights, overwrite=True)
    _BACKBONES[spec.name] = spec
    return spec


def register_resolver(prefix: str, resolve: Callable[[str], BackboneSpec], description: str = "") -> None:
    """Resolve every name ``<prefix><rest>`` with ``resolve(rest)`` (e.g. "timm:" for any timm model)."""
    _RESOLVERS[prefix] = (resolve, description)


def resolvers() -> dict[str, str]:
    """Registered name prefixes and their descriptions (``{"timm:": "any timm model ..."}``)."""
    return {prefix: description for prefix, (_, description) in _RESOLVERS.items()}


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching the glob ``pattern`` (prefixed families, e.g. 'timm:<model>', aside)."""
    return sorted(n for n in _BACKBONES if fnmatch.fnmatch(n, pattern))


def get_backbone(name: str) -> BackboneSpec:
    """The spec of a registered backbone, or of a prefixed name such as 'timm:<model>'."""
    if name in _BACKBONES:
        return _BACKBONES[name]
    for prefix, (resolve, _) in _RESOLVERS.items():
        if name.startswith(prefix):
            return resolve(name[len(prefix):])
    raise unknown_name_error("backbone", name, list_backbones() + [p + "<model name>" for p in _RESOLVERS])


def list_layers(backbone: str) -> tuple[str, ...]:
    """Layer names of ``backbone`` in network order."""
    return get_backbone(backbone).layers


def list_weights(backbone: str) -> list[str]:
    """Names of the weight entries of ``backbone`` (the default first)."""
    spec = get_backbone(backbone)
    return sorted(spec.weights, key=lambda n: (n != spec.default_weights, n))


def resolve_layers(backbone: str, layers: str | Sequence[str]) -> tuple[str, ...]:
    """Expand a preset name or check a sequence of layer names against ``backbone``'s layers."""
    valid = list_layers(backbone)
    if isinstance(layers, str):
        layers = PRESETS[layers] if layers in PRESETS else (layers,)
    layers = tuple(layers)
    if not layers:
        raise ValueError(f"no layers given; choose among presets {sorted(PRESETS)} or {', '.join(valid)}")
    for name in layers:
        if not isinstance(name, str) or name not in valid:
            raise unknown_name_error(f"layer of {backbone}", str(name), list(valid) + sorted(PRESETS))
    dup = {n for n in layers if layers.count(n) > 1}
    if dup:
        raise ValueError(f"layers listed more than once: {sorted(dup)}; give each layer once with its weight")
    return layers


__all__ = [
    "BackboneSpec", "PRESETS", "register_backbone", "register_resolver", "resolvers", "list_backbones",
    "get_backbone", "list_layers", "list_weights", "resolve_layers",
]
