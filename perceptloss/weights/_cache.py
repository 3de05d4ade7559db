"""The weights cache: where an entry's converted file lives and how an entry is resolved to a state dict.

Resolution order for an entry: cache ($PERCEPTLOSS_HOME/weights) -> its offline sources (an installed
package, torch's hub cache) -> download where online -> an error that says exactly which file to put where.
Every file written to the cache gets a ``.sha256`` sidecar that is checked on load.

Several processes may fill the same cache at once (every rank of a fresh ``torchrun`` job does): the
conversion writes the same bytes in every process (keys and metadata in a fixed order), both files are
published by rename from temporary names, the sidecar first, under an exclusive lock per file
(``.<name>.lock``), and a reader that sees a mismatch looks again under that lock before calling a file
corrupt. A cache that cannot be written is named with what is wrong with its folder.
"""
from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

from ._catalogue import StateDict, WeightEntry
from ._download import download, hub_path, is_offline
from ._errors import WeightsCacheError, WeightsChecksumError, WeightsNotFoundError
from ._files import load_checked, save_checked, sha256_file
from ._lock import cache_lock


def weights_home() -> Path:
    """Cache folder: $PERCEPTLOSS_HOME/weights, default ~/.cache/perceptloss/weights."""
    root = os.environ.get("PERCEPTLOSS_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "perceptloss"
    )
    return Path(root) / "weights"


def cache_problem(folder: Path, error: OSError | None = None) -> str:
    """One line saying why the cache ``folder`` cannot be written (after ``error``), and how to fix it."""
    home = os.environ.get("PERCEPTLOSS_HOME")
    existing = folder
    while not existing.exists() and existing.parent != existing:  # the deepest part of the path that exists
        existing = existing.parent
    if not existing.is_dir():
        if home and existing == Path(home):
            return f"PERCEPTLOSS_HOME={home} is a file, not a folder: set PERCEPTLOSS_HOME to a folder (it is created if missing)"
        return (f"the weights cache {folder} cannot be created: {existing} is a file, not a folder; remove or "
                f"rename it, or set PERCEPTLOSS_HOME to another folder")
    code = error.errno if error is not None else None
    if code == errno.EROFS:
        why = f"{existing} is on a read-only file system"
    elif code in (errno.EACCES, errno.EPERM) or not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} is read-only for this user (permission denied)"
    else:
        why = f"{existing}: {error.strerror if error is not None and error.strerror else error}"
    return f"the weights cache {folder} cannot be written: {why}; make it writable or set PERCEPTLOSS_HOME to a writable folder"


def cache_path(entry: WeightEntry) -> Path:
    """Where ``entry`` is cached: ``weights_home() / entry.filename``."""
    return weights_home() / entry.filename


def fetch_command(entry: WeightEntry) -> str:
    """The command that rebuilds the cached file of ``entry`` (it works as printed)."""
    return f"python -m perceptloss fetch {entry.key} --force"


def find_source(entry: WeightEntry) -> Path | None:
    """The first offline source file of ``entry`` that exists, or None."""
    for finder in entry.finders:
        path = finder()
        if path is not None and path.is_file():
            return path
    return None


def _check_source(entry: WeightEntry, source: Path) -> None:
    if entry.source_sha256 is not None:
        actual = sha256_file(source)
        if actual != entry.source_sha256:
            raise WeightsChecksumError(
                f"{source} does not match the known sha256 of {entry.key} ({entry.source_sha256[:16]}...); "
                f"it is a different or damaged file"
            )


def _publish(entry: WeightEntry, source: Path, state: StateDict) -> Path:
    """Write ``state`` (converted from ``source``) to the cache; WeightsCacheError when it cannot be written."""
    target = cache_path(entry)
    try:
        save_checked(state, target, {"entry": entry.key, "source": source.name, **entry.meta})
    except OSError as e:
        raise WeightsCacheError(cache_problem(target.parent, e)) from None
    return target


def convert_to_cache(entry: WeightEntry, source: Path) -> Path:
    """Check ``source`` against the entry's pinned sha256 (if any), convert it and write it to the cache."""
    with cache_lock(cache_path(entry)):
        _check_source(entry, source)
        return _publish(entry, source, entry.convert(source))


def resolve(
    entry: WeightEntry, allow_download: bool | None = None, force: bool = False, *, require_cache: bool = False
) -> StateDict:
    """The state dict of ``entry``: from the cache, else converted from an offline source, else downloaded.

    ``force``: rebuild the cached file even if it exists. A conversion that cannot be written to the cache
    is used uncached with a warning that says what is wrong with the folder, or (``force`` or
    ``require_cache``) raises WeightsCacheError saying so. Safe to call from several processes at once: one
    converts while the others wait for it, and a good file is never reported corrupt.
    """
    target = cache_path(entry)
    fix = fetch_command(entry)
    if not force and target.is_file():
        try:
            return load_checked(target, fix)
        except WeightsChecksumError:
            pass  # perhaps caught between another process's two renames: look again under the lock
    with cache_lock(target):
        if not force and target.is_file():
            return load_checked(target, fix)
        source = find_source(entry)
        if source is None and entry.url and (allow_download if allow_download is not None else not is_offline()):
            source = download(entry)
        if source is None:
            raise WeightsNotFoundError(missing_message(entry))
        _check_source(entry, source)
        state = entry.convert(source)
        try:
            return load_checked(_publish(entry, source, state), fix)
        except WeightsCacheError as e:
            if force or require_cache:
                raise
            warnings.warn(f"the weights {entry.key} are used without caching (converted again next time): {e}", stacklevel=2)
            return state


def missing_message(entry: WeightEntry) -> str:
    """Where to put which file for ``entry`` (several lines: every way to get the weights offline)."""
    lines = [f"weights {entry.key} ({entry.description}) were not found offline. Either:"]
    if entry.hint:
        lines.append(f"  - {entry.hint}")
    if entry.url:
        lines.append(f"  - download {entry.url} elsewhere and put it at {hub_path(entry)}")
    lines.append("  - or pass the file directly: weights='/path/to/file' (then it is used as given)")
    lines.append(f"  (converted weights are cached at {cache_path(entry)}; set PERCEPTLOSS_HOME to move the cache)")
    return "\n".join(lines)
