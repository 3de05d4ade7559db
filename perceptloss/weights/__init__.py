"""Pretrained weights: the catalogue of entries, the checksummed cache, weights files and their provenance.

One job per module:

- ``_catalogue``: ``WeightEntry`` and the catalogue (register, look up, list entries by key).
- ``_files``: reading a weights file a user passes (tensors only, never code; wrappers removed) and writing /
  reading the cache's checksummed safetensors files (the ``safetensors`` library).
- ``_lock``: the per-file lock under which a cached file is published.
- ``_download``: downloading an entry's source, and the switch that disables downloads.
- ``_cache``: the cache folder and the resolution of an entry (cache -> offline source -> download -> error).
- ``_provenance``: which entry (backbone and preprocessing) a file is for, and whether it fits a backbone.
- ``_errors``: the exception types.
"""
from ._cache import cache_path, cache_problem, convert_to_cache, fetch_command, find_source, missing_message, resolve, weights_home
from ._catalogue import (
    StateDict,
    WeightEntry,
    get_weights,
    group_entries,
    is_default,
    list_weight_entries,
    package_file,
    register_weights,
    weight_groups,
)
from ._download import is_offline
from ._errors import WeightsCacheError, WeightsChecksumError, WeightsFileError, WeightsNotFoundError
from ._files import load_checked, load_state_dict_file, save_checked, sha256_file
from ._lock import cache_lock
from ._provenance import entry_for_file, load_backbone_file, trunk_problem

__all__ = [
    "StateDict", "WeightEntry", "register_weights", "get_weights", "group_entries", "list_weight_entries",
    "weight_groups", "is_default", "package_file", "weights_home", "cache_path", "cache_problem", "fetch_command",
    "find_source", "resolve", "convert_to_cache", "missing_message", "is_offline", "load_state_dict_file",
    "save_checked", "load_checked", "sha256_file", "cache_lock", "entry_for_file", "load_backbone_file",
    "trunk_problem",
    "WeightsNotFoundError", "WeightsChecksumError", "WeightsFileError", "WeightsCacheError",
]
