"""argparse types for the example's command lines: a number must be finite (nan and ±inf are argument errors)."""
from __future__ import annotations

import argparse
import math


def finite_float(text: str) -> float:
    """``text`` as a finite float, else :class:`argparse.ArgumentTypeError` (argparse prints it as one line,
    ``argument --lr: must be a finite number, got inf``, and exits with code 2). Ranges are the caller's check."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value
