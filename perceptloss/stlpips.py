r"""ST-LPIPS, shift-tolerant LPIPS (Ghildyal & Liu, *Shift-tolerant Perceptual Similarity Metric*, ECCV 2022).

LPIPS' distance (``perceptloss.lpips``: unit-normalised features, learned non-negative per-channel heads, spatial
means summed over layers) on anti-aliased trunks trained for tolerance to small shifts: AlexNet and VGG16 whose
every subsampling is a BlurPool (``perceptloss.backbones.blurpool``). It is LPIPS with
``variant="shift_tolerant"`` (the ``stlpips-pytorch`` package's own argument), on LPIPS v0.1's scaling layer;
``create_metric("stlpips-alex")`` / ``"stlpips-vgg"`` and ``perceptloss score --metric stlpips-alex`` build it.

The trained trunks and heads ship (BSD-2) inside the ``stlpips-pytorch`` 0.0.2 wheel, one file per network
(``stlpips_pytorch/weights/vST0.0/{alex,vgg}_shift_tolerant.pth``): its trunk is the catalogue entry
``<backbone>.stlpips`` (``alexnet_shift_tolerant``, ``vgg16_shift_tolerant``), its heads the entry
``stlpips-<net>.vST0.0`` (the package's version name), both converted from the same checked file. Value-identical
to the package's ``stlpips.LPIPS(net=..., variant="shift_tolerant")`` (whose code is never imported here).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .backbones.blurpool import STLPIPS_BACKBONES, STLPIPS_FILE_SHA256, STLPIPS_HINT, stlpips_file
from .lpips_heads import LPIPS_NORMALIZATION, convert_lpips_heads, heads_from
from .weights import WeightEntry, register_weights, resolve

#: The variants LPIPS takes besides its own trunks (``LPIPS(net, variant=...)``).
VARIANTS = ("shift_tolerant",)
#: The version name of ST-LPIPS' heads in the package (its weights folder is ``vST0.0``).
STLPIPS_VERSION = "ST0.0"
#: ST-LPIPS' trunk for each ``net``: (registered backbone, tapped layers, channels per layer).
STLPIPS_NETS: dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]] = {
    "alex": (STLPIPS_BACKBONES["alex"], ("relu1", "relu2", "relu3", "relu4", "relu5"), (64, 192, 384, 256, 256)),
    "vgg": (STLPIPS_BACKBONES["vgg"], ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"),
            (64, 128, 256, 512, 512)),
}


def stlpips_net(net: str, version: str) -> tuple[str, tuple[str, ...], tuple[int, ...]]:
    """(backbone, layers, channels) of ST-LPIPS for ``net``; a ValueError for a net or LPIPS version it lacks."""
    if net not in STLPIPS_NETS:
        raise ValueError(f"variant='shift_tolerant' has trained weights for net 'alex' or 'vgg' only (the "
                         f"stlpips-pytorch package's), got net={net!r}")
    if version != "0.1":
        raise ValueError(f"variant='shift_tolerant' is built on LPIPS v0.1 (its scaling layer); leave version "
                         f"unset, got version={version!r}")
    return STLPIPS_NETS[net]


def head_entry(net: str) -> WeightEntry:
    """The catalogue entry ``stlpips-<net>.vST0.0`` of ST-LPIPS' heads for ``net`` ("alex" or "vgg")."""
    return WeightEntry(
        backbone=f"stlpips-{net}",
        name=f"v{STLPIPS_VERSION}",
        description=f"ST-LPIPS linear heads for the shift-tolerant {net} trunk (Ghildyal & Liu 2022, "
                    f"stlpips-pytorch 0.0.2, BSD-2)",
        normalization=LPIPS_NORMALIZATION,
        filename=f"stlpips-v{STLPIPS_VERSION}-{net}.safetensors",
        convert=convert_lpips_heads,
        finders=(stlpips_file(net),),
        source_sha256=STLPIPS_FILE_SHA256[net],
        hint=STLPIPS_HINT,
    )


#: Every head entry by net, registered in the weights catalogue.
HEAD_ENTRIES = {net: register_weights(head_entry(net), default=True, overwrite=True) for net in STLPIPS_NETS}


def load_stlpips_heads(net: str, heads: str | Path, channels: list[int]) -> list[torch.Tensor]:
    """The (C_k,) head of each layer: ``heads`` is "default" (the entry of ``net``) or a file (the package's
    .pth, an lpips head file or ours)."""
    return heads_from(f"ST-LPIPS heads for {net}", resolve(HEAD_ENTRIES[net]) if str(heads) == "default" else heads,
                      channels)
