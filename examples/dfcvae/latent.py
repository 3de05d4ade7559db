"""Loading trained models and moving between images and latent codes."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from celeba import to_float  # noqa: E402
from vae import VAE  # noqa: E402


def load_vae(checkpoint: str | Path, device: str = "cpu") -> tuple[VAE, dict]:
    """The VAE of a training checkpoint in eval mode, and the run's config."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with examples/dfcvae/train.py --out {path.parent}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = VAE(state["config"].get("latent", 100))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state["config"]


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


def attribute_vector(codes: torch.Tensor, has: torch.Tensor, limit: int = 1000, seed: int = 0) -> torch.Tensor:
    """Mean code of up to ``limit`` images with the attribute minus that of up to ``limit`` without it (Sec. 4.3.2)."""
    g = torch.Generator().manual_seed(seed)
    pos, neg = torch.nonzero(has).flatten(), torch.nonzero(~has).flatten()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("an attribute vector needs images with and without the attribute")
    pos = pos[torch.randperm(len(pos), generator=g)[:limit]]
    neg = neg[torch.randperm(len(neg), generator=g)[:limit]]
    return codes[pos].mean(0) - codes[neg].mean(0)
