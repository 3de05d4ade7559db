"""The backbone registry: names -> specs, layer names and presets. The mechanism only (as timm's ``_registry``).

The registry imports no backbone family: each ``perceptloss/backbones/<family>.py`` registers its specs here
(and its weight entries in the weights catalogue, ``perceptloss.weights.register_weights``) when it is imported,
and ``perceptloss.backbones`` imports every family. A family whose names are open-ended (timm:
``"timm:<model>"``) registers a prefix resolver.

Weight entries live in the catalogue only: a backbone's entries are the catalogue group of its name (or of
``weights_from``), its default the group's default. The registry reads the catalogue; the catalogue knows no
backbone spec.

Example:
    >>> import perceptloss
    >>> perceptloss.list_weights("vgg19")
    ['caffe', 'torchvision']
    >>> perceptloss.registry.resolve_layers("vgg19", "dfc123")
    ('relu1_1', 'relu2_1', 'relu3_1')
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ._validation import UnknownNameError, suggest, unknown_name_error
from .weights import StateDict, group_entries

if TYPE_CHECKING:  # type names only: the registry imports no implementation
    from ._extractor import FeatureExtractor
    from .preprocessing import Normalization


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its layer names in network order and a builder.

    Register one with :func:`register_backbone`; the losses then accept its ``name`` as their ``backbone``. Its
    weight entries are not here: they are the weights catalogue's group :attr:`weights_group`
    (``perceptloss.weights.register_weights(WeightEntry(backbone=<name>, ...))``).

    Args:
        name: the name the losses take (``FeatureLoss(name, ...)``).
        layers: every layer name in network order (``list_layers(name)``).
        build: ``build(layers)`` returns a feature extractor (not yet frozen) truncated after the deepest of
            ``layers``.
        load: ``load(extractor, state_dict)`` loads a resolved state dict into it.
        weights_from: the backbone whose catalogued entries this one loads (``vgg16_l2pool``: ``"vgg16"``, the
            same file), or None for its own (the group ``name``).
        description: one line for ``python -m perceptloss list``.
        create: when given, ``create(layers, weights)`` replaces build + load for families that load their
            weights their own way (timm), returning ``(extractor, normalization)``.
    """

    name: str
    layers: tuple[str, ...]
    build: Callable[[tuple[str, ...]], "FeatureExtractor"]
    load: Callable[["FeatureExtractor", "StateDict"], None]
    weights_from: str | None = None
    description: str = ""
    create: Callable[[tuple[str, ...], Any], tuple["FeatureExtractor", "Normalization"]] | None = None

    @property
    def weights_group(self) -> str:
        """The weights catalogue's group that holds this backbone's entries (keys ``<group>.<entry>``)."""
        return self.weights_from or self.name


_BACKBONES: dict[str, BackboneSpec] = {}
_RESOLVERS: dict[str, tuple[Callable[[str], BackboneSpec], str]] = {}

PRESETS: dict[str, tuple[str, ...]] = {
    "dfc123": ("relu1_1", "relu2_1", "relu3_1"),
    "dfc345": ("relu3_1", "relu4_1", "relu5_1"),
    "lpips": ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"),
    "style": ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
}
"""Named layer sets of the VGG backbones, accepted wherever layers are: dfc123 / dfc345, the DFC-VAE paper's
VAE-123 / VAE-345; lpips, LPIPS' VGG16 taps; style, Gatys et al.'s style layers."""


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add a backbone to the registry: the losses then take its name.

    Its weight entries are registered in the weights catalogue (``perceptloss.weights.register_weights``), where
    the command line lists, fetches and verifies them by key.

    Args:
        spec: the backbone.
        overwrite: replace a backbone already registered under ``spec.name`` (else a ValueError).

    Returns:
        ``spec`` itself.
    """
    if spec.name in _BACKBONES and not overwrite:
        raise ValueError(f"backbone {spec.name!r} is already registered; pass overwrite=True to replace it")
    _BACKBONES[spec.name] = spec
    return spec


def register_resolver(prefix: str, resolve: Callable[[str], BackboneSpec], description: str = "") -> None:
    """Resolve every backbone name ``<prefix><rest>`` with ``resolve(rest)``: an open-ended family.

    Args:
        prefix: the name prefix, e.g. ``"timm:"`` for any timm model.
        resolve: returns the :class:`BackboneSpec` of ``rest`` (the name after the prefix), or raises.
        description: one line for ``python -m perceptloss list``.
    """
    _RESOLVERS[prefix] = (resolve, description)


def resolvers() -> dict[str, str]:
    """Registered name prefixes and their descriptions (``{"timm:": "any timm model ..."}``)."""
    return {prefix: description for prefix, (_, description) in _RESOLVERS.items()}


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching the glob ``pattern``, sorted.

    Prefixed families (``"timm:<model>"``, see :func:`register_resolver`) are open-ended and not listed.

    Example:
        >>> import perceptloss
        >>> "vgg19" in perceptloss.list_backbones("vgg*")
        True
    """
    return sorted(n for n in _BACKBONES if fnmatch.fnmatch(n, pattern))


def get_backbone(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of a registered backbone, or of a prefixed name such as ``"timm:<model>"``.

    An unknown name raises a ValueError that lists the closest registered ones.

    Example:
        >>> import perceptloss
        >>> perceptloss.registry.get_backbone("vgg16_l2pool").weights_group
        'vgg16'
    """
    if name in _BACKBONES:
        return _BACKBONES[name]
    for prefix, (resolve, _) in _RESOLVERS.items():
        if name.startswith(prefix):
            return resolve(name[len(prefix):])
    raise unknown_name_error("backbone", name, list_backbones() + [p + "<model name>" for p in _RESOLVERS])


def list_layers(backbone: str) -> tuple[str, ...]:
    """Layer names of ``backbone`` in network order.

    Example:
        >>> import perceptloss
        >>> perceptloss.list_layers("vgg19")[:4]
        ('conv1_1', 'relu1_1', 'conv1_2', 'relu1_2')
    """
    return get_backbone(backbone).layers


def list_weights(backbone: str) -> list[str]:
    """Names of the weight entries of ``backbone`` (its group in the weights catalogue), the default first.

    Example:
        >>> import perceptloss
        >>> perceptloss.list_weights("vgg19")
        ['caffe', 'torchvision']
    """
    return list(group_entries(get_backbone(backbone).weights_group))


def resolve_layers(backbone: str, layers: str | Sequence[str]) -> tuple[str, ...]:
    """The layer names a loss's ``layers`` argument stands for, checked against ``backbone``'s layers.

    Args:
        backbone: a registered backbone name.
        layers: a preset (:data:`PRESETS`), one layer name, or a sequence of layer names (each once).

    Returns:
        The layer names, in the order given.

    Example:
        >>> import perceptloss
        >>> perceptloss.registry.resolve_layers("vgg19", "dfc123")
        ('relu1_1', 'relu2_1', 'relu3_1')
    """
    valid = list_layers(backbone)
    preset = layers if isinstance(layers, str) and layers in PRESETS else None
    if isinstance(layers, str):
        layers = PRESETS[layers] if preset else (layers,)
    layers = tuple(layers)
    listing = f"`python -m perceptloss layers {backbone}` (perceptloss.list_layers({backbone!r}))"
    if not layers:
        raise ValueError(f"no layers given; choose a preset ({', '.join(PRESETS)}) or layers of {listing}")
    for name in layers:
        if not isinstance(name, str) or name not in valid:
            if preset:
                raise UnknownNameError(f"preset {preset!r} names layers of the VGG backbones ({', '.join(layers)}), "
                                       f"and {backbone} has no layer {name!r}; name {backbone}'s layers, listed by "
                                       f"{listing}")
            raise UnknownNameError(f"unknown layer {name!r} of {backbone}.{suggest(str(name), list(valid) + list(PRESETS))}"
                                   f" Its {len(valid)} layers are listed by {listing}; presets: {', '.join(PRESETS)}")
    dup = {n for n in layers if layers.count(n) > 1}
    if dup:
        raise ValueError(f"layers listed more than once: {sorted(dup)}; give each layer once with its weight")
    return layers


__all__ = [
    "BackboneSpec", "PRESETS", "register_backbone", "register_resolver", "resolvers", "list_backbones",
    "get_backbone", "list_layers", "list_weights", "resolve_layers",
]
