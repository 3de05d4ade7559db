"""VGG16/VGG19 convolutional trunks with Caffe-style layer names (conv1_1 ... relu5_4, pool1 ... pool5).

The trunk is torchvision's ``make_layers`` configuration with every ReLU made out-of-place, so that a feature
read at ``conv3_1`` really is the convolution output before its ReLU (torchvision's in-place ReLU would
overwrite it). Parameter names match torchvision's ``features.N.*``, so torchvision state dicts load as they are.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import vgg as tv_vgg

from .base import FeatureExtractor

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


class VGGFeatures(FeatureExtractor):
    """VGG trunk truncated after the deepest of ``layers``; ``forward`` returns their activations in order.

    Input (N, 3, H, W) normalised for the weights; H, W >= 2**(pools before the deepest layer).
    """

    def __init__(self, arch: str, layers: tuple[str, ...]) -> None:
        super().__init__()
        names = vgg_layer_names(arch)
        index = {n: i for i, n in enumerate(names)}
        self.arch = arch
        self.layers = tuple(layers)
        self.taps = [index[n] for n in self.layers]
        self._tapset = frozenset(self.taps)
        depth = max(self.taps) + 1
        modules = [
            nn.ReLU(inplace=False) if isinstance(m, nn.ReLU) else m
            for m in list(tv_vgg.make_layers(tv_vgg.cfgs[VGG_CONFIGS[arch]]))[:depth]
        ]
        self.features = nn.Sequential(*modules)
        self.freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        found: dict[int, torch.Tensor] = {}
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self._tapset:
                found[i] = x
        return [found[i] for i in self.taps]

    def load_trunk_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load ``features.N.*`` tensors (torchvision naming); tensors of layers past the truncation are ignored."""
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        if missing:
            raise KeyError(f"weights lack {len(missing)} tensors of the VGG trunk, e.g. {missing[:3]}")
        for k, v in own.items():
            if tuple(state_dict[k].shape) != tuple(v.shape):
                raise ValueError(f"weight {k} has shape {tuple(state_dict[k].shape)}, expected {tuple(v.shape)}")
        self.load_state_dict({k: state_dict[k] for k in own})
