"""Why are a model's prior samples not faces? Measurements on the shipped (or exported) DFC-VAE models (issue 27).

    python -m dfcvae.diagnose_prior --out results/prior_diagnosis.md          # from examples/dfcvae
    python examples/dfcvae/dfcvae/diagnose_prior.py --help

For each model (pvae, vae123, vae345 by default), on a fixed random subset of the official train split and of the
test split, with fixed seeds, it prints (and writes, with ``--out``) a markdown report of:

1. the sample face rate: the fraction of decoded codes that MTCNN's ONet classifies as a face (probability above
   ``--threshold``, default 0.7 = MTCNN's own ONet threshold), under the paper's convention (z ~ N(0, I),
   eval-mode BN) and the released generate.lua's (z ~ N(0, 0.4^2 I), batch-statistics BN over batches of 100),
   with real test faces as the reference; and, as a *diagnostic only* (not a fix of the model), codes drawn from
   a Gaussian fitted to the aggregate posterior and the posterior means of test images themselves;
2. the per-layer reconstruction terms (Caffe VGG19, exactly the training objective's per-layer mean squared
   feature difference; pixel SSE for PVAE) on reconstructions of training faces (z = mean + sigma * eps, as in
   training) against the per-sample KL, and their weights relative to KL under the two balances of
   ``objective.py``: ``released`` (sum_b KL_b + beta * mean_b rec_b: rec weight beta / B per sample) and
   ``per-sample`` (the paper's Eq. 4-5: KL + beta * 1/2 * rec); plus the gradient norms of both terms with
   respect to the posterior mean, which is what the optimiser balances;
3. active latent units (variance over the data of the posterior mean > 0.01), the aggregate posterior against
   N(0, I) (norm of its mean, eigenvalues and trace of its covariance, KL of the fitted Gaussian to N(0, I)), and
   the decoder's BatchNorm: saved running statistics against the batch statistics of prior and posterior codes;
4. the step counts of the paper and of the models (model cards).

Everything runs on the CPU in a few minutes (one thread by default: ``--threads``).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the dfcvae package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "dfcvae"

import numpy as np
import torch

from dfcvae.celeba import build_cache, load_celeba, to_float
from dfcvae.face_features import FACE_THRESHOLD, face_probabilities, load_onet
from dfcvae.objective import DEFAULT_BETA, DFCObjective, kl_per_sample
from dfcvae.pretrained import NAMES, load_pretrained, read_card
from dfcvae.recentre import recentred
from dfcvae.vae import VAE

PAPER_TRAIN_IMAGES = 162_770  # CelebA's official train split (the paper: "5 epochs over the training dataset")
PAPER_BATCH, PAPER_EPOCHS = 64, 5
LAYERS = {"vae123": ("relu1_1", "relu2_1", "relu3_1"), "vae345": ("relu3_1", "relu4_1", "relu5_1"),
          "pvae": ("pixels",)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(NAMES), choices=NAMES)
    p.add_argument("--pretrained", default=None, help="folder of exported models (default: the shipped ones)")
    p.add_argument("--data", default="../shared/data/celeba", help="CelebA folder (official layout)")
    p.add_argument("--train-images", type=int, default=3000, help="training faces for the posterior statistics")
    p.add_argument("--test-images", type=int, default=1000, help="real test faces (face-rate reference)")
    p.add_argument("--samples", type=int, default=1000, help="prior samples per model and convention")
    p.add_argument("--recon-images", type=int, default=256, help="training faces for the reconstruction terms")
    p.add_argument("--grad-images", type=int, default=64, help="training faces for the gradient norms (0: skip)")
    p.add_argument("--threshold", type=float, default=FACE_THRESHOLD,
                   help="ONet face probability above which it is a face (default: MTCNN's %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hardware", default=None, help="how to name the CPU in the report (default: /proc/cpuinfo's "
                   "model name and the core count)")
    p.add_argument("--out", default=None, help="write the markdown report here as well")
    return p.parse_args(argv)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def subset_faces(data, n: int, seed: int) -> np.ndarray:
    rows = np.arange(len(data))
    if n and n < len(data):
        rows = np.sort(np.random.default_rng(seed).choice(len(data), size=n, replace=False))
    return np.asarray(build_cache(data.select(rows), "released", 64, workers=1, progress=False).images)


@torch.no_grad()
def posterior(model, faces: np.ndarray, batch: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    means, logvars = [], []
    for i in range(0, len(faces), batch):
        m, lv = model.encoder(to_float(torch.from_numpy(np.array(faces[i:i + batch]))))
        means.append(m.float()), logvars.append(lv.float())
    return torch.cat(means), torch.cat(logvars)


@torch.no_grad()
def decode(model, z: torch.Tensor, batch_stats: bool, batch: int = 100) -> torch.Tensor:
    dec = copy.deepcopy(model.decoder).train(batch_stats)  # a throw-away copy: running statistics untouched
    return torch.cat([dec(z[i:i + batch]).float().clamp(0, 1) for i in range(0, len(z), batch)])


def face_rate(onet, images: torch.Tensor, threshold: float) -> tuple[float, float, float]:
    """(fraction above ``threshold``, median probability, fraction above 0.5) of ONet's face probabilities."""
    p = face_probabilities(onet, images)
    return float((p > threshold).float().mean()), float(p.median()), float((p > 0.5).float().mean())


def gaussian_stats(mean: torch.Tensor, cov: torch.Tensor) -> dict:
    d = len(mean)
    ev = torch.linalg.eigvalsh(cov.double()).clamp_min(1e-12)
    kl = 0.5 * (float(ev.sum()) + float(mean.double().square().sum()) - d - float(ev.log().sum()))
    # the reverse direction, what sampling from the prior sees: KL(N(0, I) || N(m, S)) and the expected squared
    # Mahalanobis distance of a prior code under N(m, S) (d for the fitted Gaussian's own samples)
    prec = torch.linalg.inv(cov.double())
    m = mean.double()
    maha = float(torch.trace(prec) + m @ prec @ m)
    rkl = 0.5 * (maha - d + float(ev.log().sum()))
    return {"rkl": rkl, "maha": maha, "mean_norm": float(mean.norm()), "trace": float(ev.sum()), "ev_max": float(ev.max()),
            "ev_min": float(ev.min()), "ev_median": float(ev.median()), "n_ev_gt_0.1": int((ev > 0.1).sum()),
            "kl": kl}


@torch.no_grad()
def bn_statistics(model, z_sets: dict[str, torch.Tensor], batch: int = 100) -> dict:
    """Per decoder BN layer: the batch mean/var of its input for each code set (batches of ``batch``), against the
    running statistics: mean |mu_b - mu_run| / sqrt(var_run) and the median of var_b / var_run over channels."""
    bns = [m for m in model.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    out = {}
    for name, z in z_sets.items():
        inputs: dict[int, list] = {i: [] for i in range(len(bns))}
        hooks = [bn.register_forward_hook(lambda mod, inp, o, i=i: inputs[i].append(inp[0].float()))
                 for i, bn in enumerate(bns)]
        dec = model.decoder.eval()
        for j in range(0, len(z), batch):
            dec(z[j:j + batch])
        for h in hooks:
            h.remove()
        rows = []
        for i, bn in enumerate(bns):
            rm, rv = bn.running_mean.float(), bn.running_var.float()
            shift, ratio = [], []
            for x in inputs[i]:
                bm, bv = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
                shift.append(((bm - rm).abs() / rv.sqrt()).mean())
                ratio.append((bv / rv).median())
            rows.append((float(torch.stack(shift).mean()), float(torch.stack(ratio).mean())))
        out[name] = rows
    return out


def recon_terms(model, preset: str, faces: np.ndarray, seed: int, batch: int = 32) -> dict:
    """Per-sample per-layer unweighted reconstruction terms (the objective's units) and KL, with z sampled."""
    obj = DFCObjective(preset)
    g = torch.Generator().manual_seed(seed)
    layers, kls, layers_mean = [], [], []
    with torch.no_grad():
        for i in range(0, len(faces), batch):
            x = to_float(torch.from_numpy(np.array(faces[i:i + batch])))
            m, lv = model.encoder(x)
            z = m + torch.randn(m.shape, generator=g) * (0.5 * lv).exp()
            for code, acc in ((z, layers), (m, layers_mean)):
                r = model.decoder(code)
                if obj.feature_loss is None:
                    acc.append(obj.reconstruction(r, x)[:, None])
                else:
                    acc.append(obj.feature_loss.per_layer(r, x))
            kls.append(kl_per_sample(m.float(), lv.float()))
    return {"layers": torch.cat(layers), "layers_mean": torch.cat(layers_mean), "kl": torch.cat(kls)}


def gradient_norms(model, preset: str, faces: np.ndarray) -> dict:
    """Per-sample gradient norms w.r.t. the posterior mean of the unweighted reconstruction (z = mean, eval BN) and
    of the KL (= |mean|): the weight times their ratio is the force balance the optimiser sees."""
    obj = DFCObjective(preset)
    x = to_float(torch.from_numpy(np.array(faces)))
    with torch.no_grad():
        m, lv = model.encoder(x)
    m = m.detach().requires_grad_(True)
    rec = obj.reconstruction(model.decoder(m), x)
    (grad,) = torch.autograd.grad(rec.sum(), m)
    return {"rec": float(grad.norm(dim=1).median()), "kl": float(m.detach().norm(dim=1).median())}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    lines: list[str] = []
    add = lines.extend

    data = load_celeba(args.data, verbose=False)
    train_faces = subset_faces(data.split("train"), args.train_images, args.seed)
    test_faces = subset_faces(data.split("test"), args.test_images, args.seed + 1)
    onet = load_onet()
    real_rate, real_med, real_half = face_rate(onet, to_float(torch.from_numpy(np.array(test_faces))), args.threshold)
    g = torch.Generator().manual_seed(args.seed)
    z_std = torch.randn(args.samples, 100, generator=g)  # the same codes for every model

    # the aggregate posterior mean of untrained models (three seeds, batch-statistics BN as in training's start)
    init_offsets = []
    x_init = to_float(torch.from_numpy(np.array(train_faces[:1000])))
    for seed in range(3):
        torch.manual_seed(args.seed + seed)
        fresh = VAE().train()
        with torch.no_grad():
            mu0 = torch.cat([fresh.encoder(x_init[i:i + 64])[0] for i in range(0, len(x_init), 64)])
        init_offsets.append(float(mu0.mean(0).norm()))
    torch.manual_seed(args.seed)

    models = {n: load_pretrained(n, args.pretrained) for n in args.models}
    cards = {n: read_card(n, Path(args.pretrained) if args.pretrained else None) for n in args.models}
    res: dict[str, dict] = {}
    for name, model in models.items():
        model.eval().requires_grad_(False)
        r: dict = {}
        mean, logvar = posterior(model, train_faces)
        var = logvar.exp()
        r["kl"] = float(kl_per_sample(mean, logvar).mean())
        r["active"] = int((mean.var(0) > 0.01).sum())
        mu = mean.mean(0)
        cov_means = torch.cov(mean.T)
        cov_agg = cov_means + torch.diag(var.mean(0))
        r["agg_means"] = gaussian_stats(mu, cov_means)
        r["agg"] = gaussian_stats(mu, cov_agg)
        r["mean_sigma"] = float(var.sqrt().mean())
        r["mean_sigma_active"] = float(var.sqrt()[:, mean.var(0) > 0.01].mean()) if r["active"] else float("nan")
        # face rates
        r["rate_paper"] = face_rate(onet, decode(model, z_std, False), args.threshold)
        r["rate_released"] = face_rate(onet, decode(model, z_std * 0.4, True), args.threshold)
        r["rate_T04_eval"] = face_rate(onet, decode(model, z_std * 0.4, False), args.threshold)
        r["rate_T1_batch"] = face_rate(onet, decode(model, z_std, True), args.threshold)
        chol = torch.linalg.cholesky(cov_agg.double() + 1e-6 * torch.eye(100, dtype=torch.float64)).float()
        z_agg = mu + z_std @ chol.T
        r["rate_agg"] = face_rate(onet, decode(model, z_agg, False), args.threshold)
        r["rate_shift"] = face_rate(onet, decode(model, mu + z_std, False), args.threshold)
        r["rate_cov0"] = face_rate(onet, decode(model, z_std @ chol.T, False), args.threshold)
        test_mean, _ = posterior(model, test_faces)
        gp = torch.Generator().manual_seed(args.seed + 2)
        noise = torch.randn(test_mean.shape, generator=gp)
        r["rate_perturb"] = face_rate(onet, decode(model, test_mean + 0.5 * noise, False), args.threshold)
        r["rate_test_mean"] = face_rate(onet, decode(model, test_mean, False), args.threshold)
        r["prior_dist"] = float(z_std.norm(dim=1).median())
        r["post_dist"] = float(mean.norm(dim=1).median())
        # the exact re-centring z' = z - m (encoder mean bias - m, decoder first bias + W m): the same
        # reconstructions, KL lower by |m|^2 / 2 per sample; its prior samples are the old model's N(m, I)
        rc = recentred(model, mu)
        rc_mean, rc_logvar = posterior(rc, train_faces)
        r["rc_kl"] = float(kl_per_sample(rc_mean, rc_logvar).mean())
        r["rc_kl_test"] = (float(kl_per_sample(*posterior(model, test_faces)).mean()),
                           float(kl_per_sample(*posterior(rc, test_faces)).mean()))
        xs = to_float(torch.from_numpy(np.array(test_faces[:200])))
        with torch.no_grad():
            r["rc_diff"] = float((rc.decoder(rc.encoder(xs)[0]) - model.decoder(model.encoder(xs)[0])).abs().max())
        r["rc_paper"] = face_rate(onet, decode(rc, z_std, False), args.threshold)
        r["rc_released"] = face_rate(onet, decode(rc, z_std * 0.4, True), args.threshold)
        # BatchNorm statistics
        r["bn"] = bn_statistics(model, {"posterior means": mean[:args.samples],
                                        "prior N(0, I)": z_std, "prior N(0, 0.4² I)": z_std * 0.4})
        # reconstruction terms and their weights
        preset = cards[name]["preset"]
        rt = recon_terms(model, preset, train_faces[:args.recon_images], args.seed)
        r["layers"] = rt["layers"].mean(0).tolist()
        r["layers_mean"] = rt["layers_mean"].mean(0).tolist()
        r["kl_recon_subset"] = float(rt["kl"].mean())
        if args.grad_images:
            r["grad"] = gradient_norms(model, preset, train_faces[:args.grad_images])
        r["preset"], r["beta"] = preset, float(cards[name].get("beta", DEFAULT_BETA[preset]))
        r["batch"] = int(cards[name].get("batch_size", 64)) * int(cards[name].get("world_size", 1))
        res[name] = r
        print(f"{name} done ({time.time() - t0:.0f} s)", file=sys.stderr)

    th = args.threshold
    described = ", ".join(f"`{n}` ({cards[n].get('steps')} steps, sha256 {str(cards[n].get('sha256'))[:12]}…)"
                          for n in models)
    add(["# Why VAE-345's prior samples are not faces: measurements (issue 27, step 1)", "",
         f"{datetime.date.today().isoformat()}, `python -m dfcvae.diagnose_prior` (seed {args.seed}), on the CPU "
         f"({args.hardware or cpu_name()}; {args.threads} torch thread(s)), in "
         f"{time.time() - t0:.0f} s. Models: {described}. "
         f"Data: {len(train_faces)} random official-train faces, {len(test_faces)} random test faces, "
         f"{args.samples} prior codes (the same for every model).", ""])

    add(["## 1. Sample face rate", "",
         f"Fraction of decoded images that MTCNN's ONet calls a face (probability > {th}, MTCNN's ONet threshold; "
         f"median probability in brackets). Real test faces: **{100 * real_rate:.1f}%** [{real_med:.3f}] "
         f"({100 * real_half:.1f}% at > 0.5).", "",
         "| model | paper: N(0, I), eval BN | released: N(0, 0.4² I), batch BN | N(0, 0.4² I), eval BN | N(0, I), batch BN "
         "| fitted aggregate posterior N(m, Σ) | N(m, I) | N(0, Σ) | test posterior means (reconstructions) "
         "| test means + N(0, 0.5² I) |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"])
    for n, r in res.items():
        cells = [f"{100 * r[k][0]:.1f}% [{r[k][1]:.2f}]" for k in
                 ("rate_paper", "rate_released", "rate_T04_eval", "rate_T1_batch", "rate_agg", "rate_shift",
                  "rate_cov0", "rate_test_mean", "rate_perturb")]
        add([f"| {n} | " + " | ".join(cells) + " |"])
    add(["", "Columns 5-9 are diagnostics, not sampling methods of the model: all with eval-mode BN; m and Σ are the "
         "mean and covariance of the moment-matched aggregate posterior (section 3), N(m, I) moves the prior to its "
         "mean, N(0, Σ) gives the prior its covariance, the last column perturbs real codes by half a prior "
         "standard deviation per dimension (the decoder's tolerance off the data's codes)."])
    add(["", "The same two conventions at threshold 0.5 (the issue's table; real test faces "
         f"{100 * real_half:.1f}%):", "", "| model | paper | released |", "| --- | --- | --- |"])
    for n, r in res.items():
        add([f"| {n} | {100 * r['rate_paper'][2]:.1f}% | {100 * r['rate_released'][2]:.1f}% |"])
    add([""])

    add(["## 2. Reconstruction terms against KL (per training sample)", "",
         f"On {args.recon_images} training faces, z = mean + σ·ε as in training, eval-mode BN. Unweighted terms in the "
         "objective's units: per layer the mean over C·H·W of the squared Caffe-VGG19 feature difference (BGR 0-255 "
         "minus the mean pixel), PVAE the per-image sum of squared pixel errors in [0, 1]. In brackets the same with "
         "z = posterior mean. Weight of the reconstruction relative to KL per sample: `released` β/B for VAE-123/345 "
         "(KL summed over the batch, MSECriterion averaged over it), β for PVAE; `per-sample` (paper Eq. 4-5) β/2 "
         "for VAE-123/345, β for PVAE. 'weighted rec' = weight × Σ layers, in nats-equivalents beside the KL.", "",
         "| model | layer terms (unweighted) | Σ layers | KL | weight, released | weighted rec / KL, released "
         "| weight, paper per-sample | weighted rec / KL, paper |", "| --- | --- | --- | --- | --- | --- | --- | --- |"])
    for n, r in res.items():
        feat = r["preset"] != "pvae"
        w_rel = r["beta"] / r["batch"] if feat else r["beta"]
        w_pap = r["beta"] * 0.5 if feat else r["beta"]
        tot = sum(r["layers"])
        terms = ", ".join(f"{l} {v:,.0f} ({vm:,.0f})" for l, v, vm in zip(LAYERS[r["preset"]], r["layers"], r["layers_mean"]))
        add([f"| {n} | {terms} | {tot:,.0f} | {r['kl_recon_subset']:.1f} | {w_rel:.4g} | "
             f"{w_rel * tot:,.0f} / {r['kl_recon_subset']:.0f} = {w_rel * tot / r['kl_recon_subset']:.1f} | "
             f"{w_pap:.4g} | {w_pap * tot / r['kl_recon_subset']:,.0f} |"])
    if args.grad_images:
        add(["", f"Force balance at the posterior mean ({args.grad_images} training faces, median per sample): "
             "|∂rec/∂μ| (unweighted) and |∂KL/∂μ| = |μ|; the weighted ratio is what the optimiser equalises "
             "(> 1: reconstruction dominates).", "",
             "| model | ∂rec/∂μ | ∂KL/∂μ | weighted ratio, released | weighted ratio, paper per-sample |",
             "| --- | --- | --- | --- | --- |"])
        for n, r in res.items():
            feat = r["preset"] != "pvae"
            w_rel = r["beta"] / r["batch"] if feat else r["beta"]
            w_pap = r["beta"] * 0.5 if feat else r["beta"]
            gr = r["grad"]
            add([f"| {n} | {gr['rec']:,.1f} | {gr['kl']:.2f} | {w_rel * gr['rec'] / gr['kl']:.2f} | "
                 f"{w_pap * gr['rec'] / gr['kl']:.1f} |"])
    add([""])

    add(["## 3. Latent usage and the aggregate posterior", "",
         f"Over {len(train_faces)} training faces. Active units: variance of the posterior mean over the data > 0.01. "
         "'means' = Gaussian fitted to the posterior means (mean m, covariance Cov μ); 'aggregate' = moment-matched "
         "aggregate posterior (Cov μ + E[diag σ²]). KL of each fitted Gaussian to N(0, I) (a prior sample's distance "
         "from the typical code); for N(0, I) itself: |m| 0, trace 100, all eigenvalues 1, KL 0.", "",
         "| model | KL / sample | active units | mean σ (active units) | ‖m‖ | trace, means | eigenvalues, means "
         "(max / median / min; # > 0.1) | KL(means ‖ N(0,I)) | trace, aggregate | KL(aggregate ‖ N(0,I)) "
         "| KL(N(0,I) ‖ aggregate) | E Mahalanobis² of a prior code (aggregate's own: 100) "
         "| median ‖z‖: prior / posterior means |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"])
    for n, r in res.items():
        a, b = r["agg_means"], r["agg"]
        add([f"| {n} | {r['kl']:.1f} | {r['active']} | {r['mean_sigma']:.3f} ({r['mean_sigma_active']:.3f}) | "
             f"{a['mean_norm']:.2f} | {a['trace']:.1f} | {a['ev_max']:.2f} / {a['ev_median']:.3f} / "
             f"{a['ev_min']:.1e}; {a['n_ev_gt_0.1']} | {a['kl']:.1f} | {b['trace']:.1f} | {b['kl']:.1f} | "
             f"{b['rkl']:.1f} | {b['maha']:.0f} | "
             f"{r['prior_dist']:.2f} / {r['post_dist']:.2f} |"])
    add(["", f"|m| of untrained models (the same architecture and initialisation, seeds {args.seed}-{args.seed + 2}, "
         f"{len(x_init)} training faces, batch-statistics BN): {', '.join(f'{v:.2f}' for v in init_offsets)}. "
         "The offset m costs ½|m|² nats of every sample's KL and is free to remove (the decoder's first linear "
         "layer can absorb any shift of z), so a converged model has m ≈ 0."])
    add(["", "Decoder BatchNorm: per BN layer (4×4→8×8, 16×16, 32×32), the batch statistics of its input over batches "
         "of 100 codes against the saved running statistics: mean over channels of |batch mean − running mean| / "
         "running std, and the median over channels of batch var / running var (1 and 0 = the saved statistics "
         "fit).", "",
         "| model | codes | BN1 shift, var ratio | BN2 | BN3 |", "| --- | --- | --- | --- | --- |"])
    for n, r in res.items():
        for codes, rows in r["bn"].items():
            add([f"| {n} | {codes} | " + " | ".join(f"{s:.2f}, {v:.2f}" for s, v in rows) + " |"])
    add([""])

    add(["## 3b. The same models re-centred (z' = z − m)", "",
         "Each model with its latent space shifted by the aggregate posterior mean m of section 3 (encoder mean-head "
         "bias − m, decoder first linear bias + W·m): an exact reparameterisation, so every reconstruction is the "
         "same (max |difference| below, float32 rounding), while the KL of every sample drops by ½|m|² on average: "
         "a strictly lower value of the training objective with α, β and the architecture unchanged. Its prior "
         "samples are the old model's N(m, I) codes.", "",
         "| model | ½‖m‖² | KL train: before → after | KL test: before → after | max abs Δ recon | paper convention "
         "| released convention |", "| --- | --- | --- | --- | --- | --- | --- |"])
    for n, r in res.items():
        add([f"| {n} | {0.5 * r['agg']['mean_norm'] ** 2:.1f} | {r['kl']:.1f} → {r['rc_kl']:.1f} | "
             f"{r['rc_kl_test'][0]:.1f} → {r['rc_kl_test'][1]:.1f} | {r['rc_diff']:.1e} | "
             f"{100 * r['rc_paper'][0]:.1f}% [{r['rc_paper'][1]:.2f}] | "
             f"{100 * r['rc_released'][0]:.1f}% [{r['rc_released'][1]:.2f}] |"])
    add([""])

    paper_steps = (PAPER_TRAIN_IMAGES // PAPER_BATCH) * PAPER_EPOCHS
    add(["## 4. Steps", "",
         f"Paper (Sec. 4): batch 64, 5 epochs over the CelebA training set ({PAPER_TRAIN_IMAGES:,} images of the "
         f"official split) = {paper_steps:,} steps, {paper_steps * PAPER_BATCH:,} images seen, the learning rate "
         "halved per epoch (every ~2,543 steps).", "",
         "| model | images | batch | epochs | steps | fraction of the paper's steps | wall time | images/s |",
         "| --- | --- | --- | --- | --- | --- | --- | --- |"])
    for n in models:
        c = cards[n]
        add([f"| {n} | {c.get('images'):,} | {c.get('batch_size')} | {c.get('epochs')} | {c.get('steps'):,} | "
             f"{c.get('steps') / paper_steps:.2f} | {c.get('wall_time_s', 0) / 60:.0f} min | "
             f"{c.get('images_per_s')} |"])
    add([""])
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
