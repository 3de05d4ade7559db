"""A small gallery from the shipped DFC-VAE models, in a few seconds on a CPU (the last step of `make demo`).

    python examples/dfcvae/gallery.py --out runs/gallery [--data ../shared/data/celeba] [--pretrained FOLDER]

Writes to --out: samples_paper.png and samples_released.png (prior samples of PVAE, VAE-123 and VAE-345 in the
paper's and the released code's conventions, see latent.SAMPLINGS), reconstructions.png (test faces),
interpolation.png (between two test faces, every model) and smiling.png (VAE-123: z ± s·v_Smiling, the
attribute vector from validation images), and gallery.md showing them all.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


import numpy as np
import torch

from . import figures
from .celeba import DEFAULT_DATA, CelebA, CelebAError, decode_face, load_celeba, to_float
from .latent import SAMPLINGS, attribute_vector, encode, interpolate, reconstruct, sample
from .pretrained import NAMES, PRETRAINED_DIR, PretrainedError, describe, load_pretrained

TITLES = {"pvae": "PVAE", "vae123": "VAE-123", "vae345": "VAE-345"}


def decode_split(data: CelebA, limit: int) -> tuple[np.ndarray, CelebA]:
    """The first ``limit`` readable faces of ``data`` decoded directly (no cache: a few hundred images)."""
    faces, rows = [], []
    for i, name in enumerate(data.files):
        if len(faces) == limit:
            break
        face = decode_face(str(data.root / "img_align_celeba" / name), "released", 64)
        if face is not None:
            faces.append(face)
            rows.append(i)
    return np.stack(faces) if faces else np.zeros((0, 64, 64, 3), np.uint8), data.select(rows)


def make_gallery(models: dict, data: CelebA, out: Path, seed: int = 0, n_faces: int = 8, n_vector: int = 300) -> Path:
    """All figures and gallery.md for ``models`` ({name: VAE}) on ``data`` (needs test and val images)."""
    out.mkdir(parents=True, exist_ok=True)
    names = [TITLES.get(k, k) for k in models]
    g = torch.Generator().manual_seed(seed)
    lines = ["# DFC-VAE gallery (shipped models)", ""]

    z = torch.randn(100, next(iter(models.values())).latent, generator=g)
    for s in SAMPLINGS.values():
        imgs = [sample(m, z, s)[:36] for m in models.values()]
        path = figures.panels(imgs, names, out / f"samples_{s.name}.png", suptitle=s.label)
        lines += [f"## Prior samples, {s.label}", "", f"![samples]({path.name})", ""]

    test, test_sub = decode_split(data.split("test"), n_faces)
    if len(test) < 2:
        raise CelebAError(f"{data.root} has fewer than 2 readable test images; the gallery needs the test split")
    x = to_float(torch.from_numpy(test))
    rows = [x] + [reconstruct(m, test) for m in models.values()]
    path = figures.image_rows(rows, ["input"] + names, out / "reconstructions.png")
    lines += ["## Reconstructions of test faces", "", f"![reconstructions]({path.name})", ""]

    alphas = torch.linspace(0, 1, 9)
    rows = [interpolate(m, *encode(m, test[:2]), alphas) for m in models.values()]
    path = figures.image_rows(rows, names, out / "interpolation.png", col_labels=[f"{a:.2f}" for a in alphas.tolist()])
    lines += ["## Interpolation between two test faces", "", f"![interpolation]({path.name})", ""]

    key = "vae123" if "vae123" in models else next(iter(models))
    val, val_sub = decode_split(data.split("val"), n_vector)
    if len(val) and 0 < int(val_sub.attribute("Smiling").sum()) < len(val):
        m = models[key]
        v = attribute_vector(encode(m, val), val_sub.attribute("Smiling"), n_vector, seed)
        codes, smiling = encode(m, test), test_sub.attribute("Smiling")
        rows, labels = [], []
        for i in range(min(4, len(test))):
            sign = -1.0 if smiling[i] else 1.0
            rows.append(interpolate(m, codes[i], codes[i] + sign * v, alphas))
            labels.append("− Smiling" if sign < 0 else "+ Smiling")
        path = figures.image_rows(rows, labels, out / "smiling.png", col_labels=[f"{a:.2f}" for a in alphas.tolist()])
        lines += [f"## {TITLES.get(key, key)}: z ± s·v, v the Smiling vector of {len(val)} validation faces", "",
                  f"![smiling]({path.name})", ""]
    page = out / "gallery.md"
    page.write_text("\n".join(lines) + "\n")
    return page


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--pretrained", default=str(PRETRAINED_DIR), help="folder of the shipped models")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        models = {name: load_pretrained(name, args.pretrained) for name in NAMES}
        for name in NAMES:
            print(describe(name, args.pretrained), file=sys.stderr)
        data = load_celeba(args.data, verbose=False)
        page = make_gallery(models, data, Path(args.out), args.seed)
    except (PretrainedError, CelebAError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"gallery of the shipped models ({', '.join(TITLES[k] for k in models)}) written in {time.time() - t0:.1f} s: "
          f"{page} (PNG figures beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
