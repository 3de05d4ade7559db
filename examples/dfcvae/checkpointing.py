"""Atomic checkpoints (temp file + rename) holding everything needed to resume bit for bit."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

#: Config entries that must match for a checkpoint to be resumed (the rest, e.g. epochs or max_steps, may change).
RESUME_KEYS = ("preset", "balance", "alpha", "beta", "batch_size", "lr", "beta1", "seed", "crop", "subset",
               "latent", "data_key", "world_size")


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path`` (never a torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointMismatch(ValueError):
    """A checkpoint was written by a run with another configuration."""


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in RESUME_KEYS if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointMismatch(
            f"{path} was written by a run with another configuration ({'; '.join(diffs)}); "
            f"use the same options, or a new --out folder to start afresh"
        )
