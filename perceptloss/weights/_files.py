"""Weights files: reading a file a user passes (tensors only, never code) and writing / reading the cache's
checksummed safetensors files.

A file a user passes is read by its content, not its suffix: a safetensors file, or a torch checkpoint loaded
with ``weights_only=True``. The usual wrappers of a training checkpoint (``{"state_dict": sd}``,
``{"model": sd}``, ``{"model_state_dict": sd}``) and the prefixes ``module.`` (DataParallel / DDP) and
``_orig_mod.`` (``torch.compile``) are removed; any other layout is an error that names what the file holds.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Mapping

import torch

from ._catalogue import StateDict
from ._errors import WeightsChecksumError, WeightsFileError, WeightsNotFoundError

#: File suffixes of weights files (a value with one of them is taken as a path, not an entry name).
WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
#: Keys under which training checkpoints keep the model's state dict.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
#: Prefixes that wrappers add to every tensor name: DataParallel / DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """The hex sha256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_mismatch(path: Path, expected: str) -> str | None:
    """None when the sha256 of ``path`` is ``expected`` (64 hex digits) or begins with it (a published prefix,
    as torch.hub's ``check_hash``); else what differs, e.g. "its sha256 begins 0f1e2d3c, not 7be5be79"."""
    expected = expected.lower()
    actual = sha256_file(path)
    if actual.startswith(expected):
        return None
    if len(expected) == 64:
        return f"its sha256 is {actual[:16]}..., not the known {expected[:16]}..."
    return f"its sha256 begins {actual[:len(expected)]}, not {expected}"


# ------------------------------------------------------------------------------------ files a user passes


def looks_like_path(value: object) -> bool:
    """True when ``value`` names a file rather than a catalogue entry: a path object, a string with a folder
    separator or a weights-file suffix, or the name of something that exists."""
    if isinstance(value, os.PathLike):
        return True
    if not isinstance(value, str):
        return False
    return "/" in value or os.sep in value or Path(value).suffix.lower() in WEIGHTS_SUFFIXES or os.path.exists(value)


def check_weights_path(path: str | Path) -> Path:
    """``path`` as a Path when it is an existing file; else WeightsNotFoundError (missing) or WeightsFileError
    (a folder: the message names the weights files inside it)."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in WEIGHTS_SUFFIXES)
        holds = f"it holds {', '.join(inside[:5])}" if inside else "it holds no .safetensors, .pth or .pt file"
        raise WeightsFileError(f"weights {path} is a folder, not a file: pass the weights file inside it ({holds})")
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the current folder {os.getcwd()})"
        if path.exists():
            raise WeightsFileError(f"weights {path}{where} is not a regular file: pass a .safetensors or .pth file")
        raise WeightsNotFoundError(f"weights file {path}{where} does not exist: pass the path of an existing file")
    return path


def _sniff(path: Path) -> str:
    """The format of a file by its first bytes: "safetensors", "zip" (torch.save), "pickle" (torch.save with
    the legacy format) or "unknown"."""
    with open(path, "rb") as f:
        head = f.read(10)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 10 and head[8:10] == b'{"':
        return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


def _damaged(path: Path, what: str) -> WeightsFileError:
    size = path.stat().st_size
    return WeightsFileError(
        f"{path} ({size} bytes) is truncated or damaged: it cannot be read as {what}; download or save it again"
    )


def _load_safetensors(path: Path) -> StateDict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception:  # SafetensorError, or an OS error on a short read
        raise _damaged(path, "a safetensors file") from None


def _load_torch(path: Path, kind: str) -> object:
    if kind == "zip" and not zipfile.is_zipfile(path):
        raise _damaged(path, "a torch checkpoint (its zip directory is missing)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's own message would suggest weights_only=False: never for a file a user passes
        pass
    find_unsafe = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if kind == "zip" and find_unsafe is not None:
        try:
            unsafe = find_unsafe(str(path))
        except Exception:
            raise _damaged(path, "a torch checkpoint") from None
        if not unsafe:
            raise _damaged(path, "a torch checkpoint")
        raise WeightsFileError(
            f"{path} holds Python objects besides tensors ({', '.join(unsafe[:3])}), which perceptloss does not "
            f"unpickle (a weights file is data, never code): save the tensors alone, "
            f"torch.save(model.state_dict(), path), or as a safetensors file"
        )
    raise WeightsFileError(
        f"{path} is truncated or damaged, or holds Python objects besides tensors (which perceptloss does not "
        f"unpickle): download it again, or save the tensors alone with torch.save(model.state_dict(), path)"
    )


def unwrap_state_dict(obj: object, path: Path) -> StateDict:
    """The state dict (tensors by name) inside what a checkpoint file holds: known wrappers and prefixes
    removed (see the module docstring); WeightsFileError naming what the file holds otherwise."""
    def tensor_dict(x: object) -> bool:
        return isinstance(x, dict) and bool(x) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in x.items())

    while not tensor_dict(obj):
        if not isinstance(obj, dict):
            raise WeightsFileError(
                f"{path} holds a {type(obj).__name__}, not a state dict (tensors by name): save one with "
                f"torch.save(model.state_dict(), path)"
            )
        if not obj:
            raise WeightsFileError(f"{path} holds an empty dict: no tensors to load")
        wrappers = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)]
        if len(wrappers) > 1:
            raise WeightsFileError(
                f"{path} holds several state dicts ({', '.join(repr(k) for k in wrappers)}): save the one to use "
                f"alone, torch.save(checkpoint[{wrappers[0]!r}], 'weights.pth'), and pass that file"
            )
        if not wrappers:
            keys = ", ".join(repr(k) for k in list(obj)[:6]) + (", ..." if len(obj) > 6 else "")
            inner = [repr(k) for k, v in obj.items() if tensor_dict(v)]
            fix = (f"its tensors are under {', '.join(inner)}: save them alone, torch.save(checkpoint[{inner[0]}], "
                   f"'weights.pth'), and pass that file") if inner else "pass a file of the state dict itself"
            known = ", ".join(repr(k) for k in WRAPPER_KEYS)
            raise WeightsFileError(f"{path} holds a dict of {keys} with no state dict under {known}: {fix}")
        obj = obj[wrappers[0]]
    state: StateDict = obj  # type: ignore[assignment]
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def load_state_dict_file(path: str | Path) -> StateDict:
    """The tensors of a weights file a user passes, by name (a safetensors file, or a torch checkpoint loaded
    with ``weights_only=True``; known wrappers and prefixes removed).

    Raises WeightsNotFoundError for a missing file and WeightsFileError, with one line that says what to do,
    for a folder, a truncated or damaged file, a file holding Python objects, or no state dict.
    """
    path = check_weights_path(path)
    kind = _sniff(path)
    if kind == "safetensors":
        return unwrap_state_dict(_load_safetensors(path), path)
    if kind == "unknown":
        if path.suffix == ".safetensors" or path.stat().st_size < 10:
            raise _damaged(path, "a safetensors file or a torch checkpoint")
        raise WeightsFileError(f"{path} is neither a safetensors file nor a torch checkpoint: pass one of those")
    return unwrap_state_dict(_load_torch(path, kind), path)


# ------------------------------------------------------------------------- checksummed safetensors files


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


def safetensors_bytes(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """``state_dict`` in the safetensors format (written by the ``safetensors`` library), byte-for-byte the
    same for the same tensors and metadata.

    The library orders the tensors deterministically but writes the metadata through a hash map, whose order
    varies between processes; the header's metadata is put in sorted key order here (the same JSON text
    permuted, so its length and every offset stay the library's).
    """
    from safetensors.torch import save

    tensors = {str(k): v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = {str(k): str(v) for k, v in metadata.items()} if metadata else None
    data = save(tensors, metadata=meta)
    if meta is None or len(meta) < 2:
        return data
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) != len(data[8 : 8 + length].rstrip(b" ")):  # pragma: no cover - a JSON writer difference
        raise RuntimeError("the safetensors header changed length when its metadata was sorted")
    return data[:8] + text.ljust(length, b" ") + data[8 + length :]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checked(state_dict: StateDict, path: Path, metadata: Mapping[str, str] | None = None) -> str:
    """Write ``state_dict`` as safetensors plus a ``.sha256`` sidecar; returns the hash.

    Both files are written under temporary names and renamed into place, the sidecar first, so a reader that
    sees the weights file also sees a sidecar. The bytes depend only on the tensors and the metadata.
    Concurrent writers of one path should hold ``cache_lock(path)`` (``resolve`` does).
    """
    data = safetensors_bytes(state_dict, metadata)
    digest = hashlib.sha256(data).hexdigest()
    _atomic_write(_sidecar(path), lambda tmp: tmp.write_text(f"{digest}  {path.name}\n"))
    _atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return digest


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
