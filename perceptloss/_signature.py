"""The ``.signature`` of a loss: one line stating exactly how its numbers are computed (sacreBLEU-style).

``key:value|key:value|...``, the keys in a fixed order: what the metric is (its class and the fields it
contributes through ``signature_fields``), where its network's weights came from and a sha256 prefix of every
set of weight tensors it uses, the input range, the channel policy, the reduction, the network's dtype and the
perceptloss and torch versions. Two numbers with the same signature were computed the same way and are
comparable; a differing field says why two numbers are not.

The ``sha256`` fields hash the weight *tensors* as loaded (names sorted, each name, dtype, shape and raw bytes;
the first 12 hex digits), not the bytes of the file they were read from: a torchvision ``.pth`` and the
safetensors file perceptloss converted it to hold the same tensors, give the same numbers and so the same
signature. ``python -m perceptloss verify`` checks the cached files themselves against their full sha256.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Mapping, Sequence, TypeVar

import torch

#: Hex digits of a sha256 kept in a signature.
DIGEST_DIGITS = 12

_F = TypeVar("_F", bound=Callable)


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """The first ``DIGEST_DIGITS`` hex digits of the sha256 of named tensors (any device and dtype).

    The hash covers, for every name in sorted order, the name, dtype, shape and the tensor's bytes (row-major).
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{str(t.dtype).replace('torch.', '')}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:DIGEST_DIGITS]


def number(value: float) -> str:
    """A float as the shortest text that reads back as the same float (1.0 -> "1", 0.25 -> "0.25")."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def numbers(values: Sequence[float]) -> str:
    """Comma-separated ``number``s."""
    return ",".join(number(v) for v in values)


def _clean(value: object) -> str:
    """A field value with the separators ``|`` and ``:`` made harmless (``/`` and ``=``)."""
    return str(value).replace("|", "/").replace("\n", " ")


def format_signature(fields: Mapping[str, object]) -> str:
    """``key:value|key:value`` in the mapping's order (values with ``|`` get ``/``)."""
    return "|".join(f"{k}:{_clean(v)}" for k, v in fields.items())


def parse_signature(signature: str) -> dict[str, str]:
    """The fields of a signature, ``{key: value}`` in order (the inverse of ``format_signature``)."""
    out: dict[str, str] = {}
    for part in signature.split("|"):
        key, sep, value = part.partition(":")
        if not sep:
            raise ValueError(f"not a signature field (key:value): {part!r} in {signature!r}")
        out[key] = value
    return out


def network_fields(loss: torch.nn.Module) -> dict[str, object]:
    """net, weights, sha256 and preprocessing of a loss's network (what ``create_backbone`` recorded)."""
    net = loss.net
    preprocess = getattr(loss, "preprocess", None)
    fields: dict[str, object] = {
        "net": getattr(net, "backbone_name", type(net).__name__),
        "weights": getattr(net, "weights_source", "unknown"),
        "sha256": tensors_digest(net.weight_tensors()),
    }
    if preprocess is not None:
        fields["norm"] = preprocess.norm.name or "custom"
    return fields


def loss_signature(loss: torch.nn.Module) -> str:
    """The signature of a ``PerceptualLoss``: its metric fields first, then what every loss shares."""
    from . import __version__

    fields: dict[str, object] = {"metric": type(loss).__name__}
    fields.update(loss.signature_fields())
    lo, hi = loss.input_range
    policy = loss.channel_policy
    fields["range"] = f"{number(lo)},{number(hi)}"
    fields["channels"] = policy.mode + ("" if policy.reduction == "mean" else f"/{policy.reduction}")
    fields["reduction"] = loss.reduction
    dtype = loss.dtype
    fields["dtype"] = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    fields["perceptloss"] = __version__
    fields["torch"] = torch.__version__
    return format_signature(fields)
