"""Train a DFC-VAE (VAE-123, VAE-345) or the plain pixel-loss VAE (PVAE) on CelebA at 64x64.

    python examples/dfcvae/train.py --preset vae123                     # the paper's setting (5 epochs)
    python examples/dfcvae/train.py --preset vae123 --subset 4096 --epochs 1 --max-steps 60   # a short CPU run
    torchrun --nproc-per-node 4 examples/dfcvae/train.py --preset vae345 --channels-last --device cuda

Writes to --out: config.json, log.csv (and TensorBoard events when tensorboard is installed), per-epoch
grids/recon_eXX.png (inputs over reconstructions) and grids/samples_eXX.png (prior samples), and
checkpoint.pt (atomic; --resume continues it exactly, --overwrite starts an existing --out afresh). Ctrl-C and
SIGTERM (kill, timeout, batch schedulers) save a checkpoint and exit (codes 130 and 143); after a harder kill,
--resume removes the temporary files it left and re-creates the snapshot whose copy it cut short.
"""
from __future__ import annotations

import argparse
import os
import sys

from .arguments import finite_float
from .celeba import DEFAULT_DATA, CROPS
from .distributed import DeviceError, Distributed, process_device
from .objective import BALANCES, PRESETS
from .training.config import AMP_CHOICES, RunFolder, TrainConfig
from .training.errors import SetupError
from .training.session import Session
from .training.signals import Terminated, ignore_sigterm, sigterm_as_interrupt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked (a bad value is argparse's usage error, exit code 2); never changed afterwards:
    the defaults that depend on other options are resolved by :class:`TrainConfig`."""
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
    if problem := argument_problem(args):
        p.error(problem)
    return args


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the parsed ``args`` beyond their types (the first problem), or None."""
    for name in ("epochs", "batch_size", "log_every", "checkpoint_every", "latent"):
        if getattr(args, name) <= 0:
            return f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
    if not args.lr > 0:
        return f"--lr must be positive, got {args.lr}"
    for name, zero in (("subset", "all images"), ("max_steps", "no limit"), ("halve_lr_every", "every epoch"),
                       ("keep_every", "none")):
        if getattr(args, name) < 0:
            return f"--{name.replace('_', '-')} must be >= 0 (0: {zero}), got {getattr(args, name)}"
    if args.time_budget < 0:
        return f"--time-budget must be >= 0 seconds (0: no limit), got {args.time_budget}"
    if args.time_budget and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "--time-budget needs a single process (every rank must stop at the same step); use --max-steps"
    if args.workers is not None and args.workers <= 0:
        return f"--workers must be positive (default: up to 8), got {args.workers}"
    if not 0 <= args.beta1 < 1:
        return f"--beta1 must be in [0, 1), got {args.beta1}"
    if args.alpha < 0 or (args.beta is not None and args.beta < 0):
        return "--alpha and --beta must be >= 0"
    if args.overwrite and (folder := RunFolder.from_args(args)).continues_own_run:
        return (f"--resume {'' if args.resume == 'auto' else args.resume + ' '}continues the run in --out "
                f"{folder.out if args.out is None else args.out} and --overwrite would move it aside: choose one")
    try:
        process_device(args.device)
    except DeviceError as e:
        return str(e)
    return None


def main(argv: list[str] | None = None) -> int:
    """The training program on ``argv``; the exit code: 0, 1 (diverged), 2 (a setup problem, said in one line),
    130 (Ctrl-C) or 143 (SIGTERM; a started run saves a checkpoint first)."""
    args = parse_args(argv)
    from perceptloss.backends.cpu import retain_freed_memory

    retain_freed_memory()  # this program's own process: each step reuses the memory the last one freed
    session = Session(RunFolder.from_args(args), Distributed(process_device(args.device)))
    main_process = session.dist.main
    code, stopped_by = 0, ""
    try:
        with sigterm_as_interrupt():
            try:
                saved = session.open()
                saved_amp = saved["config"].get("amp", "off") if saved is not None else None
                session.start(TrainConfig.from_args(args, session.folder, session.dist.device, saved_amp), saved)
                stopped_by = session.train()
            except (KeyboardInterrupt, Terminated) as e:
                stopped_by = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
                code = 143 if isinstance(e, Terminated) else 130
                if session.run is None:
                    raise SetupError(f"stopped by {stopped_by} before training started; nothing to save") from None
            ignore_sigterm()  # let the final save finish (it is atomic anyway)
            session.finish(interrupted=bool(code))
    except SetupError as e:
        if main_process:
            print(f"error: {e}", file=sys.stderr)
        return code or 2
    except FloatingPointError as e:  # diverged: nothing non-finite was saved, the last good checkpoint is kept
        if main_process:
            print(session.diverged(e), file=sys.stderr)
        return 1
    finally:
        session.close()
    if main_process:
        print(session.summary(stopped_by), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
