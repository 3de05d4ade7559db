"""Loading trained models and moving between images and latent codes."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .celeba import to_float
from .checkpointing import read_checkpoint, vae_from_checkpoint
from .vae import VAE


def load_vae(checkpoint: str | Path, device: str = "cpu") -> tuple[VAE, dict]:
    """The VAE of a training checkpoint in eval mode, and the run's config (plus its ``step``).

    :class:`checkpointing.CheckpointError` for a file that is not a checkpoint of this VAE or holds non-finite
    weights."""
    state = read_checkpoint(checkpoint)
    model = vae_from_checkpoint(state, checkpoint)
    return model.to(device).eval(), dict(state["config"], step=state["step"])


@torch.no_grad()
def encode(model: VAE, images: np.ndarray, batch: int = 256, device: str = "cpu") -> torch.Tensor:
    """Posterior means of (N, S, S, 3) uint8 faces: (N, latent) float32 on the CPU."""
    out = []
    for i in range(0, len(images), batch):
        x = to_float(torch.from_numpy(np.array(images[i:i + batch]))).to(device)
        out.append(model.encoder(x)[0].float().cpu())
    return torch.cat(out) if out else torch.empty(0, model.latent)


@torch.no_grad()
def decode(model: VAE, z: torch.Tensor, batch: int = 256, device: str = "cpu") -> torch.Tensor:
    """Images for codes z (N, latent): (N, 3, 64, 64) in [0, 1] (clamped) on the CPU."""
    out = [model.decoder(z[i:i + batch].to(device)).float().clamp(0, 1).cpu() for i in range(0, len(z), batch)]
    return torch.cat(out)


@dataclass(frozen=True)
class Sampling:
    """How prior samples are drawn: z ~ N(0, temperature^2 I), decoded with BatchNorm's saved running statistics
    (``batch_stats=False``) or with the statistics of each batch of ``batch`` codes (``True``)."""

    name: str
    label: str
    temperature: float
    batch_stats: bool
    batch: int = 100


#: The paper's literal reading (Sec. 3, z ~ N(0, I), the network in inference mode) and the authors' released
#: generate.lua (z ~ N(0, 0.4^2 I), 100 codes at a time through a decoder left in training mode).
SAMPLINGS = {
    "paper": Sampling("paper", "paper: z ~ N(0, I), eval-mode BN", 1.0, False),
    "released": Sampling("released", "released code: z ~ N(0, 0.4² I), batch-statistics BN over 100 codes", 0.4, True),
}


@torch.no_grad()
def decode_batch_stats(model: VAE, z: torch.Tensor, batch: int = 100, device: str = "cpu") -> torch.Tensor:
    """Decode with BatchNorm normalising by each batch's own statistics (training-mode BN), as the released
    generate.lua does, without touching the model's saved running statistics (a throw-away copy is used):
    (N, 3, 64, 64) in [0, 1] on the CPU."""
    decoder = copy.deepcopy(model.decoder).to(device).train()
    return torch.cat([decoder(z[i:i + batch].to(device)).float().clamp(0, 1).cpu() for i in range(0, len(z), batch)])


def sample(model: VAE, z: torch.Tensor, sampling: Sampling, device: str = "cpu",
           shift: torch.Tensor | None = None) -> torch.Tensor:
    """Prior samples for standard-normal codes ``z`` (N, latent) under one :class:`Sampling` convention, decoded at
    ``z * temperature + shift`` when a ``shift`` (latent,) is given: with a re-centring offset m, ``shift=m``
    gives a raw model's re-centred samples and ``shift=-m`` a re-centred model's raw ones (dfcvae.recentre)."""
    z = z * sampling.temperature
    if shift is not None:
        z = z + shift
    if sampling.batch_stats:
        return decode_batch_stats(model, z, sampling.batch, device)
    return decode(model, z, device=device)


def reconstruct(model: VAE, images: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """Decoded posterior means of (N, S, S, 3) uint8 faces: (N, 3, 64, 64) in [0, 1] on the CPU."""
    return decode(model, encode(model, images, device=device), device=device)


def interpolate(model: VAE, z0: torch.Tensor, z1: torch.Tensor, alphas: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    """Decoded (1 - a) z0 + a z1 for each a of ``alphas``: (len(alphas), 3, 64, 64) in [0, 1]."""
    return decode(model, torch.stack([(1 - a) * z0 + a * z1 for a in alphas]), device=device)


def attribute_vector(codes: torch.Tensor, has: torch.Tensor, limit: int = 1000, seed: int = 0) -> torch.Tensor:
    """Mean code of up to ``limit`` images with the attribute minus that of up to ``limit`` without it (Sec. 4.3.2)."""
    g = torch.Generator().manual_seed(seed)
    pos, neg = torch.nonzero(has).flatten(), torch.nonzero(~has).flatten()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("an attribute vector needs images with and without the attribute")
    pos = pos[torch.randperm(len(pos), generator=g)[:limit]]
    neg = neg[torch.randperm(len(neg), generator=g)[:limit]]
    return codes[pos].mean(0) - codes[neg].mean(0)
