"""Any ``nn.Module`` as a backbone, its layers given as torch.fx node names (torchvision feature_extraction)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from .base import FeatureExtractor
from .._validation import unknown_name_error


class ModuleFeatures(FeatureExtractor):
    """Wrap ``module`` and return the outputs of the fx nodes ``layers`` (see ``get_graph_node_names``).

    The module's layers must not modify the requested outputs in place (avoid ``inplace=True`` activations
    right after a requested node).
    """

    def __init__(self, module: nn.Module, layers: tuple[str, ...]) -> None:
        super().__init__()
        _, valid = get_graph_node_names(module.eval())
        for name in layers:
            if name not in valid:
                raise unknown_name_error("layer", name, valid)
        self.layers = tuple(layers)
        self.body = create_feature_extractor(module, return_nodes={n: n for n in self.layers})
        self.freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.body(x)
        return [out[n] for n in self.layers]
