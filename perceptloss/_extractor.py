"""The common interface of the feature extractors, and what "frozen by construction" means for them.

It lives outside ``perceptloss.backbones`` (whose ``__init__`` imports, and so registers, every family) so that
the registry and the weights package can name the type a backbone's builder returns without importing a family;
the families import it from here."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def freeze_module(module: nn.Module) -> nn.Module:
    """Turn every parameter of ``module`` (and its children) into a buffer of the same name, in place.

    A buffer cannot be switched back to trainable by a parent's ``requires_grad_(True)`` and is not among
    ``parameters()``, so no optimiser over a parent model can move it; ``.to()``, ``.half()``, pickling,
    ``state_dict``, ``torch.compile`` and ``torch.export`` treat it like a parameter. Returns ``module``.
    (The losses keep their network out of a parent model's ``state_dict``: see ``PerceptualLoss``.)
    """
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, param.detach().requires_grad_(False))
    return module


class FeatureExtractor(nn.Module):
    """Frozen network returning the activations of ``layers`` (in that order) for a batch of images.

    Subclasses implement ``forward(x) -> list[Tensor]``: x is (N, 3, H, W), already normalised for the
    weights; each output is (N, C_l, H_l, W_l). The outputs are never modified in place afterwards.
    After ``freeze()`` the network has no parameters at all: its weights are buffers.
    """

    layers: tuple[str, ...]

    def freeze(self) -> "FeatureExtractor":
        """Make the weights buffers (see ``freeze_module``) and switch to eval mode (called at construction)."""
        freeze_module(self)
        return self.eval()

    def weight_tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter or buffer of the network by its state-dict name (frozen or not)."""
        return {**dict(self.named_parameters()), **dict(self.named_buffers())}

    def load_trunk_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy ``state_dict``'s tensors into the network's own (by name; extra tensors, e.g. layers past the
        truncation, are ignored). Raises KeyError naming the missing tensors, ValueError on a shape mismatch."""
        own = self.weight_tensors()
        missing = [k for k in own if k not in state_dict]
        if missing:
            raise KeyError(f"weights lack {len(missing)} tensors of the trunk, e.g. {missing[:3]}")
        for k, v in own.items():
            if tuple(state_dict[k].shape) != tuple(v.shape):
                raise ValueError(f"weight {k} has shape {tuple(state_dict[k].shape)}, expected {tuple(v.shape)}")
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(state_dict[k])

    def min_input_sizes(self) -> dict[str, tuple[int, int]] | None:
        """The smallest (H, W) input for each of ``layers`` to have features, or None where the network cannot
        tell (an ``nn.Module`` or timm backbone). Sequential trunks compute it from their kernels and strides."""
        return None

    def forward_checkpointed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``forward(x)`` under activation checkpointing: only ``x`` is kept for the backward pass, which runs
        the network again (``torch.utils.checkpoint``, non-reentrant). Sequential trunks checkpoint one
        segment per tapped layer instead."""
        return checkpoint(self, x, use_reentrant=False)

    def train(self, mode: bool = True) -> "FeatureExtractor":  # noqa: D401 - always eval
        """Stay in eval mode whatever is asked: a loss network must not update BN statistics or drop out."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
