"""torchvision's AlexNet trunk with Caffe-style layer names (conv1, relu1, pool1, ..., conv5, relu5, pool5).

``convK`` is the convolution output before its ReLU, ``reluK`` after it, ``poolK`` after a max-pool (torchvision's
AlexNet has no LRN layers, so Caffe's ``normK`` do not exist). LPIPS' AlexNet taps are relu1 ... relu5.
"""
from __future__ import annotations

from torchvision.models import alexnet as tv_alexnet

from ..registry import BackboneSpec, register_backbone
from ..weights import register_weights
from .sequential import SequentialFeatures
from .torchvision_weights import torchvision_entry

#: One name per module of ``torchvision.models.alexnet().features``.
ALEXNET_LAYERS: tuple[str, ...] = (
    "conv1", "relu1", "pool1",
    "conv2", "relu2", "pool2",
    "conv3", "relu3",
    "conv4", "relu4",
    "conv5", "relu5", "pool5",
)


class AlexNetFeatures(SequentialFeatures):
    """AlexNet trunk truncated after the deepest of ``layers``; parameters named like torchvision's ``features.N.*``.

    Input (N, 3, H, W) ImageNet-normalised; H, W >= 32 or so for relu5 (stride-4 11x11 conv, two 3x3/2 pools).
    """

    def __init__(self, layers: tuple[str, ...]) -> None:
        features = tv_alexnet(weights=None).features
        assert len(features) == len(ALEXNET_LAYERS)
        super().__init__(list(features), ALEXNET_LAYERS, layers)


register_weights(torchvision_entry("alexnet"), default=True)
register_backbone(
    BackboneSpec(
        name="alexnet",
        layers=ALEXNET_LAYERS,
        build=AlexNetFeatures,
        load=lambda extractor, state: extractor.load_trunk_state_dict(state),
        description="torchvision AlexNet trunk, Caffe-style layer names",
    )
)
