"""Atomic checkpoints (temp file + rename) holding everything needed to resume bit for bit."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .files import atomic_write
from .vae import VAE

#: Config entries that must match for a checkpoint to be resumed (the rest, e.g. epochs or max_steps, may change).
RESUME_KEYS = ("preset", "balance", "alpha", "beta", "batch_size", "lr", "beta1", "seed", "crop", "subset",
               "halve_lr_every", "latent", "data_key", "world_size")


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
    or config-less file.

    The file is data, never code: it is read with ``weights_only=True`` (tensors and plain values only), so a
    crafted pickle is refused without running anything."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train one with examples/dfcvae/train.py --out {path.parent}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} holds Python objects other than tensors and plain values ({first[:120]}); "
                              "it is refused unread, since loading it could run code: give a checkpoint.pt written "
                              "by examples/dfcvae/train.py") from None
    except Exception as e:  # truncated zip, garbage, not a torch file at all
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e)[:120]}); it may be "
                              "truncated or another kind of file: pick another, or start afresh") from None
    if not isinstance(state, dict) or not {"model", "config", "step"} <= state.keys():
        raise CheckpointError(f"{path} is not a DFC-VAE training checkpoint (it lacks model/config/step); "
                              "give a checkpoint.pt written by examples/dfcvae/train.py")
    if not isinstance(state["config"], dict) or not isinstance(state["step"], int):
        raise CheckpointError(f"{path} is not a DFC-VAE training checkpoint (its config is not a dict or its step "
                              "not an integer); give a checkpoint.pt written by examples/dfcvae/train.py")
    return state


def weights_mismatch(model: torch.nn.Module, weights: Any) -> str | None:
    """None when ``weights`` is a state dict that ``model.load_state_dict`` takes as it is, else why not (missing and
    unexpected names, shape differences), in a few words."""
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return "its model entry is not a state dict of tensors"
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k} {tuple(weights[k].shape)} vs the model's {tuple(v.shape)}" for k, v in own.items()
              if k in weights and weights[k].shape != v.shape]
    parts = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes)):
        if names:
            parts.append(f"{label}: {', '.join(names[:2])}{f' and {len(names) - 2} more' if len(names) > 2 else ''}")
    return "; ".join(parts) or None


def nonfinite_weights(weights: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``weights`` that hold a NaN or an infinity."""
    return [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_model_weights(model: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Load a checkpoint's ``state["model"]`` into ``model`` after checking that it fits it exactly and is finite
    (:class:`CheckpointError` naming what differs otherwise; ``model`` is then untouched)."""
    config = state.get("config", {})
    if reason := weights_mismatch(model, state["model"]):
        raise CheckpointError(f"{path} does not fit the DFC-VAE of its config (latent {config.get('latent', 100)}): "
                              f"{reason}; it holds another model: give a checkpoint.pt written by "
                              "examples/dfcvae/train.py")
    if bad := nonfinite_weights(state["model"]):
        raise CheckpointError(f"{path} holds non-finite weights ({', '.join(bad[:2])}"
                              f"{f' and {len(bad) - 2} more' if len(bad) > 2 else ''}): its run had diverged; "
                              "use an earlier checkpoint, or train again with a lower --lr")
    model.load_state_dict(state["model"])


def vae_from_checkpoint(state: dict[str, Any], path: str | Path) -> VAE:
    """The float32 :class:`VAE` (train mode, CPU) a checkpoint's ``state`` (from :func:`read_checkpoint`) holds,
    validated by :func:`load_model_weights`."""
    latent = state["config"].get("latent", 100)
    if not isinstance(latent, int) or isinstance(latent, bool) or latent <= 0:
        raise CheckpointError(f"{path}'s config has latent {latent!r}, not a positive integer; give a checkpoint.pt "
                              "written by examples/dfcvae/train.py")
    model = VAE(latent)
    load_model_weights(model, state, path)
    return model


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
