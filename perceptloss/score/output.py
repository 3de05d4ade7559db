"""The results of ``perceptloss score``: a CSV per image, a JSON summary per metric, and the summary on screen."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import TextIO

from .statistics import CI_METHOD


def write_csv(path: Path, rows: list[tuple[str, str, str]], metrics: list[str], values: dict[str, list[float]]) -> None:
    """One row per scored pair: key, ref file, dist file, then one column per metric (``repr`` of the float:
    it reads back exactly)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["pair", "ref", "dist", *metrics])
        for i, (key, ref, dist) in enumerate(rows):
            writer.writerow([key, ref, dist, *(repr(values[m][i]) for m in metrics)])


def summary_document(summaries: dict[str, dict], signatures: dict[str, str], *, ref: str, dist: str, pairs: int,
                     ref_only: list[str], dist_only: list[str], failed: dict[str, str]) -> dict:
    """The JSON summary: the folders, how many pairs were scored and skipped (and why), and per metric
    n, mean, std, ci95 and the signature."""
    return {
        "ref": ref,
        "dist": dist,
        "pairs_scored": pairs,
        "skipped": {"ref_only": ref_only, "dist_only": dist_only, "unreadable": failed},
        "ci95_method": CI_METHOD,
        "metrics": {name: {**summaries[name], "signature": signatures[name]} for name in summaries},
    }


def write_json(path: Path, document: dict) -> None:
    with open(path, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.6g}"


def print_summary(document: dict, out: TextIO) -> None:
    """A table (metric, n, mean, std, 95% CI) and one signature line per metric."""
    rows = [("metric", "n", "mean", "std", "95% CI (t)")]
    for name, s in document["metrics"].items():
        ci = s["ci95"]
        rows.append((name, str(s["n"]), _fmt(s["mean"]), _fmt(s["std"]), "-" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"))
    widths = [max(len(r[k]) for r in rows) for k in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
    for name, s in document["metrics"].items():
        print(f"{name}: {s['signature']}", file=out)
