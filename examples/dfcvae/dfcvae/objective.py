"""The DFC-VAE objective: alpha * KL + beta * reconstruction, with the paper's presets.

Presets: ``vae123`` (VGG19 relu1_1, relu2_1, relu3_1), ``vae345`` (relu3_1, relu4_1, relu5_1) and ``pvae``
(plain VAE: pixel-wise squared error). KL is KL(q(z|x) || N(0, I)) summed over the latent dimensions.

Balance (how the terms are scaled and combined over a batch of B images):
- ``released`` (default): exactly the authors' released Torch code.
  * ``vae123``/``vae345`` (``main_dfc.lua``): KL summed over the batch + beta (0.5) times, per layer,
    ``nn.MSECriterion`` (the mean over B*C*H*W of the squared feature difference; Caffe VGG19 fed BGR 0-255
    minus the mean pixel), i.e. ``alpha * sum_b KL_b + beta * mean_b sum_l mean_CHW (phi_l(x) - phi_l(x^))^2``.
  * ``pvae`` (``main_cvae.lua``): ``nn.MSECriterion`` with ``sizeAverage = false`` on images in [0, 1] plus KL,
    both summed over the batch, weight 1: ``alpha * sum_b KL_b + beta * sum_b sum_pixels (x - x^)^2`` with
    beta = 1 by default.
- ``per-sample``: the paper's Eq. 4-5 read literally per sample and averaged over the batch:
  ``mean_b [alpha * KL_b + beta * sum_l 1/(2 C_l H_l W_l) sum (phi_l(x) - phi_l(x^))^2]``, i.e. with
  alpha = 1, beta = 0.5 a weight of 0.25 on each layer's mean squared difference. For ``pvae`` it is the
  released objective divided by B (already a per-sample sum).

``Terms.kl`` and ``Terms.rec`` report the per-sample averages of KL and of the *unweighted* reconstruction
(the sum over layers of the mean squared feature difference, or the pixel sum for ``pvae``), for logging.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from perceptloss import FeatureLoss

PRESETS = {"vae123": "dfc123", "vae345": "dfc345", "pvae": None}
BALANCES = ("released", "per-sample")
#: The reconstruction weight beta of each preset when none is given (the released code's).
DEFAULT_BETA = {"vae123": 0.5, "vae345": 0.5, "pvae": 1.0}


def kl_per_sample(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over latent dims: (N,)."""
    return -0.5 * torch.sum(1 + logvar - mean.square() - logvar.exp(), dim=1)


def pixel_sse(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(N,) sum over C*H*W of the squared error of images in [0, 1] (fp32)."""
    return (recon.float() - images.float()).square().flatten(1).sum(1)


@dataclass
class Terms:
    total: torch.Tensor
    kl: torch.Tensor
    rec: torch.Tensor


class DFCObjective(nn.Module):
    """alpha * KL + beta * reconstruction for one preset; images are RGB in [0, 1], (N, 3, 64, 64).

    ``beta=None`` takes the preset's released weight (:data:`DEFAULT_BETA`). ``forward`` returns
    :class:`Terms` with ``total`` the scalar to minimise.
    """

    def __init__(self, preset: str = "vae123", alpha: float = 1.0, beta: float | None = None,
                 balance: str = "released", weights: str | None = "default", fused: bool | None = None) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        if balance not in BALANCES:
            raise ValueError(f"unknown balance {balance!r}; choose from {', '.join(BALANCES)}")
        self.preset, self.alpha, self.balance = preset, alpha, balance
        self.beta = DEFAULT_BETA[preset] if beta is None else beta
        self.feature_loss = None
        if PRESETS[preset] is not None:
            # Reconstructions are unbounded (linear decoder), so only shapes/NaN are checked, not the range.
            self.feature_loss = FeatureLoss("vgg19", PRESETS[preset], weights=weights, reduction="none",
                                            check_range="off", fused=fused)

    def reconstruction(self, recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(N,) unweighted per-sample reconstruction: pixel SSE for pvae, sum of per-layer feature MSEs else."""
        if self.feature_loss is None:
            return pixel_sse(recon, images)
        return self.feature_loss(recon, images)

    def forward(self, recon: torch.Tensor, images: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> Terms:
        kl = kl_per_sample(mean.float(), logvar.float())
        rec = self.reconstruction(recon, images)
        if self.balance == "per-sample":
            half = 0.5 if self.feature_loss is not None else 1.0  # Eq. 4's 1/(2 C H W)
            total = self.alpha * kl.mean() + self.beta * half * rec.mean()
        elif self.feature_loss is None:  # released PVAE: both summed over the batch
            total = self.alpha * kl.sum() + self.beta * rec.sum()
        else:  # released DFC: KL summed over the batch, MSECriterion averaged over it
            total = self.alpha * kl.sum() + self.beta * rec.mean()
        return Terms(total, kl.mean().detach(), rec.mean().detach())
