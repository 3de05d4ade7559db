"""Figures of the report (matplotlib's object API, no pyplot: no global backend or state): labelled image rows,
side-by-side panels, correlation circles, and the t-SNE face grid."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid


def _to_hwc(grid: torch.Tensor) -> np.ndarray:
    return grid.permute(1, 2, 0).clamp(0, 1).numpy()


def _save(fig, path: Path, suptitle: str = "") -> Path:
    if suptitle:  # wrapped to the figure's width (about 11 characters per inch at this size)
        fig.suptitle(textwrap.fill(suptitle, max(30, int(11 * fig.get_figwidth()))), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def image_rows(rows: Sequence[torch.Tensor], labels: Sequence[str], path: Path, title: str = "",
               col_labels: Sequence[str] | None = None) -> Path:
    """One labelled row per (k, 3, H, W) tensor (rows of equal length)."""
    k = rows[0].shape[0]
    grid = make_grid(torch.cat(list(rows)), nrow=k, padding=1, pad_value=1.0)
    h = rows[0].shape[-2] + 1
    fig = Figure(figsize=(max(4.0, 0.75 * k + 1.5), 0.75 * len(rows) + (0.6 if title else 0.3)), dpi=100)
    ax = fig.subplots()
    ax.imshow(_to_hwc(grid))
    ax.set_yticks([h * i + h / 2 for i in range(len(rows))], labels, fontsize=8)
    if col_labels is not None:
        w = rows[0].shape[-1] + 1
        ax.set_xticks([w * i + w / 2 for i in range(k)], col_labels, fontsize=7)
    else:
        ax.set_xticks([])
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def panels(images: Sequence[torch.Tensor], titles: Sequence[str], path: Path, nrow: int = 6, suptitle: str = "") -> Path:
    """Side-by-side grids, one per (k, 3, H, W) tensor, each with its title (Figure 3 style)."""
    fig = Figure(figsize=(3.2 * len(images), 3.5), dpi=100)
    axes = fig.subplots(1, len(images))
    axes = np.atleast_1d(axes)
    for ax, imgs, t in zip(axes, images, titles):
        ax.imshow(_to_hwc(make_grid(imgs, nrow=nrow, padding=1, pad_value=1.0)))
        ax.set_title(t, fontsize=10)
        ax.axis("off")
    return _save(fig, path, suptitle=suptitle)


def correlation_circles(corr: np.ndarray, names: Sequence[str], path: Path, title: str = "") -> Path:
    """Figure 7: a circle per pair, its size and colour by the correlation (blue positive, red negative)."""
    n = len(names)
    fig = Figure(figsize=(7.6, 6.4), dpi=100)
    ax = fig.subplots()
    ii, jj = np.meshgrid(np.arange(n), np.arange(n))
    sc = ax.scatter(ii.ravel(), jj.ravel(), s=np.abs(corr).ravel() * 420, c=corr.ravel(), cmap="RdBu",
                    vmin=-1, vmax=1, edgecolors="grey", linewidths=0.3)
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(n - 0.4, -0.6)
    ax.set_aspect("equal")
    ax.grid(True, color="#eeeeee", linewidth=0.5)
    ax.set_axisbelow(True)
    fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.04, label="Pearson correlation")
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def face_grid(faces: torch.Tensor, cells: np.ndarray, side: int, path: Path, thumb: int = 16) -> Path:
    """Faces (side*side, 3, H, W) placed at their grid cells, downscaled to ``thumb`` px, as one image
    (JPEG when ``path`` ends in .jpg: a 40x40 grid of faces is photographic and large as PNG)."""
    from PIL import Image

    small = torch.nn.functional.interpolate(faces, size=thumb, mode="area")
    ordered = torch.empty_like(small)
    ordered[torch.from_numpy(cells)] = small
    grid = make_grid(ordered, nrow=side, padding=0)
    pixels = (grid.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    Image.fromarray(pixels).save(path, **({"quality": 90} if path.suffix.lower() in (".jpg", ".jpeg") else {}))
    return path
