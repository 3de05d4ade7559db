"""How a training run's generative side evolves: the prior-sample face rate, KL and aggregate-posterior offset of
every snapshot a run kept (``train.py --keep-every STEPS``), as a markdown table and a CSV (issue 27).

    python -m dfcvae.trajectory --run ../../runs/paper-vae345 --out results/trajectory_vae345.md   # from examples/dfcvae

For each ``<run>/snapshots/step-*.pt`` (and the run's ``checkpoint.pt`` when it is newer), on a fixed random
subset of the official train split and fixed prior codes (the same for every snapshot):

- ``kl``: the mean per-sample KL of the posteriors to N(0, I); ``|m|``: the norm of the mean of the posterior
  means (the aggregate posterior's offset from the prior's centre; ½|m|² of the KL is spent on it);
  ``active``: latent units whose posterior mean varies over the data (variance > 0.01);
- the face rate of prior samples under the paper's convention (z ~ N(0, I), eval-mode BatchNorm) and the released
  generate.lua's (z ~ N(0, 0.4² I), batch-statistics BN over batches of 100): the fraction MTCNN's ONet calls a face
  (probability > 0.7), as in :mod:`dfcvae.diagnose_prior`;
- the learning rate and the training loss terms logged at that step (``log.csv``).

Results per snapshot are cached beside it (``step-*.eval.json``, keyed by the evaluation's settings and the
snapshot file's sha256), so running it again while the run trains evaluates only the new snapshots; a cached
result of another file of that name (a run started again in the same folder) is recomputed, and said so.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import io
import json
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the dfcvae package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "dfcvae"

import numpy as np
import torch

from dfcvae.celeba import load_celeba
from dfcvae.checkpointing import CheckpointError, read_checkpoint, vae_from_checkpoint
from dfcvae.diagnose_prior import cpu_name, decode, posterior, subset_faces
from dfcvae.face_features import FACE_THRESHOLD, face_rate, load_onet
from dfcvae.files import write_text_atomic
from dfcvae.objective import kl_per_sample
from perceptloss.weights import sha256_file

SNAPSHOT = re.compile(r"step-(\d+)\.pt$")
COLUMNS = ("step", "lr", "kl", "mean_norm", "half_m2", "active", "face_paper", "face_released", "log_kl", "log_rec")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a train.py --out folder (with snapshots/ from --keep-every)")
    p.add_argument("--data", default="../shared/data/celeba", help="CelebA folder (official layout)")
    p.add_argument("--train-images", type=int, default=2000, help="training faces for KL and |m|")
    p.add_argument("--samples", type=int, default=1000, help="prior samples per convention")
    p.add_argument("--threshold", type=float, default=FACE_THRESHOLD,
                   help="ONet face probability above which it is a face (default: MTCNN's %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the markdown table here (the CSV beside it, .csv)")
    args = p.parse_args(argv)
    for name in ("train_images", "samples", "threads"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 < args.threshold < 1:
        p.error(f"--threshold must be in (0, 1), got {args.threshold}")
    return args


def snapshots(run: Path) -> list[tuple[int, Path]]:
    """(step, path) of every kept snapshot, by step, plus ``checkpoint.pt`` when it is past the last one."""
    found = sorted((int(m.group(1)), f) for f in (run / "snapshots").glob("step-*.pt") if (m := SNAPSHOT.search(f.name)))
    last = run / "checkpoint.pt"
    if last.is_file():
        try:
            step = int(read_checkpoint(last)["step"])
        except CheckpointError:
            step = -1  # being replaced right now (atomic rename): the snapshots are enough
        if not found or step > found[-1][0]:
            found.append((step, last))
    return found


def logged(run: Path) -> dict[int, dict]:
    """log.csv rows by step (empty when there is no log)."""
    path = run / "log.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {int(r["step"]): r for r in csv.DictReader(f) if r.get("step", "").isdigit()}


def cached(cache: Path, key: str, digest: str) -> tuple[dict | None, str]:
    """The result cached in ``cache`` for the settings ``key`` and the snapshot with sha256 ``digest``, else None
    and why it is not used ('' when there is no cache, or it was made with other settings)."""
    if not cache.is_file():
        return None, ""
    try:
        saved = json.loads(cache.read_text())
        if saved.get("key") != key:
            return None, ""
        if "sha256" not in saved:
            return None, f"{cache} does not say which snapshot file it is of (an older cache): recomputing it"
        if saved["sha256"] != digest:
            return None, (f"{cache} holds the result of another snapshot file (sha256 "
                          f"{str(saved.get('sha256'))[:12]}…, this one {digest[:12]}…): recomputing it")
        return saved["result"], ""
    except (OSError, ValueError, KeyError, AttributeError):
        return None, f"{cache} is unreadable: recomputing it"


def evaluate(model, train_faces: np.ndarray, z: torch.Tensor, onet, threshold: float) -> dict:
    """KL, |m|, active units and the two conventions' face rates of one model (eval mode)."""
    model.eval().requires_grad_(False)
    mean, logvar = posterior(model, train_faces)
    m = mean.mean(0)
    return {"kl": float(kl_per_sample(mean, logvar).mean()), "mean_norm": float(m.norm()),
            "half_m2": 0.5 * float(m.square().sum()), "active": int((mean.var(0) > 0.01).sum()),
            "face_paper": face_rate(onet, decode(model, z, False), threshold),
            "face_released": face_rate(onet, decode(model, z * 0.4, True), threshold)}


def nearest_log(rows: dict[int, dict], step: int) -> dict:
    """The log row at ``step``, or the last one before it (the log is written every --log-every steps)."""
    before = [s for s in rows if s <= step]
    return rows[max(before)] if before else {}


def table(results: list[dict]) -> list[str]:
    lines = ["| step | lr | KL / sample | ‖m‖ | ½‖m‖² | active units | faces, paper: N(0, I), eval BN "
             "| faces, released: N(0, 0.4² I), batch BN | logged KL | logged rec |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lr = f"{float(r['lr']):.3g}" if r.get("lr") not in (None, "") else "–"
        lkl = f"{float(r['log_kl']):.1f}" if r.get("log_kl") not in (None, "") else "–"
        lrec = f"{float(r['log_rec']):,.0f}" if r.get("log_rec") not in (None, "") else "–"
        lines.append(f"| {r['step']:,} | {lr} | {r['kl']:.1f} | {r['mean_norm']:.2f} | {r['half_m2']:.1f} | "
                     f"{r['active']} | {100 * r['face_paper']:.1f}% | {100 * r['face_released']:.1f}% | {lkl} | {lrec} |")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    found = snapshots(run)
    if not found:
        print(f"error: {run} holds no snapshots/step-*.pt and no checkpoint.pt; train with "
              f"`train.py --out {run} --keep-every 1000`", file=sys.stderr)
        return 2
    t0 = time.time()
    key = hashlib.sha256(json.dumps([args.data, args.train_images, args.samples, args.threshold, args.seed])
                         .encode()).hexdigest()[:16]
    data = load_celeba(args.data, verbose=False)
    train_faces = subset_faces(data.split("train"), args.train_images, args.seed)
    z = torch.randn(args.samples, 100, generator=torch.Generator().manual_seed(args.seed))
    onet = load_onet()
    rows = logged(run)
    results = []
    for step, path in found:
        cache = path.with_suffix(".eval.json")
        r, digest = None, None
        if path.name != "checkpoint.pt":
            digest = sha256_file(path)
            r, stale = cached(cache, key, digest)
            if stale:
                print(f"step {step}: {stale}", file=sys.stderr)
        if r is None:
            try:
                state = read_checkpoint(path)
                model = vae_from_checkpoint(state, path)
            except CheckpointError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            if model.latent != z.shape[1]:
                z = torch.randn(args.samples, model.latent, generator=torch.Generator().manual_seed(args.seed))
            r = evaluate(model, train_faces, z, onet, args.threshold)
            if digest is not None:
                write_text_atomic(cache, json.dumps({"key": key, "sha256": digest, "result": r}, indent=1))
            print(f"step {step}: KL {r['kl']:.1f}, |m| {r['mean_norm']:.2f}, faces {100 * r['face_paper']:.1f}% "
                  f"(paper) / {100 * r['face_released']:.1f}% (released) ({time.time() - t0:.0f} s)", file=sys.stderr)
        log = nearest_log(rows, step)
        results.append({"step": step, "lr": log.get("lr"), "log_kl": log.get("kl"), "log_rec": log.get("rec"), **r})
    lines = [f"# The generative side of `{run.name}` over training", "",
             f"{datetime.date.today().isoformat()}, `python -m dfcvae.trajectory` (seed {args.seed}) on the CPU "
             f"({cpu_name()}): {args.train_images} random official-train faces, {args.samples} prior codes (the same "
             f"for every step), a face = ONet probability > {args.threshold}. Logged KL and rec: the training log's "
             "batch values at (or just before) that step.", "", *table(results), ""]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        write_text_atomic(out, "\n".join(lines) + "\n")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(results)
        write_text_atomic(out.with_suffix(".csv"), buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
