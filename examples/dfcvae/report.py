#!/usr/bin/env python
"""Every experiment of the DFC-VAE paper (Sec. 4.2-4.4) from trained checkpoints, in one report.

    python examples/dfcvae/report.py --pvae runs/pvae/checkpoint.pt --vae123 runs/vae123/checkpoint.pt \
        --vae345 runs/vae345/checkpoint.pt --out examples/dfcvae/results

Writes PNG figures and report.md to --out: prior samples (Fig. 3), reconstructions (Fig. 4), interpolation
(Fig. 5), attribute manipulation (Fig. 6), attribute-vector correlations (Fig. 7), the t-SNE face grid (Fig. 8),
40-attribute linear-SVM prediction beside the paper's Table 1 with a majority-class row, and a perceptual
quality table (MSE, SSIM, sharpness, Fréchet distance). Any model may be left out.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import figures  # noqa: E402
import metrics  # noqa: E402
from celeba import DEFAULT_DATA, CelebA, build_cache, load_celeba, to_float  # noqa: E402
from latent import attribute_vector, decode, encode, load_vae  # noqa: E402
from paper_table1 import PAPER_TABLE1  # noqa: E402

MODELS = {"pvae": "PVAE", "vae123": "VAE-123", "vae345": "VAE-345"}
CORRELATION_ATTRIBUTES = ["Attractive", "Heavy_Makeup", "Wearing_Lipstick", "Male", "No_Beard", "Gray_Hair", "Bald",
                          "Eyeglasses", "Young", "Smiling", "Mouth_Slightly_Open", "Pale_Skin", "Blond_Hair"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, name in MODELS.items():
        p.add_argument(f"--{key}", default=None, help=f"{name} checkpoint")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--latent-model", default="vae123", choices=list(MODELS), help="model of Figs. 5-8 (paper: VAE-123)")
    p.add_argument("--attributes", nargs="*", default=["Smiling", "Eyeglasses"], help="attributes to manipulate (Fig. 6)")
    p.add_argument("--temperatures", default="1.0,0.4", help="prior sample temperatures (released code: 0.4)")
    p.add_argument("--svm-train", type=int, default=10000, help="training images for the SVMs (0: all of the split)")
    p.add_argument("--svm-test", type=int, default=0, help="test images for the SVMs (0: all of the split)")
    p.add_argument("--tsne-side", type=int, default=40, help="t-SNE grid side (side^2 test faces; paper: 40)")
    p.add_argument("--quality-images", type=int, default=1000)
    p.add_argument("--attribute-images", type=int, default=1000, help="images with / without for each attribute vector")
    p.add_argument("--no-vgg-baseline", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default="default", help=argparse.SUPPRESS)  # 'none' only in tests
    args = p.parse_args(argv)
    if not any(getattr(args, k) for k in MODELS):
        p.error("give at least one checkpoint: --pvae, --vae123 and/or --vae345")
    return args


def faces(data: CelebA, crop: str, limit: int, seed: int) -> tuple[np.ndarray, CelebA]:
    """Decoded faces of up to ``limit`` images of ``data`` (a fixed random subset) and their annotations."""
    rows = np.arange(len(data))
    if limit and limit < len(data):
        rows = np.sort(np.random.default_rng(seed).choice(len(data), size=limit, replace=False))
    sub = data.select(rows)
    cache = build_cache(sub, crop, 64, progress=False)
    return np.array(cache.images), sub.select(cache.rows)


def vgg_pooled_features(images: np.ndarray, device: str, weights, batch: int = 128) -> np.ndarray:
    """VGG19 relu5_4 activations of 64x64 faces, averaged over space: (N, 512). The paper's VGG-FC used fc7 of a
    224-pixel input; the convolution-only weights here have no fc layers, hence pooled conv5."""
    from perceptloss import create_backbone
    from perceptloss.preprocessing import Preprocess

    net, norm = create_backbone("vgg19", ["relu5_4"], weights)
    net, pre = net.to(device), Preprocess(norm).to(device)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = to_float(torch.from_numpy(np.array(images[i:i + batch]))).to(device)
            out.append(net(pre(x))[0].float().mean(dim=(2, 3)).cpu())
    return torch.cat(out).numpy()


class Report:
    def __init__(self, out: Path):
        self.out = out
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def figure(self, path: Path, alt: str) -> None:
        self.lines.append(f"![{alt}]({path.name})")
        self.lines.append("")

    def write(self) -> Path:
        path = self.out / "report.md"
        path.write_text("\n".join(self.lines) + "\n")
        return path


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    models, configs = {}, {}
    for key in MODELS:
        if getattr(args, key):
            models[key], configs[key] = load_vae(getattr(args, key), args.device)
    crop = next(iter(configs.values())).get("crop", "released")
    data = load_celeba(args.data)
    train_data, test_data = data.split("train"), data.split("test")
    g = torch.Generator().manual_seed(args.seed)
    rep = Report(out)
    rep.add("# DFC-VAE reproduction report", "",
            f"Generated {datetime.date.today().isoformat()} by `examples/dfcvae/report.py` on "
            f"{platform.processor() or platform.machine()} ({args.device}), torch {torch.__version__}.", "",
            "## Scale of the runs", "",
            "| model | training images | epochs | steps | batch | balance | amp | device |", "|---|---|---|---|---|---|---|---|")
    for key, cfg in configs.items():
        ckpt = torch.load(getattr(args, key), map_location="cpu", weights_only=False)
        epochs_done = ckpt["step"] / max(1, cfg.get("steps_per_epoch", 1))
        rep.add(f"| {MODELS[key]} | {cfg.get('images')} | {epochs_done:.2f} of {cfg.get('epochs')} | {ckpt['step']} | "
                f"{cfg.get('batch_size')}×{cfg.get('world_size', 1)} | {cfg.get('balance')} | {cfg.get('amp')} | {cfg.get('device')} |")
    rep.add("", "The paper trains on 162,770 images for 5 epochs (about 12,700 steps of 64); compare the scale above "
            "before comparing numbers.", "")
    names = [MODELS[k] for k in models]

    # ---------------------------------------------------------------- Fig. 3: samples from the prior
    rep.add("## Samples from the prior (Figure 3)", "")
    z = torch.randn(36, 100, generator=g)
    for temp in [float(t) for t in args.temperatures.split(",") if t]:
        imgs = [decode(m, z * temp, device=args.device) for m in models.values()]
        path = figures.panels(imgs, names, out / f"samples_t{temp:g}.png", suptitle=f"z ~ N(0, {temp:g}² I)")
        rep.figure(path, f"prior samples, temperature {temp:g}")

    # ---------------------------------------------------------------- Fig. 4: reconstructions
    test_faces, test_sub = faces(test_data, crop, 0, args.seed)
    pick = torch.randperm(len(test_faces), generator=g)[:10].sort().values.numpy()
    x = to_float(torch.from_numpy(test_faces[pick]))
    rows = [x] + [decode(m, encode(m, test_faces[pick], device=args.device), device=args.device) for m in models.values()]
    rep.add("## Reconstructions of test images (Figure 4)", "")
    rep.figure(figures.image_rows(rows, ["input"] + names, out / "reconstructions.png"), "reconstructions")

    # ---------------------------------------------------------------- latent-space experiments
    lm_key = args.latent_model if args.latent_model in models else next(iter(models))
    lm = models[lm_key]
    train_faces, train_sub = faces(train_data, crop, max(args.svm_train, 0), args.seed)
    train_codes = encode(lm, train_faces, device=args.device)
    test_codes = encode(lm, test_faces, device=args.device)
    attr = lambda d, name: d.attribute(name)  # noqa: E731

    rep.add(f"## Linear interpolation in the latent space of {MODELS[lm_key]} (Figure 5)", "")
    pairs = [("non-smiling woman → smiling woman", dict(Male=False, Smiling=False), dict(Male=False, Smiling=True)),
             ("man without → with eyeglasses", dict(Male=True, Eyeglasses=False), dict(Male=True, Eyeglasses=True)),
             ("man → woman", dict(Male=True), dict(Male=False))]
    alphas = torch.linspace(0, 1, 11)
    rows, labels = [], []
    for label, left, right in pairs:
        i = _first_with(test_sub, left, args.seed)
        j = _first_with(test_sub, right, args.seed + 1)
        if i is None or j is None:
            continue
        zl, zr = test_codes[i], test_codes[j]
        rows.append(decode(lm, torch.stack([(1 - a) * zl + a * zr for a in alphas]), device=args.device))
        labels.append(label)
    if rows:
        rep.figure(figures.image_rows(rows, labels, out / "interpolation.png",
                                      col_labels=[f"{a:.1f}" for a in alphas.tolist()]), "interpolation")

    rep.add(f"## Attribute manipulation, z + s·v (Figure 6), {MODELS[lm_key]}", "",
            f"Attribute vector v = mean code of up to {args.attribute_images} training images with the attribute "
            "minus that of up to as many without it; s from 0 to 1.", "")
    rows, labels = [], []
    for name in args.attributes:
        v = attribute_vector(train_codes, attr(train_sub, name), args.attribute_images, args.seed)
        for sign, has in ((1, False), (-1, True)):
            i = _first_with(test_sub, {name: has}, args.seed + 7)
            if i is None:
                continue
            rows.append(decode(lm, torch.stack([test_codes[i] + sign * a * v for a in alphas]), device=args.device))
            labels.append(f"{'+' if sign > 0 else '−'} {name}")
    if rows:
        rep.figure(figures.image_rows(rows, labels, out / "manipulation.png",
                                      col_labels=[f"{a:.1f}" for a in alphas.tolist()]), "attribute manipulation")

    rep.add(f"## Correlation of attribute vectors (Figure 7), {MODELS[lm_key]}", "")
    vectors = np.stack([attribute_vector(train_codes, attr(train_sub, n), args.attribute_images, args.seed).numpy()
                        for n in CORRELATION_ATTRIBUTES])
    corr = np.corrcoef(vectors)
    rep.figure(figures.correlation_circles(corr, CORRELATION_ATTRIBUTES, out / "attribute_correlation.png"),
               "attribute vector correlations")
    a, m = CORRELATION_ATTRIBUTES.index("Attractive"), CORRELATION_ATTRIBUTES.index("Heavy_Makeup")
    male, gray = CORRELATION_ATTRIBUTES.index("Male"), CORRELATION_ATTRIBUTES.index("Gray_Hair")
    rep.add(f"Paper: Attractive correlates positively with Heavy_Makeup and negatively with Male and Gray_Hair. "
            f"Here: r(Attractive, Heavy_Makeup) = {corr[a, m]:+.2f}, r(Attractive, Male) = {corr[a, male]:+.2f}, "
            f"r(Attractive, Gray_Hair) = {corr[a, gray]:+.2f}.", "")

    side = args.tsne_side
    if len(test_codes) >= side * side:
        from sklearn.manifold import TSNE

        rep.add(f"## t-SNE of {side * side} test-image codes on a {side}×{side} grid (Figure 8), {MODELS[lm_key]}", "")
        sel = torch.randperm(len(test_codes), generator=g)[: side * side].numpy()
        emb = TSNE(n_components=2, init="pca", random_state=args.seed, perplexity=min(30, side * side // 4)).fit_transform(test_codes[sel].numpy())
        cells = metrics.grid_assignment(emb, side)
        rep.figure(figures.face_grid(to_float(torch.from_numpy(test_faces[sel])), cells, side, out / "tsne_grid.jpg"),
                   "t-SNE face grid")
        rep.add("Embedding points are assigned to grid cells by `scipy.optimize.linear_sum_assignment`.", "")

    # ---------------------------------------------------------------- Table 1: attribute prediction
    rep.add("## Facial attribute prediction (Table 1)", "")
    n_test = args.svm_test or len(test_faces)
    ytr, yte = train_sub.attributes.numpy(), test_sub.attributes.numpy()[:n_test]
    ours = {}
    for key, model in models.items():
        tr = train_codes.numpy() if model is lm else encode(model, train_faces, device=args.device).numpy()
        te = (test_codes if model is lm else encode(model, test_faces, device=args.device)).numpy()[:n_test]
        ours[MODELS[key]] = 100 * metrics.svm_attribute_accuracy(tr, ytr, te, yte)
    if not args.no_vgg_baseline:
        weights = None if args.weights == "none" else args.weights
        tr = vgg_pooled_features(train_faces, args.device, weights)
        te = vgg_pooled_features(test_faces[:n_test], args.device, weights)
        ours["VGG conv5 (pooled)"] = 100 * metrics.svm_attribute_accuracy(tr, ytr, te, yte)
    majority = 100 * metrics.majority_accuracy(ytr, yte)
    rep.add(f"Linear SVMs (scikit-learn LinearSVC, C=1, standardised features) on latent means of {len(ytr)} "
            f"training images, accuracy on {len(yte)} test images of the official split. Paper rows: its Table 1 "
            "(trained on about 180k images, tested on 20k). The majority-class row always predicts the training "
            "majority; 'Δ maj.' is the average gain over it.", "")
    header = ["attribute", "majority"] + [f"ours {k}" for k in ours] + [f"paper {k}" for k in ("VAE-123", "VAE-345", "VGG-FC")]
    rep.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
    for i, name in enumerate(data.attribute_names):
        cells = [f"{majority[i]:.1f}"] + [f"{v[i]:.1f}" for v in ours.values()] + \
                [f"{PAPER_TABLE1[k][i]}" for k in ("VAE-123", "VAE-345", "VGG-FC")]
        rep.add(f"| {name} | " + " | ".join(cells) + " |")
    avg = [f"**{majority.mean():.2f}**"] + [f"**{v.mean():.2f}**" for v in ours.values()] + \
          [f"**{PAPER_TABLE1[k][40]}**" for k in ("VAE-123", "VAE-345", "VGG-FC")]
    rep.add("| **average** | " + " | ".join(avg) + " |")
    gain = ["—"] + [f"{v.mean() - majority.mean():+.2f}" for v in ours.values()] + ["", "", ""]
    rep.add("| Δ maj. | " + " | ".join(gain) + " |", "")

    # ---------------------------------------------------------------- beyond the paper: quality
    rep.add("## Perceptual quality (beyond the paper)", "")
    nq = min(args.quality_images, len(test_faces))
    qx = to_float(torch.from_numpy(test_faces[:nq]))
    weights = None if args.weights == "none" else args.weights
    real_feats = vgg_pooled_features(test_faces[:nq], args.device, weights)
    lap_in = metrics.laplacian_variance(qx).mean().item()
    rep.add(f"On the first {nq} test images. MSE and SSIM of reconstructions (from the posterior mean) against "
            "the inputs; sharpness = mean variance of the Laplacian of the grey image relative to the inputs' "
            "(1.0 = as sharp as the data); Fréchet distance between Gaussians fitted to VGG19 (Caffe) relu5_4 "
            f"spatially averaged features (512-d) of {nq} generated images and of the {nq} test images, for "
            "reconstructions and for prior samples (z ~ N(0, I)).", "",
            "| model | MSE ↓ | SSIM ↑ | sharpness (recon) | sharpness (samples) | FD recon ↓ | FD samples ↓ |",
            "|---|---|---|---|---|---|---|")
    zq = torch.randn(nq, 100, generator=g)
    for key, model in models.items():
        rec = decode(model, encode(model, test_faces[:nq], device=args.device), device=args.device)
        smp = decode(model, zq, device=args.device)
        to_u8 = lambda t: (t.permute(0, 2, 3, 1) * 255).round().byte().numpy()  # noqa: E731
        fd_r = metrics.frechet_distance(vgg_pooled_features(to_u8(rec), args.device, weights), real_feats)
        fd_s = metrics.frechet_distance(vgg_pooled_features(to_u8(smp), args.device, weights), real_feats)
        rep.add(f"| {MODELS[key]} | {metrics.mse(rec, qx):.4f} | {metrics.ssim(rec, qx):.3f} | "
                f"{metrics.laplacian_variance(rec).mean().item() / lap_in:.2f} | "
                f"{metrics.laplacian_variance(smp).mean().item() / lap_in:.2f} | {fd_r:.1f} | {fd_s:.1f} |")
    rep.add("", f"_Report generated in {time.time() - t0:.0f} s._")
    path = rep.write()
    print(f"written {path}", file=sys.stderr)
    return 0


def _first_with(data: CelebA, wanted: dict[str, bool], seed: int) -> int | None:
    """A (seeded) random test image with the wanted attribute values, or None."""
    mask = torch.ones(len(data), dtype=torch.bool)
    for name, value in wanted.items():
        mask &= data.attribute(name) == value
    idx = torch.nonzero(mask).flatten()
    if len(idx) == 0:
        return None
    return int(idx[torch.randint(len(idx), (1,), generator=torch.Generator().manual_seed(seed))])


if __name__ == "__main__":
    sys.exit(main())
