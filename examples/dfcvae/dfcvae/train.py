"""Train a DFC-VAE (VAE-123, VAE-345) or the plain pixel-loss VAE (PVAE) on CelebA at 64x64.

    python examples/dfcvae/train.py --preset vae123                     # the paper's setting (5 epochs)
    python examples/dfcvae/train.py --preset vae123 --subset 4096 --epochs 1 --max-steps 60   # a short CPU run
    torchrun --nproc-per-node 4 examples/dfcvae/train.py --preset vae345 --channels-last --device cuda

Writes to --out: config.json, log.csv (and TensorBoard events when tensorboard is installed), per-epoch
grids/recon_eXX.png (inputs over reconstructions) and grids/samples_eXX.png (prior samples), and
checkpoint.pt (atomic; --resume continues it exactly, --overwrite starts an existing --out afresh). Ctrl-C and
SIGTERM (kill, timeout, batch schedulers) save a checkpoint and exit (codes 130 and 143).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path


import numpy as np
import torch

from .arguments import finite_float
from .celeba import DEFAULT_DATA, CROPS, CelebAError, build_cache, cache_key, load_celeba, to_float
from .checkpointing import (CheckpointError, CheckpointMismatch, check_compatible, load_model_weights,
                           nonfinite_weights, pack_rng, rank_rng, read_checkpoint, rng_state, save_atomic,
                           set_rng_state)
from .distributed import DeviceError, Distributed, launch_env, pick_device
from .files import LockHeld, atomic_write, hold_lock, tree_bytes, unwritable_reason, write_text_atomic
from .objective import BALANCES, DEFAULT_BETA, PRESETS, DFCObjective
from .vae import VAE

from perceptloss.hardware import bf16_native


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vae123", choices=list(PRESETS), help="loss: VGG19 layers 1-2-3, 3-4-5, or pixels")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CelebA folder in the official layout (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<preset>)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=finite_float, default=5e-4)
    p.add_argument("--beta1", type=finite_float, default=0.5)
    p.add_argument("--alpha", type=finite_float, default=1.0, help="KL weight")
    p.add_argument("--beta", type=finite_float, default=None,
                   help="reconstruction weight (default: the released code's, 0.5 for vae123/vae345, 1 for pvae)")
    p.add_argument("--balance", default="released", choices=BALANCES,
                   help="released: the authors' Torch code; per-sample: the paper's Eq. 4-5 literally (see objective.py)")
    p.add_argument("--latent", type=int, default=100)
    p.add_argument("--crop", default="released", choices=list(CROPS))
    p.add_argument("--subset", type=int, default=0, help="use only the first N training images (0: all)")
    p.add_argument("--max-steps", type=int, default=0, help="stop (with a checkpoint) after this many steps in all (0: no limit)")
    p.add_argument("--halve-lr-every", type=int, default=0, metavar="STEPS",
                   help="halve the learning rate every STEPS steps (0, the default: at the end of every epoch, as "
                        "the released code). The paper's schedule on 162,770 images: 2543 (one of its epochs of 64)")
    p.add_argument("--keep-every", type=int, default=0, metavar="STEPS",
                   help="also keep a copy of the checkpoint every STEPS steps in <out>/snapshots (0: none), for "
                        "evaluating the run as it trains (python -m dfcvae.trajectory)")
    p.add_argument("--time-budget", type=finite_float, default=0.0,
                   help="stop (with a checkpoint) once training has run this many seconds in this process (0: no "
                        "limit); running again with --resume continues. Single process only (ranks would disagree)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--amp", default=None, choices=AMP_CHOICES,
                   help="autocast for the VAE and VGG; auto (default): bf16 where the device computes it natively "
                        "(CPU with AVX512-BF16 or AMX, CUDA capability >= 8.0), off (float32) elsewhere; "
                        "--resume keeps the run's own")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the VAE and the loss network")
    p.add_argument("--fused", default="auto", choices=["auto", "on", "off"], help="fused distance operator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None, nargs="?", const="auto",
                   help="checkpoint to resume (no value: <out>/checkpoint.pt); another run's checkpoint continues "
                        "in --out, which must then hold no run (or add --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh (or continue another run's --resume checkpoint) in an --out that holds a run: "
                        "the old run is moved to <out>.previous-<time> once the new one has started")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--workers", type=int, default=None, help="processes decoding the image cache")
    p.add_argument("--cache-dir", default=None, help="where the decoded image cache lives")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--weights", default="default", help=argparse.SUPPRESS)  # 'none': random VGG (tests only)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = str(Path("runs") / args.preset)
    if args.beta is None:
        args.beta = DEFAULT_BETA[args.preset]
    for name in ("epochs", "batch_size", "log_every", "checkpoint_every", "latent"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}")
    for name, zero in (("subset", "all images"), ("max_steps", "no limit"), ("halve_lr_every", "every epoch"),
                       ("keep_every", "none")):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0 (0: {zero}), got {getattr(args, name)}")
    if args.time_budget < 0:
        p.error(f"--time-budget must be >= 0 seconds (0: no limit), got {args.time_budget}")
    if args.time_budget and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        p.error("--time-budget needs a single process (every rank must stop at the same step); use --max-steps")
    if args.workers is not None and args.workers <= 0:
        p.error(f"--workers must be positive (default: up to 8), got {args.workers}")
    if not 0 <= args.beta1 < 1:
        p.error(f"--beta1 must be in [0, 1), got {args.beta1}")
    if args.alpha < 0 or args.beta < 0:
        p.error("--alpha and --beta must be >= 0")
    if args.overwrite and resumes_own_run(args):
        p.error(f"--resume {'' if args.resume == 'auto' else args.resume + ' '}continues the run in --out {args.out} "
                "and --overwrite would move it aside: choose one")
    world, _, local_rank = launch_env()
    try:
        args.device = pick_device(args.device, local_rank, world)
    except DeviceError as e:
        p.error(str(e))
    return args


AMP_CHOICES = ("auto", "off", "bf16", "fp16")


def resumes_own_run(args: argparse.Namespace) -> bool:
    """Whether --resume names --out's own checkpoint (however the path is spelled)."""
    if not args.resume:
        return False
    if args.resume == "auto":
        return True
    own, given = Path(args.out) / "checkpoint.pt", Path(args.resume)
    if own.exists() and given.exists():
        return os.path.samefile(own, given)
    return own.resolve() == given.resolve()


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


def save_grids(model: VAE, fixed: torch.Tensor, z: torch.Tensor, folder: Path, tag: str) -> None:
    """recon_<tag>.png (inputs over reconstructions from the posterior mean) and samples_<tag>.png."""
    from torchvision.utils import make_grid, save_image

    was_training = model.training
    model.eval()
    with torch.no_grad():
        mean, _ = model.encoder(fixed)
        recon = model.decoder(mean).float().clamp(0, 1)
        samples = model.decoder(z).float().clamp(0, 1)
    model.train(was_training)
    folder.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(torch.cat([fixed.float(), recon]), nrow=fixed.shape[0], padding=1), folder / f"recon_{tag}.png")
    save_image(make_grid(samples, nrow=8, padding=1), folder / f"samples_{tag}.png")


class Logger:
    """CSV log (continued across resumes, first cut back to the checkpoint's step) plus TensorBoard when it is
    installed."""

    FIELDS = ["step", "epoch", "lr", "loss", "kl", "rec", "images_per_s", "elapsed_s"]

    def __init__(self, out: Path, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        path = out / "log.csv"
        if path.exists():
            truncate_log(path, resume_step)
        new = not path.exists()
        self.file = open(path, "a", newline="")
        self.csv = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        if new:
            self.csv.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"), purge_step=resume_step + 1 if resume_step else None)
        except Exception:  # tensorboard not installed
            self.tb = None

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.csv.writerow(row)
        self.file.flush()
        if self.tb is not None:
            for k in ("loss", "kl", "rec", "lr", "images_per_s"):
                self.tb.add_scalar(k, row[k], row["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def truncate_log(path: Path, step: int) -> None:
    """Keep only the rows of ``path`` up to ``step`` (those after the checkpoint are about to be re-run)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if (r.get("step") or "").isdigit() and int(r["step"]) <= step]
    if len(keep) == len(rows):
        return
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=Logger.FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(keep)

    atomic_write(path, write)


class Terminated(Exception):
    """SIGTERM arrived: stop like Ctrl-C, with a checkpoint."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Turn SIGTERM into :class:`Terminated` in the main thread for the duration (kill, timeout, schedulers)."""
    def handler(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def ignore_sigterm() -> None:
    """Ignore further SIGTERMs (inside :func:`sigterm_as_interrupt`, which restores the handler afterwards)."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass


class SetupError(RuntimeError):
    """A problem found before or outside the training steps (the message says what to do); exit code 2."""


# ------------------------------------------------------------------------------------------ the steps
RUN_FILES = ("checkpoint.pt", "config.json", "log.csv")
#: Everything a run writes in --out (moved aside together by --overwrite).
RUN_ITEMS = RUN_FILES + ("grids", "tb")
#: The lock file in --out that the main process holds for the whole run (it stays in --out, empty when free).
LOCK_FILE = "train.lock"


def prepare_output(args: argparse.Namespace, dist: Distributed, held: contextlib.ExitStack) -> Path:
    """Check --out before any expensive work: writable, not in use by another train.py, and never an existing run
    unless --resume continues it or --overwrite moves it aside.

    The main process takes an exclusive lock on ``--out/train.lock`` (:func:`files.hold_lock`) into ``held`` first,
    so that the check and the whole run are one process's: a second train.py on the same --out fails at once,
    naming the PID and host that hold it."""
    out = Path(args.out)
    if dist.main:
        if reason := unwritable_reason(out):
            raise SetupError(f"cannot write to --out {out} ({reason}); choose a writable folder")
        try:
            held.enter_context(hold_lock(out / LOCK_FILE))
        except LockHeld as e:
            holder = e.holder or "a process that has not written its PID yet"
            raise SetupError(f"{out} is in use by another train.py ({holder}); wait for it to end (or stop it), "
                             "or choose another --out") from None
        except OSError as e:
            raise SetupError(f"cannot lock {out / LOCK_FILE} ({e.strerror or e}); choose an --out on a file system "
                             "with file locks") from None
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not args.overwrite:
        if not args.resume:
            raise SetupError(f"{out} already holds a run ({', '.join(existing)}); use --resume to continue it, "
                             "--overwrite to start over (the old run is moved aside), or another --out")
        if not resumes_own_run(args):
            raise SetupError(f"{out} already holds a run ({', '.join(existing)}) and --resume {args.resume} is another "
                             f"run's checkpoint: continuing it there would replace that run; add --overwrite (the run "
                             f"in {out} is moved aside first), or resume into another --out")
    return out


def move_previous_run(out: Path) -> Path | None:
    """For --overwrite, once the new run has started (everything checked, data loaded, model built): move the
    previous run's files out of ``out`` into a sibling ``<out>.previous-<date>-<time>`` and return it (None when
    ``out`` held no run). Nothing is deleted."""
    items = [out / name for name in RUN_ITEMS if (out / name).exists()]
    if not items:
        return None
    base = out.resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = base.parent / f"{base.name}.previous-{stamp}"
    for n in range(2, 1000):
        if not aside.exists():
            break
        aside = base.parent / f"{base.name}.previous-{stamp}-{n}"
    aside.mkdir(parents=True)
    for item in items:
        os.replace(item, aside / item.name)
    return aside


def moved_note(out: Path, aside: Path) -> str:
    """The line --overwrite prints: where the previous run went, its size, and the older copies beside it."""
    note = (f"--overwrite: moved the previous run in {out} to {aside} ({tree_bytes(aside) / 1e6:.1f} MB; delete it "
            "when you no longer need it)")
    pattern = f"{out.resolve().name}.previous-*"
    older = [p for p in aside.parent.glob(pattern) if p.is_dir() and p != aside]
    if older:
        size = sum(tree_bytes(p) for p in older)
        note += (f"; {len(older)} older previous run{'s' if len(older) != 1 else ''} beside it "
                 f"hold{'s' if len(older) == 1 else ''} {size / 1e6:.1f} MB ({aside.parent / pattern})")
    return note


def load_data(args: argparse.Namespace, dist: Distributed) -> tuple[np.ndarray, dict]:
    """The decoded training faces (N, 64, 64, 3) uint8 and the data part of the run's config."""
    try:
        data = load_celeba(args.data, verbose=dist.main).split("train")
        if len(data) == 0:
            raise CelebAError(f"{args.data} has no images of the official train split")
        if args.subset:
            data = data.select(range(min(args.subset, len(data))))
        # Every rank asks for the cache: the first decodes it under a file lock, the others wait on the lock (no
        # collective is pending meanwhile, so no process-group timeout) and then read the finished file.
        cache = build_cache(data, args.crop, 64, args.cache_dir, args.workers,
                            progress=dist.main and not args.no_progress)
    except CelebAError as e:
        raise SetupError(str(e)) from None
    n = len(cache.images)
    per_step = args.batch_size * dist.world
    if n // per_step == 0:
        raise SetupError(f"{n} images are fewer than one batch of {per_step}; lower --batch-size")
    return cache.images, dict(data_key=cache_key(data.files, args.crop, 64), images=n, steps_per_epoch=n // per_step)


@dataclass
class Training:
    """Everything the loop updates and a checkpoint holds."""

    model: VAE
    objective: DFCObjective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    config: dict
    step: int = 0
    #: The step of the last checkpoint in --out known to be good (written or resumed by this process), or None.
    saved_step: int | None = None

    def state(self, rng: dict) -> dict:
        """The checkpoint's contents; ``rng`` is :func:`checkpointing.pack_rng` of every rank's random state."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
                "rng": rng, "config": self.config}


def build(args: argparse.Namespace, device: torch.device, config: dict, rank: int = 0) -> Training:
    """Model, objective, optimizer, per-epoch lr halving and grad scaler, freshly initialised from --seed.

    Every rank initialises the same model; ranks after the first then reseed, so that each process draws its own
    reparameterisation noise (rank 0 keeps the single-process stream)."""
    torch.manual_seed(args.seed)
    model = VAE(args.latent).to(device)
    if rank > 0:
        torch.manual_seed(args.seed * 1_000_003 + rank)  # the CPU and every CUDA generator
    weights = None if args.weights == "none" else args.weights
    fused = {"auto": None, "on": True, "off": False}[args.fused]
    objective = DFCObjective(args.preset, args.alpha, args.beta, args.balance, weights=weights, fused=fused).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        objective = objective.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    # Halve the learning rate at the start of every epoch after the first (per epoch, not per iteration), or every
    # --halve-lr-every steps: the scheduler counts halvings, train_loop steps it.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5 ** epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    return Training(model, objective, optimizer, scheduler, scaler, config)


def read_resume(args: argparse.Namespace, out: Path) -> tuple[Path, dict]:
    """The path and contents of --resume's checkpoint (SetupError for a missing, damaged or foreign one)."""
    path = out / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        raise SetupError(f"no checkpoint at {path}; run without --resume to start")
    try:
        return path, read_checkpoint(path)
    except CheckpointError as e:
        raise SetupError(str(e)) from None


def resume(run: Training, path: Path, state: dict, dist: Distributed) -> None:
    """Load a checkpoint's ``state`` (read from ``path``) into ``run``, refusing one from another configuration."""
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
            torch.manual_seed(run.config["seed"] * 1_000_003 + state["step"] * 1009 + dist.rank)
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


def grid_inputs(run: Training, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed inputs of the per-epoch grids: the first 8 training faces and 64 prior codes (seed 1234)."""
    device = next(run.model.parameters()).device
    fixed = to_float(torch.from_numpy(np.array(images[:8]))).to(device)
    return fixed, torch.randn(64, run.model.latent, generator=torch.Generator().manual_seed(1234)).to(device)


def keep_snapshot(out: Path, step: int) -> Path:
    """Copy ``out/checkpoint.pt`` (just written at ``step``) to ``out/snapshots/step-<step>.pt``, atomically."""
    path = out / "snapshots" / f"step-{step:06d}.pt"
    path.parent.mkdir(exist_ok=True)
    try:
        atomic_write(path, lambda tmp: shutil.copyfile(out / "checkpoint.pt", tmp))
    except OSError as e:
        raise SetupError(f"could not write {path} ({e.strerror or e}); the checkpoint is intact: free space "
                         "(or choose another --out) and continue with --resume") from None
    return path


def train_loop(args: argparse.Namespace, run: Training, images: np.ndarray, device: torch.device, dist: Distributed,
               out: Path, logger: Logger) -> bool:
    """Train from ``run.step`` to the end (or --max-steps); checkpoints every --checkpoint-every steps and at epoch ends.

    Returns True when --time-budget stopped it before the end (the caller saves the checkpoint and grids).
    """
    n, per_step = len(images), args.batch_size * dist.world
    steps_per_epoch = run.config["steps_per_epoch"]
    total_steps = steps_per_epoch * args.epochs
    stop_at = min(total_steps, args.max_steps) if args.max_steps else total_steps
    net = run.model
    if dist.world > 1:
        # one GPU per process: its own device (cuda:<LOCAL_RANK>, set by Distributed), none for the CPU
        net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None,
            output_device=device.index if device.type == "cuda" else None)
    forward = torch.compile(net) if args.compile else net
    loss_fn = torch.compile(run.objective) if args.compile else run.objective
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16)) \
        if args.amp != "off" else contextlib.nullcontext
    fixed, z_fixed = grid_inputs(run, images)
    progress = None
    if dist.main and not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=stop_at, initial=run.step, desc=args.preset, unit="step", mininterval=1.0, file=sys.stderr)
    t_last, seen = time.perf_counter(), 0
    t_start = time.perf_counter()
    try:
        while run.step < stop_at:
            epoch, it = divmod(run.step, steps_per_epoch)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 100003 + epoch)).numpy()
            while it < steps_per_epoch and run.step < stop_at:
                lo = it * per_step + dist.rank * args.batch_size
                batch = torch.from_numpy(images[np.sort(perm[lo:lo + args.batch_size])])
                if device.type == "cuda":
                    batch = batch.pin_memory()
                x = to_float(batch.to(device, non_blocking=True))
                if args.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    recon, mean, logvar = forward(x)
                    # every step, before the loss (whose input check would raise) and before any save
                    check_step(dist, "model's output", all_finite(recon, mean, logvar), run.step + 1)
                    terms = loss_fn(recon, x, mean, logvar)
                check_step(dist, "loss", all_finite(terms.total), run.step + 1, terms.total)
                run.optimizer.zero_grad(set_to_none=True)
                run.scaler.scale(terms.total).backward()
                run.scaler.step(run.optimizer)
                run.scaler.update()
                run.step, it, seen = run.step + 1, it + 1, seen + per_step
                if run.step % args.log_every == 0 or run.step == stop_at:
                    now = time.perf_counter()
                    row = {"step": run.step, "epoch": epoch, "lr": run.optimizer.param_groups[0]["lr"],
                           "loss": terms.total.item(), "kl": terms.kl.item(), "rec": terms.rec.item(),
                           "images_per_s": seen / (now - t_last), "elapsed_s": now - t_start}
                    logger.log(row)
                    if progress is not None:
                        progress.set_postfix(loss=f"{row['loss']:.4g}", kl=f"{row['kl']:.3g}", rec=f"{row['rec']:.4g}",
                                             img_s=f"{row['images_per_s']:.1f}")
                    t_last, seen = now, 0
                if progress is not None:
                    progress.update(1)
                if args.halve_lr_every and run.step % args.halve_lr_every == 0:
                    run.scheduler.step()
                kept = bool(args.keep_every) and run.step % args.keep_every == 0
                if run.step % args.checkpoint_every == 0 or kept:
                    save_checkpoint(run, out / "checkpoint.pt", dist)
                    if kept and dist.main:
                        keep_snapshot(out, run.step)
                if args.time_budget and time.perf_counter() - t_start >= args.time_budget and run.step < stop_at:
                    return True
            if it == steps_per_epoch:  # epoch finished: halve the lr for the next one (by default), write its grids
                if not args.halve_lr_every:
                    run.scheduler.step()
                save_checkpoint(run, out / "checkpoint.pt", dist)  # first: it refuses non-finite weights
                if dist.main:
                    save_grids(run.model, fixed, z_fixed, out / "grids", f"e{epoch + 1:02d}")
    finally:
        if progress is not None:
            progress.close()
    return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dist = Distributed(args.device)
    logger, run, out = None, None, Path(args.out)
    code, stopped_by = 0, ""
    held = contextlib.ExitStack()  # the --out lock, released last
    try:
        with sigterm_as_interrupt():
            try:
                out = prepare_output(args, dist, held)
                path, saved = read_resume(args, out) if args.resume else (None, None)
                args.amp, why = resolve_amp(args.amp, args.device, saved and saved["config"].get("amp", "off"))
                if dist.main:
                    print(f"amp: {args.amp} ({why})", file=sys.stderr)
                images, data_config = load_data(args, dist)
                config = {k: getattr(args, k) for k in ("preset", "balance", "alpha", "beta", "batch_size", "lr", "beta1",
                                                        "seed", "crop", "subset", "latent", "epochs", "amp",
                                                        "halve_lr_every", "channels_last", "compile")}
                config.update(data_config, world_size=dist.world, data=str(args.data), device=str(args.device))
                run = build(args, args.device, config, dist.rank)
                if saved is not None:
                    resume(run, path, saved, dist)
                    if resumes_own_run(args):
                        run.saved_step = run.step
                if dist.main:
                    if args.overwrite and (aside := move_previous_run(out)) is not None:
                        print(moved_note(out, aside), file=sys.stderr)
                    write_text_atomic(out / "config.json", json.dumps(config, indent=2))
                logger = Logger(out, dist.main, run.step)
                if train_loop(args, run, images, args.device, dist, out, logger):
                    stopped_by = f"the time budget (--time-budget {args.time_budget:g} s)"
            except (KeyboardInterrupt, Terminated) as e:
                stopped_by = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
                code = 143 if isinstance(e, Terminated) else 130
                if run is None:
                    raise SetupError(f"stopped by {stopped_by} before training started; nothing to save") from None
            ignore_sigterm()  # let the final save finish (it is atomic anyway)
            save_checkpoint(run, out / "checkpoint.pt", dist, interrupted=bool(code))
            if dist.main:
                save_grids(run.model, *grid_inputs(run, images), out / "grids", "last")
    except SetupError as e:
        if dist.main:
            print(f"error: {e}", file=sys.stderr)
        return code or 2
    except FloatingPointError as e:  # diverged: nothing non-finite was saved, the last good checkpoint is kept
        if dist.main:
            good = run.saved_step if run is not None else None
            kept = (f"the last good checkpoint, {out / 'checkpoint.pt'} (step {good}), is kept" if good is not None
                    else f"no checkpoint had been written in {out}")
            print(f"error: training diverged: {e}; {kept}; start a new run with --amp off or a lower --lr "
                  "(another --out, or --overwrite)", file=sys.stderr)
        return 1
    finally:
        if logger is not None:
            logger.close()
        held.close()
        dist.close()
    if dist.main:
        total = run.config["steps_per_epoch"] * args.epochs
        print(f"{'stopped by ' + stopped_by if stopped_by else 'stopped'} at step {run.step}/{total}; checkpoint "
              f"{out / 'checkpoint.pt'}, grids in {out / 'grids'}, log {out / 'log.csv'}"
              f"{'; continue with --resume' if run.step < total else ''}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
