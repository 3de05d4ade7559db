#!/usr/bin/env python
"""Train a DFC-VAE (VAE-123, VAE-345) or the plain pixel-loss VAE (PVAE) on CelebA at 64x64.

    python examples/dfcvae/train.py --preset vae123                     # the paper's setting (5 epochs)
    python examples/dfcvae/train.py --preset vae123 --subset 4096 --epochs 1 --max-steps 60   # a short CPU run
    torchrun --nproc-per-node 4 examples/dfcvae/train.py --preset vae345 --amp bf16 --channels-last

Writes to --out: config.json, log.csv (and TensorBoard events when tensorboard is installed), per-epoch
grids/recon_eXX.png (inputs over reconstructions) and grids/samples_eXX.png (prior samples), and
checkpoint.pt (atomic; --resume continues it exactly). Ctrl-C saves a checkpoint and exits.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from celeba import DEFAULT_DATA, CROPS, CelebAError, build_cache, cache_key, load_celeba, to_float  # noqa: E402
from checkpointing import CheckpointMismatch, check_compatible, rng_state, save_atomic, set_rng_state  # noqa: E402
from objective import BALANCES, PRESETS, DFCObjective  # noqa: E402
from vae import VAE  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vae123", choices=list(PRESETS), help="loss: VGG19 layers 1-2-3, 3-4-5, or pixels")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CelebA folder in the official layout (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<preset>)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta1", type=float, default=0.5)
    p.add_argument("--alpha", type=float, default=1.0, help="KL weight")
    p.add_argument("--beta", type=float, default=0.5, help="reconstruction weight")
    p.add_argument("--balance", default="released", choices=BALANCES,
                   help="released: KL summed over the batch (authors' code); per-sample: KL averaged")
    p.add_argument("--latent", type=int, default=100)
    p.add_argument("--crop", default="released", choices=list(CROPS))
    p.add_argument("--subset", type=int, default=0, help="use only the first N training images (0: all)")
    p.add_argument("--max-steps", type=int, default=0, help="stop (with a checkpoint) after this many steps in all")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="autocast for the VAE and VGG")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the VAE and the loss network")
    p.add_argument("--fused", default="auto", choices=["auto", "on", "off"], help="fused distance operator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None, nargs="?", const="auto",
                   help="checkpoint to resume (no value: <out>/checkpoint.pt)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--workers", type=int, default=None, help="processes decoding the image cache")
    p.add_argument("--cache-dir", default=None, help="where the decoded image cache lives")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--weights", default="default", help=argparse.SUPPRESS)  # 'none': random VGG (tests only)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = str(Path("runs") / args.preset)
    for name in ("epochs", "batch_size", "log_every", "checkpoint_every"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


class Distributed:
    """torchrun-aware process group (a no-op for single-process runs)."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1:
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world > 1:
            torch.distributed.destroy_process_group()


def pick_device(name: str | None) -> torch.device:
    if name is None:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available; use --device cpu")
    return device


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
    """CSV log (appended across resumes) plus TensorBoard when it is installed."""

    FIELDS = ["step", "epoch", "lr", "loss", "kl", "rec", "images_per_s", "elapsed_s"]

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        path = out / "log.csv"
        new = not path.exists()
        self.file = open(path, "a", newline="")
        self.csv = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        if new:
            self.csv.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"))
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    dist = Distributed(device)
    out = Path(args.out)
    try:
        data = load_celeba(args.data, verbose=dist.main).split("train")
    except CelebAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.subset:
        data = data.select(range(min(args.subset, len(data))))
    if dist.main:
        cache = build_cache(data, args.crop, 64, args.cache_dir, args.workers, progress=not args.no_progress)
    dist.barrier()
    if not dist.main:
        cache = build_cache(data, args.crop, 64, args.cache_dir, args.workers, progress=False)
    images = cache.images
    n = len(images)
    per_step = args.batch_size * dist.world
    steps_per_epoch = n // per_step
    if steps_per_epoch == 0:
        print(f"error: {n} images are fewer than one batch of {per_step}; lower --batch-size", file=sys.stderr)
        return 2
    config = {k: getattr(args, k) for k in ("preset", "balance", "alpha", "beta", "batch_size", "lr", "beta1", "seed",
                                            "crop", "subset", "latent", "epochs", "amp", "channels_last", "compile")}
    config.update(data_key=cache_key(data.files, args.crop, 64), world_size=dist.world, images=n,
                  steps_per_epoch=steps_per_epoch, data=str(args.data), device=str(device))

    torch.manual_seed(args.seed)
    model = VAE(args.latent).to(device)
    weights = None if args.weights == "none" else args.weights
    fused = {"auto": None, "on": True, "off": False}[args.fused]
    objective = DFCObjective(args.preset, args.alpha, args.beta, args.balance, weights=weights, fused=fused).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        objective = objective.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    # Halve the learning rate at the start of every epoch after the first (per epoch, not per iteration).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5 ** epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    step = 0
    ckpt_path = out / "checkpoint.pt"
    if args.resume:
        path = ckpt_path if args.resume == "auto" else Path(args.resume)
        if not path.is_file():
            print(f"error: no checkpoint at {path}; run without --resume to start", file=sys.stderr)
            return 2
        state = torch.load(path, map_location="cpu", weights_only=False)
        try:
            check_compatible(state["config"], config, path)
        except CheckpointMismatch as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step = state["step"]
        set_rng_state(state["rng"])
        if dist.main:
            print(f"resumed {path} at step {step}", file=sys.stderr)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config, indent=2))
    net = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(net) if args.compile else net
    loss_fn = torch.compile(objective) if args.compile else objective
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16)) \
        if args.amp != "off" else contextlib.nullcontext

    fixed = to_float(torch.from_numpy(np.array(images[:8]))).to(device)
    z_fixed = torch.randn(64, args.latent, generator=torch.Generator().manual_seed(1234)).to(device)
    logger = Logger(out, dist.main)
    total_steps = steps_per_epoch * args.epochs
    stop_at = min(total_steps, args.max_steps) if args.max_steps else total_steps

    def checkpoint() -> None:
        if dist.main:
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                         "rng": rng_state(), "config": config}, ckpt_path)

    progress = None
    if dist.main and not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=stop_at, initial=step, desc=args.preset, unit="step", mininterval=1.0, file=sys.stderr)
    interrupted = False
    t_last, seen = time.perf_counter(), 0
    t_start = time.perf_counter()
    try:
        while step < stop_at:
            epoch, it = divmod(step, steps_per_epoch)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 100003 + epoch)).numpy()
            while it < steps_per_epoch and step < stop_at:
                lo = it * per_step + dist.rank * args.batch_size
                idx = np.sort(perm[lo:lo + args.batch_size])
                batch = torch.from_numpy(images[idx])
                if device.type == "cuda":
                    batch = batch.pin_memory()
                x = to_float(batch.to(device, non_blocking=True))
                if args.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    recon, mean, logvar = forward(x)
                    terms = loss_fn(recon, x, mean, logvar)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms.total).backward()
                scaler.step(optimizer)
                scaler.update()
                step, it, seen = step + 1, it + 1, seen + per_step
                if step % args.log_every == 0 or step == stop_at:
                    now = time.perf_counter()
                    row = {"step": step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                           "loss": terms.total.item(), "kl": terms.kl.item(), "rec": terms.rec.item(),
                           "images_per_s": seen / (now - t_last), "elapsed_s": now - t_start}
                    if not np.isfinite(row["loss"]):
                        raise FloatingPointError(f"loss became {row['loss']} at step {step}; try --amp off or a lower --lr")
                    logger.log(row)
                    if progress is not None:
                        progress.set_postfix(loss=f"{row['loss']:.4g}", kl=f"{row['kl']:.3g}", rec=f"{row['rec']:.4g}",
                                             img_s=f"{row['images_per_s']:.1f}")
                    t_last, seen = now, 0
                if progress is not None:
                    progress.update(1)
                if step % args.checkpoint_every == 0:
                    checkpoint()
            if it == steps_per_epoch:  # epoch finished: halve the lr for the next one, write its grids
                scheduler.step()
                if dist.main:
                    save_grids(model, fixed, z_fixed, out / "grids", f"e{epoch + 1:02d}")
                checkpoint()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if progress is not None:
            progress.close()
    checkpoint()
    if dist.main:
        save_grids(model, fixed, z_fixed, out / "grids", "last")
        print(f"{'interrupted' if interrupted else 'stopped'} at step {step}/{total_steps}; checkpoint {ckpt_path}, "
              f"grids in {out / 'grids'}, log {out / 'log.csv'}", file=sys.stderr)
    logger.close()
    dist.close()
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
