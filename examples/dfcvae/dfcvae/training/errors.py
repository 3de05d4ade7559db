"""The training program's error for problems found before or outside the training steps (exit code 2)."""
from __future__ import annotations


class SetupError(RuntimeError):
    """A problem found before or outside the training steps (the message says what to do); exit code 2."""
