"""What FDL is for: on real faces, a copy shifted by 1-4 pixels against a JPEG-q10 copy, under FDL, the L2 feature
loss and LPIPS-family metrics.

    python benchmarks/fdl_shift_vs_jpeg.py [--folder DIR] [--images 16] [--crop 104x84]
        [--metric fdl=caffe --metric vgg19:dfc123 --metric lpips-vgg ...] [--out FILE]

For each of the first ``--images`` faces of ``--folder`` (sorted names; by default the CelebA subset beside the
repository, ``../shared/data/celeba/img_align_celeba``, whose aligned faces are 89x109) the reference is the
central ``--crop`` (H x W, at least 80 x 80 for FDL); "shift k px" is the crop k pixels to the right (the same
face, moved: real pixels, not a circular roll), the pair a training set with imperfect alignment holds; "JPEG
q10" is the reference crop saved as JPEG at quality 10 and decoded (PIL, 4:2:0). Each ``--metric`` is a
``perceptloss.create_metric`` name, ``NAME=WEIGHTS`` to give its weights; one that cannot be built offline (its
weights are not cached) is left out of the table and listed with the reason. Pixel MSE is the first row.

The table gives, per metric, the mean over the faces for each shift relative to the mean for JPEG (1.00: a shift
costs what JPEG does; below 1: the metric prefers the shifted copy), the JPEG mean itself, and in how many faces
the 4 px shift scores lower (better) than JPEG. A misalignment-robust loss prefers every shifted copy.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import perceptloss
from bench_lib import print_and_write

FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba" / "img_align_celeba"
SHIFTS = (1, 2, 3, 4)
DEFAULT_METRICS = ("fdl=caffe", "vgg19:dfc123", "lpips-vgg", "lpips-alex")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def make_pairs(folder: Path, count: int, crop: tuple[int, int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{distortion: (distorted, reference)}, each (count, 3, H, W) for ``crop`` = (H, W)."""
    files = sorted(folder.glob("*.jpg"))[:count]
    if len(files) < count:
        raise SystemExit(f"{folder} holds {len(files)} .jpg files, fewer than --images {count}")
    refs, shifted, compressed = [], {k: [] for k in SHIFTS}, []
    for path in files:
        image = Image.open(path).convert("RGB")
        w, h = image.size
        (ch, cw), (w, h) = crop, image.size
        top, left = (h - ch) // 2, (w - cw - max(SHIFTS)) // 2
        if top < 0 or left < 0:
            raise SystemExit(f"{path} is {w}x{h} (WxH): too small for --crop {ch}x{cw} and a {max(SHIFTS)} px shift")
        reference = image.crop((left, top, left + cw, top + ch))
        refs.append(to_tensor(reference))
        for k in SHIFTS:
            shifted[k].append(to_tensor(image.crop((left + k, top, left + k + cw, top + ch))))
        compressed.append(to_tensor(jpeg(reference, 10)))
    reference = torch.stack(refs)
    pairs = {f"shift {k} px": (torch.stack(v), reference) for k, v in shifted.items()}
    pairs["JPEG q10"] = (torch.stack(compressed), reference)
    return pairs


def build(spec: str) -> tuple[str, torch.nn.Module | None, str]:
    """(label, metric or None, why not) for ``NAME`` or ``NAME=WEIGHTS``."""
    name, _, weights = spec.partition("=")
    try:
        metric = perceptloss.create_metric(name, weights=weights or "default")
    except (perceptloss.WeightsNotFoundError, FileNotFoundError) as e:
        return spec, None, " ".join(str(e).split()).split(" Either:")[0]
    label = name + (f" ({weights} weights)" if weights else "")
    return label, metric.eval(), ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=FOLDER)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--crop", default="104x84", help="HxW of the crops (default 104x84)")
    parser.add_argument("--metric", action="append", default=None, help="NAME or NAME=WEIGHTS (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table to this file too")
    args = parser.parse_args()
    torch.manual_seed(0)
    crop = tuple(int(v) for v in args.crop.lower().split("x"))
    if len(crop) != 2:
        raise SystemExit(f"--crop takes HxW, e.g. 104x84; got {args.crop!r}")
    pairs = make_pairs(args.folder, args.images, crop)  # type: ignore[arg-type]
    values: dict[str, dict[str, torch.Tensor]] = {
        "pixel MSE": {d: (x - y).pow(2).flatten(1).mean(1) for d, (x, y) in pairs.items()}}
    skipped = []
    for spec in args.metric or DEFAULT_METRICS:
        label, metric, why = build(spec)
        if metric is None:
            skipped.append(f"{label}: {why}")
            print(f"skipped {skipped[-1]}", flush=True)
            continue
        with torch.no_grad():
            values[label] = {d: torch.cat([metric(x[i:i + 4], y[i:i + 4]).float() for i in range(0, len(x), 4)])
                             for d, (x, y) in pairs.items()}
        print(f"done {label}", flush=True)
    head = [d for d in pairs if d != "JPEG q10"]
    lines = [f"| metric | {' | '.join(head)} | JPEG q10 (mean) | 4 px < JPEG |", "| --- " * (len(head) + 3) + "|"]
    for label, per in values.items():
        base = per["JPEG q10"].mean().item()
        cells = [f"{per[d].mean().item() / base:.2f}" for d in head]
        wins = int((per["shift 4 px"] < per["JPEG q10"]).sum())
        lines.append(f"| {label} | {' | '.join(cells)} | {base:.4g} | {wins}/{args.images} |")
    lines += ["", f"{args.images} faces of {args.folder.name} (the first by name), central {args.crop} (HxW) "
              "crops; shifts to the right; cells: the mean over the faces relative to JPEG q10's (below 1: the "
              "shifted copy scores better than the JPEG one)."]
    lines += [f"Not run: {s}" for s in skipped]
    text = "\n".join(lines) + "\n"
    print_and_write(text, args.out)


if __name__ == "__main__":
    main()
