"""Metric names of ``perceptloss score`` to loss modules: the library's metric table, ``perceptloss.metric_table``.

``--metric NAME`` builds ``perceptloss.create_metric(NAME, dtype=...)``, so a name gives the same loss (the same
signature) on the command line and in Python with the same dtype (``--dtype`` is "auto" unless given: the
precision the hardware computes fastest, as ``create_metric(NAME, dtype="auto")``); ``perceptloss.list_metrics()`` is the list ``--help`` shows. Names
added with ``perceptloss.metric_table.register_metric`` in a module named by ``--plugin MODULE`` are accepted too,
and so is ``package.module:factory`` (a function returning the metric module).

``weights`` (the CLI's ``--weights METRIC=FILE``) replaces the trunk's default weights: a file (e.g.
torchvision's ``alexnet-owt-7be5be79.pth`` for the LPIPS trunks, which are not shipped with any package) or a
catalogue entry name.
"""
from __future__ import annotations

import importlib

import torch

from ..metric_table import MetricError, create_metric, get_metric, list_metrics
from ..weights import WeightsNotFoundError
from .errors import ScoreError

DTYPES = {"auto": "auto", "float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def metric_help() -> str:
    """``--metric``'s help: the table's names (``%`` escaped for argparse)."""
    return f"a metric of perceptloss.list_metrics(): {', '.join(list_metrics())}".replace("%", "%%")


def metric_descriptions() -> str:
    """One line per entry of the table, for the epilog of ``score --help``."""
    names = list_metrics()
    width = max(map(len, names))
    return "\n".join(f"  {n:<{width}}  {get_metric(n).description}" for n in names)


def import_plugins(modules: list[str]) -> None:
    """Import each ``--plugin MODULE`` (its ``register_metric`` calls add metric names)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ScoreError(f"--plugin {name}: cannot import it ({e}); put its folder on PYTHONPATH or install "
                             "its package") from None


def _missing_weights(name: str, error: WeightsNotFoundError) -> WeightsNotFoundError:
    """The library's message (several lines), with its Python-only remedy replaced by the command-line option."""
    lines = [ln for ln in str(error).splitlines() if "weights='" not in ln]
    lines.insert(-1 if len(lines) > 1 else len(lines),
                 f"  - or pass the file on the command line: --weights {name}=/path/to/file")
    return WeightsNotFoundError(f"metric {name}: " + "\n".join(lines))


def build_metric(name: str, *, weights: str | None = None, dtype: str = "auto") -> torch.nn.Module:
    """``perceptloss.create_metric(name, dtype=...)``: (N,) values for (N, 3, H, W) [0, 1] pairs; errors as
    ScoreError. ``dtype`` is a ``--dtype`` choice: "auto" (the default) picks by the hardware as the losses'
    ``dtype="auto"`` does, and the signature names what was picked."""
    if dtype not in DTYPES:
        raise ScoreError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        return create_metric(name, weights="default" if weights is None else weights, dtype=DTYPES[dtype])
    except MetricError as e:
        raise ScoreError(str(e)) from None
    except WeightsNotFoundError as e:
        raise _missing_weights(name, e) from None
    except (KeyError, ValueError, TypeError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ScoreError(f"metric {name}: {text}") from None


def weights_source_of(metric: torch.nn.Module) -> str:
    """Where the metric's network weights came from (``PerceptualLoss.weights_source``: a catalogue entry,
    "file:<name>", ...), beside the signature, which names the tensors; "unknown" for a module of your own."""
    source = getattr(getattr(metric, "loss", metric), "weights_source", None)
    return source if isinstance(source, str) and source else "unknown"


def signature_of(name: str, metric: torch.nn.Module) -> str:
    """The metric's ``.signature``; for a module of your own without one, its name, class and torch version."""
    signature = getattr(metric, "signature", None)
    if isinstance(signature, str) and signature:
        return signature
    cls = type(metric)
    return f"metric:{name}|class:{cls.__module__}.{cls.__qualname__}|weights:unknown|torch:{torch.__version__}"


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
