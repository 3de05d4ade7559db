"""Any ``nn.Module`` as a backbone, its layers given as torch.fx node names (torchvision feature_extraction)."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from .._extractor import FeatureExtractor
from .._validation import unknown_name_error


class ModuleFeatures(FeatureExtractor):
    """Wrap ``module`` and return the outputs of the fx nodes ``layers`` (see ``get_graph_node_names``).

    ``share=False`` (default): the extractor runs a private, frozen copy of ``module`` made now (its weights
    as buffers, eval mode); your module is left exactly as it was (trainable, in its mode) and later
    updates to it do not reach the loss. ``share=True``: the loss reads your module itself, as it is at
    every call: its current weights and its own train/eval mode (nothing is frozen or switched; gradients
    reach its parameters when they require grad). Use it for feature matching against a network that keeps
    learning, e.g. a GAN discriminator.

    The loss reads a shared module, it does not train it: in train mode its normalisation layers
    (BatchNorm, InstanceNorm with ``track_running_stats``) normalise with each batch's statistics as that
    mode says, but their running statistics (and ``num_batches_tracked``) are left as they were. Otherwise
    every loss call would count as two training batches of the module (input and target, generated images
    among them), and the module's statistics would depend on how often the loss is evaluated; the owner's
    own forward passes still update them.

    The module's layers must not modify the requested outputs in place (avoid ``inplace=True`` activations
    right after a requested node).
    """

    def __init__(self, module: nn.Module, layers: tuple[str, ...], share: bool = False) -> None:
        super().__init__()
        self.shared = bool(share)
        source = module if share else copy.deepcopy(module)
        was_training = source.training
        _, valid = get_graph_node_names(source.eval())
        source.train(was_training)
        for name in layers:
            if name not in valid:
                raise unknown_name_error("layer", name, valid, listing="torchvision.models.feature_extraction."
                                         "get_graph_node_names(module)[1]")
        self.layers = tuple(layers)
        self.body = create_feature_extractor(source, return_nodes={n: n for n in self.layers})
        if share:
            self.body.train(was_training)
        else:
            self.freeze()
        # the normalisation layers whose running statistics a train-mode forward would update
        self._stat_layers = [
            (name, m) for name, m in self.body.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
        ] if share else []

    def freeze(self) -> "FeatureExtractor":
        if self.shared:
            return self  # the user's module: never frozen behind their back
        return super().freeze()

    def train(self, mode: bool = True) -> "ModuleFeatures":
        """A private copy stays in eval mode; a shared module keeps the mode its owner gives it."""
        if self.shared:
            return self
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        updating = [(name, m) for name, m in self._stat_layers if m.training]
        if updating:  # run on copies of the running statistics: the module's own stay as they were
            copies = {
                f"{name}.{b}" if name else b: getattr(m, b).clone()
                for name, m in updating for b in ("running_mean", "running_var", "num_batches_tracked")
                if getattr(m, b, None) is not None
            }
            out = torch.func.functional_call(self.body, copies, (x,), strict=False)
        else:
            out = self.body(x)
        return [out[n] for n in self.layers]
