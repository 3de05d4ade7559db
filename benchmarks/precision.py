#!/usr/bin/env python
"""Accuracy of the reduced-precision FeatureLoss paths against float32, on real images and real weights.

    python benchmarks/precision.py [--data ../shared/data/celeba] [--n 64] [--device cpu|cuda]

Pairs (x, y): x = CelebA test faces at 64x64, y = the same faces blurred (a reconstruction-like target).
For each path: the relative error of the per-sample loss vs float32 (median and max over the images), and the
cosine similarity of the gradient w.r.t. x with float32's (over the whole batch). Caffe VGG19 weights, the
DFC-VAE layers (dfc123, dfc345). Writes benchmarks/results/<device>-<date>-<kind>-precision.md, headed by the
machine description (CPU flags / GPU, ATen capability, oneDNN ISA limit).
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples" / "dfcvae"))
sys.path.insert(0, str(HERE))

import bench_lib as bl  # noqa: E402


def load_faces(data: str, n: int) -> torch.Tensor:
    import numpy as np
    from dfcvae.celeba import decode_face, load_celeba, to_float  # the example's loader: released crop, 64x64

    test = load_celeba(data, verbose=False).split("test")
    faces = [decode_face(str(test.root / "img_align_celeba" / f), "released", 64) for f in test.files[:n]]
    return to_float(torch.from_numpy(np.stack(faces)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "celeba"))
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    from perceptloss import FeatureLoss

    device, kind = args.device, torch.device(args.device).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    x0 = load_faces(args.data, args.n).to(device)
    y = F.avg_pool2d(F.pad(x0, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    rows = []
    for layers in ("dfc123", "dfc345"):
        ref_loss = FeatureLoss("vgg19", layers, reduction="none").to(device)
        paths = {
            "float32 (reference)": (ref_loss, False),
            "FeatureLoss(dtype=torch.bfloat16)": (FeatureLoss("vgg19", layers, reduction="none", dtype=torch.bfloat16).to(device), False),
            f"float32 module under torch.autocast('{kind}', bfloat16)": (ref_loss, True),
            "FeatureLoss(dtype=torch.float16)": (FeatureLoss("vgg19", layers, reduction="none", dtype=torch.float16).to(device), False),
        }
        results = {}
        for name, (loss, autocast) in paths.items():
            x = x0.clone().requires_grad_()
            with torch.autocast(kind, dtype=torch.bfloat16, enabled=autocast):
                value = loss(x, y)
            (grad,) = torch.autograd.grad(value.sum(), x)
            results[name] = (value.detach().double(), grad.double())
        ref_v, ref_g = results["float32 (reference)"]
        for name, (v, g) in results.items():
            rel = ((v - ref_v).abs() / ref_v.abs())
            cos = F.cosine_similarity(g.flatten(), ref_g.flatten(), dim=0).item()
            rows.append(f"| {layers} | {name} | {rel.median().item():.2e} | {rel.max().item():.2e} | {cos:.5f} |")
    today = datetime.date.today().isoformat()
    text = "\n".join([
        f"# Reduced-precision FeatureLoss vs float32 ({today})", "",
        bl.describe_machine(device), "",
        f"{args.n} CelebA test faces at 64x64 vs their 3x3-blurred copies, Caffe VGG19 weights, on {device}.", "",
        f"Reproduce: `python benchmarks/precision.py --device {kind}`", "",
        "| layers | path | loss rel. error (median) | loss rel. error (max) | gradient cosine vs fp32 |",
        "|---|---|---|---|---|", *rows, ""])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{kind}-{today}-{bl.device_kind(device)}-precision.md"
    path.write_text(text)
    print(text)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
