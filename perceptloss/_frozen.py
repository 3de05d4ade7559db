"""The state-dict hooks that keep a loss's frozen network out of its (and its parent model's) ``state_dict``.

The network's weights come from the weights cache at construction (or, with ``share_module=True``, belong to the
module's owner): a model holding a loss does not carry 50 MB of VGG in every checkpoint, changing the loss's
layers does not break loading, and loading never writes the network. ``loss.net.state_dict()`` still gives them.
"""
from __future__ import annotations

from torch import nn

#: The attribute under which a loss keeps its network (its state-dict keys start with it).
NETWORK = "net."


def omit_network_keys(module: nn.Module, state_dict, prefix, local_metadata) -> None:
    """State-dict hook: leave the ``<prefix>net.*`` tensors out of the state dict."""
    for key in [k for k in state_dict if k.startswith(prefix + NETWORK)]:
        del state_dict[key]


class NetworkKeysOnLoad:
    """The two load hooks of one loss, sharing the prefix the loss is loaded under.

    ``refuse`` (a pre-hook): ``<prefix>net.*`` tensors in a state dict are unexpected keys, so a strict load refuses
    a state dict that has them (torch's "Unexpected key(s)" error names them) and a non-strict one ignores them.
    ``not_missing`` (a post-hook): a strict load of what ``state_dict()`` gave does not report the network as
    missing; every other key is reported as usual.
    """

    def __init__(self) -> None:
        self.prefix = ""

    def refuse(self, module: nn.Module, state_dict, prefix, local_metadata, strict, missing, unexpected,
               errors) -> None:
        self.prefix = prefix
        found = [k for k in state_dict if k.startswith(prefix + NETWORK)]
        for key in found:
            del state_dict[key]  # torch.nn.Module.load_state_dict passes a copy: the caller's dict is unchanged
        unexpected.extend(found)

    def not_missing(self, module: nn.Module, incompatible_keys) -> None:
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if not k.startswith(self.prefix + NETWORK)]
