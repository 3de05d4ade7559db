"""The feature extractors' common interface, for the families: ``perceptloss._extractor`` defines it (outside this
package, so that the registry and the weights package can name it without importing a family)."""
from .._extractor import FeatureExtractor, freeze_module

__all__ = ["FeatureExtractor", "freeze_module"]
