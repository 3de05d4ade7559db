"""CelebA in the official "Align&Cropped" layout: index, splits, attributes, crops, and a decoded uint8 cache.

Only images that exist are indexed (a subset or a full download work the same); crops are fractions of the
image size, so half-resolution copies and the full data give the same faces. Decoding happens once, into a
memory-mapped ``.npy`` (N, S, S, 3) uint8 cache keyed by the data folder, every image's name, size and mtime,
crop and size (so repaired images and other copies of the data are decoded afresh); unreadable images are
counted, listed and skipped.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .files import atomic_write, file_lock, free_bytes, is_disk_full, unwritable_reason, write_text_atomic
from perceptloss.weights import weights_home

#: ../shared/data/celeba beside the repository (this file is examples/dfcvae/dfcvae/celeba.py).
DEFAULT_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "celeba"
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


def _read_table(path: Path, skip: int, columns: int) -> tuple[list[str], list[list[str]]]:
    """Rows of a whitespace-separated annotation file: (first column, the other ``columns`` values)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise CelebAError(f"{path} is not a text annotation file; restore the official file") from None
    ids, rows = [], []
    for number, line in enumerate(lines[skip:], start=skip + 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != columns + 1:
            raise CelebAError(f"{path}, line {number}: expected an image name and {columns} values, found "
                              f"{len(parts) - 1} ({line[:60]!r}); the file is cut or garbled: restore the official file")
        ids.append(parts[0])
        rows.append(parts[1:])
    return ids, rows


def read_attribute_names(root: str | Path) -> list[str]:
    """The 40 attribute names from the header of ``root/list_attr_celeba.txt`` (cheap: reads two lines)."""
    path = Path(root) / "list_attr_celeba.txt"
    if not path.is_file():
        raise CelebAError(f"{path} is missing; pass --data /path/to/celeba with the official annotation files")
    try:
        with open(path) as f:
            f.readline()
            names = f.readline().split()
    except UnicodeDecodeError:
        names = []
    if not names or any(not n.replace("_", "").replace("5", "").isalnum() for n in names):
        raise CelebAError(f"{path} has no attribute-name header on its second line; restore the official file")
    return names


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
    names = read_attribute_names(root)
    ids, attr_rows = _read_table(root / "list_attr_celeba.txt", 2, len(names))
    part_ids, part_rows = _read_table(root / "list_eval_partition.txt", 0, 1)
    partition = dict(zip(part_ids, (_int(r[0], root / "list_eval_partition.txt") for r in part_rows)))
    identity = None
    if (root / "identity_CelebA.txt").is_file():
        id_ids, id_rows = _read_table(root / "identity_CelebA.txt", 0, 1)
        identity = dict(zip(id_ids, (_int(r[0], root / "identity_CelebA.txt") for r in id_rows)))
    keep = [i for i, name in enumerate(ids) if name in present]
    files = [ids[i] for i in keep]
    unlisted = len(present) - len(files)
    values = np.array([attr_rows[i] for i in keep], dtype=object).reshape(-1, len(names))
    if not np.isin(values, ("1", "-1")).all():
        bad = values[~np.isin(values, ("1", "-1"))][0]
        raise CelebAError(f"{root / 'list_attr_celeba.txt'} holds {bad!r} where 1 or -1 belongs; the file is garbled: "
                          "restore the official file")
    attrs = torch.from_numpy(values == "1")
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


def _int(value: str, path: Path) -> int:
    try:
        return int(value)
    except ValueError:
        raise CelebAError(f"{path}: {value!r} is not an integer; the file is garbled: restore the official file") from None


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
    """Which images, crop and size a run uses (stored in a run's config to refuse resuming on other data)."""
    h = hashlib.sha1()
    h.update(f"v1|{crop}|{CROPS[crop]}|{size}|".encode())
    h.update("\n".join(files).encode())
    return h.hexdigest()[:16]


def content_key(data: "CelebA", crop: str, size: int) -> str:
    """Key of a decoded cache: the data folder's real path and every image's name, size and mtime, plus crop and
    size. A repaired or replaced image, or another copy of the data, gets a fresh cache."""
    folder = (data.root / "img_align_celeba").resolve()
    h = hashlib.sha1()
    h.update(f"v2|{folder}|{crop}|{CROPS[crop]}|{size}|".encode())
    for name in data.files:
        try:
            st = os.stat(folder / name)
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{name}:missing\n".encode())
    return h.hexdigest()[:16]


@dataclass
class FaceCache:
    """Decoded faces: ``images`` (N, S, S, 3) uint8 memmap, ``rows`` the index into the CelebA subset used."""

    images: np.ndarray
    rows: np.ndarray
    bad: list[str]
    path: Path


def _cache_bytes(n: int, size: int) -> int:
    """Bytes of a (n, size, size, 3) uint8 .npy file (header included)."""
    return n * size * size * 3 + 128


def _no_space(folder: Path, needed: int) -> str:
    free = free_bytes(folder)
    short = max(1, -(-(needed - free) // 2**20))
    return (f"no space left in {folder} for the decoded-image cache ({needed / 2**20:.1f} MB needed, "
            f"{free / 2**20:.1f} MB free): free {short} MB or use --cache-dir")


def _ignore_signals_in_worker() -> None:
    """Decoding workers: Ctrl-C is the parent's to handle, SIGTERM ends them (not the parent's handler)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _write_faces(tmp: Path, paths: list[str], files: list[str], crop: str, size: int, workers: int,
                 progress: bool) -> tuple[list[int], list[str]]:
    """Decode ``paths`` in ``workers`` processes and write the readable faces, in order, as a (G, S, S, 3) uint8
    .npy at ``tmp``; returns (rows of the readable images, names of the unreadable ones).

    The file's full size is reserved first (``posix_fallocate``) and written with ordinary writes, never through
    a memory map, so a full disk is an OSError here (a memory-mapped write would die of SIGBUS instead)."""
    from tqdm import tqdm

    chunk = 256
    jobs = [(paths[i:i + chunk], crop, size) for i in range(0, len(paths), chunk)]
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (len(paths), size, size, 3)}
    good, bad = [], []
    with open(tmp, "r+b") as f:
        np.lib.format.write_array_header_1_0(f, header)
        start = f.tell()
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(f.fileno(), 0, start + len(paths) * size * size * 3)
            except OSError as e:
                if is_disk_full(e):
                    raise
                # the file system cannot reserve space (EOPNOTSUPP, EINVAL): the writes below still fail cleanly
        bar = tqdm(total=len(paths), desc=f"decoding {len(paths)} faces ({crop}, {size}px)", unit="img",
                   disable=not progress, file=sys.stderr)
        pool = ProcessPoolExecutor(workers, initializer=_ignore_signals_in_worker)
        try:
            for j, faces in enumerate(pool.map(_decode_many, jobs)):
                for k, face in enumerate(faces):
                    if face is None:
                        bad.append(files[j * chunk + k])
                    else:
                        f.write(np.ascontiguousarray(face, dtype=np.uint8).tobytes())
                        good.append(j * chunk + k)
                bar.update(len(faces))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        if len(good) < len(paths):  # unreadable images: the header must give the number of rows written
            f.truncate(f.tell())
            header["shape"] = (len(good), size, size, 3)
            f.seek(0)
            np.lib.format.write_array_header_1_0(f, header)
            if f.tell() != start:  # the shorter shape changed the header's length: rewrite the file
                f.seek(start)
                rows = np.frombuffer(f.read(), dtype=np.uint8).reshape(header["shape"])
                f.seek(0)
                f.truncate(0)
                np.save(f, rows)
        os.fsync(f.fileno())
    return good, bad


def _decode_into(npy: Path, paths: list[str], files: list[str], crop: str, size: int, workers: int,
                 progress: bool) -> tuple[list[int], list[str]]:
    """Check the free space, decode into a temporary file and publish it atomically as ``npy``."""
    needed = _cache_bytes(len(paths), size)
    if free_bytes(npy.parent) < needed:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(npy.parent))
    result: tuple[list[int], list[str]] = ([], [])

    def write(tmp: Path) -> None:
        nonlocal result
        result = _write_faces(tmp, paths, files, crop, size, workers, progress)

    atomic_write(npy, write)
    good, bad = result
    if bad:
        print(f"warning: {len(bad)} unreadable images skipped: {', '.join(bad[:10])}"
              f"{' ...' if len(bad) > 10 else ''}", file=sys.stderr)
    return good, bad


def build_cache(data: CelebA, crop: str = "released", size: int = 64, cache_dir: str | Path | None = None,
                workers: int | None = None, progress: bool = True) -> FaceCache:
    """Decode every image of ``data`` once into a memory-mapped cache (reused when it already exists)."""
    if cache_dir is not None:  # the user's choice: it must be writable
        cache_dir = Path(cache_dir)
        if unwritable_reason(cache_dir):
            raise CelebAError(f"cannot write the decoded-image cache to --cache-dir {cache_dir}; choose a writable "
                              "folder, or leave --cache-dir out")
    else:  # the user's cache, never the data folder (data is often shared or read-only, and root writes anyway)
        cache_dir = weights_home().parent / "celeba"
        if unwritable_reason(cache_dir):
            raise CelebAError(f"cannot write the decoded-image cache to {cache_dir}; pass --cache-dir with a writable "
                              "folder (or set PERCEPTLOSS_HOME)")
    key = content_key(data, crop, size)
    npy, meta = cache_dir / f"faces-{key}.npy", cache_dir / f"faces-{key}.json"
    # One process decodes, any other (a DDP rank, a second run) waits for it and reuses the result.
    with file_lock(cache_dir / f".faces-{key}.lock"):
        if npy.is_file() and meta.is_file():
            info = json.loads(meta.read_text())
            if progress:
                print(f"reusing {info['count']} decoded faces from {npy}", file=sys.stderr)
            return FaceCache(np.load(npy, mmap_mode="r"), np.asarray(info["rows"], dtype=np.int64), info["bad"], npy)
        paths = [str(data.root / "img_align_celeba" / f) for f in data.files]
        try:
            good, bad = _decode_into(npy, paths, data.files, crop, size, workers or min(8, os.cpu_count() or 1),
                                     progress)
            try:
                write_text_atomic(meta, json.dumps({"rows": good, "bad": bad, "crop": crop, "size": size,
                                                    "count": len(good), "folder": str(data.root.resolve())}))
            except OSError:
                npy.unlink(missing_ok=True)  # a cache without its index would never be reused
                raise
        except OSError as e:
            if is_disk_full(e):
                raise CelebAError(_no_space(cache_dir, _cache_bytes(len(paths), size))) from None
            raise
    return FaceCache(np.load(npy, mmap_mode="r"), np.asarray(good, dtype=np.int64), bad, npy)


def to_float(batch_uint8: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 in [0, 1] (on the batch's device)."""
    return batch_uint8.permute(0, 3, 1, 2).float().div_(255.0)
