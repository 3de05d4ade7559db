"""CelebA in the official "Align&Cropped" layout: index, splits, attributes, crops, and a decoded uint8 cache.

Only images that exist are indexed (a subset or a full download work the same); crops are fractions of the
image size, so half-resolution copies and the full data give the same faces. Decoding happens once, into a
memory-mapped ``.npy`` (N, S, S, 3) uint8 cache keyed by image list + crop + size; unreadable images are
counted, listed and skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "celeba"
SPLITS = {"train": 0, "val": 1, "test": 2}

#: Crop boxes (x, y, width, height) as fractions of the aligned image (178x218 in the official data).
CROPS = {
    # the authors' released code: a 138x138 box with top-left (30, 40)
    "released": (30 / 178, 40 / 218, 138 / 178, 138 / 218),
    # the common 108x108 centre crop (DCGAN and others)
    "center108": (35 / 178, 55 / 218, 108 / 178, 108 / 218),
}


class CelebAError(RuntimeError):
    """The data folder is missing, empty or incomplete (the message says what to do)."""


@dataclass
class CelebA:
    """The images found under ``root`` with their official split, attributes and (optionally) identities.

    ``files``: image file names (e.g. '000001.jpg'), sorted; ``partition``: (N,) int8 0/1/2 (train/val/test);
    ``attributes``: (N, 40) bool tensor; ``attribute_names``: the 40 names; ``identity``: (N,) int64 or None.
    """

    root: Path
    files: list[str]
    partition: np.ndarray
    attributes: torch.Tensor
    attribute_names: list[str]
    identity: np.ndarray | None
    listed: int

    def split(self, name: str) -> "CelebA":
        """The images of one official split: 'train', 'val' or 'test'."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose from {list(SPLITS)}")
        return self.select(np.flatnonzero(self.partition == SPLITS[name]))

    def select(self, rows: Sequence[int] | np.ndarray) -> "CelebA":
        rows = np.asarray(rows, dtype=np.int64)
        return CelebA(
            self.root,
            [self.files[i] for i in rows],
            self.partition[rows],
            self.attributes[torch.from_numpy(rows)],
            self.attribute_names,
            None if self.identity is None else self.identity[rows],
            self.listed,
        )

    def attribute(self, name: str) -> torch.Tensor:
        """(N,) bool column of one attribute, by name."""
        if name not in self.attribute_names:
            import difflib

            close = difflib.get_close_matches(name, self.attribute_names, n=3)
            raise KeyError(f"unknown attribute {name!r}" + (f"; did you mean {close}?" if close else "") +
                           f" Valid: {', '.join(self.attribute_names)}")
        return self.attributes[:, self.attribute_names.index(name)]

    def __len__(self) -> int:
        return len(self.files)


def _read_table(path: Path, skip: int) -> tuple[list[str], list[list[str]]]:
    with open(path) as f:
        lines = f.read().splitlines()
    rows = [line.split() for line in lines[skip:] if line.strip()]
    return [r[0] for r in rows], [r[1:] for r in rows]


def load_celeba(root: str | Path, verbose: bool = True) -> CelebA:
    """Index the images present under ``root`` (official layout) and read their annotations."""
    root = Path(root)
    images = root / "img_align_celeba"
    if not root.is_dir():
        raise CelebAError(f"CelebA folder {root} does not exist; pass --data /path/to/celeba (with img_align_celeba/)")
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        if not (root / name).is_file():
            raise CelebAError(f"{root / name} is missing; copy the official annotation files into {root}")
    if not images.is_dir():
        raise CelebAError(f"{images} does not exist; unpack img_align_celeba.zip into {root}")
    present = {e.name for e in os.scandir(images) if e.name.endswith(".jpg")}
    if not present:
        raise CelebAError(f"{images} holds no .jpg images")
    with open(root / "list_attr_celeba.txt") as f:
        f.readline()
        names = f.readline().split()
    ids, attr_rows = _read_table(root / "list_attr_celeba.txt", 2)
    part_ids, part_rows = _read_table(root / "list_eval_partition.txt", 0)
    partition = dict(zip(part_ids, (int(r[0]) for r in part_rows)))
    identity = None
    if (root / "identity_CelebA.txt").is_file():
        id_ids, id_rows = _read_table(root / "identity_CelebA.txt", 0)
        identity = dict(zip(id_ids, (int(r[0]) for r in id_rows)))
    keep = [i for i, name in enumerate(ids) if name in present]
    files = [ids[i] for i in keep]
    unlisted = len(present) - len(files)
    attrs = torch.from_numpy(np.array([[v == "1" for v in attr_rows[i]] for i in keep], dtype=bool).reshape(-1, len(names)))
    try:
        part = np.array([partition[f] for f in files], dtype=np.int8)
    except KeyError as e:
        raise CelebAError(f"{e.args[0]} has no entry in list_eval_partition.txt; is the file complete?") from None
    ident = None if identity is None else np.array([identity.get(f, -1) for f in files], dtype=np.int64)
    if verbose:
        counts = {k: int((part == v).sum()) for k, v in SPLITS.items()}
        extra = f" ({unlisted} images without annotations ignored)" if unlisted else ""
        print(f"CelebA: found {len(files)} of the {len(ids)} listed images in {images}{extra}; "
              f"train {counts['train']}, val {counts['val']}, test {counts['test']}", file=sys.stderr)
    return CelebA(root, files, part, attrs, names, ident, len(ids))


def crop_box(size: tuple[int, int], crop: str) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of the named crop for an image of ``size`` = (width, height)."""
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; choose from {list(CROPS)}")
    fx, fy, fw, fh = CROPS[crop]
    w, h = size
    left, top = round(fx * w), round(fy * h)
    return left, top, left + round(fw * w), top + round(fh * h)


def decode_face(path: str, crop: str, size: int) -> np.ndarray | None:
    """One image cropped and resized to (size, size, 3) uint8, or None if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.load()
            face = im.crop(crop_box(im.size, crop)).resize((size, size), Image.BICUBIC)
            return np.asarray(face, dtype=np.uint8)
    except Exception:  # unreadable, truncated, not an image
        return None


def _decode_many(args: tuple[list[str], str, int]) -> list[np.ndarray | None]:
    paths, crop, size = args
    return [decode_face(p, crop, size) for p in paths]


def cache_key(files: Sequence[str], crop: str, size: int) -> str:
    h = hashlib.sha1()
    h.update(f"v1|{crop}|{CROPS[crop]}|{size}|".encode())
    h.update("\n".join(files).encode())
    return h.hexdigest()[:16]


@dataclass
class FaceCache:
    """Decoded faces: ``images`` (N, S, S, 3) uint8 memmap, ``rows`` the index into the CelebA subset used."""

    images: np.ndarray
    rows: np.ndarray
    bad: list[str]
    path: Path


def build_cache(data: CelebA, crop: str = "released", size: int = 64, cache_dir: str | Path | None = None,
                workers: int | None = None, progress: bool = True) -> FaceCache:
    """Decode every image of ``data`` once into a memory-mapped cache (reused when it already exists)."""
    cache_dir = Path(cache_dir) if cache_dir else data.root.resolve() / ".." / ".perceptloss-cache"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=cache_dir)
        probe.close()
    except OSError:  # read-only data folder: fall back to the user cache
        cache_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "perceptloss" / "celeba"
        cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(data.files, crop, size)
    npy, meta = cache_dir / f"faces-{key}.npy", cache_dir / f"faces-{key}.json"
    if npy.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        return FaceCache(np.load(npy, mmap_mode="r"), np.asarray(info["rows"], dtype=np.int64), info["bad"], npy)
    paths = [str(data.root / "img_align_celeba" / f) for f in data.files]
    workers = workers or min(8, os.cpu_count() or 1)
    chunk = 256
    jobs = [(paths[i:i + chunk], crop, size) for i in range(0, len(paths), chunk)]
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npy.tmp")
    os.close(fd)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
    good, bad = [], []
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc=f"decoding {len(paths)} faces ({crop}, {size}px)", unit="img",
                   disable=not progress, file=sys.stderr)
        with ProcessPoolExecutor(workers) as pool:
            for j, faces in enumerate(pool.map(_decode_many, jobs)):
                for k, face in enumerate(faces):
                    i = j * chunk + k
                    if face is None:
                        bad.append(data.files[i])
                    else:
                        out[len(good)] = face
                        good.append(i)
                bar.update(len(faces))
        bar.close()
        out.flush()
        del out
        if bad:
            print(f"warning: {len(bad)} unreadable images skipped: {', '.join(bad[:10])}"
                  f"{' ...' if len(bad) > 10 else ''}", file=sys.stderr)
        full = np.load(tmp, mmap_mode="r")
        if len(good) < len(paths):  # shrink to the readable rows
            fd2, tmp2 = tempfile.mkstemp(dir=cache_dir, suffix=".npy.tmp")
            os.close(fd2)
            small = np.lib.format.open_memmap(tmp2, mode="w+", dtype=np.uint8, shape=(len(good), size, size, 3))
            small[:] = full[: len(good)]
            small.flush()
            del small, full
            os.replace(tmp2, tmp)
        else:
            del full
        os.replace(tmp, npy)
        meta_tmp = meta.with_suffix(".json.tmp")
        meta_tmp.write_text(json.dumps({"rows": good, "bad": bad, "crop": crop, "size": size, "count": len(good)}))
        os.replace(meta_tmp, meta)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return FaceCache(np.load(npy, mmap_mode="r"), np.asarray(good, dtype=np.int64), bad, npy)


def to_float(batch_uint8: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 in [0, 1] (on the batch's device)."""
    return batch_uint8.permute(0, 3, 1, 2).float().div_(255.0)
