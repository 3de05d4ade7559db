"""The ``.signature`` of a loss: one line stating exactly how its per-image values are computed (sacreBLEU-style).

``key:value|key:value|...``, the keys in a fixed order: what the metric is (its class and the fields it
contributes through ``signature_fields``), its network (name, a digest of its structure, a sha256 prefix of
every set of weight tensors it uses), the preprocessing's values, the input range, the channel policy, the dtype
the network computed in and the perceptloss and torch versions. docs/evaluation.md lists every field and what
changes it. The promise: two numbers with the same signature were computed the same way and are comparable; a
differing field says why two numbers are not. So a field states what changes the values, never how the values
were obtained when that changes nothing:

- weights are identified by their tensors (``sha256``), not by how they were passed: the same tensors as a
  catalogue entry, a torchvision ``.pth``, perceptloss's cached ``.safetensors`` or a renamed copy give the same
  numbers and one signature (where they came from is ``PerceptualLoss.weights_source``, outside it);
- the signature describes one image pair's value; how values were aggregated (``reduction``, the number of
  pairs, the confidence interval) is stated beside it, as sacreBLEU states the test set beside its signature.

The ``sha256`` fields hash the weight *tensors* as loaded (names sorted, each name, dtype, shape and raw bytes;
the first 12 hex digits), not the bytes of a file. ``python -m perceptloss verify`` checks the cached files
themselves against their full sha256.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Mapping, Sequence, TypeVar

import torch
import torch.fx

from .preprocessing import CAFFE, IDENTITY, IMAGENET, Normalization

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


def module_digest(module: torch.nn.Module) -> str:
    """The first ``DIGEST_DIGITS`` hex digits of the sha256 of a network's structure (not its weights).

    The hash covers, for every submodule in ``named_modules()`` order, its name, its class (module and qualified
    name), its ``extra_repr()`` (kernel sizes, strides, activation settings, ...) and whether it is in train
    mode (a shared module's batch norm and dropout compute as its owner's mode says; the extractor's own flag
    is perceptloss's and changes nothing, so it is left out), and the Python code of every
    ``torch.fx.GraphModule`` in it (a traced ``forward``: the functions it calls, ``F.relu`` or ``F.gelu``, and
    the constants it uses). Two modules of one class that compute differently (another activation, another
    stride) get different digests; a copy of a module gets the module's own.
    """
    h = hashlib.sha256()
    for name, sub in module.named_modules():
        cls = type(sub)
        training = sub.training and bool(name)
        h.update(f"{name}|{cls.__module__}.{cls.__qualname__}|{sub.extra_repr()}|{training}\n".encode())
        if isinstance(sub, torch.fx.GraphModule):
            h.update(sub.code.encode())
    return h.hexdigest()[:DIGEST_DIGITS]


def _named_normalizations() -> tuple[Normalization, ...]:
    """The library's named preprocessings, whose names a signature uses for them."""
    from .lpips_heads import LPIPS_NORMALIZATION, LPIPS_V00_NORMALIZATION

    return CAFFE, IMAGENET, LPIPS_NORMALIZATION, LPIPS_V00_NORMALIZATION


def normalization_field(norm: Normalization) -> str:
    """The ``norm`` field: what the network is given, by value, never by the name a user chose.

    "identity" for ``IDENTITY`` (images as passed, ``input_range`` ignored); the library's name ("caffe",
    "imagenet", "lpips", "lpips-v0.0") for a Normalization with exactly its values; otherwise the values:
    ``rgb/scale=1/mean=0.5,0.5,0.5/std=0.5,0.5,0.5`` (``bgr`` for BGR order). Two normalizations with the same
    values and different names give the same field; one named "imagenet" with other values does not get it.
    """
    if norm is IDENTITY:
        return "identity"
    values = lambda n: (tuple(map(float, n.mean)), tuple(map(float, n.std)), float(n.scale), bool(n.bgr))
    for named in _named_normalizations():
        if values(norm) == values(named):
            return named.name
    order = "bgr" if norm.bgr else "rgb"
    return f"{order}/scale={number(norm.scale)}/mean={numbers(norm.mean)}/std={numbers(norm.std)}"


def network_fields(loss: torch.nn.Module) -> dict[str, object]:
    """net, arch, sha256 and norm of a loss's network: its name, structure, weight tensors and preprocessing."""
    net = loss.net
    preprocess = getattr(loss, "preprocess", None)
    fields: dict[str, object] = {
        "net": getattr(net, "backbone_name", type(net).__name__),
        "arch": module_digest(net),
        "sha256": tensors_digest(net.weight_tensors()),
    }
    if preprocess is not None:
        fields["norm"] = normalization_field(preprocess.norm)
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
    fields["dtype"] = loss.compute_dtype
    fields["perceptloss"] = __version__
    fields["torch"] = torch.__version__
    return format_signature(fields)
