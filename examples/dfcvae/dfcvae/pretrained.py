"""The trained DFC-VAE models shipped with the example, and the tool that exports them from a training run.

    from dfcvae.pretrained import load_pretrained   # from examples/dfcvae (or with it on PYTHONPATH)
    model = load_pretrained("vae123")               # VAE on the CPU, eval mode, checksum verified
    mean, logvar = model.encoder(x)                 # x: (N, 3, 64, 64) RGB in [0, 1] -> two (N, 100)
    images = model.decoder(mean).clamp(0, 1)        # (N, 100) codes -> (N, 3, 64, 64) RGB, [0, 1] after clamping

Each model is ``pretrained/<name>.safetensors`` (fp16 weights, BatchNorm running statistics included) beside a
model card ``pretrained/<name>.json`` (preset, data, images, steps, epochs, wall time, hardware, sha256 of the
weights file, and the report's Table 1 average and quality figures). Command line:

    python examples/dfcvae/pretrained.py export --checkpoint runs/vae123/checkpoint.pt --name vae123 --folder my-models
    python examples/dfcvae/pretrained.py verify            # re-check every shipped file's sha256
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from perceptloss.weights import sha256_file

from .checkpointing import CheckpointError, read_checkpoint, vae_from_checkpoint, weights_mismatch
from .files import atomic_write, write_text_atomic
from .vae import VAE

#: examples/dfcvae/pretrained: the shipped models and their cards.
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
NAMES = ("pvae", "vae123", "vae345")


class PretrainedError(RuntimeError):
    """A shipped model is missing, damaged or unknown (the message says what to do)."""


def paths(name: str, folder: str | Path | None = None) -> tuple[Path, Path]:
    """The weights file and the model card of ``name`` in ``folder`` (default: the shipped models)."""
    if name not in NAMES:
        raise PretrainedError(f"unknown pretrained model {name!r}; choose from {', '.join(NAMES)}")
    folder = Path(folder) if folder is not None else PRETRAINED_DIR
    return folder / f"{name}.safetensors", folder / f"{name}.json"


def read_card(name: str, folder: Path | None = None) -> dict[str, Any]:
    """The model card of ``name`` (a dict; see the module docstring)."""
    _, card = paths(name, folder)
    if not card.is_file():
        raise PretrainedError(f"no model card {card}; export the model with "
                              f"`python examples/dfcvae/pretrained.py export --name {name} --checkpoint ...`")
    try:
        content = json.loads(card.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PretrainedError(f"model card {card} is not valid JSON ({e}); restore it from git") from None
    if not isinstance(content, dict):
        raise PretrainedError(f"model card {card} holds a JSON {type(content).__name__}, not an object of fields "
                              "(preset, sha256, ...); restore it from git or re-export the model")
    return content


def describe(name: str, folder: str | Path | None = None) -> str:
    """One line naming the weights file ``load_pretrained(name, folder)`` reads and what its card says."""
    weights, _ = paths(name, folder)
    card = read_card(name, folder)
    shipped = weights.resolve().parent == PRETRAINED_DIR.resolve()
    what = "the shipped model" if shipped else "an exported model"
    return (f"{name}: {weights} ({what}; sha256 {str(card.get('sha256'))[:12]}…, {card.get('steps')} steps, "
            f"exported {card.get('exported')})")


def load_pretrained(name: str, folder: str | Path | None = None, device: str | torch.device = "cpu") -> VAE:
    """The shipped model ``name`` ('pvae', 'vae123' or 'vae345') as a float32 :class:`VAE` in eval mode.

    The weights file's sha256 is checked against its model card first; a mismatch raises
    :class:`PretrainedError` naming the file. ``model.encoder(x)`` takes (N, 3, 64, 64) RGB in [0, 1] and returns
    (mean, logvar), each (N, latent); ``model.decoder(z)`` maps (N, latent) codes to (N, 3, 64, 64) images in
    the same space (unbounded: clamp to [0, 1] for display).
    """
    from safetensors.torch import load_file

    weights, _ = paths(name, folder)
    card = read_card(name, folder)
    if not weights.is_file():
        raise PretrainedError(f"no weights file {weights}; restore it from git (git checkout -- {weights})")
    digest = sha256_file(weights)
    if digest != card.get("sha256"):
        raise PretrainedError(f"{weights} does not match its model card (sha256 {digest[:12]}… vs "
                              f"{str(card.get('sha256'))[:12]}…): the file is damaged or was replaced; "
                              f"restore it from git or re-export it")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(weights)).items()}
    model = VAE(int(card.get("latent", 100)))
    if reason := weights_mismatch(model, state):
        raise PretrainedError(f"{weights} does not fit the VAE its card describes (latent {card.get('latent', 100)}): "
                              f"{reason}; re-export it: python examples/dfcvae/pretrained.py export --name {name} "
                              f"--checkpoint <its run's checkpoint.pt> --folder {weights.parent} --overwrite")
    model.load_state_dict(state)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------- export
def _hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def training_time(log_csv: Path) -> dict[str, float]:
    """Wall time (s, summed over resumed segments), average images/s and the last logged KL and reconstruction
    terms (means over the last 10 logged rows) from a run's ``log.csv``."""
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise PretrainedError(f"{log_csv} holds no logged steps")
    wall, last = 0.0, 0.0
    for r in rows:
        t = float(r["elapsed_s"])
        if t < last:  # a resumed segment starts again from 0
            wall += last
        last = t
    wall += last
    tail = rows[-10:]
    mean = lambda k: sum(float(r[k]) for r in tail) / len(tail)  # noqa: E731
    return {"wall_time_s": round(wall, 1), "final_kl": round(mean("kl"), 3), "final_rec": round(mean("rec"), 3)}


class ExistingModel(PretrainedError):
    """An export would replace a model (and its card) that is already there."""


def export(checkpoint: str | Path, name: str, folder: str | Path | None = None,
           data_name: str = "CelebA subset (../shared/data/celeba)", overwrite: bool = False) -> Path:
    """Write ``<name>.safetensors`` (fp16) and ``<name>.json`` from a training checkpoint (and its log.csv).

    An existing model in ``folder`` (by default the shipped one, whose card holds the report's Table 1 and
    quality figures) is replaced only with ``overwrite=True``; otherwise :class:`ExistingModel` is raised and
    nothing is written."""
    from safetensors.torch import save_file

    checkpoint = Path(checkpoint)
    weights, card_path = paths(name, folder)
    existing = [p for p in (weights, card_path) if p.exists()]
    if existing and not overwrite:
        shipped = weights.resolve().parent == PRETRAINED_DIR.resolve()
        raise ExistingModel(
            f"{' and '.join(map(str, existing))} already exist{'s' if len(existing) == 1 else ''}"
            f"{' (the shipped model: its card holds the report figures)' if shipped else ''}; export to another "
            f"--folder (then load_pretrained({name!r}, folder), gallery.py --pretrained FOLDER or report.py "
            "--pretrained FOLDER use it), or add --overwrite to replace it")
    try:  # a file the user passes is data: read without unpickling, then checked against the model it must be
        state = read_checkpoint(checkpoint)
        vae_from_checkpoint(state, checkpoint)
    except CheckpointError as e:
        raise PretrainedError(str(e)) from None
    config = state["config"]
    if config.get("preset") != name:
        raise PretrainedError(f"{checkpoint} was trained with preset {config.get('preset')!r}, not {name!r}")
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sorted(state["model"].items())}
    if overflow := [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]:
        raise PretrainedError(f"{checkpoint} holds weights beyond float16's range (±65504) in {', '.join(overflow[:2])}"
                              f"{f' and {len(overflow) - 2} more' if len(overflow) > 2 else ''}: the exported fp16 "
                              "model would hold infinities; export an earlier checkpoint of the run")
    # no metadata: safetensors orders it through a hash map, so the bytes would vary
    atomic_write(weights, lambda tmp: save_file(tensors, str(tmp)))
    steps = int(state["step"])
    card = {
        "name": name, "preset": name, "latent": config.get("latent", 100), "dtype": "float16",
        "data": data_name, "images": config.get("images"), "crop": config.get("crop"),
        "steps": steps, "batch_size": config.get("batch_size"), "world_size": config.get("world_size", 1),
        "epochs": round(steps / max(1, config.get("steps_per_epoch", 1)), 3),
        "balance": config.get("balance"), "alpha": config.get("alpha"), "beta": config.get("beta"),
        "lr": config.get("lr"), "halve_lr_every": config.get("halve_lr_every") or "epoch", "amp": config.get("amp"),
        "channels_last": config.get("channels_last"),
        "hardware": _hardware(), "device": config.get("device"), "torch": torch.__version__,
        "exported": datetime.date.today().isoformat(), "sha256": sha256_file(weights),
    }
    if config.get("recentred"):  # a post-training step (dfcvae.recentre), not in the paper: labelled on the card
        card["recentred"] = {k: v for k, v in config["recentred"].items() if k != "source"}
    log = checkpoint.parent / "log.csv"
    if log.is_file():
        card.update(training_time(log))
        card["images_per_s"] = round(steps * card["batch_size"] * card["world_size"] / card["wall_time_s"], 1)
    try:
        old = read_card(name, folder) if card_path.is_file() else {}
    except PretrainedError:  # a damaged card is replaced
        old = {}
    for key in ("table1_average", "table1_delta_majority", "quality"):  # report figures survive only if unchanged
        if key in old and old.get("sha256") == card["sha256"]:
            card[key] = old[key]
    write_text_atomic(card_path, json.dumps(card, indent=2) + "\n")
    return weights


def update_card(name: str, folder: str | Path | None = None, **fields: Any) -> None:
    """Add or replace fields of a model card (used by report.py for the Table 1 and quality figures)."""
    _, card_path = paths(name, folder)
    card = read_card(name, folder)
    card.update(fields)
    write_text_atomic(card_path, json.dumps(card, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write <name>.safetensors + <name>.json from a training checkpoint")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--name", required=True, choices=NAMES)
    e.add_argument("--folder", default=str(PRETRAINED_DIR),
                   help="where to write (default: the shipped models' folder, %(default)s)")
    e.add_argument("--overwrite", action="store_true", help="replace a model (and its card) already in --folder")
    v = sub.add_parser("verify", help="check every shipped model against its card")
    v.add_argument("--folder", default=str(PRETRAINED_DIR))
    args = p.parse_args(argv)
    try:
        if args.command == "export":
            if not Path(args.checkpoint).is_file():
                p.error(f"no checkpoint at {args.checkpoint}")
            path = export(args.checkpoint, args.name, args.folder, overwrite=args.overwrite)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.with_suffix('.json')}")
        else:
            bad = 0
            for name in NAMES:
                try:
                    load_pretrained(name, args.folder)
                    print(f"{name}: ok ({paths(name, args.folder)[0]})")
                except PretrainedError as err:
                    bad += 1
                    print(f"{name}: {err}")
            return 1 if bad else 0
    except PretrainedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
