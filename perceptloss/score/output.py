"""The results of ``perceptloss score``: a CSV per image, a JSON summary per metric, and the summary on screen.

The output paths are checked before anything is scored (:func:`check_outputs`), and each file is written
atomically and on its own (:func:`write_outputs`): a full disk or another write error leaves the previous file
untouched, no temporary file behind, and the other output written. The path ``-`` is the standard output.

File names are written as UTF-8 text; a name's bytes that are not UTF-8 (``caf\\xe9.png`` from a Latin-1
system: Python reads them as surrogates) are written as ``\\xNN`` escapes (:func:`printable`), in the CSV, the
JSON and the messages alike, so that every output stays valid UTF-8 and such a file is scored like any other.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from .errors import ScoreError
from .statistics import CI_METHOD, paste_ready

#: Bytes handed to one ``os.write`` call when an output file is written.
CHUNK = 1 << 16


#: The output path that means the standard output.
STDOUT = "-"


def is_stdout(path: Path | str | None) -> bool:
    """Whether an output path is ``-``, the standard output."""
    return path is not None and str(path) == STDOUT


def printable(text: str) -> str:
    """``text`` with the surrogates that stand for a file name's non-UTF-8 bytes (``os.fsdecode``'s
    ``surrogateescape``) written as ``\\xNN``: valid UTF-8 for the CSV, the JSON and the screen."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name's byte stands for
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _printable_tree(value):
    """A JSON document with :func:`printable` applied to every string, keys included."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(str(k)): _printable_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable_tree(v) for v in value]
    return value


def check_outputs(outputs: dict[str, Path | None]) -> None:
    """ScoreError (one line, saying what to do) unless every output path (``{"--csv": path, ...}``, None for
    one not asked for) can be written: its folder exists and is writable, it is not a folder, and no two options
    name the same file; ``-`` (the standard output) may be given to one option only."""
    to_stdout = [flag for flag, path in outputs.items() if is_stdout(path)]
    if len(to_stdout) > 1:
        raise ScoreError(f"{' and '.join(to_stdout)} both write to the standard output (-); send all but one of them "
                         f"to a file, e.g. {to_stdout[-1]} scores.{to_stdout[-1].lstrip('-')}")
    given = {flag: Path(path) for flag, path in outputs.items() if path is not None and not is_stdout(path)}
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
    writer.writerow([printable(m) for m in ("pair", "ref", "dist", *metrics)])
    for i, (key, ref, dist) in enumerate(rows):
        writer.writerow([printable(key), printable(ref), printable(dist), *(repr(values[m][i]) for m in metrics)])
    return buf.getvalue()


def json_text(document: dict) -> str:
    """The JSON summary document as text (indented, a final newline; file names by :func:`printable`)."""
    return json.dumps(_printable_tree(document), indent=2) + "\n"


def write_outputs(outputs: dict[str, tuple[Path, str]]) -> list[str]:
    """Write each ``{flag: (path, text)}`` atomically (``-``: to the standard output) and independently of the
    others; returns one line per output that could not be written (empty when all were)."""
    failures = []
    for flag, (path, text) in outputs.items():
        if is_stdout(path):
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except OSError as e:
                failures.append(f"could not write {flag} to the standard output ({e.strerror or e})")
            continue
        try:
            write_atomic(path, text)
        except OSError as e:
            previous = "is unchanged" if path.exists() else "was not written"
            failures.append(f"could not write {flag} {path} ({e.strerror or e}); {path} {previous}: free space "
                            f"(or choose another {flag} path) and score again")
    return failures


def summary_document(summaries: dict[str, dict], signatures: dict[str, str], *, ref: str, dist: str, pairs: int,
                     ref_only: list[str], dist_only: list[str], failed: dict[str, str],
                     too_small: dict[str, str] | None = None, weights: dict[str, str] | None = None) -> dict:
    """The JSON summary: the folders, how many pairs were scored and skipped (and why: no partner, an
    unreadable file, images too small for a metric), and per metric n, mean, std, ci95, the paste-ready line
    (``reported``: ``0.213 ± 0.004 (95% CI, n = 500)``), the signature and where its weights came from
    (``weights``: ``weights_source_of``; the signature names the tensors themselves)."""
    weights = weights or {}
    return {
        "ref": ref,
        "dist": dist,
        "pairs_scored": pairs,
        "skipped": {"ref_only": ref_only, "dist_only": dist_only, "unreadable": failed,
                    "too_small": dict(too_small or {})},
        "ci95_method": CI_METHOD,
        "metrics": {name: {**summaries[name], "reported": paste_ready(summaries[name]), "signature": signatures[name],
                           "weights": weights.get(name, "unknown")} for name in summaries},
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
