"""Real CelebA test-split images for the ``perceptloss score`` and metric tests: a reference folder and
JPEG-compressed and blurred copies, made in a temporary folder (nothing from CelebA enters the repository)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from .helpers import SHARED_CELEBA

SIZE = 64  # the centred 64x64 window of the 89x109 images


def celeba_test_files(count: int) -> list[Path]:
    """The first ``count`` images of CelebA's official test split that the shared subset holds."""
    root = Path(SHARED_CELEBA)
    if not (root / "list_eval_partition.txt").is_file():
        pytest.skip(f"the CelebA subset is not at {root}")
    files = []
    for line in (root / "list_eval_partition.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == "2" and (root / "img_align_celeba" / parts[0]).is_file():
            files.append(root / "img_align_celeba" / parts[0])
            if len(files) == count:
                break
    return files


def make_folders(base: Path, count: int = 24) -> dict[str, Path]:
    """{"ref": PNG crops, "jpeg10"/"jpeg60": JPEG quality 10/60, "blur1"/"blur3": Gaussian blur radius 1/3}."""
    from PIL import Image, ImageFilter

    folders = {name: base / name for name in ("ref", "jpeg10", "jpeg60", "blur1", "blur3")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for path in celeba_test_files(count):
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        left, top = (rgb.width - SIZE) // 2, (rgb.height - SIZE) // 2
        crop = rgb.crop((left, top, left + SIZE, top + SIZE))
        stem = path.stem
        crop.save(folders["ref"] / f"{stem}.png")
        crop.save(folders["jpeg10"] / f"{stem}.jpg", quality=10)
        crop.save(folders["jpeg60"] / f"{stem}.jpg", quality=60)
        crop.filter(ImageFilter.GaussianBlur(1)).save(folders["blur1"] / f"{stem}.png")
        crop.filter(ImageFilter.GaussianBlur(3)).save(folders["blur3"] / f"{stem}.png")
    return folders


def load_rgb(path: Path):
    """(3, H, W) float32 in [0, 1] of an RGB file, decoded here (not by perceptloss.score)."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0)


def stems(folder: Path) -> list[str]:
    return sorted(os.path.splitext(p.name)[0] for p in folder.iterdir())
