"""Weight entries for torchvision's ImageNet checkpoints (VGG, AlexNet, SqueezeNet trunks), shared by the families.

A torchvision checkpoint is found in torch's hub cache (``$TORCH_HOME/hub/checkpoints/<file>``) or downloaded
where online; only its ``features.*`` tensors are kept. Its preprocessing is ImageNet's mean/std on RGB [0, 1].
The 8 hex digits in its file name (``alexnet-owt-7be5be79.pth``) are the prefix of its sha256, which torch.hub
checks on download: perceptloss checks them on every file found or passed under that name, and checks the
converted tensors against the whole trunk (names, shapes, finite values).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..preprocessing import IMAGENET
from ..registry import get_backbone
from ..weights import StateDict, WeightEntry, load_state_dict_file, trunk_problem


def convert_torchvision_features(path: Path) -> StateDict:
    """Keep the ``features.*`` tensors of a torchvision checkpoint (the classifier is not needed), as float32."""
    return {k: v.float() for k, v in load_state_dict_file(path).items() if k.startswith("features.")}


def hub_checkpoint(url: str) -> Callable[[], Path]:
    """A finder for the file torch.hub keeps for ``url`` (``<hub dir>/checkpoints/<file name>``)."""
    return lambda: Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def published_hash_prefix(url: str) -> str:
    """The sha256 prefix a torchvision file name carries (``alexnet-owt-7be5be79.pth``: "7be5be79"), found as
    torch.hub's ``check_hash`` finds it (``torch.hub.HASH_REGEX``)."""
    found = torch.hub.HASH_REGEX.search(Path(url).name)
    if found is None or not found.group(1):
        raise ValueError(f"{url} carries no sha256 prefix in its file name")
    return found.group(1)


def trunk_check(arch: str) -> Callable[[StateDict], str | None]:
    """The content check of a catalogued ``arch`` trunk (``perceptloss.weights.trunk_problem`` for its spec)."""
    return lambda state: trunk_problem(get_backbone(arch), state)


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
        source_sha256=published_hash_prefix(tv.url),
        published_names=(Path(tv.url).name,),
        check=trunk_check(arch),
    )
