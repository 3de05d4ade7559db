"""torchvision's SqueezeNet 1.1 trunk with Caffe-style layer names.

Names follow the original Caffe model (``conv1``, ``relu_conv1``, ``pool1``, ``fire2`` ... ``fire9``, ``pool3``,
``pool5``), one per module of ``torchvision.models.squeezenet1_1().features``; ``fireK`` is the Fire module's
output (Caffe's ``fireK/concat``). LPIPS' SqueezeNet taps are relu_conv1, fire3, fire5, fire6, fire7, fire8, fire9.
"""
from __future__ import annotations

from torchvision.models import squeezenet1_1

from ..registry import BackboneSpec, register_backbone
from ..weights import register_weights
from .sequential import SequentialFeatures
from .torchvision_weights import torchvision_entry

SQUEEZENET_LAYERS: tuple[str, ...] = (
    "conv1", "relu_conv1", "pool1",
    "fire2", "fire3", "pool3",
    "fire4", "fire5", "pool5",
    "fire6", "fire7", "fire8", "fire9",
)


class SqueezeNetFeatures(SequentialFeatures):
    """SqueezeNet 1.1 trunk truncated after the deepest of ``layers`` (torchvision ``features.N.*`` naming).

    Input (N, 3, H, W) ImageNet-normalised. The ReLUs inside Fire modules stay in-place: they act on the
    module's internal tensors, never on a tapped output.
    """

    def __init__(self, layers: tuple[str, ...]) -> None:
        features = squeezenet1_1(weights=None).features
        assert len(features) == len(SQUEEZENET_LAYERS)
        super().__init__(list(features), SQUEEZENET_LAYERS, layers)


register_weights(torchvision_entry("squeezenet1_1"), default=True)
register_backbone(
    BackboneSpec(
        name="squeezenet1_1",
        layers=SQUEEZENET_LAYERS,
        build=SqueezeNetFeatures,
        load=lambda extractor, state: extractor.load_trunk_state_dict(state),
        description="torchvision SqueezeNet 1.1 trunk, Caffe-style layer names",
    )
)
