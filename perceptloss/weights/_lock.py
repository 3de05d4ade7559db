"""An exclusive per-file lock for publishing a cached weights file (several processes may fill one cache)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


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
