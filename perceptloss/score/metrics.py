"""Metric names of ``perceptloss score`` to loss modules that give one value per image pair.

- ``lpips-alex``, ``lpips-vgg``, ``lpips-squeeze``: LPIPS v0.1; ``-v0.0`` appended (``lpips-alex-v0.0``):
  the first release.
- ``dists``: DISTS.
- ``<backbone>:<preset or comma-separated layers>``: a FeatureLoss (mean squared feature distance), e.g.
  ``vgg19:dfc123`` or ``vgg16:relu1_2,relu2_2``; ``timm:<model>:<layers>`` for a timm backbone.

``weights`` (the CLI's ``--weights METRIC=FILE``) replaces the trunk's default weights: a file (e.g.
torchvision's ``alexnet-owt-7be5be79.pth`` for the LPIPS trunks, which are not shipped with any package) or a
catalogue entry name.
"""
from __future__ import annotations

import re

import torch

from ..weights import WeightsNotFoundError
from .errors import ScoreError

_LPIPS = re.compile(r"^lpips-(alex|vgg|squeeze)(?:-v(0\.0|0\.1))?$")
DTYPES = {"auto": "auto", "float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}

METRIC_HELP = (
    "lpips-alex, lpips-vgg, lpips-squeeze (LPIPS v0.1; append -v0.0 for the first release), dists, or "
    "<backbone>:<preset or comma-separated layers> for a FeatureLoss (e.g. vgg19:dfc123)"
)


def _missing_weights(name: str, error: WeightsNotFoundError) -> WeightsNotFoundError:
    """The library's message (several lines), with its Python-only remedy replaced by the command-line option."""
    lines = [ln for ln in str(error).splitlines() if "weights='" not in ln]
    lines.insert(-1 if len(lines) > 1 else len(lines),
                 f"  - or pass the file on the command line: --weights {name}=/path/to/file")
    return WeightsNotFoundError(f"metric {name}: " + "\n".join(lines))


def build_metric(name: str, *, weights: str | None = None, dtype: str = "float32") -> torch.nn.Module:
    """The loss module of metric ``name`` with ``reduction="none"``: (N,) values for (N, 3, H, W) [0, 1] pairs."""
    if dtype not in DTYPES:
        raise ScoreError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    from .. import DISTS, LPIPS, FeatureLoss

    trunk = weights if weights is not None else "default"
    common = dict(reduction="none", dtype=DTYPES[dtype])
    try:
        match = _LPIPS.match(name)
        if match:
            return LPIPS(match.group(1), match.group(2) or "0.1", weights=trunk, **common)
        if name == "dists":
            return DISTS(weights=trunk, **common)
        backbone, sep, layers = name.rpartition(":")
        if not sep or not backbone or not layers:
            raise ScoreError(f"unknown metric {name!r}; metrics: {METRIC_HELP}")
        layer_arg: str | list[str] = layers.split(",") if "," in layers else layers
        return FeatureLoss(backbone, layer_arg, weights=trunk, **common)
    except WeightsNotFoundError as e:
        raise _missing_weights(name, e) from None
    except (KeyError, ValueError, TypeError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ScoreError(f"metric {name}: {text}") from None


def parse_weights(options: list[str], metrics: list[str]) -> dict[str, str]:
    """``--weights METRIC=FILE`` options -> {metric: file}; a metric that is not requested is an error."""
    out: dict[str, str] = {}
    for option in options:
        metric, sep, value = option.partition("=")
        if not sep or not value:
            raise ScoreError(f"--weights takes METRIC=FILE (e.g. --weights lpips-alex=alexnet-owt-7be5be79.pth), got {option!r}")
        if metric not in metrics:
            raise ScoreError(f"--weights {option}: {metric!r} is not among the requested metrics ({', '.join(metrics)})")
        out[metric] = value
    return out
