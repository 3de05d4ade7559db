"""Pairing two folders by relative path without extension: ``ref/a/b.png`` <-> ``dist/a/b.jpg``.

Never by sort order: one missing file must not shift every pair. Files without a partner are reported (and
skipped, or an error under ``strict``); two images with the same relative stem in one folder are an error.
"""
from __future__ import annotations

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
    """The pairs (sorted by key) and the keys found on one side only."""

    pairs: list[Pair]
    ref_only: list[str] = field(default_factory=list)
    dist_only: list[str] = field(default_factory=list)

    @property
    def unmatched(self) -> int:
        return len(self.ref_only) + len(self.dist_only)


def index_folder(folder: Path, side: str) -> dict[str, Path]:
    """{relative path without extension (POSIX): file} of every image under ``folder`` (recursively)."""
    if not folder.exists():
        raise ScoreError(f"the {side} folder {folder} does not exist")
    if not folder.is_dir():
        raise ScoreError(f"{folder} ({side}) is not a folder; pass two folders of images")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
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


def pair_folders(ref: Path, dist: Path, *, strict: bool = False) -> Pairing:
    """Pair the images of ``ref`` and ``dist``; ``strict``: a file without a partner is an error."""
    refs, dists = index_folder(Path(ref), "reference"), index_folder(Path(dist), "distorted")
    keys = sorted(refs.keys() & dists.keys())
    pairing = Pairing(
        pairs=[Pair(k, refs[k], dists[k]) for k in keys],
        ref_only=sorted(refs.keys() - dists.keys()),
        dist_only=sorted(dists.keys() - refs.keys()),
    )
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
