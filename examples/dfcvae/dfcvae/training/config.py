"""A training run's one configuration, built once from the parsed command line with every default resolved."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..objective import DEFAULT_BETA
from .errors import SetupError

from perceptloss.hardware import bf16_native

AMP_CHOICES = ("auto", "off", "bf16", "fp16")
#: --fused as FeatureLoss' ``fused`` argument.
FUSED = {"auto": None, "on": True, "off": False}
#: The settings recorded in config.json and in every checkpoint's "config", in this order (the data's entries and
#: the run's world size, data folder and device follow); ``checkpointing.RESUME_KEYS`` must match on resume.
RECORDED = ("preset", "balance", "alpha", "beta", "batch_size", "lr", "beta1", "seed", "crop", "subset", "latent",
            "epochs", "amp", "halve_lr_every", "channels_last", "compile")


def default_out(preset: str) -> Path:
    """--out when none is given: runs/<preset>."""
    return Path("runs") / preset


def resumes_own_run(out: Path, resume: Path | None) -> bool:
    """Whether the checkpoint ``resume`` is ``out``'s own checkpoint.pt (however the path is spelled)."""
    if resume is None:
        return False
    own = out / "checkpoint.pt"
    if own.exists() and resume.exists():
        return os.path.samefile(own, resume)
    return own.resolve() == resume.resolve()


@dataclass(frozen=True)
class RunFolder:
    """Where a run lives (--out) and the checkpoint it continues (--resume), resolved once."""

    out: Path
    #: The checkpoint to continue (--resume without a value: ``out``'s own), None to start afresh.
    resume: Path | None
    #: Whether ``resume`` is ``out``'s own checkpoint.pt (the run in ``out`` goes on) rather than another run's.
    continues_own_run: bool
    overwrite: bool

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.pt"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunFolder:
        out = default_out(args.preset) if args.out is None else Path(args.out)
        resume = None if not args.resume else out / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
        return cls(out, resume, resumes_own_run(out, resume), args.overwrite)


def resolve_amp(asked: str | None, device: torch.device, saved: str | None = None) -> tuple[str, str]:
    """The autocast mode to train with ('off', 'bf16' or 'fp16') and why, as one phrase for the log.

    ``asked`` is --amp (None or 'auto': follow the hardware, see :func:`perceptloss.hardware.bf16_native`); ``saved`` the
    mode recorded in the config of the run being resumed, which auto keeps. An explicit mode that differs from a
    resumed run's raises :class:`SetupError` when fp16 is on either side (its gradient scaler's state does not
    carry over); off and bf16 may be switched (the continuation is then not bit for bit)."""
    if saved is not None and asked in (None, "auto"):
        return saved, "kept from the run being resumed"
    if saved is not None and asked != saved:
        if "fp16" in (asked, saved):
            raise SetupError(f"--amp {asked} cannot continue a run trained with --amp {saved} (fp16's gradient "
                             f"scaler state does not carry over); keep the run's own --amp {saved} "
                             "(or start afresh with another --out)")
        return asked, f"as asked (the run used --amp {saved} before; the continuation is not bit for bit)"
    if asked in (None, "auto"):
        native, reason = bf16_native(device)
        return ("bf16" if native else "off"), f"auto: {reason}"
    return asked, "as asked"


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Built once (:meth:`from_args`) when the run's --out is checked and the
    checkpoint it continues is read (the autocast mode depends on it); never changed afterwards."""

    folder: RunFolder
    device: torch.device
    # the model and its objective
    preset: str
    balance: str
    alpha: float
    #: The reconstruction weight (--beta, else the preset's released one).
    beta: float
    latent: int
    #: The loss network's weights (None: random, for tests).
    weights: str | None
    fused: bool | None
    # the data
    data: str
    crop: str
    subset: int
    cache_dir: str | None
    workers: int | None
    # the optimisation
    seed: int
    epochs: int
    batch_size: int
    lr: float
    beta1: float
    halve_lr_every: int
    max_steps: int
    time_budget: float
    # speed
    #: The autocast mode ('off', 'bf16' or 'fp16'), resolved from --amp, the device and the resumed run's.
    amp: str
    amp_reason: str
    channels_last: bool
    compile: bool
    # what the run writes
    checkpoint_every: int
    keep_every: int
    log_every: int
    progress: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace, folder: RunFolder, device: torch.device,
                  saved_amp: str | None = None) -> TrainConfig:
        """The configuration of :func:`dfcvae.train.parse_args`' ``args`` for a run in ``folder`` on ``device``;
        ``saved_amp`` is the autocast mode of the run being resumed (None when starting afresh)."""
        amp, amp_reason = resolve_amp(args.amp, device, saved_amp)
        return cls(
            folder=folder, device=device,
            preset=args.preset, balance=args.balance, alpha=args.alpha,
            beta=DEFAULT_BETA[args.preset] if args.beta is None else args.beta, latent=args.latent,
            weights=None if args.weights == "none" else args.weights, fused=FUSED[args.fused],
            data=args.data, crop=args.crop, subset=args.subset, cache_dir=args.cache_dir, workers=args.workers,
            seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, beta1=args.beta1,
            halve_lr_every=args.halve_lr_every, max_steps=args.max_steps, time_budget=args.time_budget,
            amp=amp, amp_reason=amp_reason, channels_last=args.channels_last, compile=args.compile,
            checkpoint_every=args.checkpoint_every, keep_every=args.keep_every, log_every=args.log_every,
            progress=not args.no_progress)

    def record(self, data: dict[str, Any], world_size: int) -> dict[str, Any]:
        """config.json and every checkpoint's "config": :data:`RECORDED`, then ``data`` (the faces' entries),
        the world size, the data folder and the device (what ``pretrained``, ``report`` and resumes read)."""
        record = {name: getattr(self, name) for name in RECORDED}
        record.update(data, world_size=world_size, data=str(self.data), device=str(self.device))
        return record
