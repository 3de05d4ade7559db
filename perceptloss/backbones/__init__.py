"""Feature extractors: a network truncated after its deepest requested layer that returns those layers."""
from .base import FeatureExtractor
from .vgg import VGGFeatures, vgg_layer_names
from .module import ModuleFeatures

__all__ = ["FeatureExtractor", "VGGFeatures", "vgg_layer_names", "ModuleFeatures"]
