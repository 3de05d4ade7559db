"""What a run shows as it trains: log.csv (and TensorBoard), the progress bar, and the grids of faces."""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..celeba import to_float
from ..files import atomic_write
from ..objective import Terms
from ..vae import VAE


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

    def log(self, row: dict[str, Any]) -> None:
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


class Meter:
    """The log rows' clock: images per second since the previous row, seconds since the loop started."""

    def __init__(self) -> None:
        self.last, self.seen = time.perf_counter(), 0
        self.start = time.perf_counter()

    def count(self, images: int) -> None:
        self.seen += images

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def row(self, step: int, epoch: int, lr: float, terms: Terms) -> dict[str, Any]:
        """The log row of ``step`` (one synchronisation: the terms' values); starts the next interval."""
        now = time.perf_counter()
        row = {"step": step, "epoch": epoch, "lr": lr, "loss": terms.total.item(), "kl": terms.kl.item(),
               "rec": terms.rec.item(), "images_per_s": self.seen / (now - self.last), "elapsed_s": now - self.start}
        self.last, self.seen = now, 0
        return row


class Progress:
    """The progress bar of the main process (nothing elsewhere, or with --no-progress)."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", mininterval=1.0, file=sys.stderr)

    def show(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['loss']:.4g}", kl=f"{row['kl']:.3g}", rec=f"{row['rec']:.4g}",
                                 img_s=f"{row['images_per_s']:.1f}")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def grid_inputs(model: VAE, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed inputs of the per-epoch grids: the first 8 training faces and 64 prior codes (seed 1234)."""
    device = next(model.parameters()).device
    fixed = to_float(torch.from_numpy(np.array(images[:8]))).to(device)
    return fixed, torch.randn(64, model.latent, generator=torch.Generator().manual_seed(1234)).to(device)


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
