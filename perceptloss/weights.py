"""Weight entries, offline resolution, conversion and a checksummed safetensors cache.

Resolution order for an entry: explicit path -> cache ($PERCEPTLOSS_HOME/weights) -> other known offline
sources (an installed package, torch's hub cache) -> download where online -> an error that says exactly
which file to put where. Every file written to the cache gets a ``.sha256`` sidecar that is checked on load.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

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

    @property
    def key(self) -> str:
        return f"{self.backbone}.{self.name}"


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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
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


def save_checked(state_dict: StateDict, path: Path, metadata: Mapping[str, str] | None = None) -> str:
    """Write ``state_dict`` as safetensors plus a ``.sha256`` sidecar, both atomically; returns the hash."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=dict(metadata or {})))
    digest = sha256_file(path)
    _atomic_write(path.with_name(path.name + ".sha256"), lambda tmp: tmp.write_text(f"{digest}  {path.name}\n"))
    return digest


def load_checked(path: Path) -> StateDict:
    """Load a cached safetensors file after checking it against its ``.sha256`` sidecar."""
    from safetensors.torch import load_file

    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        raise WeightsChecksumError(f"{path} has no checksum file {sidecar.name}; delete {path} to rebuild it")
    expected = sidecar.read_text().split()[0]
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsChecksumError(
            f"{path} is corrupt: sha256 {actual[:16]}... does not match the recorded {expected[:16]}...; "
            f"delete it (and {sidecar.name}) and run `python -m perceptloss fetch` again"
        )
    return load_file(str(path))


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
    return weights_home() / entry.filename


def convert_to_cache(entry: WeightEntry, source: Path) -> Path:
    """Check ``source`` against the entry's pinned sha256 (if any), convert it and write it to the cache."""
    if entry.source_sha256 is not None:
        actual = sha256_file(source)
        if actual != entry.source_sha256:
            raise WeightsChecksumError(
                f"{source} does not match the known sha256 of {entry.key} ({entry.source_sha256[:16]}...); "
                f"it is a different or damaged file"
            )
    state = entry.convert(source)
    target = cache_path(entry)
    save_checked(state, target, {"entry": entry.key, "source": source.name, **entry.meta})
    return target


def find_source(entry: WeightEntry) -> Path | None:
    """The first offline source file of ``entry`` that exists, or None."""
    for finder in entry.finders:
        path = finder()
        if path is not None and path.is_file():
            return path
    return None


def resolve(entry: WeightEntry, allow_download: bool | None = None) -> StateDict:
    """The state dict of ``entry``: from the cache, else converted from an offline source, else downloaded."""
    target = cache_path(entry)
    if target.is_file():
        return load_checked(target)
    source = find_source(entry)
    if source is None and entry.url and (allow_download if allow_download is not None else not is_offline()):
        source = _download(entry)
    if source is None:
        raise WeightsNotFoundError(missing_message(entry))
    return load_checked(convert_to_cache(entry, source))


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
