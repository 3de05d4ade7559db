"""VGG16/VGG19 convolutional trunks with Caffe-style layer names (conv1_1 ... relu5_4, pool1 ... pool5).

The trunk is torchvision's ``make_layers`` configuration; a ReLU runs in place only where the convolution output
it overwrites is not requested, so that a feature read at ``conv3_1`` really is the convolution output before its
ReLU (SequentialFeatures decides). Parameter names match torchvision's ``features.N.*``, so torchvision state dicts load as they are.
"""
from __future__ import annotations

from torchvision.models import vgg as tv_vgg

from .sequential import SequentialFeatures

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
        super().__init__(tv_vgg.make_layers(tv_vgg.cfgs[VGG_CONFIGS[arch]]), vgg_layer_names(arch), layers)
        self.arch = arch
