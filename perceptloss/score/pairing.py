"""Pairing two folders by relative path without extension: ``ref/a/b.png`` <-> ``dist/a/b.jpg``.

Never by sort order: one missing file must not shift every pair. Files without a partner are reported (and
skipped, or an error under ``strict``); two images with the same relative stem in one folder are an error.
Hidden files and folders are left out; symbolic links are followed, loops are not (:func:`image_files`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ScoreError

#: File name suffixes read as images (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".gif")


@dataclass(frozen=True)
class Pair:
    """One reference image and its distorted version; ``key`` is the relative path without extension."""

    key: str
    ref: Path
    dist: Path


@dataclass
class Pairing:
    """The pairs (sorted by key), the keys found on one side only, and the folders left out (symbolic-link loops,
    folders that cannot be listed), one line each."""

    pairs: list[Pair]
    ref_only: list[str] = field(default_factory=list)
    dist_only: list[str] = field(default_factory=list)
    skipped_folders: list[str] = field(default_factory=list)

    @property
    def unmatched(self) -> int:
        return len(self.ref_only) + len(self.dist_only)


def index_folder(folder: Path, side: str, skipped: list[str] | None = None) -> dict[str, Path]:
    """{relative path without extension (POSIX): file} of every image under ``folder`` (recursively, see
    :func:`image_files`); the folders left out are described in ``skipped`` when given."""
    if not folder.exists():
        raise ScoreError(f"the {side} folder {folder} does not exist")
    if not folder.is_dir():
        raise ScoreError(f"{folder} ({side}) is not a folder; pass two folders of images")
    found: dict[str, Path] = {}
    for path in image_files(folder, skipped if skipped is not None else []):
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key in found:
            raise ScoreError(
                f"{side} folder {folder} holds two images for {key!r} ({found[key].name} and {path.name}); "
                f"keep one of them (pairs are matched by path without extension)"
            )
        found[key] = path
    if not found:
        raise ScoreError(f"the {side} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def image_files(folder: Path, skipped: list[str]) -> list[Path]:
    """The files under ``folder`` with an image suffix, recursively, sorted by path.

    Hidden files and folders (a name starting with ".", e.g. ``.ipynb_checkpoints/``) are left out. Symbolic
    links to files and to folders are followed; a link to a folder that holds the link (a loop) is not, and is
    described in ``skipped``, as is a folder that cannot be listed. A link to nothing is kept (reported as
    unreadable, like a damaged file); other non-regular files (pipes, devices) are left out.
    """
    files: list[Path] = []
    root = os.stat(folder)
    stack = [(Path(folder), frozenset({(root.st_dev, root.st_ino)}))]
    while stack:
        directory, ancestors = stack.pop()
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as e:
            skipped.append(f"cannot list {directory} ({e.strerror or e}): its images are left out")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = directory / entry.name
            try:
                if entry.is_dir():  # follows a link
                    st = os.stat(path)
                    if (st.st_dev, st.st_ino) in ancestors:
                        skipped.append(f"{path} links to a folder that contains it (a loop): not followed")
                    else:
                        stack.append((path, ancestors | {(st.st_dev, st.st_ino)}))
                    continue
                is_file, dangling = entry.is_file(), entry.is_symlink() and not path.exists()
            except OSError:  # vanished or unreadable while listing: read (and reported) with the images
                is_file, dangling = False, True
            if (is_file or dangling) and path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
    return sorted(files)


def pair_folders(ref: Path, dist: Path, *, strict: bool = False) -> Pairing:
    """Pair the images of ``ref`` and ``dist``; ``strict``: a file without a partner is an error."""
    skipped: list[str] = []
    refs, dists = index_folder(Path(ref), "reference", skipped), index_folder(Path(dist), "distorted", skipped)
    keys = sorted(refs.keys() & dists.keys())
    pairing = Pairing(
        pairs=[Pair(k, refs[k], dists[k]) for k in keys],
        ref_only=sorted(refs.keys() - dists.keys()),
        dist_only=sorted(dists.keys() - refs.keys()),
        skipped_folders=skipped,
    )
    if strict and skipped:
        raise ScoreError(f"{skipped[0]}; fix the folder or drop --strict to leave it out")
    if strict and pairing.unmatched:
        raise ScoreError(f"{describe_unmatched(pairing, ref, dist)}; add the missing files or drop --strict to skip them")
    if not pairing.pairs:
        raise ScoreError(f"no image of {ref} has a partner in {dist} (pairs are matched by relative path without extension)")
    return pairing


def describe_unmatched(pairing: Pairing, ref: Path, dist: Path, limit: int = 10) -> str:
    """One line: how many files have no partner on each side, and their names (the first ``limit``)."""
    parts = []
    for keys, here, there in ((pairing.ref_only, ref, dist), (pairing.dist_only, dist, ref)):
        if keys:
            names = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
            parts.append(f"{len(keys)} image(s) in {here} have no partner in {there}: {names}")
    return "; ".join(parts)
