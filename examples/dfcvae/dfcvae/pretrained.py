"""The trained DFC-VAE models shipped with the example, and the tool that exports them from a training run.

    from dfcvae.pretrained import load_pretrained   # from examples/dfcvae (or with it on PYTHONPATH)
    model = load_pretrained("vae123")               # VAE on the CPU, eval mode, checksum verified
    mean, logvar = model.encoder(x)                 # x: (N, 3, 64, 64) RGB in [0, 1] -> two (N, 100)
    images = model.decoder(mean).clamp(0, 1)        # (N, 100) codes -> (N, 3, 64, 64) RGB, [0, 1] after clamping

Each model is ``pretrained/<name>.safetensors`` (fp16 weights, BatchNorm running statistics included) beside a
model card ``pretrained/<name>.json`` (preset, data, images, steps, epochs, wall time, hardware, sha256 of the
weights file, and the report's Table 1 average and quality figures).

An export never loses the previous model: the whole card is computed first, then weights and card are written
to ``.<name>.safetensors.pending`` and ``.<name>.json.pending`` beside them and renamed into place, weights
first. A failure before the renames leaves the previous pair untouched; a kill between the two renames leaves the
new weights beside the old card, and :func:`read_card` then takes the pending card, whose sha256 is the new
weights' (the next export or :func:`update_card` puts it in place). Command line:

    python examples/dfcvae/pretrained.py export --checkpoint runs/vae123/checkpoint.pt --name vae123 --folder my-models
    python examples/dfcvae/pretrained.py verify            # re-check every shipped file's sha256
"""
from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import math
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


def pending(path: Path) -> Path:
    """Where an export writes ``path``'s new content before renaming it into place (``.<file>.pending``)."""
    return path.with_name(f".{path.name}.pending")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: The card fields the loaders and the report read, and what each must be (checked by :func:`_parse_card`).
CARD_FIELDS: dict[str, tuple[str, Any]] = {
    "sha256": ("a sha256 (64 hex digits)",
               lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)),
    "latent": ("a positive whole number (the VAE's latent size)", lambda v: _is_int(v) and v > 0),
    "steps": ("a whole number of steps, 0 or more", lambda v: _is_int(v) and v >= 0),
    "epochs": ("a number of epochs, 0 or more",
               lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v) and v >= 0),
}


def _parse_card(card: Path) -> dict[str, Any]:
    """The JSON object in ``card``, its :data:`CARD_FIELDS` present and valid (PretrainedError saying what to
    do otherwise)."""
    try:
        content = json.loads(card.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PretrainedError(f"model card {card} is not valid JSON ({e}); restore it from git") from None
    if not isinstance(content, dict):
        raise PretrainedError(f"model card {card} holds a JSON {type(content).__name__}, not an object of fields "
                              "(preset, sha256, ...); restore it from git or re-export the model")
    for key, (what, valid) in CARD_FIELDS.items():
        if key not in content:
            raise PretrainedError(f"model card {card} has no field {key!r} ({what}); restore it from git or "
                                  "re-export the model")
        if not valid(content[key]):
            raise PretrainedError(f"model card {card} has {key!r}: {json.dumps(content[key])}, where it must be "
                                  f"{what}; restore it from git or re-export the model")
    return content


def _pending_card(weights: Path, card: dict[str, Any] | None, card_path: Path) -> dict[str, Any] | None:
    """The card an interrupted export left pending, when it (and not ``card``) describes ``weights``; else None."""
    new = pending(card_path)
    if not new.is_file() or not weights.is_file():
        return None
    digest = sha256_file(weights)
    if card is not None and card.get("sha256") == digest:
        return None
    try:
        content = _parse_card(new)
    except (PretrainedError, OSError):
        return None
    return content if content.get("sha256") == digest else None


def read_card(name: str, folder: Path | None = None) -> dict[str, Any]:
    """The model card of ``name`` (a dict; see the module docstring): ``<name>.json``, or the pending card of an
    export interrupted between its two renames when that one describes the weights file on disk."""
    weights, card = paths(name, folder)
    content, problem = None, None
    if card.is_file():
        try:
            content = _parse_card(card)
        except PretrainedError as e:
            problem = e
    if (interrupted := _pending_card(weights, content, card)) is not None:
        return interrupted
    if problem is not None:
        raise problem
    if content is None:
        raise PretrainedError(f"no model card {card}; export the model with "
                              f"`python examples/dfcvae/pretrained.py export --name {name} --checkpoint ...`")
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
    model = VAE(card["latent"])
    if reason := weights_mismatch(model, state):
        raise PretrainedError(f"{weights} does not fit the VAE its card describes (latent {card['latent']}): "
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
    terms (means over the last 10 logged rows) from a run's ``log.csv``.

    PretrainedError (saying what to do) for a log without rows or with a row that is not numbers."""
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise PretrainedError(f"{log_csv} holds no logged steps (only its header): export a checkpoint of a run that "
                              f"logged at least one step, or move {log_csv} aside to export without training times")
    try:
        elapsed = [float(r["elapsed_s"]) for r in rows]
        tail = [(float(r["kl"]), float(r["rec"])) for r in rows[-10:]]
    except (KeyError, TypeError, ValueError) as e:
        raise PretrainedError(f"{log_csv} is not a train.py log (a row lacks a number for "
                              f"{e.args[0] if isinstance(e, KeyError) else 'elapsed_s, kl or rec'}); move it aside "
                              "to export without training times") from None
    wall, last = 0.0, 0.0
    for t in elapsed:
        if t < last:  # a resumed segment starts again from 0
            wall += last
        last = t
    wall += last
    return {"wall_time_s": round(wall, 1), "final_kl": round(sum(kl for kl, _ in tail) / len(tail), 3),
            "final_rec": round(sum(rec for _, rec in tail) / len(tail), 3)}


def images_per_s(steps: int, batch_size: Any, world_size: Any, wall_time_s: float) -> float | None:
    """The average training rate, or None when it is undefined (no wall time logged, e.g. a run whose log says
    0 s, or no batch size recorded)."""
    if not isinstance(batch_size, int) or not isinstance(world_size, int):
        return None
    if not (math.isfinite(wall_time_s) and wall_time_s > 0):
        return None
    return round(steps * batch_size * world_size / wall_time_s, 1)


class ExistingModel(PretrainedError):
    """An export would replace a model (and its card) that is already there."""


def export(checkpoint: str | Path, name: str, folder: str | Path | None = None,
           data_name: str = "CelebA subset (../shared/data/celeba)", overwrite: bool = False) -> Path:
    """Write ``<name>.safetensors`` (fp16) and ``<name>.json`` from a training checkpoint (and its log.csv).

    An existing model in ``folder`` (by default the shipped one, whose card holds the report's Table 1 and
    quality figures) is replaced only with ``overwrite=True``; otherwise :class:`ExistingModel` is raised and
    nothing is written. Everything is checked and the whole card computed before anything is written, and the
    pair is replaced through pending files and two renames (see the module docstring): an error at any point
    leaves the previous model and its card usable."""
    checkpoint = Path(checkpoint)
    weights, card_path = paths(name, folder)
    refuse_existing(name, folder, overwrite)
    state = _checked_state(checkpoint, name)
    blob = _weights_bytes(state["model"], checkpoint)
    card = _card(name, folder, state, hashlib.sha256(blob).hexdigest(), checkpoint.parent / "log.csv", data_name)
    _replace_pair(weights, card_path, blob, json.dumps(card, indent=2) + "\n")
    return weights


def refuse_existing(name: str, folder: str | Path | None, overwrite: bool) -> None:
    """:class:`ExistingModel` when ``name`` is already in ``folder`` and ``overwrite`` is not set."""
    weights, card_path = paths(name, folder)
    existing = [p for p in (weights, card_path) if p.exists()]
    if existing and not overwrite:
        shipped = weights.resolve().parent == PRETRAINED_DIR.resolve()
        raise ExistingModel(
            f"{' and '.join(map(str, existing))} already exist{'s' if len(existing) == 1 else ''}"
            f"{' (the shipped model: its card holds the report figures)' if shipped else ''}; export to another "
            f"--folder (then load_pretrained({name!r}, folder), gallery.py --pretrained FOLDER or report.py "
            "--pretrained FOLDER use it), or add --overwrite to replace it")


def _checked_state(checkpoint: Path, name: str) -> dict[str, Any]:
    """The checkpoint's contents, checked to be a VAE trained with preset ``name`` (PretrainedError otherwise)."""
    try:  # a file the user passes is data: read without unpickling, then checked against the model it must be
        state = read_checkpoint(checkpoint)
        vae_from_checkpoint(state, checkpoint)
    except CheckpointError as e:
        raise PretrainedError(str(e)) from None
    if state["config"].get("preset") != name:
        raise PretrainedError(f"{checkpoint} was trained with preset {state['config'].get('preset')!r}, not {name!r}")
    return state


def _weights_bytes(model: dict[str, torch.Tensor], checkpoint: Path) -> bytes:
    """The fp16 safetensors file of the model's state dict, in memory (PretrainedError if fp16 overflows)."""
    from safetensors.torch import save

    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sorted(model.items())}
    if overflow := [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]:
        raise PretrainedError(f"{checkpoint} holds weights beyond float16's range (±65504) in {', '.join(overflow[:2])}"
                              f"{f' and {len(overflow) - 2} more' if len(overflow) > 2 else ''}: the exported fp16 "
                              "model would hold infinities; export an earlier checkpoint of the run")
    return save(tensors)  # no metadata: safetensors orders it through a hash map, so the bytes would vary


def _card(name: str, folder: str | Path | None, state: dict[str, Any], digest: str, log: Path,
          data_name: str) -> dict[str, Any]:
    """The model card of weights with sha256 ``digest`` exported from ``state`` (its run's ``log`` when there is
    one); the report figures of the card in ``folder`` are kept when it describes the same weights."""
    config, steps = state["config"], int(state["step"])
    card = {
        "name": name, "preset": name, "latent": config.get("latent", 100), "dtype": "float16",
        "data": data_name, "images": config.get("images"), "crop": config.get("crop"),
        "steps": steps, "batch_size": config.get("batch_size"), "world_size": config.get("world_size", 1),
        "epochs": round(steps / max(1, config.get("steps_per_epoch", 1)), 3),
        "balance": config.get("balance"), "alpha": config.get("alpha"), "beta": config.get("beta"),
        "lr": config.get("lr"), "halve_lr_every": config.get("halve_lr_every") or "epoch", "amp": config.get("amp"),
        "channels_last": config.get("channels_last"),
        "hardware": _hardware(), "device": config.get("device"), "torch": torch.__version__,
        "exported": datetime.date.today().isoformat(), "sha256": digest,
    }
    if config.get("recentred"):  # a post-training step (dfcvae.recentre), not in the paper: labelled on the card
        card["recentred"] = {k: v for k, v in config["recentred"].items() if k != "source"}
    if log.is_file():
        card.update(training_time(log))
        rate = images_per_s(steps, card["batch_size"], card["world_size"], card["wall_time_s"])
        if rate is not None:  # a log whose elapsed time rounds to 0 s has no rate
            card["images_per_s"] = rate
    try:
        old = read_card(name, folder)
    except PretrainedError:  # none yet, or a damaged one: replaced
        old = {}
    for key in ("table1_average", "table1_delta_majority", "quality"):  # report figures survive only if unchanged
        if key in old and old.get("sha256") == card["sha256"]:
            card[key] = old[key]
    return card


def _replace_pair(weights: Path, card_path: Path, blob: bytes, card_text: str) -> None:
    """Put ``blob`` at ``weights`` and ``card_text`` at ``card_path`` so that no failure loses a usable pair: both
    are written to their pending files first (a failure there removes them and leaves the old pair), then renamed,
    weights first (a kill between the renames leaves the pending card, which :func:`read_card` takes)."""
    new_weights, new_card = pending(weights), pending(card_path)
    try:
        _finish_interrupted(weights, card_path)
    except OSError as e:
        raise PretrainedError(f"could not tidy up after an earlier interrupted export in {weights.parent} "
                              f"({e.strerror or e}); nothing was written: make the folder writable and export "
                              "again") from None
    try:
        atomic_write(new_weights, lambda tmp: tmp.write_bytes(blob))
        write_text_atomic(new_card, card_text)
    except OSError as e:
        for leftover in (new_weights, new_card):
            leftover.unlink(missing_ok=True)
        raise PretrainedError(f"could not write {weights.parent} ({e.strerror or e}); the previous model and card "
                              "are untouched: free space (or choose another --folder) and export again") from None
    try:
        os.replace(new_weights, weights)
        os.replace(new_card, card_path)
    except OSError as e:
        raise PretrainedError(f"could not rename the exported files into {weights.parent} ({e.strerror or e}); "
                              "the model still loads (with the card left pending beside it, if the weights were "
                              "renamed): export again with --overwrite") from None


def _finish_interrupted(weights: Path, card_path: Path) -> None:
    """Before an export writes its pending files: put in place the pending card of an export killed between its
    renames (it describes the weights on disk), and remove what a killed export left otherwise (its pending
    files and their temporary files)."""
    card = None
    if card_path.is_file():
        try:
            card = _parse_card(card_path)
        except PretrainedError:
            card = None
    if _pending_card(weights, card, card_path) is not None:
        os.replace(pending(card_path), card_path)
    for path in (weights, card_path):
        pending(path).unlink(missing_ok=True)
        for leftover in path.parent.glob(f"{pending(path).name}.*.tmp"):
            leftover.unlink(missing_ok=True)


def update_card(name: str, folder: str | Path | None = None, **fields: Any) -> None:
    """Add or replace fields of a model card (used by report.py for the Table 1 and quality figures); a card
    left pending by an interrupted export is the one updated, and put in place."""
    _, card_path = paths(name, folder)
    card = read_card(name, folder)
    card.update(fields)
    write_text_atomic(card_path, json.dumps(card, indent=2) + "\n")
    pending(card_path).unlink(missing_ok=True)


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
