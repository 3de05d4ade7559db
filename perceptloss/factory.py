"""``create_backbone``: a frozen feature extractor and the preprocessing its weights expect, from a name or a module."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ._validation import suggest
from ._extractor import FeatureExtractor
from .backbones.module import ModuleFeatures
from .preprocessing import CAFFE, IDENTITY, IMAGENET, Normalization
from .registry import BackboneSpec, get_backbone, resolve_layers
from .weights import WeightEntry, cache_path, fetch_command, group_entries, load_backbone_file, resolve
from .weights._files import check_weights_path, looks_like_path

_NORMALIZATIONS = {"caffe": CAFFE, "imagenet": IMAGENET, "identity": IDENTITY}


def normalization_from(value: Normalization | str | None) -> Normalization | None:
    """A Normalization from itself or one of the names "caffe", "imagenet", "identity" (None stays None)."""
    if value is None or isinstance(value, Normalization):
        return value
    if isinstance(value, str) and value.lower() in _NORMALIZATIONS:
        return _NORMALIZATIONS[value.lower()]
    raise ValueError(
        f"normalization must be a perceptloss.Normalization or one of {sorted(_NORMALIZATIONS)}, got {value!r}"
    )


def create_backbone(
    backbone: str | torch.nn.Module,
    layers: str | Sequence[str],
    weights: str | Path | None = "default",
    normalization: Normalization | str | None = None,
    *,
    share_module: bool = False,
) -> tuple[FeatureExtractor, Normalization]:
    """Build a frozen extractor for ``layers`` of ``backbone`` and the normalisation its weights expect.

    ``backbone``: a registered name, a prefixed name ('timm:<model>'), or an ``nn.Module`` (then ``layers``
    are fx node names, ``normalization`` defaults to IDENTITY, and the module is copied and frozen unless
    ``share_module=True``; see ``ModuleFeatures``). ``weights``: "default", an entry name (see
    ``list_weights``), a file path, or None for random init (tests of mechanics only). A file must hold this
    backbone's weights for ``layers`` (the rules: ``perceptloss.weights._provenance``); its preprocessing
    comes from its provenance when perceptloss can know it (a file it wrote, a known published file name or
    checksum); otherwise pass ``normalization=`` ("caffe", "imagenet", or a Normalization).

    Options that cannot apply are refused: ``weights`` other than "default" with an ``nn.Module`` (it runs its
    own weights), ``share_module=True`` with a registered name (there is no module of yours to share).
    """
    normalization = normalization_from(normalization)
    if isinstance(backbone, torch.nn.Module):
        if not (isinstance(weights, str) and weights == "default"):
            raise ValueError(
                f"weights={str(weights)!r} cannot apply to an nn.Module backbone: the loss runs the module's own "
                f"weights; load them into the module first (module.load_state_dict(...)) and leave weights unset"
            )
        names = (layers,) if isinstance(layers, str) else tuple(layers)
        source = f"{'shared-module' if share_module else 'module'}:{type(backbone).__name__}"
        return _sourced(ModuleFeatures(backbone, names, share=share_module), type(backbone).__name__, source), \
            normalization or IDENTITY
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a registered name or an nn.Module, got {type(backbone).__name__}")
    if share_module:
        raise ValueError(
            f"share_module=True shares an nn.Module you pass as backbone; with the registered backbone "
            f"{backbone!r} the loss builds its own frozen network, so there is nothing to share: drop "
            f"share_module=True, or pass your module as backbone"
        )
    spec = get_backbone(backbone)
    names = resolve_layers(backbone, layers)
    if spec.create is not None:
        extractor, norm = spec.create(names, weights)
        source = "random" if weights is None else f"{backbone}:{weights}"
        return _sourced(extractor.freeze(), backbone, source), normalization or norm
    extractor = spec.build(names)
    if weights is None:
        return _sourced(extractor.freeze(), backbone, "random"), normalization or IMAGENET
    entries = group_entries(spec.weights_group)  # the catalogue's, the default first
    entry_name = next(iter(entries), None) if weights == "default" else str(weights)
    if entry_name in entries:
        entry = entries[entry_name]
        _load_entry(spec, extractor, entry)
        return _sourced(extractor.freeze(), backbone, entry.key), normalization or entry.normalization
    if not looks_like_path(weights):
        choices = list(entries)
        raise KeyError(
            f"unknown weights {weights!r} for {backbone}: neither one of its entries ({', '.join(choices) or 'none'}) "
            f"nor an existing file.{suggest(str(weights), choices)}"
        )
    path = check_weights_path(weights)
    state, norm = load_backbone_file(spec, path, extractor.weight_tensors(), names, normalization)
    try:
        spec.load(extractor, state)
    except (KeyError, ValueError) as e:
        reason = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"{path} does not fit {spec.name}: {reason}") from e
    return _sourced(extractor.freeze(), backbone, f"file:{Path(str(weights)).name}"), norm


def _sourced(extractor: FeatureExtractor, backbone_name: str, weights_source: str) -> FeatureExtractor:
    """``extractor`` with the two facts a loss's ``signature`` states about its network: the backbone's name, and
    where its weights came from (a catalogue key, "file:<name>", "random", "module:<class>" or
    "shared-module:<class>", "<backbone>:<weights>" for a resolver's backbone such as timm's)."""
    extractor.backbone_name = backbone_name
    extractor.weights_source = weights_source
    return extractor


def _load_entry(spec: BackboneSpec, extractor: FeatureExtractor, entry: WeightEntry) -> None:
    state = resolve(entry)  # its own errors name the bad file (a source or the cached file) and their fix
    try:
        spec.load(extractor, state)
    except (KeyError, ValueError) as e:
        reason = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(
            f"the cached weights {cache_path(entry)} do not fit {spec.name} ({reason}); they were written by "
            f"something else: rebuild them with `{fetch_command(entry)}`"
        ) from e
