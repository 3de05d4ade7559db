"""The run's checkpoints: reading and restoring the one to resume, saving (a collective), keeping snapshots."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from ..checkpointing import (CheckpointError, CheckpointMismatch, check_compatible, load_model_weights,
                             nonfinite_weights, pack_rng, rank_rng, read_checkpoint, rng_state, save_atomic,
                             set_rng_state)
from ..distributed import Distributed
from ..files import atomic_write
from .errors import SetupError
from .state import Training


def read_resume(path: Path) -> dict[str, Any]:
    """The contents of --resume's checkpoint ``path`` (SetupError for a missing, damaged or foreign one)."""
    if not path.is_file():
        raise SetupError(f"no checkpoint at {path}; run without --resume to start")
    try:
        return read_checkpoint(path)
    except CheckpointError as e:
        raise SetupError(str(e)) from None


def resume(run: Training, path: Path, state: dict[str, Any], dist: Distributed, seed: int) -> None:
    """Load a checkpoint's ``state`` (read from ``path``) into ``run``, refusing one from another configuration;
    ``seed`` (--seed) derives the random state of a rank the checkpoint holds none for."""
    try:
        check_compatible(state["config"], run.config, path)
        load_model_weights(run.model, state, path)
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        own = rank_rng(state["rng"], dist.rank, dist.world)
        if own is not None:
            set_rng_state(own, dist.device)
        else:  # written on an interrupt of a multi-process run: only rank 0's state is known
            torch.manual_seed(seed * 1_000_003 + state["step"] * 1009 + dist.rank)
            print(f"rank {dist.rank}: the checkpoint (written on an interrupt) holds no random state for this "
                  "process; it continues from one derived from --seed and the step, so this resume is not bit "
                  "for bit", file=sys.stderr)
    except (CheckpointError, CheckpointMismatch) as e:
        raise SetupError(str(e)) from None
    except (KeyError, RuntimeError, ValueError) as e:
        raise SetupError(f"{path} does not fit this model ({type(e).__name__}: {str(e)[:120]}); "
                         "start afresh with another --out") from None
    run.step = state["step"]
    if dist.main:
        print(f"resumed {path} at step {run.step}", file=sys.stderr)


def save_checkpoint(run: Training, path: Path, dist: Distributed, interrupted: bool = False) -> None:
    """Atomic checkpoint with every rank's random state; a failed write (disk full...) raises SetupError and
    leaves the previous one intact.

    A collective: all ranks call it at the same step. After Ctrl-C or SIGTERM (``interrupted``) the ranks of a
    multi-process run may be a step apart, so nothing is gathered: rank 0 saves its own state only (a resume from
    such a checkpoint says that it is not bit for bit).

    Non-finite model weights are never saved: FloatingPointError instead (the run diverged; the previous checkpoint
    is kept). Every rank holds the same weights, so all raise together."""
    if bad := nonfinite_weights(run.model.state_dict()):
        raise FloatingPointError(f"the model's weights became non-finite at step {run.step} ({bad[0]}"
                                 f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''})")
    own = rng_state(dist.device)
    if interrupted and dist.world > 1:
        states = [own] + [None] * (dist.world - 1) if dist.main else None
    else:
        states = dist.gather(own)
    if not dist.main:
        return
    try:
        save_atomic(run.state(pack_rng(states)), path)
    except OSError as e:
        raise SetupError(f"could not write {path} ({e.strerror or e}); the previous checkpoint is intact: free space "
                         "(or choose another --out) and continue with --resume") from None
    run.saved_step = run.step


def snapshot_path(out: Path, step: int) -> Path:
    """Where ``--keep-every`` keeps the snapshot of ``step``: ``out/snapshots/step-<step>.pt``."""
    return out / "snapshots" / f"step-{step:06d}.pt"


def keep_snapshot(out: Path, step: int) -> Path:
    """Copy ``out/checkpoint.pt`` (just written at ``step``) to ``out/snapshots/step-<step>.pt``, atomically."""
    path = snapshot_path(out, step)
    path.parent.mkdir(exist_ok=True)
    try:
        atomic_write(path, lambda tmp: shutil.copyfile(out / "checkpoint.pt", tmp))
    except OSError as e:
        raise SetupError(f"could not write {path} ({e.strerror or e}); the checkpoint is intact: free space "
                         "(or choose another --out) and continue with --resume") from None
    return path


#: The temporary files of train.py's atomic writes in --out (``files.atomic_write``: ``.<name>.<random>.tmp``),
#: by folder; only a kill leaves one behind.
TEMPORARIES = (("", ".checkpoint.pt.*.tmp"), ("", ".config.json.*.tmp"), ("", ".log.csv.*.tmp"),
               ("grids", ".*.png.*.tmp"), ("snapshots", ".step-*.pt.*.tmp"))
SNAPSHOT_TEMPORARY = re.compile(r"^\.step-(\d+)\.pt\..+\.tmp$")


def clear_leftovers(out: Path) -> tuple[list[str], set[int]]:
    """Remove the temporary files a killed run left in ``out`` (call with --out's lock held): one line per file
    removed, and the steps whose snapshot copy was interrupted."""
    lines, steps = [], set()
    for folder, pattern in TEMPORARIES:
        for path in sorted((out / folder).glob(pattern)):
            size = path.stat().st_size
            path.unlink()
            lines.append(f"removed {path} ({size / 1e6:.1f} MB), the unfinished write of a run that was killed")
            if m := SNAPSHOT_TEMPORARY.match(path.name):
                steps.add(int(m.group(1)))
    return lines, steps


def restore_snapshots(out: Path, step: int, keep_every: int, interrupted: set[int]) -> list[str]:
    """On resuming the run in ``out`` at ``step`` (its checkpoint.pt's): re-create the missing snapshot of
    ``step`` when it is a keep step or its copy was ``interrupted``; name an interrupted snapshot of an earlier
    step, which is lost (the checkpoint has moved on). One line per snapshot."""
    lines = []
    wanted = set(interrupted)
    if keep_every and step and step % keep_every == 0:
        wanted.add(step)
    for s in sorted(wanted):
        path = snapshot_path(out, s)
        if path.exists() or s > step:  # a later one is made again when the run gets there
            continue
        if s == step:
            keep_snapshot(out, step)
            lines.append(f"re-created {path} from {out / 'checkpoint.pt'} (step {step}): its copy had not finished")
        else:
            lines.append(f"lost {path}: its copy was interrupted and the checkpoint has moved on to step {step}, so it "
                         "cannot be re-created (dfcvae.trajectory goes without it)")
    return lines
