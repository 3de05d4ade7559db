"""Every experiment of the DFC-VAE paper (Sec. 4.2-4.4) from trained models, in one report.

    python examples/dfcvae/report.py --pretrained --out examples/dfcvae/results      # the shipped models
    python examples/dfcvae/report.py --pvae runs/pvae/checkpoint.pt --vae123 runs/vae123/checkpoint.pt \
        --vae345 runs/vae345/checkpoint.pt --out my-report                            # your own runs

Writes PNG figures and report.md to --out (report.md is rewritten after every section, so an interrupted run
leaves a valid partial report): prior samples in two labelled conventions (Fig. 3), reconstructions (Fig. 4),
interpolation (Fig. 5), attribute manipulation (Fig. 6), attribute-vector correlations (Fig. 7), the t-SNE face
grid (Fig. 8), 40-attribute linear-SVM prediction beside the paper's Table 1 with a majority-class row, and a
quality table (MSE, SSIM, sharpness, Fréchet distances in two feature spaces), prior face rates of every model
raw and re-centred; summary.json holds the headline numbers. ``--baseline FOLDER`` adds exported models of the same
presets at another training budget beside them (dfcvae.budgets). Arguments are checked before any work starts; any
model may be left out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path


import numpy as np
import torch

from . import figures
from . import metrics
from .celeba import DEFAULT_DATA, CelebA, CelebAError, build_cache, load_celeba, read_attribute_names, to_float
from .checkpointing import CheckpointError
from .files import unwritable_reason, write_text_atomic
from .latent import (SAMPLINGS, attribute_vector, encode, interpolate, load_vae,
                    reconstruct, sample)
from .budgets import (FORMS, change_lines, form, other_form_shift, percent, preset_of, row_key,
                      trajectory_face_rates)
from .paper_table1 import PAPER_TABLE1
from .pretrained import (PRETRAINED_DIR, PretrainedError, describe, load_pretrained, read_card, training_time,
                        update_card)
from .pretrained import paths as pretrained_paths

#: examples/dfcvae (the shipped models and results live there).
EXAMPLE_DIR = Path(__file__).resolve().parents[1]
MODELS = {"pvae": "PVAE", "vae123": "VAE-123", "vae345": "VAE-345"}
CORRELATION_ATTRIBUTES = ["Attractive", "Heavy_Makeup", "Wearing_Lipstick", "Male", "No_Beard", "Gray_Hair", "Bald",
                          "Eyeglasses", "Young", "Smiling", "Mouth_Slightly_Open", "Pale_Skin", "Blond_Hair"]
VGG_LABEL = "VGG19 conv5 (pooled)"


class ReportError(RuntimeError):
    """Bad arguments or data, found before the work starts (the message says what to do)."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", nargs="?", const=str(PRETRAINED_DIR), default=None, metavar="FOLDER",
                   help="use the shipped models (default folder: %(const)s); --pvae etc. override single models")
    for key, name in MODELS.items():
        p.add_argument(f"--{key}", default=None, help=f"{name} training checkpoint")
    p.add_argument("--baseline", default=None, metavar="FOLDER",
                   help="models of the same presets at another training budget, in the pretrained layout "
                        "(<name>.safetensors + <name>.json; any of pvae, vae123, vae345): their Table 1, quality "
                        "and face-rate rows are reported beside, labelled by their steps, and the findings say per "
                        "model what changed (see README: the 2,340-step models from git history)")
    p.add_argument("--update-cards", action="store_true",
                   help="with --pretrained: write the Table 1 average and quality figures into the model cards")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(EXAMPLE_DIR / "results"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--latent-model", default="vae123", choices=list(MODELS), help="model of Figs. 5-8 (paper: VAE-123)")
    p.add_argument("--attributes", nargs="*", default=["Smiling", "Eyeglasses"], help="attributes to manipulate (Fig. 6)")
    p.add_argument("--svm-train", type=int, default=0, help="training images for the SVMs (0: all of the split)")
    p.add_argument("--vgg-train", type=int, default=10000, help="training images for the VGG baseline's SVMs (0: all)")
    p.add_argument("--tsne-side", type=int, default=40, help="t-SNE grid side (side^2 test faces; paper: 40)")
    p.add_argument("--quality-images", type=int, default=1000)
    p.add_argument("--attribute-images", type=int, default=1000, help="images with / without for each attribute vector")
    p.add_argument("--no-vgg-baseline", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default="default", help=argparse.SUPPRESS)  # 'none' only in tests
    args = p.parse_args(argv)
    if not args.pretrained and not any(getattr(args, k) for k in MODELS):
        p.error("give --pretrained and/or at least one checkpoint: --pvae, --vae123, --vae345")
    if args.update_cards and not args.pretrained:
        p.error("--update-cards needs --pretrained")
    for name in ("svm_train", "vgg_train", "tsne_side", "quality_images", "attribute_images"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device} but no CUDA device is available; use --device cpu")
    return args


# ------------------------------------------------------------------------------------------ setup
def load_models(args) -> tuple[dict, dict]:
    """{key: VAE} and {key: info} (training scale) for every model asked for; checks each checkpoint's preset."""
    models, info = {}, {}
    for key in MODELS:
        path = getattr(args, key)
        if path:
            try:
                models[key], cfg = load_vae(path, args.device)
            except CheckpointError as e:
                raise ReportError(str(e)) from None
            print(f"{key}: {path} (step {cfg['step']})", file=sys.stderr)
            if cfg.get("preset") not in (None, key):
                raise ReportError(f"{path} was trained with preset {cfg.get('preset')!r}, not {key!r}: pass it as "
                                  f"--{cfg.get('preset')}, or give the right checkpoint to --{key}")
            info[key] = dict(cfg, source=str(path), epochs_done=cfg["step"] / max(1, cfg.get("steps_per_epoch", 1)))
            log = Path(path).parent / "log.csv"
            if log.is_file():
                info[key].update(training_time(log))
        elif args.pretrained:
            models[key], info[key] = load_exported(key, args.pretrained, args.device)
    return models, info


def load_exported(key: str, folder: str | Path, device: str) -> tuple:
    """An exported model of ``folder`` and its info (the card, plus source, step, epochs_done)."""
    try:
        model = load_pretrained(key, folder, device)
        card = read_card(key, folder)
        print(describe(key, folder), file=sys.stderr)
    except PretrainedError as e:
        raise ReportError(str(e)) from None
    source = pretrained_paths(key, folder)[0]
    source = source.relative_to(EXAMPLE_DIR) if source.is_relative_to(EXAMPLE_DIR) else source
    return model, dict(card, source=str(source), step=card["steps"], epochs_done=card["epochs"])


def load_baseline(folder: str, device: str) -> tuple[dict, dict]:
    """{row key "<preset>@<steps>": VAE} and {row key: info} for every exported model in ``folder``."""
    models, info = {}, {}
    for key in MODELS:
        if pretrained_paths(key, folder)[0].is_file():
            model, card = load_exported(key, folder, device)
            models[row_key(key, card["step"])], info[row_key(key, card["step"])] = model, card
    if not models:
        raise ReportError(f"--baseline {folder} holds no exported model ({', '.join(f'{k}.safetensors' for k in MODELS)})"
                          "; export one with `python examples/dfcvae/pretrained.py export --folder ...`")
    return models, info


def check_out(out: Path) -> None:
    if reason := unwritable_reason(out):
        raise ReportError(f"cannot write to --out {out} ({reason}); choose a writable folder")


def faces(data: CelebA, crop: str, limit: int, seed: int, progress: bool = False) -> tuple[np.ndarray, CelebA]:
    """Decoded faces of up to ``limit`` images of ``data`` (a fixed random subset) and their annotations (decoded
    once into the face cache, with a progress bar when ``progress``)."""
    rows = np.arange(len(data))
    if limit and limit < len(data):
        rows = np.sort(np.random.default_rng(seed).choice(len(data), size=limit, replace=False))
    sub = data.select(rows)
    cache = build_cache(sub, crop, 64, progress=progress)
    return np.asarray(cache.images), sub.select(cache.rows)


def normalizer(norm, device: str):
    """x (N, 3, H, W) RGB in [0, 1] -> what a network with :class:`perceptloss.Normalization` ``norm`` expects:
    ``x * scale`` in BGR order if ``norm.bgr``, then ``(x - mean) / std`` per channel."""
    mean = torch.tensor(norm.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, device=device).view(1, 3, 1, 1)
    return lambda x: ((x.flip(1) if norm.bgr else x) * norm.scale - mean) / std


def vgg_pooled_features(images: np.ndarray | torch.Tensor, device: str, weights, batch: int = 128) -> np.ndarray:
    """VGG19 (Caffe) relu5_4 activations of 64x64 faces, averaged over space: (N, 512). ``images``: (N, S, S, 3)
    uint8 or (N, 3, S, S) float in [0, 1]. Computed under bf16 autocast with channels_last (features averaged
    in fp32). The paper's VGG-FC used fc7 of a 224-pixel input; the convolution-only weights here have no fc
    layers, hence pooled conv5."""
    from perceptloss import create_backbone

    net, norm = create_backbone("vgg19", ["relu5_4"], weights)
    net = net.to(device).to(memory_format=torch.channels_last)
    pre = normalizer(norm, device)
    out = []
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            x = chunk if isinstance(chunk, torch.Tensor) else to_float(torch.from_numpy(np.asarray(chunk)))
            x = pre(x.to(device)).contiguous(memory_format=torch.channels_last)
            out.append(net(x)[0].float().mean(dim=(2, 3)).cpu())
    return torch.cat(out).numpy()


class Report:
    """report.md assembled section by section; :meth:`write` (atomic) after each keeps a valid partial report."""

    def __init__(self, out: Path):
        self.out = out
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def figure(self, path: Path, alt: str) -> None:
        self.lines.append(f"![{alt}]({path.name})")
        self.lines.append("")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append("|" + "---|" * len(header))
        self.lines.extend("| " + " | ".join(r) + " |" for r in rows)
        self.lines.append("")

    def write(self) -> Path:
        return write_text_atomic(self.out / "report.md", "\n".join(self.lines) + "\n")


# ------------------------------------------------------------------------------------------ sections
def label(key: str, info: dict) -> str:
    """A row key's label: "VAE-123" for a model of the report, "VAE-123 (2,340 steps)" for a baseline model."""
    return MODELS[key] if "@" not in key else f"{MODELS[preset_of(key)]} ({info['step']:,} steps)"


def section_scale(rep: Report, info: dict, labels: dict) -> None:
    rep.add("## Scale of the runs", "")
    rows = []
    for key, c in info.items():
        wall = f"{c['wall_time_s'] / 60:.1f} min" if "wall_time_s" in c else "—"
        kl = f"{c['final_kl']:.1f}" if "final_kl" in c else "—"
        rec = f"{c['final_rec']:.4g}" if "final_rec" in c else "—"
        rows.append([labels[key], c["source"], str(c.get("images")), f"{c['epochs_done']:.2f}", str(c["step"]),
                     f"{c.get('batch_size')}×{c.get('world_size', 1)}", str(c.get("balance")), str(c.get("amp")),
                     wall, kl, rec])
    rep.table(["model", "weights", "training images", "epochs", "steps", "batch", "balance", "amp", "wall time",
               "final KL / sample", "final reconstruction / sample"], rows)
    rep.add("The paper trains on 162,770 images for 5 epochs (about 12,700 steps of 64); the authors' released code "
            "effectively trains one epoch (about 5,000 steps). Compare the scale above before comparing numbers. "
            "The reconstruction column is unweighted: the sum over layers of the mean squared feature difference "
            "(VAE-123/345, Caffe VGG19 units) or the per-image sum of squared pixel errors in [0, 1] (PVAE).", "")


def section_samples(rep: Report, models: dict, names: list[str], out: Path, g: torch.Generator, device: str) -> None:
    rep.add("## Samples from the prior (Figure 3)", "",
            "Two conventions, labelled: the paper's literal z ~ N(0, I) decoded with the saved BatchNorm statistics "
            "(eval mode), and the authors' released `generate.lua`, which decodes z ~ N(0, 0.4² I) in batches of 100 "
            "with BatchNorm left in training mode (each batch normalised by its own statistics; the saved running "
            "statistics are not changed). 36 of 100 samples shown, the same codes for every model.", "")
    z = torch.randn(100, 100, generator=g)
    for s in SAMPLINGS.values():
        imgs = [sample(m, z, s, device)[:36] for m in models.values()]
        rep.figure(figures.panels(imgs, names, out / f"samples_{s.name}.png", suptitle=s.label), f"prior samples, {s.label}")


def section_latent(rep: Report, args, lm_key: str, lm, train_codes, train_sub: CelebA, test_codes, test_faces,
                   test_sub: CelebA, out: Path, g: torch.Generator) -> None:
    name, device = MODELS[lm_key], args.device
    rep.add(f"## Linear interpolation in the latent space of {name} (Figure 5)", "")
    pairs = [("non-smiling woman → smiling woman", dict(Male=False, Smiling=False), dict(Male=False, Smiling=True)),
             ("man without → with eyeglasses", dict(Male=True, Eyeglasses=False), dict(Male=True, Eyeglasses=True)),
             ("man → woman", dict(Male=True), dict(Male=False))]
    alphas = torch.linspace(0, 1, 11)
    rows, labels = [], []
    for label, left, right in pairs:
        i, j = first_with(test_sub, left, args.seed), first_with(test_sub, right, args.seed + 1)
        if i is None or j is None:
            continue
        rows.append(interpolate(lm, test_codes[i], test_codes[j], alphas, device))
        labels.append(label)
    if rows:
        rep.figure(figures.image_rows(rows, labels, out / "interpolation.png",
                                      col_labels=[f"{a:.1f}" for a in alphas.tolist()]), "interpolation")

    rep.add(f"## Attribute manipulation, z + s·v (Figure 6), {name}", "",
            f"Attribute vector v = mean code of up to {args.attribute_images} training images with the attribute "
            "minus that of up to as many without it; s from 0 to 1.", "")
    rows, labels = [], []
    for attr in args.attributes:
        v = attribute_vector(train_codes, train_sub.attribute(attr), args.attribute_images, args.seed)
        for sign, has in ((1, False), (-1, True)):
            i = first_with(test_sub, {attr: has}, args.seed + 7)
            if i is None:
                continue
            rows.append(interpolate(lm, test_codes[i], test_codes[i] + sign * v, alphas, device))
            labels.append(f"{'+' if sign > 0 else '−'} {attr}")
    if rows:
        rep.figure(figures.image_rows(rows, labels, out / "manipulation.png",
                                      col_labels=[f"{a:.1f}" for a in alphas.tolist()]), "attribute manipulation")

    rep.add(f"## Correlation of attribute vectors (Figure 7), {name}", "")
    vectors = np.stack([attribute_vector(train_codes, train_sub.attribute(n), args.attribute_images, args.seed).numpy()
                        for n in CORRELATION_ATTRIBUTES])
    corr = np.corrcoef(vectors)
    rep.figure(figures.correlation_circles(corr, CORRELATION_ATTRIBUTES, out / "attribute_correlation.png"),
               "attribute vector correlations")
    ix = CORRELATION_ATTRIBUTES.index
    rep.add(f"Paper: Attractive correlates positively with Heavy_Makeup and negatively with Male and Gray_Hair. "
            f"Here: r(Attractive, Heavy_Makeup) = {corr[ix('Attractive'), ix('Heavy_Makeup')]:+.2f}, "
            f"r(Attractive, Male) = {corr[ix('Attractive'), ix('Male')]:+.2f}, "
            f"r(Attractive, Gray_Hair) = {corr[ix('Attractive'), ix('Gray_Hair')]:+.2f}.", "")

    side = args.tsne_side
    if side and len(test_codes) >= side * side:
        from sklearn.manifold import TSNE

        rep.add(f"## t-SNE of {side * side} test-image codes on a {side}×{side} grid (Figure 8), {name}", "")
        sel = torch.randperm(len(test_codes), generator=g)[: side * side].numpy()
        emb = TSNE(n_components=2, init="pca", random_state=args.seed,
                   perplexity=min(30, side * side // 4)).fit_transform(test_codes[sel].numpy())
        cells = metrics.grid_assignment(emb, side)
        rep.figure(figures.face_grid(to_float(torch.from_numpy(test_faces[sel])), cells, side, out / "tsne_grid.jpg"),
                   "t-SNE face grid")
        rep.add("Embedding points are assigned to grid cells by `scipy.optimize.linear_sum_assignment`.", "")


def section_table1(rep: Report, args, codes: dict, labels: dict, train_sub: CelebA, test_sub: CelebA, train_faces,
                   test_faces, attribute_names: list[str], progress: bool) -> dict:
    """Table 1; returns {row label: (40,) accuracies in %} including 'majority'."""
    from tqdm import tqdm

    ytr, yte = train_sub.attributes.numpy(), test_sub.attributes.numpy()
    ours = {}
    for key, (tr, te) in codes.items():
        ours[labels[key]] = 100 * metrics.svm_attribute_accuracy(
            tr.numpy(), ytr, te.numpy(), yte, progress=tqdm(total=ytr.shape[1], desc=f"SVMs {labels[key]}",
                                                            disable=not progress, file=sys.stderr, leave=False))
    vgg_n = None
    if not args.no_vgg_baseline:
        weights = None if args.weights == "none" else args.weights
        rows = np.arange(len(train_faces))
        if args.vgg_train and args.vgg_train < len(rows):
            rows = np.sort(np.random.default_rng(args.seed).choice(len(rows), size=args.vgg_train, replace=False))
        vgg_n = len(rows)
        tr = vgg_pooled_features(train_faces[rows], args.device, weights)
        te = vgg_pooled_features(test_faces, args.device, weights)
        ours[VGG_LABEL] = 100 * metrics.svm_attribute_accuracy(
            tr, ytr[rows], te, yte, progress=tqdm(total=ytr.shape[1], desc="SVMs VGG", disable=not progress,
                                                  file=sys.stderr, leave=False))
    majority = 100 * metrics.majority_accuracy(ytr, yte)
    rep.add("## Facial attribute prediction (Table 1)", "",
            f"One linear SVM per attribute (scikit-learn `LinearSVC(dual=False)`, liblinear's primal solver, C = 1, "
            f"standardised features) on the posterior means of {len(ytr)} training images, accuracy on the "
            f"{len(yte)} test images of the official split. Paper rows: its Table 1 (trained on about 180k images, "
            "tested on 20k). The majority row always predicts the training majority; 'Δ maj.' is the average gain "
            "over it.", "")
    if vgg_n is not None:
        rep.add(f"`{VGG_LABEL}` is *not comparable* to the paper's VGG-FC: it is 512-d VGG19 relu5_4 features "
                f"averaged over a 64×64 input (the shipped convolution-only weights have no fc layers), SVMs fitted "
                f"on {vgg_n} training images; the paper's VGG-FC is 4096-d fc7 of a 224-pixel input.", "")
    header = ["attribute", "majority"] + [f"ours {k}" for k in ours] + [f"paper {k}" for k in ("VAE-123", "VAE-345", "VGG-FC")]
    rows = []
    for i, name in enumerate(attribute_names):
        rows.append([name, f"{majority[i]:.1f}"] + [f"{v[i]:.1f}" for v in ours.values()] +
                    [f"{PAPER_TABLE1[k][i]}" for k in ("VAE-123", "VAE-345", "VGG-FC")])
    rows.append(["**average**", f"**{majority.mean():.2f}**"] + [f"**{v.mean():.2f}**" for v in ours.values()] +
                [f"**{PAPER_TABLE1[k][40]}**" for k in ("VAE-123", "VAE-345", "VGG-FC")])
    rows.append(["Δ maj.", "—"] + [f"{v.mean() - majority.mean():+.2f}" for v in ours.values()] + ["", "", ""])
    rep.table(header, rows)
    return dict(ours, majority=majority)


def section_quality(rep: Report, args, models: dict, labels: dict, info: dict, train_codes: dict,
                    test_faces: np.ndarray, g: torch.Generator, progress: bool) -> tuple[dict, dict]:
    """The quality table and the face rates of prior samples; returns {row key: {kind: {metric: value}}} and
    {row key: {sampling name: {form: face rate or None}}} (empty without the ONet weights)."""
    from tqdm import tqdm

    from .face_features import FaceFeaturesUnavailable, face_rate, load_onet, onet_features

    nq = min(args.quality_images, len(test_faces) // 2)
    weights = None if args.weights == "none" else args.weights
    real = to_float(torch.from_numpy(np.asarray(test_faces[:nq])))
    other = to_float(torch.from_numpy(np.asarray(test_faces[nq:2 * nq])))
    try:
        onet = load_onet()
    except FaceFeaturesUnavailable as e:
        print(f"warning: {e}; the ONet Fréchet distance is left out", file=sys.stderr)
        onet = None
    spaces = {"VGG19": lambda x: vgg_pooled_features(x, args.device, weights)}
    if onet is not None:
        spaces["ONet"] = lambda x: onet_features(onet, x).numpy()
    real_feats = {k: f(real) for k, f in spaces.items()}
    lap_in = metrics.laplacian_variance(real).mean().item()

    def measure(images: torch.Tensor, recon: bool) -> dict:
        row = {"sharpness": metrics.laplacian_variance(images).mean().item() / lap_in}
        if recon:
            row.update(mse=metrics.mse(images, real), ssim=metrics.ssim(images, real))
        for k, f in spaces.items():
            row[f"fd_{k}"] = metrics.frechet_distance(f(images), real_feats[k])
        if onet is not None:
            row["face_rate"] = face_rate(onet, images)
        return row

    z = torch.randn(nq, 100, generator=g)
    results = {"data": {"other test images": measure(other, False)}}
    faces = {}
    bar = tqdm(total=len(models) * (1 + len(SAMPLINGS)), desc="quality", disable=not progress, file=sys.stderr, leave=False)
    for key, model in models.items():
        rec = reconstruct(model, test_faces[:nq], args.device)
        results[key] = {"reconstruction": measure(rec, True)}
        bar.update()
        other_form, shift = other_form_shift(info[key], train_codes[key])
        for s in SAMPLINGS.values():
            results[key][f"samples ({s.name})"] = row = measure(sample(model, z, s, args.device), False)
            if onet is not None:  # the same codes decoded in the model's other form (raw / re-centred)
                other_rate = None if shift is None else face_rate(onet, sample(model, z, s, args.device, shift))
                faces.setdefault(key, {})[s.name] = {form(info[key]): row["face_rate"], other_form: other_rate}
            bar.update()
    bar.close()

    rep.add("## Perceptual quality (beyond the paper)", "",
            f"On {nq} test images. Reconstructions decode the posterior mean (eval-mode BN); MSE and SSIM are "
            "against the inputs. Samples in both conventions above. Sharpness = mean variance of the Laplacian of "
            "the grey image relative to the test images' (1.0 = as sharp as the data). Fréchet distances between "
            f"Gaussians fitted to features of {nq} generated images and of the {nq} test images, in two spaces: "
            "VGG19 (Caffe) relu5_4 averaged over space (512-d; VGG19 is also the training loss of VAE-123/345, "
            "so this space favours them) and, as a feature space no model here was trained with, the 256-d "
            "penultimate features of MTCNN's ONet face network (weights from the facenet-pytorch wheel; "
            "`face_features.py`). The 'other test images' row (another " f"{nq} test images) is the floor that "
            "finite samples give.", "")
    header = ["model", "images", "MSE ↓", "SSIM ↑", "sharpness"] + [f"FD {k} ↓" for k in spaces]
    rows = []
    for key, kinds in results.items():
        for kind, r in kinds.items():
            rows.append([labels.get(key, "data"), kind, f"{r['mse']:.4f}" if "mse" in r else "—",
                         f"{r['ssim']:.3f}" if "ssim" in r else "—", f"{r['sharpness']:.2f}"] +
                        [f"{r[f'fd_{k}']:.1f}" for k in spaces])
    rep.table(header, rows)
    if onet is not None:
        section_face_rate(rep, results["data"]["other test images"]["face_rate"], faces, labels, info, nq)
    return results, faces


#: The paper's Fig. 3 caption and text (Sec. 4.2) on each model's prior samples.
PAPER_FIG3 = {"pvae": "blurry faces (\"the generated images are blurry\")",
              "vae123": "faces with clearer eyes, noses and teeth than VAE-345",
              "vae345": "faces, \"more blurry\" than VAE-123's but \"better at generating hair with different textures\""}


def section_face_rate(rep: Report, data_rate: float, faces: dict, labels: dict, info: dict, n: int) -> None:
    """How many prior samples are faces, per model, form (raw / re-centred) and sampling convention, beside the
    paper's Fig. 3. A re-centred model whose offset was not recorded shows its raw rates from the run's trajectory
    (results/trajectory_<preset>.csv) at the same step, marked, when that file has them."""
    from .face_features import FACE_THRESHOLD

    rep.add("### How many prior samples are faces (Figure 3)", "",
            f"The fraction of {n} images that MTCNN's ONet face network (a network no model here was trained with) "
            f"classifies as a face (probability > {FACE_THRESHOLD}, MTCNN's own ONet threshold), the same codes for "
            f"every model; real test faces: {100 * data_rate:.1f}%. Each model in both forms: *raw* as trained, and "
            "*re-centred* (`dfcvae/recentre.py`, a labelled post-training step not in the paper: the latent shifted "
            "by the mean posterior mean m of the training faces, an exact reparameterisation that leaves every "
            "reconstruction unchanged). Both forms decode the same codes: a raw model's re-centred samples are its "
            "decoded z + m, a re-centred model's raw samples its decoded z − m with the offset its card records. "
            "'as shipped' says which form the weights file holds.", "")
    rows, notes = [], []
    for key, rates in faces.items():
        cells = []
        for s in SAMPLINGS:
            for f in FORMS:
                rate, mark = rates[s][f], ""
                if rate is None and (past := trajectory_face_rates(EXAMPLE_DIR / "results", preset_of(key),
                                                                   info[key]["step"])):
                    rate, mark = past[s], " †"
                    note = (f"† {labels[key]} was re-centred before the offset vector was recorded: its raw rates are "
                            f"those of results/trajectory_{preset_of(key)}.md at step {info[key]['step']:,} (the "
                            "same model before re-centring, 1,000 other codes of the same distribution).")
                    notes += [note] if note not in notes else []
                cells.append(percent(rate) + mark)
        rows.append([labels[key], *cells, "re-centred" if form(info[key]) == "recentred" else "raw",
                     PAPER_FIG3[preset_of(key)]])
    rep.table(["model", *(f"faces, {s.label}, {'re-centred' if f == 'recentred' else f}"
                          for s in SAMPLINGS.values() for f in FORMS), "as shipped", "the paper's Fig. 3"], rows)
    rep.add(*notes, "")


def table1_order(avg: dict[str, float], labels: dict[str, str], keys: list[str]) -> str:
    """The Table 1 averages of the models ``keys`` (one budget) and the majority row in increasing order, and
    whether the paper's order holds among the models present (VAE-345 ≥ VAE-123 > PVAE > majority)."""
    ranked = sorted([("majority", avg["majority"])] + [(labels[k], avg[labels[k]]) for k in keys], key=lambda r: r[1])
    chain = ["majority"] + [labels[k] for k in sorted(keys, key=lambda k: list(MODELS).index(preset_of(k)))]
    held = all(avg[a] < avg[b] or (avg[a] == avg[b] and {a, b} == {labels.get(k) for k in keys if preset_of(k) in
                                                                     ("vae123", "vae345")})
               for a, b in zip(chain, chain[1:]))
    return (" < ".join(f"{name} {value:.2f}" for name, value in ranked) +
            (" — the paper's order" if held else " — **not** the paper's order (VAE-345 ≥ VAE-123 > PVAE > majority)"))


def section_findings(rep: Report, table1: dict, quality: dict, faces: dict, labels: dict, info: dict) -> None:
    """What matches the paper and what does not, and what changed with the training budget, computed from this
    run's numbers."""
    avg = {k: float(np.mean(v)) for k, v in table1.items()}
    lines = ["## What matches the paper", ""]
    for steps in sorted({c["step"] for c in info.values()}, reverse=True):
        keys = [k for k in labels if info[k]["step"] == steps]
        lines.append(f"- Table 1 at {steps:,} steps: {table1_order(avg, labels, keys)}.")
    if {"VAE-123", "VAE-345"} <= avg.keys():
        for k, paper in (("VAE-123", PAPER_TABLE1["VAE-123"][40]), ("VAE-345", PAPER_TABLE1["VAE-345"][40])):
            lines.append(f"- Table 1 average, {k}: {avg[k]:.2f} here vs {paper} in the paper ({avg[k] - paper:+.2f}); "
                         f"{avg[k] - avg['majority']:+.2f} over the majority class.")
        order = avg["VAE-345"] > avg["VAE-123"]
        lines.append(f"- VAE-345 {'beats' if order else 'does not beat'} VAE-123 on attribute prediction "
                     f"({'as' if order else 'unlike'} the paper).")
    if "PVAE" in avg and "VAE-123" in avg:
        ok = avg["VAE-123"] > avg["PVAE"]
        lines.append(f"- The feature-loss model VAE-123 {'beats' if ok else 'does not beat'} the pixel-loss PVAE on "
                     f"attribute prediction ({avg['VAE-123']:.2f} vs {avg['PVAE']:.2f}).")
    if "pvae" in quality:
        for key in ("vae123", "vae345"):
            if key not in quality:
                continue
            for kind in quality[key]:
                d, p = quality[key][kind], quality["pvae"][kind]
                sharper = d["sharpness"] > p["sharpness"]
                closer = {s: d[s] < p[s] for s in d if s.startswith("fd_")}
                lines.append(f"- {MODELS[key]} {kind}: {'sharper' if sharper else 'not sharper'} than PVAE's "
                             f"({d['sharpness']:.2f} vs {p['sharpness']:.2f} of the data's sharpness); Fréchet "
                             "distance " + ", ".join(f"{s[3:]} {'closer' if c else 'farther'} "
                                                     f"({d[s]:.1f} vs {p[s]:.1f})" for s, c in closer.items()) + ".")
    if changes := change_lines(labels, avg, quality, faces, info):
        lines += ["", "### What the longer schedule changed, per model", "", *changes]
    rep.add(*lines, "")


# ------------------------------------------------------------------------------------------ main
def run(args) -> int:
    out = Path(args.out)
    check_out(out)
    try:
        attribute_names = read_attribute_names(args.data)
    except CelebAError as e:
        raise ReportError(str(e)) from None
    for name in args.attributes + CORRELATION_ATTRIBUTES:
        if name not in attribute_names:
            import difflib

            close = difflib.get_close_matches(name, attribute_names, n=3)
            raise ReportError(f"unknown attribute {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "") +
                              f"; valid: {', '.join(attribute_names)}")
    models, info = load_models(args)
    everything, info_all = dict(models), dict(info)  # the report's models and the baseline's, by row key
    if args.baseline:
        base_models, base_info = load_baseline(args.baseline, args.device)
        everything.update(base_models)
        info_all.update(base_info)
    labels = {k: label(k, c) for k, c in info_all.items()}
    crop = next(iter(info.values())).get("crop") or "released"
    data = load_celeba(args.data)
    train_data, test_data = data.split("train"), data.split("test")
    for split, d in (("test", test_data), ("train", train_data)):
        if len(d) == 0:
            raise ReportError(f"{args.data} has no {split} images (official partition); the report needs both "
                              "the train and the test split")
    progress = not args.no_progress
    from tqdm import tqdm

    t0 = time.time()
    g = torch.Generator().manual_seed(args.seed)
    names = [MODELS[k] for k in models]
    rep = Report(out)
    rep.add("# DFC-VAE reproduction report", "",
            f"Generated {datetime.date.today().isoformat()} by `examples/dfcvae/report.py` on "
            f"{platform.processor() or platform.machine()} ({args.device}), torch {torch.__version__}.", "")
    steps = tqdm(total=6, desc="report", unit="section", disable=not progress, file=sys.stderr)

    def done(what: str) -> None:
        rep.write()
        steps.set_postfix_str(what)
        steps.update()

    section_scale(rep, info_all, labels)
    section_samples(rep, models, names, out, g, args.device)
    done("samples")

    test_faces, test_sub = faces(test_data, crop, 0, args.seed, progress)
    pick = torch.randperm(len(test_faces), generator=g)[:10].sort().values.numpy()
    x = to_float(torch.from_numpy(test_faces[pick]))
    rows = [x] + [reconstruct(m, test_faces[pick], args.device) for m in models.values()]
    rep.add("## Reconstructions of test images (Figure 4)", "")
    rep.figure(figures.image_rows(rows, ["input"] + names, out / "reconstructions.png"), "reconstructions")
    done("reconstructions")

    train_faces, train_sub = faces(train_data, crop, args.svm_train, args.seed, progress)
    codes = {k: (encode(m, train_faces, device=args.device), encode(m, test_faces, device=args.device))
             for k, m in everything.items()}
    lm_key = args.latent_model if args.latent_model in models else next(iter(models))
    section_latent(rep, args, lm_key, models[lm_key], codes[lm_key][0], train_sub, codes[lm_key][1], test_faces,
                   test_sub, out, g)
    done("latent space")

    table1 = section_table1(rep, args, codes, labels, train_sub, test_sub, train_faces, test_faces,
                            data.attribute_names, progress)
    done("Table 1")
    quality, face_rates = section_quality(rep, args, everything, labels, info_all,
                                          {k: c[0] for k, c in codes.items()}, test_faces, g, progress)
    done("quality")
    section_findings(rep, table1, quality, face_rates, labels, info_all)
    rep.add(f"_Report generated in {time.time() - t0:.0f} s._")
    done("findings")
    steps.close()

    summary = {labels[k]: {"steps": info_all[k]["step"],
                           "table1_average": round(float(np.mean(table1[labels[k]])), 2),
                           "table1_delta_majority": round(float(np.mean(table1[labels[k]]) - np.mean(table1["majority"])), 2),
                           "quality": {kind: {m: round(v, 4) for m, v in r.items()} for kind, r in quality[k].items()},
                           "face_rates": {s: {f: None if v is None else round(v, 4) for f, v in r.items()}
                                          for s, r in face_rates.get(k, {}).items()}}
               for k in everything}
    summary["majority"] = {"table1_average": round(float(np.mean(table1["majority"])), 2)}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if args.update_cards:
        for k in models:
            if not getattr(args, k):
                update_card(k, args.pretrained, table1_average=summary[MODELS[k]]["table1_average"],
                            table1_delta_majority=summary[MODELS[k]]["table1_delta_majority"],
                            quality=summary[MODELS[k]]["quality"])
    print(f"written {out / 'report.md'} and {out / 'summary.json'} in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def first_with(data: CelebA, wanted: dict[str, bool], seed: int) -> int | None:
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
