"""LPIPS' learned linear heads (Zhang et al. 2018, v0.1 and v0.0): found offline, checksummed, cached as safetensors.

The heads are one non-negative weight per channel of each tapped layer. They ship (BSD-2) inside the ``lpips``
wheel as ``lpips/weights/v{0.0,0.1}/{alex,vgg,squeeze}.pth``, byte-identical inside the ``sensecraft`` wheel
(``sensecraft/loss/weights/...``), and the v0.1 files inside the ``torchmetrics`` wheel as
``torchmetrics/functional/image/lpips_models/*.pth``. Catalogue keys: ``lpips-<net>.v0.1`` (the default of
the group ``lpips-<net>``) and ``lpips-<net>.v0.0``. The files are located through ``importlib.metadata``
(neither package's code is imported), checked against their known sha256, converted to ``{"head{k}": (C_k,)}``
and cached like the backbone weights (``perceptloss.weights``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .preprocessing import Normalization
from .weights import StateDict, WeightEntry, load_state_dict_file, package_file, register_weights, resolve

#: LPIPS' ScalingLayer, (x - shift) / scale on [-1, 1] images, written for [0, 1] images:
#: mean = (1 + shift) / 2, std = scale / 2 (which is the ImageNet mean/std to three decimals).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
LPIPS_NORMALIZATION = Normalization(
    mean=tuple((1.0 + s) / 2.0 for s in _SHIFT),  # type: ignore[arg-type]
    std=tuple(c / 2.0 for c in _SCALE),  # type: ignore[arg-type]
    name="lpips",
)
#: LPIPS v0.0 skipped the scaling layer (the "normalization bug" of arXiv v1): the trunk saw [-1, 1] images.
LPIPS_V00_NORMALIZATION = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), name="lpips-v0.0")

VERSIONS = ("0.1", "0.0")
#: Channels of each tapped layer of LPIPS' trunks: one head weight per channel.
HEAD_CHANNELS: dict[str, tuple[int, ...]] = {
    "alex": (64, 192, 384, 256, 256),
    "vgg": (64, 128, 256, 512, 512),
    "squeeze": (64, 128, 256, 384, 384, 512, 512),
}

#: sha256 of the v0.1 head files (lpips 0.1.4; torchmetrics and sensecraft ship the same bytes).
HEAD_SHA256 = {
    "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    "squeeze": "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76",
}
#: sha256 of the v0.0 head files (lpips 0.1.4; sensecraft 0.3 ships the same bytes).
HEAD_SHA256_V00 = {
    "alex": "18720f55913d0af89042f13faa7e536a6ce1444a0914e6db9461355ece1e8cd5",
    "vgg": "b9e4236260c3dd988fc79d2a48d645d885afcbb21f9fd595e6744cf7419b582c",
    "squeeze": "c27abd3a0145541baa50990817df58d3759c3f8154949f42af3b59b4e042d0bf",
}


def convert_lpips_heads(path: Path) -> StateDict:
    """``lin{k}.model.1.weight`` (1, C, 1, 1) tensors of an lpips head file -> ``head{k}`` (C,) float32 tensors."""
    state = load_state_dict_file(path)
    heads = {}
    for key, value in state.items():
        if key.startswith("lin") and key.endswith(".weight"):
            heads[f"head{int(key[3:].split('.')[0])}"] = value.detach().float().reshape(-1).contiguous()
    if not heads:
        raise ValueError(f"{path} holds no LPIPS heads (expected keys like 'lin0.model.1.weight')")
    return heads


def heads_problem(net: str, state: StateDict) -> str | None:
    """Why ``state`` cannot be a catalogued head set for ``net``: it must hold exactly ``head0`` ...
    ``head{L-1}``, each (C_l,), finite and non-negative (LPIPS' heads are trained non-negative); None when it fits."""
    channels = HEAD_CHANNELS[net]
    expected = [f"head{k}" for k in range(len(channels))]
    if sorted(state) != sorted(expected):
        held = ", ".join(sorted(state)[:4])
        return f"it holds the tensors {held}, where LPIPS' {net} heads are {expected[0]} ... {expected[-1]}"
    for name, c in zip(expected, channels):
        w = state[name]
        if tuple(w.shape) != (c,):
            return f"{name} has shape {tuple(w.shape)}, where LPIPS' {net} heads have ({c},)"
        if not w.is_floating_point() or not bool(torch.isfinite(w).all()):
            return f"{name} holds NaN, Inf or non-float values"
        if bool((w < 0).any()):
            return f"{name} holds negative weights (down to {float(w.min()):.3g}), where LPIPS' heads are non-negative"
    return None


def head_entry(net: str, version: str = "0.1") -> WeightEntry:
    """The catalogue entry ``lpips-<net>.v<version>`` of LPIPS' heads for ``net`` ("alex", "vgg" or "squeeze")."""
    if version not in VERSIONS:
        raise ValueError(f"LPIPS version must be one of {VERSIONS}, got {version!r}")
    finders = [
        package_file("lpips", f"lpips/weights/v{version}/{net}.pth"),
        package_file("sensecraft", f"sensecraft/loss/weights/v{version}/{net}.pth"),
    ]
    if version == "0.1":
        finders.append(package_file("torchmetrics", f"torchmetrics/functional/image/lpips_models/{net}.pth"))
    return WeightEntry(
        backbone=f"lpips-{net}",
        name=f"v{version}",
        description=f"LPIPS v{version} linear heads for {net} (Zhang et al. 2018, BSD-2)",
        normalization=LPIPS_NORMALIZATION if version == "0.1" else LPIPS_V00_NORMALIZATION,
        filename=f"lpips-v{version}-{net}.safetensors",
        convert=convert_lpips_heads,
        finders=tuple(finders),
        source_sha256=(HEAD_SHA256 if version == "0.1" else HEAD_SHA256_V00)[net],
        hint=f"pip install lpips --no-deps (its wheel ships the heads as lpips/weights/v{version}/{net}.pth)",
        check=lambda state: heads_problem(net, state),
    )


#: Every head entry by (net, version), registered in the weights catalogue (v0.1 the default of each group).
HEAD_ENTRIES = {
    (net, version): register_weights(head_entry(net, version), default=version == "0.1", overwrite=True)
    for net in ("alex", "vgg", "squeeze")
    for version in VERSIONS
}


def load_heads(net: str, heads: str | Path, channels: list[int], version: str = "0.1") -> list[torch.Tensor]:
    """The (C_k,) head of each layer: ``heads`` is "default" (the entry of ``version``) or a file (lpips .pth or ours)."""
    return heads_from(f"LPIPS heads for {net}", resolve(HEAD_ENTRIES[(net, version)]) if str(heads) == "default" else heads,
                      channels)


def heads_from(what: str, source: StateDict | str | Path, channels: list[int]) -> list[torch.Tensor]:
    """The (C_k,) float32 head of each layer from a resolved state dict (``head{k}`` tensors) or a file (an lpips
    .pth with ``lin{k}.model.1.weight``, or ours); a ValueError naming ``what`` when a head is missing or has
    another number of channels than ``channels[k]``."""
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source)
        state = load_state_dict_file(path)
        if not any(k.startswith("head") for k in state):
            state = convert_lpips_heads(path)
    out = []
    for k, c in enumerate(channels):
        w = state.get(f"head{k}")
        if w is None or w.numel() != c:
            found = None if w is None else tuple(w.shape)
            raise ValueError(f"{what}: head{k} should have {c} weights, found {found}")
        out.append(w.float().reshape(c))
    return out
