"""One optimisation step: forward and loss under autocast, finite checks every rank agrees on, backward, update."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from ..distributed import Distributed
from ..objective import Terms
from .config import TrainConfig
from .state import Training


def check_step(dist: Distributed, what: str, ok: torch.Tensor, step: int, value: torch.Tensor | None = None) -> None:
    """FloatingPointError ("the <what> became <value> at step <step>") unless ``ok`` (a 0-dim bool tensor) holds on
    every process (one synchronisation, and one all-reduce under torchrun, so that all ranks stop together)."""
    if dist.everywhere(ok):
        return
    shown = "non-finite"
    if value is not None and not math.isfinite(v := value.item()):
        shown = str(v)
    raise FloatingPointError(f"the {what} became {shown} at step {step}")


def all_finite(*tensors: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor: whether every element of ``tensors`` is finite (no synchronisation)."""
    ok = torch.isfinite(tensors[0]).all()
    for t in tensors[1:]:
        ok = ok & torch.isfinite(t).all()
    return ok


@dataclass(frozen=True)
class Stepper:
    """How a run computes its steps: the model as the step calls it (DDP-wrapped, compiled), the loss and autocast."""

    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], Terms]
    autocast: Callable[[], ContextManager]


def stepper(config: TrainConfig, run: Training, dist: Distributed) -> Stepper:
    """The :class:`Stepper` of ``run``: DistributedDataParallel under torchrun, --compile, autocast for --amp."""
    net: torch.nn.Module = run.model
    device = config.device
    if dist.world > 1:
        # one GPU per process: its own device (cuda:<LOCAL_RANK>, set by Distributed), none for the CPU
        net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None,
            output_device=device.index if device.type == "cuda" else None)
    forward = torch.compile(net) if config.compile else net
    loss = torch.compile(run.objective) if config.compile else run.objective
    if config.amp == "off":
        return Stepper(forward, loss, contextlib.nullcontext)
    dtype = torch.bfloat16 if config.amp == "bf16" else torch.float16
    return Stepper(forward, loss, lambda: torch.autocast(device.type, dtype=dtype))


def take_step(stepper: Stepper, run: Training, x: torch.Tensor, dist: Distributed) -> Terms:
    """One step of ``run`` on the batch ``x`` (the step counter is the caller's); FloatingPointError, on every rank
    at once, when the model's output or the loss is not finite."""
    with stepper.autocast():
        recon, mean, logvar = stepper.forward(x)
        # every step, before the loss (whose input check would raise) and before any save
        check_step(dist, "model's output", all_finite(recon, mean, logvar), run.step + 1)
        terms = stepper.loss(recon, x, mean, logvar)
    check_step(dist, "loss", all_finite(terms.total), run.step + 1, terms.total)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(terms.total).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return terms
