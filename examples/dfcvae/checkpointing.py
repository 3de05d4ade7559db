"""Atomic checkpoints (temp file + rename) holding everything needed to resume bit for bit."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from files import atomic_write

#: Config entries that must match for a checkpoint to be resumed (the rest, e.g. epochs or max_steps, may change).
RESUME_KEYS = ("preset", "balance", "alpha", "beta", "batch_size", "lr", "beta1", "seed", "crop", "subset",
               "latent", "data_key", "world_size")


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save through :func:`files.atomic_write` (never a torn file; normal permissions, not 0600)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in RESUME_KEYS if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointMismatch(
            f"{path} was written by a run with another configuration ({'; '.join(diffs)}); "
            f"use the same options, or a new --out folder to start afresh"
        )
