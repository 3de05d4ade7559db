"""SIGTERM (kill, timeout, batch schedulers) handled like Ctrl-C while a run trains, then ignored for its last save."""
from __future__ import annotations

import contextlib
import signal
from types import FrameType
from typing import Iterator


class Terminated(Exception):
    """SIGTERM arrived: stop like Ctrl-C, with a checkpoint."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` in the main thread for the duration (kill, timeout, schedulers)."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def ignore_sigterm() -> None:
    """Ignore further SIGTERMs (inside :func:`sigterm_as_interrupt`, which restores the handler afterwards)."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass
