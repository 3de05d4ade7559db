"""Downloads of a catalogued entry's source file (into torch's hub cache), and the switch that disables them."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ._catalogue import WeightEntry


def is_offline() -> bool:
    """True when downloads are disabled (PERCEPTLOSS_OFFLINE=1 or HF_HUB_OFFLINE=1)."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("PERCEPTLOSS_OFFLINE", "HF_HUB_OFFLINE"))


def hub_path(entry: WeightEntry) -> Path:
    """Where torch.hub keeps the file of ``entry.url``: ``<hub dir>/checkpoints/<file name>``."""
    assert entry.url is not None
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name


def download(entry: WeightEntry) -> Path | None:
    """Download ``entry.url`` to ``hub_path(entry)``; None when that fails (offline or refused)."""
    path = hub_path(entry)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(entry.url, str(path), progress=True)
    except Exception:  # offline or refused: the caller raises the explanatory error
        return None
    return path
