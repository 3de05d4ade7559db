"""Feature extractors, one module per backbone family; importing this package registers every family.

Each family module registers its specs with ``perceptloss.registry`` and its weight entries with the weights
catalogue (``perceptloss.weights``); the registry itself imports none of them.
"""
from .._extractor import FeatureExtractor, freeze_module
from .module import ModuleFeatures
from . import vgg, alexnet, squeezenet, timm_backbone, vgg_l2pool, blurpool  # noqa: F401  (registration)
from .vgg import VGGFeatures, vgg_layer_names

__all__ = ["FeatureExtractor", "freeze_module", "VGGFeatures", "vgg_layer_names", "ModuleFeatures"]
