"""The exception types of the weights package (each message says what is wrong and what to do)."""
from __future__ import annotations


class WeightsNotFoundError(FileNotFoundError):
    """No source of the requested weights could be found, or a weights file a user named does not exist
    (the message says where to put which file)."""


class WeightsChecksumError(RuntimeError):
    """A weights file does not match its recorded or published sha256, or a cached file matches its checksum but
    does not hold its entry's weights (written by something else)."""


class WeightsFileError(ValueError):
    """A weights file cannot be read, or does not hold weights that fit the backbone it is given for."""


class WeightsCacheError(OSError):
    """The weights cache folder cannot be written (the message says what is wrong with the folder)."""
