"""perceptloss: perceptual (deep-feature) losses with a fused C++/CUDA distance operator.

Example:
    >>> import torch
    >>> from perceptloss import FeatureLoss
    >>> loss = FeatureLoss("vgg19", ["relu1_1", "relu2_1", "relu3_1"])   # the DFC-VAE paper's VAE-123 loss
    >>> x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)       # (N, 3, H, W) RGB in [0, 1]
    >>> loss(x, y).shape
    torch.Size([])

The top level holds the losses, their functional forms, the backbone look-ups and the exception and warning
types, and ``create_metric`` / ``list_metrics`` (metrics by name, as ``perceptloss score`` builds them). The rest
is imported from its module, as in torchvision and timm: ``perceptloss.registry`` (registering backbones,
``PRESETS``), ``perceptloss.metric_table`` (registering metrics), ``perceptloss.weights`` (the weights catalogue
and cache), ``perceptloss.channels`` (channel policies), ``perceptloss.preprocessing`` (``CAFFE``, ``IMAGENET``,
...), ``perceptloss.functional``, ``perceptloss.hardware`` (``bf16_native``) and ``perceptloss.backends`` (the
fused operator's kernels and ``perceptloss.backends.cpu``'s settings).
"""
from ._ops import HAS_EXT, FusedOperatorUnavailableWarning
from .functional import feature_distance
from .hardware import SlowPrecisionWarning, auto_dtype
from . import backbones  # noqa: F401  (registers every backbone family)
from . import backends  # noqa: F401  (perceptloss.backends.cpu without a second import)
from ._base import PerceptualLoss
from ._options import LossOptions
from ._sizes import ImageTooSmallError
from ._validation import InputRangeWarning
from .factory import create_backbone
from .loss import FeatureLoss
from .lpips import LPIPS
from .style import StyleLoss
from .criteria import gram_matrix
from .dists import DISTS
from .fdl import FDL
from .volume import VolumeLoss
from .basicsr import from_basicsr
from .tiling import tiled
from .metric_table import create_metric, list_metrics
from .preprocessing import Normalization
from .registry import list_backbones, list_layers, list_weights
from .weights import WeightsChecksumError, WeightsNotFoundError

__version__ = "0.1.0"

__all__ = [
    # losses
    "FeatureLoss",
    "LPIPS",
    "DISTS",
    "FDL",
    "StyleLoss",
    "VolumeLoss",
    "PerceptualLoss",
    "from_basicsr",
    "tiled",
    # metrics by name (the table perceptloss score reads)
    "create_metric",
    "list_metrics",
    # functional forms
    "feature_distance",
    "gram_matrix",
    # backbones
    "create_backbone",
    "list_backbones",
    "list_layers",
    "list_weights",
    "Normalization",
    # the operator and precision
    "HAS_EXT",
    "auto_dtype",
    # exceptions and warnings
    "WeightsNotFoundError",
    "WeightsChecksumError",
    "FusedOperatorUnavailableWarning",
    "SlowPrecisionWarning",
    "ImageTooSmallError",
    "InputRangeWarning",
    # the options every loss takes
    "LossOptions",
]
