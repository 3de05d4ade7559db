"""``perceptloss score --report DIR``: one static HTML page to look at the scores (no network, no script).

Per metric: the paste-ready line ``0.213 ± 0.004 (95% CI, n=500)`` with its signature, a histogram of the
per-image values (inline SVG), and the pairs with the largest and the smallest values side by side (thumbnails
written beside the page in ``thumbs/``) with their per-layer terms and, where the metric's criterion gives
spatial maps (LPIPS, the feature distances), the map of where the two images differ as a heat map. A larger value
means more different for every built-in metric (DISTS is reported as a distance); the page says "largest" and
"smallest" rather than guess the direction of a metric of your own.

``DIR`` must not exist, be empty, or hold an earlier report (it then holds the marker file ``.perceptloss-report``):
anything else is refused before scoring, so a report never overwrites other files. Every file is written
atomically (a temporary file renamed into place).
"""
from __future__ import annotations

import html
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .errors import ScoreError
from .output import printable, write_atomic
from .statistics import paste_ready

MARKER = ".perceptloss-report"
THUMB_SIDE = 192

#: Stops of the heat-map colour scale (0 -> dark blue, 1 -> yellow-white), linearly interpolated.
HEAT_STOPS = ((0.0, (13, 8, 135)), (0.25, (126, 3, 168)), (0.5, (204, 71, 120)), (0.75, (248, 149, 64)),
              (1.0, (240, 249, 33)))


def _text(value: str) -> str:
    """``value`` escaped for HTML, undecodable bytes of a file name as ``\\xNN`` (as in the CSV and JSON)."""
    return html.escape(printable(value))


def check_report_dir(folder: Path) -> None:
    """ScoreError (saying what to do) unless ``folder`` can take the report: absent with a writable parent, an
    empty folder, or the folder of an earlier report (its marker file present)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ScoreError(f"--report {folder} is a file; give a folder (it is created), e.g. --report {folder}-report")
    if folder.is_dir():
        if any(folder.iterdir()) and not (folder / MARKER).is_file():
            raise ScoreError(f"--report {folder} holds other files; give a new or empty folder (a report only "
                             f"replaces an earlier report, which holds {MARKER})")
        parent = folder
    else:
        parent = folder.parent
        if not parent.is_dir():
            raise ScoreError(f"--report {folder}: {parent} does not exist; create it (mkdir -p {parent}) or choose "
                             "another folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ScoreError(f"--report {folder}: cannot write in {parent}; choose a writable folder")


def histogram_svg(values: list[float], bins: int = 30, width: int = 480, height: int = 140) -> str:
    """An inline SVG bar histogram of ``values`` with the range and the largest count labelled."""
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / span * bins))] += 1
    top, bar = max(counts), width / bins
    rects = "".join(f'<rect x="{i * bar:.1f}" y="{height - 20 - c / top * (height - 30):.1f}" width="{bar - 1:.1f}" '
                    f'height="{c / top * (height - 30):.1f}" fill="#4c72b0"><title>{c}</title></rect>'
                    for i, c in enumerate(counts))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="histogram">{rects}<text x="0" y="{height - 4}" font-size="11">{lo:.4g}</text>'
            f'<text x="{width}" y="{height - 4}" font-size="11" text-anchor="end">{hi:.4g}</text>'
            f'<text x="0" y="10" font-size="11">max count {top}</text></svg>')


def heat_rgb(values: torch.Tensor) -> torch.Tensor:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours of :data:`HEAT_STOPS`."""
    v = values.clamp(0, 1).float()
    out = torch.zeros(*v.shape, 3)
    for (x0, c0), (x1, c1) in zip(HEAT_STOPS, HEAT_STOPS[1:]):
        t = ((v - x0) / (x1 - x0)).clamp(0, 1).unsqueeze(-1)
        inside = ((v >= x0) & (v <= x1)).unsqueeze(-1)
        colour = torch.tensor(c0) + t * (torch.tensor(c1) - torch.tensor(c0))
        out = torch.where(inside, colour, out)
    return out.round().to(torch.uint8)


def _save_png(array: torch.Tensor, path: Path) -> str:
    """Write (H, W, 3) uint8 as a PNG thumbnail (longest side at most :data:`THUMB_SIDE`), atomically; returns
    the path relative to the report folder."""
    from PIL import Image

    image = Image.fromarray(array.cpu().numpy())
    image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    return f"{path.parent.name}/{path.name}"


def _image_uint8(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)


@dataclass
class Explained:
    """One pair's details: per-layer terms ({layer: value}, None when the metric has none) and its spatial map
    ((H, W) float, None when the criterion gives no maps)."""

    terms: dict[str, float] | None
    heat: torch.Tensor | None


def explain(metric: torch.nn.Module, ref: torch.Tensor, dist: torch.Tensor) -> Explained:
    """Per-layer terms and the spatial map of one pair ((3, H, W) each, on the metric's device), through the
    loss's public ``per_layer_dict`` and ``spatial_map`` where it has them."""
    x, y = dist.unsqueeze(0), ref.unsqueeze(0)
    terms = heat = None
    with torch.inference_mode():
        if callable(getattr(metric, "per_layer_dict", None)):
            terms = {k: float(v.float().sum()) for k, v in metric.per_layer_dict(x, y).items()}
        if callable(getattr(metric, "spatial_map", None)):
            try:
                heat = metric.spatial_map(x, y).float().reshape(-1, *x.shape[-2:])[0].cpu()
            except NotImplementedError:  # a criterion without maps (Gram, DISTS)
                heat = None
    return Explained(terms, heat)


def extremes(values: list[float], k: int) -> tuple[list[int], list[int]]:
    """Indices of the ``k`` largest values (largest first) and the ``k`` smallest (smallest first)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[::-1][:k], order[:k]


def _pair_row(folder: Path, tag: str, key: str, value: float, ref: torch.Tensor, dist: torch.Tensor,
              details: Explained, heat_max: float) -> str:
    thumbs = folder / "thumbs"
    cells = [f'<img src="{_save_png(_image_uint8(ref), thumbs / f"{tag}-ref.png")}" alt="reference">',
             f'<img src="{_save_png(_image_uint8(dist), thumbs / f"{tag}-dist.png")}" alt="distorted">']
    if details.heat is not None:
        path = _save_png(heat_rgb(details.heat / heat_max), thumbs / f"{tag}-map.png")
        cells.append(f'<img src="{path}" alt="difference map">')
    terms = "" if details.terms is None else "<br>".join(
        f"{_text(name)}: {v:.4g}" for name, v in details.terms.items())
    return (f"<tr><td><code>{_text(key)}</code><br><b>{value:.6g}</b></td>"
            + "".join(f"<td>{c}</td>" for c in cells) + f'<td class="terms">{terms}</td></tr>')


def _pair_table(folder: Path, name: str, side: str, indices: list[int], keys: list[str], values: list[float],
                metric: torch.nn.Module, load_pair: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                device: torch.device, number: int) -> str:
    loaded = [tuple(t.to(device) for t in load_pair(i)) for i in indices]
    details = [explain(metric, ref, dist) for ref, dist in loaded]
    maps = [d.heat for d in details if d.heat is not None]
    heat_max = max((float(m.max()) for m in maps), default=1.0) or 1.0
    rows = [_pair_row(folder, f"m{number}-{side}-{k}", keys[i], values[i], ref.cpu(), dist.cpu(), d, heat_max)
            for k, (i, (ref, dist), d) in enumerate(zip(indices, loaded, details))]
    header = "<th>pair, value</th><th>reference</th><th>distorted</th>" + (
        "<th>difference map</th>" if maps else "") + "<th>per-layer terms</th>"
    scale = f" Heat maps share one scale, 0 to {heat_max:.4g}." if maps else ""
    title = "largest values (most different)" if side == "largest" else "smallest values (most alike)"
    return (f"<h3>{len(indices)} pairs with the {title}</h3><p>{scale}</p>"
            f"<table><tr>{header}</tr>{''.join(rows)}</table>")


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:4px;vertical-align:top}code{word-break:break-all}"
         ".terms{font-size:12px}.paste{font-size:1.2em;background:#f4f4f4;padding:6px}"
         "img{width:192px;height:auto;image-rendering:pixelated}")


def write_report(folder: Path, document: dict, metrics: dict[str, torch.nn.Module], values: dict[str, list[float]],
                 keys: list[str], load_pair: Callable[[int], tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                 pairs: int = 6) -> Path:
    """Write ``folder/index.html`` and its thumbnails: the summary ``document`` (score's JSON summary), and per
    metric the histogram of ``values[metric]`` (one value per scored pair, in the order of ``keys``) and the
    ``pairs`` pairs with the largest and smallest values, decoded again by ``load_pair(j)`` -> (ref, dist), each
    (3, H, W) in [0, 1]. Returns the page's path."""
    folder = Path(folder)
    (folder / "thumbs").mkdir(parents=True, exist_ok=True)
    write_atomic(folder / MARKER, "written by perceptloss score --report\n")
    parts = [f"<h1>perceptloss score</h1><p>reference <code>{_text(document['ref'])}</code>, distorted "
             f"<code>{_text(document['dist'])}</code>: {document['pairs_scored']} pairs scored.</p>"]
    skipped = document["skipped"]
    count = len(skipped["ref_only"]) + len(skipped["dist_only"]) + len(skipped["unreadable"])
    if count:
        parts.append(f"<p>{count} file(s) skipped (without a partner or unreadable): see the JSON summary.</p>")
    for number, (name, summary) in enumerate(document["metrics"].items()):
        parts.append(f"<h2>{_text(name)}</h2>")
        parts.append(f'<p class="paste">{html.escape(paste_ready(summary))}</p>'
                     f"<p>signature: <code>{_text(summary['signature'])}</code>; weights from "
                     f"<code>{_text(summary.get('weights', 'unknown'))}</code></p>")
        if values[name]:
            parts.append(histogram_svg(values[name]))
            largest, smallest = extremes(values[name], pairs)
            for side, idx in (("largest", largest), ("smallest", smallest)):
                parts.append(_pair_table(folder, name, side, idx, keys, values[name], metrics[name], load_pair,
                                         device, number))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>perceptloss score</title>'
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    write_atomic(folder / "index.html", page)
    return folder / "index.html"
