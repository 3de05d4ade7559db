"""perceptloss: perceptual (deep-feature) losses with a fused C++/CUDA distance operator.

>>> from perceptloss import FeatureLoss
>>> loss = FeatureLoss("vgg19", ["relu1_1", "relu2_1", "relu3_1"])   # the DFC-VAE paper's VAE-123 loss
>>> value = loss(x, y)        # x, y: (N, 3, H, W) RGB in [0, 1]
"""
from ._ops import HAS_EXT, FusedOperatorUnavailableWarning, has_kernel
from .cpu_kernels import cpu_kernel_level, cpu_kernel_levels, empty_cpu_cache, set_cpu_grad_cache
from .functional import feature_distance, feature_distance_reference
from .hardware import SlowPrecisionWarning, auto_dtype, bf16_native
from . import backbones  # noqa: F401  (registers every backbone family)
from ._base import PerceptualLoss
from .factory import create_backbone
from .loss import FeatureLoss
from .lpips import LPIPS
from .style import StyleLoss, gram_matrix
from .dists import DISTS
from .volume import VolumeLoss
from .channels import ChannelPolicy, split_channels, merge_channels
from .basicsr import from_basicsr
from .tiling import tiled
from .preprocessing import CAFFE, IDENTITY, IMAGENET, Normalization
from .registry import (
    PRESETS,
    BackboneSpec,
    get_backbone,
    list_backbones,
    list_layers,
    list_weights,
    register_backbone,
    register_resolver,
    resolve_layers,
)
from .weights import (
    WeightEntry,
    WeightsChecksumError,
    WeightsNotFoundError,
    get_weights,
    list_weight_entries,
    register_weights,
    sha256_file,
    weights_home,
)

__version__ = "0.1.0"

__all__ = [
    "HAS_EXT",
    "FusedOperatorUnavailableWarning",
    "has_kernel",
    "cpu_kernel_level",
    "cpu_kernel_levels",
    "empty_cpu_cache",
    "set_cpu_grad_cache",
    "FeatureLoss",
    "PerceptualLoss",
    "LPIPS",
    "StyleLoss",
    "gram_matrix",
    "DISTS",
    "VolumeLoss",
    "ChannelPolicy",
    "split_channels",
    "merge_channels",
    "from_basicsr",
    "tiled",
    "feature_distance",
    "auto_dtype",
    "bf16_native",
    "SlowPrecisionWarning",
    "feature_distance_reference",
    "Normalization",
    "CAFFE",
    "IMAGENET",
    "IDENTITY",
    "PRESETS",
    "BackboneSpec",
    "create_backbone",
    "get_backbone",
    "list_backbones",
    "list_layers",
    "list_weights",
    "register_backbone",
    "register_resolver",
    "resolve_layers",
    "WeightEntry",
    "get_weights",
    "list_weight_entries",
    "register_weights",
    "sha256_file",
    "WeightsChecksumError",
    "WeightsNotFoundError",
    "weights_home",
]
