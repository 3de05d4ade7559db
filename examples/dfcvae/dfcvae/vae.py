"""The DFC-VAE autoencoder (Hou et al. 2016, Figure 2 and the authors' released Torch code), 64x64 RGB.

Encoder: 4 x (conv 4x4 stride 2, BN, LeakyReLU 0.2) with 32/64/128/256 channels -> linear heads mean and
log-variance (z of size 100). Decoder: linear 100 -> 256x4x4 (ReLU) -> 4 x (nearest upsample x2, replication
pad 1, conv 3x3, BN, LeakyReLU 0.2) with 128/64/32/3 channels, the last conv linear. BN eps 1e-3; conv weights
N(0, 0.02), BN weights N(1, 0.02).
"""
from __future__ import annotations

import torch
from torch import nn

BN_EPS = 1e-3


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout, eps=BN_EPS), nn.LeakyReLU(0.2))


class EdgePad2d(nn.Module):
    """Replication padding by one pixel on each side, as ``nn.ReplicationPad2d(1)``, written as slices and
    concatenations: same values and gradients, and its backward compiles with torch.compile (inductor has no
    lowering for ``replication_pad2d_backward``). No parameters, so state dicts are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, :, :1], x, x[:, :, -1:]], dim=2)
        return torch.cat([x[:, :, :, :1], x, x[:, :, :, -1:]], dim=3)


def _up(cin: int, cout: int, last: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="nearest"), EdgePad2d(), nn.Conv2d(cin, cout, 3, 1)]
    if not last:
        layers += [nn.BatchNorm2d(cout, eps=BN_EPS), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """(N, 3, 64, 64) images -> (mean, logvar), each (N, latent)."""

    def __init__(self, latent: int = 100) -> None:
        super().__init__()
        self.features = nn.Sequential(_down(3, 32), _down(32, 64), _down(64, 128), _down(128, 256), nn.Flatten())
        self.mean = nn.Linear(256 * 4 * 4, latent)
        self.logvar = nn.Linear(256 * 4 * 4, latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.mean(h), self.logvar(h)


class Decoder(nn.Module):
    """(N, latent) codes -> (N, 3, 64, 64) images (unbounded: the last layer is linear)."""

    def __init__(self, latent: int = 100) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(latent, 256 * 4 * 4), nn.ReLU())
        self.body = nn.Sequential(_up(256, 128), _up(128, 64), _up(64, 32), _up(32, 3, last=True))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(z).view(-1, 256, 4, 4))


class VAE(nn.Module):
    """Encoder + reparameterisation + decoder. ``forward(x)`` -> (reconstruction, mean, logvar)."""

    def __init__(self, latent: int = 100) -> None:
        super().__init__()
        self.latent = latent
        self.encoder = Encoder(latent)
        self.decoder = Decoder(latent)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        return self.decoder(z), mean, logvar

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode z ~ N(0, temperature^2 I): (n, 3, 64, 64)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent, generator=generator).to(device) * temperature
        return self.decoder(z)


def init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
