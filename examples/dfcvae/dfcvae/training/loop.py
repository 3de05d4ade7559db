"""The training loop: epochs of shuffled batches from the run's step to its end, with the learning-rate schedule,
checkpoints, snapshots, per-epoch grids and the time budget."""
from __future__ import annotations

import torch

from ..distributed import Distributed
from .checkpoints import keep_snapshot, save_checkpoint
from .config import TrainConfig
from .data import Faces, batch, epoch_order
from .logs import Logger, Meter, Progress, grid_inputs, save_grids
from .state import Training
from .step import stepper, take_step


def last_step(config: TrainConfig, steps_per_epoch: int) -> int:
    """The step the run stops at: the end of its --epochs, or --max-steps if sooner."""
    total = steps_per_epoch * config.epochs
    return min(total, config.max_steps) if config.max_steps else total


def train_loop(config: TrainConfig, run: Training, faces: Faces, dist: Distributed, logger: Logger) -> bool:
    """Train from ``run.step`` to the end (or --max-steps); checkpoints every --checkpoint-every steps and at epoch ends.

    Returns True when --time-budget stopped it before the end (the caller saves the checkpoint and grids).
    """
    stop_at = last_step(config, faces.steps_per_epoch)
    steps = stepper(config, run, dist)
    grids = grid_inputs(run.model, faces.images)
    progress = Progress(dist.main and config.progress, stop_at, run.step, config.preset)
    meter = Meter()
    try:
        while run.step < stop_at:
            epoch, it = divmod(run.step, faces.steps_per_epoch)
            order = epoch_order(config.seed, epoch, len(faces.images))
            while it < faces.steps_per_epoch and run.step < stop_at:
                terms = take_step(steps, run, batch(faces, order, it, config, dist), dist)
                run.step, it = run.step + 1, it + 1
                meter.count(config.batch_size * dist.world)
                if run.step % config.log_every == 0 or run.step == stop_at:
                    row = meter.row(run.step, epoch, run.optimizer.param_groups[0]["lr"], terms)
                    logger.log(row)
                    progress.show(row)
                progress.advance()
                after_step(config, run, dist)
                if config.time_budget and meter.elapsed() >= config.time_budget and run.step < stop_at:
                    return True
            if it == faces.steps_per_epoch:
                end_epoch(config, run, dist, epoch, grids)
    finally:
        progress.close()
    return False


def after_step(config: TrainConfig, run: Training, dist: Distributed) -> None:
    """After a step: halve the lr every --halve-lr-every steps, checkpoint every --checkpoint-every (and keep a
    snapshot every --keep-every) steps."""
    if config.halve_lr_every and run.step % config.halve_lr_every == 0:
        run.scheduler.step()
    kept = bool(config.keep_every) and run.step % config.keep_every == 0
    if run.step % config.checkpoint_every == 0 or kept:
        save_checkpoint(run, config.folder.checkpoint, dist)
        if kept and dist.main:
            keep_snapshot(config.folder.out, run.step)


def end_epoch(config: TrainConfig, run: Training, dist: Distributed, epoch: int,
              grids: tuple[torch.Tensor, torch.Tensor]) -> None:
    """An epoch finished: halve the lr for the next one (by default), checkpoint, and write its grids."""
    if not config.halve_lr_every:
        run.scheduler.step()
    save_checkpoint(run, config.folder.checkpoint, dist)  # first: it refuses non-finite weights
    if dist.main:
        save_grids(run.model, *grids, config.folder.out / "grids", f"e{epoch + 1:02d}")
