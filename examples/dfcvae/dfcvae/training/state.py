"""What a run trains and a checkpoint holds: model, objective, optimiser, learning-rate schedule, grad scaler, step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..objective import DFCObjective
from ..vae import VAE
from .config import TrainConfig


@dataclass
class Training:
    """Everything the loop updates and a checkpoint holds."""

    model: VAE
    objective: DFCObjective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    #: The run's recorded config (:meth:`TrainConfig.record`), stored in every checkpoint.
    config: dict[str, Any]
    step: int = 0
    #: The step of the last checkpoint in --out known to be good (written or resumed by this process), or None.
    saved_step: int | None = None

    def state(self, rng: dict) -> dict:
        """The checkpoint's contents; ``rng`` is :func:`checkpointing.pack_rng` of every rank's random state."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
                "rng": rng, "config": self.config}


def build(config: TrainConfig, record: dict[str, Any], rank: int = 0) -> Training:
    """Model, objective, optimizer, per-epoch lr halving and grad scaler, freshly initialised from --seed;
    ``record`` is the run's recorded config, which its checkpoints hold.

    Every rank initialises the same model; ranks after the first then reseed, so that each process draws its own
    reparameterisation noise (rank 0 keeps the single-process stream)."""
    torch.manual_seed(config.seed)
    model = VAE(config.latent).to(config.device)
    if rank > 0:
        torch.manual_seed(config.seed * 1_000_003 + rank)  # the CPU and every CUDA generator
    objective = DFCObjective(config.preset, config.alpha, config.beta, config.balance, weights=config.weights,
                             fused=config.fused).to(config.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
        objective = objective.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    # Halve the learning rate at the start of every epoch after the first (per epoch, not per iteration), or every
    # --halve-lr-every steps: the scheduler counts halvings, the loop steps it.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5 ** epoch)
    scaler = torch.amp.GradScaler(config.device.type, enabled=config.amp == "fp16")
    return Training(model, objective, optimizer, scheduler, scaler, record)
