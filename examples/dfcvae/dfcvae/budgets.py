"""The report's comparison of training budgets and of the raw and re-centred forms of each model (issue 38).

A *row key* names one evaluated model: the preset (``"vae123"``) for the models of the report, and
``"<preset>@<steps>"`` (``"vae123@2340"``) for a baseline model of the same preset at another budget (report.py
``--baseline FOLDER``). Re-centring (dfcvae.recentre) is an exact reparameterisation z' = z − m, so both forms of
a model's prior samples can be decoded from either form when m is known: a raw model's re-centred samples decode
``z + m`` (m: the mean posterior mean over the training split, measured here), a re-centred model's raw samples
decode ``z − m`` (m: the offset its checkpoint or card recorded).
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

FORMS = ("raw", "recentred")


def row_key(preset: str, steps: int | None = None) -> str:
    """``preset`` for a model of the report, ``preset@steps`` for a baseline model."""
    return preset if steps is None else f"{preset}@{steps}"


def preset_of(key: str) -> str:
    """The preset of a row key (``"vae123@2340"`` -> ``"vae123"``)."""
    return key.split("@")[0]


def form(info: dict) -> str:
    """``"recentred"`` for a model whose checkpoint or card records a re-centring, else ``"raw"``."""
    return "recentred" if info.get("recentred") else "raw"


def other_form_shift(info: dict, train_codes: torch.Tensor) -> tuple[str, torch.Tensor | None]:
    """The form a model is not in and the latent shift that decodes its prior samples in that form: (``"recentred"``,
    +m measured on ``train_codes`` (N, latent)) for a raw model; (``"raw"``, −m recorded) for a re-centred one, or
    (``"raw"``, None) when its re-centring did not record m (exported before the offset was kept)."""
    if form(info) == "raw":
        return "recentred", train_codes.double().mean(0).float()
    offset = info["recentred"].get("offset")
    return "raw", None if offset is None else -torch.tensor(offset, dtype=torch.float32)


def trajectory_face_rates(results_dir: Path, preset: str, step: int) -> dict[str, float] | None:
    """The raw prior face rates {sampling name: fraction} that ``results_dir/trajectory_<preset>.csv`` (written by
    dfcvae.trajectory) holds for ``step``, or None when it has no such row."""
    path = results_dir / f"trajectory_{preset}.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if int(row["step"]) == step:
                return {"paper": float(row["face_paper"]), "released": float(row["face_released"])}
    return None


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def change_lines(labels: dict[str, str], averages: dict[str, float], quality: dict, faces: dict,
                 info: dict[str, dict]) -> list[str]:
    """One Markdown bullet per preset evaluated at two budgets: what changed from the baseline's steps to the
    report's (Table 1 average, prior face rates in both forms and conventions, sample sharpness, ONet Fréchet
    distance, final KL). ``averages``: {label: Table 1 average}; ``quality``: {row key: {kind: {metric: value}}};
    ``faces``: {row key: {sampling name: {form: rate or None}}}; ``info``: {row key: card or run info}."""
    lines = []
    for key in [k for k in labels if "@" not in k]:
        for base in [b for b in labels if "@" in b and preset_of(b) == key]:
            old, new = averages[labels[base]], averages[labels[key]]
            parts = [f"Table 1 average {old:.2f} → {new:.2f} ({new - old:+.2f})"]
            for s in faces.get(key, {}):
                for f in FORMS:
                    a, b = faces.get(base, {}).get(s, {}).get(f), faces[key][s].get(f)
                    if a is not None or b is not None:
                        parts.append(f"faces ({s}, {'re-centred' if f == 'recentred' else f}) {percent(a)} → "
                                     f"{percent(b)}")
            for metric, what, fmt in (("sharpness", "sample sharpness", ".2f"),
                                      ("fd_ONet", "ONet Fréchet distance of samples", ".1f")):
                pair = [quality.get(k, {}).get("samples (paper)", {}).get(metric) for k in (base, key)]
                if None not in pair:
                    parts.append(f"{what} (paper) {pair[0]:{fmt}} → {pair[1]:{fmt}}")
            kl = [info[k].get("final_kl") for k in (base, key)]
            if None not in kl:
                parts.append(f"final KL / sample {kl[0]:.1f} → {kl[1]:.1f}")
            lines.append(f"- {labels[key]}, {info[base]['step']:,} → {info[key]['step']:,} steps: "
                         + "; ".join(parts) + ".")
    return lines
