"""Weight entries for torchvision's ImageNet checkpoints (VGG, AlexNet, SqueezeNet trunks), shared by the families.

A torchvision checkpoint is found in torch's hub cache (``$TORCH_HOME/hub/checkpoints/<file>``) or downloaded
where online; only its ``features.*`` tensors are kept. Its preprocessing is ImageNet's mean/std on RGB [0, 1].
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..preprocessing import IMAGENET
from ..weights import StateDict, WeightEntry, load_state_dict_file


def convert_torchvision_features(path: Path) -> StateDict:
    """Keep the ``features.*`` tensors of a torchvision checkpoint (the classifier is not needed), as float32."""
    return {k: v.float() for k, v in load_state_dict_file(path).items() if k.startswith("features.")}


def hub_checkpoint(url: str) -> Callable[[], Path]:
    """A finder for the file torch.hub keeps for ``url`` (``<hub dir>/checkpoints/<file name>``)."""
    return lambda: Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def torchvision_entry(arch: str) -> WeightEntry:
    """The ``<arch>.torchvision`` entry: torchvision's IMAGENET1K_V1 weights for ``arch``."""
    from torchvision.models import get_model_weights

    tv = get_model_weights(arch).IMAGENET1K_V1
    return WeightEntry(
        backbone=arch,
        name="torchvision",
        description=f"torchvision {arch} IMAGENET1K_V1 (RGB, ImageNet mean/std)",
        normalization=IMAGENET,
        filename=f"{arch}-torchvision.safetensors",
        convert=convert_torchvision_features,
        finders=(hub_checkpoint(tv.url),),
        url=tv.url,
        published_names=(Path(tv.url).name,),
    )
