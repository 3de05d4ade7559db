"""The DFC-VAE objective: alpha * KL + beta * reconstruction, with the paper's presets.

Presets: ``vae123`` (VGG19 relu1_1, relu2_1, relu3_1), ``vae345`` (relu3_1, relu4_1, relu5_1) and ``pvae``
(plain VAE: pixel-wise squared error). Each reconstruction term is a mean over C*H*W per sample. The pixel
loss is measured in the same 0-255 units the VGG layers see (images in [0, 1] times 255), i.e. as the
loss network's input "layer", so that alpha/beta mean the same for all three presets.

Balance (how KL and reconstruction are combined over a batch):
- ``released`` (default): as the authors' Torch code: KL summed over latent dims and over the batch, the
  reconstruction averaged over the batch.
- ``per-sample``: the paper's equation read per sample: both averaged over the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from perceptloss import FeatureLoss

PRESETS = {"vae123": "dfc123", "vae345": "dfc345", "pvae": None}
BALANCES = ("released", "per-sample")


def kl_per_sample(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over latent dims: (N,)."""
    return -0.5 * torch.sum(1 + logvar - mean.square() - logvar.exp(), dim=1)


@dataclass
class Terms:
    total: torch.Tensor
    kl: torch.Tensor
    rec: torch.Tensor


class DFCObjective(nn.Module):
    """alpha * KL + beta * reconstruction for one preset; images are RGB in [0, 1], (N, 3, 64, 64)."""

    def __init__(self, preset: str = "vae123", alpha: float = 1.0, beta: float = 0.5, balance: str = "released",
                 weights: str | None = "default", fused: bool | None = None) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        if balance not in BALANCES:
            raise ValueError(f"unknown balance {balance!r}; choose from {', '.join(BALANCES)}")
        self.preset, self.alpha, self.beta, self.balance = preset, alpha, beta, balance
        self.feature_loss = None
        if PRESETS[preset] is not None:
            # Reconstructions are unbounded (linear decoder), so only shapes/NaN are checked, not the range.
            self.feature_loss = FeatureLoss("vgg19", PRESETS[preset], weights=weights, reduction="none",
                                            check_range="off", fused=fused)

    def reconstruction(self, recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(N,) per-sample reconstruction loss."""
        if self.feature_loss is None:
            return (255.0 * (recon.float() - images.float())).square().flatten(1).mean(1)
        return self.feature_loss(recon, images)

    def forward(self, recon: torch.Tensor, images: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> Terms:
        kl = kl_per_sample(mean.float(), logvar.float())
        rec = self.reconstruction(recon, images)
        kl_term = kl.sum() if self.balance == "released" else kl.mean()
        rec_term = rec.mean()
        return Terms(self.alpha * kl_term + self.beta * rec_term, kl.mean().detach(), rec_term.detach())
