"""The one exception type of ``perceptloss score``: a problem with the folders, files or options."""
from __future__ import annotations


class ScoreError(Exception):
    """Reported on one line (``perceptloss: error: ...``), exit code 2; the message says what to do."""
