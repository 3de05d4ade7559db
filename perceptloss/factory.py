"""``create_backbone``: a frozen feature extractor and the preprocessing its weights expect, from a name or a module."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ._signature import records_weights_source
from ._validation import unknown_name_error
from .backbones.base import FeatureExtractor
from .backbones.module import ModuleFeatures
from .preprocessing import CAFFE, IDENTITY, IMAGENET, Normalization
from .registry import BackboneSpec, get_backbone, list_weights, resolve_layers
from .weights import WeightEntry, cache_path, entry_for_file, fetch_command, load_state_dict_file, resolve

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


@records_weights_source
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
    ``list_weights``), a file path, or None for random init (tests of mechanics only). For a file, the
    preprocessing comes from its provenance when perceptloss can know it (a file it wrote, or a known
    published file name); otherwise pass ``normalization=`` ("caffe", "imagenet", or a Normalization).
    """
    normalization = normalization_from(normalization)
    if isinstance(backbone, torch.nn.Module):
        names = (layers,) if isinstance(layers, str) else tuple(layers)
        return ModuleFeatures(backbone, names, share=share_module), normalization or IDENTITY
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a registered name or an nn.Module, got {type(backbone).__name__}")
    spec = get_backbone(backbone)
    names = resolve_layers(backbone, layers)
    if spec.create is not None:
        extractor, norm = spec.create(names, weights)
        return extractor.freeze(), normalization or norm
    extractor = spec.build(names)
    if weights is None:
        return extractor.freeze(), normalization or IMAGENET
    entry_name = spec.default_weights if weights == "default" else str(weights)
    if entry_name in spec.weights:
        entry = spec.weights[entry_name]
        _load_entry(spec, extractor, entry)
        return extractor.freeze(), normalization or entry.normalization
    path = Path(str(weights))
    if not path.is_file():
        raise unknown_name_error(f"weights of {backbone} (or an existing file)", str(weights), list_weights(backbone))
    return _load_file(spec, extractor, path, normalization)


def _load_entry(spec: BackboneSpec, extractor: FeatureExtractor, entry: WeightEntry) -> None:
    try:
        spec.load(extractor, resolve(entry))
    except (KeyError, ValueError) as e:
        reason = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(
            f"the cached weights {cache_path(entry)} do not fit {spec.name} ({reason}); they were written by "
            f"something else: rebuild them with `{fetch_command(entry)}`"
        ) from e


def _load_file(
    spec: BackboneSpec, extractor: FeatureExtractor, path: Path, normalization: Normalization | None
) -> tuple[FeatureExtractor, Normalization]:
    own = extractor.weight_tensors()
    state = load_state_dict_file(path) if path.suffix in (".safetensors", ".pth", ".pt") else None
    needs_conversion = state is None or not any(k in state for k in own)
    # pinned checksums belong to source files that need converting: only those are worth hashing
    entry = entry_for_file(path, by_checksum=needs_conversion)
    if needs_conversion:
        converter = entry if entry is not None and entry.backbone == spec.name else None
        if converter is None:
            converter = spec.weights.get(spec.default_weights) if spec.default_weights else None
        if converter is None:
            raise ValueError(f"{path} does not hold {spec.name} weights in torchvision naming")
        state = converter.convert(path)
        entry = entry or converter
    try:
        spec.load(extractor, state)
    except (KeyError, ValueError) as e:
        reason = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"{path} does not fit {spec.name}: {reason}") from e
    if normalization is None:
        if entry is None:
            choices = ", ".join(f"{e.name}: {e.normalization.name}" for e in spec.weights.values())
            raise ValueError(
                f"cannot tell how images must be preprocessed for the weights in {path}: the file is not one "
                f"perceptloss wrote or a known published file. Pass normalization='imagenet' (torchvision / "
                f"PyTorch-trained weights: RGB, ImageNet mean/std) or normalization='caffe' (original Caffe "
                f"weights: BGR, 0-255 minus the mean pixel), or a perceptloss.Normalization "
                f"({spec.name}'s entries: {choices})"
            )
        normalization = entry.normalization
    return extractor.freeze(), normalization
