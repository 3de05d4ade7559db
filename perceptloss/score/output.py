"""The results of ``perceptloss score``: a CSV per image, a JSON summary per metric, and the summary on screen.

The output paths are checked before anything is scored (:func:`check_outputs`), and each file is written
atomically and on its own (:func:`write_outputs`): a full disk or another write error leaves the previous file
untouched, no temporary file behind, and the other output written.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TextIO

from .errors import ScoreError
from .statistics import CI_METHOD, paste_ready

#: Bytes handed to one ``os.write`` call when an output file is written.
CHUNK = 1 << 16


def check_outputs(outputs: dict[str, Path | None]) -> None:
    """ScoreError (one line, saying what to do) unless every output path (``{"--csv": path, ...}``, None for
    one not asked for) can be written: its folder exists and is writable, it is not a folder, and no two options
    name the same file."""
    given = {flag: Path(path) for flag, path in outputs.items() if path is not None}
    for flag, path in given.items():
        _check_output(flag, path)
    flags = list(given)
    for i, first in enumerate(flags):
        for second in flags[i + 1:]:
            if _same_file(given[first], given[second]):
                raise ScoreError(f"{first} and {second} both name {given[first]}; give each its own file, "
                                 f"e.g. {_other_name(given[first], (first, second))}")


def _check_output(flag: str, path: Path) -> None:
    """ScoreError unless ``path`` can be written as the output of ``flag``."""
    if path.is_dir():
        raise ScoreError(f"{flag} {path} is a folder; give a file path, e.g. {flag} {path / ('scores.' + flag.lstrip('-'))}")
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ScoreError(f"{flag} {path}: {folder} {what}; create the folder (mkdir -p {folder}) or choose "
                         f"another {flag} path")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise ScoreError(f"{flag} {path}: cannot write in {folder} ({e.strerror or e}); choose a writable folder "
                         f"for {flag}") from None


def _other_name(path: Path, flags: tuple[str, ...]) -> str:
    """An option of ``flags`` with a file name other than ``path`` (its suffix after the option: ``--csv X.csv``)."""
    for flag in flags:
        other = path.with_suffix("." + flag.lstrip("-"))
        if other != path:
            return f"{flag} {other}"
    return f"{flags[-1]} {path.with_name('other-' + path.name)}"


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (however spelled, through links too)."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary file beside ``path``, then rename it over ``path``: an error (OSError,
    e.g. ENOSPC) leaves ``path`` as it was and removes the temporary file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            _write_all(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` ``data`` to ``fd`` in chunks of :data:`CHUNK` until all of it is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:CHUNK]):]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def csv_text(rows: list[tuple[str, str, str]], metrics: list[str], values: dict[str, list[float]]) -> str:
    """One row per scored pair: key, ref file, dist file, then one column per metric (``repr`` of the float:
    it reads back exactly)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["pair", "ref", "dist", *metrics])
    for i, (key, ref, dist) in enumerate(rows):
        writer.writerow([key, ref, dist, *(repr(values[m][i]) for m in metrics)])
    return buf.getvalue()


def json_text(document: dict) -> str:
    """The JSON summary document as text (indented, a final newline)."""
    return json.dumps(document, indent=2) + "\n"


def write_outputs(outputs: dict[str, tuple[Path, str]]) -> list[str]:
    """Write each ``{flag: (path, text)}`` atomically and independently of the others; returns one line per
    output that could not be written (empty when all were)."""
    failures = []
    for flag, (path, text) in outputs.items():
        try:
            write_atomic(path, text)
        except OSError as e:
            previous = "is unchanged" if path.exists() else "was not written"
            failures.append(f"could not write {flag} {path} ({e.strerror or e}); {path} {previous}: free space "
                            f"(or choose another {flag} path) and score again")
    return failures


def summary_document(summaries: dict[str, dict], signatures: dict[str, str], *, ref: str, dist: str, pairs: int,
                     ref_only: list[str], dist_only: list[str], failed: dict[str, str]) -> dict:
    """The JSON summary: the folders, how many pairs were scored and skipped (and why), and per metric
    n, mean, std, ci95, the paste-ready line (``reported``: ``0.213 ± 0.004 (95% CI, n = 500)``) and the signature."""
    return {
        "ref": ref,
        "dist": dist,
        "pairs_scored": pairs,
        "skipped": {"ref_only": ref_only, "dist_only": dist_only, "unreadable": failed},
        "ci95_method": CI_METHOD,
        "metrics": {name: {**summaries[name], "reported": paste_ready(summaries[name]), "signature": signatures[name]}
                    for name in summaries},
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.6g}"


def print_summary(document: dict, out: TextIO) -> None:
    """A table (metric, n, mean, std, 95% CI) and per metric one line to paste: the value with its interval and
    the signature."""
    rows = [("metric", "n", "mean", "std", "95% CI (t)")]
    for name, s in document["metrics"].items():
        ci = s["ci95"]
        rows.append((name, str(s["n"]), _fmt(s["mean"]), _fmt(s["std"]), "-" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"))
    widths = [max(len(r[k]) for r in rows) for k in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
    for name, s in document["metrics"].items():
        print(f"{name}: {s['reported']}  {s['signature']}", file=out)
