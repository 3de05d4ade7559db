"""Files: one atomic-write helper, file locks, a writability probe, a free-space check and a size.

Every file the example writes (checkpoints, logs, model cards, weights, the decoded-face cache, reports) goes
through :func:`atomic_write`: the content is written to a temporary file in the same folder and renamed over
the target, so a crash, a kill or a full disk never leaves a torn file, and the previous version stays intact
until the new one is complete. The result gets the permissions of a normally created file (``0666`` minus the
umask), not the ``0600`` of a temporary file.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

#: errno values that mean "the disk (or the user's quota) is full".
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it over ``path``.

    ``write`` receives the temporary file's path (the file exists and is empty) and may open it in any mode or
    hand it to ``torch.save`` / ``np.save`` / safetensors. Whatever ``write`` raises (OSError for a full disk
    included) propagates with ``path`` untouched and the temporary file removed. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))




def unwritable_reason(folder: str | Path) -> str | None:
    """None when ``folder`` exists (created if needed) and a file can be written in it, else the OS's reason."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return None
    except OSError as e:
        return e.strerror or str(e)


def free_bytes(folder: str | Path) -> int:
    """Bytes an unprivileged process may still write in ``folder``'s file system."""
    return shutil.disk_usage(folder).free


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is an OSError for a full disk or quota."""
    return isinstance(error, OSError) and error.errno in NO_SPACE


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the duration; yields whether another
    process held it first (so the caller knows it waited). Released when the block ends or the process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            waited = True
        try:
            yield waited
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class LockHeld(RuntimeError):
    """Another process holds the lock :func:`hold_lock` asked for; ``holder`` is what it wrote in the lock file
    ("PID <pid> on <host> since <time>", or "" when it had not written it yet)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by {holder or 'another process'}")
        self.path, self.holder = path, holder


@contextlib.contextmanager
def hold_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the duration, without waiting.

    Raises :class:`LockHeld`, naming the holder, when another process (or another open of the file) holds it.
    While held, the file says "PID <pid> on <host> since <time>"; the kernel releases the lock when the block
    ends or the process dies (``kill -9`` included), so a stale file never blocks a later run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise LockHeld(path, holder) from None
    try:
        f.truncate(0)
        f.write(f"PID {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        f.flush()
        yield
    finally:
        f.truncate(0)
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def tree_bytes(folder: str | Path) -> int:
    """Bytes held by the files under ``folder`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and not p.is_symlink())
