"""Atomic checkpoints (temp file + rename) holding everything needed to resume bit for bit."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .files import atomic_write

#: Config entries that must match for a checkpoint to be resumed (the rest, e.g. epochs or max_steps, may change).
RESUME_KEYS = ("preset", "balance", "alpha", "beta", "batch_size", "lr", "beta1", "seed", "crop", "subset",
               "latent", "data_key", "world_size")


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save through :func:`files.atomic_write` (never a torn file; normal permissions, not 0600)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random state: the CPU generator, and its own CUDA device's when it trains on one."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore :func:`rng_state` on this process (the CUDA part on ``device``, if it is a CUDA device).

    Also accepts the older layout, ``{"torch": ..., "cuda": [one state per visible GPU]}``: the states of the GPUs
    this host has are restored, the others dropped (never an IndexError)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible GPU's state, from one process
        for index, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, index)
    elif device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def pack_rng(states: list[dict[str, Any] | None]) -> dict[str, Any]:
    """The checkpoint's ``rng`` entry from every rank's :func:`rng_state` (None for a rank whose state is unknown)."""
    return {"ranks": list(states), "world_size": len(states)}


def rank_rng(rng: dict[str, Any], rank: int, world: int) -> dict[str, Any] | None:
    """Rank ``rank``'s saved state from a checkpoint's ``rng`` entry, or None when it was not saved.

    Older checkpoints hold one state (rank 0's) for every rank: it is rank 0's only. A checkpoint of another world
    size is refused earlier (``world_size`` is one of :data:`RESUME_KEYS`)."""
    if "ranks" not in rng:
        return rng if rank == 0 else None
    ranks = rng["ranks"]
    if len(ranks) != world:
        raise CheckpointMismatch(f"the checkpoint holds random states for {len(ranks)} processes, this run has {world}")
    return ranks[rank]


class CheckpointError(ValueError):
    """A file is not a usable training checkpoint (the message says why and what to do)."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint's contents, with a clear :class:`CheckpointError` for a missing, truncated, foreign
    or config-less file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train one with examples/dfcvae/train.py --out {path.parent}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, not a torch file at all
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e)[:120]}); it may be "
                              "truncated or another kind of file: pick another, or start afresh") from None
    if not isinstance(state, dict) or not {"model", "config", "step"} <= state.keys():
        raise CheckpointError(f"{path} is not a DFC-VAE training checkpoint (it lacks model/config/step); "
                              "give a checkpoint.pt written by examples/dfcvae/train.py")
    return state


class CheckpointMismatch(ValueError):
    """A checkpoint was written by a run with another configuration."""


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse (:class:`CheckpointMismatch`) a checkpoint whose :data:`RESUME_KEYS` differ from this run's."""
    a, b = saved.get("world_size", 1), current.get("world_size", 1)
    if a != b:
        how = "without torchrun (one process)" if a == 1 else f"with {a} processes in all (torchrun --nproc-per-node {a})"
        raise CheckpointMismatch(f"{path} was trained by {a} process{'es' if a != 1 else ''} and this run has {b}: "
                                 f"resume it {how}, or start afresh with another --out")
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in RESUME_KEYS if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointMismatch(
            f"{path} was written by a run with another configuration ({'; '.join(diffs)}); "
            f"use the same options, or a new --out folder to start afresh"
        )
